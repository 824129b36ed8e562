"""How good is a multi-class classifier or a regression: the metrics and plots of those two tasks.

The binary task keeps :mod:`mlaas4hep_lab.training.evaluation`; this module builds on its ROC/AUC and
plotting helpers (one-vs-rest and one-vs-one curves are binary curves). Inputs are numpy arrays as
:class:`~mlaas4hep_lab.task.Task` defines them: the truth ``y`` of a multi-class task is ``float32[n]``
holding the class index 0..K-1 and the model gives ``proba`` ``[n, K]``; a regression has ``y`` and
``pred`` ``[n, T]`` (``[n]`` accepted when T = 1). ``weight`` is None or one weight per event; negative
weights (Monte Carlo) are allowed. Everything is computed on whole arrays; the only Python loops are
over classes, targets and bins.

:func:`evaluate_multiclass` returns (all JSON-safe; NaN/inf become ``None``)::

    task "multiclass"; classes [names]; events n; events_per_class {class: n}; weighted bool
    auc_per_class {class: one-vs-rest AUC of p_class, None for a class with no events}
    auc_macro       mean of the defined AUCs (classes with no events left out, see notes)
    accuracy        (weighted) fraction with argmax(proba) == y
    log_loss        (weighted) mean cross-entropy
    confusion       K x K unweighted counts, rows = true class, columns = argmax prediction
    confusion_normalised  the same, each row divided by its sum (a class with no events: a row of None)
    rejection       {signal: {background: {"0.7": 1/eff_bkg}}}: discriminant p_signal, cut where the
                    (weighted) efficiency of the signal class is 0.7 (linear interpolation between the
                    ROC points around it), eff_bkg the fraction of the background class passing it.
                    None where no background passes (rejection infinite: more background events needed)
                    or where the signal or background class has no events.
    notes           [sentences on what was left out and why]

:func:`evaluate_regression` returns::

    task "regression"; targets [names]; events n; weighted bool
    loss            {"mse": ..., "mae": ...} over all targets (:func:`regression_losses`)
    rmse, mae, bias {target: float}; bias is the (weighted) mean of pred - truth
    response_kind   {target: "ratio" (pred / truth, when truth > 0 everywhere) or "difference" (pred - truth)}
    bins            {target: {"edges": [bins + 1], "centres": [bins], "events": [bins]}}: (weighted)
                    quantiles of the truth, so that each bin holds about the same weight; a bin holds
                    lo < truth <= hi (the first also its lower edge); events are unweighted counts
    response        {target: [median response per bin]}
    resolution      {target: [half the 16%-84% interquantile width of the response per bin]}

Per-bin values of an empty bin are None. Quantiles are those of :func:`weighted_quantile`.

Plots import matplotlib on first use and write a PNG and a PDF each, as the binary plots do:
``roc_multiclass``, ``confusion``, ``rejection_<class>`` (multi-class) and ``regression_<target>``,
``response_<target>`` (regression), names made safe for files.

Example::

    from mlaas4hep_lab.training import evaluation_tasks as et
    metrics = et.evaluate_multiclass(y, proba, w, task.classes)
    metrics["rejection"]["b"]["light"]["0.7"]      # light-jet rejection at 70% b-jet efficiency
    et.plot_multiclass(y, proba, w, task.classes, Path("plots"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlaas4hep_lab import extras
from mlaas4hep_lab.training.evaluation import (
    _figure,
    _file_stem,
    _plain,
    _save,
    _thin,
    _vector,
    _weighted_title,
    auc,
    roc_curve,
)

__all__ = [
    "weighted_quantile",
    "multiclass_log_loss",
    "multiclass_accuracy",
    "regression_losses",
    "evaluate_multiclass",
    "evaluate_regression",
    "plot_multiclass",
    "plot_regression",
]

_RESOLUTION_QUANTILES = (0.16, 0.5, 0.84)  # +-1 sigma of a Gaussian around the median


# --------------------------------------------------------------------------------------------- inputs
def _weights(weight: ArrayLike | None, n: int) -> np.ndarray:
    if weight is None:
        return np.ones(n)
    w = _vector(weight, "weight")
    if w.size != n:
        raise ValueError(f"weight has {w.size} events but there are {n}")
    bad = int(np.count_nonzero(~np.isfinite(w)))
    if bad:
        raise ValueError(f"weight has {bad} non-finite value(s) out of {w.size}")
    return w


def _class_inputs(y: ArrayLike, proba: ArrayLike, weight: ArrayLike | None, classes: Sequence[str] | None = None):
    """(class index int[n], proba float64[n, K], weight float64[n]), checked."""
    p = np.asarray(proba, dtype=np.float64)
    k = len(classes) if classes is not None else (p.shape[1] if p.ndim == 2 else 0)
    if p.ndim != 2 or p.shape[1] != k or k < 2:
        what = f"one column per class of {list(classes)}" if classes is not None else "K >= 2 columns"
        raise ValueError(f"proba must be [n, K] class probabilities with {what}; got shape {p.shape}")
    labels = _vector(y, "y")
    if labels.size != p.shape[0]:
        raise ValueError(f"y has {labels.size} events but proba has {p.shape[0]}")
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0) | (labels >= k)
    if bad.any():
        raise ValueError(f"y must hold class indices 0..{k - 1}; {int(np.count_nonzero(bad))} of {labels.size} "
                         f"labels do not, e.g. {labels[bad][0]:g}")
    bad_p = int(np.count_nonzero(~np.isfinite(p)))
    if bad_p:
        raise ValueError(f"proba has {bad_p} non-finite value(s); check the model's output")
    return labels.astype(np.intp), p, _weights(weight, p.shape[0])


def _regression_inputs(y: ArrayLike, pred: ArrayLike, weight: ArrayLike | None, targets: Sequence[str] | None = None):
    """(truth float64[n, T], pred float64[n, T], weight float64[n]); ``[n]`` is read as T = 1."""
    arrays = []
    for what, values in (("y", y), ("pred", pred)):
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[:, None] if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise ValueError(f"{what} must be [n, T] (or [n] for one target), got shape {arr.shape}")
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{what} has {bad} non-finite value(s) out of {arr.size}")
        arrays.append(arr)
    truth, out = arrays
    if truth.shape != out.shape:
        raise ValueError(f"y has shape {truth.shape} but pred has {out.shape}")
    if targets is not None and truth.shape[1] != len(targets):
        raise ValueError(f"y and pred have {truth.shape[1]} column(s) but there are {len(targets)} target(s): "
                         f"{list(targets)}")
    return truth, out, _weights(weight, truth.shape[0])


def _mean(values: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean along axis 0 (NaN when the total weight is not positive)."""
    total = w.sum()
    return float(np.sum(w * values) / total) if values.size and total > 0 else float("nan")


