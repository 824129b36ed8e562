"""The one interface every ML framework adapter implements, and the registry that finds them.

The training loop talks only to :class:`Backend`; each adapter module imports its framework lazily
(through :mod:`mlaas4hep_lab.extras`), so the registry holds module paths, not classes.

How a backend consumes the stream is its ``mode``:

* ``"batches"``    -- the trainer hands every chunk's training events to ``fit_parts`` (one
  :class:`TrainPart` per chunk, in order); the default ``fit_parts`` calls ``fit_chunk`` on each (PyTorch,
  scikit-learn estimators with ``partial_fit`` or ``warm_start``), Keras feeds them all through one
  ``tf.data`` pipeline and one ``model.fit`` per pass;
* ``"accumulate"`` -- the loop gathers the training split (within a memory guard) and calls ``fit_all``
  once (scikit-learn estimators that can only ``fit``);
* ``"stream"``     -- ``fit_stream`` receives a factory of chunk iterators and trains over the whole
  stream itself (XGBoost through ``xgboost.DataIter``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import random
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import Task

__all__ = ["Backend", "BACKENDS", "get_backend", "detect_backend", "ChunkSource", "TrainPart", "seed_frameworks"]

# name -> "module:Class"; adapters are imported only when used
BACKENDS: dict[str, str] = {
    "keras": "mlaas4hep_lab.backends.keras:KerasBackend",
    "torch": "mlaas4hep_lab.backends.torch:TorchBackend",
    "sklearn": "mlaas4hep_lab.backends.sklearn:SklearnBackend",
    "xgboost": "mlaas4hep_lab.backends.xgboost:XGBoostBackend",
}

# backend name -> the framework module whose global random state ``seed_frameworks`` seeds once imported
_SEEDED_FRAMEWORKS = {"keras": "keras", "torch": "torch"}

# a callable returning a fresh iterator of (X, y, weight-or-None) numpy batches: one pass over a split
ChunkSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]


@dataclass
class TrainPart:
    """One chunk's training events, as the trainer hands them to :meth:`Backend.fit_parts`.

    ``X``, ``y`` and ``weight`` are the whole chunk's (no copy of ``X``); ``y`` is ``float32[n]`` (the class
    index: 0/1 for binary, 0..K-1 for multiclass) or ``float32[n, T]`` (regression targets, in the units the
    backend trains on); ``rows`` selects the events to
    train on (None: all of them). ``epochs``: epochs on this part before the next one ("per_chunk"
    schedule); ``group``: the pass over the stream it belongs to (the parts of a group are consecutive);
    ``tag``: the caller's, handed back to ``on_part``.
    """

    X: np.ndarray                       # float32 [n, n_features]
    y: np.ndarray                       # [n], or [n, T] for a regression
    weight: np.ndarray | None = None    # [n], or None
    rows: np.ndarray | None = None      # positions of the training events in the arrays, or None: all
    epochs: int = 1
    group: int = 0
    tag: Any = None

    @property
    def size(self) -> int:
        """Number of events to train on."""
        return len(self.y) if self.rows is None else len(self.rows)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(X, y, weight)`` of the training events (copies when ``rows`` selects some)."""
        if self.rows is None:
            return self.X, self.y, self.weight
        w = None if self.weight is None else self.weight[self.rows]
        return self.X[self.rows], self.y[self.rows], w


