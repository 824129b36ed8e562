"""A training run in a background thread, as the Training panel drives it (plain Python, no widgets).

:class:`TrainingRun` computes the specs, calls :func:`mlaas4hep_lab.training.workflow.train` with an
:class:`~mlaas4hep_lab.training.events.EventBus` it subscribes to and a stop event, and keeps what the
plots need (loss and AUC per step, train and validation, events/s). Views register with
:meth:`TrainingRun.on_update`; they are called at most every ``interval`` seconds while metric events
arrive (a throttle: a plot is not redrawn per event) and always once at the end.

Where it runs: the state's ``dask`` (the panel's "Run on"): None trains in this kernel, as always; an address
(``local:N``, ``gateway``...) opens that cluster when the run starts (:func:`~mlaas4hep_lab.cluster.connect.
connect`), hands it to the specs pass and to ``train`` as ``dask=``, shows its dashboard's link, and closes it
when the run ends, fails or is stopped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import StoppedBeforeTraining
from mlaas4hep_lab.training.events import EventBus, MetricEvent, Throttle
from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.widgets import tasks
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["TrainingRun", "Curves", "Throttle", "STATES", "CLUSTER_STATES", "kept_fraction"]

log = logging.getLogger(__name__)
STATES = ("idle", "running", "stopping", "stopped", "done", "failed")
CLUSTER_STATES = ("", "starting", "open", "closed")   # "": no cluster (this kernel)
_UNSET: Any = object()


@dataclass
class Curves:
    """Metric values per training step (a chunk, a boosting round or a pass)."""

    step: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metrics: dict[str, Any]) -> None:
        self.step.append(len(self.step) + 1)
        keys = set(self.values) | {k for k, v in metrics.items() if isinstance(v, (int, float))}
        for key in keys:
            series = self.values.setdefault(key, [math.nan] * (len(self.step) - 1))
            value = metrics.get(key)
            series.append(float(value) if isinstance(value, (int, float)) and value is not None else math.nan)

    def series(self, *keys: str) -> dict[str, tuple[list[int], list[float]]]:
        return {k: (self.step, self.values[k]) for k in keys if k in self.values}

    def __len__(self) -> int:
        return len(self.step)


class TrainingRun:
    """Train the state's current choices in a background thread.

    Example (what the Start button does)::

        run = TrainingRun(state)
        run.on_update(lambda: print(run.status, len(run.curves)))
        run.start(); ...; run.stop(); run.join()
    """

    def __init__(self, state: LabState, interval: float = 0.5, dask: Any = _UNSET):
        self.state = state
        self.dask = state.dask if dask is _UNSET else dask   # None: this kernel
        self.cluster: Any = None                 # the Cluster while it is open
        self.cluster_state = ""                  # CLUSTER_STATES
        self.dashboard_link: str | None = None   # the cluster's Dask dashboard (through the hub's proxy on the hub)
        self.workers = 0                         # the cluster's workers when it opened
        self.status = "idle"
        self.message = ""
        self.curves = Curves()
        self.events_seen = 0
        self.events_total = 0                    # the training events expected, after the cuts
        self.events_per_second = 0.0
        self._kept = 1.0                         # training events after the cuts / before (from the specs)
        self.task: str = state.params.task       # binary, multiclass or regression (params "task")
        self.weighted = bool(state.params.weight)   # the curves' and the ROC's AUC use the event weights
        self.result: Any = None                  # WorkflowResult when done
        self.summary: dict[str, Any] = {}        # the task's test numbers and the bundle (tasks.summary_of)
        self.roc: tuple[np.ndarray, np.ndarray] | None = None   # binary only (weighted when ``weighted``)
        self.report: dict[str, Path] = {}        # the training report's (binary) or task's PNGs by name
        self.error = ""
        self.fout: Path | None = None
        self.bus = EventBus()
        self.bus.subscribe(self.on_event)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._views: list[Callable[[], None]] = []
        self._notify_lock = threading.Lock()
        self._throttle = Throttle(self._notify, interval)

    # -- views ----------------------------------------------------------------------------------------
    def on_update(self, fn: Callable[[], None]) -> None:
        self._views.append(fn)

    def _notify(self) -> None:
        with self._notify_lock:   # the throttle's timer and the training thread may both get here
            self._notify_views()

    def _notify_views(self) -> None:
        for fn in list(self._views):
            try:
                fn()
            except Exception:  # a broken view must not stop training
                log.exception("training view update failed")

    # -- metric events --------------------------------------------------------------------------------
    def on_event(self, event: MetricEvent) -> None:
        """Subscriber of the trainer's bus: keep the numbers, update the views (throttled). The trainer's
        expected total counts the events read; the bar counts those the cuts keep, and is full at the end
        of a run that was not stopped."""
        self.events_seen = event.events_seen
        self.events_total = max(round(event.events_total * self._kept), self.events_total)
        if event.kind == "end" and event.message != "requested":
            self.events_total = self.events_seen
        self.events_per_second = event.events_per_second
        # batch-mode trainers publish one "chunk" event per chunk and an "epoch" event repeating the last
        # one; XGBoost publishes "round"s; estimators fitted once publish only the "epoch"
        if event.kind in ("chunk", "round") and event.metrics:
            self._steps += 1
            self.curves.add(event.metrics)
        elif event.kind == "epoch" and event.metrics and not self._steps:
            self.curves.add(event.metrics)
        if event.kind == "end":
            self._throttle.flush()
        else:
            self._throttle()

    _steps = 0

    # -- control --------------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("a training run is in progress; stop it first")
        self.status, self.message = "running", "computing specs"
        self._thread = threading.Thread(target=self._run, name="mlaas4hep-training", daemon=True)
        self._thread.start()
        self._throttle.flush()
        return self._thread

    def stop(self) -> None:
        """Ask the trainer to stop after the current batch (Keras, torch) or chunk/round."""
        if self.status == "running":
            self.status = "stopping"
            self._stop.set()
            self._throttle.flush()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run; True when it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        from mlaas4hep_lab.data.specs import compute_specs
        from mlaas4hep_lab.training import evaluation
        from mlaas4hep_lab.training.report import report_pngs
        from mlaas4hep_lab.training.workflow import train

        state = self.state
        try:
            inputs = state.inputs()
            model = state.model_path()
            cluster = self._open_cluster()
            self.message = "computing specs"
            if cluster is not None:
                self._throttle.flush()   # the cluster's link, with what the run does now
            specs = compute_specs(inputs.files, inputs.params, inputs.preproc, progress=False, dask=cluster)
            state.workdir.mkdir(parents=True, exist_ok=True)
            specs.save(state.workdir / "specs.json")
            state.set_specs(specs)
            self._kept = kept_fraction(specs)
            if self._stop.is_set():
                raise _Stopped
            self.message = f"training {model.name}"
            self.fout = state.workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")
            out = train(inputs, specs, model, self.fout, bus=self.bus, stop=self._stop, progress=False,
                        name=_safe_name(f"lab-{state.model if state.model in TEMPLATES else model.stem}"),
                        dask=cluster)
            self.result = out
            test = out.result.test
            if self.task == "binary" and len(test["y"]) and len(np.unique(test["y"])) > 1:
                fpr, tpr, _ = evaluation.roc_curve(test["y"], test["score"], test.get("weight"),
                                                   drop_intermediate=True)
                self.roc = (fpr, tpr)
            self.summary = {**tasks.summary_of(self.task, out.metrics), "bundle": str(out.bundle),
                            "stopped": out.result.stopped}
            if self.task == "binary":
                self.report = report_pngs(self.fout / "plots")
            else:
                names = self.summary.get("classes") or self.summary.get("targets") or []
                self.report = tasks.task_pngs(self.fout / "plots", self.task, [str(n) for n in names])
            state.set_bundle(out.bundle, out)
            self.status = "stopped" if out.result.stopped == "requested" else "done"
            self.message = f"bundle {out.bundle}"
        except (_Stopped, StoppedBeforeTraining):   # the Stop button before anything was trained
            self.status, self.message = "stopped", "stopped before training"
        except Exception as err:  # shown in the panel; the kernel stays alive
            self.status = "failed"
            text = err.args[0] if isinstance(err, KeyError) and err.args else err   # a KeyError's str() quotes
            self.error = f"{type(err).__name__}: {text}"
            self.message = "the error is below"   # said once, under the plots: the buttons keep their room
            log.debug("training failed:\n%s", traceback.format_exc())
        finally:
            self._close_cluster()
            self._throttle.flush()

    # -- the cluster ----------------------------------------------------------------------------------
    def _open_cluster(self):
        """Open the run's cluster (None: this kernel); a stop asked meanwhile ends the run before training."""
        if self.dask is None:
            return None
        from mlaas4hep_lab.cluster.connect import connect

        self.cluster_state, self.message = "starting", f"starting a Dask cluster ({self.dask})"
        self._throttle.flush()
        self.cluster = connect(self.dask)
        self.cluster_state = "open"
        self.dashboard_link, self.workers = self.cluster.dashboard_link, self.cluster.n_workers
        if self._stop.is_set():
            raise _Stopped
        return self.cluster

    def _close_cluster(self) -> None:
        if self.cluster_state == "starting":   # it never opened: the run's error says why
            self.cluster_state = ""
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            try:
                cluster.close()
            except Exception:  # noqa: BLE001  the run's result stands; the gateway's idle timeout cleans up
                log.warning("closing the Dask cluster %r failed", cluster.address, exc_info=True)
            self.cluster_state = "closed"


class _Stopped(Exception):
    pass


def kept_fraction(specs) -> float:
    """The training events after the cuts over the training share of the events read (the specs pass's
    counts): the factor from the trainer's expected events (read) to those it will train on. 1 when the
    specs do not say (older specs files)."""
    read = sum(int(c.get("read", 0)) for c in specs.cutflow.values())
    split = specs.split_events or {}
    train = sum(int(v[0]) for v in (split.get("files") or {}).values())
    fraction = float((split.get("split") or [0])[0])
    if read and train and fraction > 0:
        return train / (read * fraction)
    passed = specs.events.get("total") if isinstance(specs.events, dict) else None
    return min(1.0, passed / read) if read and passed else 1.0


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return cleaned or "lab-model"
