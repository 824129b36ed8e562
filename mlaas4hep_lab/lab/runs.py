"""Training runs below the server's root folder: how they are found and what is read from each.

A run folder is what ``mlaas4hep workflow --fout OUT`` and the Lab's Training tab (``WORKDIR/runs/<time>``)
write: ``metrics.jsonl`` (the metric events, one per chunk or boosting round, while it trains),
``metrics.json`` (the test metrics, at the end), ``bundle/`` (``manifest.json``: name, backend, task,
creation time; ``history.json``: the metric events), ``plots/`` and ``report_sample.npz`` (test labels,
scores and weights, from which the ROC curve is computed here).

Finding them: a breadth-first walk from the root, at most ``MAX_DEPTH`` folders deep and ``MAX_DIRS``
folders in all, that skips hidden folders and package trees (``node_modules``, ``site-packages``...) and
does not descend into a run. Folder listings are cached by the folder's modification time and run
summaries by their files' modification times, so a refresh costs one ``stat`` per folder.

One place to extend: a ``run.json`` written by the trainer (parameters, metrics, curves) would be read in
:func:`read_summary` and :func:`read_curves` before the files above, which stay the fallback for older runs.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunIndex", "read_summary", "read_curves", "roc_points", "is_run", "MAX_DEPTH", "MAX_DIRS"]

MAX_DEPTH = 6
MAX_DIRS = 5_000
MAX_ROC_POINTS = 200
RUNNING_S = 300          # a run without an end whose log moved this recently is "running"
_SKIP = {"node_modules", "site-packages", "__pycache__", "dist-packages", "lib64", "proc", "sys"}
_MARKERS = ("run.json", "metrics.jsonl", "metrics.json")
# numbers shown in the run table, in this order when present (test split)
_SHOWN = ("auc", "auc_weighted", "ams", "accuracy", "log_loss", "auc_macro", "rmse", "mae", "val_auc", "val_loss",
          "loss", "events_seen")


def is_run(names: set[str]) -> bool:
    """Whether a folder holding ``names`` is a run: a metric log, or test metrics beside a bundle."""
    return "run.json" in names or "metrics.jsonl" in names or ("metrics.json" in names and "bundle" in names)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _events(folder: Path) -> list[dict[str, Any]]:
    """The run's metric events: ``bundle/history.json`` once written, else ``metrics.jsonl``."""
    history = _read_json(folder / "bundle" / "history.json")
    if isinstance(history, list):
        return [e for e in history if isinstance(e, dict)]
    out = []
    try:
        with open(folder / "metrics.jsonl") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:   # a line being written
                    continue
                if isinstance(event, dict):
                    out.append(event)
    except OSError:
        pass
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_summary(folder: Path, api_path: str) -> dict[str, Any]:
    """One row of the Runs table: ``id`` (the folder's API path), ``date``, ``model``, ``backend``, ``task``,
    ``status`` (finished, running, incomplete), ``metrics`` (test numbers) and what curves it has."""
    record = _read_json(folder / "run.json")
    if isinstance(record, dict) and record.get("format") == 1:
        return _record_summary(folder, api_path, record)
    metrics = _read_json(folder / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    manifest = _read_json(folder / "bundle" / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    events = [] if metrics is not None and manifest else _events(folder)
    # the run's last activity: when it finished, or its latest metric event while it trains
    marks = [folder / m for m in _MARKERS if (folder / m).exists()]
    mtime = max((p.stat().st_mtime for p in marks), default=folder.stat().st_mtime)
    if metrics is not None:
        status = "finished"
    elif any(e.get("kind") == "end" for e in events):
        status = "finished"
    else:
        status = "running" if time.time() - mtime < RUNNING_S else "incomplete"
    if metrics is None:   # a run in progress: its latest numbers
        last = next((e for e in reversed(events) if e.get("metrics")), {})
        metrics = dict(last.get("metrics") or {}, events_seen=last.get("events_seen"))
    task = metrics.get("task") or (manifest.get("task") or {}).get("kind") or "binary"
    shown = {k: _number(metrics.get(k)) for k in _SHOWN if _number(metrics.get(k)) is not None}
    if not shown:
        shown = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
    return {
        "id": api_path,
        "name": folder.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime)),
        "time": float(mtime),
        "model": manifest.get("name") or "",
        "backend": manifest.get("backend") or metrics.get("backend") or "",
        "task": task,
        "status": status,
        "metrics": shown,
        "bundle": (folder / "bundle" / "manifest.json").is_file(),
        "roc": task == "binary" and (folder / "report_sample.npz").is_file(),
    }


def _record_summary(folder: Path, api_path: str, record: dict[str, Any]) -> dict[str, Any]:
    """The Runs table's row of a run that wrote ``run.json`` (mlaas4hep_lab.training.runlog): its own status
    (a "running" record not written for a while is a run that died: "incomplete")."""
    mtime = (folder / "run.json").stat().st_mtime
    status = str(record.get("status") or "incomplete")
    if status == "running" and time.time() - mtime >= RUNNING_S:
        status = "incomplete"
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    metrics = dict(metrics, events_seen=record.get("events_seen"))
    shown = {k: _number(metrics.get(k)) for k in _SHOWN if _number(metrics.get(k)) is not None}
    task = str(record.get("task") or "binary")
    return {
        "id": api_path,
        "name": folder.name,
        "date": str(record.get("started") or "")[:19] or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime)),
        "time": float(mtime),
        "model": str(record.get("model") or ""),
        "backend": str(record.get("backend") or ""),
        "task": task,
        "status": status,
        "metrics": shown,
        "bundle": (folder / "bundle" / "manifest.json").is_file(),
        "roc": task == "binary" and ((folder / "report_sample.npz").is_file()
                                     or isinstance(record.get("roc"), dict)),
    }


