"""Small pictures for the panels: text sparklines and PNG plots drawn with matplotlib's Agg canvas.

Plots draw on standalone ``Figure`` objects (no pyplot state), so they work in a kernel without a display,
in a background thread and in Voila. Every function returns PNG ``bytes`` for an ``ipywidgets.Image``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import awkward as ak
import numpy as np

from mlaas4hep_lab import extras

__all__ = ["sparkline", "finite_values", "distribution_png", "curves_png", "roc_png", "empty_png"]

_BLOCKS = np.array(list(" ▁▂▃▄▅▆▇█"))
_DPI = 80


def finite_values(values) -> np.ndarray:
    """The finite numbers of a flat or jagged array, as one float64 array (jagged lists flattened)."""
    if isinstance(values, ak.Array):
        values = ak.flatten(values, axis=None)
        values = ak.to_numpy(values)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def sparkline(values, bins: int = 16, exclude: Sequence[float] = ()) -> str:
    """A one-line text histogram (``▁▃█▅▂``) of the finite values, sentinels in ``exclude`` left out."""
    arr = finite_values(values)
    if len(exclude):
        arr = arr[~np.isin(arr, np.asarray(exclude, dtype=np.float64))]
    if arr.size == 0:
        return ""
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        return _BLOCKS[-1]
    counts, _ = np.histogram(arr, bins=bins, range=(lo, hi))
    levels = np.ceil(counts / counts.max() * (len(_BLOCKS) - 1)).astype(int)
    return "".join(_BLOCKS[levels])


def _figure(width: float, height: float):
    extras.matplotlib()  # an install hint when matplotlib is missing
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def empty_png(text: str = "no data yet", width: float = 5.0, height: float = 3.0) -> bytes:
    """A placeholder picture with ``text`` in the middle."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.4", transform=ax.transAxes)
    return _png(fig)


def distribution_png(before, after, name: str, bins: int = 40, width: float = 5.0, height: float = 3.0) -> bytes:
    """Histogram of ``name`` on all sampled events (before) and on those passing the cuts (after)."""
    b, a = finite_values(before), finite_values(after)
    if b.size == 0:
        return empty_png(f"{name}: no finite values in the sample", width, height)
    lo, hi = float(b.min()), float(b.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.hist(b, bins=edges, histtype="stepfilled", color="0.8", label=f"before cuts ({b.size})")
    ax.hist(a, bins=edges, histtype="step", color="C0", linewidth=1.5, label=f"after cuts ({a.size})")
    ax.set_xlabel(name)
    ax.set_ylabel("entries")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def curves_png(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, xlabel: str = "step",
               width: float = 5.0, height: float = 3.0) -> bytes:
    """Line plot of ``{label: (x, y)}`` (e.g. train and validation loss against the training step)."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    drawn = 0
    for i, (label, (x, y)) in enumerate(series.items()):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(y)
        if ok.any():
            ax.plot(x[ok], y[ok], marker="o", markersize=3, color=f"C{i}", label=label)
            drawn += 1
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "waiting for the first chunk", ha="center", va="center", color="0.4",
                transform=ax.transAxes)
    fig.tight_layout()
    return _png(fig)


def roc_png(fpr, tpr, auc: float | None, width: float = 4.0, height: float = 4.0) -> bytes:
    """ROC curve (signal efficiency against background efficiency) with its AUC."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="C0", label=f"AUC = {auc:.4f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":")
    ax.set_xlabel("background efficiency")
    ax.set_ylabel("signal efficiency")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return _png(fig)
