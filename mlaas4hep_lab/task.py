"""What a model learns: the task of a workflow (params ``task``) and the shape of its outputs.

* ``binary`` (the default, the original's): signal (1) vs background (0) by file (labels.txt); the model
  gives one score in [0, 1] per event, ``float32[n]``.
* ``multiclass``: K classes, labels 0..K-1 by file (labels.txt) or per event from a branch or expression
  (params ``label``); the model gives K probabilities per event, ``float32[n, K]``, rows summing to 1.
  Class names come from params ``classes`` (else ``"0"``, ``"1"``, ...).
* ``regression``: one or more targets per event, each a flat branch or an expression (params ``target``);
  the model gives ``float32[n, T]``. Networks train on standardised targets (mean 0, width 1, from the
  specs pass) and their outputs are turned back into the targets' units; tree models see the raw values.

The truth of an event, ``y``, is ``float32[n]`` for the two classification tasks (the class index) and
``float32[n, T]`` for regression. :meth:`Task.scores` turns whatever a framework returns into the task's
output shape, with an error that says what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import ConfigError

__all__ = ["Task", "TASK_KINDS", "task_of", "run_task", "column_name", "softmax"]

TASK_KINDS = ("binary", "multiclass", "regression")
BINARY_CLASSES = ("background", "signal")


def column_name(text: str) -> str:
    """A column name for an expression (``log(Jet_pt[0])`` -> ``log_Jet_pt_0``): letters, digits and ``_``."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_")
    return name or "target"


@dataclass(frozen=True)
class Task:
    """The task of a workflow. ``classes``: class names, index = label (binary: background, signal);
    ``targets``: the regression targets' expressions; ``label``: the per-event label expression of a
    multi-class task ("" = one label per file, from labels.txt); ``target_scale``: per target
    ``(mean, std)`` from the specs pass, with which networks see standardised targets."""

    kind: str = "binary"
    classes: tuple[str, ...] = BINARY_CLASSES
    targets: tuple[str, ...] = ()
    label: str = ""
    target_scale: tuple[tuple[float, float], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown task {self.kind!r}; tasks: {', '.join(TASK_KINDS)}", "task")
        if self.kind == "regression" and not self.targets:
            raise ConfigError('a regression needs its target: params "target": "<branch or expression>" '
                              '(or a list of them)', "target")
        if self.kind == "multiclass" and len(self.classes) < 2:
            raise ConfigError(f"a multi-class task needs at least 2 classes, got {len(self.classes)}", "classes")

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.is_classification else 0

    @property
    def n_outputs(self) -> int:
        """Outputs per event: 1 (binary), K (multiclass) or T (regression)."""
        return {"binary": 1, "multiclass": self.n_classes, "regression": len(self.targets)}[self.kind]

    @property
    def output_names(self) -> list[str]:
        """One name per output column: ``score`` (binary), ``p_<class>`` (multiclass), the targets'
        column names (regression)."""
        if self.kind == "binary":
            return ["score"]
        if self.kind == "multiclass":
            return [f"p_{column_name(c)}" for c in self.classes]
        return [column_name(t) for t in self.targets]

    @property
    def tensor_name(self) -> str:
        """The name of the exports' (and the served) output tensor: ``score``, ``probabilities`` or ``targets``."""
        return {"binary": "score", "multiclass": "probabilities", "regression": "targets"}[self.kind]

    def y_shape(self, n: int) -> tuple[int, ...]:
        return (n, len(self.targets)) if self.kind == "regression" else (n,)

    def empty_y(self) -> np.ndarray:
        return np.zeros(self.y_shape(0), np.float32)

    def scores(self, raw: Any, n: int | None = None, where: str = "the model") -> np.ndarray:
        """``raw`` (a framework's prediction) as the task's outputs: ``float32[n]`` (binary), ``[n, K]``
        (multiclass) or ``[n, T]`` (regression). A binary ``[n, 2]`` output is read as (background,
        signal) probabilities; a regression with one target accepts ``[n]``."""
        out = np.asarray(raw, dtype=np.float32)
        n = out.shape[0] if n is None and out.ndim else n
        if self.kind == "binary":
            if out.ndim == 2 and out.shape[1] == 2:
                out = out[:, 1]
            elif out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.shape != (n,):
                raise ConfigError(f"{where} returned outputs of shape {out.shape} for {n} events; a binary task "
                                  f"needs one score per event ([{n}] or [{n}, 1])", "model")
            return out
        width = self.n_outputs
        if out.ndim == 1 and width == 1:
            out = out[:, None]
        if out.shape != (n, width):
            what = (f"{width} class probabilities per event (one per class of {list(self.classes)})"
                    if self.kind == "multiclass" else f"{width} value(s) per event (targets {list(self.targets)})")
            raise ConfigError(f"{where} returned outputs of shape {out.shape} for {n} events; the {self.kind} "
                              f"task needs {what}: shape [{n}, {width}]", "model")
        return out

    def standardise(self, y: np.ndarray) -> np.ndarray:
        """Regression truth in standard units (what networks train on); classification truth unchanged."""
        if self.kind != "regression" or not self.target_scale:
            return y
        mean, std = self.scale()
        return ((y - mean) / std).astype(np.float32)

    def unstandardise(self, out: np.ndarray) -> np.ndarray:
        """Outputs of a network trained on :meth:`standardise`-d targets, in the targets' units."""
        if self.kind != "regression" or not self.target_scale:
            return out
        mean, std = self.scale()
        return (out * std + mean).astype(np.float32)

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """The targets' (mean, std) as float32 arrays (a std of 0 or NaN counts as 1)."""
        mean = np.asarray([m for m, _ in self.target_scale], np.float32)
        std = np.asarray([s if s > 0 and np.isfinite(s) else 1.0 for _, s in self.target_scale], np.float32)
        return mean, std

    def with_scale(self, scale: Sequence[tuple[float, float]]) -> Task:
        return Task(self.kind, self.classes, self.targets, self.label, tuple((float(m), float(s)) for m, s in scale))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "outputs": self.output_names}
        if self.is_classification:
            out["classes"] = list(self.classes)
        if self.label:
            out["label"] = self.label
        if self.targets:
            out["targets"] = list(self.targets)
            out["target_scale"] = [list(s) for s in self.target_scale]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Task:
        """The task a bundle's manifest or specs.json recorded (no ``task``: binary, as before)."""
        if not data:
            return cls()
        return cls(data.get("kind", "binary"), tuple(data.get("classes") or BINARY_CLASSES),
                   tuple(data.get("targets") or ()), data.get("label", ""),
                   tuple(tuple(s) for s in data.get("target_scale") or ()))


