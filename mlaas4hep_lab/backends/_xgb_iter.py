"""XGBoost's side of the chunk stream: the ``xgboost.DataIter`` that feeds it chunks, and Ctrl-C held back
while XGBoost's C++ calls into Python.

XGBoost builds a ``QuantileDMatrix`` by calling ``DataIter.next`` from C++ through ctypes. A
``KeyboardInterrupt`` raised there (xgboost's wrapper catches only ``Exception``) is dropped by ctypes
mid-way through handing a chunk to C++, whose staged arrays may then be freed under it: the process ended in
``munmap_chunk(): invalid pointer``, ``corrupted size vs. prev_size`` or a segfault instead of "interrupted".
:func:`deferred_interrupt` holds the first Ctrl-C back (a second one is delivered at once): the iterator ends
its pass early, and the interrupt is raised where only Python is on the stack (after the matrix is built,
after a boosting round).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends.base import ChunkSource
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import Task

__all__ = ["iterator_class", "deferred_interrupt", "Deferred"]


class Deferred:
    """A Ctrl-C held back: ``pending`` is set by it; :meth:`check` raises it where that is safe."""

    def __init__(self) -> None:
        self.pending = threading.Event()

    def check(self) -> None:
        if self.pending.is_set():
            self.pending.clear()
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Deferred]:
    """Hold SIGINT back while the block runs (main thread, where Python raises it; elsewhere nothing to
    hold), then raise it. A second SIGINT goes to the previous handler at once."""
    deferred = Deferred()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield deferred   # SIG_DFL ends the process, SIG_IGN ignores: no exception to land in C++ either way
        return

    def hold(signum, frame):
        if deferred.pending.is_set():   # Ctrl-C again: the user insists
            signal.signal(signal.SIGINT, previous)
            previous(signum, frame)
        deferred.pending.set()

    signal.signal(signal.SIGINT, hold)
    try:
        yield deferred
    except Exception as err:
        if deferred.pending.is_set():   # XGBoost's complaint about a pass the interrupt cut short
            raise KeyboardInterrupt from err
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    deferred.check()


@functools.cache
def iterator_class() -> type:
    """The DataIter subclass, defined on first use so that xgboost is imported only then."""
    xgb = extras.xgboost()

    class ChunkIter(xgb.DataIter):
        """Feeds XGBoost one chunk per ``next``; ``reset`` starts a new pass over the ChunkSource."""

        def __init__(self, source: ChunkSource, n_features: int, what: str, *, cache_prefix: str | None = None,
                     probe: Callable[[np.ndarray], None] | None = None, task: Task | None = None,
                     deferred: Deferred | None = None):
            self._source, self._n_features, self._what = source, n_features, what
            self._task = task or Task()
            self._iterator = None
            self._weighted: bool | None = None
            self._probe = probe
            self._deferred = deferred or Deferred()
            self.n_next = self.n_reset = self.passes = 0
            self.events_last_pass = self._events = 0
            super().__init__(cache_prefix=cache_prefix, release_data=True)

        def next(self, input_data: Callable[..., None]) -> bool:
            self.n_next += 1
            if self._deferred.pending.is_set():   # Ctrl-C: end the pass; raised once XGBoost has returned
                return False
            if self._iterator is None:
                self._iterator = iter(self._source())
                self.passes += 1
                self._events = 0
            for X, y, weight in self._iterator:
                if len(X) == 0:
                    continue
                X = np.asarray(X, dtype=np.float32)
                if X.ndim != 2 or X.shape[1] != self._n_features:
                    raise ConfigError(f"XGBoost {self._what} stream: expected events x {self._n_features} "
                                      f"features, got a chunk of shape {X.shape}", key="features")
                input_data(data=X, label=self._label(y, len(X)), weight=self._weight(weight, len(X)))
                if self._probe is not None:
                    self._probe(X)
                self._events += len(X)
                return True
            self.events_last_pass = self._events
            return False

        def _label(self, y: np.ndarray, n: int) -> np.ndarray:
            """Class indices ``[n]`` or regression targets ``[n, T]`` (``[n]`` for one target)."""
            task, y = self._task, np.asarray(y, dtype=np.float32)
            if task.kind == "regression":
                width = len(task.targets)
                if y.shape != (n, width) and not (width == 1 and y.shape == (n,)):
                    raise ConfigError(f"XGBoost {self._what} stream: the regression of {width} target(s) "
                                      f"{list(task.targets)} needs labels of shape [{n}, {width}], got {y.shape}",
                                      key="target")
                return y.reshape(n) if width == 1 else y
            y = y.reshape(-1)
            if task.kind == "multiclass" and len(y) and (y.min() < 0 or y.max() >= task.n_classes):
                raise ConfigError(f"XGBoost {self._what} stream: class labels must be 0..{task.n_classes - 1} "
                                  f"(classes {list(task.classes)}), got labels from {y.min():g} to {y.max():g}",
                                  key="label")
            return y

        def _weight(self, weight: np.ndarray | None, n: int) -> np.ndarray | None:
            if self._weighted is None:
                self._weighted = weight is not None
            if weight is None:
                return np.ones(n, dtype=np.float32) if self._weighted else None
            if not self._weighted:
                raise ConfigError(f"XGBoost {self._what} stream: event weights appeared after chunks without "
                                  f"them; give weights for every chunk or for none", key="weight")
            return np.asarray(weight, dtype=np.float32).reshape(-1)

        def reset(self) -> None:
            self.n_reset += 1
            self._iterator = None

        @property
        def stats(self) -> dict[str, int]:
            return {"passes": self.passes, "next": self.n_next, "reset": self.n_reset,
                    "events": self.events_last_pass}

    return ChunkIter
