"""Small pictures for the panels: text sparklines and PNG plots drawn with matplotlib's Agg canvas.

Plots draw on standalone ``Figure`` objects (no pyplot state), so they work in a kernel without a display,
in a background thread and in Voila. Every function returns PNG ``bytes`` for an ``ipywidgets.Image``.

The JupyterLab theme: the kernel cannot read the page's CSS variables (the theme is the browser's, and
can change after a plot is drawn), and an ``<img>`` does not inherit the page's colours. So the pictures
carry no background (transparent PNG: the light or dark page shows through) and draw text, ticks and
frames in a mid grey (:data:`FOREGROUND`) that keeps a readable contrast on white and on JupyterLab's dark
background alike; the data colours (matplotlib's C0...) read on both.

Integer branches (every value a whole number, a small range) are histogrammed one bin per integer, and
the training step axis has integer ticks.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import awkward as ak
import numpy as np

from mlaas4hep_lab import extras

__all__ = ["sparkline", "finite_values", "distribution_png", "curves_png", "roc_png", "empty_png", "integer_edges",
           "distribution_figure", "curves_figure", "FOREGROUND"]

_BLOCKS = np.array(list(" ▁▂▃▄▅▆▇█"))
_DPI = 80
FOREGROUND = "#8c8c8c"      # text and axes: contrast ~3.3:1 on white, ~6:1 on JupyterLab's dark #111
_MAX_INTEGER_BINS = 100     # integer data over a wider range get ordinary bins


def integer_edges(values: np.ndarray, max_bins: int = _MAX_INTEGER_BINS) -> np.ndarray | None:
    """Bin edges at half-integers (one bin per integer) when every value is a whole number and the range
    spans at most ``max_bins`` integers, else None."""
    if values.size == 0 or not np.all(values == np.round(values)):
        return None
    lo, hi = float(values.min()), float(values.max())
    if hi - lo + 1 > max_bins:
        return None
    return np.arange(lo - 0.5, hi + 1.0, 1.0)


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
    edges = integer_edges(arr, bins)   # an integer branch: one character per value, no empty gaps
    counts, _ = np.histogram(arr, bins=edges) if edges is not None else np.histogram(arr, bins=bins, range=(lo, hi))
    levels = np.ceil(counts / counts.max() * (len(_BLOCKS) - 1)).astype(int)
    return "".join(_BLOCKS[levels])


def _figure(width: float, height: float):
    extras.matplotlib()  # an install hint when matplotlib is missing
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    """Theme-neutral axes: no background, text, ticks and frame in :data:`FOREGROUND`."""
    ax.set_facecolor("none")
    ax.tick_params(colors=FOREGROUND, which="both")
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)
    ax.title.set_color(FOREGROUND)
    for spine in ax.spines.values():
        spine.set_edgecolor(FOREGROUND)
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_color(FOREGROUND)


def _png(fig) -> bytes:
    for ax in fig.axes:
        _style(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, transparent=True)
    return buf.getvalue()


def empty_png(text: str = "no data yet", width: float = 5.0, height: float = 3.0) -> bytes:
    """A placeholder picture with ``text`` in the middle."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", color=FOREGROUND, transform=ax.transAxes)
    return _png(fig)


def distribution_png(before, after, name: str, bins: int = 40, width: float = 5.0, height: float = 3.0) -> bytes:
    """Histogram of ``name`` on all sampled events (before) and on those passing the cuts (after); an
    integer branch gets one bin per integer."""
    if finite_values(before).size == 0:
        return empty_png(f"{name}: no finite values in the sample", width, height)
    return _png(distribution_figure(before, after, name, bins, width, height))


def distribution_figure(before, after, name: str, bins: int = 40, width: float = 5.0, height: float = 3.0):
    """The Figure of :func:`distribution_png` (``before`` must hold a finite value)."""
    b, a = finite_values(before), finite_values(after)
    lo, hi = float(b.min()), float(b.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = integer_edges(b)
    integers = edges is not None
    if not integers:
        edges = np.linspace(lo, hi, bins + 1)
    fig = _figure(width, height)
    ax = fig.add_subplot()
    if integers:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.hist(b, bins=edges, histtype="stepfilled", color=FOREGROUND, alpha=0.35, label=f"before cuts ({b.size})")
    ax.hist(a, bins=edges, histtype="step", color="C0", linewidth=1.5, label=f"after cuts ({a.size})")
    ax.set_xlabel(name)
    ax.set_ylabel("entries")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def curves_png(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, xlabel: str = "step",
               width: float = 5.0, height: float = 3.0) -> bytes:
    """Line plot of ``{label: (x, y)}`` (e.g. train and validation loss against the training step); the
    steps are counted, so the x axis has integer ticks."""
    return _png(curves_figure(series, ylabel, xlabel, width, height))


def curves_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, xlabel: str = "step",
                  width: float = 5.0, height: float = 3.0):
    """The Figure of :func:`curves_png`."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
        ax.text(0.5, 0.5, "waiting for the first chunk", ha="center", va="center", color=FOREGROUND,
                transform=ax.transAxes)
    fig.tight_layout()
    return fig


def roc_png(fpr, tpr, auc: float | None, width: float = 4.0, height: float = 4.0, label: str = "AUC") -> bytes:
    """ROC curve (signal efficiency against background efficiency) with its AUC; ``label`` names the AUC
    (``"AUC (weighted)"`` for a curve of weighted events)."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="C0", label=f"{label} = {auc:.4f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":")
    ax.set_xlabel("background efficiency")
    ax.set_ylabel("signal efficiency")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return _png(fig)
