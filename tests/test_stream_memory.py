"""Chunk creation holds a bounded amount of memory: the same peak for 5x the events.

Measured with tracemalloc, which sees numpy's and uproot's buffers in every thread (the read and the
vectorising threads of the pipeline included). The files are written with clusters of 2,000 entries, as
ROOT writes them (flushes every ~30 MB), so a file's size does not set the size of what is decoded at once.
"""

from __future__ import annotations

import tracemalloc

import awkward as ak
import numpy as np
import pytest

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.plan import make_plan
from mlaas4hep_lab.data.reader import BlockReader, TreeReader, share_offsets
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.params import load_params

CHUNK = 4000


def peak_per_chunk(ds) -> tuple[float, int]:
    """Peak traced memory of one shuffled pass over ``ds``, in units of one chunk's X plus mask."""
    params = load_params(ds.params_json, chunk_size=CHUNK, verbose=0, prefetch=1)
    specs = compute_specs(ds.files, params, progress=False)
    with ChunkStream(ds.files, ds.labels, params, specs) as stream:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            one, chunks = 0, 0
            for chunk in stream:
                one, chunks = max(one, chunk.X.nbytes + chunk.mask.nbytes), chunks + 1
                del chunk
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    return peak / one, chunks


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_events(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SLICE", 2000)
    small, n_small = peak_per_chunk(datasets.tth(tmp_path / "small", n_events=12_000))
    large, n_large = peak_per_chunk(datasets.tth(tmp_path / "large", n_events=60_000))
    assert n_large == 5 * n_small
    # the chunk in use, the one being built, the decoded blocks the pieces are cut from
    assert large <= 4.0, f"peak {large:.2f}x one chunk's X+mask"
    assert large <= small * 1.25 + 0.25, f"peak {small:.2f}x -> {large:.2f}x one chunk's X+mask for 5x the events"


def _tth_files(tmp_path, n_files: int, events_per_file: int):
    """``n_files`` ttH-like files (half signal) of ``events_per_file`` entries, one cluster each."""
    return datasets.tth(tmp_path / f"f{n_files}", n_events=n_files * events_per_file, files_per_class=n_files // 2)


def _blocks_peak(ds, read_buffer_mb: int, monkeypatch) -> tuple[int, list]:
    """The most decoded entries the stream's block readers held at once (right after each decode), over
    one pass, and the chunks."""
    params = load_params(ds.params_json, chunk_size=CHUNK, verbose=0, prefetch=0, read_buffer_mb=read_buffer_mb)
    specs = compute_specs(ds.files, params, progress=False)
    held, chunks = [0], []
    with ChunkStream(ds.files, ds.labels, params, specs) as stream:
        load = BlockReader._load

        def counted(self, start, stop):
            load(self, start, stop)
            held[0] = max(held[0], sum(b._stop - b._start for b in stream._blocks
                                       if b is not None and b._arrays is not None))

        monkeypatch.setattr(BlockReader, "_load", counted)
        chunks = [stream.build(k) for k in range(stream.n_chunks)]
        monkeypatch.setattr(BlockReader, "_load", load)
    return held[0], chunks


def test_decoded_blocks_stay_within_the_read_buffer_however_many_files(tmp_path, monkeypatch):
    # one cluster per file: without a bound every file would keep its whole decoded file between chunks
    monkeypatch.setattr(datasets, "SLICE", 100_000)
    ds = _tth_files(tmp_path, 8, 3000)
    bounded, chunks = _blocks_peak(ds, 1, monkeypatch)
    unbounded, same = _blocks_peak(ds, 10_000, monkeypatch)
    with TreeReader(ds.files[0], "events") as reader:
        per_entry = reader.bytes_per_entry(make_plan(reader, load_params(ds.params_json, verbose=0), None).read)
    assert unbounded >= 8 * 3000 - 8 * CHUNK // 8  # nearly every file decoded whole
    share = -(-3000 // len(chunks))  # one chunk's entries of one file
    assert bounded <= 8 * max(share, 1e6 / 8 / per_entry + 1)
    assert bounded < unbounded / 2
    # the same chunks whatever the buffer: re-decoded baskets give the same values
    assert len(chunks) == len(same)
    for a, b in zip(chunks, same):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.entry, b.entry)


def test_branches_of_a_collection_share_one_offsets_buffer(tmp_path):
    ds = datasets.tth(tmp_path / "d", n_events=2000)
    with TreeReader(ds.files[0], "events") as reader:
        names = ["nJet", "Jet_pt", "Jet_eta", "Muon_pt", "Muon_eta", "Electron_pt"]
        arrays = reader.read(names, 0, reader.num_entries)
        shared = share_offsets(arrays)
    assert ak.to_list(shared) == ak.to_list(arrays)
    offsets = {name: ak.to_layout(shared[name]).offsets.data for name in names[1:]}
    assert offsets["Jet_pt"] is offsets["Jet_eta"]
    assert offsets["Muon_pt"] is offsets["Muon_eta"]
    assert offsets["Jet_pt"] is not offsets["Muon_pt"]  # other collections keep their own
    assert ak.to_layout(arrays["Jet_pt"]).offsets.data is not ak.to_layout(arrays["Jet_eta"]).offsets.data
