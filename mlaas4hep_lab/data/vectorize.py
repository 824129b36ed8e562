"""Jagged branches to fixed-size padded vectors plus a mask; min-max (or standard) normalisation.

The feature layout is fixed by the specs: flat branches sorted by name, then each jagged branch
(sorted by name) expanded to ``name[0] ... name[k-1]``. Everything works on whole chunks:
a jagged branch is gathered straight from its offsets and content buffers into its block of the
output matrix (no ``pad_none``/``fill_none`` round trip), and events removed by cuts are dropped
before the gather, so cut events cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

__all__ = ["Vectorizer", "feature_names", "jagged_buffers"]


def feature_names(flat: Sequence[str], jdim: dict[str, int]) -> list[str]:
    """The ordered feature names for the given flat branches and jagged lengths."""
    names = sorted(flat)
    for name in sorted(jdim):
        names += [f"{name}[{i}]" for i in range(jdim[name])]
    return names


def jagged_buffers(array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, stops, content) numpy buffers of a one-level list array, without copying the content."""
    layout = ak.to_layout(array)
    if isinstance(layout, (ak.contents.IndexedOptionArray, ak.contents.UnmaskedArray,
                           ak.contents.ByteMaskedArray, ak.contents.BitMaskedArray)):
        layout = ak.to_layout(ak.fill_none(array, [], axis=0))  # a missing list is an empty list
    if isinstance(layout, ak.contents.IndexedArray):
        layout = layout.project()
    if isinstance(layout, ak.contents.RegularArray):
        n, size = layout.length, layout.size
        starts = np.arange(n, dtype=np.int64) * size
        content = layout.content
        stops = starts + size
    elif isinstance(layout, ak.contents.ListOffsetArray):
        offsets = np.asarray(layout.offsets.data)
        starts, stops, content = offsets[:-1], offsets[1:], layout.content
    elif isinstance(layout, ak.contents.ListArray):
        starts, stops, content = np.asarray(layout.starts.data), np.asarray(layout.stops.data), layout.content
    elif isinstance(layout, ak.contents.NumpyArray) and layout.data.ndim == 2:
        n, size = layout.data.shape
        starts = np.arange(n, dtype=np.int64) * size
        return starts, starts + size, layout.data.reshape(-1)
    else:
        raise TypeError(f"expected a list of numbers, got {ak.type(array)}")
    if isinstance(content, (ak.contents.IndexedOptionArray, ak.contents.UnmaskedArray,
                            ak.contents.ByteMaskedArray, ak.contents.BitMaskedArray)):
        content = ak.to_layout(ak.fill_none(content, np.nan, highlevel=False))
    return starts, stops, np.asarray(content.data) if isinstance(content, ak.contents.NumpyArray) else ak.to_numpy(content)


def _flat_numpy(array) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.NumpyArray):
        return np.asarray(layout.data)
    return ak.to_numpy(ak.fill_none(array, np.nan))


@dataclass
class _Block:
    name: str
    start: int   # first column in X
    k: int       # padded length


