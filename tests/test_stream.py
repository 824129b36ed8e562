"""ChunkStream: coverage, proportional mixing, labels, splits, shuffling, prefetch, nevts, errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import TOY_BKG_ID0, TOY_BKG_N, TOY_SENTINEL, TOY_SIG_ID0, TOY_SIG_N

from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream, split_of
from mlaas4hep_lab.errors import InputFileError, LabelsError, StaleSpecsError
from mlaas4hep_lab.params import load_params

SIZES = [TOY_SIG_N, TOY_BKG_N]
ID0 = [TOY_SIG_ID0, TOY_BKG_ID0]


def base_params(toy_data, **changes):
    settings = {"missing_values": [TOY_SENTINEL], "weight": "Weight", "prefetch": 0} | changes
    return load_params(toy_data.params_json, **settings)


@pytest.fixture(scope="module")
def specs(toy_data):
    return compute_specs(toy_data.files, base_params(toy_data), progress=False)


def one_pass(toy_data, specs, labels=(1, 0), files=None, **changes):
    with ChunkStream(files or toy_data.files, list(labels), base_params(toy_data, **changes), specs) as stream:
        return list(stream)


def cat(chunks, attr):
    return np.concatenate([getattr(c, attr) for c in chunks])


def keys_of(chunks):
    """(file_index, entry) of every row of a pass, in order."""
    return list(zip(cat(chunks, "file_index").tolist(), cat(chunks, "entry").tolist()))


def split_map(chunks):
    return dict(zip(keys_of(chunks), cat(chunks, "split").tolist()))


# -- coverage and mixing ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size, prefetch", [(1000, 0), (777, 2), (10_000, 1), (4096, 0)])
def test_every_entry_exactly_once_per_pass(toy_data, specs, chunk_size, prefetch):
    chunks = one_pass(toy_data, specs, chunk_size=chunk_size, prefetch=prefetch)
    keys = keys_of(chunks)
    assert len(keys) == len(set(keys)) == sum(SIZES)
    assert set(keys) == {(i, e) for i, n in enumerate(SIZES) for e in range(n)}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert sum(c.read_events for c in chunks) == sum(SIZES)


@pytest.mark.parametrize("chunk_size", [1000, 777, 625, 333, 2500])
def test_chunks_mix_files_in_proportion_and_respect_chunk_size(toy_data, specs, chunk_size):
    chunks = one_pass(toy_data, specs, chunk_size=chunk_size, shuffle=False)
    total = sum(SIZES)
    # the fewest chunks that keep every chunk within chunk_size: ceil(total / chunk_size), or a few more
    # when per-file rounding would push a chunk over
    fewest = -(-total // chunk_size)
    assert fewest <= len(chunks) <= fewest + len(SIZES)
    if chunk_size in (1000, 2500):
        assert len(chunks) == fewest
    for chunk in chunks:
        n = len(chunk)
        assert n <= chunk_size, f"chunk {chunk.index} holds {n} events, more than chunk_size={chunk_size}"
        for i, size in enumerate(SIZES):
            got = int(np.count_nonzero(chunk.file_index == i))
            assert abs(got - size * n / total) <= 1, (chunk.index, i, got, size * n / total)


def test_each_chunk_takes_a_contiguous_slice_of_each_file(toy_data, specs):
    chunks = one_pass(toy_data, specs, chunk_size=1000, shuffle=False)
    for k, chunk in enumerate(chunks):
        for i, size in enumerate(SIZES):
            entries = chunk.entry[chunk.file_index == i]
            share = size // 10
            np.testing.assert_array_equal(entries, np.arange(k * share, (k + 1) * share))


@pytest.mark.parametrize("labels", [(1, 0), (0, 1), (3.5, -2)])
def test_labels_follow_file_order(toy_data, specs, labels):
    chunks = one_pass(toy_data, specs, labels=labels, chunk_size=2000, shuffle=True)
    y, fi = cat(chunks, "y"), cat(chunks, "file_index")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.asarray(labels, np.float32)[fi])
    assert (fi == 0).sum() == TOY_SIG_N


def test_labels_follow_file_order_when_files_are_swapped(toy_data, specs):
    chunks = one_pass(toy_data, specs, labels=(0, 1), files=[str(toy_data.bkg), str(toy_data.sig)])
    y = cat(chunks, "y")
    eid = np.concatenate([c.ids["EventId"] for c in chunks])
    assert (((eid >= TOY_SIG_ID0) & (eid < TOY_BKG_ID0)) == (y == 1)).all()
    assert len(y) == sum(SIZES) and (y == 1).sum() == TOY_SIG_N


# -- splits -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_splits(toy_data, specs):
    return split_map(one_pass(toy_data, specs, chunk_size=1000, shuffle=True))


@pytest.mark.parametrize("changes", [{}, {"chunk_size": 333}, {"chunk_size": 10_000}, {"shuffle": False},
                                     {"prefetch": 2, "chunk_size": 4000}])
def test_split_of_an_event_never_changes(toy_data, specs, reference_splits, changes):
    assert split_map(one_pass(toy_data, specs, **changes)) == reference_splits


def test_split_does_not_depend_on_the_files_folder_or_order(toy_data, specs, reference_splits, toy_copy):
    chunks = one_pass(toy_data, specs, files=[str(toy_copy.bkg), str(toy_copy.sig)], labels=(0, 1))
    swapped = {(1 - i, e): s for (i, e), s in split_map(chunks).items()}
    assert swapped == reference_splits


def test_split_fractions_are_close_to_params(toy_data, specs, reference_splits):
    counts = np.bincount(list(reference_splits.values()), minlength=3) / sum(SIZES)
    np.testing.assert_allclose(counts, [0.64, 0.16, 0.20], atol=0.02)
    chunks = one_pass(toy_data, specs, split=[0.5, 0.3, 0.2])
    counts = np.bincount(cat(chunks, "split"), minlength=3) / sum(SIZES)
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.02)
    chunks = one_pass(toy_data, specs, split=[0.9, 0.1])
    counts = np.bincount(cat(chunks, "split"), minlength=3) / sum(SIZES)
    assert counts[2] == 0 and counts[0] == pytest.approx(0.9, abs=0.02)
    # each file is split in the same proportions (no file lands in one split)
    for i in range(2):
        sel = [s for (f, _), s in reference_splits.items() if f == i]
        assert np.bincount(sel, minlength=3)[0] / len(sel) == pytest.approx(0.64, abs=0.03)


def test_split_depends_on_the_seed(toy_data, specs, reference_splits):
    other = split_map(one_pass(toy_data, specs, seed=7))
    same = np.mean([other[k] == v for k, v in reference_splits.items()])
    assert same < 0.7  # independent assignments agree about 0.64^2+0.16^2+0.2^2 = 0.47 of the time


def test_split_is_identical_in_another_process(reference_splits):
    """Nothing process-dependent (like Python's salted hash()) may enter the split."""
    entries = np.arange(TOY_SIG_N)
    here = split_of("/some/where/sig.root", entries, [0.64, 0.16, 0.20], seed=42)
    assert [reference_splits[(0, e)] for e in range(TOY_SIG_N)] == here.tolist()
    code = ("import hashlib, numpy as np; from mlaas4hep_lab.data.stream import split_of; "
            f"s = split_of('/else/sig.root', np.arange({TOY_SIG_N}), [0.64, 0.16, 0.20], seed=42); "
            "print(hashlib.sha256(s.astype(np.uint8).tobytes()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(here.astype(np.uint8).tobytes()).hexdigest()


def test_subset(toy_data, specs):
    chunk = one_pass(toy_data, specs, chunk_size=5000)[0]
    parts = [chunk.subset(name) for name in ("train", "validation", "test")]
    assert sum(len(p) for p in parts) == len(chunk)
    for s, part in enumerate(parts):
        assert (part.split == s).all() and len(part) > 0
        assert part.X.shape == (len(part), chunk.X.shape[1]) and len(part.weight) == len(part)
    with pytest.raises(ValueError, match="split must be one of"):
        chunk.subset("training")


# -- shuffling --------------------------------------------------------------------------------------
def test_shuffling_is_deterministic_with_the_seed(toy_data, specs):
    a = one_pass(toy_data, specs, seed=11)
    b = one_pass(toy_data, specs, seed=11)
    c = one_pass(toy_data, specs, seed=12)
    assert keys_of(a) == keys_of(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.X, y.X)
    assert keys_of(a) != keys_of(c)
    assert sorted(keys_of(a)) == sorted(keys_of(c))
    for x, z in zip(a, c):  # the same events per chunk, in another order
        assert sorted(zip(x.file_index.tolist(), x.entry.tolist())) == sorted(
            zip(z.file_index.tolist(), z.entry.tolist()))


def test_shuffle_mixes_files_and_off_keeps_order(toy_data, specs):
    chunk = one_pass(toy_data, specs, chunk_size=1000, shuffle=True)[0]
    fi = chunk.file_index
    assert 0 < np.count_nonzero(fi[:300] == 0) < 300  # signal not all at the front
    assert not (np.diff(chunk.entry[fi == 1]) > 0).all()
    chunk = one_pass(toy_data, specs, chunk_size=1000, shuffle=False)[0]
    np.testing.assert_array_equal(chunk.file_index, [0] * 300 + [1] * 700)
    np.testing.assert_array_equal(chunk.entry, np.r_[0:300, 0:700])


def test_each_pass_is_shuffled_differently(toy_data, specs):
    with ChunkStream(toy_data.files, [1, 0], base_params(toy_data), specs) as stream:
        first, second = keys_of(list(stream)), keys_of(list(stream))
    assert first != second and sorted(first) == sorted(second)


# -- prefetch ---------------------------------------------------------------------------------------
def test_prefetch_gives_identical_chunks(toy_data, specs):
    off = one_pass(toy_data, specs, chunk_size=900, prefetch=0)
    on = one_pass(toy_data, specs, chunk_size=900, prefetch=2)
    assert len(off) == len(on) == 12
    for a, b in zip(off, on):
        for attr in ("X", "mask", "y", "split", "file_index", "entry", "weight"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)
        np.testing.assert_array_equal(a.ids["EventId"], b.ids["EventId"])
        assert a.index == b.index


@pytest.mark.parametrize("prefetch", [0, 1])
def test_passes_in_one_stream_equal_separate_passes(toy_data, specs, prefetch):
    params = base_params(toy_data, chunk_size=1500, prefetch=prefetch)
    with ChunkStream(toy_data.files, [1, 0], params, specs) as stream:
        separate = [(e, c) for e in range(3) for c in stream.iterate(e)]
        together = list(stream.iterate_passes(3))
        resumed = list(stream.iterate_passes(3, 1, 2))  # from chunk 2 of pass 1
    assert [(e, c.index) for e, c in together] == [(e, c.index) for e, c in separate]
    assert [(e, c.index) for e, c in resumed] == [(e, c.index) for e, c in separate if (e, c.index) >= (1, 2)]
    for (_, a), (_, b) in zip(together, separate):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.entry, b.entry)
    assert keys_of([c for e, c in together if e == 0]) != keys_of([c for e, c in together if e == 1])


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "mlaas4hep-prefetch" and t.is_alive()]


