"""Which worker builds which entries of each file: the placement of a Dask chunk stream's blocks.

Every chunk takes the same fraction of every file (the local stream mixes the files in proportion to their
sizes), so a worker's part of chunk ``k`` is the sum of the shares it builds, and a chunk is ready when the
busiest worker is done. Two placements:

* **by file** (:func:`by_files`): each file to one worker, largest first to the least loaded. With many files
  the loads come out even, and each file is opened and decoded on one worker only.
* **by unit** (:func:`by_units`), when that leaves the workers uneven (two files of 650k and 350k events on
  two workers: one worker builds 65% of every chunk while the other waits a third of the time; or fewer
  files than workers): each file is cut at cluster boundaries into units (so that no basket is decompressed
  on two workers), and the chunks are walked in order, each unit going, when they first reach it, to the
  worker that has the fewest entries so far. A chunk may then be built unevenly, but the next one evens it
  out, and the stream keeps more than one chunk in flight.

Plain functions over entry counts and cluster boundaries (tested without Dask).

Example::

    homes, loads = by_files([650_000, 350_000], 2)          # [0, 1], loads 650k / 350k: uneven
    units = by_units([650_000, 350_000], 10, [edges_a, edges_b], 2)
    pieces(units[0], 0, 65_000)                             # [(0, 65000, worker)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UNEVEN", "MAX_STEPS", "by_files", "uneven", "by_units", "pieces", "files_per_worker"]

UNEVEN = 1.05          # by file is kept while the busiest worker has at most 5% more entries than the mean
MAX_STEPS = 200_000    # chunks x files walked to place units (~0.3 s); beyond, by file


def by_files(entries: Sequence[int], n_workers: int) -> tuple[list[int], np.ndarray]:
    """Each file's worker (largest files first, each to the least loaded) and the entries of each worker."""
    load = np.zeros(max(1, n_workers), np.int64)
    homes = [0] * len(entries)
    for i in np.argsort(np.asarray(entries, np.int64), kind="stable")[::-1]:
        w = int(np.argmin(load))
        homes[i], load[w] = w, load[w] + int(entries[i])
    return homes, load


def uneven(load: np.ndarray) -> bool:
    """Whether the busiest worker has more than :data:`UNEVEN` times the mean."""
    return bool(load.size) and float(load.max()) > UNEVEN * float(load.mean())


def _unit_edges(boundaries: np.ndarray, n: int, least: int) -> np.ndarray:
    """The file's cluster boundaries thinned so that a unit holds about ``least`` entries or more: for each
    multiple of ``least``, the first boundary at or after it."""
    boundaries = np.asarray(boundaries, np.int64)
    boundaries = boundaries[(boundaries > 0) & (boundaries < n)]
    targets = np.arange(max(1, least), n, max(1, least), dtype=np.int64)
    at = np.searchsorted(boundaries, targets)
    chosen = boundaries[at[at < len(boundaries)]]
    return np.unique(np.concatenate([[0], chosen, [n]])).astype(np.int64)


def by_units(entries: Sequence[int], n_chunks: int, boundaries: Sequence[np.ndarray], n_workers: int,
             ) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per file, ``(edges, owners)``: unit ``u`` is entries ``[edges[u], edges[u + 1])``, built by worker
    ``owners[u]``. None when the walk would take more than :data:`MAX_STEPS` steps.

    A unit holds at least half a file's share of a chunk (divided by the workers per file when workers
    outnumber files), so that a share is cut in a few blocks only."""
    active = [i for i, n in enumerate(entries) if n > 0]
    if n_chunks * max(1, len(active)) > MAX_STEPS:
        return None
    per_file = max(1, n_workers // max(1, len(active)))
    units = []
    for i, n in enumerate(entries):
        least = max(1, int(n) // max(1, n_chunks) // (2 * per_file))
        edges = _unit_edges(boundaries[i], int(n), least) if n > 0 else np.zeros(1, np.int64)
        units.append((edges, np.full(len(edges) - 1, -1, np.int64)))
    load = [0] * max(1, n_workers)
    edge_lists = [edges.tolist() for edges, _ in units]
    owner_lists = [owners.tolist() for _, owners in units]
    at = [0] * len(units)              # each file's first unit not yet behind the chunks
    for k in range(n_chunks):          # chunks x files, a few steps each: no loop over events
        for i in active:
            n, edges, owners = int(entries[i]), edge_lists[i], owner_lists[i]
            a, b = (k * n) // n_chunks, ((k + 1) * n) // n_chunks
            if b <= a:
                continue
            u = at[i]
            while u < len(owners) and edges[u] < b:
                if owners[u] < 0:
                    owners[u] = min(range(len(load)), key=load.__getitem__)
                load[owners[u]] += min(b, edges[u + 1]) - max(a, edges[u])
                if edges[u + 1] > b:
                    break
                u += 1
            at[i] = u
    for (_, owners), filled in zip(units, owner_lists):
        owners[:] = filled
    return units


def pieces(unit: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> list[tuple[int, int, int]]:
    """``[(start, stop, worker), ...]``: entries ``[start, stop)`` of a file cut where its units' owner
    changes."""
    edges, owners = unit
    inner = edges[(edges > start) & (edges < stop)]
    bounds = [start, *inner.tolist(), stop]
    out: list[tuple[int, int, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        worker = int(owners[int(np.searchsorted(edges, a, side="right")) - 1])
        if out and out[-1][2] == worker:
            out[-1] = (out[-1][0], b, worker)
        else:
            out.append((a, b, worker))
    return out


def files_per_worker(units: list[tuple[np.ndarray, np.ndarray]], n_workers: int) -> int:
    """The most files one worker builds units of (each keeps a decoded block per file)."""
    count = np.zeros(max(1, n_workers), np.int64)
    for _, owners in units:
        count[np.unique(owners[owners >= 0])] += 1
    return int(count.max(initial=0))
