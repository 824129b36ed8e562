"""The numbers the trainer reports for each task: after every chunk (validation), on a training sample,
and on the test split at the end (metrics.json).

=============  ============================================  ===========================================
task           after each chunk                              at the end
=============  ============================================  ===========================================
binary         val_loss (cross-entropy), val_accuracy,       :func:`~.evaluation.evaluate` (AUC, AMS, ...)
               val_auc; auc on a training sample
multiclass     val_loss (cross-entropy), val_accuracy,       :func:`~.evaluation_tasks.evaluate_multiclass`
               val_auc (macro one-vs-rest); auc likewise     (AUC per class, confusion, rejections)
regression     val_loss (mean squared error of the           :func:`~.evaluation_tasks.evaluate_regression`
               standardised targets: what networks train     (RMSE, MAE, response, resolution)
               on), val_rmse, val_mae (targets' units)
=============  ============================================  ===========================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlaas4hep_lab.task import Task
from mlaas4hep_lab.training import evaluation

__all__ = ["validation_metrics", "train_auc", "final_metrics", "macro_auc"]


def macro_auc(y: np.ndarray, proba: np.ndarray, weight: np.ndarray | None) -> float:
    """Mean of the one-vs-rest AUCs of the classes present (NaN when fewer than two are)."""
    values = [evaluation.auc((y == c).astype(np.float32), proba[:, c], weight) for c in range(proba.shape[1])
              if np.any(y == c)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if len(values) >= 2 or (values and proba.shape[1] == 2) else float("nan")


def validation_metrics(task: Task, y: np.ndarray, out: np.ndarray, weight: np.ndarray | None,
                       wanted: list[str]) -> dict[str, float]:
    """The ``val_*`` numbers of a validation sample; ``wanted``: params ``metrics``."""
    from mlaas4hep_lab.training import evaluation_tasks as et

    if task.kind == "binary":
        result = {"val_loss": evaluation.log_loss(y, out, weight)}
        if "accuracy" in wanted:
            result["val_accuracy"] = evaluation.accuracy(y, out, weight)
        if "auc" in wanted:
            result["val_auc"] = evaluation.auc(y, out, weight)
        return result
    if task.kind == "multiclass":
        result = {"val_loss": et.multiclass_log_loss(y, out, weight)}
        if "accuracy" in wanted:
            result["val_accuracy"] = et.multiclass_accuracy(y, out, weight)
        if "auc" in wanted:
            result["val_auc"] = macro_auc(y, out, weight)
        return result
    losses = et.regression_losses(task.standardise(y), task.standardise(out), weight)
    raw = et.regression_losses(y, out, weight)
    return {"val_loss": losses["mse"], "val_rmse": float(np.sqrt(raw["mse"])), "val_mae": raw["mae"]}


def train_auc(task: Task, y: np.ndarray, out: np.ndarray, weight: np.ndarray | None) -> dict[str, float]:
    """``{"auc": ...}`` on a training sample (classification), else nothing."""
    if task.kind == "binary":
        return {"auc": evaluation.auc(y, out, weight)}
    if task.kind == "multiclass":
        return {"auc": macro_auc(y, out, weight)}
    return {}


def final_metrics(task: Task, y: np.ndarray, out: np.ndarray, weight: np.ndarray | None,
                  test_fraction: float | None) -> dict[str, Any]:
    """The test split's metrics (metrics.json), ``task`` first."""
    from mlaas4hep_lab.training import evaluation_tasks as et

    if task.kind == "binary":
        return {"task": "binary", **evaluation.evaluate(y, out, weight, test_fraction=test_fraction)}
    if task.kind == "multiclass":
        return et.evaluate_multiclass(y, out, weight, list(task.classes))
    return et.evaluate_regression(y, out, weight, list(task.targets))
