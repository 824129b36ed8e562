"""The three-class ttH / tt+bb / tt+light example with truth branches (datasets.tth_tasks).

Layout, labels and params; the truth kept out of the features; determinism; the refactor of the
ttH helpers leaving ``tth_block`` bit-identical; and that both tasks can be learned, but not trivially.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot
from test_datasets import entries_and_events

from mlaas4hep_lab.data import _physics, _physics_tth, datasets
from mlaas4hep_lab.data.plan import make_plan
from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.params import load_params

N = 9_000  # 3,000 per class
CLASSES = ["ttH", "ttbb", "ttlf"]
TRUTH = ["GenTop_pt", "GenTop_eta", "GenTop_phi", "GenTop_mass", "GenW_mass", "GenExtra_pt", "GenExtra_mass"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return datasets.tth_tasks(tmp_path_factory.mktemp("tth_tasks"), n_events=N, seed=3)


@pytest.fixture(scope="module")
def arrays(ds):
    out = []
    for path in ds.files:
        with uproot.open(path) as f:
            out.append(f["events"].arrays(library="ak"))
    return out


def params_quietly(path):
    # "task", "classes" and "target" are new params keys: a Params that predates them warns about them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_params(path)


# ---------------------------------------------------------------------------------------------
# layout


def test_files_labels_and_texts(ds):
    assert [p.name for p in ds.files] == ["tth_tasks_ttH.root", "tth_tasks_ttbb.root", "tth_tasks_ttlf.root"]
    assert ds.labels == [0, 1, 2] and ds.classes == CLASSES and ds.tree == "events"
    assert ds.labels_txt.read_text().split() == ["0", "1", "2"]
    lines = [ln for ln in ds.files_txt.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [p.name for p in ds.files]
    assert ds.preproc_json is not None and json.loads(ds.preproc_json.read_text()) == datasets.TTH_PREPROC
    assert ds.params_regression == ds.directory / "params_regression.json"


def test_branches_types_and_counters(ds, arrays):
    expected_flat = {**_physics_tth.TTH_FLAT, **_physics_tth.TTH_TRUTH}
    assert list(_physics_tth.TTH_TRUTH) == TRUTH
    events = []
    for path, a in zip(ds.files, arrays, strict=True):
        with uproot.open(path) as f:
            tree = f["events"]
            assert tree.num_entries == N // 3
            for name, t in expected_flat.items():
                assert tree[name].interpretation.to_dtype == np.dtype(t), name
            for coll, fields in _physics_tth.TTH_COLLECTIONS.items():
                for field, t in fields.items():
                    assert tree[f"{coll}_{field}"].interpretation.content.to_dtype == np.dtype(t)
        # the same branches as the binary ttH example, the truth added
        jagged = {f"{c}_{f}" for c, fs in _physics_tth.TTH_COLLECTIONS.items() for f in fs}
        assert set(a.fields) == set(expected_flat) | {f"n{c}" for c in _physics_tth.TTH_COLLECTIONS} | jagged
        for coll in _physics_tth.TTH_COLLECTIONS:
            assert np.array_equal(ak.to_numpy(a[f"n{coll}"]), ak.to_numpy(ak.num(a[f"{coll}_pt"])))
        njet = ak.to_numpy(a["nJet"])
        assert njet.min() >= 4 and njet.max() <= _physics_tth.MAX_OBJECTS  # the selection: >= 4 jets
        assert ak.all(a["Jet_pt"][:, :-1] >= a["Jet_pt"][:, 1:]) and ak.all(a["Jet_pt"] > 25.0)
        assert np.allclose(ak.to_numpy(ak.sum(a["Jet_pt"], axis=1)), ak.to_numpy(a["HT"]), rtol=1e-4)
        # exactly one tight lepton from the W in almost every event (a few fakes add a second)
        tight = ak.to_numpy(a["nLepton_tight"])
        assert tight.min() >= 1 and np.mean(tight == 1) > 0.85
        events.append(ak.to_numpy(a["event"]))
    assert len(np.unique(np.concatenate(events))) == N


def test_truth_and_classes_physics(arrays):
    def col(a, name):
        return ak.to_numpy(a[name]).astype(np.float64)

    for a in arrays:
        m = col(a, "GenTop_mass")
        q1, med, q3 = np.percentile(m, [25, 50, 75])
        assert abs(med - 172.5) < 0.15 and 1.1 < q3 - q1 < 1.8  # a Breit-Wigner's IQR is its width, 1.42
        assert m.min() >= 150.0 and m.max() <= 195.0
        assert abs(np.median(col(a, "GenW_mass")) - 80.4) < 0.3
        pt = col(a, "GenTop_pt")
        assert 60.0 < np.median(pt) < 130.0 and np.percentile(pt, 99) > 250.0
    h, bb, _ = arrays
    assert np.all(col(h, "GenExtra_mass") == np.float32(125.0))
    mbb = col(bb, "GenExtra_mass")
    window, below, above = (np.sum((mbb > lo) & (mbb < lo + 20.0)) for lo in (115.0, 95.0, 135.0))
    assert np.median(mbb) < 70.0 and above < window < below  # a falling continuum, no peak at 125
    assert np.median(col(bb, "GenExtra_pt")) < np.median(col(h, "GenExtra_pt"))

    def tagged(a):
        return a["Jet_btagDeepFlavB"] > 0.5

    n_b = [ak.to_numpy(ak.sum(tagged(a), axis=1)).mean() for a in arrays]
    assert n_b[2] + 0.8 < n_b[1] < n_b[0]  # tt+light: two b jets; ttH and tt+bb: four, softer in tt+bb

    def closest_bb(a, n_tags):  # the smallest dR between two b-tagged jets, in events with n_tags of them
        b = a[ak.sum(tagged(a), axis=1) == n_tags]
        eta, phi = b["Jet_eta"][tagged(b)], b["Jet_phi"][tagged(b)]
        i, j = ak.unzip(ak.argcombinations(eta, 2))
        dr = np.hypot(eta[i] - eta[j], (phi[i] - phi[j] + np.pi) % (2 * np.pi) - np.pi)
        return ak.to_numpy(ak.drop_none(ak.min(dr, axis=1)))

    # at the same number of b tags (ttH has more), the gluon-splitting pair is the more collinear
    # (with 3 tags one of its b jets is often lost, too soft or merged, so the difference is smaller)
    assert np.median(closest_bb(bb, 3)) < np.median(closest_bb(h, 3))
    assert np.median(closest_bb(bb, 4)) < np.median(closest_bb(h, 4)) - 0.08


# ---------------------------------------------------------------------------------------------
# params: the truth stays out of the features


def test_params_files(ds):
    params = json.loads(ds.params_json.read_text())
    assert params["task"] == "multiclass" and params["classes"] == CLASSES
    assert params["exclude_branches"] == ["genWeight", "Gen*", "Jet_hadronFlavour"]
    assert params["identifier"] == ["run", "luminosityBlock", "event"] and params["branch"] == "events"
    regression = json.loads(ds.params_regression.read_text())
    assert regression["task"] == "regression" and regression["target"] == ["GenTop_pt"]
    assert {k: v for k, v in regression.items() if k not in ("task", "target")} == \
        {k: v for k, v in params.items() if k not in ("task", "classes")}


@pytest.mark.parametrize("which", ["params_json", "params_regression"])
def test_truth_is_not_a_feature(ds, which):
    params = params_quietly(getattr(ds, which))
    for path in ds.files:
        reader = TreeReader(str(path), params.branch, decompression_workers=0)
        plan = make_plan(reader, params)
        assert not [b for b in plan.features if b.startswith("Gen") or b == "Jet_hadronFlavour"], plan.features
        assert "GenTop_pt" in reader.branches  # written, just not a feature
        assert {"Jet_pt", "Jet_btagDeepFlavB", "MET_pt", "nJet"} <= set(plan.features)
        assert len(plan.features) > 50


# ---------------------------------------------------------------------------------------------
# determinism, options, errors, and the unchanged binary ttH example


def test_deterministic_by_seed(tmp_path):
    a = datasets.write_example("tth_tasks", tmp_path / "a", n_events=600, seed=7)
    b = datasets.write_example("TTH-tasks", tmp_path / "b", n_events=600, seed=7)
    c = datasets.tth_tasks(tmp_path / "c", n_events=600, seed=8)
    for fa, fb, fc in zip(a.files, b.files, c.files, strict=True):
        with uproot.open(fa) as ua, uproot.open(fb) as ub, uproot.open(fc) as uc:
            xa, xb, xc = (u["events"].arrays() for u in (ua, ub, uc))
            assert ak.array_equal(xa, xb)
            assert not ak.array_equal(xa, xc)
    assert a.params_json.read_text() == b.params_json.read_text()


def test_several_files_per_class_and_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SLICE", 150)  # several extend() calls per file
    ds = datasets.tth_tasks(tmp_path, n_events=1_001, files_per_class=2, compression="lz4")
    assert [p.name for p in ds.files] == ["tth_tasks_ttH_0.root", "tth_tasks_ttH_1.root", "tth_tasks_ttbb_0.root",
                                          "tth_tasks_ttbb_1.root", "tth_tasks_ttlf_0.root", "tth_tasks_ttlf_1.root"]
    assert ds.labels == [0, 0, 1, 1, 2, 2] and ds.labels_txt.read_text().split() == ["0", "0", "1", "1", "2", "2"]
    counts, events = entries_and_events(ds.files)
    assert sum(counts) == 1_001 and counts[0] + counts[1] == 334
    assert len(np.unique(np.concatenate(events))) == 1_001


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_events"):
        datasets.tth_tasks(tmp_path, n_events=5, files_per_class=2)
    with pytest.raises(ConfigError, match="compression"):
        datasets.tth_tasks(tmp_path, n_events=30, compression="brotli")
    with pytest.raises(ConfigError, match="tth_tasks"):
        datasets.write_example("ttbb", tmp_path)


def _block_digest(block, seed, n, label):
    flat, collections = block(np.random.default_rng(seed), n, label)
    h = hashlib.sha256()
    for k, v in flat.items():
        h.update(k.encode()), h.update(str(v.dtype).encode()), h.update(v.tobytes())
    for coll, (counts, fields) in collections.items():
        h.update(coll.encode()), h.update(counts.tobytes())
        for k, v in fields.items():
            h.update(k.encode()), h.update(str(v.dtype).encode()), h.update(v.tobytes())
    return h.hexdigest()[:32]


@pytest.mark.parametrize(("seed", "n", "label", "digest"), [
    # computed with tth_block before its helpers were shared with tth_tasks_block
    (1, 1000, 1, "848ef02353aa81f21f710b2ed5ca7585"),
    (1, 1000, 0, "705f7747828e41ad9370a4b8a35cb295"),
    (7, 3333, 1, "899ff9c885f47d057df634f7f9c02784"),
    (7, 3333, 0, "86b3537f14a9de36ce7c99d5e7f55238"),
])
def test_tth_block_unchanged(seed, n, label, digest):
    assert _block_digest(_physics_tth.tth_block, seed, n, label) == digest


def test_tth_tasks_block_deterministic():
    for label in (0, 1, 2):
        assert _block_digest(_physics_tth.tth_tasks_block, 5, 500, label) == \
            _block_digest(_physics_tth.tth_tasks_block, 5, 500, label)


# ---------------------------------------------------------------------------------------------
# learnability: clearly better than chance, but not trivial


def _top_candidate(pt, eta, phi, mass, btag):
    """The hadronic top a physicist reconstructs: among the 6 leading jets, the b + (q, q') assignment
    whose masses are closest to the top's and the W's (b-tag consistent); its (pt, m_jjj, m_jj)."""
    e, px, py, pz = _physics.cartesian(pt, eta, phi, mass)
    best = np.full(pt.shape[0], np.inf)
    out = np.zeros((pt.shape[0], 3))
    for b in range(6):
        for i, k in itertools.combinations([x for x in range(6) if x != b], 2):
            w = [c[:, i] + c[:, k] for c in (e, px, py, pz)]
            t = [wc + c[:, b] for wc, c in zip(w, (e, px, py, pz), strict=True)]
            mw, mt = _physics.inv_mass(*w), _physics.inv_mass(*t)
            chi2 = (((mt - 172.5) / 18.0) ** 2 + ((mw - 80.4) / 10.0) ** 2
                    + 3.0 * (btag[:, b] < 0.5) + 2.0 * (btag[:, i] > 0.5) + 2.0 * (btag[:, k] > 0.5))
            chi2 = np.where((pt[:, b] > 0) & (pt[:, i] > 0) & (pt[:, k] > 0), chi2, np.inf)
            better = chi2 < best
            best = np.where(better, chi2, best)
            out[better] = np.stack([np.hypot(t[1], t[2]), mt, mw], axis=1)[better]
    return out


@pytest.fixture(scope="module")
def table(arrays):
    """Reco features only (8 leading jets, leading lepton, MET, HT, leading fat jet, the top candidate),
    the class and GenTop_pt of every event, shuffled."""
    rows, labels, top_pt = [], [], []
    for label, a in enumerate(arrays):
        def pad(x, k):
            return ak.to_numpy(ak.fill_none(ak.pad_none(x, k, clip=True), 0.0)).astype(np.float64)

        jets = [pad(a[f"Jet_{f}"], 8) for f in ("pt", "eta", "phi", "mass", "btagDeepFlavB")]
        leptons = ak.concatenate([a["Electron_pt"], a["Muon_pt"]], axis=1)
        flat = [ak.to_numpy(a[k]).astype(np.float64)[:, None] for k in ("nJet", "HT", "MET_pt", "nFatJet")]
        extra = [pad(ak.sort(leptons, ascending=False), 1), pad(a["FatJet_pt"], 1), pad(a["FatJet_mass"], 1),
                 pad(a["FatJet_btagDDBvLV2"], 1), _top_candidate(*(j[:, :6] for j in jets))]
        rows.append(np.hstack(jets + flat + extra))
        labels.append(np.full(len(a), label))
        top_pt.append(ak.to_numpy(a["GenTop_pt"]).astype(np.float64))
    perm = np.random.default_rng(0).permutation(N)
    return np.vstack(rows)[perm], np.concatenate(labels)[perm], np.concatenate(top_pt)[perm]


def one_thread():
    # OpenMP threads spin on a shared two-core machine: one thread is several times faster there
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(1)


def fit_two_thirds(model, x, y):
    """``model`` fitted on the first two thirds of the events (one thread), and where the rest start."""
    half = 2 * N // 3
    with one_thread():
        return model.fit(x[:half], y[:half]), half


@pytest.mark.slow
def test_top_pt_regression_learnable(table):
    ensemble = pytest.importorskip("sklearn.ensemble")
    x, _, y = table
    model, half = fit_two_thirds(ensemble.HistGradientBoostingRegressor(max_iter=150, random_state=0), x, y)
    pred = model.predict(x[half:])
    r2 = 1.0 - np.mean((pred - y[half:]) ** 2) / np.var(y[half:])
    assert 0.5 < r2 < 0.95, r2


@pytest.mark.slow
def test_three_classes_learnable_not_trivial(table):
    ensemble = pytest.importorskip("sklearn.ensemble")
    metrics = pytest.importorskip("sklearn.metrics")
    x, y, _ = table
    model, half = fit_two_thirds(ensemble.HistGradientBoostingClassifier(max_iter=100, random_state=0), x, y)
    proba = model.predict_proba(x[half:])
    aucs = [metrics.roc_auc_score(y[half:] == k, proba[:, k]) for k in range(3)]
    assert all(0.62 < auc < 0.98 for auc in aucs), aucs
    assert aucs[2] > aucs[1]  # tt+light (two b jets) is the easiest to tell apart, tt+bb the hardest
