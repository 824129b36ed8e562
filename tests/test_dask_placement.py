"""The placement of a Dask chunk stream's blocks (cluster/placement.py): files stay whole while that keeps
the workers even; otherwise cluster-aligned units cover every file, each share cut at cluster boundaries
only, the workers' entries even within a unit."""

from __future__ import annotations

import numpy as np
import pytest

from mlaas4hep_lab.cluster import placement


def _edges(n: int, cluster: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, n, cluster), n]).astype(np.int64)


def test_files_stay_whole_while_that_keeps_the_workers_even():
    homes, load = placement.by_files([300, 100, 250, 250, 100], 2)
    assert sorted(load) == [500, 500] and not placement.uneven(load)
    assert placement.uneven(placement.by_files([650_000, 350_000], 2)[1])
    assert placement.uneven(placement.by_files([1000], 2)[1])   # fewer files than workers


@pytest.mark.parametrize("entries, cluster, workers", [([650_000, 350_000], 100_000, 2), ([650_000, 350_000], 5_000, 2),
                                                       ([1_000_000], 3_000, 4), ([300, 7_000], 1_000, 3)])
def test_units_cover_the_files_at_cluster_boundaries_and_even_the_workers(entries, cluster, workers):
    n_chunks = -(-sum(entries) // 100_000) if sum(entries) > 10_000 else 5
    edges = [_edges(n, cluster) for n in entries]
    units = placement.by_units(entries, n_chunks, edges, workers)
    load = np.zeros(workers, np.int64)
    for (unit_edges, owners), cuts, n in zip(units, edges, entries):
        assert unit_edges[0] == 0 and unit_edges[-1] == n and set(unit_edges.tolist()) <= set(cuts.tolist())
        assert (owners >= 0).all() and (owners < workers).all()
        np.add.at(load, owners, np.diff(unit_edges))
    assert load.max() <= load.mean() + max(cluster, max(entries) // n_chunks)   # within a unit of even
    for k in range(n_chunks):   # every share cut into pieces that cover it, in order
        for unit, n in zip(units, entries):
            a, b = k * n // n_chunks, (k + 1) * n // n_chunks
            if b > a:
                pieces = placement.pieces(unit, a, b)
                assert pieces[0][0] == a and pieces[-1][1] == b
                assert all(p[1] == q[0] and p[2] != q[2] for p, q in zip(pieces[:-1], pieces[1:]))


def test_units_of_the_two_higgs_like_files_alternate_so_two_chunks_in_flight_are_even():
    units = placement.by_units([650_000, 350_000], 10, [_edges(650_000, 100_000), _edges(350_000, 100_000)], 2)
    per_chunk = []
    for k in range(10):
        load = [0, 0]
        for unit, n in zip(units, [650_000, 350_000]):
            for a, b, w in placement.pieces(unit, k * n // 10, (k + 1) * n // 10):
                load[w] += b - a
        per_chunk.append(load)
    per_chunk = np.asarray(per_chunk)
    pairs = per_chunk[0::2] + per_chunk[1::2]   # chunks 0-1, 2-3, ...: one heavy for each worker
    assert (np.abs(pairs[:, 0] - pairs[:, 1]) <= 20_000).all() and placement.files_per_worker(units, 2) == 2
    assert abs(int(per_chunk[:, 0].sum()) - int(per_chunk[:, 1].sum())) <= 100_000
    files_only = np.asarray(placement.by_files([650_000, 350_000], 2)[1])
    assert abs(files_only[0] - files_only[1]) == 300_000   # by file: 65% / 35% of every chunk


def test_a_long_run_of_few_files_keeps_files_whole():
    assert placement.by_units([10**9, 10**8], placement.MAX_STEPS, [_edges(10**9, 10**7), _edges(10**8, 10**7)],
                              2) is None
