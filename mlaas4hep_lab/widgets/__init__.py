"""Notebook widgets of mlaas4hep-lab (ipywidgets 8): the Lab and its four panels.

Imported explicitly (``from mlaas4hep_lab.widgets import Lab``); ``import mlaas4hep_lab`` never imports
ipywidgets. Names load lazily: ``LabState`` and the logic modules work without ipywidgets.
"""

from __future__ import annotations

from mlaas4hep_lab.extras import lazy_attributes

_LAZY = {
    "Lab": "mlaas4hep_lab.widgets.lab",
    "LabState": "mlaas4hep_lab.widgets.state",
    "BranchesPanel": "mlaas4hep_lab.widgets.branches",
    "CutsPanel": "mlaas4hep_lab.widgets.cuts",
    "TrainingPanel": "mlaas4hep_lab.widgets.training",
    "DeployPanel": "mlaas4hep_lab.widgets.deploy",
    "TrainingRun": "mlaas4hep_lab.widgets.run",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__():
    return __all__
