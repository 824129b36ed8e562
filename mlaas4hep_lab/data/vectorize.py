"""Jagged branches to fixed-size padded vectors plus a mask; min-max (or standard) normalisation.

The feature layout is fixed by the specs, in this order:

1. flat branches sorted by name;
2. each jagged branch (sorted by name) expanded to ``name[0] ... name[k-1]``;
3. with padding ``multiplicity`` (the default) or ``multiplicity+mask``: one ``len(name)`` per group of
   jagged branches that have the same length in every event (a collection: ``Jet_pt``, ``Jet_eta``, ...),
   named after the group's first branch, groups in the order of those names; the count is the full
   length of the list, not capped at ``k``, and is normalised like any branch;
4. with padding ``mask`` or ``multiplicity+mask``: ``mask(name[i])`` (1.0 real, 0.0 padded or missing)
   for every column of part 2, in the same order.

The masked values of flat branches (NaN, infinities, declared sentinels) get 0 in every mode. The padded
slots and masked values of jagged branches get 0 with padding
``zeros`` and ``mask`` (the values before padding was configurable), and a tenth of the column's range
below its smallest value with ``below``, ``multiplicity`` and ``multiplicity+mask``: -0.1 with min-max,
``(min - mean) / std - 0.1 * (max - min) / std`` with ``standard``, ``min - 0.1 * (max - min)`` with
``none`` (min, max, mean and std from the specs; a constant column takes 0.1 normalised units). So a
padded slot never equals a real value the specs pass saw, and an event with no muon differs from one
whose muon has the smallest charge. Parts 1-2 are the same in every mode: a model's old columns keep
their positions, and only their masked slots change value.

Everything works on whole chunks: a jagged branch is gathered straight from its offsets and content
buffers into its block of the output matrix (no ``pad_none``/``fill_none`` round trip), and events
removed by cuts are dropped before the gather, so cut events cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from mlaas4hep_lab.data._gather import Columns, clipped, flat_rows, lists_rows
from mlaas4hep_lab.errors import ConfigError, SpecsError
from mlaas4hep_lab.params import DEFAULT_PADDING, LEGACY_DEFAULTS, PADDINGS

__all__ = ["Vectorizer", "feature_names", "jagged_buffers", "jagged_groups", "LEGACY_PADDING"]

LEGACY_PADDING: str = LEGACY_DEFAULTS["padding"]
# How far below a column's smallest value a masked slot sits, in units of the column's range: outside it,
# so any model can tell, yet close, so a network's inputs keep their scale (a pad of -1 in min-max units
# cost the MLP template 0.03 test AUC on the ttH-like example; trees do not care how far below it is).
PAD_MARGIN = 0.1


@dataclass(frozen=True)
class _Padding:
    below: bool   # masked slots get PAD_MARGIN of the range below the column's minimum (else 0)
    counts: bool  # one multiplicity feature per group of jagged branches
    masks: bool   # the mask of every jagged column as a 0/1 feature


_MODES = {
    "multiplicity": _Padding(True, True, False),
    "below": _Padding(True, False, False),
    "mask": _Padding(False, False, True),
    "multiplicity+mask": _Padding(True, True, True),
    "zeros": _Padding(False, False, False),
}
assert set(_MODES) == set(PADDINGS)


def _padding(mode: str) -> _Padding:
    if mode not in _MODES:
        raise ConfigError(f"must be one of {PADDINGS}, got {mode!r}", "padding")
    return _MODES[mode]


def jagged_groups(jagged: Sequence[str], groups: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """The groups of jagged branches that share one multiplicity feature, in feature order.

    ``groups`` (the specs' ``jagged_groups``) is restricted to the branches of ``jagged``; a branch in no
    group is a group of its own. Members are sorted, groups ordered by their first member.
    """
    known = set(jagged)
    out, seen = [], set()
    for group in groups or ():
        members = sorted(b for b in group if b in known and b not in seen)
        if members:
            out.append(members)
            seen.update(members)
    out += [[b] for b in sorted(known - seen)]
    return sorted(out, key=lambda g: g[0])


def feature_names(flat: Sequence[str], jdim: dict[str, int], padding: str = DEFAULT_PADDING,
                  groups: Sequence[Sequence[str]] | None = None) -> list[str]:
    """The ordered feature names for the given flat branches, jagged lengths, padding mode and groups
    (the module docstring gives the order)."""
    mode = _padding(padding)
    names = sorted(flat)
    jagged = []
    for name in sorted(jdim):
        jagged += [f"{name}[{i}]" for i in range(jdim[name])]
    names += jagged
    if mode.counts:
        names += [f"len({group[0]})" for group in jagged_groups(list(jdim), groups)]
    if mode.masks:
        names += [f"mask({column})" for column in jagged]
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
        minv, maxv: per-branch minimum and maximum (min-max normalisation); with multiplicity features,
            also those of the counts under their feature names (``len(Jet_pt)``).
        mean, std: per-branch mean and standard deviation (``normalization="standard"``), likewise.
        normalization: ``"minmax"``, ``"standard"`` or ``"none"``.
        missing_values: sentinel values (e.g. -999.0) that are masked instead of normalised.
        padding: ``"multiplicity"`` (default), ``"below"``, ``"mask"``, ``"multiplicity+mask"`` or
            ``"zeros"``; see the module docstring.
        groups: jagged branches sharing one multiplicity feature (the specs' ``jagged_groups``); by
            default each jagged branch has its own.

    Padded slots, sentinels and NaNs are False in ``mask`` and hold the pad value in ``X``; the
    multiplicity and mask features are always True in ``mask``.

    Example::

        v = Vectorizer(["MET"], {"Jet_pt": 2}, {"MET": 0, "Jet_pt": 20}, {"MET": 200, "Jet_pt": 220},
                       normalization="minmax", padding="below")
        X, mask = v(ak.Array({"MET": [100.0], "Jet_pt": [[120.0]]}))   # X = [[0.5, 0.5, -0.1]]
    """

    def __init__(self, flat: Sequence[str], jdim: dict[str, int], minv: dict[str, float] | None = None,
                 maxv: dict[str, float] | None = None, mean: dict[str, float] | None = None,
                 std: dict[str, float] | None = None, normalization: str = "minmax",
                 missing_values: Sequence[float] = (), padding: str = DEFAULT_PADDING,
                 groups: Sequence[Sequence[str]] | None = None):
        self.flat = sorted(flat)
        self.jdim = {name: int(jdim[name]) for name in sorted(jdim)}
        self.padding = padding
        self._mode = _padding(padding)
        self.groups = jagged_groups(list(self.jdim), groups) if self._mode.counts else []
        self.names = feature_names(self.flat, self.jdim, padding, self.groups)
        self.n_features = len(self.names)
        self.blocks: list[_Block] = []
        col = len(self.flat)
        for name, k in self.jdim.items():
            self.blocks.append(_Block(name, col, k))
            col += k
        self._jagged_cols = slice(len(self.flat), col)
        # multiplicity column of each group, keyed by the branch its count is read from
        self._count_col = {group[0]: col + i for i, group in enumerate(self.groups)}
        col += len(self.groups)
        self._mask_cols = slice(col, col + (self._jagged_cols.stop - self._jagged_cols.start)) \
            if self._mode.masks else slice(col, col)
        self.missing_values = [float(v) for v in missing_values]
        self.normalization = normalization
        self._offset, self._scale, self._pad = self._coefficients(minv or {}, maxv or {}, mean or {}, std or {})

    @classmethod
    def from_specs(cls, specs, normalization: str | None = None, missing_values: Sequence[float] | None = None):
        """The vectorizer of ``specs``: its layout (padding and groups included) and its normalisation
        (``normalization``/``missing_values`` override the specs' own when given)."""
        padding = getattr(specs, "padding", LEGACY_PADDING)
        if padding not in _MODES:
            raise SpecsError(f"specs padding {padding!r} is not one this package knows {PADDINGS}; they were "
                             "written by a newer version: upgrade mlaas4hep-lab or recompute the specs")
        v = cls(specs.fkeys, specs.jdim, specs.minv, specs.maxv, specs.mean, specs.std,
                normalization or specs.normalization,
                specs.missing_values if missing_values is None else missing_values,
                padding, getattr(specs, "jagged_groups", None))
        if specs.features and v.names != list(specs.features):
            diff = [f"{a!r} vs {b!r}" for a, b in zip(v.names, specs.features) if a != b][:3]
            raise SpecsError(f"the specs list {len(specs.features)} features but their branches, jagged lengths "
                             f"and padding {padding!r} give {v.n_features} ({', '.join(diff) or 'lengths differ'})"
                             "; the specs file was edited or is corrupt: recompute it")
        return v

    def _coefficients(self, minv, maxv, mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-column ``offset`` and ``scale`` (float64) so that normalised = (x - offset) * scale, and
        the value of a masked slot."""
        counts = [f"len({group[0]})" for group in self.groups]
        per_branch = ([(name, 1) for name in self.flat] + [(b.name, b.k) for b in self.blocks]
                      + [(name, 1) for name in counts])
        offset = np.zeros(self.n_features, np.float64)
        scale = np.ones(self.n_features, np.float64)
        lowest = np.zeros(self.n_features, np.float64)
        spread = np.ones(self.n_features, np.float64)
        col = 0
        for name, width in per_branch:
            if not width:
                continue
            if self.normalization == "minmax" and name in minv:
                lo, hi = float(minv[name]), float(maxv[name])
                offset[col:col + width] = lo
                scale[col:col + width] = 1.0 / (hi - lo) if hi > lo else 0.0
            elif self.normalization == "standard" and name in mean:
                mu, sd = float(mean[name]), float(std[name])
                offset[col:col + width] = mu
                scale[col:col + width] = 1.0 / sd if sd > 0 else 0.0
            if name in minv:  # the smallest real value and the range after normalisation
                lo, hi = ((float(v.get(name, minv[name])) - offset[col]) * scale[col] for v in (minv, maxv))
                lowest[col:col + width] = lo
                spread[col:col + width] = hi - lo if hi > lo else 1.0
            col += width
        pad = np.zeros(self.n_features, np.float64)
        if self._mode.below:
            # padded slots of jagged branches (and what is masked in them) go below the smallest real value;
            # a flat branch's missing values keep 0, the minimum (minmax) or the mean (standard): moving them
            # cost the Keras MLP on the Higgs example 0.07 AUC (0.767 -> 0.699), and its mask is on the chunk
            jagged = slice(len(self.flat), self.n_features)
            pad[jagged] = (lowest - PAD_MARGIN * spread)[jagged]
        return offset, scale, pad

    def __call__(self, arrays, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectorise the events of ``arrays`` (those where ``keep`` is True, when given)."""
        return self.gather([arrays], None if keep is None else np.flatnonzero(keep))

    def gather(self, pieces: Sequence, rows: np.ndarray | None = None,
               order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectorise the events ``rows`` of record ``pieces`` laid end to end (all, in order, when
        ``None``), in the order of ``rows``, then permuted by ``order`` (row ``i`` is event
        ``rows[order[i]]``: the shuffle, done while filling): :meth:`columns` then :meth:`fill`."""
        return self.fill(self.columns(pieces, rows, order))

    def columns(self, pieces: Sequence, rows: np.ndarray | None = None, order: np.ndarray | None = None) -> Columns:
        """What :meth:`fill` needs of ``pieces``: each branch normalised once over its values. Once this
        returns the pieces may be freed, so that the decoded arrays and the matrix being filled are not
        in memory together."""
        n = sum(len(p) for p in pieces) if rows is None else len(rows)
        if order is not None and len(order) != n:
            raise ValueError(f"order has {len(order)} rows for {n} events")
        columns = self._columns(pieces, rows, n) if pieces and n else Columns.empty(n)
        columns.order = order
        return columns

    def fill(self, columns: Columns, buffers=None) -> tuple[np.ndarray, np.ndarray]:
        """``X`` and ``mask`` from :meth:`columns` (compiled loops, without the GIL: :mod:`._kernels`), in
        the memory of ``buffers`` (:class:`~mlaas4hep_lab.data._buffers.Buffers`) when given."""
        from mlaas4hep_lab.data import _kernels

        if buffers is not None:
            X, mask = buffers.matrices(columns.n, self.n_features)
        else:
            X = np.empty((columns.n, self.n_features), dtype=np.float32)
            mask = np.empty((columns.n, self.n_features), dtype=bool)
        if columns.n:
            c = columns
            dest = np.zeros(0, np.int64)
            if c.order is not None:  # row r holds event order[r]: event i goes to the row r where order[r] = i
                dest = np.empty(c.n, np.int64)
                dest[c.order] = np.arange(c.n, dtype=np.int64)
            _kernels.fill_rows(X, mask, dest, c.dense, c.dense_ok, c.dense_cols, c.starts, c.lengths, c.sources,
                               c.values, c.oks, self._mask_cols.start, self._jagged_cols.start,
                               self._mask_cols.stop - self._mask_cols.start)
        return X, mask

    def _columns(self, pieces: Sequence, rows: np.ndarray | None, n: int) -> Columns:
        """The flat branches and multiplicities as normalised rows; each jagged branch's values normalised
        (the pad value first) with the starts and lengths of its group of branches laid out alike."""
        count_rows = {group[0]: len(self.flat) + i for i, group in enumerate(self.groups)}
        dense_cols = list(range(len(self.flat))) + [self._count_col[group[0]] for group in self.groups]
        dense = np.empty((len(dense_cols), n), np.float32)
        oks: dict[int, np.ndarray] = {}
        for j, name in enumerate(self.flat):
            ok = self._normalise(flat_rows([_flat_numpy(p[name]) for p in pieces], rows), j, dense[j])
            if ok is not None:
                oks[j] = ok
        jagged, lists = [], None
        for block in self.blocks:
            count_col = self._count_col.get(block.name)
            if block.k == 0 and count_col is None:
                continue
            lists = lists_rows([jagged_buffers(p[block.name]) for p in pieces], rows, like=lists)
            if count_col is not None:
                dense[count_rows[block.name]] = self._count_values(lists.lengths, count_col)
            if block.k:
                # long lists cut to a few slots: normalise only what is used
                jagged.append((block, clipped(lists, block.k) if lists.size > n * block.k else lists))
        dense_ok = np.zeros((0, 0), bool)
        if oks:
            dense_ok = np.ones(dense.shape, bool)
            for j, ok in oks.items():
                dense_ok[j] = ok
        return Columns(n, dense, dense_ok, np.asarray(dense_cols, np.int64), *self._padded(jagged, n))

    def _padded(self, jagged: list, n: int) -> tuple[np.ndarray, ...]:
        """(starts, lengths, sources, values, oks) of :class:`Columns` for ``(block, lists)`` pairs."""
        group: dict[int, int] = {}  # id of a starts array -> its group (branches laid out alike share it)
        first: list = []
        for _, lists in jagged:
            if id(lists.starts) not in group:
                group[id(lists.starts)] = len(first)
                first.append(lists)
        starts = np.stack([lists.starts for lists in first]) if first else np.zeros((0, n), np.int64)
        lengths = np.stack([lists.lengths for lists in first]) if first else np.zeros((0, n), np.int64)
        values = np.empty(sum(lists.size + 1 for _, lists in jagged), np.float32)
        sources = np.empty((len(jagged), 5), np.int64)
        ok_parts, at, ok_at = [], 0, 0
        for s, (block, lists) in enumerate(jagged):
            size = lists.size
            values[at] = self._pad[block.start]
            ok = self._normalise_parts(lists.parts, block.start, values[at + 1: at + 1 + size])
            sources[s] = (block.start, block.k, group[id(lists.starts)], at, -1 if ok is None else ok_at)
            if ok is not None:
                ok_parts += [np.zeros(1, bool), ok]
                ok_at += size + 1
            at += size + 1
        oks = np.concatenate(ok_parts) if ok_parts else np.zeros(0, bool)
        return starts, lengths, sources, values, oks

    def _normalise_parts(self, parts: list, col: int, out: np.ndarray) -> np.ndarray | None:
        """:meth:`_normalise` of values given as consecutive parts (no joined copy of them is made)."""
        if len(parts) == 1:
            return self._normalise(parts[0], col, out)
        oks, at = [], 0
        for part in parts:
            oks.append(self._normalise(part, col, out[at: at + len(part)]))
            at += len(part)
        if all(ok is None for ok in oks):
            return None
        return np.concatenate([np.ones(len(part), bool) if ok is None else ok for part, ok in zip(parts, oks)])

    def _normalise(self, content: np.ndarray, col: int, out: np.ndarray) -> np.ndarray | None:
        """Write ``content`` normalised as column ``col`` into ``out`` (float32; in float64 first, so that
        large offsets keep their resolution) and return which values are real (``None`` when all are):
        NaN, infinities and sentinels get the column's pad value."""
        if self.normalization == "none":
            out[:] = content
        else:
            wide = content.astype(np.float64)
            wide -= self._offset[col]
            wide *= self._scale[col]
            out[:] = wide
        bad = ~np.isfinite(content) if content.dtype.kind == "f" else None
        for sentinel in self.missing_values:
            other = content == sentinel
            bad = other if bad is None else np.logical_or(bad, other, out=bad)
        if bad is None or not bad.any():
            return None
        out[bad] = self._pad[col]
        return ~bad

    def _count_values(self, lengths: np.ndarray, col: int) -> np.ndarray:
        """A multiplicity column: never masked, and sentinels do not apply (a count of 0 is a count)."""
        out = lengths.astype(np.float64)
        if self.normalization != "none":
            out -= self._offset[col]
            out *= self._scale[col]
        return out
