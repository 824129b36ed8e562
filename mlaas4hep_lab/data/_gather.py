"""Selected rows of several record pieces laid end to end, without copying what is not selected.

A training chunk is made of pieces (a slice of each file, or of each decoded block of a file) and of the
events that survive the cuts, in shuffled order. Rather than vectorising each piece, concatenating the
matrices and permuting the rows (three copies of the widest array there is), the stream hands the
vectoriser the pieces plus ``rows``: for each row, the index of its event in the pieces laid end to end.
Each branch is then normalised once over its values, and the rows are filled once (and shuffled in
place) by :mod:`._kernels`.

A jagged branch of the pieces becomes a :class:`Lists`: its values (only the part the pieces use:
a slice of a decoded block still points into the whole block), the start of each selected event's list
in them and its length; branches of one collection (``Jet_pt``, ``Jet_eta`` ... read through one
counter) have the same starts and lengths, so they share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Columns", "Lists", "clipped", "flat_rows", "lists_rows", "piece_rows"]


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
    """The selected events' lists of one jagged branch: ``content[starts[i]:starts[i] + lengths[i]]``.

    The values stay in ``parts``, one slice of each piece's values (views into the decoded blocks), and
    are only joined into one array when asked for (:attr:`content`): the vectoriser normalises the parts
    one by one into the chunk's values, so no copy of a whole branch's raw values is ever made."""

    starts: np.ndarray   # int64[n]
    lengths: np.ndarray  # int64[n]
    parts: list          # the values the pieces use, one array per piece (pieces end to end); or one array
    source: list = field(default_factory=list, repr=False)  # each piece's (starts, stops, first, last)

    def __post_init__(self):
        if isinstance(self.parts, np.ndarray):
            self.parts = [self.parts]

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts)

    @property
    def content(self) -> np.ndarray:
        """The values of the parts, end to end (a copy when there are several)."""
        return self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)

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
        return Lists(like.starts, like.lengths, content, like.source)
    source = [(s, e, *_span(s, e, len(c))) for s, e, c in buffers]
    content = [c[first:last] for (_, _, c), (_, _, first, last) in zip(buffers, source)]
    base = np.cumsum([0] + [len(c) for c in content[:-1]])
    starts = np.concatenate([s - (first - b) for (s, _, first, _), b in zip(source, base)])
    lengths = np.concatenate([e - s for s, e, _, _ in source])
    if rows is not None:
        starts, lengths = starts[rows], lengths[rows]
    return Lists(starts.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False), content, source)


def clipped(lists: Lists, k: int) -> Lists:
    """``lists`` with only the first ``k`` values of each list kept (the lengths cut to ``k``)."""
    lengths = np.minimum(lists.lengths, k)
    cols = np.arange(k, dtype=np.int64)
    used = cols < lengths[:, None]
    content = lists.content[(lists.starts[:, None] + cols)[used]]
    return Lists(np.cumsum(lengths) - lengths, lengths, content)


@dataclass
class Columns:
    """What fills the ``n`` rows of a chunk's matrix, without the records it came from: the arguments of
    :func:`~mlaas4hep_lab.data._kernels.fill_rows` (see there), then ``order``, the permutation applied
    to the filled rows (the shuffle; ``None``: none)."""

    n: int
    dense: np.ndarray        # float32[w, n]: flat branches and multiplicities, normalised
    dense_ok: np.ndarray     # bool[w, n], or [0, 0] when every dense value is real
    dense_cols: np.ndarray   # int64[w]
    starts: np.ndarray       # int64[G, n]: per group of jagged branches laid out alike
    lengths: np.ndarray      # int64[G, n]
    sources: np.ndarray      # int64[S, 5]: column, k, group, values offset, oks offset (-1: all real)
    values: np.ndarray       # float32: per branch, the pad value then the normalised values
    oks: np.ndarray          # bool: the same layout, for the branches with masked values
    order: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int) -> Columns:
        i64 = np.zeros((0, n), np.int64)
        return cls(n, np.zeros((0, n), np.float32), np.zeros((0, 0), bool), np.zeros(0, np.int64), i64, i64,
                   np.zeros((0, 5), np.int64), np.zeros(0, np.float32), np.zeros(0, bool))
