"""Tree layouts physicists have: split C++ objects (Delphes, Bacon, CMS), branch names with ``.`` and ``/``,
RNTuple record collections; and ``inspect`` on what cannot be used.

Two kinds of files:

* ``tests/data/split_objects.root``, written by ROOT itself (tests/data/make_split_objects.py: uproot cannot
  write split objects), with expected numbers computed from the generating formulas and cross-checked
  there with ROOT's RDataFrame (split_objects_expected.json);
* trees and RNTuples the tests write with uproot: branches named ``Muon.PT`` and ``Info/runNum`` (the
  names split objects get), and RNTuples with record collections (``{"Jet": ak.zip(...)}``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep_lab.cli import main
from mlaas4hep_lab.data.expressions import compile_expression
from mlaas4hep_lab.data.reader import BlockReader, TreeReader, inspect_file
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.errors import BranchNotFoundError
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs

DATA = Path(__file__).resolve().parent / "data"
SPLIT = DATA / "split_objects.root"
EXPECTED = json.loads((DATA / "split_objects_expected.json").read_text())
LEAVES = EXPECTED["events"]["leaves"]
RECORDS = EXPECTED["records"]["leaves"]
SKIPPED = EXPECTED["events"]["skipped"]
N = EXPECTED["num_entries"]


@pytest.fixture(scope="module")
def split_reader():
    r = TreeReader(str(SPLIT), "events")
    yield r
    r.close()


@pytest.fixture(scope="module")
def records_reader():
    r = TreeReader(str(SPLIT), "records")
    yield r
    r.close()


def numbers(array: ak.Array, kind: str) -> np.ndarray:
    return ak.to_numpy(ak.flatten(array, axis=1) if kind == "jagged" else array)


def assert_matches(array: ak.Array, want: dict, name: str) -> None:
    values = numbers(array, want["kind"])
    assert values.dtype == np.dtype(want["dtype"]), name
    if values.dtype.kind == "f":
        assert np.sum(values, dtype=np.float64) == pytest.approx(want["sum"], rel=1e-12), name
    else:
        assert int(np.sum(values.astype(np.float64 if values.dtype == np.uint64 else np.int64))) == want["sum"], name
    assert [values.min().item(), values.max().item()] == [want["min"], want["max"]], name
    if want["kind"] == "jagged":
        lengths = ak.to_numpy(ak.num(array, axis=1))
        assert [int(lengths.sum()), int(lengths.max())] == [want["count"], want["max_len"]], name
    assert ak.to_list(array[:4]) == want["head"], name


# --------------------------------------------------------------------------------------------------
# split objects written by ROOT


def test_every_numeric_leaf_of_split_objects_is_a_branch_with_its_kind(split_reader):
    assert split_reader.kinds() == {name: leaf["kind"] for name, leaf in LEAVES.items()}
    assert set(split_reader.skipped) == set(SKIPPED)
    for name, leaf in LEAVES.items():
        assert split_reader.branches[name].dtype == np.dtype(leaf["dtype"]), name


def test_split_object_values_equal_what_root_wrote(split_reader):
    arrays = split_reader.read(list(LEAVES), 0, N)
    assert arrays.fields == list(LEAVES)
    for name, want in LEAVES.items():
        assert_matches(arrays[name], want, name)


def test_member_names_that_clash_keep_their_full_path(split_reader):
    # Bacon-style members have bare names: Gen's 'weight' beside the top-level 'weight'
    both = split_reader.read(["weight", "Gen/weight"], 0, N)
    assert_matches(both["weight"], LEAVES["weight"], "weight")
    assert_matches(both["Gen/weight"], LEAVES["Gen/weight"], "Gen/weight")


def test_chunked_reads_across_baskets_equal_one_read(split_reader):
    names = ["Muon.PT", "Info/evtNum", "Photon.eta", "Hold/trkPt"]
    whole = split_reader.read(names, 0, N)
    blocks = BlockReader(split_reader, names, max_bytes=4_000)  # several blocks over the 100-entry baskets
    pieces = [a for start in range(0, N, 70) for _, a in blocks.read(start, min(start + 70, N))]
    assert len(pieces) > N // 70
    assert ak.to_list(ak.concatenate(pieces)) == ak.to_list(whole)


def test_uproots_other_spellings_point_to_the_name_used(split_reader):
    for alias, name in (("Muon/Muon.PT", "Muon.PT"), ("runNum", "Info/runNum"), ("Photon/Photon.pt", "Photon.pt")):
        assert split_reader.aliases[alias] == name
        with pytest.raises(BranchNotFoundError, match=f"called '{name}' here"):
            split_reader.check([alias], "params 'selected_branches'")


def test_rntuple_records_written_by_root_become_branches(records_reader):
    assert records_reader.kinds() == {name: leaf["kind"] for name, leaf in RECORDS.items()}
    arrays = records_reader.read(list(RECORDS), 0, N)
    for name, want in RECORDS.items():
        assert_matches(arrays[name], want, name)


def test_inspect_shows_types_of_skipped_branches_and_flags_unreadable_ones(capsys):
    assert main(["inspect", str(SPLIT)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if line and line.split()[0] in SKIPPED}
    assert set(rows) == set(SKIPPED)
    for name, info in SKIPPED.items():
        assert info["typename"] in rows[name], rows[name]
        assert ("UNREADABLE" in rows[name]) == (not info["readable"]), rows[name]
    assert "DeserializationError" in rows["HoldUnsplit"]
    assert "member-wise" in rows["PhotonUnsplit"]
    assert "strings" in rows["tag"] and "char*" in rows["tag"]
    assert "2 that uproot cannot read" in text
    assert "RNTuple 'records'" in text and "Photon.pt" in text


def test_expressions_on_split_object_names(split_reader):
    arrays = split_reader.read(list(LEAVES), 0, N)
    names = split_reader.kinds()
    plain = compile_expression("count(Muon.PT > 20 && Muon.Eta < 1) + `Info/rhoIso`", names=names)
    quoted = compile_expression("count(`Muon.PT` > 20 and `Muon.Eta` < 1) + `Info/rhoIso`", names=names)
    assert plain.names == quoted.names == {"Muon.PT", "Muon.Eta", "Info/rhoIso"}
    pt, eta = arrays["Muon.PT"], arrays["Muon.Eta"]
    want = ak.to_numpy(ak.sum((pt > 20) & (eta < 1), axis=1)) + ak.to_numpy(arrays["Info/rhoIso"])
    np.testing.assert_allclose(plain(arrays), want)
    np.testing.assert_allclose(quoted(arrays), want)
    with pytest.raises(BranchNotFoundError, match=r"did you mean `Info/evtNum`, `Info/hasGoodPV`, `Info/rhoIso`"):
        compile_expression("Info/runNum", names=names)


@pytest.fixture(scope="module")
def split_copies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    files = [shutil.copy(SPLIT, folder / "sig.root"), shutil.copy(SPLIT, folder / "bkg.root")]
    return [str(f) for f in files]


SPLIT_PREPROC = {
    "new_branch": {"nhard": {"def": "count(Muon.PT > 20 && `Muon.Eta` < 1)", "type": "flat"}},
    "flat_cut": {"Info/rhoIso": {"cut": "`Info/rhoIso` >= 1 || !`Info/hasGoodPV`", "remove": "False"}},
    "jagged_cut": {"Photon.pt": {"cut": ["Photon.pt > 6", "all"], "remove": "False"}},
}


def test_specs_and_stream_on_split_objects(split_copies, split_reader):
    inputs = load_inputs(split_copies, [1, 0], {"branch": "events", "chunk_size": 120, "verbose": 0},
                         SPLIT_PREPROC)
    specs = ensure_specs(inputs, progress=False)
    arrays = split_reader.read(list(LEAVES), 0, N)
    keep = ((ak.to_numpy(arrays["Info/rhoIso"]) >= 1) | ~ak.to_numpy(arrays["Info/hasGoodPV"])) & ak.to_numpy(
        ak.all(arrays["Photon.pt"] > 6, axis=1))
    assert specs.events["total"] == 2 * int(keep.sum()) > 0
    for name in ("Info/runNum", "Gen/weight", "Muon.PT", "Hold/trkPt", "nhard"):
        assert name in specs.fkeys + specs.jkeys
    pt = ak.flatten(arrays["Muon.PT"][keep])
    assert [specs.minv["Muon.PT"], specs.maxv["Muon.PT"]] == [float(ak.min(pt)), float(ak.max(pt))]
    assert specs.jdim["Muon.PT"] == int(ak.max(ak.num(arrays["Muon.PT"][keep])))
    assert "Muon.PT[0]" in specs.features and "Info/runNum" in specs.features

    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
        chunks = list(stream)
    rho = specs.features.index("Info/rhoIso")
    for chunk in chunks:
        mine = chunk.file_index == 0
        raw = ak.to_numpy(arrays["Info/rhoIso"])[chunk.entry[mine]]
        lo, hi = specs.minv["Info/rhoIso"], specs.maxv["Info/rhoIso"]
        np.testing.assert_allclose(chunk.X[mine, rho], (raw - lo) / (hi - lo), rtol=1e-6, atol=1e-7)
    assert sum(len(c) for c in chunks) == specs.events["total"]


# --------------------------------------------------------------------------------------------------
# names with dots and slashes, written by uproot


def dotted_events(n: int, seed: int, shift: float) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n)
    return {
        "Muon.PT": ak.unflatten(rng.exponential(30.0, counts.sum()).astype(np.float32) + 10 * shift, counts),
        "Info/runNum": rng.integers(1, 5, n).astype(np.int32),
        "MET.MET": (rng.exponential(40.0, n) + 20 * shift).astype(np.float32),
        "Jet_pt": rng.normal(50 + 5 * shift, 10, n),
    }


def write_dotted(path: Path, data: dict) -> Path:
    with uproot.recreate(path) as f:
        f.mktree("events", {k: ("var * float32" if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()},
                 counter_name=lambda name: "Muon_size")
        f["events"].extend(data)
    return path


@pytest.fixture(scope="module")
def dotted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dotted")
    raw = {"sig": dotted_events(1500, 1, 1.0), "bkg": dotted_events(2500, 2, 0.0)}
    files = [write_dotted(folder / f"{k}.root", v) for k, v in raw.items()]
    return [str(f) for f in files], raw


def test_branches_named_with_dots_and_slashes(dotted):
    files, raw = dotted
    with TreeReader(files[0]) as r:
        assert r.kinds() == {"Muon_size": "flat", "Muon.PT": "jagged", "Info/runNum": "flat", "MET.MET": "flat",
                             "Jet_pt": "flat"}
        got = r.read(["Info/runNum", "Muon.PT", "MET.MET"], 100, 300)
        assert got.fields == ["Info/runNum", "Muon.PT", "MET.MET"]
        assert ak.to_list(got["Muon.PT"]) == ak.to_list(raw["sig"]["Muon.PT"][100:300])
        np.testing.assert_array_equal(ak.to_numpy(got["Info/runNum"]), raw["sig"]["Info/runNum"][100:300])


DOTTED_PREPROC = {
    "new_branch": {"n_hard": {"def": "count(Muon.PT > 25) + len(`Muon.PT`) * 0", "type": "flat"}},
    "flat_cut": {"MET.MET": {"cut": "`MET.MET` > 5 && !(`Info/runNum` == 4)", "remove": "False"}},
}
LOGISTIC = "from sklearn.linear_model import LogisticRegression\n\ndef model():\n    return LogisticRegression()\n"


def test_bundle_scores_raw_events_with_dotted_names(dotted, tmp_path):
    pytest.importorskip("sklearn")
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.training.workflow import train

    files, raw = dotted
    model = tmp_path / "model.py"
    model.write_text(LOGISTIC)
    inputs = load_inputs(files, [1, 0], {"branch": "events", "chunk_size": 2000, "epochs": 1, "shuffle": False,
                                         "verbose": 0}, DOTTED_PREPROC)
    specs = ensure_specs(inputs, progress=False)
    assert {"Muon.PT[0]", "MET.MET", "Info/runNum", "n_hard"} <= set(specs.features)
    out = train(inputs, specs, model, tmp_path / "out", progress=False, plots=False)
    bundle = Bundle.load(f"{out.bundle}.tar.gz")
    try:
        assert {"Muon.PT", "MET.MET", "Info/runNum"} <= set(bundle.input_branches())
        events = uproot.open(files[1])["events"].arrays()  # raw events as uproot gives them
        scores, keep = bundle.predict_arrays(events)
        want_keep = (raw["bkg"]["MET.MET"] > 5) & (raw["bkg"]["Info/runNum"] != 4)
        np.testing.assert_array_equal(keep, want_keep)
        test = out.result.test
        sel = test["file_index"] == 1
        assert sel.any()
        np.testing.assert_allclose(scores[test["entry"][sel]], test["score"][sel], atol=1e-6)
    finally:
        bundle.close()


# --------------------------------------------------------------------------------------------------
# RNTuple record collections, written by uproot


def record_events(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, n)
    total = int(counts.sum())
    return {
        "Jet": ak.zip({"pt": ak.unflatten(rng.exponential(40.0, total), counts),
                       "eta": ak.unflatten(rng.normal(0, 2, total).astype(np.float32), counts),
                       "nConst": ak.unflatten(rng.integers(1, 30, total).astype(np.int32), counts)}),
        "Info": ak.zip({"run": rng.integers(1, 9, n).astype(np.uint32), "lumi": rng.integers(0, 999, n)}),
        "MET_pt": rng.exponential(30.0, n),
        "Trk": ak.zip({"hits": ak.unflatten(ak.unflatten(rng.random(2 * total), np.full(total, 2)), counts)}),
    }


def test_rntuple_record_collections_become_jagged_branches(toy_write_tree):
    data = record_events(700, 3)
    path = toy_write_tree(data, rntuple=True)
    with TreeReader(str(path)) as r:
        assert r.is_rntuple
        assert r.kinds() == {"Jet.pt": "jagged", "Jet.eta": "jagged", "Jet.nConst": "jagged", "Info.run": "flat",
                             "Info.lumi": "flat", "MET_pt": "flat"}
        assert "nested" in r.skipped["Trk.hits"]
        assert r.branches["Jet.eta"].dtype == np.float32 and r.branches["Info.run"].dtype == np.uint32
        got = r.read(["Jet.pt", "Info.run", "MET_pt", "Jet.nConst"], 50, 650)
        assert got.fields == ["Jet.pt", "Info.run", "MET_pt", "Jet.nConst"]
        assert ak.to_list(got["Jet.pt"]) == ak.to_list(data["Jet"].pt[50:650])
        assert ak.to_list(got["Jet.nConst"]) == ak.to_list(data["Jet"].nConst[50:650])
        np.testing.assert_array_equal(ak.to_numpy(got["Info.run"]), ak.to_numpy(data["Info"].run[50:650]))


def test_specs_on_rntuple_records(toy_write_tree):
    sig, bkg = record_events(600, 4), record_events(900, 5)
    files = [str(toy_write_tree(sig, rntuple=True)), str(toy_write_tree(bkg, rntuple=True))]
    params = load_inputs(files, [1, 0], {"branch": "events", "chunk_size": 250, "verbose": 0}).params
    specs = compute_specs(files, params, progress=False)
    assert set(specs.jkeys) == {"Jet.pt", "Jet.eta", "Jet.nConst"}
    assert {"Info.run", "Info.lumi", "MET_pt"} <= set(specs.fkeys)
    pts = np.concatenate([ak.to_numpy(ak.flatten(d["Jet"].pt)) for d in (sig, bkg)])
    assert [specs.minv["Jet.pt"], specs.maxv["Jet.pt"]] == [pts.min(), pts.max()]
    assert specs.jdim["Jet.pt"] == max(int(ak.max(ak.num(d["Jet"]))) for d in (sig, bkg))


def test_inspect_lists_rntuple_record_fields(toy_write_tree):
    path = toy_write_tree(record_events(20, 6), rntuple=True)
    text = inspect_file(str(path))
    assert "Jet.pt" in text and "Info.run" in text
    assert "Trk.hits" in text and "skipped: nested lists" in text


def test_inspect_into_a_pipe_that_closes_early(toy_write_tree):
    # `mlaas4hep inspect FILE | head`: the output (> a pipe's 64 kB) meets a closed pipe; no traceback
    import subprocess
    import sys

    long = "a_branch_name_long_enough_that_a_few_hundred_rows_fill_more_than_a_pipe_buffer_" * 2
    path = toy_write_tree({f"{long}{i}": np.zeros(3) for i in range(400)}, rntuple=True)
    proc = subprocess.Popen([sys.executable, "-m", "mlaas4hep_lab.cli", "inspect", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert first.startswith(b"RNTuple 'events'") and b"Traceback" not in err
