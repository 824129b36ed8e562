"""Metric events published by the training loop, and their standard subscribers.

The loop publishes :class:`MetricEvent` objects to an :class:`EventBus`; a terminal progress bar, the
``metrics.jsonl`` log and the notebook widgets subscribe to it. Subscribers run in the training
thread and must be quick; a subscriber that raises is removed with a warning, training goes on.

``metrics.jsonl`` holds the history of one run: a new run starts it afresh; a resumed run (``--resume``)
keeps the lines of the run it resumes up to its checkpoint (the ``start`` line and the ``restored``
chunk/round/epoch lines the checkpoint holds) and appends its own, so no chunk or round appears twice
and the events-seen axis goes on.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MetricEvent", "EventBus", "JsonlLog", "ProgressBar", "History", "Throttle"]

log = logging.getLogger(__name__)


@dataclass
class MetricEvent:
    """One step of training: ``kind`` is ``start``, ``chunk``, ``round``, ``epoch``, ``evaluation`` or ``end``."""

    kind: str
    epoch: int = 0
    chunk: int = 0
    n_chunks: int = 0
    events_seen: int = 0          # training events consumed so far (all epochs)
    events_total: int = 0         # training events expected in the whole run (estimate)
    metrics: dict[str, float] = field(default_factory=dict)
    events_per_second: float = 0.0
    time: float = field(default_factory=time.time)
    message: str = ""
    # on the ``start`` event of a resumed run: how many chunk/round/epoch events it takes over from the
    # checkpoint (left out of the JSON when 0, as on every other event)
    restored: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in self.metrics.items()}
        if not d["restored"]:
            del d["restored"]
        return d


class EventBus:
    """Publish/subscribe of metric events (thread-safe)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[MetricEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[MetricEvent], None]) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it."""
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, event: MetricEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except Exception as err:  # a broken view must not stop training
                log.warning("metric subscriber %r raised %s: %s; removed", fn, type(err).__name__, err)
                with self._lock:
                    if fn in self._subscribers:
                        self._subscribers.remove(fn)


_HISTORY_KINDS = ("chunk", "round", "epoch")   # the events History keeps (and checkpoints carry)


class JsonlLog:
    """Write every event as one JSON line (``metrics.jsonl``): one history per run.

    Args:
        path: the file.
        append: the run may be a resumed one (``--resume``). The file is then kept until the run's
            ``start`` event: a start with ``restored=N`` keeps the previous file's first ``start`` line and
            its first N chunk/round/epoch lines (those the checkpoint holds) and drops the rest (events
            after the checkpoint, which are done again, and the previous ``end``); a start without
            ``restored`` (no checkpoint was found) starts the file afresh. Without ``append`` the file is
            emptied at once: a new run into an existing folder does not mix with the previous one.
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending = append
        if not append:
            self.path.write_text("")

    def __call__(self, event: MetricEvent) -> None:
        if self._pending and event.kind == "start":
            self._pending = False
            self._continue(event.restored)
        with self.path.open("a") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    def _continue(self, restored: int) -> None:
        kept: list[str] = []
        if restored and self.path.is_file():
            started, history = False, 0
            for line in self.path.read_text().splitlines():
                try:
                    kind = json.loads(line).get("kind")
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut short by the kill
                if kind == "start" and not started:
                    started = True
                    kept.append(line)
                elif kind in _HISTORY_KINDS and history < restored:
                    history += 1
                    kept.append(line)
            if history < restored:
                log.warning("%s holds %d of the %d metric events of the checkpoint being resumed (was it edited "
                            "or removed?); the history in it is incomplete", self.path, history, restored)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)


class History:
    """Keeps the per-chunk/per-round metrics in memory (for plots and early stopping)."""

    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def __call__(self, event: MetricEvent) -> None:
        if event.kind in _HISTORY_KINDS:
            self.events.append(event)

    def series(self, key: str) -> list[float]:
        return [e.metrics.get(key, float("nan")) for e in self.events]


class ProgressBar:
    """A tqdm bar over training events, with the latest loss and validation AUC."""

    def __init__(self, desc: str = "training", disable: bool = False):
        self.desc, self.disable = desc, disable
        self._bar = None

    def __call__(self, event: MetricEvent) -> None:
        if self.disable:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=event.events_total or None, desc=self.desc, unit="evt", unit_scale=True)
        if event.kind in ("chunk", "round", "epoch"):
            self._bar.n = event.events_seen
            shown = {k: f"{v:.4f}" for k, v in event.metrics.items()
                     if k in ("loss", "val_loss", "val_auc", "auc") and isinstance(v, float) and math.isfinite(v)}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.refresh()
        if event.kind == "end":
            self._bar.close()


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
