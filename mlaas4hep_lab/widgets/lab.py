"""``Lab``: the four panels (Branches, Cuts, Training, Deploy) as tabs on one shared state.

::

    from mlaas4hep_lab.widgets import Lab
    lab = Lab(files="example/higgs/files.txt", labels="example/higgs/labels.txt")
    lab             # displays the tabs, under what was loaded and any leakage warning
    lab.state       # the LabState every panel shares: params, preproc, specs, the last bundle

Above the tabs: what was taken from beside files.txt (params.json, preproc.json, labels.txt) and the
leakage check of the current features on the sample (:mod:`mlaas4hep_lab.data.leakage`), redrawn when
the params or the cuts change, so a feature that gives the answer away is said before training starts.
A Lab that cannot be built (a missing file, a preproc.json naming branches the files lack) is one message
in its place, not a traceback: ``lab.error``.
"""

from __future__ import annotations

import html
import logging
import os
import traceback

import ipywidgets as w

from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.widgets.branches import BranchesPanel
from mlaas4hep_lab.widgets.cuts import CutsPanel
from mlaas4hep_lab.widgets.deploy import DeployPanel
from mlaas4hep_lab.widgets.state import DEFAULT_SAMPLE, LabState
from mlaas4hep_lab.widgets.training import TrainingPanel

__all__ = ["Lab", "TITLES", "notes_html", "leakage_html"]

log = logging.getLogger(__name__)
TITLES = ("Branches", "Cuts", "Training", "Deploy")

_STYLE = """<style>
.m4h-lab .m4h-error { color: #d32f2f; }
.m4h-lab .m4h-ok { color: #2e7d32; }
.m4h-lab .m4h-spark { font-family: monospace; letter-spacing: -1px; color: #1f77b4; }
.m4h-lab table { border-collapse: collapse; }
.m4h-lab th, .m4h-lab td { padding: 1px 8px; border-bottom: 1px solid rgba(128, 128, 128, 0.35); text-align: right; }
.m4h-lab .m4h-branch-row { border-bottom: 1px solid rgba(128, 128, 128, 0.2); }
.m4h-lab .m4h-notes { opacity: 0.85; margin: 2px 0; }
.m4h-lab .m4h-leakage-box { border-left: 4px solid #f9a825; background: rgba(249, 168, 37, 0.12);
                        padding: 4px 8px; margin: 4px 0; }
.m4h-lab .m4h-leakage-box ul { margin: 2px 0 2px 16px; padding: 0; }
</style>"""


def notes_html(notes: list[str]) -> str:
    """What the Lab took from beside files.txt, one line each."""
    return "".join(f"<div class='m4h-note'>{html.escape(n)}</div>" for n in notes)


def leakage_html(findings, error: str = "") -> str:
    """The leakage warning: one line per suspicious feature, the most separating first ("" when none)."""
    if error or not findings:
        return ""
    items = "".join(f"<li class='m4h-leak' data-feature='{html.escape(f.feature, quote=True)}'>"
                    f"{html.escape(f.message)}</li>" for f in findings)
    n = len(findings)
    return (f"<div class='m4h-leakage-box'><b>Possible leakage: {n} feature{'s' if n > 1 else ''} may give "
            f"the answer away</b> (checked on the sample, after the cuts)<ul>{items}</ul></div>")


def _fit_descriptions(root) -> None:
    """Give every field's description its own width: ipywidgets cuts a description at a fixed width
    ("preproc.js...", "Model na..."); ``initial`` sizes it to its text."""
    stack = [root]
    while stack:
        widget = stack.pop()
        stack.extend(getattr(widget, "children", ()))
        style = getattr(widget, "style", None)
        if (getattr(widget, "description", "") and style is not None and style.has_trait("description_width")
                and not isinstance(widget, (w.Button, w.Checkbox))):
            style.description_width = "initial"


class Lab:
    """The lab as one app.

    Args:
        files: ROOT files (paths or URLs), a files.txt path, or a folder (its files.txt).
        labels: one label per file, or a labels.txt path (None: the labels.txt beside files.txt; none for a
            regression, params ``"task"``).
        params: None (the params.json beside files.txt, if any), a Params, a dict or a params.json path (its
            ``task``: binary, multiclass or regression, the Training tab's first field).
        preproc: None (the preproc.json beside files.txt, if any), a dict or a preproc.json path.
        model: ``"keras"``, ``"torch"``, ``"sklearn"``, ``"xgboost"`` (templates; ``"torch_multiclass"``,
            ``"torch_regression"``... for the other tasks) or a model.py path.
        workdir: folder for specs, training outputs and bundles (default ``$MLAAS4HEP_WORKDIR`` or
            ``./mlaas4hep-lab``).
        service_url, token: the inference service; default from the environment (JupyterHub).
    """

    def __init__(self, files, labels=None, params=None, preproc=None, model: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None, service_url: str | None = None,
                 token: str | None = None, sample_size: int = DEFAULT_SAMPLE, interval: float = 0.5):
        self.error = ""
        self.state: LabState | None = None
        self.notes = w.HTML()
        self.leakage = w.HTML()
        self.notes.add_class("m4h-notes")
        self.leakage.add_class("m4h-leakage")
        try:
            self._build(files, labels, params, preproc, model, workdir, service_url, token, sample_size, interval)
        except Exception as err:  # noqa: BLE001 - the panel says it in one message; the log keeps the traceback
            self.error = _one_message(err)
            log.debug("the Lab could not be built:\n%s", traceback.format_exc())
            self.tabs = None
            shown = w.HTML(f"<pre class='m4h-error m4h-lab-error' style='white-space: pre-wrap'>"
                           f"{html.escape(self.error)}</pre>")
            self.widget = w.VBox([w.HTML(_STYLE), shown])
            self.widget.add_class("m4h-lab")

    def _build(self, files, labels, params, preproc, model, workdir, service_url, token, sample_size,
               interval) -> None:
        self.state = LabState(files, labels, params, preproc, model, workdir, service_url, token, sample_size)
        self.branches = BranchesPanel(self.state)
        self.cuts = CutsPanel(self.state)
        self.training = TrainingPanel(self.state, interval)
        self.deploy = DeployPanel(self.state)
        self.tabs = w.Tab(children=[self.branches.widget, self.cuts.widget, self.training.widget,
                                    self.deploy.widget], titles=TITLES)
        self.notes.value = notes_html(self.state.notes)
        self.state.on("params", self.check_leakage)
        self.state.on("preproc", self.check_leakage)
        self.check_leakage()
        # the style sheet rides above the tabs: <style> applies to the whole page once rendered
        self.widget = w.VBox([w.HTML(_STYLE), self.notes, self.leakage, self.tabs])
        self.widget.add_class("m4h-lab")
        _fit_descriptions(self.widget)

    def check_leakage(self) -> list:
        """Run the leakage check on the sample with the current params and cuts; show and return the
        findings (:meth:`LabState.leakage`)."""
        findings, error = self.state.leakage()
        self.leakage.value = leakage_html(findings, error)
        self.leakage.layout.display = "" if self.leakage.value else "none"
        return findings

    @property
    def panels(self) -> dict[str, object]:
        if self.state is None:
            return {}
        return dict(zip(TITLES, (self.branches, self.cuts, self.training, self.deploy)))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        if self.state is None:
            return f"Lab(error: {self.error})"
        return f"Lab({len(self.state.files)} files, {self.state.summary()})"


def _one_message(err: BaseException) -> str:
    """``Type: message`` as the engine wrote it (a KeyError without the quotes its str() adds); the
    engine's own errors (and the OS's) need no type name to be understood."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, (MLaaSError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
