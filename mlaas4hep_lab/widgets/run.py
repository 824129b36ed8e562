"""A training run in a background thread, as the Training panel drives it (plain Python, no widgets).

:class:`TrainingRun` computes the specs, calls :func:`mlaas4hep_lab.training.workflow.train` with an
:class:`~mlaas4hep_lab.training.events.EventBus` it subscribes to and a stop event, and keeps what the
plots need (loss and AUC per step, train and validation, events/s). Views register with
:meth:`TrainingRun.on_update`; they are called at most every ``interval`` seconds while metric events
arrive (a throttle: a plot is not redrawn per event) and always once at the end.
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

from mlaas4hep_lab.training.events import EventBus, MetricEvent
from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.widgets import tasks
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["TrainingRun", "Curves", "Throttle", "STATES"]

log = logging.getLogger(__name__)
STATES = ("idle", "running", "stopping", "stopped", "done", "failed")


class Throttle:
    """Call ``fn`` at most once per ``interval`` seconds; a call inside the interval is delivered at its
    end (by a timer), so the last state is always shown. ``flush()`` delivers now."""

    def __init__(self, fn: Callable[[], None], interval: float = 0.5):
        self.fn, self.interval = fn, float(interval)
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self.fn()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self.fn()

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last = time.monotonic()
        self.fn()


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

    def __init__(self, state: LabState, interval: float = 0.5):
        self.state = state
        self.status = "idle"
        self.message = ""
        self.curves = Curves()
        self.events_seen = 0
        self.events_total = 0
        self.events_per_second = 0.0
        self.task: str = state.params.task       # binary, multiclass or regression (params "task")
        self.result: Any = None                  # WorkflowResult when done
        self.summary: dict[str, Any] = {}        # the task's test numbers and the bundle (tasks.summary_of)
        self.roc: tuple[np.ndarray, np.ndarray] | None = None   # binary only
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
        """Subscriber of the trainer's bus: keep the numbers, update the views (throttled)."""
        self.events_seen = event.events_seen
        self.events_total = max(event.events_total, self.events_total)
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
            specs = compute_specs(inputs.files, inputs.params, inputs.preproc, progress=False)
            state.workdir.mkdir(parents=True, exist_ok=True)
            specs.save(state.workdir / "specs.json")
            state.set_specs(specs)
            if self._stop.is_set():
                raise _Stopped
            self.message = f"training {model.name}"
            self.fout = state.workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")
            out = train(inputs, specs, model, self.fout, bus=self.bus, stop=self._stop, progress=False,
                        name=_safe_name(f"lab-{state.model if state.model in TEMPLATES else model.stem}"))
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
        except _Stopped:
            self.status, self.message = "stopped", "stopped before training"
        except Exception as err:  # shown in the panel; the kernel stays alive
            self.status = "failed"
            self.error = f"{type(err).__name__}: {err}"
            self.message = self.error
            log.debug("training failed:\n%s", traceback.format_exc())
        finally:
            self._throttle.flush()


class _Stopped(Exception):
    pass


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return cleaned or "lab-model"