def test_stopping_early_stops_the_prefetch_thread(toy_data, specs):
    with ChunkStream(toy_data.files, [1, 0], base_params(toy_data, chunk_size=500, prefetch=2), specs) as s:
        for chunk in s:
            assert len(chunk) == 500
            break
    deadline = time.monotonic() + 10
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not prefetch_threads()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_read_error_during_a_pass_reaches_the_consumer(toy_data, specs, prefetch):
    stream = ChunkStream(toy_data.files, [1, 0], base_params(toy_data, chunk_size=1000, prefetch=prefetch), specs)
    reader = stream.readers[1]
    real_read, calls = reader.read, []

    def failing_read(branches, start, stop):
        calls.append(start)
        if start >= 2800:
            raise InputFileError(f"cannot read entries {start}-{stop} of 'events' in {reader.path}: boom",
                                 reader.path)
        return real_read(branches, start, stop)

    reader.read = failing_read
    got = []
    with stream, pytest.raises(InputFileError, match="boom") as info:
        for chunk in stream:
            got.append(chunk.index)
    assert info.value.path == str(toy_data.bkg)
    assert got == [0, 1, 2, 3]  # chunk 4 reads bkg entries 2800-3500: the pass stops there
    # reads are cluster-aligned blocks; without prefetch nothing is read after the failing read
    failing = [c for c in calls if c >= 2800]
    assert failing and (len(failing) == 1 or prefetch > 0) and calls[-1] == failing[-1]
    deadline = time.monotonic() + 10
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not prefetch_threads()


