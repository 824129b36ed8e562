"""One record per training run, ``fout/run.json``, and the same run in MLflow where it is set up.

:func:`~mlaas4hep_lab.training.workflow.train` (so the CLI, the Lab and the jobs service alike) records
each run with a :class:`RunRecorder`: a subscriber of the trainer's
:class:`~mlaas4hep_lab.training.events.EventBus` that keeps the run's parameters, curves and metrics and
writes them while the run goes on (at most once a second, atomically: a temporary file then
``os.replace``, so a reader never sees half a file) and once more at the end. The JupyterLab Runs
sidebar reads these records to list and compare runs.

``run.json`` (``"format": 1``)::

    {"format": 1, "id": "20260101T120000-1a2b3c4d", "started": "2026-01-01T12:00:00+00:00",
     "finished": null | "...", "status": "running" | "finished" | "failed" | "stopped",
     "model": "model.py", "backend": "keras", "task": "binary", "params": {...params.json...},
     "files": [...], "labels": [...], "events_seen": 12800,
     "metrics": {"auc": 0.84, "auc_weighted": 0.91, ...},          # the test split, at the end
     "curves": {"chunk": {"loss": [...], "val_loss": [...], "auc": [...], "val_auc": [...],
                          "events": [...]},                      # one entry per chunk (XGBoost: "round")
                "epoch": {...}},                                 # one entry per pass
     "roc": {"fpr": [...], "tpr": [...], "auc": 0.84},           # binary: unweighted, <= 200 points
     "roc_weighted": {...},                                      # binary with a weight branch
     "bundle": "bundle", "warnings": [...], "error": "...",       # error: a failed run's one line
     "mlflow": {"run_id": "...", "experiment_id": "..."}}         # when logged to MLflow

Metric values that are not finite are ``null``; lists are aligned (a metric missing at a step is
``null`` there). A resumed run (``--resume``) keeps its ``id`` and ``started`` and the curves of the
checkpoint it continues.

MLflow: when ``mlflow`` (or ``mlflow-skinny``) is importable and ``MLFLOW_TRACKING_URI`` is set, the
recorder also logs the run to that tracking server (experiment ``$MLFLOW_EXPERIMENT_NAME``, default
``mlaas4hep``): the params, every chunk's (or round's) metrics with its step, each pass's as
``epoch_<name>``, the test metrics as ``test_<name>``, the bundle folder and run.json as artifacts, and
the end status (FINISHED, FAILED, KILLED for a stopped run). A tracking server that fails is said once in
a warning and the training goes on without it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import StoppedBeforeTraining
from mlaas4hep_lab.training.events import EventBus, MetricEvent, Throttle

__all__ = ["RunRecorder", "MlflowLogger", "read_run", "FORMAT", "RUN_FILE", "STATUSES", "MAX_ROC_POINTS"]

log = logging.getLogger(__name__)
FORMAT = 1
RUN_FILE = "run.json"
STATUSES = ("running", "finished", "failed", "stopped")
MAX_ROC_POINTS = 200
WRITE_INTERVAL = 1.0          # seconds between two writes while the run goes on
_CURVE_KINDS = ("chunk", "round", "epoch")
_CURVE_KEYS = ("loss", "val_loss", "auc", "val_auc")   # always present in a curve, first
_PARAM_VALUE_MAX = 6000       # MLflow's limit on a parameter's value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite numbers as None, numpy scalars and arrays as Python values."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, type(None))):
        return value
    return str(value)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The test metrics a run record keeps: numbers, strings and mappings of them (per class, per
    target); lists (ranking, confusion matrix) stay in metrics.json."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            if all(isinstance(v, (int, float, str, type(None))) for v in value.values()):
                out[key] = _plain(value)
        elif isinstance(value, (int, float, str, np.integer, np.floating, type(None))):
            out[key] = _plain(value)
    return out


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, max_points: int = MAX_ROC_POINTS) -> dict[str, Any]:
    if fpr.size > max_points:
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, max_points - 1).astype(int), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": np.round(fpr, 6).tolist(), "tpr": np.round(tpr, 6).tolist(), "auc": _plain(auc)}


def roc_record(test: Mapping[str, np.ndarray], weighted: bool = False) -> dict[str, Any] | None:
    """The ROC curve of a binary test split, at most :data:`MAX_ROC_POINTS` points (None with one class)."""
    from mlaas4hep_lab.training import evaluation

    y, score = np.asarray(test.get("y", [])), np.asarray(test.get("score", []))
    weight = test.get("weight") if weighted else None
    if weighted and weight is None:
        return None
    if score.ndim > 1 and score.shape[-1] != 1 or not len(y) or len(np.unique(y)) < 2:
        return None
    score = score.reshape(-1)
    fpr, tpr, _ = evaluation.roc_curve(y, score, weight, drop_intermediate=True)
    if not (np.isfinite(fpr[-1]) and np.isfinite(tpr[-1])):
        return None
    return _thin_roc(fpr, tpr, float(np.trapezoid(tpr, fpr)))


def read_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run record of ``folder`` (None when there is none, or not a format this version reads)."""
    try:
        data = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


