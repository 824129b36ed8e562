"""Exceptions of mlaas4hep-lab.

Each one says what went wrong, where (file, tree, branch, key, position) and what to try.
They subclass the built-in exception a caller would naturally catch (``KeyError``,
``ValueError``, ``OSError``, ``ImportError``) as well as :class:`MLaaSError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MLaaSError",
    "StoppedBeforeTraining",
    "TrainingDiverged",
    "InputFileError",
    "RemoteReadError",
    "TreeNotFoundError",
    "BranchNotFoundError",
    "ConfigError",
    "LabelsError",
    "ExpressionError",
    "SpecsError",
    "StaleSpecsError",
    "DuplicateFileError",
    "DataError",
    "NoEventsError",
    "MissingClassError",
    "NonFiniteError",
    "MissingExtraError",
    "ModelFileError",
    "close_matches",
]


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest in spelling to ``name``, best first (case-insensitive)."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


class MLaaSError(Exception):
    """Base class of every error this package raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else self.__class__.__name__

    def __reduce__(self):
        # pickled as (class, args, attributes): the subclasses' __init__ take other arguments than the
        # message they store, so the default (calling the class with args) fails on the way back from a
        # worker process
        return _restore_error, (type(self), self.args, dict(self.__dict__))


def _restore_error(cls: type, args: tuple, state: dict) -> MLaaSError:
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class InputFileError(MLaaSError, OSError):
    """A ROOT file (or files.txt / labels.txt) is missing, unreadable or corrupt."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class RemoteReadError(InputFileError):
    """A remote file could not be read after the configured retries."""


class TreeNotFoundError(MLaaSError, KeyError):
    """The tree named by params ``branch`` is not in the file."""

    def __init__(self, tree: str, path: str, available: Iterable[str], hint: str | None = None):
        available = sorted(set(available))
        close = close_matches(tree, available)
        msg = f"tree {tree!r} not found in {path}"
        if close:
            msg += f"; did you mean {', '.join(map(repr, close))}?"
        shown = close + [a for a in available if a not in close]  # the closest spellings first
        msg += f" Trees in the file: {', '.join(shown) if shown else '(none)'}."
        msg += " " + (hint or "Set params 'branch' to the tree path (e.g. 'events' or 'dir/events').")
        super().__init__(msg)
        self.tree, self.path, self.available = tree, path, available


class BranchNotFoundError(MLaaSError, KeyError):
    """A branch named in params, preproc or an expression is not in the tree."""

    def __init__(self, branch: str, where: str, available: Iterable[str], context: str = ""):
        available = sorted(set(available))
        close = close_matches(branch, available)
        msg = f"branch {branch!r} not found in {where}"
        if context:
            msg += f" ({context})"
        if close:
            msg += f"; did you mean {', '.join(map(repr, close))}?"
        else:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            msg += f". Available: {shown}"
        super().__init__(msg)
        self.branch, self.where, self.available = branch, where, available


class ConfigError(MLaaSError, ValueError):
    """params.json / preproc.json / command-line settings that are malformed or of a wrong type."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        prefix = ""
        if source:
            prefix += f"{source}: "
        if key:
            prefix += f"key {key!r}: "
        super().__init__(prefix + message)
        self.key, self.source = key, source


class LabelsError(ConfigError):
    """labels.txt does not match files.txt."""


class ExpressionError(MLaaSError, ValueError):
    """An expression (new branch definition or cut) that is not allowed or cannot be parsed."""

    def __init__(self, expression: str, reason: str, col: int | None = None, where: str | None = None):
        msg = f"invalid expression {expression!r}"
        if where:
            msg += f" in {where}"
        if col is not None:
            msg += f" at column {col + 1}"
            msg += f": {reason}\n    {expression}\n    {' ' * col}^"
        else:
            msg += f": {reason}"
        super().__init__(msg)
        self.expression, self.reason, self.col, self.where = expression, reason, col, where


class SpecsError(MLaaSError, ValueError):
    """A specs.json that cannot be used."""


class StaleSpecsError(SpecsError):
    """A specs.json computed for other files, branches or preprocessing."""


class MissingExtraError(MLaaSError, ImportError):
    """An optional framework is not installed."""


class ModelFileError(ConfigError):
    """The user's model.py cannot be loaded, or its model fails on the data (a wrong input width, an
    exception raised by the user's own code): the message names model.py and the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.key, self.path, self.line = "model", path, line


class DuplicateFileError(ConfigError):
    """The same ROOT file is listed twice in files.txt (it would count twice, possibly under two labels)."""


class DataError(MLaaSError, ValueError):
    """The events cannot train a classifier that can be trusted (checked before training starts)."""


class NoEventsError(DataError):
    """No event is left after the cuts."""


class MissingClassError(DataError):
    """A class (signal or background) has no event, overall or in the train, validation or test split."""


class NonFiniteError(DataError):
    """A feature is NaN or infinite everywhere (overall, or in every event of one class)."""


class TrainingDiverged(MLaaSError, FloatingPointError):
    """The model's output became NaN or infinite during training (a learning rate too large, a loss that
    overflows): no metric, early stopping or bundle can be made of it."""


class StoppedBeforeTraining(MLaaSError):
    """A stop (the Stop button, a signal) came before the first chunk or boosting round was trained: there
    is no model to evaluate or save."""