# ------------------------------------------------------------------------------------------ quantiles
def weighted_quantile(values: ArrayLike, q: ArrayLike, weight: ArrayLike | None = None):
    """Quantiles ``q`` (in [0, 1]) of ``values``, each event counted with its weight.

    The smallest value at which the cumulative weight reaches ``q`` of the total (numpy's
    ``method="inverted_cdf"``): with unit weights it equals ``np.quantile(values, q,
    method="inverted_cdf")``, with integer weights the quantile of the events repeated that many times,
    and scaling all weights changes nothing. Negative weights are allowed (the first value where the
    running cumulative weight reaches ``q``); NaN when there are no values or the total weight is not
    positive. Returns a float for scalar ``q``, an array otherwise.

    >>> weighted_quantile([1.0, 2.0, 3.0], 0.5, [1, 1, 5])
    3.0
    """
    x = _vector(values, "values")
    qs = np.asarray(q, dtype=np.float64)
    if np.any(~((qs >= 0) & (qs <= 1))):
        raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
    w = _weights(weight, x.size)
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])
    if x.size == 0 or not cum[-1] > 0:
        out = np.full(qs.shape, np.nan)
    else:
        # the running maximum makes the cumulative weight sorted even with negative weights, and its
        # first crossing of q is that of the cumulative weight itself
        cdf = np.maximum.accumulate(cum) / cum[-1]
        idx = np.minimum(np.searchsorted(cdf, qs, side="left"), x.size - 1)
        out = x[order][idx]
    return float(out) if out.ndim == 0 else out


# ------------------------------------------------------------------------------------ multi-class metrics
def multiclass_log_loss(y: ArrayLike, proba: ArrayLike, weight: ArrayLike | None = None, eps: float = 1e-7) -> float:
    """(Weighted) mean cross-entropy ``-log p_true``, probabilities clipped to ``[eps, 1 - eps]``."""
    labels, p, w = _class_inputs(y, proba, weight)
    p_true = np.clip(p[np.arange(labels.size), labels], eps, 1.0 - eps)
    return _mean(-np.log(p_true), w)


