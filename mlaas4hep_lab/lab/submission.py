"""The current Lab's configuration as a jobs-service submission, read inside the notebook's kernel.

The sidebar's "Submit the notebook's Lab" runs, silently in the kernel of the notebook in focus::

    from mlaas4hep_lab.lab.submission import print_submission; print_submission(globals())

and sends what it prints (files, labels, model, params, preproc: what the Lab's tabs show now) through the
server extension to ``POST /submit``. Kernel side only: nothing here imports the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_lab", "lab_submission", "print_submission", "MARKER"]

MARKER = "mlaas4hep-lab-submission:"


def _is_lab(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "Lab" and cls.__module__.startswith("mlaas4hep_lab.widgets") and hasattr(obj, "state")


def find_lab(namespace: Mapping[str, Any]) -> tuple[str, Any]:
    """The notebook's Lab: the only one, or the one called ``lab``. Raises LookupError otherwise."""
    labs = [(k, v) for k, v in namespace.items() if not k.startswith("_") and _is_lab(v)]
    if not labs:
        raise LookupError("no Lab in this notebook: run a cell with `lab = Lab(files=..., labels=...)` first")
    if len(labs) > 1:
        named = [kv for kv in labs if kv[0] == "lab"]
        if not named:
            raise LookupError(f"several Labs in this notebook ({', '.join(k for k, _ in labs)}): call the one "
                              "to submit `lab`")
        return named[0]
    return labs[0]


def lab_submission(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """``{"files", "labels", "model", "params", "preproc", "lab"}`` of the notebook's Lab: the model is a
    template name or the source of the Lab's model.py; ``lab`` is the variable's name."""
    from mlaas4hep_lab.training.model_file import TEMPLATES

    name, lab = find_lab(namespace)
    state = lab.state
    model = str(state.model)
    if model not in TEMPLATES:
        model = Path(model).expanduser().read_text()
    preproc = getattr(state, "preproc_dict", None) or None
    return {"lab": name, "files": [str(f) for f in state.files], "labels": [float(v) for v in state.labels],
            "model": model, "params": state.params.to_dict(), "preproc": preproc}


def print_submission(namespace: Mapping[str, Any]) -> None:
    """Print :func:`lab_submission` as one JSON line after :data:`MARKER` (or ``{"error": ...}``)."""
    try:
        out: dict[str, Any] = lab_submission(namespace)
    except Exception as err:  # noqa: BLE001 - the sidebar shows the message
        out = {"error": f"{type(err).__name__}: {err}" if not isinstance(err, LookupError) else str(err)}
    print(MARKER + json.dumps(out, default=str))
