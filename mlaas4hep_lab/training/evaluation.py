"""How good is a classifier: ROC/AUC, accuracy, log-loss, the Higgs challenge's AMS, plots, submissions.

Everything is computed on whole arrays with numpy (one sort and cumulative sums for every curve; no loop
over events or thresholds). Labels are 1 for signal and 0 for background (booleans too; any other
value is a ValueError, not silently rounded); scores are larger for more signal-like events; weights
are optional per-event weights (the Higgs challenge's ``Weight``). Selecting "above a threshold"
always means ``score >= threshold``.

Plots import matplotlib on first use (through :mod:`mlaas4hep_lab.extras`) and draw on standalone
``Figure`` objects, never on pyplot's global state, so they are safe headless and in threads. Each
plot function writes a PNG and a PDF and returns the paths it wrote.

Example::

    from mlaas4hep_lab.training import evaluation as ev
    metrics = ev.evaluate(y_test, score, w_test, test_fraction=0.2)      # -> metrics.json
    ev.plot_roc(y_test, score, w_test, "plots", label="DNN")
    best = ev.best_ams(y_test, score, w_test, scale=1 / 0.2)
    ev.write_submission("submission.csv", event_ids, score, best["threshold"])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlaas4hep_lab import extras

__all__ = [
    "roc_curve",
    "auc",
    "accuracy",
    "log_loss",
    "ams",
    "best_ams",
    "efficiency_purity",
    "evaluate",
    "plot_roc",
    "plot_score_distributions",
    "plot_efficiency_purity",
    "plot_ams_vs_threshold",
    "plot_feature_pdfs",
    "write_submission",
]

_MAX_CURVE_POINTS = 2000  # points drawn per curve: enough for the eye, keeps PDFs small


# --------------------------------------------------------------------------------------------- inputs
def _vector(values: ArrayLike, what: str, dtype=np.float64) -> np.ndarray:
    """A 1-D array; an (n, 1) column (what Keras' predict returns) is accepted and flattened."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one value per event (shape (n,) or (n, 1)), got shape {arr.shape}")
    return arr


def _signal(y: ArrayLike) -> np.ndarray:
    """True for signal (label 1), False for background (label 0); other labels are an error: a soft or
    multi-class label thresholded at 0.5 would give metrics of another problem than the one trained."""
    labels = _vector(y, "y")
    signal = labels == 1
    other = ~(signal | (labels == 0))
    if other.any():
        raise ValueError(f"y must be 1 (signal) or 0 (background); {int(np.count_nonzero(other))} of "
                         f"{labels.size} labels are not, e.g. {labels[other][0]:g}")
    return signal


def _inputs(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None):
    """(signal mask, score, weight) as checked float64/bool arrays of one length."""
    score = _vector(score, "score")
    labels = _signal(y)
    if labels.shape != score.shape:
        raise ValueError(f"y has {labels.size} events but score has {score.size}")
    bad = int(np.count_nonzero(~np.isfinite(score)))
    if bad:
        raise ValueError(f"score has {bad} non-finite value(s) (NaN or inf) out of {score.size}; "
                         "check the model's output (e.g. unnormalised or missing inputs)")
    if weight is None:
        w = np.ones_like(score)
    else:
        w = _vector(weight, "weight")
        if w.shape != score.shape:
            raise ValueError(f"weight has {w.size} events but score has {score.size}")
        bad = int(np.count_nonzero(~np.isfinite(w)))
        if bad:
            raise ValueError(f"weight has {bad} non-finite value(s) out of {w.size}")
    return labels, score, w


def _cumulative(signal: np.ndarray, score: np.ndarray, weight: np.ndarray):
    """For each distinct score, from the highest down: the threshold and the weighted signal and
    background sums and the number of events with ``score >= threshold``. One sort, two cumsums."""
    order = np.argsort(score, kind="stable")[::-1]
    s = score[order]
    w = weight[order]
    sig = signal[order]
    # the last event of each group of tied scores closes that threshold (ties are selected together)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.zeros(0, dtype=np.intp)
    cum_s = np.cumsum(np.where(sig, w, 0.0))[last]
    cum_b = np.cumsum(np.where(sig, 0.0, w))[last]
    return s[last], cum_s, cum_b, last + 1


# -------------------------------------------------------------------------------------------- metrics
def roc_curve(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None, *,
              drop_intermediate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic: ``(fpr, tpr, thresholds)``, thresholds decreasing.

    ``fpr``/``tpr`` are the (weighted) background/signal fractions with ``score >= thresholds``; one point
    per distinct score (tied scores move together, as in scikit-learn) plus the starting point (0, 0)
    with threshold ``inf``. ``drop_intermediate=True`` drops collinear points as scikit-learn's default
    does (same area). With one class only the undefined rate is NaN (no exception, no warning).
    """
    signal, score, w = _inputs(y, score, weight)
    thresholds, tps, fps, _ = _cumulative(signal, score, w)
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        thresholds, tps, fps = thresholds[keep], tps[keep], fps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def auc(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None) -> float:
    """Area under the ROC curve (trapezoids; equals scikit-learn's ``roc_auc_score``, weights included).

    NaN when the sample holds only one class (or one class has no positive total weight).
    """
    fpr, tpr, _ = roc_curve(y, score, weight)
    if not (np.isfinite(fpr[-1]) and np.isfinite(tpr[-1])):
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def accuracy(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None, threshold: float = 0.5) -> float:
    """(Weighted) fraction of events classified right, signal meaning ``score >= threshold``."""
    signal, score, w = _inputs(y, score, weight)
    total = w.sum()
    if score.size == 0 or total == 0:
        return float("nan")
    return float(np.sum(w[(score >= threshold) == signal]) / total)


def log_loss(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None, eps: float = 1e-7) -> float:
    """(Weighted) mean binary cross-entropy; scores are probabilities, clipped to ``[eps, 1 - eps]``."""
    signal, score, w = _inputs(y, score, weight)
    total = w.sum()
    if score.size == 0 or total == 0:
        return float("nan")
    p = np.clip(score, eps, 1.0 - eps)
    losses = -np.where(signal, np.log(p), np.log1p(-p))
    return float(np.sum(w * losses) / total)


def ams(s: ArrayLike, b: ArrayLike, b_reg: float = 10.0):
    """Approximate Median Significance of the Higgs ML challenge, elementwise over arrays of s and b:

    ``sqrt(2 * ((s + b + b_reg) * ln(1 + s / (b + b_reg)) - s))``

    ``s``/``b`` are the weighted signal/background counts selected, ``b_reg`` the regularisation term
    (10 in the challenge). Returns a float for scalar input, an array otherwise.
    """
    s = np.asarray(s, dtype=np.float64)
    breg = np.asarray(b, dtype=np.float64) + b_reg
    with np.errstate(divide="ignore", invalid="ignore"):
        radicand = 2.0 * ((s + breg) * np.log1p(s / breg) - s)
        # radicand >= 0 in exact arithmetic; rounding can make it a hair negative when s ~ 0
        out = np.sqrt(np.where(radicand < 0, 0.0, radicand))
    return float(out) if out.ndim == 0 else out


def best_ams(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None, b_reg: float = 10.0,
             scale: float = 1.0) -> dict[str, float]:
    """The threshold that maximises the AMS when selecting ``score >= threshold``.

    ``s`` and ``b`` are the weighted signal and background sums selected, multiplied by ``scale``: when
    the events are a test split holding a fraction f of the data, ``scale = 1 / f`` brings them back to
    the full sample (the challenge's weights sum to the full dataset's expected counts). Every distinct
    score is tried, in one sorted cumulative-sum pass.

    Returns ``{"ams", "threshold", "s", "b", "selected_fraction", "n_selected"}``; ``s``/``b`` are scaled,
    ``selected_fraction`` is the fraction of events (unweighted) selected.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r} (use 1 / test_fraction)")
    signal, score, w = _inputs(y, score, weight)
    thresholds, cum_s, cum_b, counts = _cumulative(signal, score, w)
    values = ams(scale * cum_s, scale * cum_b, b_reg) if thresholds.size else np.zeros(0)
    if values.size == 0 or np.all(np.isnan(values)):
        return {"ams": float("nan") if values.size else 0.0, "threshold": float("inf"), "s": 0.0, "b": 0.0,
                "selected_fraction": 0.0, "n_selected": 0}
    i = int(np.nanargmax(values))
    return {
        "ams": float(values[i]),
        "threshold": float(thresholds[i]),
        "s": float(scale * cum_s[i]),
        "b": float(scale * cum_b[i]),
        "selected_fraction": float(counts[i] / score.size),
        "n_selected": int(counts[i]),
    }


def efficiency_purity(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal efficiency ``s / s_total`` and purity ``s / (s + b)`` of ``score >= thresholds``.

    One point per distinct score, thresholds decreasing (efficiency increasing). The efficiency is NaN
    when there is no signal.
    """
    signal, score, w = _inputs(y, score, weight)
    thresholds, cum_s, cum_b, _ = _cumulative(signal, score, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = cum_s[-1] if cum_s.size else 0.0
        efficiency = cum_s / total if total > 0 else np.full_like(cum_s, np.nan)
        purity = cum_s / (cum_s + cum_b)
    return efficiency, purity, thresholds


def _plain(value: Any):
    """A JSON-safe plain Python value: ints stay ints, NaN/inf become None (null)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None, *,
             test_fraction: float | None = None, b_reg: float = 10.0, threshold: float = 0.5) -> dict:
    """The metrics of a test sample, as plain JSON-safe values (the content of ``metrics.json``).

    Always: ``n_events``, ``n_signal``, ``n_background``, ``auc``, ``accuracy`` (at ``threshold``),
    ``log_loss`` (unweighted). With weights also: ``auc_weighted``, ``accuracy_weighted``,
    ``log_loss_weighted``, ``sum_weight_signal``, ``sum_weight_background`` and the best AMS
    (``ams``, ``ams_threshold``, ``ams_s``, ``ams_b``, ``ams_selected_fraction``, ``ams_scale``,
    ``ams_b_reg``), with s and b scaled by ``1 / test_fraction`` when it is given. Metrics that are
    undefined (one class only) are ``None``.
    """
    if test_fraction is not None and not 0 < test_fraction <= 1:
        raise ValueError(f"test_fraction must be in (0, 1], got {test_fraction!r}")
    signal, score, w = _inputs(y, score, weight)
    n_signal = int(np.count_nonzero(signal))
    out: dict[str, Any] = {
        "n_events": int(score.size),
        "n_signal": n_signal,
        "n_background": int(score.size - n_signal),
        "auc": auc(signal, score),
        "accuracy": accuracy(signal, score, threshold=threshold),
        "log_loss": log_loss(signal, score),
    }
    if weight is not None:
        scale = 1.0 / test_fraction if test_fraction else 1.0
        best = best_ams(signal, score, w, b_reg=b_reg, scale=scale)
        out.update({
            "auc_weighted": auc(signal, score, w),
            "accuracy_weighted": accuracy(signal, score, w, threshold=threshold),
            "log_loss_weighted": log_loss(signal, score, w),
            "sum_weight_signal": float(w[signal].sum()),
            "sum_weight_background": float(w[~signal].sum()),
            "ams": best["ams"],
            "ams_threshold": best["threshold"],
            "ams_s": best["s"],
            "ams_b": best["b"],
            "ams_selected_fraction": best["selected_fraction"],
            "ams_scale": scale,
            "ams_b_reg": float(b_reg),
        })
    return {key: _plain(value) for key, value in out.items()}


# ---------------------------------------------------------------------------------------------- plots
def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.8):
    """A standalone Figure (no pyplot global state) and its axes."""
    extras.matplotlib()
    figure_cls = extras.require("matplotlib.figure").Figure
    fig = figure_cls(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=True)


def _save(fig, out_dir: str | Path, stem: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    return paths


def _thin(n: int, keep: int | None = None, max_points: int = _MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ~max_points evenly spread points of a curve of n, endpoints (and ``keep``) kept."""
    if n <= max_points:
        return np.arange(n)
    idx = np.round(np.linspace(0, n - 1, max_points)).astype(np.intp)
    if keep is not None:
        idx = np.r_[idx, keep]
    return np.unique(idx)


def _weighted_title(title: str, weight) -> str:
    return f"{title} (weighted)" if weight is not None else title


def plot_roc(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None, out_dir: str | Path, *,
             label: str = "classifier", name: str = "roc") -> list[Path]:
    """ROC curve (signal vs background efficiency) beside the background rejection ``1/eps_B`` vs
    signal efficiency (log scale), as HEP papers show them. Writes ``<name>.png`` and ``<name>.pdf``."""
    fpr, tpr, _ = roc_curve(y, score, weight, drop_intermediate=True)
    area = auc(y, score, weight)
    idx = _thin(fpr.size)
    fpr, tpr = fpr[idx], tpr[idx]
    fig, (ax, ax_rej) = _figure(ncols=2)
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"{label} (AUC = {area:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="random guess (AUC = 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=r"Background efficiency $\varepsilon_B$ (false-positive rate)",
           ylabel=r"Signal efficiency $\varepsilon_S$ (true-positive rate)",
           title=_weighted_title("ROC curve", weight))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    positive = fpr > 0
    ax_rej.plot(tpr[positive], 1.0 / fpr[positive], color="tab:blue", lw=2, label=label)
    eff = np.linspace(0.01, 1, 100)
    ax_rej.plot(eff, 1.0 / eff, color="grey", ls="--", lw=1, label="random guess")
    ax_rej.set_yscale("log")
    ax_rej.set(xlim=(0, 1), xlabel=r"Signal efficiency $\varepsilon_S$",
               ylabel=r"Background rejection $1/\varepsilon_B$",
               title=_weighted_title("Background rejection vs signal efficiency", weight))
    ax_rej.grid(alpha=0.3, which="both")
    ax_rej.legend(loc="upper right")
    return _save(fig, out_dir, name)


def _density(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None):
    """Histogram normalised to unit area, or None when there is nothing to normalise."""
    counts, _ = np.histogram(values, bins=edges, weights=weights)
    area = np.sum(counts * np.diff(edges))
    return counts / area if values.size and area > 0 else None


def _draw_signal_background(ax, sig, bkg, edges, w_sig=None, w_bkg=None) -> None:
    h_sig, h_bkg = _density(sig, edges, w_sig), _density(bkg, edges, w_bkg)
    if h_sig is not None:
        ax.stairs(h_sig, edges, fill=True, alpha=0.35, color="tab:blue")
        ax.stairs(h_sig, edges, color="tab:blue", lw=1.5, label=f"Signal ({sig.size:,} events)")
    if h_bkg is not None:
        ax.stairs(h_bkg, edges, color="tab:red", lw=1.5, hatch="//", label=f"Background ({bkg.size:,} events)")
    if h_sig is None and h_bkg is None:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best")
    ax.set_ylim(bottom=0)


def plot_score_distributions(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None, out_dir: str | Path, *,
                             bins: int = 50, name: str = "score_distributions") -> list[Path]:
    """Classifier output for signal and background, each normalised to unit area (weighted if given)."""
    signal, score, w = _inputs(y, score, weight)
    lo, hi = (float(score.min()), float(score.max())) if score.size else (0.0, 1.0)
    if lo >= 0 and hi <= 1:  # probabilities: the natural axis
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig, ax = _figure()
    _draw_signal_background(ax, score[signal], score[~signal], edges,
                            w[signal] if weight is not None else None, w[~signal] if weight is not None else None)
    ax.set(xlabel="Classifier score", ylabel="Normalised to unit area",
           title=_weighted_title("Classifier output: signal vs background", weight))
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, name)


def plot_efficiency_purity(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None, out_dir: str | Path, *,
                           name: str = "efficiency_purity") -> list[Path]:
    """Signal efficiency and purity vs the score threshold, and purity vs efficiency."""
    efficiency, purity, thresholds = efficiency_purity(y, score, weight)
    idx = _thin(efficiency.size)
    efficiency, purity, thresholds = efficiency[idx], purity[idx], thresholds[idx]
    fig, (ax, ax_pe) = _figure(ncols=2)
    ax.plot(thresholds, efficiency, color="tab:blue", lw=2, label=r"signal efficiency $s/s_{tot}$")
    ax.plot(thresholds, purity, color="tab:green", lw=2, label=r"purity $s/(s+b)$")
    ax.plot(thresholds, efficiency * purity, color="tab:purple", lw=1.5, ls="--", label="efficiency x purity")
    ax.set(xlabel=r"Score threshold (select score $\geq$ threshold)", ylabel="Fraction", ylim=(0, 1.02),
           title=_weighted_title("Efficiency and purity vs threshold", weight))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax_pe.plot(efficiency, purity, color="tab:blue", lw=2)
    ax_pe.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Signal efficiency", ylabel="Purity",
              title=_weighted_title("Purity vs signal efficiency", weight))
    ax_pe.grid(alpha=0.3)
    return _save(fig, out_dir, name)


def plot_ams_vs_threshold(y: ArrayLike, score: ArrayLike, weight: ArrayLike | None, out_dir: str | Path, *,
                          b_reg: float = 10.0, scale: float = 1.0, name: str = "ams_vs_threshold") -> list[Path]:
    """AMS of ``score >= threshold`` for every threshold, the best one marked (s, b scaled by ``scale``)."""
    signal, score, w = _inputs(y, score, weight)
    thresholds, cum_s, cum_b, _ = _cumulative(signal, score, w)
    values = ams(scale * cum_s, scale * cum_b, b_reg) if thresholds.size else np.zeros(0)
    best = best_ams(signal, score, w, b_reg=b_reg, scale=scale)
    keep = int(np.nanargmax(values)) if values.size and not np.all(np.isnan(values)) else None
    idx = _thin(values.size, keep=keep)
    fig, ax = _figure()
    ax.plot(thresholds[idx], values[idx], color="tab:blue", lw=2, label="AMS")
    if keep is not None:
        ax.axvline(best["threshold"], color="tab:red", ls="--", lw=1,
                   label=f"best AMS = {best['ams']:.3f} at score $\\geq$ {best['threshold']:.4g}\n"
                         f"s = {best['s']:.4g}, b = {best['b']:.4g}")
        ax.plot([best["threshold"]], [best["ams"]], "o", color="tab:red")
    ax.set(xlabel=r"Score threshold (select score $\geq$ threshold)",
           ylabel=r"AMS $=\sqrt{2((s+b+b_{reg})\ln(1+s/(b+b_{reg}))-s)}$",
           title=f"Approximate Median Significance ($b_{{reg}}$ = {b_reg:g})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, out_dir, name)


def _feature_items(features) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, signal values, background values) per feature, masked and non-finite values removed."""
    items = []
    if isinstance(features, Mapping):
        for fname, pair in features.items():
            try:
                sig, bkg = pair
            except (TypeError, ValueError) as err:
                raise ValueError(f"feature {fname!r}: expected (values_signal, values_background)") from err
            sig, bkg = (np.ma.asarray(v, dtype=np.float64).compressed() for v in (sig, bkg))
            items.append((str(fname), sig[np.isfinite(sig)], bkg[np.isfinite(bkg)]))
        return items
    if not isinstance(features, Sequence) or len(features) not in (3, 4):
        raise ValueError("features must be a dict name -> (values_signal, values_background) "
                         "or a tuple (X, y, names, mask) (mask may be None)")
    X, y, names = features[:3]
    mask = features[3] if len(features) == 4 else None
    X = np.asarray(X, dtype=np.float64)
    names = list(names)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X must be (n_events, n_features) with one name per column; got X {X.shape} and "
                         f"{len(names)} names")
    signal = _signal(y)
    if signal.size != X.shape[0]:
        raise ValueError(f"y has {signal.size} events but X has {X.shape[0]}")
    good = np.isfinite(X)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != X.shape:
            raise ValueError(f"mask has shape {mask.shape} but X has {X.shape}")
        good &= mask
    for j, fname in enumerate(names):
        col, ok = X[:, j], good[:, j]
        items.append((str(fname), col[ok & signal], col[ok & ~signal]))
    return items


def _edges(sig: np.ndarray, bkg: np.ndarray, bins: int) -> np.ndarray:
    """Common bin edges; integer-valued features with few values get one bin per integer."""
    values = np.concatenate([sig, bkg])
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= bins and np.all(values == np.round(values)):
        return np.arange(lo - 0.5, hi + 1.0)
    if hi == lo:
        return np.linspace(lo - 0.5, hi + 0.5, 2)
    return np.linspace(lo, hi, bins + 1)


def _file_stem(fname: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", fname).strip("_") or "feature"
    base, k = stem, 1
    while stem in used:
        k += 1
        stem = f"{base}_{k}"
    used.add(stem)
    return stem


def plot_feature_pdfs(features, out_dir: str | Path, max_features: int | None = None, *, bins: int = 50,
                      name: str = "feature_pdfs") -> list[Path]:
    """Per-feature signal and background distributions, each normalised to unit area (params ``hist:
    "pdfs"``).

    ``features`` is a dict ``name -> (values_signal, values_background)`` (numpy masked arrays allowed) or
    a tuple ``(X, y, names, mask)`` as vectorize returns them, where masked (``mask == False``) values,
    e.g. padding or declared missing values, are left out. Non-finite values are always left out.
    Writes ``pdf_<feature>.png`` per feature and ``<name>.pdf`` with one page per feature; returns the
    PNGs then the PDF (nothing is written when there is no feature).
    """
    items = _feature_items(features)
    if max_features is not None:
        items = items[:max_features]
    if not items:
        return []
    extras.matplotlib()
    pdf_pages = extras.require("matplotlib.backends.backend_pdf").PdfPages
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    pdf_path = out / f"{name}.pdf"
    with pdf_pages(pdf_path) as pdf:
        for fname, sig, bkg in items:
            fig, ax = _figure()
            _draw_signal_background(ax, sig, bkg, _edges(sig, bkg, bins))
            ax.set(xlabel=fname, ylabel="Normalised to unit area", title=f"{fname}: signal vs background")
            ax.grid(alpha=0.3)
            png = out / f"pdf_{_file_stem(fname, used)}.png"
            fig.savefig(png, dpi=100)
            pdf.savefig(fig)
            written.append(png)
    written.append(pdf_path)
    return written


# -------------------------------------------------------------------------------------------- submission
def write_submission(path: str | Path, event_ids: ArrayLike, score: ArrayLike, threshold: float) -> Path:
    """Write a Higgs ML challenge submission: CSV ``EventId,RankOrder,Class``, one row per event.

    ``RankOrder`` runs 1..N by increasing score (N = most signal-like), ties broken by increasing EventId;
    ``Class`` is ``s`` where ``score >= threshold`` (e.g. ``best_ams(...)["threshold"]``) else ``b``.
    Rows are written in increasing EventId order. Returns the path.
    """
    score = _vector(score, "score")
    ids = _vector(event_ids, "event_ids", dtype=None)
    if ids.size != score.size:
        raise ValueError(f"event_ids has {ids.size} events but score has {score.size}")
    if ids.dtype.kind == "f":
        if not np.all(np.isfinite(ids) & (ids == np.round(ids))):
            raise ValueError("event_ids must be integers (the challenge's EventId)")
        ids = ids.astype(np.int64)
    elif ids.dtype.kind not in "iub":
        raise ValueError(f"event_ids must be integers (the challenge's EventId), got dtype {ids.dtype}")
    if not np.all(np.isfinite(score)):
        raise ValueError("score has non-finite values; a submission needs a rank for every event")
    rows = np.argsort(ids, kind="stable")
    sorted_ids = ids[rows]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        raise ValueError(f"event_ids are not unique ({dup.size} duplicate(s), e.g. {dup[0]})")
    order = np.lexsort((ids, score))  # by score, then by EventId
    rank = np.empty(score.size, dtype=np.int64)
    rank[order] = np.arange(1, score.size + 1)
    label = np.where(score >= threshold, "s", "b")
    lines = np.char.add(np.char.add(np.char.add(np.char.add(sorted_ids.astype(str), ","),
                                                rank[rows].astype(str)), ","), label[rows])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(lines.tolist()) + ("\n" if lines.size else "")
    target.write_text("EventId,RankOrder,Class\n" + body, encoding="ascii")
    return target