class Vectorizer:
    """Turn records (one field per branch) into ``X: float32[n, F]`` and ``mask: bool[n, F]``.

    Args:
        flat: flat feature branches.
        jdim: jagged feature branches and their padded lengths.
        minv, maxv: per-branch minimum and maximum (min-max normalisation).
        mean, std: per-branch mean and standard deviation (``normalization="standard"``).
        normalization: ``"minmax"``, ``"standard"`` or ``"none"``.
        missing_values: sentinel values (e.g. -999.0) that are masked instead of normalised.

    Padded slots, sentinels and NaNs are 0 in ``X`` and False in ``mask``.
    """

    def __init__(self, flat: Sequence[str], jdim: dict[str, int], minv: dict[str, float] | None = None,
                 maxv: dict[str, float] | None = None, mean: dict[str, float] | None = None,
                 std: dict[str, float] | None = None, normalization: str = "minmax",
                 missing_values: Sequence[float] = ()):
        self.flat = sorted(flat)
        self.jdim = {name: int(jdim[name]) for name in sorted(jdim)}
        self.names = feature_names(self.flat, self.jdim)
        self.n_features = len(self.names)
        self.blocks: list[_Block] = []
        col = len(self.flat)
        for name, k in self.jdim.items():
            self.blocks.append(_Block(name, col, k))
            col += k
        self.missing_values = [float(v) for v in missing_values]
        self.normalization = normalization
        self._offset, self._scale = self._coefficients(minv or {}, maxv or {}, mean or {}, std or {})
        self._aranges = {k: np.arange(k, dtype=np.int64) for k in set(self.jdim.values())}

    @classmethod
    def from_specs(cls, specs, normalization: str | None = None, missing_values: Sequence[float] | None = None):
        return cls(specs.fkeys, specs.jdim, specs.minv, specs.maxv, specs.mean, specs.std,
                   normalization or specs.normalization,
                   specs.missing_values if missing_values is None else missing_values)

    def _coefficients(self, minv, maxv, mean, std) -> tuple[np.ndarray, np.ndarray]:
        """Per-column ``offset`` and ``scale`` (float64) so that normalised = (x - offset) * scale."""
        per_branch = [(name, 1) for name in self.flat] + [(b.name, b.k) for b in self.blocks]
        offset = np.zeros(self.n_features, np.float64)
        scale = np.ones(self.n_features, np.float64)
        col = 0
        for name, width in per_branch:
            if self.normalization == "minmax" and name in minv:
                lo, hi = float(minv[name]), float(maxv[name])
                offset[col:col + width] = lo
                scale[col:col + width] = 1.0 / (hi - lo) if hi > lo else 0.0
            elif self.normalization == "standard" and name in mean:
                mu, sd = float(mean[name]), float(std[name])
                offset[col:col + width] = mu
                scale[col:col + width] = 1.0 / sd if sd > 0 else 0.0
            col += width
        return offset, scale

    def __call__(self, arrays, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectorise the events of ``arrays`` (those where ``keep`` is True, when given)."""
        idx = None if keep is None else np.flatnonzero(keep)
        n = len(arrays) if idx is None else len(idx)
        X = np.empty((n, self.n_features), dtype=np.float32)
        mask = np.empty((n, self.n_features), dtype=bool)
        for j, name in enumerate(self.flat):
            values = _flat_numpy(arrays[name])
            self._put(X, mask, slice(j, j + 1), (values if idx is None else values[idx])[:, None], None)
        for block in self.blocks:
            if block.k == 0:
                continue
            starts, stops, content = jagged_buffers(arrays[block.name])
            if idx is not None:
                starts, stops = starts[idx], stops[idx]
            cols = self._aranges[block.k]
            valid = cols < (stops - starts)[:, None]
            gather = starts[:, None] + cols
            if content.size:
                np.minimum(gather, content.size - 1, out=gather)
                values = content[gather]
            else:
                values = np.zeros(gather.shape, np.float32)
            self._put(X, mask, slice(block.start, block.start + block.k), values, valid)
        return X, mask

    def _put(self, X: np.ndarray, mask: np.ndarray, cols: slice, raw: np.ndarray, valid: np.ndarray | None) -> None:
        """Write one branch's block: mask NaNs, infinities and sentinels, normalise in float64 (large
        offsets keep their resolution), zero what is masked."""
        ok = valid
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw)
            ok = finite if ok is None else np.logical_and(ok, finite, out=ok)
        for sentinel in self.missing_values:
            other = raw != sentinel
            ok = other if ok is None else np.logical_and(ok, other, out=ok)
        if self.normalization == "none":
            out = raw.astype(np.float32)
        else:
            out = raw.astype(np.float64)
            out -= self._offset[cols]
            out *= self._scale[cols]
        if ok is None:
            mask[:, cols] = True
        else:
            out[~ok] = 0.0
            mask[:, cols] = ok
        X[:, cols] = out