def test_file_removed_and_replaced_by_garbage_after_opening(toy_copy, specs):
    stream = ChunkStream(toy_copy.files, [1, 0], base_params(toy_copy, chunk_size=2500, prefetch=2), specs)
    # the readers hold the files open; a *new* stream on a corrupted file must fail at once
    toy_copy.bkg.unlink()
    toy_copy.bkg.write_bytes(b"not a root file at all" * 100)
    with stream:
        assert sum(len(c) for c in stream) == sum(SIZES)
    with pytest.raises(InputFileError, match=str(toy_copy.bkg)):
        ChunkStream(toy_copy.files, [1, 0], base_params(toy_copy), specs)


# -- nevts, weights, identifiers --------------------------------------------------------------------
@pytest.mark.parametrize("nevts, want", [(1000, [300, 700]), (1001, [300, 701]), (10, [3, 7]),
                                         (10_000, SIZES), (50_000, SIZES), (-1, SIZES)])
def test_nevts_takes_the_right_number_from_each_file(toy_data, specs, nevts, want):
    chunks = one_pass(toy_data, specs, nevts=nevts, chunk_size=400)
    fi, entry = cat(chunks, "file_index"), cat(chunks, "entry")
    for i, n in enumerate(want):
        np.testing.assert_array_equal(np.sort(entry[fi == i]), np.arange(n))
    assert len(fi) == sum(want)
    assert all(len(c) <= 400 for c in chunks)