def task_of(params, labels: Sequence[float] | None = None, n_classes: int | None = None) -> Task:
    """The task params.json describes. The number of classes of a multi-class task is, in order:
    the length of params ``classes``, ``n_classes`` (counted by the specs pass for a per-event label),
    else the largest label of labels.txt plus one."""
    kind = getattr(params, "task", "binary")
    names = list(getattr(params, "classes", None) or [])
    if kind == "binary":
        return Task("binary", tuple(names) if len(names) == 2 else BINARY_CLASSES)
    if kind == "multiclass":
        label = getattr(params, "label", "") or ""
        if names:
            k = len(names)
        elif n_classes:
            k = int(n_classes)
        elif not label and labels:
            k = int(max(labels)) + 1
        else:
            raise ConfigError('the number of classes is not known: give params "classes" (their names) or '
                              'compute the specs first', "classes")
        return Task("multiclass", tuple(names) if names else tuple(str(i) for i in range(k)), label=label)
    if kind == "regression":
        return Task("regression", (), tuple(getattr(params, "target", None) or ()))
    raise ConfigError(f"unknown task {kind!r}; tasks: {', '.join(TASK_KINDS)}", "task")


def run_task(params, labels: Sequence[float] | None, specs) -> Task:
    """The task of a training run: :func:`task_of` with the classes the specs pass counted for a per-event
    label, and the targets' mean and std (from the specs) with which networks standardise them."""
    truth = getattr(specs, "truth", None) or {}
    n_classes = None
    if getattr(params, "task", "binary") == "multiclass" and getattr(params, "label", ""):
        found = [float(v) for v in (truth.get("classes") or {}) if v != "nonfinite"]
        n_classes = int(max(found)) + 1 if found else None
    task = task_of(params, labels, n_classes)
    if task.kind == "regression":
        stats = truth.get("targets") or {}
        task = task.with_scale([(stats.get(t, {}).get("mean") or 0.0, stats.get(t, {}).get("std") or 1.0)
                                for t in task.targets])
    return task


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (in float64, so large logits do not overflow)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
