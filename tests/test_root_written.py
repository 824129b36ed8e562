"""TreeReader on files written by ROOT itself (tests/data/make_root_files.py, ROOT 6.40).

ROOT-written ntuples (CMS MiniAOD style) keep jagged data in ``std::vector<T>`` branches, unlike the
counted arrays uproot writes; the numbers to compare with were computed by the generator script and
cross-checked there with ROOT's RDataFrame (root_written_expected.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from mlaas4hep_lab.data.reader import TreeReader, inspect_file
from mlaas4hep_lab.errors import MLaaSError

DATA = Path(__file__).resolve().parent / "data"
TTREE = DATA / "root_written.root"
RNTUPLE = DATA / "root_written_rntuple.root"
EXPECTED = json.loads((DATA / "root_written_expected.json").read_text())
TREE = EXPECTED["tree"]  # "ntuple/tree"
BRANCHES = EXPECTED["branches"]
FLAT = [name for name, b in BRANCHES.items() if b["kind"] == "flat"]
JAGGED = [name for name, b in BRANCHES.items() if b["kind"] == "jagged"]
VECTORS = [name for name in JAGGED if BRANCHES[name]["typename"].startswith("std::vector")]


@pytest.fixture(scope="module")
def reader():
    r = TreeReader(str(TTREE), TREE)
    yield r
    r.close()


@pytest.fixture(scope="module")
def rntuple_reader():
    r = TreeReader(str(RNTUPLE), TREE)
    yield r
    r.close()


@pytest.fixture(scope="module")
def everything(reader):
    return reader.read(list(BRANCHES), 0, reader.num_entries)


def values_of(array: ak.Array, jagged: bool) -> np.ndarray:
    """All numbers of one field as a 1-D numpy array (flattened for jagged fields)."""
    return ak.to_numpy(ak.flatten(array, axis=1) if jagged else array)


def assert_stats(array: ak.Array, name: str, want: dict, where: str) -> None:
    info = BRANCHES[name]
    jagged = info["kind"] == "jagged"
    values = values_of(array, jagged)
    msg = f"{name} ({where})"
    if values.dtype.kind == "f":
        np.testing.assert_allclose(np.sum(values, dtype=np.float64), want["sum"], rtol=1e-12, err_msg=msg)
        np.testing.assert_allclose([values.min(), values.max()], [want["min"], want["max"]], rtol=1e-12,
                                   err_msg=msg)
    else:
        assert int(np.sum(values.astype(np.int64))) == want["sum"], msg
        assert [int(values.min()), int(values.max())] == [want["min"], want["max"]], msg
    if jagged:
        lengths = ak.to_numpy(ak.num(array, axis=1))
        assert int(lengths.sum()) == want["count"], msg
        assert int(lengths.max()) == want["max_len"], msg
        assert int(lengths.min()) == want["min_len"], msg


def test_expected_json_is_consistent():
    assert EXPECTED["num_entries"] == 2000 and TREE == "ntuple/tree"
    assert set(VECTORS) == {"jet_pt", "jet_charge", "jet_energy", "jet_btag"}
    assert "pt" in JAGGED and "n" in FLAT
    assert set(EXPECTED["skipped"]) == {"label", "jet_constituents"}


def test_num_entries(reader, rntuple_reader):
    assert reader.num_entries == EXPECTED["num_entries"]
    assert rntuple_reader.num_entries == EXPECTED["num_entries"]


@pytest.mark.parametrize("name", VECTORS + ["pt"])
def test_vector_and_counted_branches_are_jagged_with_right_dtype(reader, name):
    info = reader.branches[name]
    assert info.name == name
    assert info.kind == "jagged"
    assert info.dtype == np.dtype(BRANCHES[name]["dtype"])
    if name in VECTORS:
        assert "vector" in info.typename


@pytest.mark.parametrize("name", FLAT)
def test_flat_branches_have_right_dtype(reader, name):
    info = reader.branches[name]
    assert info.kind == "flat"
    assert info.dtype == np.dtype(BRANCHES[name]["dtype"]), (info.dtype, BRANCHES[name]["typename"])


def test_non_numeric_branches_are_skipped_with_reason(reader):
    for name in EXPECTED["skipped"]:
        assert name in reader.skipped, f"{name} should be skipped; skipped = {reader.skipped}"
        assert name not in reader.branches
        assert isinstance(reader.skipped[name], str) and reader.skipped[name]
    assert set(reader.branches) == set(BRANCHES)


def test_reading_a_skipped_or_unknown_branch_is_an_error(reader):
    with pytest.raises(MLaaSError):
        reader.read(["jet_constituents"], 0, 10)
    with pytest.raises(MLaaSError):
        reader.read(["jet_ptt"], 0, 10)


def test_read_gives_records_with_numeric_fields(everything):
    assert everything.fields == list(BRANCHES)
    assert len(everything) == EXPECTED["num_entries"]
    for name in BRANCHES:
        want = np.dtype(BRANCHES[name]["dtype"])
        field = everything[name]
        if BRANCHES[name]["kind"] == "jagged":
            assert field.ndim == 2 and str(ak.type(field).content).startswith("var * "), name
        else:
            assert field.ndim == 1, name
        assert values_of(field, BRANCHES[name]["kind"] == "jagged").dtype == want, name


@pytest.mark.parametrize("name", list(BRANCHES))
def test_sums_min_max_lengths_match_root(everything, name):
    assert_stats(everything[name], name, BRANCHES[name], "whole tree")


def test_first_entries_match_root(everything):
    for name, info in BRANCHES.items():
        got = everything[name][: len(info["head"])].to_list()
        if info["dtype"] == "bool":
            got = [[int(v) for v in x] if isinstance(x, list) else int(x) for x in got]
        if info["kind"] == "jagged":
            for g, w in zip(got, info["head"], strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-7, err_msg=name)
        else:
            np.testing.assert_allclose(got, info["head"], rtol=1e-7, err_msg=name)


def test_chunked_reads_match_root(reader):
    """Entry ranges that cut through ROOT's clusters (AutoFlush 300) give ROOT's per-range numbers."""
    names = list(BRANCHES)
    ranges = BRANCHES["jet_pt"]["ranges"]
    for i, rng in enumerate(ranges):
        chunk = reader.read(names, rng["start"], rng["stop"])
        assert len(chunk) == rng["stop"] - rng["start"]
        for name in names:
            assert_stats(chunk[name], name, BRANCHES[name]["ranges"][i], f"entries {rng['start']}-{rng['stop']}")


def test_small_chunks_concatenate_to_whole(reader, everything):
    names = VECTORS + ["pt", "met", "event"]
    parts = [reader.read(names, start, start + 333) for start in range(0, reader.num_entries, 333)]
    assert [len(p) for p in parts][-1] == reader.num_entries % 333
    assert ak.array_equal(ak.concatenate(parts), everything[names])


def test_rntuple_written_by_root(rntuple_reader):
    names = EXPECTED["files"][RNTUPLE.name]["branches"]
    assert set(rntuple_reader.branches) == set(names)
    for name in names:
        info = rntuple_reader.branches[name]
        assert (info.kind, info.dtype) == (BRANCHES[name]["kind"], np.dtype(BRANCHES[name]["dtype"])), name
    data = rntuple_reader.read(names, 0, rntuple_reader.num_entries)
    for name in names:
        assert_stats(data[name], name, BRANCHES[name], "RNTuple")


def test_rntuple_and_ttree_agree(reader, rntuple_reader):
    names = EXPECTED["files"][RNTUPLE.name]["branches"]
    a = reader.read(names, 150, 1650)
    b = rntuple_reader.read(names, 150, 1650)
    for name in names:
        assert ak.array_equal(a[name], b[name]), name


def test_inspect_file_describes_the_tree():
    text = inspect_file(str(TTREE), TREE)
    for word in ("jet_pt", "jet_btag", "pt", "met", "jagged", "flat", "jet_constituents", "label", "2000"):
        assert word in text, word