class _Curves:
    """Aligned metric lists per event kind (chunk, round, epoch)."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, list]] = {}

    def add(self, kind: str, metrics: Mapping[str, Any], events: int) -> None:
        curve = self.kinds.setdefault(kind, {key: [] for key in (*_CURVE_KEYS, "events")})
        n = len(curve["events"])
        numbers = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
        for key in numbers:
            curve.setdefault(key, [None] * n)
        for key, series in curve.items():
            if key != "events":
                series.append(_plain(numbers.get(key)))
        curve["events"].append(int(events))

    def add_event_dict(self, event: Mapping[str, Any]) -> None:
        if event.get("kind") in _CURVE_KINDS:
            self.add(event["kind"], event.get("metrics") or {}, int(event.get("events_seen") or 0))

    def to_json(self) -> dict[str, Any]:
        return {kind: {k: list(v) for k, v in curve.items()} for kind, curve in self.kinds.items()}


class RunRecorder:
    """Record one training run in ``fout/run.json`` (and MLflow, where set up).

    Used by ``train`` as a context manager around the run; the bus delivers the metric events::

        with RunRecorder(fout, inputs, "model.py", bus) as record:
            return record.done(_train(...))      # the WorkflowResult, returned unchanged

    Leaving the block by an exception records ``failed`` (``stopped`` for a KeyboardInterrupt) with the
    error's one line. ``interval``: seconds between two writes while the run goes on; ``mlflow``: a
    :class:`MlflowLogger`, None for none, or the default: :meth:`MlflowLogger.from_environment`."""

    _DEFAULT: Any = object()

    def __init__(self, fout: str | os.PathLike, inputs, model: str | os.PathLike, bus: EventBus, *,
                 resume: bool = False, warnings: list[str] | tuple[str, ...] = (), interval: float = WRITE_INTERVAL,
                 mlflow: Any = _DEFAULT):
        self.fout = Path(fout)
        self.path = self.fout / RUN_FILE
        self.bus, self.resume, self.interval = bus, resume, float(interval)
        self.curves = _Curves()
        self.mlflow = MlflowLogger.from_environment() if mlflow is RunRecorder._DEFAULT else mlflow
        params = inputs.params
        self.record: dict[str, Any] = {
            "format": FORMAT, "id": f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
            "started": _now(), "finished": None, "status": "running", "model": Path(model).name,
            "backend": None, "task": getattr(params, "task", "binary"), "params": _plain(params.to_dict()),
            "files": [str(f) for f in inputs.files], "labels": _plain(list(inputs.labels)), "events_seen": 0,
            "metrics": {}, "curves": {}, "roc": None, "bundle": None, "warnings": list(warnings),
        }
        self._lock = threading.RLock()
        self._throttle = Throttle(self._write_running, self.interval)
        self._unsubscribe = None
        self._steps = {kind: 0 for kind in _CURVE_KINDS}

    # -- the run's frame --------------------------------------------------------------------------------
    def __enter__(self) -> RunRecorder:
        self.fout.mkdir(parents=True, exist_ok=True)
        previous = read_run(self.fout) if self.resume else None
        if previous is not None:   # the same run goes on: its identity, and its MLflow run
            self.record.update(id=previous.get("id", self.record["id"]),
                               started=previous.get("started", self.record["started"]))
            if previous.get("mlflow"):
                self.record["mlflow"] = previous["mlflow"]
        if self.mlflow is not None:
            self.mlflow.start(self.record)
            if self.mlflow.run_id:
                self.record["mlflow"] = {"run_id": self.mlflow.run_id, "experiment_id": self.mlflow.experiment_id}
        self._unsubscribe = self.bus.subscribe(self)
        self._throttle.flush()   # the first write, now; the next one an interval after it
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if exc is not None:
            stopped = isinstance(exc, (KeyboardInterrupt, StoppedBeforeTraining))
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            with self._lock:
                self.record.update(status="stopped" if stopped else "failed", finished=_now(),
                                   error=f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
            self._final()
        return False

    def done(self, out):
        """Record the end of a run from its ``WorkflowResult`` (returned unchanged)."""
        result = out.result
        with self._lock:
            if result.history:   # the trainer's own history: also what a resumed run took over
                self.curves = _Curves()
                for event in result.history:
                    self.curves.add_event_dict(event)
            metrics = _scalars(out.metrics)
            self.record.update(
                status="stopped" if result.stopped == "requested" else "finished", finished=_now(),
                metrics=metrics, backend=metrics.get("backend") or self.record["backend"],
                events_seen=int(metrics.get("events_seen") or self.record["events_seen"]),
                bundle=os.path.relpath(out.bundle, self.fout), curves=self.curves.to_json())
            if self.record["task"] == "binary":
                self.record["roc"] = roc_record(result.test)
                if result.test.get("weight") is not None:
                    self.record["roc_weighted"] = roc_record(result.test, weighted=True)
        self._final(Path(out.bundle))
        return out

    # -- events ---------------------------------------------------------------------------------------
    def __call__(self, event: MetricEvent) -> None:
        with self._lock:
            self.record["events_seen"] = max(int(event.events_seen), int(self.record["events_seen"] or 0))
            if event.kind == "start":
                self._on_start(event)
            elif event.kind in _CURVE_KINDS:
                self.curves.add(event.kind, event.metrics, event.events_seen)
                self.record["curves"] = self.curves.to_json()
                self._steps[event.kind] += 1
                if self.mlflow is not None:
                    self.mlflow.step(event.kind, self._steps[event.kind], event)
            elif event.kind == "end":
                self.record["metrics"] = _scalars(event.metrics)
        self._soon()

    def _on_start(self, event: MetricEvent) -> None:
        head = event.message.split(" backend", 1)[0] if " backend" in event.message else ""
        if head and " " not in head:
            self.record["backend"] = head
        if event.restored and self.resume:
            from mlaas4hep_lab.training.checkpoint import Checkpoint

            found = Checkpoint(self.fout).load()
            history = (found[0].get("history") or [])[:event.restored] if found else []
            for old in history:
                self.curves.add_event_dict(old)
                if old.get("kind") in _CURVE_KINDS:
                    self._steps[old["kind"]] += 1
            self.record["curves"] = self.curves.to_json()

    # -- writing --------------------------------------------------------------------------------------
    def _soon(self) -> None:
        """Write now if the last write is ``interval`` old, else once when it is (one timer at a time)."""
        self._throttle()

    def _write_running(self) -> None:
        with self._lock:
            if self.record["status"] == "running":   # the end's own write (_final) says the rest
                self._write()

    def _final(self, bundle: Path | None = None) -> None:
        self._throttle.flush()   # no pending write of the running state (not running any more: none now)
        self._write()
        if self.mlflow is not None:
            self.mlflow.finish(self.record, bundle, self.path)

    def _write(self) -> None:
        with self._lock:
            text = json.dumps(_plain(self.record), indent=1, allow_nan=False)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".run.json.", suffix=".tmp", dir=self.fout)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, self.path)
        except OSError as err:   # the record is a convenience: a full disk must not stop a training
            log.warning("cannot write %s: %s", self.path, err)


class MlflowLogger:
    """The run in MLflow, through ``MlflowClient`` (no global active run, so runs in threads do not mix).

    ``from_environment()`` gives one when ``MLFLOW_TRACKING_URI`` is set and mlflow is importable, else
    None. Every call is guarded: the first failure is one warning and the logger turns itself off."""

    def __init__(self, tracking_uri: str, experiment: str = "mlaas4hep"):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> MlflowLogger | None:
        env = os.environ if environ is None else environ
        uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        if not uri or importlib.util.find_spec("mlflow") is None:
            return None
        return cls(uri, env.get("MLFLOW_EXPERIMENT_NAME", "").strip() or "mlaas4hep")

    def _guard(self, what: str, fn, *args) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any tracking failure: said once, training goes on
            self.failed = True
            log.warning("MLflow logging stopped (%s at %s): %s: %s", what, self.tracking_uri, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
            return None

    def start(self, record: Mapping[str, Any]) -> None:
        self._guard("starting the run", self._start, record)

    def _start(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        previous = (record.get("mlflow") or {}).get("run_id")
        if previous:   # a resumed run: the same MLflow run, running again
            run = self.client.get_run(previous)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
            self.experiment)
        tags = {"mlaas4hep.id": record["id"], "mlaas4hep.model": record["model"], "mlaas4hep.task": record["task"],
                "mlaas4hep.files": str(len(record["files"]))}
        run = self.client.create_run(self.experiment_id, run_name=record["id"], tags=tags)
        self.run_id = run.info.run_id
        params = {**{k: v for k, v in record["params"].items()}, "model": record["model"]}
        items = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:_PARAM_VALUE_MAX])
                 for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):   # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def step(self, kind: str, step: int, event: MetricEvent) -> None:
        if self.run_id is not None:
            self._guard(f"{kind} {step}", self._step, kind, step, event)

    def _step(self, kind: str, step: int, event: MetricEvent) -> None:
        from mlflow.entities import Metric

        prefix = "epoch_" if kind == "epoch" else ""
        stamp = int(event.time * 1000)
        values = {f"{prefix}{k}": v for k, v in event.metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        values[f"{prefix}events_seen"] = float(event.events_seen)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def finish(self, record: Mapping[str, Any], bundle: Path | None, run_json: Path) -> None:
        if self.run_id is not None:
            self._guard("ending the run", self._finish, record, bundle, run_json)

    def _finish(self, record: Mapping[str, Any], bundle: Path | None, run_json: Path) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        final = [Metric(f"test_{k}", float(v), stamp, 0) for k, v in record.get("metrics", {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(final), 1000):
            self.client.log_batch(self.run_id, metrics=final[i:i + 1000])
        if record.get("backend"):
            self.client.set_tag(self.run_id, "mlaas4hep.backend", record["backend"])
        if bundle is not None and bundle.is_dir():
            self.client.log_artifacts(self.run_id, str(bundle), artifact_path="bundle")
        if run_json.is_file():
            self.client.log_artifact(self.run_id, str(run_json))
        status = {"finished": "FINISHED", "stopped": "KILLED"}.get(record.get("status"), "FAILED")
        self.client.set_terminated(self.run_id, status=status)
