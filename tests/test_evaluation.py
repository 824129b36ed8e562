"""Metrics (checked against scikit-learn and brute force), plots and the Higgs challenge submission."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mlaas4hep_lab.training import evaluation as ev

skm = pytest.importorskip("sklearn.metrics")  # scikit-learn is a cross-check here only, never a dependency

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(n: int, seed: int, ties: bool = False, weighted: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.float32)
    score = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 1.0, n) + 1.2 * y)))
    if ties:  # a coarse score: many events share each value
        score = np.round(score, 2)
    weight = rng.exponential(1.0, n) + 0.01 if weighted else None
    return y, score, weight


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", data))


# ------------------------------------------------------------------------------------------- ROC / AUC
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_equals_sklearn_roc_auc_score(seed, ties, weighted):
    y, score, weight = _sample(3000, seed, ties=ties, weighted=weighted)
    expected = skm.roc_auc_score(y, score, sample_weight=weight)
    assert ev.auc(y, score, weight) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("drop", [False, True])
def test_roc_curve_equals_sklearn_points(drop):
    y, score, weight = _sample(2000, 5, ties=True, weighted=True)
    fpr, tpr, thr = ev.roc_curve(y, score, weight, drop_intermediate=drop)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, score, sample_weight=weight, drop_intermediate=drop)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr, sk_thr)


def test_roc_curve_shape_and_monotonicity():
    y, score, weight = _sample(1500, 7, ties=True, weighted=True)
    fpr, tpr, thr = ev.roc_curve(y, score, weight)
    assert fpr.shape == tpr.shape == thr.shape == (np.unique(score).size + 1,)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    assert fpr[-1] == pytest.approx(1.0) and tpr[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thr) < 0)  # distinct thresholds, decreasing
    # each point is the weighted fraction of each class with score >= threshold
    k = 40
    sel = score >= thr[k]
    sig = y > 0.5
    assert tpr[k] == pytest.approx(weight[sel & sig].sum() / weight[sig].sum())
    assert fpr[k] == pytest.approx(weight[sel & ~sig].sum() / weight[~sig].sum())


def test_auc_simple_cases():
    y = np.array([0, 0, 1, 1])
    assert ev.auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert ev.auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert ev.auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # one tie group: the diagonal
    assert ev.auc(y, [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a Keras-style (n, 1) column is accepted
    assert ev.auc(y, np.array([[0.1], [0.2], [0.8], [0.9]])) == 1.0


@pytest.mark.parametrize("labels", [np.ones(6), np.zeros(6)])
def test_one_class_gives_nan_without_warning_or_exception(labels):
    score = np.linspace(0, 1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(ev.auc(labels, score))
        assert math.isnan(ev.auc(labels, score, np.full(6, 2.0)))
        fpr, tpr, _ = ev.roc_curve(labels, score)
        metrics = ev.evaluate(labels, score, np.ones(6))
    assert np.isnan(fpr).all() or np.isnan(tpr).all()
    assert metrics["auc"] is None and metrics["auc_weighted"] is None
    json.dumps(metrics, allow_nan=False)


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="y has 3 events but score has 2"):
        ev.auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="weight has 2 events"):
        ev.auc([0, 1, 1], [0.1, 0.2, 0.3], [1.0, 1.0])
    with pytest.raises(ValueError, match="1 non-finite"):
        ev.auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="shape"):
        ev.auc([0, 1], np.ones((2, 2)))


# ----------------------------------------------------------------------------------- accuracy, log-loss
@pytest.mark.parametrize("weighted", [False, True])
def test_accuracy_and_log_loss_equal_sklearn(weighted):
    y, score, weight = _sample(2000, 11, weighted=weighted)
    expected_acc = skm.accuracy_score(y, score >= 0.5, sample_weight=weight)
    assert ev.accuracy(y, score, weight) == pytest.approx(expected_acc, abs=1e-12)
    expected_acc = skm.accuracy_score(y, score >= 0.7, sample_weight=weight)
    assert ev.accuracy(y, score, weight, threshold=0.7) == pytest.approx(expected_acc, abs=1e-12)
    # scores well inside (eps, 1 - eps): clipping plays no part, so the two definitions agree
    assert ev.log_loss(y, score, weight) == pytest.approx(skm.log_loss(y, score, sample_weight=weight), rel=1e-10)


def test_log_loss_clips_certain_mistakes():
    value = ev.log_loss([1, 0], [0.0, 1.0], eps=1e-7)
    assert value == pytest.approx(-math.log(1e-7))
    assert math.isfinite(value)


# ------------------------------------------------------------------------------------------------ AMS
def test_ams_formula_by_hand():
    # s = 100, b = 1000, b_reg = 10: sqrt(2 * (1110 * ln(1 + 100/1010) - 100))
    hand = math.sqrt(2 * (1110 * math.log(1 + 100 / 1010) - 100))
    assert ev.ams(100, 1000) == pytest.approx(hand, rel=1e-12)
    assert ev.ams(100, 1000) == pytest.approx(3.0966917, abs=1e-6)
    assert ev.ams(100, 1000, b_reg=0) == pytest.approx(math.sqrt(2 * (1100 * math.log(1.1) - 100)), rel=1e-12)
    assert isinstance(ev.ams(100, 1000), float)
    assert ev.ams(0.0, 500.0) == 0.0
    # s << b: the familiar s / sqrt(b)
    assert ev.ams(10.0, 1e6, b_reg=0) == pytest.approx(10.0 / 1e3, rel=1e-4)


def test_ams_is_vectorised():
    s = np.array([0.0, 1.0, 100.0, 250.0])
    b = np.array([10.0, 3.0, 1000.0, 50.0])
    values = ev.ams(s, b, b_reg=5.0)
    assert isinstance(values, np.ndarray) and values.shape == (4,)
    np.testing.assert_allclose(values, [ev.ams(si, bi, b_reg=5.0) for si, bi in zip(s, b)], rtol=1e-14)
    # broadcasting: one s against many b
    assert ev.ams(100.0, np.array([1000.0, 10.0])).shape == (2,)


def _brute_force_best_ams(y, score, weight, b_reg, scale):
    best = None
    for t in np.unique(score):
        sel = score >= t
        s = scale * weight[sel & (y > 0.5)].sum()
        b = scale * weight[sel & (y < 0.5)].sum()
        a = math.sqrt(max(0.0, 2 * ((s + b + b_reg) * math.log(1 + s / (b + b_reg)) - s)))
        if best is None or a > best[0]:
            best = (a, t, s, b, sel.mean())
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_best_ams_equals_brute_force_over_all_thresholds(seed, scale):
    y, score, weight = _sample(400, seed, ties=seed % 2 == 1, weighted=True)
    weight = weight * np.where(y > 0.5, 0.5, 20.0)  # challenge-like: few signal, heavy background
    found = ev.best_ams(y, score, weight, b_reg=10.0, scale=scale)
    a, t, s, b, frac = _brute_force_best_ams(y, score, weight, 10.0, scale)
    assert found["ams"] == pytest.approx(a, rel=1e-10)
    assert found["threshold"] == t
    assert found["s"] == pytest.approx(s, rel=1e-10) and found["b"] == pytest.approx(b, rel=1e-10)
    assert found["selected_fraction"] == pytest.approx(frac)
    assert found["n_selected"] == int(np.count_nonzero(score >= t))


def test_best_ams_scale_renormalises_a_test_split():
    y, score, weight = _sample(1000, 21, weighted=True)
    weight = weight * np.where(y > 0.5, 0.2, 5.0)
    # scaling s and b by 1/f is the same as scaling the weights by 1/f
    scaled = ev.best_ams(y, score, weight, scale=1 / 0.25)
    by_weights = ev.best_ams(y, score, weight * 4.0)
    assert scaled == pytest.approx(by_weights, rel=1e-12)
    # s, b are the selected weight sums times the scale
    sel = score >= scaled["threshold"]
    assert scaled["s"] == pytest.approx(4.0 * weight[sel & (y > 0.5)].sum())
    assert scaled["b"] == pytest.approx(4.0 * weight[sel & (y < 0.5)].sum())
    assert scaled["ams"] > ev.best_ams(y, score, weight)["ams"]  # more events, more significance
    with pytest.raises(ValueError, match="scale must be positive"):
        ev.best_ams(y, score, weight, scale=0)


# --------------------------------------------------------------------------------- efficiency / purity
def test_efficiency_purity_hand_example():
    y = [1, 1, 0, 1, 0]
    score = [0.9, 0.8, 0.8, 0.6, 0.2]  # a tie at 0.8 between a signal and a background event
    weight = [1.0, 2.0, 1.0, 1.0, 3.0]
    eff, pur, thr = ev.efficiency_purity(y, score, weight)
    np.testing.assert_array_equal(thr, [0.9, 0.8, 0.6, 0.2])
    # selected s: 1, 3, 4, 4 of 4; selected b: 0, 1, 1, 4
    np.testing.assert_allclose(eff, [0.25, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(pur, [1.0, 0.75, 0.8, 0.5])
    eff, pur, thr = ev.efficiency_purity(y, score)  # unweighted: s 1,2,3,3 of 3; b 0,1,1,2
    np.testing.assert_allclose(eff, [1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(pur, [1.0, 2 / 3, 0.75, 0.6])


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_is_plain_json():
    y, score, weight = _sample(2000, 4, weighted=True)
    metrics = ev.evaluate(y, score, weight, test_fraction=0.2)
    text = json.dumps(metrics, allow_nan=False)
    assert json.loads(text) == metrics
    assert all(type(v) in (int, float) for v in metrics.values())
    assert metrics["n_events"] == 2000
    assert metrics["n_signal"] + metrics["n_background"] == 2000
    assert metrics["n_signal"] == int((y > 0.5).sum())
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-9)
    assert metrics["auc_weighted"] == pytest.approx(skm.roc_auc_score(y, score, sample_weight=weight), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, score >= 0.5))
    assert metrics["ams_scale"] == pytest.approx(5.0)
    best = ev.best_ams(y, score, weight, scale=5.0)
    assert (metrics["ams"], metrics["ams_threshold"], metrics["ams_s"], metrics["ams_b"]) == pytest.approx(
        (best["ams"], best["threshold"], best["s"], best["b"]))

    plain = ev.evaluate(y, score)
    assert set(plain) == {"n_events", "n_signal", "n_background", "auc", "accuracy", "log_loss"}
    json.dumps(plain, allow_nan=False)
    with pytest.raises(ValueError, match="test_fraction"):
        ev.evaluate(y, score, weight, test_fraction=1.5)


# ---------------------------------------------------------------------------------------------- plots
def _check_png_pdf(paths, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert pdf.startswith(b"%PDF") and _pdf_pages(pdf) == 1


@pytest.mark.parametrize("weighted", [False, True])
def test_every_plot_writes_png_and_pdf(tmp_path, weighted):
    pytest.importorskip("matplotlib")
    y, score, weight = _sample(3000, 9, weighted=weighted)
    _check_png_pdf(ev.plot_roc(y, score, weight, tmp_path, label="DNN"), "roc")
    _check_png_pdf(ev.plot_score_distributions(y, score, weight, tmp_path), "score_distributions")
    _check_png_pdf(ev.plot_efficiency_purity(y, score, weight, tmp_path), "efficiency_purity")
    _check_png_pdf(ev.plot_ams_vs_threshold(y, score, weight, tmp_path, scale=5.0), "ams_vs_threshold")
    # another name, in a folder that does not exist yet
    _check_png_pdf(ev.plot_roc(y, score, weight, tmp_path / "sub" / "dir", name="roc_bdt"), "roc_bdt")


def test_long_curves_are_thinned_for_plots(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(3)
    y = rng.random(100_000) < 0.5
    score = rng.random(100_000) + 0.2 * y  # 100k distinct scores
    paths = ev.plot_efficiency_purity(y, score, None, tmp_path)
    assert paths[1].stat().st_size < 400_000


def test_feature_pdfs_from_a_dict(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    features = {
        "PRI_met": (rng.exponential(60, 500), rng.exponential(40, 800)),
        "PRI_jet_num": (rng.integers(0, 4, 500), rng.integers(0, 4, 800)),  # integers: one bin per value
        "Jet_pt[0]": (np.r_[rng.normal(50, 10, 300), np.nan], rng.normal(40, 10, 300)),
        "empty": (np.array([]), np.array([])),
    }
    paths = ev.plot_feature_pdfs(features, tmp_path)
    names = [p.name for p in paths]
    assert names == ["pdf_PRI_met.png", "pdf_PRI_jet_num.png", "pdf_Jet_pt_0.png", "pdf_empty.png",
                     "feature_pdfs.pdf"]
    for png in paths[:-1]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert _pdf_pages(paths[-1].read_bytes()) == 4

    limited = ev.plot_feature_pdfs(features, tmp_path / "two", max_features=2)
    assert len(limited) == 3 and _pdf_pages(limited[-1].read_bytes()) == 2


def test_feature_pdfs_from_vectorized_arrays_leave_masked_values_out(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(2)
    n = 600
    X = rng.normal(0, 1, (n, 3)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.float32)
    mask = rng.random((n, 3)) < 0.8
    X[~mask] = -999.0  # what a masked slot may hold: it must not reach the histograms
    names = ["a", "b", "c[0]"]

    items = ev._feature_items((X, y, names, mask))
    for j, (name, sig, bkg) in enumerate(items):
        assert name == names[j]
        assert sig.size == np.count_nonzero(mask[:, j] & (y > 0.5))
        assert bkg.size == np.count_nonzero(mask[:, j] & (y < 0.5))
        assert sig.min() > -100 and bkg.min() > -100

    paths = ev.plot_feature_pdfs((X, y, names, mask), tmp_path)
    assert [p.name for p in paths] == ["pdf_a.png", "pdf_b.png", "pdf_c_0.png", "feature_pdfs.pdf"]
    assert _pdf_pages(paths[-1].read_bytes()) == 3
    # without a mask every finite value is used
    assert ev._feature_items((X, y, names, None))[0][1].size == int((y > 0.5).sum())
    with pytest.raises(ValueError, match="one name per column"):
        ev.plot_feature_pdfs((X, y, names[:2], mask), tmp_path)


def test_module_import_is_light_and_plots_leave_no_open_figure(tmp_path):
    code = f"""
