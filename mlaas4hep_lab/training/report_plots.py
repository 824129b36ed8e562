"""The training report's plots (see :mod:`mlaas4hep_lab.training.report` for what they show and why).

Drawn as :mod:`mlaas4hep_lab.training.evaluation` draws its plots: standalone matplotlib ``Figure`` objects
(no pyplot state; safe headless and in threads), each written as PNG and PDF; every function returns the
paths it wrote. matplotlib is imported on first use (the ``plots`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.training.evaluation import _figure, _save

__all__ = ["plot_variable_ranking", "plot_overtraining", "plot_correlation", "plot_learning_curve"]

_SIGNAL, _BACKGROUND = "tab:blue", "tab:red"


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_variable_ranking(ranking: Sequence[dict[str, Any]], out_dir: str | Path, *, native_kind: str | None,
                          baseline_auc: float, events: int, repeats: int, top: int = 20,
                          name: str = "variable_ranking") -> list[Path]:
    """Horizontal bars of the ``top`` features by permutation importance (error bars: spread over the
    repeats), beside the model's own importance of the same features when it has one."""
    rows = list(ranking[:top])
    ncols = 2 if native_kind and rows else 1
    fig, axes = _figure(ncols=ncols, width=6.4, height=max(3.0, 0.32 * len(rows) + 1.6))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    if not rows:
        _no_data(ax, "no ranking: the test split lacks signal or background")
        return _save(fig, out_dir, name)
    pos = np.arange(len(rows))[::-1]
    labels = [r["feature"] for r in rows]
    value = np.array([r["importance"] if r["importance"] is not None else np.nan for r in rows])
    spread = np.array([r.get("importance_std") or 0.0 for r in rows])
    ax.barh(pos, value, xerr=spread if repeats > 1 else None, color=_SIGNAL, alpha=0.8, capsize=2)
    ax.set_yticks(pos, labels, fontsize=8)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set(xlabel="Drop of test AUC when the feature is shuffled",
           title=f"Permutation importance (top {len(rows)} of {len(ranking)})\n"
                 f"baseline AUC {baseline_auc:.4f}, {events:,} test events, {repeats} repeat(s)")
    ax.grid(alpha=0.3, axis="x")
    if ncols == 2:
        native = np.array([r.get("native") or 0.0 for r in rows])
        axes[1].barh(pos, native, color="tab:green", alpha=0.8)
        axes[1].set_yticks(pos, labels, fontsize=8)
        axes[1].set(xlabel="Fraction of the model's total", title=f"Model's own importance\n({native_kind})")
        axes[1].grid(alpha=0.3, axis="x")
    return _save(fig, out_dir, name)


def _density_errors(values: np.ndarray, edges: np.ndarray):
    """Unit-area histogram and its Poisson errors (None when there are no values)."""
    counts, _ = np.histogram(values, bins=edges)
    if counts.sum() == 0:
        return None, None
    norm = counts.sum() * np.diff(edges)
    return counts / norm, np.sqrt(counts) / norm


def plot_overtraining(sample, out_dir: str | Path, p_signal: float, p_background: float, *, bins: int = 40,
                      name: str = "overtraining") -> list[Path]:
    """TMVA's overtraining check: test scores as filled histograms, train scores as points with errors,
    signal and background, each normalised to unit area, with the KS p-values (train vs test)."""
    scores = np.concatenate([sample.score_test, sample.score_train])
    lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
    if lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = _figure()
    drawn = False
    for label, colour, want, hatch in (("Signal", _SIGNAL, True, None), ("Background", _BACKGROUND, False, "//")):
        test = sample.score_test[(sample.y_test > 0.5) == want]
        train = sample.score_train[(sample.y_train > 0.5) == want]
        h_test, _ = _density_errors(test, edges)
        if h_test is not None:
            ax.stairs(h_test, edges, fill=True, alpha=0.3, color=colour, hatch=hatch)
            ax.stairs(h_test, edges, color=colour, lw=1.2, label=f"{label} (test, {test.size:,})")
            drawn = True
        h_train, err = _density_errors(train, edges)
        if h_train is not None:
            ax.errorbar(centres, h_train, yerr=err, fmt="o", ms=3, color=colour, label=f"{label} (train, {train.size:,})")
            drawn = True
    if not drawn:
        _no_data(ax, "no scored events")
        return _save(fig, out_dir, name)

    def fmt(p: float) -> str:
        return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"

    ax.set(xlabel="Classifier score", ylabel="Normalised to unit area",
           title=f"Overtraining check: Kolmogorov-Smirnov p-value\nsignal (background) = "
                 f"{fmt(p_signal)} ({fmt(p_background)})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", fontsize=8, ncols=2)
    return _save(fig, out_dir, name)


def plot_correlation(matrix: np.ndarray, names: Sequence[str], label: str, out_dir: str | Path, *,
                     weighted: bool, total: int) -> list[Path]:
    """Correlation matrix (in %, as TMVA prints it) of the features shown; NaN (constant inputs) grey.
    Writes ``correlation_<label>``."""
    k = len(names)
    side = min(12.0, max(4.5, 0.3 * k + 3.0))
    fig, ax = _figure(width=side + 1.2, height=side)
    title = f"Input correlations ({label})"
    if k < total:
        title += f": top {k} of {total} features by ranking"
    if weighted:
        title += ", weighted"
    if k == 0:
        _no_data(ax, "no varying feature")
        ax.set_title(title)
        return _save(fig, out_dir, f"correlation_{label}")
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(matrix * 100.0), cmap=cmap, vmin=-100, vmax=100)
    fig.colorbar(image, ax=ax, label="Linear correlation coefficient [%]", shrink=0.8)
    ax.set_xticks(np.arange(k), names, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(k), names, fontsize=7)
    if k <= 20:   # numbers stay legible up to about this size
        rows, cols = np.nonzero(np.isfinite(matrix))
        for i, j in zip(rows.tolist(), cols.tolist()):
            v = matrix[i, j] * 100.0
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 60 else "black")
    ax.set_title(title)
    return _save(fig, out_dir, f"correlation_{label}")


def plot_learning_curve(curve: dict[str, Any], out_dir: str | Path, *, name: str = "learning_curve") -> list[Path]:
    """Training (solid) and validation (dashed) loss and AUC against events seen or boosting rounds."""
    fig, (ax_loss, ax_auc) = _figure(ncols=2)
    x, series = np.asarray(curve["x"], dtype=np.float64), curve["series"]
    marker = "o" if x.size <= 30 else None
    for ax, keys, what in ((ax_loss, ("loss", "val_loss"), "Loss (binary cross-entropy)"),
                           (ax_auc, ("auc", "val_auc"), "AUC")):
        present = [k for k in keys if k in series]
        if not present:
            _no_data(ax, f"no {what.split(' ')[0].lower()} recorded")
            continue
        for key in present:
            ax.plot(x, series[key], ls="--" if key.startswith("val_") else "-", marker=marker, ms=3,
                    color="tab:orange" if key.startswith("val_") else _SIGNAL,
                    label="validation" if key.startswith("val_") else "training")
        ax.set(xlabel=curve["xlabel"], ylabel=what, title=f"Learning curve: {what.split(' (')[0]}")
        if x.size == 1:   # one chunk, or an estimator fitted once: say how to get a curve
            ax.text(0.5, 0.5, "one metric point recorded:\na smaller chunk_size gives one per chunk",
                    ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    return _save(fig, out_dir, name)
