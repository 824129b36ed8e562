"""Example dataset generators: TTrees, branch layout, text files, determinism, separability."""

from __future__ import annotations

import json
import os

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep_lab.data import _physics_tth, datasets
from mlaas4hep_lab.errors import ConfigError

N = 5_000

HIGGS_NAMES = [
    "EventId", "DER_mass_MMC", "DER_mass_transverse_met_lep", "DER_mass_vis", "DER_pt_h",
    "DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet", "DER_deltar_tau_lep",
    "DER_pt_tot", "DER_sum_pt", "DER_pt_ratio_lep_tau", "DER_met_phi_centrality",
    "DER_lep_eta_centrality", "PRI_tau_pt", "PRI_tau_eta", "PRI_tau_phi", "PRI_lep_pt",
    "PRI_lep_eta", "PRI_lep_phi", "PRI_met", "PRI_met_phi", "PRI_met_sumet", "PRI_jet_num",
    "PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi", "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta", "PRI_jet_subleading_phi", "PRI_jet_all_pt", "Weight",
]
LEADING = ["PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi"]
SUBLEADING = ["PRI_jet_subleading_pt", "PRI_jet_subleading_eta", "PRI_jet_subleading_phi",
              "DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet", "DER_lep_eta_centrality"]


def rank_auc(x, y):
    """Area under the ROC curve of score ``x`` for labels ``y`` (Mann-Whitney, ties averaged)."""
    x = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    n1 = int(y.sum())
    n0 = len(y) - n1
    return (ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def read_all(ds):
    out = []
    for path, label in zip(ds.files, ds.labels, strict=True):
        with uproot.open(path) as f:
            tree = f[ds.tree]
            assert isinstance(tree, uproot.TTree)
            out.append((label, tree.arrays(library="ak")))
    return out


@pytest.fixture(scope="module")
def higgs_ds(tmp_path_factory):
    return datasets.higgs(tmp_path_factory.mktemp("higgs"), n_events=N)


@pytest.fixture(scope="module")
def tth_ds(tmp_path_factory):
    return datasets.tth(tmp_path_factory.mktemp("tth"), n_events=N)


@pytest.fixture(scope="module")
def higgs_arrays(higgs_ds):
    return read_all(higgs_ds)


@pytest.fixture(scope="module")
def tth_arrays(tth_ds):
    return read_all(tth_ds)


# ---------------------------------------------------------------------------------------------
# Higgs


def test_higgs_files_are_ttrees_with_exact_branches(higgs_ds):
    assert [p.name for p in higgs_ds.files] == ["higgs_signal.root", "higgs_background.root"]
    assert higgs_ds.labels == [1, 0]
    assert higgs_ds.tree == "events" and higgs_ds.preproc_json is None
    total = 0
    for path in higgs_ds.files:
        with uproot.open(path) as f:
            tree = f["events"]
            assert isinstance(tree, uproot.TTree)
            assert list(tree.keys()) == HIGGS_NAMES
            for name in HIGGS_NAMES:
                expected = {"EventId": "int64", "PRI_jet_num": "int32"}.get(name, "float32")
                assert tree[name].interpretation.to_dtype == np.dtype(expected), name
            total += tree.num_entries
    assert total == N
    with uproot.open(higgs_ds.files[0]) as f:
        assert f["events"].num_entries == round(N * 0.35)


def test_higgs_missing_values_follow_jet_multiplicity(higgs_arrays):
    for _, a in higgs_arrays:
        njet = ak.to_numpy(a["PRI_jet_num"])
        assert set(np.unique(njet)) <= {0, 1, 2, 3} and len(np.unique(njet)) == 4
        for name in LEADING:
            v = ak.to_numpy(a[name])
            assert np.all((v == -999.0) == (njet == 0)), name
        for name in SUBLEADING:
            v = ak.to_numpy(a[name])
            assert np.all((v == -999.0) == (njet <= 1)), name
        assert np.all(ak.to_numpy(a["PRI_jet_all_pt"])[njet == 0] == 0.0)
        defined = [n for n in HIGGS_NAMES if n not in LEADING + SUBLEADING + ["DER_mass_MMC"]]
        for name in defined:
            assert not np.any(ak.to_numpy(a[name]) == -999.0), name
        assert np.all(ak.to_numpy(a["PRI_tau_pt"]) > 20.0) and np.all(ak.to_numpy(a["PRI_lep_pt"]) > 20.0)
        cent = ak.to_numpy(a["DER_met_phi_centrality"])
        assert np.all(np.abs(cent) <= np.sqrt(2) + 1e-5)
    miss = {label: np.mean(ak.to_numpy(a["DER_mass_MMC"]) == -999.0) for label, a in higgs_arrays}
    assert 0.03 < miss[1] < miss[0] < 0.3


def test_higgs_event_ids_unique_and_weights_normalised(higgs_arrays):
    ids = np.concatenate([ak.to_numpy(a["EventId"]) for _, a in higgs_arrays])
    assert len(np.unique(ids)) == N and ids.min() >= 100_000
    w = {label: ak.to_numpy(a["Weight"]) for label, a in higgs_arrays}
    assert 0.001 < w[1].min() and w[1].max() < 0.05 and 0.001 < w[0].min() and w[0].max() < 20.0
    assert w[1].sum() == pytest.approx(691.99 * N / 250_000, rel=0.05)
    assert w[0].sum() == pytest.approx(410999.85 * N / 250_000, rel=0.05)


def test_higgs_signal_background_separable(higgs_arrays):
    y = np.concatenate([np.full(len(a), label) for label, a in higgs_arrays])

    def col(name):
        return np.concatenate([ak.to_numpy(a[name]).astype(np.float64) for _, a in higgs_arrays])

    aucs = {name: rank_auc(col(name), y) for name in HIGGS_NAMES if name not in ("EventId", "Weight")}
    aucs["|MMC-125|"] = rank_auc(-np.abs(col("DER_mass_MMC") - 125.0), y)
    best = max(max(v, 1 - v) for v in aucs.values())
    assert 0.6 < best < 0.95, aucs
    assert aucs["DER_mass_transverse_met_lep"] < 0.5  # transverse mass lower for signal
    mmc = col("DER_mass_MMC")
    assert abs(np.median(mmc[(y == 1) & (mmc > 0)]) - 125.0) < 10.0


# ---------------------------------------------------------------------------------------------
# ttH


def test_tth_layout_types_and_counters(tth_ds, tth_arrays):
    assert [p.name for p in tth_ds.files] == ["tth_signal.root", "tth_background.root"]
    with uproot.open(tth_ds.files[0]) as f:
        tree = f["events"]
        assert isinstance(tree, uproot.TTree)
        dtypes = {}
        jagged, flat = [], []
        for name in tree.keys():
            interp = tree[name].interpretation
            if isinstance(interp, uproot.AsJagged):
                jagged.append(name)
                dtypes[name] = interp.content.to_dtype
            else:
                flat.append(name)
                dtypes[name] = interp.to_dtype
    counters = [f"n{c}" for c in _physics_tth.TTH_COLLECTIONS]
    assert set(counters) <= set(flat)
    assert len(jagged) >= 45 and len([n for n in flat if n not in counters]) >= 18
    for coll, fields in _physics_tth.TTH_COLLECTIONS.items():
        for field, t in fields.items():
            assert dtypes[f"{coll}_{field}"] == np.dtype(t)
    for name, t in _physics_tth.TTH_FLAT.items():
        assert dtypes[name] == np.dtype(t), name
    kinds = {dtypes[n] for n in flat} | {dtypes[n] for n in jagged}
    for t in ("bool", "uint8", "int16", "int32", "int64", "float32", "float64"):
        assert np.dtype(t) in kinds, t
    assert dtypes["Muon_tightId"] == np.dtype(bool) and dtypes["Muon_charge"] == np.dtype("int32")

    for _, a in tth_arrays:
        for coll in _physics_tth.TTH_COLLECTIONS:
            lengths = ak.to_numpy(ak.num(a[f"{coll}_pt"]))
            assert np.all(lengths >= 0) and np.all(lengths <= 12)
            assert np.array_equal(ak.to_numpy(a[f"n{coll}"]), lengths)
            for field in _physics_tth.TTH_COLLECTIONS[coll]:
                assert np.array_equal(ak.to_numpy(ak.num(a[f"{coll}_{field}"])), lengths)
        njet = ak.to_numpy(a["nJet"])
        assert njet.min() >= 2 and njet.max() <= 12
        pt = a["Jet_pt"]
        assert ak.all(pt[:, :-1] >= pt[:, 1:])  # sorted by decreasing pt
        assert np.allclose(ak.to_numpy(ak.sum(pt, axis=1)), ak.to_numpy(a["HT"]), rtol=1e-4)
        assert set(np.unique(ak.to_numpy(a["run"]))) == {1}
    events = np.concatenate([ak.to_numpy(a["event"]) for _, a in tth_arrays])
    assert len(np.unique(events)) == N


def test_tth_signal_background_differ(tth_arrays):
    y = np.concatenate([np.full(len(a), label) for label, a in tth_arrays])

    def col(f):
        return np.concatenate([ak.to_numpy(f(a)).astype(np.float64) for _, a in tth_arrays])

    auc_njet = rank_auc(col(lambda a: a["nJet"]), y)
    auc_ht = rank_auc(col(lambda a: a["HT"]), y)
    auc_btag = rank_auc(col(lambda a: ak.sum(a["Jet_btagDeepFlavB"] > 0.5, axis=1)), y)
    for value in (auc_njet, auc_ht, auc_btag):
        assert 0.6 < value < 0.95
    assert rank_auc(col(lambda a: a["MET_phi"]), y) == pytest.approx(0.5, abs=0.05)


def test_tth_preproc_and_params(tth_ds, tth_arrays):
    preproc = json.loads(tth_ds.preproc_json.read_text())
    new = preproc["new_branch"]["Jet_pt_log"]
    assert new["def"] == "log(Jet_pt)" and new["type"] == "jagged" and new["cut"][1] == "any"
    assert set(preproc) == {"new_branch", "flat_cut", "jagged_cut"}
    # evaluate the cuts by hand: most events pass
    passed = []
    for _, a in tth_arrays:
        ok = ak.any(np.log(a["Jet_pt"]) > 3.4, axis=1) & (a["nJet"] >= 2) & (a["MET_pt"] > 0)
        ok = ok & ak.any(a["Jet_pt"] > float(preproc["jagged_cut"]["Jet_pt"]["cut"][0].split(">")[1]), axis=1)
        passed.append(ak.to_numpy(ok))
    assert 0.7 < np.mean(np.concatenate(passed)) < 1.0
    params = json.loads(tth_ds.params_json.read_text())
    assert params["identifier"] == ["run", "luminosityBlock", "event"]
    assert params["exclude_branches"] == ["genWeight"] and params["chunk_size"] == 10_000
    assert "missing_values" not in params and "weight" not in params


# ---------------------------------------------------------------------------------------------
# text files, options, determinism, errors


def test_text_files_and_params(higgs_ds):
    lines = higgs_ds.files_txt.read_text().splitlines()
    assert lines[0].startswith("#")
    paths = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    assert paths == ["higgs_signal.root", "higgs_background.root"]
    assert all((higgs_ds.files_txt.parent / p).exists() for p in paths)
    assert higgs_ds.labels_txt.read_text().split() == ["1", "0"]
    params = json.loads(higgs_ds.params_json.read_text())
    assert params == {
        "nevts": -1, "shuffle": True, "chunk_size": 50_000, "epochs": 5, "batch_size": 256,
        "identifier": ["EventId"], "branch": "events", "selected_branches": [],
        "exclude_branches": ["Weight"], "hist": "", "redirector": "", "verbose": 1, "seed": 42,
        "missing_values": [-999.0], "weight": "Weight", "normalization": "standard",
    }


def test_several_files_per_class_and_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SLICE", 250)  # force several extend() calls per file
    ds = datasets.write_example("tth", tmp_path, n_events=3_001, files_per_class=2, signal_fraction=0.4)
    assert [p.name for p in ds.files] == ["tth_signal_0.root", "tth_signal_1.root",
                                          "tth_background_0.root", "tth_background_1.root"]
    assert ds.labels == [1, 1, 0, 0]
    counts, events = entries_and_events(ds.files)
    assert sum(counts) == 3_001 and counts[0] + counts[1] == 1_200
    assert len(np.unique(np.concatenate(events))) == 3_001
    assert ds.labels_txt.read_text().split() == ["1", "1", "0", "0"]


@pytest.mark.parametrize("kind", ["higgs", "tth"])
def test_deterministic_by_seed(tmp_path, kind):
    a = datasets.write_example(kind, tmp_path / "a", n_events=1_000, seed=7)
    b = datasets.write_example(kind, tmp_path / "b", n_events=1_000, seed=7)
    c = datasets.write_example(kind, tmp_path / "c", n_events=1_000, seed=8)
    for fa, fb, fc in zip(a.files, b.files, c.files, strict=True):
        with uproot.open(fa) as ua, uproot.open(fb) as ub, uproot.open(fc) as uc:
            xa, xb, xc = (u["events"].arrays() for u in (ua, ub, uc))
            assert ak.array_equal(xa, xb)
            assert not ak.array_equal(xa, xc)


@pytest.mark.parametrize("compression", ["none", "lz4", "zlib", "zstd", None])
def test_compression_options(tmp_path, compression):
    ds = datasets.higgs(tmp_path, n_events=200, compression=compression)
    with uproot.open(ds.files[1]) as f:
        assert f["events"].num_entries == 130


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="higgs.*tth"):
        datasets.write_example("dijet", tmp_path)
    with pytest.raises(ConfigError, match="compression"):
        datasets.higgs(tmp_path, n_events=100, compression="brotli")
    with pytest.raises(ConfigError, match="n_events"):
        datasets.tth(tmp_path, n_events=3, files_per_class=2)
    with pytest.raises(ConfigError, match="signal_fraction"):
        datasets.higgs(tmp_path, n_events=100, signal_fraction=1.5)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        datasets.higgs(tmp_path, n_events=-5)


