"""The chunk cache (params ``chunk_cache``): the passes after the first read their chunks back from disk, and
get the same chunks, value for value and in the same shuffled order, as building them again."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.data.reader import BlockReader
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.params import load_params

PASSES = 3


def _passes(ds, preproc, monkeypatch=None, **overrides):
    """Every chunk of PASSES passes (copied: the stream reuses the matrices' memory), and the number of
    decoded blocks read in each pass."""
    params = load_params(ds.params_json, verbose=0, **overrides)
    pre = Preproc.from_json(preproc) if preproc else None
    specs = compute_specs(ds.files, params, pre, progress=False)
    loads = {}
    out = []
    with ChunkStream(ds.files, ds.labels, params, specs, pre) as stream:
        if monkeypatch is not None:
            load = BlockReader._load

            def counted(self, start, stop):
                loads[current[0]] = loads.get(current[0], 0) + 1
                load(self, start, stop)

            monkeypatch.setattr(BlockReader, "_load", counted)
        current = [0]
        for epoch, chunk in stream.iterate_passes(PASSES):
            current[0] = epoch
            out.append((epoch, chunk.index, {
                "X": np.array(chunk.X), "mask": np.array(chunk.mask), "y": np.array(chunk.y),
                "split": np.array(chunk.split), "file_index": np.array(chunk.file_index),
                "entry": np.array(chunk.entry), "read": chunk.read_events,
                "weight": None if chunk.weight is None else np.array(chunk.weight),
                **{f"id:{k}": np.array(v) for k, v in chunk.ids.items()}}))
        if monkeypatch is not None:
            monkeypatch.setattr(BlockReader, "_load", load)
    return out, loads


def _same(a, b):
    assert [(e, k) for e, k, _ in a] == [(e, k) for e, k, _ in b]
    for (e, k, x), (_, _, y) in zip(a, b):
        assert x.keys() == y.keys(), (e, k)
        for name in x:
            if x[name] is None or isinstance(x[name], int):
                assert x[name] == y[name], (e, k, name)
            else:
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"pass {e} chunk {k} {name}")


@pytest.mark.parametrize("kind", ["tth", "higgs"])
@pytest.mark.parametrize("prefetch", [0, 1])
def test_cached_passes_equal_the_rebuilt_ones(tmp_path, kind, prefetch, monkeypatch):
    monkeypatch.setattr(datasets, "SLICE", 1000)
    ds = getattr(datasets, kind)(tmp_path / kind, n_events=6000)
    preproc = ds.preproc_json if kind == "tth" else None   # cuts (events dropped) and a new jagged branch
    common = {"chunk_size": 1700, "prefetch": prefetch}
    rebuilt, _ = _passes(ds, preproc, chunk_cache="off", **common)
    cached, loads = _passes(ds, preproc, monkeypatch, chunk_cache=str(tmp_path / "cache"), **common)
    _same(rebuilt, cached)
    assert len({e for e, _, _ in cached}) == PASSES and len(cached) > PASSES
    # later passes differ in order (shuffled per pass) but hold the same events
    first = [x for e, _, x in cached if e == 0]
    second = [x for e, _, x in cached if e == 1]
    assert any(not np.array_equal(a["entry"], b["entry"]) for a, b in zip(first, second))
    for a, b in zip(first, second):
        assert sorted(zip(a["file_index"], a["entry"])) == sorted(zip(b["file_index"], b["entry"]))
    # the files are read in the first pass only, and the folder is emptied at the end
    assert loads.get(0, 0) > 0 and loads.get(1, 0) == 0 and loads.get(2, 0) == 0, loads
    assert not any((tmp_path / "cache").iterdir())


def test_unshuffled_and_objects_layout_and_resumed_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SLICE", 1000)
    ds = datasets.tth(tmp_path / "tth", n_events=5000)
    for overrides in ({"shuffle": False}, {"layout": "objects"}):
        rebuilt, _ = _passes(ds, ds.preproc_json, chunk_size=1200, chunk_cache="off", **overrides)
        cached, _ = _passes(ds, ds.preproc_json, chunk_size=1200, chunk_cache="auto", **overrides)
        _same(rebuilt, cached)
    # resuming in the middle of a pass: the chunks not built yet are built (and cached) when first needed
    params = load_params(ds.params_json, verbose=0, chunk_size=1200)
    specs = compute_specs(ds.files, params, progress=False)
    with ChunkStream(ds.files, ds.labels, params, specs) as stream:
        resumed = [(e, c.index, np.array(c.X)) for e, c in stream.iterate_passes(3, 1, 2)]
    params.chunk_cache = "off"
    with ChunkStream(ds.files, ds.labels, params, specs) as stream:
        plain = [(e, c.index, np.array(c.X)) for e, c in stream.iterate_passes(3, 1, 2)]
    assert [(e, k) for e, k, _ in resumed] == [(e, k) for e, k, _ in plain]
    for (_, _, a), (_, _, b) in zip(resumed, plain):
        np.testing.assert_array_equal(a, b)


def test_no_cache_for_one_pass_or_without_room(tmp_path, monkeypatch, caplog):
    from mlaas4hep_lab.data import _chunk_cache

    assert _chunk_cache.open_cache("auto", 1000, 10, 1) is None
    assert _chunk_cache.open_cache("off", 1000, 10, 3) is None
    with caplog.at_level(logging.INFO, logger="mlaas4hep_lab.data._chunk_cache"):
        assert _chunk_cache.open_cache(str(tmp_path), 10**15, 100, 3) is None
    assert "more than half" in caplog.text
    cache = _chunk_cache.open_cache(str(tmp_path / "new"), 1000, 10, 3)
    assert cache is not None and cache.folder.parent == tmp_path / "new"
    cache.close()
    assert not cache.folder.exists()
    with pytest.raises(ConfigError, match="chunk_cache"):
        load_params(None, chunk_cache=" ")