def roc_points(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None,
               max_points: int = MAX_ROC_POINTS) -> dict[str, Any]:
    """``{"fpr", "tpr", "auc"}`` of a binary classifier, at most ``max_points`` points (unweighted when
    ``weight`` is None; negative weights are kept, as the trainer's weighted AUC keeps them)."""
    y = np.asarray(y).reshape(-1) > 0.5
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    w = np.ones_like(score) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    order = np.argsort(-score, kind="stable")
    s, yy, ww = score[order], y[order], w[order]
    tp, fp = np.cumsum(ww * yy), np.cumsum(ww * ~yy)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.empty(0, int)   # tied scores
    P, N = (tp[-1], fp[-1]) if s.size else (0.0, 0.0)
    if not (P > 0 and N > 0):
        return {"fpr": [], "tpr": [], "auc": None}
    tpr, fpr = np.r_[0.0, tp[last] / P], np.r_[0.0, fp[last] / N]
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    if fpr.size > max_points:
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, max_points).astype(int), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(), "auc": auc}


def read_curves(folder: Path) -> dict[str, Any]:
    """What the comparison view overlays: ``history`` (the learning curve: ``x``, ``xlabel``, ``series``
    loss/val_loss/auc/val_auc, one point per chunk or boosting round) and ``roc`` (from the test sample,
    weighted and unweighted) when the run kept one."""
    from mlaas4hep_lab.training.report import learning_curve

    curve = learning_curve(_events(folder))
    curve["series"] = {k: [None if not math.isfinite(v) else v for v in vals] for k, vals in curve["series"].items()}
    out: dict[str, Any] = {"history": curve, "roc": None, "roc_weighted": None}
    sample = folder / "report_sample.npz"
    record = _read_json(folder / "run.json")
    if not sample.is_file() and isinstance(record, dict) and isinstance(record.get("roc"), dict):
        out["roc"] = record["roc"]   # the run's own thinned ROC (run.json), when no test sample was kept
        out["roc_weighted"] = record.get("roc_weighted") if isinstance(record.get("roc_weighted"), dict) else None
        return out
    if sample.is_file():
        try:
            with np.load(sample, allow_pickle=False) as z:
                y, score = z["y_test"], z["score_test"]
                w = z["w_test"] if "w_test" in z.files else None
        except (OSError, ValueError, KeyError):
            return out
        if score.ndim == 1 or (score.ndim == 2 and score.shape[1] == 1):
            out["roc"] = roc_points(y, score)
            if w is not None:
                out["roc_weighted"] = roc_points(y, score, w)
    return out


class RunIndex:
    """The runs below ``root``, found by a bounded walk and cached by modification times.

    Example::

        index = RunIndex(Path.home())
        rows, complete = index.runs()      # newest first; complete is False when the walk hit its bounds
    """

    def __init__(self, root: Path, max_depth: int = MAX_DEPTH, max_dirs: int = MAX_DIRS):
        self.root = Path(root).resolve()
        self.max_depth, self.max_dirs = max_depth, max_dirs
        self._listings: dict[str, tuple[int, list[str], bool]] = {}   # folder -> (mtime_ns, subfolders, is run)
        self._summaries: dict[str, tuple[tuple, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _listing(self, folder: str) -> tuple[list[str], bool]:
        st = os.stat(folder)
        cached = self._listings.get(folder)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1], cached[2]
        names, subdirs = set(), []
        with os.scandir(folder) as it:
            for entry in it:
                names.add(entry.name)
                if entry.name.startswith(".") or entry.name in _SKIP:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                except OSError:
                    continue
        run = is_run(names)
        self._listings[folder] = (st.st_mtime_ns, sorted(subdirs), run)
        return sorted(subdirs), run

    def folders(self) -> tuple[list[str], bool]:
        """Run folders (absolute) and whether the walk saw every folder within its depth."""
        found, complete, seen = [], True, 0
        queue = deque([(str(self.root), 0)])
        while queue:
            folder, depth = queue.popleft()
            seen += 1
            if seen > self.max_dirs:
                return found, False
            try:
                subdirs, run = self._listing(folder)
            except OSError:
                continue
            if run:
                found.append(folder)
                continue
            if depth >= self.max_depth:
                complete = complete and not subdirs
                continue
            queue.extend((os.path.join(folder, d), depth + 1) for d in subdirs)
        return found, complete

    def _key(self, folder: Path) -> tuple:
        key = []
        for name in (*_MARKERS, "bundle/manifest.json", "report_sample.npz"):
            try:
                key.append((folder / name).stat().st_mtime_ns)
            except OSError:
                key.append(None)
        return tuple(key)

    def runs(self) -> tuple[list[dict[str, Any]], bool]:
        """Every run's summary, newest first, and whether the walk was complete."""
        with self._lock:
            folders, complete = self.folders()
            rows = []
            for f in folders:
                folder = Path(f)
                key = self._key(folder)
                cached = self._summaries.get(f)
                if cached is None or cached[0] != key:
                    try:
                        rel = folder.relative_to(self.root).as_posix()
                        cached = (key, read_summary(folder, rel))
                    except OSError:
                        continue
                    self._summaries[f] = cached
                rows.append(cached[1])
            for gone in set(self._summaries) - set(folders):
                del self._summaries[gone]
        rows.sort(key=lambda r: r["time"], reverse=True)
        return rows, complete
