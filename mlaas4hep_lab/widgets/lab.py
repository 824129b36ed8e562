"""``Lab``: the four panels (Branches, Cuts, Training, Deploy) as tabs on one shared state.

::

    from mlaas4hep_lab.widgets import Lab
    lab = Lab(files="files.txt", labels="labels.txt")
    lab             # displays the tabs
    lab.state       # the LabState every panel shares: params, preproc, specs, the last bundle
"""

from __future__ import annotations

import os

import ipywidgets as w

from mlaas4hep_lab.widgets.branches import BranchesPanel
from mlaas4hep_lab.widgets.cuts import CutsPanel
from mlaas4hep_lab.widgets.deploy import DeployPanel
from mlaas4hep_lab.widgets.state import DEFAULT_SAMPLE, LabState
from mlaas4hep_lab.widgets.training import TrainingPanel

__all__ = ["Lab", "TITLES"]

TITLES = ("Branches", "Cuts", "Training", "Deploy")

_STYLE = """<style>
.m4h-lab .m4h-error { color: #b00020; }
.m4h-lab .m4h-ok { color: #1b7f3b; }
.m4h-lab .m4h-spark { font-family: monospace; letter-spacing: -1px; color: #1f77b4; }
.m4h-lab table { border-collapse: collapse; }
.m4h-lab th, .m4h-lab td { padding: 1px 8px; border-bottom: 1px solid #ddd; text-align: right; }
.m4h-lab .m4h-branch-row { border-bottom: 1px solid #eee; }
</style>"""


class Lab:
    """The lab as one app.

    Args:
        files: ROOT files (paths or URLs) or a files.txt path.
        labels: one label per file, or a labels.txt path (None: a regression, params ``"task"``).
        params: None, a Params, a dict or a params.json path (its ``task``: binary, multiclass or
            regression, the Training tab's first field).
        preproc: None, a dict or a preproc.json path.
        model: ``"keras"``, ``"torch"``, ``"sklearn"``, ``"xgboost"`` (templates; ``"torch_multiclass"``,
            ``"torch_regression"``... for the other tasks) or a model.py path.
        workdir: folder for specs, training outputs and bundles (default ``$MLAAS4HEP_WORKDIR`` or
            ``./mlaas4hep-lab``).
        service_url, token: the inference service; default from the environment (JupyterHub).
    """

    def __init__(self, files, labels, params=None, preproc=None, model: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None, service_url: str | None = None,
                 token: str | None = None, sample_size: int = DEFAULT_SAMPLE, interval: float = 0.5):
        self.state = LabState(files, labels, params, preproc, model, workdir, service_url, token, sample_size)
        self.branches = BranchesPanel(self.state)
        self.cuts = CutsPanel(self.state)
        self.training = TrainingPanel(self.state, interval)
        self.deploy = DeployPanel(self.state)
        # the style sheet rides in the first tab: <style> applies to the whole page once rendered
        first = w.VBox([w.HTML(_STYLE), self.branches.widget])
        self.tabs = w.Tab(children=[first, self.cuts.widget, self.training.widget, self.deploy.widget],
                          titles=TITLES)
        self.tabs.add_class("m4h-lab")
        self.widget = self.tabs

    @property
    def panels(self) -> dict[str, object]:
        return dict(zip(TITLES, (self.branches, self.cuts, self.training, self.deploy)))

    def _repr_mimebundle_(self, **kwargs):
        return self.tabs._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"Lab({len(self.state.files)} files, {self.state.summary()})"
