"""What the "Inspect" view of a ``.root`` file shows: its trees and branches (the engine's
:class:`~mlaas4hep_lab.data.reader.TreeReader`), the labels a files.txt gives it, and one branch's histogram,
binned here with numpy on a bounded sample so the browser only draws counts.

Labels are known when the file is listed in a ``files*.txt`` of its folder (or the folder above) with the
matching ``labels*.txt`` beside it (``files.txt``/``labels.txt``, ``files_train.txt``/``labels_train.txt``);
the histogram then overlays one curve per label (signal, background), each from the first entries of
that label's files. Values listed in ``missing_values`` of the params.json beside the files.txt (the Higgs
challenge's ``-999``) are counted, not drawn.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.reader import TreeReader

__all__ = ["describe_file", "find_labels", "histogram", "LabelInfo", "MAX_SAMPLE", "MAX_FILES"]

MAX_SAMPLE = 20_000      # entries read per file for a histogram
MAX_FILES = 4            # files read per label
MAX_BINS = 60
INTEGER_BINS = 100       # integer branches spanning at most this many values get one bin per integer
_TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


@dataclass
class LabelInfo:
    """The files.txt that lists a file, with its label and every file of the list grouped by label."""

    files_txt: Path
    labels_txt: Path
    label: float
    groups: dict[float, list[str]] = field(default_factory=dict)
    missing_values: list[float] = field(default_factory=list)


def label_name(label: float, kinds: int) -> str:
    """``signal``/``background`` for a two-class list, ``class k`` otherwise."""
    if kinds <= 2 and label in (0.0, 1.0):
        return "signal" if label == 1.0 else "background"
    return f"class {label:g}"


def _candidates(folder: Path) -> list[tuple[Path, Path]]:
    """(files*.txt, labels*.txt) pairs of a folder, files.txt first."""
    pairs = []
    for ft in sorted(folder.glob("files*.txt"), key=lambda p: (p.name != "files.txt", p.name)):
        lt = folder / ("labels" + ft.name[len("files"):])
        if ft.is_file() and lt.is_file():
            pairs.append((ft, lt))
    return pairs


def find_labels(path: str | Path, stop: str | Path | None = None) -> LabelInfo | None:
    """The first files.txt (with its labels.txt) of the file's folder, or the folder above (not above
    ``stop``), that lists ``path``; None when none does."""
    target = Path(path).resolve()
    folders = [target.parent]
    parent = target.parent.parent
    if stop is None or Path(stop).resolve() in (parent, *parent.parents):
        folders.append(parent)
    for folder in folders:
        for ft, lt in _candidates(folder):
            try:
                files = sources.read_file_list(ft)
                labels = sources.read_labels(lt, len(files))
            except Exception:  # noqa: BLE001 - another user's broken list is no reason to fail the view
                continue
            resolved = [str(Path(f).resolve()) if not sources.is_remote(f) else f for f in files]
            if str(target) not in resolved:
                continue
            groups: dict[float, list[str]] = {}
            for f, lab in zip(resolved, labels):
                groups.setdefault(float(lab), []).append(f)
            return LabelInfo(ft, lt, float(labels[resolved.index(str(target))]), groups,
                             _missing_values(ft.parent / "params.json"))
    return None


def _missing_values(params_json: Path) -> list[float]:
    try:
        values = json.loads(params_json.read_text()).get("missing_values") or []
        return [float(v) for v in (values if isinstance(values, list) else [values])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def tree_names(path: str | Path) -> list[str]:
    """Every TTree and RNTuple in the file (``dir/events`` for one in a folder)."""
    f = sources.open_file(str(path))
    try:
        names = [k.split(";")[0] for k, c in f.classnames(recursive=True).items() if c in _TREE_CLASSES]
    finally:
        f.close()
    return list(dict.fromkeys(names))


def describe_file(path: str | Path, root: Path | None = None) -> dict[str, Any]:
    """Trees, branches (name, type, dtype, flat/jagged) and skipped leaves of a ROOT file, with its labels.

    Example::

        describe_file("example/higgs/higgs_signal.root")["trees"][0]["branches"][0]
        # {'name': 'DER_deltaeta_jet_jet', 'type': 'float', 'dtype': 'float32', 'kind': 'flat', 'length': None}
    """
    path = Path(path)
    trees = []
    for name in tree_names(path):
        with TreeReader(str(path), name, decompression_workers=0) as r:
            trees.append({
                "name": name,
                "kind": "RNTuple" if r.is_rntuple else "TTree",
                "entries": r.num_entries,
                "branches": [{"name": b.name, "type": b.typename, "dtype": str(b.dtype), "kind": b.kind,
                              "length": b.fixed_length} for b in r.branches.values()],
                "skipped": [{"name": n, "type": r.skipped_types.get(n, ""), "why": why}
                            for n, why in r.skipped.items()],
            })
    info = find_labels(path, root)
    labels = None
    if info is not None:
        rel = (lambda p: str(Path(p).relative_to(root))) if root else str
        kinds = len(info.groups)
        labels = {"label": info.label, "name": label_name(info.label, kinds), "files_txt": rel(info.files_txt),
                  "labels_txt": rel(info.labels_txt),
                  "groups": [{"label": lab, "name": label_name(lab, kinds), "files": len(files)}
                             for lab, files in sorted(info.groups.items(), reverse=True)]}
    return {"size": path.stat().st_size, "trees": trees, "labels": labels}


def _sample(path: str, tree: str, branch: str, n: int) -> tuple[np.ndarray, str] | None:
    """The branch's values in the first ``n`` entries (lists flattened) and its dtype kind; None if the
    file has no such numeric branch."""
    with TreeReader(path, tree, decompression_workers=0) as r:
        info = r.branches.get(branch)
        if info is None:
            return None
        arr = r.read([branch], 0, min(n, r.num_entries))[branch]
    import awkward as ak

    if info.kind == "jagged":
        arr = ak.flatten(arr, axis=None)
    return np.asarray(ak.to_numpy(arr)), np.dtype(info.dtype).kind


def _edges(values: np.ndarray, integer: bool, bins: int | None) -> tuple[np.ndarray, bool]:
    """Bin edges over the sample: one bin per integer for a narrow integer branch, else ``bins`` equal
    bins over the 0.5-99.5 % range (the tails are counted as under- and overflow)."""
    if values.size == 0:
        return np.linspace(0.0, 1.0, 2), False
    lo, hi = float(values.min()), float(values.max())
    if integer and hi - lo <= INTEGER_BINS:
        return np.arange(lo - 0.5, hi + 1.5, 1.0), True
    if values.size > 100:
        lo, hi = (float(q) for q in np.quantile(values, [0.005, 0.995]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, (bins or 40) + 1), False


def histogram(path: str | Path, tree: str, branch: str, root: Path | None = None, bins: int | None = None,
              sample: int = MAX_SAMPLE) -> dict[str, Any]:
    """Binned counts of one branch: one series for the file alone, or one per label (its files.txt's
    files, ``MAX_FILES`` each at most) when labels are known. Raises KeyError for a branch the file lacks.

    Returns ``{"edges", "integer", "series": [{"name", "label", "counts", "entries", "underflow",
    "overflow", "mean", "std", "files"}], "missing": {value: count}, "sample": n}``.
    """
    bins = None if bins is None else max(1, min(int(bins), MAX_BINS))
    path = Path(path).resolve()
    info = find_labels(path, root)
    # local files only: a remote one could keep the server waiting on the network
    groups = ({lab: [f for f in files if not sources.is_remote(f)][:MAX_FILES]
               for lab, files in sorted(info.groups.items(), reverse=True)}
              if info is not None else {math.nan: [str(path)]})
    missing_values = info.missing_values if info is not None else []
    first = _sample(str(path), tree, branch, sample)
    if first is None:
        raise KeyError(f"no numeric branch {branch!r} in tree {tree!r} of {path.name}")
    integer = first[1] in "biu"
    values: dict[float, list[np.ndarray]] = {}
    missing: dict[float, int] = {}
    for lab, files in groups.items():
        for f in files:
            got = first if f == str(path) else _sample(f, tree, branch, sample)
            if got is None:
                continue
            v = got[0].astype(np.float64, copy=False)
            for m in missing_values:
                hit = v == m
                if hit.any():
                    missing[m] = missing.get(m, 0) + int(hit.sum())
                    v = v[~hit]
            values.setdefault(lab, []).append(v[np.isfinite(v)])
    merged = {lab: np.concatenate(parts) if parts else np.empty(0) for lab, parts in values.items()}
    edges, unit = _edges(np.concatenate(list(merged.values())) if merged else np.empty(0), integer, bins)
    kinds = len(groups)
    series = []
    for lab, v in merged.items():
        counts, _ = np.histogram(v, edges)
        series.append({
            "name": path.name if math.isnan(lab) else label_name(lab, kinds),
            "label": None if math.isnan(lab) else lab,
            "counts": counts.tolist(), "entries": int(v.size),
            "underflow": int((v < edges[0]).sum()), "overflow": int((v > edges[-1]).sum()),
            "mean": float(v.mean()) if v.size else None, "std": float(v.std()) if v.size else None,
            "files": len(values[lab]),
        })
    return {"branch": branch, "tree": tree, "edges": edges.tolist(), "integer": unit, "series": series,
            "missing": {f"{k:g}": n for k, n in missing.items()}, "sample": sample}