def test_write_example_defaults(tmp_path, monkeypatch):
    seen = {}

    def fake(directory, **kw):
        seen.update(kw, directory=directory)
        return "ok"

    monkeypatch.setitem(datasets.KINDS, "higgs", fake)
    assert datasets.write_example("Higgs", tmp_path) == "ok" and "n_events" not in seen
    assert datasets.write_example("higgs", tmp_path, n_events=10, seed=3) == "ok"
    assert seen["n_events"] == 10 and seen["seed"] == 3


def entries_and_events(files) -> tuple[list[int], list[np.ndarray]]:
    """Entries and ``event`` numbers of each file; each file's jets span several baskets."""
    counts, events = [], []
    for p in files:
        with uproot.open(p) as f:
            counts.append(f["events"].num_entries)
            events.append(f["events"]["event"].array(library="np"))
            assert f["events"]["Jet_pt"].num_baskets >= 2
    return counts, events


_EXAMPLE_DIGEST = """
import hashlib, sys, tempfile
from pathlib import Path
import awkward as ak, numpy as np, uproot
from mlaas4hep_lab.data import datasets
kind, n = sys.argv[1], int(sys.argv[2])
ds = getattr(datasets, kind)(Path(tempfile.mkdtemp()) / "d", n_events=n, seed=42)
h = hashlib.sha256()
for f in ds.files:
    for name, values in sorted(uproot.open(f)["events"].arrays(library="ak", how=dict).items()):
        h.update(name.encode()); h.update(np.asarray(ak.flatten(values, axis=None)).tobytes())
        if values.ndim > 1:
            h.update(np.asarray(ak.num(values)).tobytes())
print(h.hexdigest())
"""


@pytest.mark.parametrize("kind, n", [("higgs", 40_000), ("tth", 20_000)])
def test_example_data_are_the_same_without_avx512(kind, n):
    """numpy's vectorised sin/exp/arctan2 differ by a few ulps between CPUs (AVX-512 or not), and the
    kinematics amplify that to ~1e-12: the generators' decisions are taken on float32-rounded values, so
    one seed writes the same files on every machine (a notebook's stored specs once depended on the CPU)."""
    import subprocess
    import sys

    features = np._core._multiarray_umath.__cpu_features__
    if not features.get("AVX512F"):
        pytest.skip("this CPU has no AVX-512: nothing to turn off")
    argv = [sys.executable, "-c", _EXAMPLE_DIGEST, kind, str(n)]
    plain = subprocess.run(argv, capture_output=True, text=True, check=True)
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES="AVX512_ICL X86_V4")
    narrow = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    assert plain.stdout.strip() and plain.stdout == narrow.stdout
