"""Compiled loops (numba) for the two steps of chunk creation that numpy cannot do well on whole arrays.

* :func:`fill_rows`: each row of ``X`` and ``mask`` written once, left to right, from the normalised flat
  columns and, per jagged branch, the first ``k`` values of the event's list (the pad value after them).
  numpy needs a temporary per branch and writes each column of a row-major matrix with a stride of the
  row's length, touching every cache line of ``X`` once per column. The shuffle is done by the same
  loop: events are taken in the files' order, so every branch's values are read sequentially, and each
  event's row is written where the shuffle puts it (gathering the values in shuffled order reads them at
  random: 2.5x slower; shuffling a finished matrix costs a pass and, out of place, a second matrix).
* :func:`permute_rows`: ``A[:] = A[order]`` in place, for anything else that needs it.
* :func:`moments`: a branch's counts, range, mean and squared deviations for the specs pass, in two
  passes over the values (numpy needs nine: finite check, sentinels, selection, conversion, min, max,
  mean, deviations, dot).

Both release the GIL, so the thread that reads and decompresses the next chunk runs beside them. They are
compiled on first use and cached next to this module (numba's ``cache=True``; where that is not
writable, in numba's user-wide cache, and without a cache where neither is).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["fill_rows", "moments", "permute_rows"]


def _compiled(function):
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False)(function)
    except RuntimeError:  # nowhere to write numba's cache (a read-only install, a sandboxed job): no cache
        return numba.njit(nogil=True, boundscheck=False)(function)


@_compiled
def fill_rows(X, mask, dest, dense, dense_ok, dense_cols, starts, lengths, sources, values, oks, copy_to, copy_from,
              n_copies):  # pragma: no cover - compiled
    """Fill ``X``/``mask`` (``[n, F]``): event ``i`` of the inputs goes to row ``dest[i]`` (to row ``i``
    when ``dest`` is empty), so the values are read in their order and whole rows are written anywhere.

    ``dense``/``dense_ok`` (``[w, n]``; ``dense_ok`` empty when every value is real) go to columns
    ``dense_cols``. Each row of ``sources`` is a jagged branch: (first column, k, group, offset of its
    values in ``values``, offset of their validity in ``oks`` or -1 when all are valid); its lists are
    ``starts``/``lengths`` of its group (``[G, n]``); ``values[offset]`` is its pad value and the list
    values follow. The ``n_copies`` mask columns from ``copy_from`` become 0/1 values at ``copy_to``.
    """
    n = X.shape[0]
    w = dense.shape[0]
    checked = dense_ok.shape[0] > 0
    moved = dest.shape[0] > 0
    for i in range(n):
        r = dest[i] if moved else i
        for j in range(w):
            X[r, dense_cols[j]] = dense[j, i]
            mask[r, dense_cols[j]] = dense_ok[j, i] if checked else True
        for s in range(sources.shape[0]):
            col, k, g, at, ok_at = sources[s, 0], sources[s, 1], sources[s, 2], sources[s, 3], sources[s, 4]
            length = min(lengths[g, i], k)
            first = starts[g, i] + 1
            for j in range(length):
                X[r, col + j] = values[at + first + j]
            pad = values[at]
            for j in range(length, k):
                X[r, col + j] = pad
            if ok_at < 0:
                for j in range(length):
                    mask[r, col + j] = True
            else:
                for j in range(length):
                    mask[r, col + j] = oks[ok_at + first + j]
            for j in range(length, k):
                mask[r, col + j] = False
        for j in range(n_copies):
            X[r, copy_to + j] = 1.0 if mask[r, copy_from + j] else 0.0
            mask[r, copy_to + j] = True


@_compiled
def _permute(A, order, done):  # pragma: no cover - compiled
    n = A.shape[0]
    held = np.empty(A.shape[1], A.dtype)
    for i in range(n):
        if done[i]:
            continue
        held[:] = A[i]
        j = i
        while True:  # follow the cycle of i: each row is read once and written once
            k = order[j]
            done[j] = True
            if k == i:
                A[j] = held
                break
            A[j] = A[k]
            j = k


def permute_rows(A: np.ndarray, order: np.ndarray) -> None:
    """``A[:] = A[order]`` in place (``order`` a permutation of the rows), for a C-contiguous 2-D ``A``."""
    if len(order) != len(A) or A.ndim != 2 or not A.flags.c_contiguous:
        raise ValueError("permute_rows takes a C-contiguous 2-D array and a permutation of its rows")
    _permute(A, np.asarray(order, np.int64), np.zeros(len(A), np.bool_))


@_compiled
def _real(x, sentinels):  # pragma: no cover - compiled
    """Whether ``x`` is neither NaN, infinite nor one of ``sentinels``."""
    if x != x or x == np.inf or x == -np.inf:
        return False
    for s in sentinels:
        if x == s:
            return False
    return True


@_compiled
def _add(total, carry, x):  # pragma: no cover - compiled
    """``total + x`` and its rounding error added to ``carry`` (Neumaier's compensated sum)."""
    t = total + x
    carry += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
    return t, carry


@_compiled
def moments(values, sentinels):  # pragma: no cover - compiled
    """One chunk of a branch for the specs pass, in two passes over ``values`` (any numeric dtype):
    ``(nan, inf, n, lo, hi, mean, m2)`` of the values that are neither NaN, infinite nor one of
    ``sentinels`` (float64), with compensated (Neumaier) sums, as exact as numpy's pairwise ones."""
    nan = inf = n = 0
    lo, hi, total, carry = np.inf, -np.inf, 0.0, 0.0
    for i in range(values.shape[0]):
        x = np.float64(values[i])
        if not _real(x, sentinels):
            if x != x:
                nan += 1
            elif x == np.inf or x == -np.inf:
                inf += 1
            continue
        n += 1
        lo, hi = min(lo, x), max(hi, x)
        total, carry = _add(total, carry, x)
    if n == 0:
        return nan, inf, 0, lo, hi, 0.0, 0.0
    mean = (total + carry) / n
    m2, carry = 0.0, 0.0
    for i in range(values.shape[0]):
        x = np.float64(values[i])
        if _real(x, sentinels):
            m2, carry = _add(m2, carry, (x - mean) * (x - mean))
    return nan, inf, n, lo, hi, mean, m2 + carry


def warm() -> None:
    """Load (or compile) the loops a chunk needs, on tiny arrays: numba does it on first use, ~0.5 s from
    its disk cache; a stream starts this in the background while it reads its first chunk."""
    X, mask, empty = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.bool_), np.zeros(0, np.int64)
    fill_rows(X, mask, empty, np.zeros((1, 1), np.float32), np.zeros((0, 0), np.bool_), np.zeros(1, np.int64),
              np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64), np.zeros((0, 5), np.int64),
              np.zeros(0, np.float32), np.zeros(0, np.bool_), 0, 0, 0)
