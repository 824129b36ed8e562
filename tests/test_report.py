"""The training report (variable ranking, overtraining check, input correlations, learning curve) on real
runs: the XGBoost template on the Higgs-like example, small models on toy ROOT files with a known
informative feature and a pure-noise one, `mlaas4hep report OUT`, and permutation importance through the
torch and Keras backends."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep_lab import cli
from mlaas4hep_lab.backends.base import get_backend
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training import report
from mlaas4hep_lab.training.evaluation import auc
from mlaas4hep_lab.training.model_file import load_model_file, template_path
from mlaas4hep_lab.training.workflow import train

PNG, PDF = b"\x89PNG", b"%PDF"
REPORT_KEYS = ("ranking", "ks_pvalue_signal", "ks_pvalue_background")

# a toy sample: one strongly and one weakly informative feature, a pure-noise one
TOY_SHIFTS = {"x_strong": 1.5, "x_weak": 0.4, "noise": 0.0}

TORCH_SMALL = '''
import torch
from torch import nn

def model(idim):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), nn.Linear(16, 1))
'''

# the same boosted trees, free to memorise the training events or held back
XGB_OVERTRAINED = '''
import xgboost

def model():
    return xgboost.XGBClassifier(n_estimators=300, max_depth=12, learning_rate=0.5, min_child_weight=0,
                                 reg_lambda=0.0, gamma=0.0, random_state=0)
'''
XGB_REGULARISED = '''
import xgboost

def model():
    return xgboost.XGBClassifier(n_estimators=30, max_depth=2, learning_rate=0.1, min_child_weight=10,
                                 reg_lambda=5.0, random_state=0)
'''


def _inputs(files, labels, **params):
    base = {"chunk_size": 10_000, "epochs": 1, "batch_size": 256, "branch": "events", "verbose": 0, "seed": 3}
    return load_inputs([str(f) for f in files], labels, base | params)


def _run(inputs, model, out: Path, plots: bool = True):
    specs = ensure_specs(inputs, progress=False)
    return train(inputs, specs, model, out, progress=False, plots=plots)


def _by_feature(metrics) -> dict[str, dict]:
    return {row["feature"]: row for row in metrics["ranking"]}


@pytest.fixture(scope="module")
def toy_files(toy_write_tree):
    """Signal and background ROOT files whose features differ by TOY_SHIFTS (pure noise: no shift)."""
    def events(n, seed, signal):
        rng = np.random.default_rng(seed)
        data = {name: rng.normal(shift if signal else 0.0, 1.0, n).astype(np.float32)
                for name, shift in TOY_SHIFTS.items()}
        data["pad"] = np.zeros(n, np.float32)   # constant, as an always-padded slot is
        return data

    return lambda n: [toy_write_tree(events(n, 11, True), name=f"report_sig_{n}.root"),
                      toy_write_tree(events(n, 12, False), name=f"report_bkg_{n}.root")]


# -- the XGBoost template on the Higgs-like example ----------------------------------------------------------
@pytest.fixture(scope="module")
def higgs_run(example_higgs, tmp_path_factory):
    params = json.loads(Path(example_higgs.params_json).read_text()) | {"verbose": 0}
    inputs = load_inputs(example_higgs.files_txt, example_higgs.labels_txt, params)
    out = tmp_path_factory.mktemp("report") / "out"
    return _run(inputs, template_path("xgboost"), out), out


@pytest.mark.slow
def test_the_five_plots_and_the_numbers_are_written(higgs_run):
    result, out = higgs_run
    for name in report.REPORT_PLOTS:
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == PNG, name
        assert (out / "plots" / f"{name}.pdf").read_bytes()[:4] == PDF, name
        assert (out / "bundle" / "plots" / f"{name}.png").is_file(), f"{name} not in the bundle"
    written = json.loads((out / "metrics.json").read_text())
    bundled = json.loads((out / "bundle" / "metrics.json").read_text())
    for key in REPORT_KEYS:
        assert written[key] == bundled[key] == result.metrics[key]
    features = result.result.feature_names
    ranking = written["ranking"]
    assert sorted(r["feature"] for r in ranking) == sorted(features)
    importance = np.array([r["importance"] for r in ranking])
    assert np.all(np.isfinite(importance)) and np.all(np.diff(importance) <= 0), "ranking not sorted"
    # XGBoost's own importance (gain) is given beside the permutation importance
    native = np.array([r["native"] for r in ranking])
    assert written["report"]["native_importance"] == "xgboost total gain"
    assert np.all(native >= 0) and native.sum() == pytest.approx(1.0)
    for key in ("ks_pvalue_signal", "ks_pvalue_background"):
        assert 0.0 <= written[key] <= 1.0
    assert written["report"]["events_test"] == result.metrics["n_events"]   # under the 50k cap: all of them
    assert out.joinpath(report.SAMPLE_FILE).is_file()


@pytest.mark.slow
def test_the_designed_discriminants_lead_the_higgs_ranking(higgs_run):
    """The generator gives the signal a 125 GeV tau pair and the Z background 91 GeV: the tau-pair masses
    are among the top three; azimuthal angles (isotropic in both classes) barely matter."""
    result, _ = higgs_run
    ranking = result.metrics["ranking"]
    top3 = {r["feature"] for r in ranking[:3]}
    assert top3 & {"DER_mass_MMC", "DER_mass_vis"}, [r["feature"] for r in ranking[:5]]
    rows = _by_feature(result.metrics)
    for phi in ("PRI_tau_phi", "PRI_lep_phi", "PRI_met_phi"):
        assert abs(rows[phi]["importance"]) < 0.1 * ranking[0]["importance"], (phi, rows[phi])


@pytest.mark.slow
def test_correlation_matrices_are_kept_whole_in_csv(higgs_run):
    result, out = higgs_run
    features = result.result.feature_names
    sample = report.ReportSample.load(out / report.SAMPLE_FILE)
    for label, want in (("signal", True), ("background", False)):
        lines = (out / "plots" / f"correlation_{label}.csv").read_text().splitlines()
        assert [n.strip('"') for n in lines[0].split(",")[1:]] == features
        matrix = np.array([[float(v) if v else np.nan for v in line.split(",")[1:]] for line in lines[1:]])
        assert matrix.shape == (len(features), len(features))
        assert np.allclose(matrix, matrix.T, equal_nan=True, atol=1e-4)
        defined = np.isfinite(np.diag(matrix))
        assert defined.all() and np.allclose(np.diag(matrix), 1.0)
        sel = (sample.y_test > 0.5) == want
        expected = np.corrcoef(sample.X_test[sel], rowvar=False, dtype=np.float64) if sample.w_test is None else \
            report.correlation(sample.X_test[sel], sample.w_test[sel])
        assert np.allclose(matrix, expected, atol=1e-4)


@pytest.mark.slow
def test_learning_curve_follows_the_boosting_rounds(higgs_run):
    result, _ = higgs_run
    curve = report.learning_curve(result.result.history)
    rounds = [e for e in result.result.history if e["kind"] == "round"]
    assert curve["xlabel"] == "boosting round" and curve["x"] == [float(e["epoch"]) for e in rounds]
    assert {"loss", "val_loss", "auc", "val_auc"} <= set(curve["series"])
    loss = np.array(curve["series"]["loss"])
    assert loss[-1] < loss[0]   # training loss falls round after round


@pytest.mark.slow
def test_report_command_rebuilds_the_report(higgs_run, example_higgs, capsys):
    result, out = higgs_run
    before = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out / "plots")
    assert cli.main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Kolmogorov-Smirnov" in printed and before["ranking"][0]["feature"] in printed
    for name in report.REPORT_PLOTS:
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == PNG
        assert (out / "plots" / f"{name}.pdf").read_bytes()[:4] == PDF
    after = json.loads((out / "metrics.json").read_text())
    assert after["auc"] == before["auc"]                   # the other metrics are kept
    for key in REPORT_KEYS:                                # the same sample, seed and model: the same numbers
        assert after[key] == before[key], key

    # without the saved sample, the test split is re-read from the ROOT files with the bundle's settings
    (out / report.SAMPLE_FILE).unlink()
    assert cli.main(["report", str(out)]) == 2
    assert "--files" in capsys.readouterr().err
    assert cli.main(["report", str(out), "--files", str(example_higgs.files_txt),
                     "--labels", str(example_higgs.labels_txt)]) == 0
    reread = json.loads((out / "metrics.json").read_text())
    assert reread["report"]["events_test"] == before["report"]["events_test"]
    for key in ("ks_pvalue_signal", "ks_pvalue_background"):
        assert reread[key] == pytest.approx(before[key], rel=1e-6)
    assert [r["feature"] for r in reread["ranking"]] == [r["feature"] for r in before["ranking"]]


def test_report_command_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a finished training run" in capsys.readouterr().err


# -- toy files: a pure-noise feature, overtraining -----------------------------------------------------------
@pytest.mark.slow
def test_a_pure_noise_feature_ranks_near_zero(toy_files, tmp_path):
    model = tmp_path / "model.py"
    model.write_text(TORCH_SMALL)
    files = toy_files(6000)
    out = tmp_path / "out"
    result = _run(_inputs(files, [1, 0], chunk_size=3000, epochs=3), model, out, plots=False)
    rows = _by_feature(result.metrics)
    assert [r["feature"] for r in result.metrics["ranking"][:2]] == ["x_strong", "x_weak"]
    assert abs(rows["noise"]["importance"]) < 0.05 * rows["x_strong"]["importance"], rows
    assert rows["pad"]["importance"] == 0.0          # a constant input cannot change a prediction
    assert "native" not in rows["x_strong"]          # a network has no importance of its own
    # batches: one learning-curve point per chunk, against training events seen
    curve = report.learning_curve(result.result.history)
    assert curve["xlabel"] == "training events seen" and len(curve["x"]) >= 3
    assert np.all(np.diff(curve["x"]) > 0) and {"loss", "val_loss", "val_auc"} <= set(curve["series"])
    # the constant input has no correlation; the others do, and the shown matrix leaves it out
    assert "pad" not in result.metrics["report"]["correlation_features_shown"]


@pytest.mark.slow
def test_an_overtrained_model_fails_the_ks_test_a_regularised_one_passes(toy_files, tmp_path):
    files = toy_files(1500)
    p = {}
    for name, source in (("overtrained", XGB_OVERTRAINED), ("regularised", XGB_REGULARISED)):
        model = tmp_path / f"{name}.py"
        model.write_text(source)
        metrics = _run(_inputs(files, [1, 0]), model, tmp_path / name, plots=False).metrics
        p[name] = (metrics["ks_pvalue_signal"], metrics["ks_pvalue_background"])
    assert max(p["overtrained"]) < 1e-4, p
    assert min(p["regularised"]) > 0.01, p


# -- pieces ----------------------------------------------------------------------------------------------
def _toy_matrix(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    X = rng.normal(0.0, 1.0, (n, 4)).astype(np.float32)
    X[:, 0] += 1.5 * y       # informative; 1 and 2 are noise
    X[:, 3] = 0.0            # constant (a padded slot)
    return X, y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "keras"])
def test_permutation_importance_through_the_nn_backends(name):
    X, y = _toy_matrix(4000)
    um = load_model_file(template_path(name), 4, seed=0)
    backend = get_backend(um.backend)(um.model, 4, dict(um.options, seed=0, batch_size=128))
    for _ in range(3):
        backend.fit_chunk(X[:3000], y[:3000], None, epochs=1, batch_size=128)
    result = report.permutation_importance(backend.predict, X[3000:], y[3000:], repeats=2)
    importance = result["importance"]
    assert result["baseline_auc"] > 0.8 and int(np.argmax(importance)) == 0
    assert np.all(np.abs(importance[1:3]) < 0.05 * importance[0]) and importance[3] == 0.0
    assert report.native_importance(backend) is None


def test_permutation_cost_is_bounded_and_vectorised():
    X, y = _toy_matrix(20_000)
    calls = []

    def predict(batch):   # a model of its own: the logistic of the informative column
        calls.append(len(batch))
        return 1.0 / (1.0 + np.exp(-batch[:, 0]))

    result = report.permutation_importance(predict, X, y, repeats=5, max_rows=60_000, max_seconds=None)
    # 3 varying columns: 5 repeats x 20k events x 3 would be 300k rows; repeats go first, then events
    assert result["repeats"] == 1 and result["events"] == 20_000
    assert sum(calls) - calls[0] <= 60_000 and len(calls) == 2     # the baseline, then one stacked call
    result = report.permutation_importance(predict, X, y, repeats=5, max_rows=9_000, max_seconds=None)
    assert result["repeats"] == 1 and result["events"] == 3_000
    assert result["importance"][0] == pytest.approx(auc(y, X[:, 0]) - 0.5, abs=0.05)


def test_ks_test_without_scipy_matches_scipy(monkeypatch):
    from scipy import stats

    rng = np.random.default_rng(5)
    for shift in (0.0, 0.05, 0.1):
        a, b = rng.normal(0, 1, 3000), rng.normal(shift, 1, 2000)
        want = stats.ks_2samp(a, b, method="asymp")
        d, p = report._ks_numpy(a, b)
        assert d == pytest.approx(want.statistic, abs=1e-12)
        assert p == pytest.approx(want.pvalue, abs=0.01, rel=0.05)
    monkeypatch.setitem(sys.modules, "scipy", None)   # as on an installation without scipy
    d, p = report.ks_2samp(a, b)
    assert (d, p) == report._ks_numpy(a, b) and 0.0 <= p <= 1.0


def test_correlation_is_numpy_corrcoef_and_nan_for_constants():
    X, y = _toy_matrix(1000)
    corr = report.correlation(X)
    assert np.allclose(corr[:3, :3], np.corrcoef(X[:, :3], rowvar=False))
    assert np.all(np.isnan(corr[3])) and np.all(np.isnan(corr[:, 3]))
    w = np.where(y > 0.5, 3.0, 1.0)
    repeated = np.repeat(X[:, :3], w.astype(int), axis=0)   # integer weights = repeated events
    assert np.allclose(report.correlation(X[:, :3], w), np.corrcoef(repeated, rowvar=False))
