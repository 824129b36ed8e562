"""What the scikit-learn adapter asks of an estimator for the multi-class and regression tasks: whether it
fits several targets (its tags, else a trial fit), and the rows that keep a warm-started ensemble's classes
whole when a chunk lacks one."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mlaas4hep_lab import extras

__all__ = ["target_tags", "fits_targets", "pad_classes"]

_MULTI_OUTPUT_PROBE_ROWS = 64   # rows of the fit that tells whether an estimator takes several targets


def target_tags(model: Any) -> tuple[bool, bool] | None:
    """``(multi_output, single_output)`` from scikit-learn's estimator tags: whether it takes several targets,
    and whether it takes one as a flat ``[n]``; None when the estimator has no tags."""
    try:
        tags = extras.require("sklearn.utils").get_tags(model).target_tags
    except Exception:  # an estimator of another library without scikit-learn's tags
        return None
    return bool(tags.multi_output), bool(tags.single_output)


def fits_targets(model: Any, n_features: int, n_targets: int) -> bool | None:
    """Whether an unfitted copy of ``model`` fits ``n_targets`` targets on a few random rows (tags are not
    always right: MLPRegressor says no and can). None when it fits no target at all on them: undecided,
    the training itself will tell."""
    clone = extras.require("sklearn.base").clone
    rng = np.random.default_rng(0)
    X = rng.normal(size=(_MULTI_OUTPUT_PROBE_ROWS, n_features)).astype(np.float32)
    Y = rng.normal(size=(_MULTI_OUTPUT_PROBE_ROWS, n_targets)).astype(np.float32)

    def fits(y: np.ndarray) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clone(model).fit(X, y)
        except Exception:
            return False
        return True

    if fits(Y):
        return True
    return False if fits(Y[:, 0]) else None


def pad_classes(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, missing: np.ndarray):
    """The chunk plus one row of weight 0 per missing class (a copy of the heaviest event: a tree cannot split
    it from its original, so it never makes a leaf of its own). A warm-started ensemble takes its classes from
    each chunk: so every member keeps the task's class columns, while the rows change nothing it learns."""
    w = np.ones(len(y), np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    source = np.repeat(X[int(np.argmax(w))][None, :], len(missing), axis=0)
    return (np.concatenate([X, source]), np.concatenate([y, missing.astype(y.dtype)]),
            np.concatenate([w, np.zeros(len(missing), np.float32)]))