def test_weights_identifiers_and_features_are_row_aligned(toy_data, specs):
    chunks = one_pass(toy_data, specs, chunk_size=1500, shuffle=True, normalization="none")
    names = specs.features
    col = {name: names.index(name) for name in ("f_float64", "f_int32", "Jet_pt[0]", "Jet_pt[1]")}
    for chunk in chunks:
        eid = chunk.ids["EventId"]
        assert eid.dtype == np.int64
        for i in (0, 1):
            rows = chunk.file_index == i
            entry = eid[rows] - ID0[i]
            np.testing.assert_array_equal(entry, chunk.entry[rows])
            raw = toy_data.raw_of(i)
            np.testing.assert_array_equal(chunk.weight[rows], raw["Weight"][entry])
            np.testing.assert_array_equal(chunk.X[rows, col["f_float64"]], raw["f_float64"][entry].astype(np.float32))
            np.testing.assert_array_equal(chunk.X[rows, col["f_int32"]], raw["f_int32"][entry].astype(np.float32))
            lead = raw["Jet_pt"][entry]
            n_jets = np.asarray([len(j) for j in lead.tolist()])
            # no jet: a tenth of the range below the smallest jet pt (normalization none)
            pad = specs.minv["Jet_pt"] - 0.1 * (specs.maxv["Jet_pt"] - specs.minv["Jet_pt"])
            first = np.asarray([j[0] if len(j) else pad for j in lead.tolist()], np.float32)
            np.testing.assert_array_equal(chunk.X[rows, col["Jet_pt[0]"]], first)
            np.testing.assert_array_equal(chunk.mask[rows, col["Jet_pt[1]"]], n_jets > 1)
            np.testing.assert_array_equal(chunk.X[rows, names.index("len(Jet_pt)")], n_jets)
    assert chunks[0].weight.dtype == np.float32


