"""Chunk creation holds a bounded amount of memory: the same peak for 5x the events.

Measured with tracemalloc, which sees numpy's and uproot's buffers in every thread (the read and the
vectorising threads of the pipeline included). The files are written with clusters of 2,000 entries, as
ROOT writes them (flushes every ~30 MB), so a file's size does not set the size of what is decoded at once.
"""

from __future__ import annotations

import tracemalloc

import pytest

from mlaas4hep_lab.data import datasets
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
