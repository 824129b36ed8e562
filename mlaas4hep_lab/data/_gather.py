"""Selected rows of several record pieces laid end to end, without copying what is not selected.

A training chunk is made of pieces (a slice of each file, or of each decoded block of a file) and of the
events that survive the cuts, in shuffled order. Rather than vectorising each piece, concatenating the
matrices and permuting the rows (three copies of the widest array there is), the stream hands the
vectoriser the pieces plus ``rows``: for each output row, the index of its event in the pieces laid end to
end. Each branch is then gathered once, straight into its columns, in the final order.

A jagged branch of the pieces becomes a :class:`Lists`: its values (only the part the pieces use:
a slice of a decoded block still points into the whole block), the start of each selected event's list
in them and its length. :class:`Slots` is the ``[n, k]`` gather index of a padded block with its
validity; branches of one collection (``Jet_pt``, ``Jet_eta`` ... read through one counter) have the
same starts and lengths, so they share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Columns", "Dense", "Lists", "Padded", "Slots", "clipped", "fill_rows", "flat_rows", "lists_rows", "piece_rows"]


def piece_rows(sizes: Sequence[int], kept: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Indices of the kept events in the pieces laid end to end (``None``: every event, in order).

    ``kept[p]`` holds the kept event numbers within piece ``p`` (``None``: all of its events)."""
    if all(k is None for k in kept):
        return None
    base = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]).astype(np.int64)
    parts = [np.arange(n, dtype=np.int64) if k is None else np.asarray(k, np.int64) for n, k in zip(sizes, kept)]
    return np.concatenate([part + b for part, b in zip(parts, base)]) if len(parts) > 1 else parts[0]


def flat_rows(values: Sequence[np.ndarray], rows: np.ndarray | None) -> np.ndarray:
    """One flat branch of the pieces, at ``rows``."""
    if len(values) == 1:
        return values[0] if rows is None else values[0][rows]
    joined = np.concatenate(values)
    return joined if rows is None else joined[rows]


@dataclass
class Lists:
    """The selected events' lists of one jagged branch: ``content[starts[i]:starts[i] + lengths[i]]``."""

    starts: np.ndarray   # int64[n]
    lengths: np.ndarray  # int64[n]
    content: np.ndarray  # the values the pieces use, pieces end to end
    source: list = field(default_factory=list, repr=False)  # each piece's (starts, stops, first, last)

    def same_lists(self, buffers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> bool:
        """Whether ``buffers`` hold lists at the same places as those these were made from (the branches
        of one collection, read through one counter)."""
        return len(buffers) == len(self.source) and all(
            (s is s0 or np.array_equal(s, s0)) and (e is e0 or np.array_equal(e, e0))
            for (s, e, _), (s0, e0, _, _) in zip(buffers, self.source))


def _span(starts: np.ndarray, stops: np.ndarray, size: int) -> tuple[int, int]:
    """The part of a content of ``size`` values that lists can use (empty lists may point anywhere)."""
    if not len(starts):
        return 0, 0
    first, last = max(0, int(starts.min())), min(size, int(stops.max()))
    return (first, last) if last > first else (0, 0)


def lists_rows(buffers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: np.ndarray | None,
               like: Lists | None = None) -> Lists:
    """One jagged branch of the pieces (``(starts, stops, content)`` of each), at ``rows``. When its lists
    lie where those of ``like`` do, only the values are taken and the rest is shared."""
    if like is not None and like.same_lists(buffers):
        content = [c[first:last] for (_, _, c), (_, _, first, last) in zip(buffers, like.source)]
        return Lists(like.starts, like.lengths, content[0] if len(content) == 1 else np.concatenate(content),
                     like.source)
    source = [(s, e, *_span(s, e, len(c))) for s, e, c in buffers]
    content = [c[first:last] for (_, _, c), (_, _, first, last) in zip(buffers, source)]
    base = np.cumsum([0] + [len(c) for c in content[:-1]])
    starts = np.concatenate([s - (first - b) for (s, _, first, _), b in zip(source, base)])
    lengths = np.concatenate([e - s for s, e, _, _ in source])
    if rows is not None:
        starts, lengths = starts[rows], lengths[rows]
    return Lists(starts.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False),
                 content[0] if len(content) == 1 else np.concatenate(content), source)


def clipped(lists: Lists, k: int) -> Lists:
    """``lists`` with only the first ``k`` values of each list kept (the lengths cut to ``k``)."""
    lengths = np.minimum(lists.lengths, k)
    cols = np.arange(k, dtype=np.int64)
    used = cols < lengths[:, None]
    content = lists.content[(lists.starts[:, None] + cols)[used]]
    return Lists(np.cumsum(lengths) - lengths, lengths, content)


