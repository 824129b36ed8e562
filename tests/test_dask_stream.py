"""Chunks built on Dask workers (cluster/stream.py, cluster/blocks.py): equal to the local stream's, bit for
bit, over two passes; a bounded number of chunks in flight; a broken file named with its entries."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_SENTINEL
from dask_support import local_cluster, scheduler_processes  # noqa: F401  (fixtures)

from mlaas4hep_lab.cluster.blocks import BlockJob, BlockSetup, build_block, close_readers
from mlaas4hep_lab.cluster.stream import DaskChunkStream
from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.errors import InputFileError
from mlaas4hep_lab.params import load_params
from mlaas4hep_lab.pipeline import dry_run, load_inputs

FIELDS = ("X", "mask", "y", "split", "file_index", "entry", "weight")

# a cut on a flat branch, one on a jagged one, and new branches of both kinds
TOY_PREPROC = {
    "new_branch": {"HT": {"def": "sum(Jet_pt)", "type": "flat"},
                   "Jet_ptx": {"def": "Jet_pt * 2", "type": "jagged"}},
    "flat_cut": {"f_float32": {"cut": "f_float32 > -1.0", "remove": "False"}},
    "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt > 40", "any"], "remove": "False"}},
}


@pytest.fixture(scope="module")
def tth_small(tmp_path_factory):
    return datasets.tth(tmp_path_factory.mktemp("tth_dask"), n_events=5000, seed=3)


@pytest.fixture(scope="module")
def tth_tasks_small(tmp_path_factory):
    return datasets.tth_tasks(tmp_path_factory.mktemp("tth_tasks_dask"), n_events=4000, seed=5)


def toy_inputs(toy_data, **changes):
    settings = {"missing_values": [TOY_SENTINEL], "weight": "Weight", "chunk_size": 1500, "seed": 11} | changes
    params = load_params(toy_data.params_json, **settings)
    return toy_data.files, [1, 0], params, Preproc.from_json(TOY_PREPROC)


def example_inputs(ds, params_json=None, labels=True, **changes):
    params = json.loads(Path(params_json or ds.params_json).read_text())
    params.update({"verbose": 0, **changes})
    inputs = load_inputs(ds.files_txt, ds.labels_txt if labels else None, params, ds.preproc_json)
    return inputs.files, inputs.labels, inputs.params, inputs.preproc


def both_streams(cluster, files, labels, params, preproc, passes=2):
    specs = compute_specs(files, params, preproc, progress=False)
    with ChunkStream(files, labels, params, specs, preproc) as local:
        want = list(local.iterate_passes(passes))
        stats = dict(local.stats)
    with DaskChunkStream(files, labels, params, specs, preproc, dask=cluster) as remote:
        got = list(remote.iterate_passes(passes))
        remote_stats = dict(remote.stats)
        # the blocks each chunk was built from: [[(start, stop, file), ...] per chunk]
        remote_stats["jobs"] = [[(job.start, job.stop, job.file, worker) for job, worker in remote.jobs(k)]
                                for k in range(remote.n_chunks)]
        remote_stats["boundaries"] = [r.cluster_boundaries(remote.plan.read) for r in remote.readers]
    return want, got, stats, remote_stats


def assert_same_chunks(want, got):
    assert len(want) == len(got) > 2
    assert len({k.index for _, k in want}) >= 2   # two chunks or more per pass
    for (e1, a), (e2, b) in zip(want, got):
        assert (e1, a.index, a.read_events) == (e2, b.index, b.read_events)
        for name in FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            if x is None:
                assert y is None, name
                continue
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), f"{name} of chunk {a.index}, pass {e1}"
        assert list(a.ids) == list(b.ids)
        for name in a.ids:
            assert a.ids[name].dtype == b.ids[name].dtype and np.array_equal(a.ids[name], b.ids[name]), name
        assert (a.layout is None) == (b.layout is None)


@pytest.mark.parametrize("prefetch, cache", [(1, "off"), (0, "auto")])
def test_toy_chunks_equal_the_local_ones(local_cluster, toy_data, prefetch, cache):  # noqa: F811
    """Flat branches of every type, two jagged collections, a sentinel, weights, identifiers, cuts and new
    branches; files of 3,000 and 7,000 entries; both passes (the second from the workers again, or from the
    chunk cache)."""
    files, labels, params, preproc = toy_inputs(toy_data, prefetch=prefetch, chunk_cache=cache)
    want, got, stats, remote = both_streams(local_cluster, files, labels, params, preproc)
    assert_same_chunks(want, got)
    n_chunks = len(want) // 2
    assert remote["read"] == stats["read"] and remote["kept"] == stats["kept"] < 2 * 10_000
    # every chunk of the first pass was built on the workers, the second pass too unless the chunk cache
    # kept them; files of 3,000 and 7,000 entries on two workers: cut in units (.placement), so some
    # chunks have more blocks than files, each share covered exactly
    jobs = remote["jobs"]
    assert len(jobs) == n_chunks and remote["blocks"] == sum(map(len, jobs)) * (2 if cache == "off" else 1)
    assert sum(map(len, jobs)) > 2 * n_chunks
    assert_blocks_cover_the_files(jobs, remote["boundaries"], [3000, 7000])


def assert_blocks_cover_the_files(jobs, boundaries, entries):
    """Each file's blocks, chunk after chunk, cover its entries once and in order; within a chunk's share
    they are cut at cluster boundaries only (no basket decompressed on two workers)."""
    for i, n in enumerate(entries):
        ranges = [(a, b) for blocks in jobs for a, b, f, _ in blocks if f == i]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(ranges[:-1], ranges[1:]))
        for blocks in jobs:
            inner = [b for a, b, f, _ in blocks if f == i][:-1]
            assert set(inner) <= set(boundaries[i].tolist()), "a share cut inside a cluster"


def test_toy_chunks_equal_on_a_scheduler_with_worker_processes(scheduler_processes, toy_data):  # noqa: F811
    files, labels, params, preproc = toy_inputs(toy_data, prefetch=2, chunk_cache="off", chunk_size=2500)
    want, got, _, _ = both_streams(scheduler_processes, files, labels, params, preproc)
    assert_same_chunks(want, got)


def test_tth_objects_layout_chunks_equal(local_cluster, tth_small):  # noqa: F811
    files, labels, params, preproc = example_inputs(tth_small, chunk_size=2000, layout="objects", prefetch=1)
    want, got, _, _ = both_streams(local_cluster, files, labels, params, preproc)
    assert_same_chunks(want, got)
    assert got[0][1].layout is not None
    a, b = want[0][1].named_inputs(), got[0][1].named_inputs()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_tth_regression_truth_chunks_equal(scheduler_processes, tth_tasks_small):  # noqa: F811
    files, labels, params, preproc = example_inputs(tth_tasks_small, tth_tasks_small.params_regression,
                                                    labels=False, chunk_size=1500)
    want, got, _, _ = both_streams(scheduler_processes, files, labels, params, preproc)
    assert want[0][1].y.ndim == 2   # the targets, one column each
    assert_same_chunks(want, got)


def test_tth_multiclass_truth_chunks_equal(local_cluster, tth_tasks_small):  # noqa: F811
    files, labels, params, preproc = example_inputs(tth_tasks_small, chunk_size=1500, chunk_cache="off")
    want, got, _, _ = both_streams(local_cluster, files, labels, params, preproc)
    assert sorted(np.unique(np.concatenate([c.y for _, c in want]))) == [0.0, 1.0, 2.0]
    assert_same_chunks(want, got)


def test_a_file_share_is_cut_at_clusters_when_workers_outnumber_files(local_cluster, toy_data):  # noqa: F811
    """One file, two workers: each chunk's share is cut at basket boundaries into parts for both workers."""
    files, _, params, preproc = toy_inputs(toy_data, chunk_size=4000)
    files, labels = files[1:], [0]
    want, got, _, remote = both_streams(local_cluster, files, labels, params, preproc, passes=1)
    assert_same_chunks(want + want, got + got)
    jobs = remote["jobs"]
    assert remote["blocks"] == sum(map(len, jobs)) and all(len(blocks) >= 2 for blocks in jobs)
    assert all(len({worker for *_, worker in blocks}) == 2 for blocks in jobs)
    assert_blocks_cover_the_files(jobs, remote["boundaries"], [7000])