def multiclass_accuracy(y: ArrayLike, proba: ArrayLike, weight: ArrayLike | None = None) -> float:
    """(Weighted) fraction of events whose most probable class (argmax) is the true one."""
    labels, p, w = _class_inputs(y, proba, weight)
    return _mean(np.argmax(p, axis=1) == labels, w)


def _confusion(labels: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted counts (rows = true class, columns = argmax) and the same divided by each row's sum."""
    k = p.shape[1]
    counts = np.bincount(labels * k + np.argmax(p, axis=1), minlength=k * k).reshape(k, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return counts, counts / counts.sum(axis=1, keepdims=True)


def _pair_roc(labels, p, w, signal: int, background: int):
    """ROC of class ``signal`` against class ``background`` alone, discriminant p_signal."""
    pair = (labels == signal) | (labels == background)
    fpr, tpr, _ = roc_curve(labels[pair] == signal, p[pair, signal], w[pair], drop_intermediate=True)
    return fpr, tpr


def _rejection_at(fpr: np.ndarray, tpr: np.ndarray, efficiencies: np.ndarray) -> np.ndarray:
    """1 / eff_bkg where the signal efficiency first reaches each of ``efficiencies``, interpolating
    linearly between the two ROC points around it; inf where no background passes, NaN if undefined."""
    if not (np.isfinite(tpr[-1]) and np.isfinite(fpr[-1])):
        return np.full(efficiencies.shape, np.nan)
    # tpr[0] = 0 < eff <= tpr[-1] = 1, so 1 <= i < len; the running maximum copes with negative weights
    i = np.searchsorted(np.maximum.accumulate(tpr), efficiencies, side="left")
    t0, t1, f0, f1 = tpr[i - 1], tpr[i], fpr[i - 1], fpr[i]
    eff_bkg = f0 + (efficiencies - t0) / (t1 - t0) * (f1 - f0)
    with np.errstate(divide="ignore"):
        return np.where(eff_bkg > 0, 1.0 / np.where(eff_bkg > 0, eff_bkg, 1.0), np.inf)


def evaluate_multiclass(y: ArrayLike, proba: ArrayLike, weight: ArrayLike | None, classes: Sequence[str],
                        efficiencies: Sequence[float] = (0.5, 0.7, 0.9)) -> dict:
    """The metrics of a multi-class test sample as plain JSON-safe values (see the module docstring).

    ``efficiencies``: the signal efficiencies (in (0, 1]) at which background rejections are given.
    """
    names = [str(c) for c in classes]
    labels, p, w = _class_inputs(y, proba, weight, names)
    effs = np.asarray(efficiencies, dtype=np.float64).ravel()
    if np.any(~((effs > 0) & (effs <= 1))):
        raise ValueError(f"efficiencies must be in (0, 1], got {list(efficiencies)!r}")
    k = len(names)
    counts = np.bincount(labels, minlength=k)
    aucs = {names[c]: auc(labels == c, p[:, c], w) for c in range(k)}
    defined = [a for a in aucs.values() if np.isfinite(a)]
    notes = []
    empty = [names[c] for c in range(k) if counts[c] == 0]
    if empty:
        notes.append(f"class(es) {empty} have no events: their AUC and rejections are None and they are "
                     "left out of auc_macro")
    undefined = [name for name, a in aucs.items() if not np.isfinite(a) and name not in empty]
    if undefined:
        notes.append(f"the AUC of {undefined} is undefined (no events of the other classes, or a total "
                     "weight that is not positive): None and left out of auc_macro")
    confusion, normalised = _confusion(labels, p)
    rejection = {}
    for s in range(k):
        rejection[names[s]] = {}
        for b in range(k):
            if b != s:
                values = _rejection_at(*_pair_roc(labels, p, w, s, b), effs)
                rejection[names[s]][names[b]] = {f"{e:g}": _plain(v) for e, v in zip(effs, values)}
    return {
        "task": "multiclass",
        "classes": names,
        "events": int(labels.size),
        "events_per_class": {names[c]: int(counts[c]) for c in range(k)},
        "weighted": weight is not None,
        "auc_per_class": {name: _plain(a) for name, a in aucs.items()},
        "auc_macro": _plain(np.mean(defined)) if defined else None,
        "accuracy": _plain(multiclass_accuracy(labels, p, w)),
        "log_loss": _plain(multiclass_log_loss(labels, p, w)),
        "confusion": confusion.tolist(),
        "confusion_normalised": [[_plain(v) for v in row] for row in normalised],
        "rejection": rejection,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------- regression metrics
def regression_losses(y: ArrayLike, pred: ArrayLike, weight: ArrayLike | None = None) -> dict[str, float]:
    """``{"mse", "mae"}``: (weighted) mean squared and absolute error over all events and targets."""
    truth, out, w = _regression_inputs(y, pred, weight)
    diff = out - truth
    return {"mse": _mean(np.mean(diff**2, axis=1), w), "mae": _mean(np.mean(np.abs(diff), axis=1), w)}


def _binned_response(truth: np.ndarray, pred: np.ndarray, w: np.ndarray, bins: int) -> dict[str, Any]:
    """Response (median) and resolution (half the 16-84% width) in ``bins`` quantile bins of the truth."""
    kind = "ratio" if truth.size and np.all(truth > 0) else "difference"
    response = pred / truth if kind == "ratio" else pred - truth
    edges = weighted_quantile(truth, np.linspace(0.0, 1.0, bins + 1), w)
    # bins (lo, hi], the first closed: an inverted-cdf edge is the value at which a fraction is reached
    which = np.searchsorted(edges[1:-1], truth, side="left")
    median, resolution = np.full(bins, np.nan), np.full(bins, np.nan)
    for i in range(bins):
        inside = which == i
        if inside.any():
            lo, median[i], hi = weighted_quantile(response[inside], _RESOLUTION_QUANTILES, w[inside])
            resolution[i] = (hi - lo) / 2
    return {"kind": kind, "edges": edges, "centres": (edges[1:] + edges[:-1]) / 2,
            "events": np.bincount(which, minlength=bins), "response": median, "resolution": resolution}


def evaluate_regression(y: ArrayLike, pred: ArrayLike, weight: ArrayLike | None, targets: Sequence[str],
                        bins: int = 10) -> dict:
    """The metrics of a regression test sample as plain JSON-safe values (see the module docstring)."""
    names = [str(t) for t in targets]
    truth, out, w = _regression_inputs(y, pred, weight, names)
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    result: dict[str, Any] = {
        "task": "regression", "targets": names, "events": int(truth.shape[0]), "weighted": weight is not None,
        "loss": regression_losses(truth, out, w),
        "rmse": {}, "mae": {}, "bias": {}, "response_kind": {}, "bins": {}, "response": {}, "resolution": {},
    }
    for j, name in enumerate(names):
        diff = out[:, j] - truth[:, j]
        with np.errstate(invalid="ignore"):  # negative weights can make the mean square negative
            result["rmse"][name] = _plain(np.sqrt(_mean(diff**2, w)))
        result["mae"][name] = _plain(_mean(np.abs(diff), w))
        result["bias"][name] = _plain(_mean(diff, w))
        binned = _binned_response(truth[:, j], out[:, j], w, int(bins))
        result["response_kind"][name] = binned["kind"]
        result["bins"][name] = {key: [_plain(v) for v in binned[key]] for key in ("edges", "centres", "events")}
        result["response"][name] = [_plain(v) for v in binned["response"]]
        result["resolution"][name] = [_plain(v) for v in binned["resolution"]]
    return result


# ---------------------------------------------------------------------------------------------- plots
def plot_multiclass(y: ArrayLike, proba: ArrayLike, weight: ArrayLike | None, classes: Sequence[str],
                    out: Path) -> list[Path]:
    """One-vs-rest ROC curves of all classes (``roc_multiclass``), the row-normalised confusion matrix
    (``confusion``) and, per class as signal, the rejection of every other class vs the signal
    efficiency (``rejection_<class>``). Writes a PNG and a PDF of each into ``out``; returns the paths."""
    names = [str(c) for c in classes]
    labels, p, w = _class_inputs(y, proba, weight, names)
    k = len(names)
    written: list[Path] = []

    fig, ax = _figure()
    for c, name in enumerate(names):
        fpr, tpr, _ = roc_curve(labels == c, p[:, c], w, drop_intermediate=True)
        if not (np.isfinite(fpr[-1]) and np.isfinite(tpr[-1])):
            ax.plot([], [], lw=2, label=f"{name} (no events)")
            continue
        idx = _thin(fpr.size)
        ax.plot(fpr[idx], tpr[idx], lw=2, label=f"{name} vs rest (AUC = {np.trapezoid(tpr, fpr):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="random guess")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Efficiency of the other classes (false-positive rate)",
           ylabel="Efficiency of the class (true-positive rate)",
           title=_weighted_title("One-vs-rest ROC curves", weight))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    written += _save(fig, out, "roc_multiclass")

    confusion, normalised = _confusion(labels, p)
    size = 3.0 + 0.6 * k
    fig, ax = _figure(width=size + 1.0, height=size)
    image = ax.imshow(np.ma.masked_invalid(normalised), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="Fraction of the true class")
    for i in range(k):
        for j in range(k):
            value = normalised[i, j]
            text = "n/a" if not np.isfinite(value) else f"{value:.2f}\n({confusion[i, j]:,})"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(value) and value > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="Predicted class (argmax)", ylabel="True class", title="Confusion matrix (unweighted)")
    written += _save(fig, out, "confusion")

    used: set[str] = {"roc_multiclass", "confusion"}
    eff = np.linspace(0.01, 1, 100)
    for s, name in enumerate(names):
        fig, ax = _figure()
        for b in range(k):
            if b == s:
                continue
            fpr, tpr = _pair_roc(labels, p, w, s, b)
            passing = np.isfinite(tpr) & np.isfinite(fpr) & (fpr > 0)
            idx = _thin(int(np.count_nonzero(passing)))
            ax.plot(tpr[passing][idx], 1.0 / fpr[passing][idx], lw=2, label=f"{names[b]} rejection")
        ax.plot(eff, 1.0 / eff, color="grey", ls="--", lw=1, label="random guess")
        ax.set_yscale("log")
        ax.set(xlim=(0, 1), xlabel=f"{name} efficiency (discriminant p_{name})",
               ylabel=r"Background rejection $1/\varepsilon_B$",
               title=_weighted_title(f"Rejection of the other classes, {name} as signal", weight))
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right")
        written += _save(fig, out, _file_stem(f"rejection_{name}", used))
    return written


def plot_regression(y: ArrayLike, pred: ArrayLike, weight: ArrayLike | None, targets: Sequence[str],
                    out: Path, bins: int = 10) -> list[Path]:
    """Per target: prediction vs truth as a 2-D histogram with the diagonal (``regression_<target>``) and
    the response and resolution in quantile bins of the truth (``response_<target>``). Writes a PNG
    and a PDF of each into ``out``; returns the paths."""
    names = [str(t) for t in targets]
    truth, pred_, w = _regression_inputs(y, pred, weight, names)
    extras.matplotlib()
    log_norm = extras.require("matplotlib.colors").LogNorm
    written: list[Path] = []
    used: set[str] = set()
    for j, name in enumerate(names):
        t, o = truth[:, j], pred_[:, j]
        fig, ax = _figure()
        # the central 99.8% of both, on one range for both axes, so that the diagonal is y = x
        lo, hi = np.quantile(np.concatenate([t, o]), [0.001, 0.999]) if t.size else (0.0, 1.0)
        lo, hi = (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)
        counts, xe, ye = np.histogram2d(t, o, bins=60, range=[[lo, hi], [lo, hi]], weights=w)
        positive = np.ma.masked_less_equal(counts, 0)
        mesh = ax.pcolormesh(xe, ye, positive.T, cmap="viridis", norm=log_norm() if positive.count() else None)
        fig.colorbar(mesh, ax=ax, label="Weighted events" if weight is not None else "Events")
        ax.plot([lo, hi], [lo, hi], color="tab:red", ls="--", lw=1, label="prediction = truth")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"True {name}", ylabel=f"Predicted {name}",
               title=_weighted_title(f"Prediction vs truth: {name}", weight))
        ax.legend(loc="upper left")
        stem = _file_stem(name, used)
        written += _save(fig, out, f"regression_{stem}")

        binned = _binned_response(t, o, w, bins)
        ratio = binned["kind"] == "ratio"
        half_width = np.diff(binned["edges"]) / 2
        fig, (ax_r, ax_s) = _figure(ncols=2)
        ax_r.errorbar(binned["centres"], binned["response"], xerr=half_width, fmt="o", color="tab:blue")
        ax_r.axhline(1.0 if ratio else 0.0, color="grey", ls="--", lw=1)
        ax_r.set(xlabel=f"True {name}", title=_weighted_title(f"Response: {name}", weight),
                 ylabel="Median of prediction / truth" if ratio else "Median of prediction - truth")
        ax_s.errorbar(binned["centres"], binned["resolution"], xerr=half_width, fmt="o", color="tab:green")
        ax_s.set(xlabel=f"True {name}", title=_weighted_title(f"Resolution: {name}", weight),
                 ylabel=f"Half the 16-84% width of {'prediction / truth' if ratio else 'prediction - truth'}")
        ax_s.set_ylim(bottom=0)
        for axis in (ax_r, ax_s):
            axis.grid(alpha=0.3)
        written += _save(fig, out, f"response_{stem}")
    return written
