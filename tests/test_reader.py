"""Reading trees: branch classification, TTree/RNTuple values, selection, and errors for bad inputs.

Also covers data/sources.py (files.txt, labels.txt, redirector, opening files).
"""

from __future__ import annotations

import os
import shutil
import threading

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import TOY_COUNTERS, TOY_FLAT, TOY_JAGGED, TOY_NUMERIC_TYPES, TOY_SIG_N

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.reader import TreeReader, inspect_file, open_readers, select_branches
from mlaas4hep_lab.errors import (
    BranchNotFoundError,
    ConfigError,
    InputFileError,
    LabelsError,
    MLaaSError,
    TreeNotFoundError,
)


def within(seconds: float, fn):
    """Run ``fn`` in a thread; fail if it does not finish in time (a hang), else return or raise its outcome."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: B036 - handed back to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not finish within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def sig_reader(toy_data):
    with TreeReader(str(toy_data.sig), "events") as r:
        yield r


@pytest.fixture(scope="module")
def rntuple_reader(toy_data):
    with TreeReader(str(toy_data.rntuple), "events") as r:
        yield r


# -- classification ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["ttree", "rntuple"])
@pytest.mark.parametrize("typ", TOY_NUMERIC_TYPES)
def test_flat_branch_of_every_numeric_type(sig_reader, rntuple_reader, which, typ):
    reader = sig_reader if which == "ttree" else rntuple_reader
    info = reader.branches[f"f_{typ}"]
    assert info.kind == "flat"
    assert info.dtype == np.dtype(typ)
    assert info.fixed_length is None


@pytest.mark.parametrize("which", ["ttree", "rntuple"])
def test_jagged_branches(sig_reader, rntuple_reader, which):
    reader = sig_reader if which == "ttree" else rntuple_reader
    assert (reader.branches["Jet_pt"].kind, reader.branches["Jet_pt"].dtype) == ("jagged", np.dtype("float32"))
    assert (reader.branches["Trk_nhits"].kind, reader.branches["Trk_nhits"].dtype) == ("jagged", np.dtype("int32"))
    assert reader.branches["Jet_pt"].fixed_length is None


def test_kinds_of_the_ttree(sig_reader):
    kinds = sig_reader.kinds()
    expected = {name: "flat" for name in (*TOY_FLAT, "EventId", "Weight", "MET", *TOY_COUNTERS)}
    expected |= {name: "jagged" for name in TOY_JAGGED}
    assert kinds == expected
    assert sig_reader.num_entries == TOY_SIG_N
    assert not sig_reader.is_rntuple and sig_reader.skipped == {}


def test_rntuple_is_recognised(rntuple_reader):
    assert rntuple_reader.is_rntuple
    assert rntuple_reader.num_entries == TOY_SIG_N
    assert "RNTuple" in repr(rntuple_reader)


def test_fixed_size_array_is_jagged_with_known_length(toy_write_tree):
    path = toy_write_tree({"fix": np.arange(12, dtype=np.float32).reshape(4, 3), "x": np.arange(4.0)})
    with TreeReader(str(path)) as r:
        assert (r.branches["fix"].kind, r.branches["fix"].fixed_length) == ("jagged", 3)
        assert r.read(["fix"], 1, 3)["fix"].tolist() == [[3, 4, 5], [6, 7, 8]]


def test_non_numeric_fields_are_skipped_with_a_reason(toy_write_tree):
    path = toy_write_tree({"x": np.arange(3.0), "s": ak.Array(["a", "bb", "c"]),
                           "nested": ak.Array([[[1.0], []], [], [[2.0, 3.0]]])}, rntuple=True)
    with TreeReader(str(path)) as r:
        assert list(r.branches) == ["x"]
        assert "string" in r.skipped["s"] and "nested" in r.skipped["nested"]
        with pytest.raises(ConfigError, match="cannot be used: strings"):
            r.check(["s"])


# -- values -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("start, stop", [(0, TOY_SIG_N), (950, 2050), (2990, 5000)])
def test_ttree_values_equal_what_was_written(sig_reader, toy_data, start, stop):
    raw = toy_data.raw["sig"]
    names = [*TOY_FLAT, "EventId", "MET", *TOY_JAGGED]
    arrays = sig_reader.read(names, start, stop)
    assert len(arrays) == min(stop, TOY_SIG_N) - start
    for name in names:
        got = arrays[name]
        want = raw[name][start:stop]
        if name in TOY_JAGGED:
            assert ak.to_list(got) == ak.to_list(want), name
        else:
            np.testing.assert_array_equal(ak.to_numpy(got), want, err_msg=name)
            assert ak.to_numpy(got).dtype == np.asarray(want).dtype, name


def test_rntuple_reads_the_same_values_as_the_ttree(sig_reader, rntuple_reader):
    names = sorted(rntuple_reader.branches)
    assert set(names) == set(sig_reader.branches) - set(TOY_COUNTERS)
    a = sig_reader.read(names, 100, 2900)
    b = rntuple_reader.read(names, 100, 2900)
    assert a.fields == b.fields == names
    for name in names:
        assert ak.to_list(a[name]) == ak.to_list(b[name]), name
        assert ak.type(a[name]) == ak.type(b[name]), name


def test_read_keeps_the_requested_order_once(sig_reader):
    arrays = sig_reader.read(["MET", "EventId", "Jet_pt", "MET"], 0, 5)
    assert arrays.fields == ["MET", "EventId", "Jet_pt"]


def test_iterate_covers_every_entry_once(sig_reader, toy_data):
    chunks = list(sig_reader.iterate(["EventId"], step=700))
    assert [start for start, _ in chunks] == list(range(0, TOY_SIG_N, 700))
    ids = np.concatenate([ak.to_numpy(c["EventId"]) for _, c in chunks])
    np.testing.assert_array_equal(ids, toy_data.raw["sig"]["EventId"])


# -- selection --------------------------------------------------------------------------------------
AVAILABLE = ["EventId", "Jet_pt", "MET", "nJet_pt", "Trk_nhits", "nTrk_nhits", "f_uint8", "f_uint16", "f_int8"]


def test_select_branches_with_wildcards():
    assert select_branches(AVAILABLE, ["f_uint*", "MET"]) == ["f_uint8", "f_uint16", "MET"]
    assert select_branches(AVAILABLE, ["*Jet_pt"]) == ["Jet_pt", "nJet_pt"]
    assert select_branches(AVAILABLE, ["f_?int8"]) == ["f_uint8"]
    assert select_branches(AVAILABLE, [], ["n*", "f_*"]) == ["EventId", "Jet_pt", "MET", "Trk_nhits"]
    assert select_branches(AVAILABLE) == AVAILABLE
    assert select_branches(AVAILABLE, ["MET", "M*"]) == ["MET"]  # no duplicates
    assert select_branches(AVAILABLE, ["*"], ["*"]) == []


def test_misspelled_selected_branch_suggests_the_right_name():
    with pytest.raises(BranchNotFoundError) as info:
        select_branches(AVAILABLE, ["Jet_ptt"], where="tree 'events' of sig.root")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, MLaaSError)
    assert err.branch == "Jet_ptt"
    msg = str(err)
    assert "did you mean 'Jet_pt'" in msg
    assert "selected_branches" in msg and "sig.root" in msg
    assert not msg.startswith('"')  # str() of the KeyError is the message, not its repr


def test_misspelled_excluded_branch_is_an_error():
    with pytest.raises(BranchNotFoundError, match="exclude_branches.*did you mean 'MET'"):
        select_branches(AVAILABLE, [], ["MTE"])


def test_check_and_read_of_a_misspelled_branch(sig_reader, toy_data):
    with pytest.raises(BranchNotFoundError) as info:
        sig_reader.check(["f_float32", "Jet_Pt"])
    assert "did you mean 'Jet_pt'" in str(info.value)
    assert str(toy_data.sig) in str(info.value)
    with pytest.raises(KeyError):
        sig_reader.read(["MET", "met_pt"], 0, 10)


# -- errors -----------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "no_such_file.root"
    with pytest.raises(InputFileError) as info:
        TreeReader(str(path), "events")
    assert isinstance(info.value, OSError)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_open_readers_keeps_the_order_and_reports_the_first_failing_file(toy_data, toy_write_tree, tmp_path,
                                                                        monkeypatch):
    """Files opened by threads at once (remote opens are round trips): the readers come in the files' order; on
    a failure the error is the first failing file's, as opening one after another would give, and every reader
    already opened is closed."""
    files = [str(toy_data.bkg), str(toy_data.sig), str(toy_data.rntuple)] * 3
    readers = open_readers(files, "events")
    try:
        assert [r.path for r in readers] == files
        assert [r.num_entries for r in readers] == [TreeReader(f, "events").num_entries for f in files]
    finally:
        for r in readers:
            r.close()
    closed = []
    real_close = TreeReader.close
    monkeypatch.setattr(TreeReader, "close", lambda self: (closed.append(self.path), real_close(self)))
    other_tree = str(toy_write_tree({"x": np.arange(3.0)}, tree="Events"))
    missing = str(tmp_path / "missing.root")
    with pytest.raises(TreeNotFoundError, match="did you mean 'Events'"):
        open_readers([str(toy_data.sig), other_tree, str(toy_data.bkg), missing], "events")
    assert sorted(closed) == sorted([str(toy_data.sig), str(toy_data.bkg)])
    with pytest.raises(InputFileError, match="not found"):
        open_readers([missing, other_tree], "events")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InputFileError, match="is a directory"):
        TreeReader(str(tmp_path), "events")


def test_missing_tree_lists_trees_with_a_close_match(toy_write_tree):
    path = toy_write_tree({"x": np.arange(3.0)}, tree="Events")
    with pytest.raises(TreeNotFoundError) as info:
        TreeReader(str(path), "events")
    err = info.value
    assert isinstance(err, KeyError)
    assert err.available == ["Events"]
    msg = str(err)
    assert "did you mean 'Events'" in msg and str(path) in msg and "Trees in the file: Events" in msg


def test_tree_in_a_directory(toy_write_tree):
    path = toy_write_tree({"x": np.arange(3.0)}, tree="boostedAk8/events")
    with TreeReader(str(path), "boostedAk8/events") as r:
        assert r.read(["x"], 0, 3)["x"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TreeNotFoundError, match="Trees in the file: boostedAk8/events[.]"):
        TreeReader(str(path), "events")


def test_corrupt_file_random_bytes(tmp_path):
    path = tmp_path / "random.root"
    path.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(InputFileError) as info:
        within(20, lambda: TreeReader(str(path), "events"))
    msg = str(info.value)
    assert str(path) in msg and "not a ROOT file" in msg


def test_truncated_file(toy_data, tmp_path):
    path = tmp_path / "truncated.root"
    data = toy_data.bkg.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    def open_and_read_everything():
        with TreeReader(str(path), "events") as r:
            names = list(r.branches)
            for _start, _chunk in r.iterate(names, step=r.num_entries):
                pass

    with pytest.raises(InputFileError) as info:
        within(20, open_and_read_everything)
    msg = str(info.value)
    assert str(path) in msg and ("truncated" in msg or "corrupt" in msg)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.root"
    path.write_bytes(b"")
    with pytest.raises(InputFileError, match=str(path)):
        within(20, lambda: TreeReader(str(path), "events"))


# -- inspect ----------------------------------------------------------------------------------------
def test_inspect_ttree(toy_data):
    text = inspect_file(str(toy_data.sig))
    assert f"TTree 'events' in {toy_data.sig}: 3000 entries, 16 flat and 2 jagged numeric branches" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines()[1:] if line.strip()}
    for name in (*TOY_FLAT, "EventId", "Weight", "MET", *TOY_COUNTERS):
        assert lines[name][-1] == "flat", name
    assert lines["Jet_pt"][-2:] == ["float32", "jagged"]
    assert lines["Trk_nhits"][-2:] == ["int32", "jagged"]
    assert lines["f_uint64"][-2:] == ["uint64", "flat"]


def test_inspect_rntuple_and_skipped(toy_data, toy_write_tree):
    text = inspect_file(str(toy_data.rntuple), "events")
    assert text.startswith(f"RNTuple 'events' in {toy_data.rntuple}: 3000 entries, 14 flat and 2 jagged")
    path = toy_write_tree({"x": np.arange(3.0), "s": ak.Array(["a", "bb", "c"])}, rntuple=True)
    text = inspect_file(str(path))
    assert "1 skipped" in text and "skipped: strings" in text


def test_inspect_file_without_trees(tmp_path):
    path = tmp_path / "hist.root"
    with uproot.recreate(path) as f:
        f["h"] = np.histogram([1.0, 2.0, 3.0])
    assert inspect_file(str(path)) == f"{path}: no TTree or RNTuple found"


# -- sources: files.txt, labels.txt, redirector ---------------------------------------------------
def test_files_txt_comments_blank_lines_and_relative_paths(toy_data):
    assert sources.read_file_list(toy_data.files_txt) == toy_data.files


def test_files_txt_read_from_another_working_directory(toy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(toy_data.files_txt, tmp_path)
    assert sources.read_file_list(rel) == toy_data.files


def test_files_txt_absolute_paths_urls_and_redirector(tmp_path, toy_data):
    files_txt = tmp_path / "files.txt"
    files_txt.write_text(f"{toy_data.sig}\nroot://eos.cern.ch//eos/a.root\nhttps://host/b.root\n"
                         "/store/user/x/missing.root\n")
    got = sources.read_file_list(files_txt, redirector="root://cms-xrd-global.cern.ch/")
    assert got[:3] == [str(toy_data.sig), "root://eos.cern.ch//eos/a.root", "https://host/b.root"]
    # an existing local file is never redirected; a missing one goes to the redirector
    assert got[3].startswith("root://cms-xrd-global.cern.ch/")


def test_redirector_prefix_gives_an_absolute_xrootd_path(tmp_path):
    # ARCHITECTURE.md section 3 and resolve_path's docstring: root://host + /store/... -> root://host//store/...
    got = sources.resolve_path("/store/user/lgiommi/tt.root", tmp_path, "root://xrootd.ba.infn.it")
    assert got == "root://xrootd.ba.infn.it//store/user/lgiommi/tt.root"


def test_missing_path_without_redirector_stays_local(tmp_path):
    assert sources.resolve_path("x.root", tmp_path) == str(tmp_path / "x.root")
    assert sources.is_remote("root://h//x") and sources.is_remote("https://h/x")
    assert not sources.is_remote("file:///tmp/x.root") and not sources.is_remote("/tmp/x.root")


def test_labels(toy_data, tmp_path):
    assert sources.read_labels(toy_data.labels_txt, 2) == [1.0, 0.0]
    with pytest.raises(LabelsError) as info:
        sources.read_labels(toy_data.labels_txt, 3)
    assert "2 labels for 3 files" in str(info.value) and str(toy_data.labels_txt) in str(info.value)
    bad = tmp_path / "labels.txt"
    bad.write_text("1\nsignal\n")
    with pytest.raises(LabelsError, match="label 2 is 'signal'"):
        sources.read_labels(bad)


def test_empty_or_missing_lists(tmp_path):
    empty = tmp_path / "files.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InputFileError, match="lists nothing"):
        sources.read_file_list(empty)
    with pytest.raises(InputFileError, match="not found"):
        sources.read_labels(tmp_path / "labels.txt")


def test_file_info_tracks_size_and_mtime(toy_data, tmp_path):
    path = tmp_path / "copy.root"
    shutil.copy(toy_data.sig, path)
    info = sources.file_info(str(path))
    assert info.size == path.stat().st_size
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert sources.file_info(str(path)).mtime == pytest.approx(1_000_000_000)
