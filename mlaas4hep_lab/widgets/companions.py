"""What lies beside a files.txt: the Lab takes params.json, preproc.json and labels.txt from there.

``mlaas4hep example higgs --out example/higgs`` (and every dataset of the original MLaaS4HEP) keeps
files.txt, labels.txt, params.json and preproc.json in one folder; params.json says which branch is the
weight, which are identifiers and which values are missing-value sentinels. A Lab that ignored it would
train on the weight and the event number (the label leaks). So, when they are not given:

* a folder stands for its ``files.txt`` (else for its ``.root`` files);
* ``params`` and ``preproc`` are the folder's ``params.json`` and ``preproc.json``;
* ``labels`` is the folder's ``labels.txt`` (``files_x.txt`` pairs with ``labels_x.txt``), unless the
  params say the task is a regression.

Given explicitly (``params={}`` for the defaults), nothing is looked up. :func:`companions` returns the
resolved arguments and the notes the Lab shows ("params.json and preproc.json loaded from example/higgs").
Plain Python: no widgets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError

__all__ = ["Companions", "companions", "params_summary"]


@dataclass
class Companions:
    """The Lab's arguments once the folder's files are taken in, and what was taken (``loaded``: kind ->
    path) or missed, said in ``notes``."""

    files: Any
    labels: Any
    params: Any
    preproc: Any
    loaded: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _task_of(params: Any) -> str:
    if isinstance(params, dict):
        return str(params.get("task") or "binary")
    if isinstance(params, (str, os.PathLike)) and Path(params).is_file():
        try:
            data = json.loads(Path(params).read_text())
        except (OSError, ValueError):
            return "binary"   # load_params says what is wrong with it
        return str(data.get("task") or "binary") if isinstance(data, dict) else "binary"
    return str(getattr(params, "task", "binary") or "binary")


def _labels_beside(files_txt: Path) -> Path | None:
    name = files_txt.name
    paired = files_txt.with_name("labels" + name[len("files"):]) if name.startswith("files") else None
    for candidate in (paired, files_txt.with_name("labels.txt")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _shown(folder: Path) -> str:
    try:
        return os.path.relpath(folder) if not os.path.relpath(folder).startswith("..") else str(folder)
    except ValueError:   # another drive
        return str(folder)


def companions(files: Any, labels: Any = None, params: Any = None, preproc: Any = None) -> Companions:
    """Resolve a folder to its files.txt and take params.json, preproc.json and labels.txt from beside a
    files.txt where the caller gave none. ConfigError for a folder with neither files.txt nor ROOT files."""
    out = Companions(files, labels, params, preproc)
    if not isinstance(files, (str, os.PathLike)):
        return out
    path = Path(files).expanduser()
    listing: Path | None = None
    if path.is_dir():
        folder = path
        if (path / "files.txt").is_file():
            listing = path / "files.txt"
            out.files = str(listing)
        else:
            roots = sorted(str(p) for p in path.glob("*.root") if p.is_file())
            if not roots:
                raise ConfigError(f"folder {path} has no files.txt and no .root files: give a files.txt, a folder "
                                  "holding one, or a list of ROOT files", key="files")
            out.files = roots
    elif path.suffix == ".txt" and path.is_file():
        folder, listing = path.parent, path
    else:
        return out
    if params is None and (folder / "params.json").is_file():
        out.params = out.loaded["params"] = folder / "params.json"
    if preproc is None and (folder / "preproc.json").is_file():
        out.preproc = out.loaded["preproc"] = folder / "preproc.json"
    regression = _task_of(out.params) == "regression"
    if labels is None and not regression:
        found = _labels_beside(listing) if listing is not None else None
        if found is None and listing is None:
            raise ConfigError(f"folder {path} has no files.txt (and so no labels.txt): give labels=[...], one "
                              "per file in name order (1 signal, 0 background)", key="labels")
        if found is not None:
            out.labels = out.loaded["labels"] = found
    where = _shown(folder)
    beside = listing.name if listing is not None else "the ROOT files"
    if out.loaded:
        names = [p.name for p in out.loaded.values()]
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        out.notes.append(f"{listed} loaded from {where}/ (beside {beside}); pass params=..., preproc=... "
                         "to use others")
    if params is None and "params" not in out.loaded:
        out.notes.append(f"no params.json beside {beside} in {where}/: defaults, every numeric branch is a "
                         "feature; set the weight, identifiers and missing values in the Branches tab")
    return out


def params_summary(params) -> str:
    """The params that decide what a model sees, in one line (for the note under the loaded files)."""
    parts = [f"weight {params.weight}" if params.weight else "no weight branch"]
    if params.identifier:
        parts.append(f"identifier {', '.join(params.identifier)}")
    if params.missing_values:
        parts.append("missing values " + ", ".join(f"{v:g}" for v in params.missing_values))
    if params.selected_branches:
        parts.append(f"selected {', '.join(params.selected_branches)}")
    if params.exclude_branches:
        parts.append(f"excluded {', '.join(params.exclude_branches)}")
    parts.append(f"normalisation {params.normalization}")
    parts.append("split " + "/".join(f"{s:g}" for s in params.split))
    return "; ".join(parts)