class Slots:
    """Where each of the ``k`` padded slots of each event comes from, transposed (``[k, n]``): the index
    into the values with the pad value put first, so 0 where the event has fewer than ``k`` values and
    ``1 + start + slot`` elsewhere (int32 when the values allow: this is the largest temporary)."""

    def __init__(self, lists: Lists, k: int):
        self.starts, self.lengths, self.k = lists.starts, lists.lengths, k
        dtype = np.int32 if len(lists.content) < np.iinfo(np.int32).max - k else np.int64
        cols = np.arange(1, k + 1, dtype=dtype)[:, None]
        self.index = lists.starts.astype(dtype) + cols
        self.index[cols > lists.lengths] = 0

    def valid(self, a: int, b: int) -> np.ndarray:
        """Which slots of events ``a .. b-1`` hold a value."""
        return self.index[:, a:b] != 0

    def fits(self, lists: Lists, k: int) -> bool:
        """Whether ``lists`` lay out their values exactly as the lists these slots were made for."""
        return k == self.k and (lists.starts is self.starts or np.array_equal(lists.starts, self.starts)) \
            and (lists.lengths is self.lengths or np.array_equal(lists.lengths, self.lengths))


@dataclass
class Columns:
    """Everything needed to fill the ``n`` rows of a chunk's matrix (:class:`Dense` and :class:`Padded`
    sources, in no particular order), without the records they came from."""

    n: int
    sources: list


class Dense:
    """Columns ``start .. start + width - 1`` given for every row (flat branches, multiplicities), kept
    transposed (``[width, n]``) so that each is written contiguously."""

    def __init__(self, start: int, width: int, n: int):
        self.start, self.cols = start, slice(start, start + width)
        self.values = np.empty((width, n), np.float32)
        self.ok: np.ndarray | None = None

    def set(self, i: int, values: np.ndarray, ok: np.ndarray | None) -> None:
        self.values[i] = values
        if ok is not None:
            if self.ok is None:
                self.ok = np.ones(self.values.shape, bool)
            self.ok[i] = ok

    def write(self, xt: np.ndarray, mt: np.ndarray, a: int, b: int) -> None:
        xt[self.cols] = self.values[:, a:b]
        mt[self.cols] = True if self.ok is None else self.ok[:, a:b]


class Padded:
    """A jagged branch's padded columns: its normalised ``values`` with the pad value first (and ``ok``,
    which of them are real, ``None`` when all are) picked by ``slots``."""

    def __init__(self, cols: slice, values: np.ndarray, ok: np.ndarray | None, slots: Slots):
        self.cols, self.values, self.ok, self.slots = cols, values, ok, slots

    def write(self, xt: np.ndarray, mt: np.ndarray, a: int, b: int) -> None:
        index = self.slots.index[:, a:b]
        # mode="clip" (the index is in range anyway) lets numpy write into ``out`` unbuffered
        np.take(self.values, index, out=xt[self.cols], mode="clip")
        if self.ok is None:
            np.not_equal(index, 0, out=mt[self.cols])
        else:
            np.take(self.ok, index, out=mt[self.cols], mode="clip")


# Rows are filled in tiles whose transposed block stays in the processor's cache: a column of a
# [100k, 500] float32 matrix touches 100k cache lines, and a chunk has hundreds of columns.
TILE_BYTES = 2 << 20


def fill_rows(X: np.ndarray, mask: np.ndarray, sources: Sequence, copies: Sequence[tuple[slice, slice]] = ()) -> None:
    """Fill ``X`` and ``mask`` from column ``sources`` (:class:`Dense`, :class:`Padded`), tile by tile of
    rows: each source writes its rows of the tile into a transposed block (contiguous writes), which is
    then copied into ``X`` at once. ``copies`` are ``(to, from)`` column ranges whose mask becomes
    values (the ``mask(...)`` features)."""
    n, width = X.shape
    # a multiple of 1000 plus one rows: a tile's rows are then never a power-of-two number of bytes
    # apart, which made the transposing copy 2.5x slower (cache sets aliasing; seen at 2048 and 2047)
    tile = max(1, round(TILE_BYTES / (4 * max(1, width)) / 1000)) * 1000 + 1
    xt_all = np.empty((width, min(tile, n)), np.float32)
    mt_all = np.empty((width, min(tile, n)), bool)
    for a in range(0, n, tile):
        b = min(n, a + tile)
        xt, mt = xt_all[:, :b - a], mt_all[:, :b - a]
        for source in sources:
            source.write(xt, mt, a, b)
        for to, source_cols in copies:
            xt[to] = mt[source_cols]
            mt[to] = True
        X[a:b] = xt.T
        mask[a:b] = mt.T
