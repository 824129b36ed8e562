"""The notebooks the extension writes and opens: a new Lab on a files.txt, a folder or some ``.root`` files,
and the Voila dashboard.

A new Lab notebook goes beside its data (the folder of the files.txt, or of the first ROOT file), so the
paths in its first cell are short and relative to the kernel's working folder::

    from mlaas4hep_lab.widgets import Lab

    lab = Lab(files="files.txt", labels="labels.txt", params="params.json")
    lab

``params.json`` and ``preproc.json`` beside the files.txt are passed when they are there. Labels come from
the labels.txt beside the files.txt (``files_x.txt`` pairs with ``labels_x.txt``); for ``.root`` files they
come from a files.txt that lists them. When they are unknown the cell says so and is not run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlaas4hep_lab.lab.inspect import find_labels

__all__ = ["LabPlan", "plan_lab", "notebook_json", "notebook_name", "find_dashboard"]

DASHBOARD = "dashboard.ipynb"
_DASHBOARD_PLACES = ("notebooks/dashboard.ipynb", "dashboard.ipynb")


@dataclass
class LabPlan:
    """Where the notebook goes, what its first cell says, and whether that cell can run as written."""

    folder: Path
    stem: str
    code: str
    ready: bool
    note: str = ""


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)   # a valid Python string literal for any path


def _rel(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder).replace(os.sep, "/")


def _label_text(label: float) -> str:
    return str(int(label)) if float(label).is_integer() else repr(float(label))


def _task(params_json: Path) -> str:
    try:
        return str(json.loads(params_json.read_text()).get("task") or "binary")
    except (OSError, ValueError, AttributeError):
        return "binary"


def _extras(folder: Path, nb_folder: Path) -> list[str]:
    """``params=``/``preproc=`` arguments for the files beside the data."""
    args = []
    for key in ("params", "preproc"):
        f = folder / f"{key}.json"
        if f.is_file():
            args.append(f"{key}={_lit(_rel(f, nb_folder))}")
    return args


def _code(header: str, args: list[str], comment: str = "") -> str:
    lines = [f"# {header}", *([f"# {comment}"] if comment else []), "from mlaas4hep_lab.widgets import Lab", "",
             f"lab = Lab({', '.join(args)})", "lab"]
    return "\n".join(lines)


def _check_files_list(files_txt: Path) -> None:
    """A files.txt lists ROOT files (paths or URLs): refuse another text file before writing a notebook."""
    from mlaas4hep_lab.data import sources

    entries = sources.read_file_list(files_txt)
    odd = [e for e in entries if not sources.is_remote(e) and not e.lower().endswith(".root")]
    if odd:
        raise ValueError(f"{files_txt.name} is not a list of ROOT files ({Path(odd[0]).name!r} is no .root file)")


def _plan_files_txt(files_txt: Path) -> LabPlan:
    _check_files_list(files_txt)
    folder = files_txt.parent
    labels = folder / ("labels" + files_txt.name[len("files"):]) if files_txt.name.startswith("files") else None
    if labels is None or not labels.is_file():
        labels = folder / "labels.txt" if (folder / "labels.txt").is_file() else None
    args = [f"files={_lit(files_txt.name)}"]
    regression = _task(folder / "params.json") == "regression"
    ready, note = True, ""
    if labels is not None:
        args.append(f"labels={_lit(labels.name)}")
    else:
        args.append("labels=None")
        if not regression:
            ready, note = False, (f"no labels.txt beside {files_txt.name}: give labels=[...] (one per file, "
                                  "1 signal, 0 background), or params task 'regression'")
    args += _extras(folder, folder)
    return LabPlan(folder, folder.name or files_txt.stem, _code(f"MLaaS4HEP Lab on {files_txt.name}", args, note),
                   ready, note)


def _plan_root_files(files: list[Path], root: Path) -> LabPlan:
    folder = files[0].parent
    infos = [find_labels(f, root) for f in files]
    args = [f"files=[{', '.join(_lit(_rel(f, folder)) for f in files)}]"]
    ready, note = True, ""
    if all(i is not None for i in infos):
        args.append(f"labels=[{', '.join(_label_text(i.label) for i in infos)}]")
        lists = {i.files_txt for i in infos}
        extras_from = next(iter(lists)).parent if len(lists) == 1 else folder
    else:
        unknown = [f.name for f, i in zip(files, infos) if i is None]
        ready, note = False, (f"labels unknown for {', '.join(unknown)} (no files.txt with a labels.txt lists "
                              "them): give labels=[...], one per file, 1 signal, 0 background")
        args.append("labels=None")
        extras_from = folder
    args += _extras(extras_from, folder)
    names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return LabPlan(folder, files[0].stem, _code(f"MLaaS4HEP Lab on {names}", args, note), ready, note)


def plan_lab(paths: list[Path], root: Path) -> LabPlan:
    """The new Lab for what the user picked: one files.txt, one folder (its files.txt, else its ``.root``
    files) or ``.root`` files. Raises ValueError for anything else."""
    if not paths:
        raise ValueError("pick a files.txt, a folder or .root files")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        if (folder / "files.txt").is_file():
            return _plan_files_txt(folder / "files.txt")
        roots = sorted(p for p in folder.glob("*.root") if p.is_file() and not p.name.startswith("."))
        if not roots:
            raise ValueError(f"folder {folder.name or '/'} has no files.txt and no .root files")
        return _plan_root_files(roots, root)
    if len(paths) == 1 and paths[0].suffix == ".txt":
        return _plan_files_txt(paths[0])
    bad = [p.name for p in paths if p.suffix != ".root" or not p.is_file()]
    if bad:
        raise ValueError(f"not a files.txt, a folder or .root files: {', '.join(bad)}")
    return _plan_root_files(list(paths), root)


def notebook_json(plan: LabPlan) -> dict:
    """The notebook (nbformat 4) whose first cell builds the Lab."""
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "mlaas4hep-lab", "metadata": {},
                   "outputs": [], "source": plan.code}],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                    "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def notebook_name(folder: Path, stem: str) -> Path:
    """``lab-<stem>.ipynb`` in ``folder``, numbered when taken."""
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("-.") or "lab"
    target = folder / f"lab-{stem}.ipynb"
    n = 2
    while target.exists():
        target = folder / f"lab-{stem}-{n}.ipynb"
        n += 1
    return target


def find_dashboard(root: Path, max_depth: int = 3) -> Path | None:
    """The Voila dashboard notebook below ``root``: ``notebooks/dashboard.ipynb`` (the repository's, and where
    the hub copies it), ``dashboard.ipynb``, else the first ``dashboard.ipynb`` found ``max_depth`` deep."""
    for place in _DASHBOARD_PLACES:
        if (root / place).is_file():
            return root / place
    frontier = [root]
    for _ in range(max_depth):
        nxt = []
        for folder in frontier:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.startswith(".") or e.name in ("node_modules", "site-packages"):
                    continue
                if e.name == DASHBOARD and e.is_file():
                    return Path(e.path)
                if e.is_dir(follow_symlinks=False):
                    nxt.append(Path(e.path))
        frontier = nxt[:500]
    return None