class Backend(ABC):
    """Adapter between the training loop and one ML framework.

    Args:
        model: the object the user's ``model(idim)`` returned (compiled Keras model, ``nn.Module``,
            scikit-learn estimator, XGBoost model).
        n_features: input dimension.
        options: extras from model.py (e.g. ``loss``, ``optimizer`` for torch) and params
            (``batch_size``, ``seed``).
    """

    name: ClassVar[str] = ""
    extra: ClassVar[str] = ""       # pip extra that installs the framework
    mode: ClassVar[str] = "batches"
    objects: ClassVar[bool] = False  # takes the objects layout (options "layout", a dict of named inputs)

    def __init__(self, model: Any, n_features: int, options: dict[str, Any] | None = None):
        self.model = model
        self.n_features = int(n_features)
        self.options = dict(options or {})
        # what the model learns (options "task"; binary when absent): the shape of y and of predict's output
        self.task: Task = self.options.get("task") or Task()
        # set by the trainer (the Stop button, a kill request); batch loops check it after every batch
        self.stop_event: threading.Event | None = None

    def stop_requested(self) -> bool:
        """True once the trainer's stop event is set: ``fit_chunk`` returns after the current batch."""
        return self.stop_event is not None and self.stop_event.is_set()

    # -- detection ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def accepts(cls, model: Any) -> bool:
        """True when ``model`` is an object of this framework (checked without importing it needlessly:
        look at ``type(model).__module__`` first)."""

    @classmethod
    def seed(cls, seed: int) -> None:
        """Seed the framework's global random generators (weight initialisation, dropout). Tree models
        take their seed from the estimator's own ``random_state``, so the default does nothing."""
        return None

    # -- training -----------------------------------------------------------------------------------
    def fit_chunk(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, *, epochs: int,
                  batch_size: int) -> dict[str, float]:
        """Train on one chunk's training events for ``epochs`` epochs; return metrics (at least
        ``loss``, the mean training loss of the last epoch, when the framework has one). Frameworks that
        train in mini-batches return after the current batch once :meth:`stop_requested` is true."""
        raise NotImplementedError(f"{self.name} backend does not train chunk by chunk (mode {self.mode!r})")

    def fit_parts(self, parts: Iterable[TrainPart], *, batch_size: int,
                  on_part: Callable[[TrainPart, dict[str, float]], None]) -> None:
        """Train on each part in turn, ``part.epochs`` epochs each, and call ``on_part(part, metrics)`` after
        its last batch, before any batch of the next part (``metrics`` as :meth:`fit_chunk` returns them;
        ``{}`` for a part without events). What ``on_part`` raises ends the training and is raised here.
        Returns when ``parts`` is exhausted, or -- without calling ``on_part`` for the part in progress --
        after the batch during which a stop was requested (:meth:`stop_requested`), or when the model's
        own callbacks stopped the training (Keras ``model.stop_training``). The default calls
        :meth:`fit_chunk` on each part."""
        for part in parts:
            metrics: dict[str, float] = {}
            if part.size:
                X, y, weight = part.arrays()
                metrics = self.fit_chunk(X, y, weight, epochs=part.epochs, batch_size=batch_size)
                if self.stop_requested():
                    return
            on_part(part, metrics)

    def fit_all(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> dict[str, float]:
        """Train once on the whole (accumulated) training split."""
        raise NotImplementedError(f"{self.name} backend does not train on accumulated data (mode {self.mode!r})")

    def fit_stream(self, train: ChunkSource, validation: ChunkSource | None, *, epochs: int,
                   batch_size: int, on_round: Callable[[dict[str, float]], bool | None] | None = None
                   ) -> dict[str, float]:
        """Train over the whole stream; ``on_round`` receives metrics per boosting round/epoch and
        returns True to stop early."""
        raise NotImplementedError(f"{self.name} backend does not train over a stream (mode {self.mode!r})")

    # -- inference ----------------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether :meth:`predict` has a model to use: a network always has (its initial weights); a
        scikit-learn estimator or an XGBoost booster only once it saw events."""
        return True

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """The task's outputs (:meth:`~mlaas4hep_lab.task.Task.scores`): binary, signal scores in [0, 1],
        ``float32[n]``; multiclass, class probabilities ``float32[n, K]``; regression, the targets in their
        own units ``float32[n, T]``."""

    # -- persistence --------------------------------------------------------------------------------
    @abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the model in its native format under ``directory``; return ``{"format": ..., "files": [...]}``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, n_features: int, options: dict[str, Any] | None = None) -> Backend:
        """Load what :meth:`save` (or :meth:`save_checkpoint`) wrote."""

    def save_checkpoint(self, directory: Path, previous: Path | None = None) -> dict[str, Any]:
        """Write what :meth:`load` resumes from (the trainer's checkpoint after every chunk). ``previous``
        is the model directory of the checkpoint before it in this run, still on disk, which a backend may
        reuse (Keras: its ``model.keras``, with the variables' current values beside it). Default:
        :meth:`save`."""
        return self.save(directory)

    def export(self, directory: Path) -> dict[str, Any]:
        """Write an inference export (TF SavedModel for Keras, ONNX for the others where a converter
        exists) under ``directory``; return ``{"format": ..., "path": ...}`` or
        ``{"format": None, "reason": ...}`` when there is none."""
        return {"format": None, "reason": f"no inference export for the {self.name} backend"}


def _load_class(name: str) -> type[Backend]:
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; unknown names list the valid ones."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}", key="backend")
    return _load_class(name)


def detect_backend(model: Any) -> str:
    """Name of the backend that accepts ``model``; an unsupported object is a clear error."""
    module = type(model).__module__.split(".")[0]
    order = {"keras": "keras", "tensorflow": "keras", "tf_keras": "keras", "torch": "torch",
             "sklearn": "sklearn", "xgboost": "xgboost"}
    candidates = [order[module]] if module in order else list(BACKENDS)
    for name in candidates:
        try:
            if _load_class(name).accepts(model):
                return name
        except ImportError:
            continue
    raise ConfigError(
        f"model(idim) returned {type(model).__module__}.{type(model).__qualname__}, which no backend "
        f"handles; return a compiled Keras model, a torch.nn.Module, a scikit-learn classifier or an "
        f"XGBoost model (backends: {', '.join(BACKENDS)})",
        key="model",
    )


def seed_frameworks(seed: int) -> list[str]:
    """Seed ``random``, numpy's global generator and every registered framework already imported.

    Weight initialisation happens inside the user's ``model(idim)``, so a reproducible run calls this
    after model.py has been imported (its framework is then in ``sys.modules``) and before ``model(idim)``
    is called. Frameworks not yet imported are left alone (importing TensorFlow costs seconds).
    Returns the names of the backends whose framework was seeded.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seeded = []
    for name, module in _SEEDED_FRAMEWORKS.items():
        if sys.modules.get(module) is not None:
            _load_class(name).seed(seed)
            seeded.append(name)
    return seeded


@contextlib.contextmanager
def quiet(*loggers: str):
    """Silence converters' and exporters' progress logging and deprecation chatter while exporting."""
    found = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in found]
    for lg in found:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(found, levels):
            lg.setLevel(level)