import sys
import numpy as np
from mlaas4hep_lab.training import evaluation as ev
assert "matplotlib" not in sys.modules, "matplotlib imported at module level"
ev.plot_roc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.6]), None, {str(tmp_path)!r})
assert "matplotlib" in sys.modules
# figures are standalone: none is left registered with pyplot (no leak across many plots)
assert "matplotlib.pyplot" not in sys.modules or sys.modules["matplotlib.pyplot"].get_fignums() == []
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "roc.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------- submission
def test_write_submission_follows_the_challenge_format(tmp_path):
    rng = np.random.default_rng(8)
    n = 500
    event_ids = rng.permutation(np.arange(350_000, 350_000 + n))
    score = np.round(rng.random(n), 2)  # many ties, broken by EventId
    threshold = 0.7
    path = ev.write_submission(tmp_path / "out" / "submission.csv", event_ids, score, threshold)

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["EventId", "RankOrder", "Class"]
    body = rows[1:]
    assert len(body) == n and all(len(r) == 3 for r in body)
    ids = np.array([int(r[0]) for r in body])
    ranks = np.array([int(r[1]) for r in body])
    classes = np.array([r[2] for r in body])
    assert np.all(np.diff(ids) > 0)  # rows in EventId order
    np.testing.assert_array_equal(np.sort(ranks), np.arange(1, n + 1))  # a permutation of 1..N
    by_id = dict(zip(event_ids.tolist(), score.tolist()))
    scores = np.array([by_id[i] for i in ids.tolist()])
    # rank order = increasing score, ties in increasing EventId
    order = np.argsort(ranks)
    ranked = list(zip(scores[order].tolist(), ids[order].tolist()))
    assert ranked == sorted(ranked)
    assert set(classes) == {"s", "b"}
    np.testing.assert_array_equal(classes == "s", scores >= threshold)


def test_write_submission_rejects_bad_ids(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        ev.write_submission(tmp_path / "s.csv", [1, 2, 2], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(ValueError, match="integers"):
        ev.write_submission(tmp_path / "s.csv", [1.5, 2.0], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="2 events but score has 3"):
        ev.write_submission(tmp_path / "s.csv", [1, 2], [0.1, 0.2, 0.3], 0.5)
    # float ids holding integers (as read from a float column) are fine
    path = ev.write_submission(tmp_path / "s.csv", np.array([3.0, 1.0]), [0.9, 0.1], 0.5)
    assert path.read_text() == "EventId,RankOrder,Class\n1,1,b\n3,2,s\n"
