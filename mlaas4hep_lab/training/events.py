"""Metric events published by the training loop, and their standard subscribers.

The loop publishes :class:`MetricEvent` objects to an :class:`EventBus`; a terminal progress bar, the
``metrics.jsonl`` log and (later) the notebook widgets subscribe to it. Subscribers run in the training
thread and must be quick; a subscriber that raises is removed with a warning, training goes on.
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

__all__ = ["MetricEvent", "EventBus", "JsonlLog", "ProgressBar", "History"]

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in self.metrics.items()}
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


class JsonlLog:
    """Append every event as one JSON line (``metrics.jsonl``)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("")

    def __call__(self, event: MetricEvent) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event.to_dict()) + "\n")


class History:
    """Keeps the per-chunk/per-round metrics in memory (for plots and early stopping)."""

    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def __call__(self, event: MetricEvent) -> None:
        if event.kind in ("chunk", "round", "epoch"):
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