def test_features_are_normalised_with_the_specs(toy_data, specs):
    chunks = one_pass(toy_data, specs, chunk_size=5000)
    assert all(c.mask.shape == c.X.shape and c.mask.dtype == bool for c in chunks)  # the mask on every chunk
    X, mask = cat(chunks, "X"), cat(chunks, "mask")
    assert X.shape == (sum(SIZES), specs.n_features)
    assert X[mask].min() >= 0 and X.max() <= 1 + 1e-6  # min-max over exactly these events
    met = specs.features.index("MET")
    frac = 1 - mask[:, met].mean()
    assert 0.15 < frac < 0.25  # the -999 sentinels are masked
    jagged = np.arange(specs.n_features) >= len(specs.fkeys)
    # the default padding: jagged slots below every real value; a flat branch's sentinels keep 0
    assert (X[:, jagged][~mask[:, jagged]] == np.float32(-0.1)).all()
    assert (X[:, ~jagged][~mask[:, ~jagged]] == 0).all()
    counts = [specs.features.index(f"len({name})") for name in ("Jet_pt", "Trk_nhits")]
    assert mask[:, counts].all() and X[:, counts].min() == 0 and X[:, counts].max() == 1


def test_padding_zeros_streams_the_layout_of_old_specs(toy_data):
    params = base_params(toy_data, padding="zeros")
    specs = compute_specs(toy_data.files, params, progress=False)
    assert specs.features == [f for f in specs.features if not f.startswith(("len(", "mask("))]
    with ChunkStream(toy_data.files, [1, 0], params, specs) as stream:
        chunks = list(stream)
    X, mask = cat(chunks, "X"), cat(chunks, "mask")
    assert X.min() >= 0 and (X[~mask] == 0).all() and (~mask).any()


def test_the_specs_fix_the_padding_and_a_different_param_is_reported(toy_data, specs, caplog):
    with caplog.at_level("WARNING", logger="mlaas4hep_lab.data.stream"):
        stream = ChunkStream(toy_data.files, [1, 0], base_params(toy_data, padding="mask"), specs)
    stream.close()
    assert stream.feature_names == specs.features
    assert "padding 'multiplicity'" in caplog.text and "'mask'" in caplog.text and "recompute" in caplog.text


# -- configuration errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [[1], [1, 0, 0], []])
def test_labels_count_mismatch(toy_data, specs, labels):
    with pytest.raises(LabelsError) as info:
        ChunkStream(toy_data.files, labels, base_params(toy_data), specs)
    assert f"{len(labels)} labels for 2 files" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_specs_of_other_branches_are_refused(toy_data, specs):
    with pytest.raises(StaleSpecsError, match="recompute them"):
        ChunkStream(toy_data.files, [1, 0], base_params(toy_data, exclude_branches="f_int8"), specs)


def test_stream_with_preprocessing(toy_data):
    from mlaas4hep_lab.data.preprocess import Preproc

    params = base_params(toy_data, chunk_size=2000)
    pre = Preproc.from_json({"flat_cut": {"f_float32": {"cut": "f_float32 > 0.5", "remove": "False"}}})
    specs = compute_specs(toy_data.files, params, pre, progress=False)
    with ChunkStream(toy_data.files, [1, 0], params, specs, pre) as stream:
        chunks = list(stream)
        assert stream.stats["read"] == sum(SIZES)
    for i in (0, 1):
        kept = np.flatnonzero(toy_data.raw_of(i)["f_float32"] > 0.5)
        fi, entry = cat(chunks, "file_index"), cat(chunks, "entry")
        np.testing.assert_array_equal(np.sort(entry[fi == i]), kept)
    assert sum(len(c) for c in chunks) == specs.events["total"]
    assert sum(c.read_events for c in chunks) == sum(SIZES)