def test_one_block_is_the_rows_of_its_events(toy_data):
    """build_block as a plain function: entry order, the file's label, only the kept events."""
    files, labels, params, preproc = toy_inputs(toy_data, shuffle=False)
    specs = compute_specs(files, params, preproc, progress=False)
    with ChunkStream(files, labels, params, specs, preproc) as local:
        chunk = local.build(1)
        setup = BlockSetup.of(local)
        start, stop = local.bounds(1)[1]
    block = build_block(setup, BlockJob(str(files[1]), 1, 0.0, start, stop))
    rows = chunk.file_index == 1
    assert block.read == stop - start and len(block) < block.read   # the cuts removed some
    assert np.array_equal(block.entry, chunk.entry[rows]) and np.all(np.diff(block.entry) > 0)
    assert block.X.tobytes() == chunk.X[rows].tobytes() and np.array_equal(block.mask, chunk.mask[rows])
    assert np.all(block.y == 0) and np.array_equal(block.ids["EventId"], chunk.ids["EventId"][rows])


@pytest.mark.parametrize("prefetch, even", [(1, False), (2, False), (1, True), (2, True)])
def test_only_ahead_plus_one_chunks_are_in_flight(local_cluster, toy_data, prefetch, even):  # noqa: F811
    """``prefetch`` chunks ahead (at least one) when each file stays on one worker; at least two when files
    of 3,000 and 7,000 entries are placed in units (the load of two consecutive chunks is even)."""
    files, labels, params, preproc = toy_inputs(toy_data, prefetch=prefetch, chunk_size=1000)
    if even:   # two files of the same size: each stays whole on its worker
        files = [files[1], files[1]]
    specs = compute_specs(files, params, preproc, progress=False)
    client = local_cluster.client
    seen = []
    with DaskChunkStream(files, labels, params, specs, preproc, dask=local_cluster) as stream:
        mine = f"mlaas4hep-block-{stream._token}-"
        for _ in stream:
            seen.append(sum(str(key).startswith(mine) for key in list(client.futures)))
        assert stream.n_chunks >= 8 and (stream._units is None) == even
        ahead = max(prefetch, 1 if even else 2)
        assert stream.ahead == ahead
        # at every read, the blocks of this chunk and of `ahead` more were pending (submitted, not gathered),
        # never more (units on two workers: two blocks per chunk or more)
        counts = [len(stream.jobs(k)) for k in range(stream.n_chunks)]
        windows = [sum(counts[k: k + ahead + 1]) for k in range(stream.n_chunks)]
        assert stream.max_in_flight == ahead + 1 and min(counts) >= 2
        assert stream.max_pending_blocks == max(windows)
        # the workers kept their readers open between tasks (counted here by closing them)
        assert sum(client.run(close_readers, [str(f) for f in files]).values()) >= 2
    # the client saw the next chunks' blocks on their way while one was consumed (its count of futures
    # lags the releases a little: the stream's own count above is the exact one)
    assert max(seen) >= 2 * prefetch
    deadline = time.monotonic() + 10
    while [key for key in client.futures if str(key).startswith(mine)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [key for key in client.futures if str(key).startswith(mine)]   # all released at the end


def test_closing_the_stream_closes_the_workers_readers(local_cluster, toy_data):  # noqa: F811
    files, labels, params, preproc = toy_inputs(toy_data, chunk_size=3000)
    specs = compute_specs(files, params, preproc, progress=False)
    with DaskChunkStream(files, labels, params, specs, preproc, dask=local_cluster) as stream:
        stream.build(0)
    assert set(local_cluster.client.run(close_readers, [str(f) for f in files]).values()) == {0}


def test_a_broken_file_is_named_with_its_entries_after_the_retries(local_cluster, toy_copy):  # noqa: F811
    files, labels, params, preproc = toy_inputs(toy_copy)
    files = [str(toy_copy.sig), str(toy_copy.bkg)]
    specs = compute_specs(files, params, preproc, progress=False)
    with DaskChunkStream(files, labels, params, specs, preproc, dask=local_cluster) as stream:
        # broken after the client opened it: the workers open it first when they read it
        data = toy_copy.bkg.read_bytes()
        toy_copy.bkg.write_bytes(data[: len(data) // 3])
        with pytest.raises(InputFileError) as info:
            list(stream)
        message = str(info.value)
        found = re.match(r"entries (\d+)-(\d+) of (\S+) \(chunk (\d+)\) failed on the Dask workers after 3 "
                         r"attempts: cannot read entries", message)
        assert found, message
        start, stop, path, k = found.groups()
        assert path == str(toy_copy.bkg) == info.value.path
        assert stream.bounds(int(k))[1] == (int(start), int(stop))
        assert "truncated or corrupt" in message


def test_dry_run_on_the_cluster_reports_what_the_local_one_does(local_cluster, tth_small):  # noqa: F811
    from mlaas4hep_lab.data.specs import compute_specs as specs_of
    from mlaas4hep_lab.pipeline import Inputs

    files, labels, params, preproc = example_inputs(tth_small, chunk_size=2000)
    inputs = Inputs(files, labels, params, preproc)
    specs = specs_of(files, params, preproc, progress=False)
    local, remote = dry_run(inputs, specs, progress=False), dry_run(inputs, specs, progress=False, dask=local_cluster)
    for key in ("chunks", "events_read", "events_after_cuts", "features", "events_per_label", "split",
                "masked_fraction"):
        assert local[key] == remote[key], key
