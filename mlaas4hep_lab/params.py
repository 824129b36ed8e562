"""params.json: the original keys, the new ones, and their validation.

The original format is accepted as it was written in the wild: ``selected_branches`` as ``""`` or a
comma string, ``identifier`` as a list or a comma string, booleans as JSON booleans or 0/1.
Unknown keys give a warning naming them; a wrong type is a :class:`~mlaas4hep_lab.errors.ConfigError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError, InputFileError

__all__ = ["Params", "load_params", "load_json", "PADDINGS", "DEFAULT_PADDING", "LEGACY_DEFAULTS"]

_NORMALIZATIONS = ("minmax", "standard", "none")
_TRAINING_MODES = ("per_chunk", "epochs")
# How padded slots (and masked values) reach the model; see mlaas4hep_lab.data.vectorize for each mode.
PADDINGS = ("multiplicity", "below", "mask", "multiplicity+mask", "zeros")
DEFAULT_PADDING = "multiplicity"
# What a key meant before it existed: a params.json written by an older version (a bundle's, a finished
# run's) that lacks the key is read with this value, so an old model sees exactly the inputs it was
# trained on, while new runs get the dataclass default.
LEGACY_DEFAULTS: dict[str, Any] = {"padding": "zeros"}


@dataclass
class Params:
    """Settings of a workflow (params.json). Field docs give the meaning; see README for examples."""

    nevts: int = -1                     # events to use in total (-1: all), split across files by size
    shuffle: bool = True                # shuffle events inside each chunk
    chunk_size: int = 10_000            # events per training chunk (all files mixed)
    epochs: int = 5                     # per chunk ("per_chunk" mode) or full passes ("epochs" mode)
    batch_size: int = 256
    identifier: list[str] = field(default_factory=list)   # branches read but kept out of the features
    branch: str = "events"              # path of the tree in the file (e.g. "events" or "dir/events")
    selected_branches: list[str] = field(default_factory=list)  # wildcards allowed; empty = all
    exclude_branches: list[str] = field(default_factory=list)   # wildcards allowed
    hist: str = ""                      # "pdfs": write per-feature signal/background distributions
    redirector: str = ""                # prefix for paths of files.txt not found locally
    verbose: int = 1
    # keys added by mlaas4hep-lab
    seed: int = 42
    split: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.20])  # train/validation/test
    normalization: str = "minmax"       # "minmax" (the original's), "standard" or "none"
    missing_values: list[float] = field(default_factory=list)   # sentinels (e.g. -999.0) masked, not normalised
    max_jagged_length: Any = None       # None, an int cap, a quantile in (0, 1), or {branch: int|quantile}
    training: str = "per_chunk"         # "per_chunk" (the original) or "epochs" (full passes over the stream)
    metrics: list[str] = field(default_factory=lambda: ["loss", "accuracy", "auc"])
    weight: str = ""                    # branch holding per-event weights (kept out of the features)
    retries: int = 3                    # retries of transient remote read errors
    prefetch: int = 1                   # chunks prepared ahead in a background thread (0: none)
    read_buffer_mb: int = 256           # decoded data kept between chunks, all files together (MB)
    chunk_cache: str = "auto"           # passes after the first read its chunks from disk: "auto", "off", a folder
    balance_weights: bool = True        # rescale training weights so each label's mean weight is 1
    early_stopping: int = 0             # stop after this many validations without a better val_loss (0: off)
    padding: str = DEFAULT_PADDING      # padded slots the model can tell from real values; "zeros": as before
    # what the model learns (see mlaas4hep_lab.task): "binary", "multiclass" or "regression"
    task: str = "binary"
    label: str = ""                     # multiclass: per-event class index from a branch or expression
    target: list[str] = field(default_factory=list)   # regression: branches or expressions, one per output
    classes: list[str] = field(default_factory=list)  # class names, index = label (multiclass; binary: 2)
    class_weights: Any = None           # None, "balanced" or one positive number per class
    layout: str = "flat"                # "flat" (one vector per event) or "objects" (collections as sets)
    collections: Any = None             # objects layout: {name: [wildcards]} (default: found by the specs)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, source: str | None = None) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), source))
        if self.chunk_size <= 0:
            raise ConfigError(f"must be a positive number of events, got {self.chunk_size}", "chunk_size", source)
        if self.read_buffer_mb <= 0:
            raise ConfigError(f"must be a positive number of MB, got {self.read_buffer_mb}", "read_buffer_mb", source)
        if not self.chunk_cache.strip():
            raise ConfigError('must be "auto", "off" or a folder, got ""', "chunk_cache", source)
        if self.batch_size <= 0:
            raise ConfigError(f"must be positive, got {self.batch_size}", "batch_size", source)
        if self.epochs < 0:
            raise ConfigError(f"must be >= 0, got {self.epochs}", "epochs", source)
        if self.nevts == 0 or self.nevts < -1:
            raise ConfigError(f"must be -1 (all events) or a positive count, got {self.nevts}", "nevts", source)
        if len(self.split) not in (2, 3) or any(s < 0 for s in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(
                f"must be 2 or 3 non-negative fractions (train, validation[, test]) summing to 1, got {self.split}",
                "split", source,
            )
        if len(self.split) == 2:
            self.split = [*self.split, 0.0]
        if self.normalization not in _NORMALIZATIONS:
            raise ConfigError(f"must be one of {_NORMALIZATIONS}, got {self.normalization!r}", "normalization", source)
        if self.training not in _TRAINING_MODES:
            raise ConfigError(f"must be one of {_TRAINING_MODES}, got {self.training!r}", "training", source)
        if self.padding not in PADDINGS:
            raise ConfigError(f"must be one of {PADDINGS} (\"zeros\" gives the layout of models trained "
                              f"before this key existed), got {self.padding!r}", "padding", source)
        _check_jagged_length(self.max_jagged_length, source)
        self._check_task(source)

    def _check_task(self, source: str | None) -> None:
        from mlaas4hep_lab.task import TASK_KINDS

        if self.task not in TASK_KINDS:
            raise ConfigError(f"must be one of {TASK_KINDS}, got {self.task!r}", "task", source)
        if self.task == "regression" and not self.target:
            raise ConfigError('a regression needs "target": a branch or expression, or a list of them', "target",
                              source)
        if self.target and self.task != "regression":
            raise ConfigError(f'"target" is for "task": "regression"; this task is {self.task!r}', "target", source)
        if self.label and self.task != "multiclass":
            raise ConfigError(f'"label" (a per-event class) is for "task": "multiclass"; this task is {self.task!r}',
                              "label", source)
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"class names must differ, got {self.classes}", "classes", source)
        if self.classes and (len(self.classes) < 2 or (self.task == "binary" and len(self.classes) != 2)):
            need = "a binary task has 2 classes (background, signal)" if self.task == "binary" else "at least 2"
            raise ConfigError(f"{need}, got {self.classes}", "classes", source)
        if self.classes and self.task == "regression":
            raise ConfigError('"classes" is for classification tasks; a regression has targets', "classes", source)
        if self.layout not in ("flat", "objects"):
            raise ConfigError(f'must be "flat" or "objects", got {self.layout!r}', "layout", source)
        if self.collections is not None:
            ok = isinstance(self.collections, dict) and all(
                isinstance(k, str) and (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)))
                for k, v in self.collections.items())
            if not ok:
                raise ConfigError(f'must map collection names to wildcards, e.g. {{"Jet": ["Jet_*"]}}, got '
                                  f"{self.collections!r}", "collections", source)
            if self.layout != "objects":
                raise ConfigError('"collections" is for "layout": "objects"', "collections", source)
        cw = self.class_weights
        if cw is None or cw == "balanced":
            return
        if self.task == "regression":
            raise ConfigError('"class_weights" is for classification tasks', "class_weights", source)
        if not isinstance(cw, list) or not cw or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v != float("inf") for v in cw):
            raise ConfigError(f'must be "balanced" or a list of positive numbers, one per class, got {cw!r}',
                              "class_weights", source)
        if self.classes and len(cw) != len(self.classes):
            raise ConfigError(f"{len(cw)} class weights for {len(self.classes)} classes", "class_weights", source)
        self.class_weights = [float(v) for v in cw]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Params:
        return dataclasses.replace(self, **changes)


_KINDS = {f.name: f.type for f in dataclasses.fields(Params)}


def _names(key: str, value: Any, source: str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ConfigError(f"must be a list of branch names or a comma-separated string, got {value!r}", key, source)


def _coerce(key: str, value: Any, source: str | None) -> Any:
    kind = _KINDS[key]
    if key in ("identifier", "selected_branches", "exclude_branches", "metrics", "classes"):
        return _names(key, value, source)
    if key == "target":  # expressions may hold commas (max(a, b)): a string is one target
        if value is None or value == "":
            return []
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in values):
            raise ConfigError(f"must be a branch or expression, or a list of them, got {value!r}", key, source)
        return [v.strip() for v in values]
    if key in ("class_weights", "collections"):
        return value
    if key in ("split", "missing_values"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"must be a list of numbers, got {value!r}", key, source)
        return [float(v) for v in value]
    if key == "max_jagged_length":
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"must be true or false, got {value!r}", key, source)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"must be an integer, got {value!r}", key, source)
        return int(value)
    if kind == "str":
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", key, source)
        return value
    return value


def _check_jagged_length(value: Any, source: str | None, key: str = "max_jagged_length") -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for branch, v in value.items():
            _check_jagged_length(v, source, f"{key}.{branch}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be null, an integer cap, a quantile in (0, 1) or a mapping, got {value!r}", key, source)
    if isinstance(value, float) and not value.is_integer() and not 0 < value < 1:
        raise ConfigError(f"a quantile must be in (0, 1), got {value}", key, source)
    if value <= 0:
        raise ConfigError(f"must be positive, got {value}", key, source)


def load_json(source: str | os.PathLike | dict | None, what: str) -> tuple[dict, str | None]:
    """Load a JSON object from a path (or take a dict), with errors that give file, line and column."""
    if source is None:
        return {}, None
    if isinstance(source, dict):
        return dict(source), None
    path = Path(source)
    if not path.is_file():
        raise InputFileError(f"{what} file not found: {path}", str(path))
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}", source=str(path)
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a JSON object ({{...}}), got {type(data).__name__}", source=str(path))
    return data, str(path)


def load_params(source: str | os.PathLike | dict | None = None, **overrides) -> Params:
    """Load params.json (a path or a dict); unknown keys give a warning naming them.

    Example::

        params = load_params("params.json", chunk_size=50_000)
    """
    data, where = load_json(source, "params")
    data.update(overrides)
    unknown = sorted(set(data) - set(_KINDS))
    if unknown:
        warnings.warn(
            f"{where or 'params'}: unknown keys ignored: {', '.join(unknown)} "
            f"(known keys: {', '.join(_KINDS)})",
            stacklevel=2,
        )
    known = {k: v for k, v in data.items() if k in _KINDS}
    params = Params.__new__(Params)
    for f in dataclasses.fields(Params):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        setattr(params, f.name, known.get(f.name, default))
    params.validate(where)
    return params
