"""Metrics and plots of the multi-class and regression tasks, checked against scikit-learn, numpy and
distributions whose answer is known analytically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlaas4hep_lab.training import evaluation_tasks as et

skm = pytest.importorskip("sklearn.metrics")  # scikit-learn is a cross-check here only, never a dependency

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("b", "c", "light")


def _multiclass(n: int, seed: int, k: int = 3, weighted: bool = False):
    """Labels (float32 class indices), softmax probabilities with some separation, weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), y] += 1.2
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    weight = (rng.exponential(1.0, n) + 0.01).astype(np.float32) if weighted else None
    return y.astype(np.float32), proba, weight


def _separated(n: int, seed: int):
    """Class 0 (signal) has p_0 ~ U(0, 1), class 1 p_0 ~ U(0, 0.5), class 2 p_0 ~ U(0, 0.25).

    Cutting p_0 >= 1 - e keeps a fraction e of the signal and max(0, (w - (1 - e)) / w) of a
    background spread uniformly over [0, w]: rejection 1 / (2e - 1) for class 1 and 1 / (4e - 3) for
    class 2, infinite where that is <= 0."""
    rng = np.random.default_rng(seed)
    p0 = np.concatenate([rng.uniform(0, 1, n), rng.uniform(0, 0.5, n), rng.uniform(0, 0.25, n)])
    y = np.repeat(np.arange(3), n).astype(np.float32)
    proba = np.column_stack([p0, (1 - p0) / 2, (1 - p0) / 2])
    return y, proba


# ------------------------------------------------------------------------------------ multi-class metrics
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_per_class_and_macro_equal_sklearn_one_vs_rest(weighted):
    y, proba, weight = _multiclass(4000, 1, k=4, weighted=weighted)
    names = ["b", "c", "light", "tau"]
    metrics = et.evaluate_multiclass(y, proba, weight, names)
    for k, name in enumerate(names):
        expected = skm.roc_auc_score(y == k, proba[:, k], sample_weight=weight)
        assert metrics["auc_per_class"][name] == pytest.approx(expected, abs=1e-9)
    assert metrics["auc_macro"] == pytest.approx(np.mean(list(metrics["auc_per_class"].values())), abs=1e-12)
    expected_macro = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", sample_weight=weight)
    assert metrics["auc_macro"] == pytest.approx(expected_macro, abs=1e-9)
    assert 0.7 < metrics["auc_macro"] < 0.95  # the sample is separable but not trivially


@pytest.mark.parametrize("weighted", [False, True])
def test_log_loss_and_accuracy_equal_sklearn(weighted):
    y, proba, weight = _multiclass(3000, 2, weighted=weighted)
    assert et.multiclass_log_loss(y, proba, weight) == pytest.approx(
        skm.log_loss(y, proba, sample_weight=weight, labels=[0, 1, 2]), rel=1e-9)
    assert et.multiclass_accuracy(y, proba, weight) == pytest.approx(
        skm.accuracy_score(y, np.argmax(proba, axis=1), sample_weight=weight), abs=1e-12)
    metrics = et.evaluate_multiclass(y, proba, weight, CLASSES)
    assert metrics["log_loss"] == pytest.approx(et.multiclass_log_loss(y, proba, weight), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(et.multiclass_accuracy(y, proba, weight), abs=1e-12)


def test_log_loss_clips_probabilities():
    y = np.array([0, 1], np.float32)
    proba = np.array([[0.0, 1.0], [0.0, 1.0]])  # the first event is certain of the wrong class
    assert et.multiclass_log_loss(y, proba) == pytest.approx((-np.log(1e-7) - np.log1p(-1e-7)) / 2)
    assert et.multiclass_log_loss(y, proba, eps=1e-3) == pytest.approx((-np.log(1e-3) - np.log1p(-1e-3)) / 2)


def test_confusion_equals_sklearn_and_rows_are_normalised():
    y, proba, weight = _multiclass(2500, 3, weighted=True)
    metrics = et.evaluate_multiclass(y, proba, weight, CLASSES)
    expected = skm.confusion_matrix(y, np.argmax(proba, axis=1), labels=[0, 1, 2])
    assert metrics["confusion"] == expected.tolist()  # unweighted counts even with weights
    normalised = np.array(metrics["confusion_normalised"])
    np.testing.assert_allclose(normalised, expected / expected.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(normalised.sum(axis=1), 1.0, rtol=1e-12)
    assert metrics["events"] == 2500
    assert metrics["events_per_class"] == {name: int(np.sum(y == k)) for k, name in enumerate(CLASSES)}


def test_result_is_plain_json():
    y, proba, weight = _multiclass(500, 4, weighted=True)
    metrics = et.evaluate_multiclass(y, proba, weight, CLASSES)
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert metrics["task"] == "multiclass" and metrics["classes"] == list(CLASSES) and metrics["weighted"]
    assert metrics["notes"] == []
    assert set(metrics["rejection"]) == set(CLASSES)
    assert set(metrics["rejection"]["b"]) == {"c", "light"}
    assert set(metrics["rejection"]["b"]["light"]) == {"0.5", "0.7", "0.9"}


# ------------------------------------------------------------------------------------------- rejection
def test_rejection_matches_the_analytic_value_and_a_direct_computation():
    y, proba = _separated(100_000, 5)
    effs = (0.4, 0.7, 0.8, 0.9, 1.0)
    rejection = et.evaluate_multiclass(y, proba, None, ["sig", "wide", "narrow"], efficiencies=effs)["rejection"]
    sig, wide, narrow = (proba[y == k, 0] for k in range(3))
    for e in effs:
        # directly: the cut that keeps a fraction e of the signal, then the fraction of background above it
        cut = np.quantile(sig, 1 - e)
        for name, bkg, width in (("wide", wide, 0.5), ("narrow", narrow, 0.25)):
            analytic_eff = (width - (1 - e)) / width
            got = rejection["sig"][name][f"{e:g}"]
            if analytic_eff <= 0:  # no background passes: an infinite rejection, given as None
                assert got is None, (name, e)
                continue
            assert got == pytest.approx(1 / analytic_eff, rel=0.02), (name, e)
            assert got == pytest.approx(1 / np.mean(bkg >= cut), rel=2e-3), (name, e)
    assert rejection["sig"]["wide"]["1"] == pytest.approx(1.0)


def test_rejection_on_small_hand_computed_samples():
    # s: p_0 = 0.9 0.8 0.7 0.6; b: p_0 = 0.85 0.5 0.4 0.3. Lowering the cut on p_0, s's efficiency is
    # 1/4 before any b passes, then 1/2 .. 1 with one b (0.85) above the cut.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)
    p0 = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.5, 0.4, 0.3])
    proba = np.column_stack([p0, 1 - p0])
    out = et.evaluate_multiclass(y, proba, None, ["s", "b"], efficiencies=(0.25, 0.375, 0.75, 1.0))
    assert out["rejection"]["s"]["b"] == {"0.25": None, "0.375": 4.0, "0.75": 4.0, "1": 4.0}
    # b as signal cuts on p_1 = 1 - p_0: b at 0.7 0.6 0.5 pass before any s (0.4 .. 0.1); b's last event
    # (0.15) passes after three of the four s
    assert out["rejection"]["b"]["s"] == {"0.25": None, "0.375": None, "0.75": None, "1": pytest.approx(4 / 3)}


def test_rejection_interpolates_between_tied_scores():
    # s: 0.9 0.5; b: 0.5 0.1. The tie at 0.5 takes the ROC from (eff_s, eff_b) = (1/2, 0) to (1, 1/2) in
    # one step; between them the efficiencies are interpolated linearly, as the ROC curve is drawn.
    y = np.array([0, 0, 1, 1], np.float32)
    p0 = np.array([0.9, 0.5, 0.5, 0.1])
    proba = np.column_stack([p0, 1 - p0])
    out = et.evaluate_multiclass(y, proba, None, ["s", "b"], efficiencies=(0.5, 0.6, 0.75, 1.0))
    assert out["rejection"]["s"]["b"] == {"0.5": None, "0.6": pytest.approx(10.0), "0.75": pytest.approx(4.0),
                                          "1": 2.0}


def test_weighted_rejection_counts_weights():
    # doubling the weight of the background events above a cut doubles their efficiency
    y, proba = _separated(20_000, 6)
    weight = np.ones(y.size, np.float32)
    weight[(y == 1) & (proba[:, 0] > 0.4)] = 2.0
    effs = (0.7, 0.9)
    got = et.evaluate_multiclass(y, proba, weight, ["sig", "wide", "narrow"], efficiencies=effs)["rejection"]
    sig, wide, w_wide = proba[y == 0, 0], proba[y == 1, 0], weight[y == 1]
    for e in effs:
        cut = np.quantile(sig, 1 - e)
        expected = w_wide.sum() / w_wide[wide >= cut].sum()
        assert got["sig"]["wide"][f"{e:g}"] == pytest.approx(expected, rel=5e-3)


def test_class_without_events():
    y, proba, weight = _multiclass(3000, 7, k=4, weighted=True)
    y[y == 3] = 0  # the class "tau" has no events, though the model gives it a probability
    names = ["b", "c", "light", "tau"]
    metrics = et.evaluate_multiclass(y, proba, weight, names)
    assert metrics["auc_per_class"]["tau"] is None
    defined = [metrics["auc_per_class"][n] for n in names[:3]]
    assert None not in defined
    assert metrics["auc_macro"] == pytest.approx(np.mean(defined), abs=1e-12)
    assert any("tau" in note and "auc_macro" in note for note in metrics["notes"])
    assert metrics["confusion"][3] == [0, 0, 0, 0]
    assert metrics["confusion_normalised"][3] == [None, None, None, None]
    assert all(v is None for v in metrics["rejection"]["tau"]["b"].values())
    assert all(v is None for v in metrics["rejection"]["b"]["tau"].values())
    assert all(v is not None for v in metrics["rejection"]["b"]["c"].values())
    json.dumps(metrics, allow_nan=False)


def test_negative_weights_are_accepted():
    y, proba, weight = _multiclass(3000, 8, weighted=True)
    weight[::10] *= -0.2  # Monte Carlo events with negative weights
    metrics = et.evaluate_multiclass(y, proba, weight, CLASSES)
    for k, name in enumerate(CLASSES):
        ours = metrics["auc_per_class"][name]
        assert ours == pytest.approx(et.auc(y == k, proba[:, k], weight), abs=1e-12)  # the binary AUC's value
    assert metrics["accuracy"] == pytest.approx(
        np.sum(weight * (np.argmax(proba, 1) == y)) / weight.sum(), rel=1e-6)
    assert all(v is None or v > 1 for v in metrics["rejection"]["b"]["c"].values())


@pytest.mark.parametrize("bad, match", [
    (lambda y, p: (np.where(y == 0, 3.0, y), p), "class indices 0..2"),
    (lambda y, p: (y + 0.5, p), "class indices"),
    (lambda y, p: (y, p[:, :2]), "one column per class"),
    (lambda y, p: (y[:-1], p), "events but proba has"),
])
def test_bad_inputs_name_the_problem(bad, match):
    y, proba, _ = _multiclass(50, 9)
    y, proba = bad(y, proba)
    with pytest.raises(ValueError, match=match):
        et.evaluate_multiclass(y, proba, None, CLASSES)


def test_efficiencies_must_be_fractions():
    y, proba, _ = _multiclass(50, 9)
    with pytest.raises(ValueError, match=r"efficiencies must be in \(0, 1\]"):
        et.evaluate_multiclass(y, proba, None, CLASSES, efficiencies=(0.0, 0.5))


# ------------------------------------------------------------------------------------ weighted quantiles
QS = np.array([0.0, 0.013, 0.16, 0.25, 0.5, 0.84, 0.977, 1.0])


def test_weighted_quantile_with_unit_weights_is_the_unweighted_quantile():
    x = np.random.default_rng(10).normal(size=1001)
    expected = np.quantile(x, QS, method="inverted_cdf")
    np.testing.assert_array_equal(et.weighted_quantile(x, QS), expected)
    np.testing.assert_array_equal(et.weighted_quantile(x, QS, np.ones_like(x)), expected)
    np.testing.assert_array_equal(et.weighted_quantile(x, QS, np.full_like(x, 0.003)), expected)  # scale-free
    assert et.weighted_quantile(x, 0.5) == expected[4]
    assert isinstance(et.weighted_quantile(x, 0.5), float)


def test_weighted_quantile_with_integer_weights_repeats_events():
    rng = np.random.default_rng(11)
    x = rng.normal(size=517)
    w = rng.integers(1, 6, x.size)
    repeated = np.repeat(x, w)
    got = et.weighted_quantile(x, QS, w.astype(np.float32))
    np.testing.assert_array_equal(got, et.weighted_quantile(repeated, QS))
    np.testing.assert_array_equal(got, np.quantile(repeated, QS, method="inverted_cdf"))


def test_weighted_quantile_equals_numpy_weighted_and_handles_edges():
    rng = np.random.default_rng(12)
    x, w = rng.normal(size=800), rng.exponential(size=800)
    np.testing.assert_array_equal(et.weighted_quantile(x, QS, w), np.quantile(x, QS, weights=w, method="inverted_cdf"))
    assert et.weighted_quantile([1.0, 2.0, 3.0], 0.5, [1, 1, 5]) == 3.0
    assert et.weighted_quantile([1.0, 2.0, 3.0], 0.5, [3, -1, 1]) == 1.0  # cumulative 3 of 3 reached at 1.0
    assert np.isnan(et.weighted_quantile([], 0.5))
    assert np.isnan(et.weighted_quantile([1.0, 2.0], 0.5, [1.0, -1.0]))  # no positive total weight
    with pytest.raises(ValueError, match="quantiles must be in"):
        et.weighted_quantile(x, 1.5)


# ------------------------------------------------------------------------------------ regression metrics
def _regression(n: int, seed: int, weighted: bool = False, sigma: float = 0.1, offset_sigma: float = 2.0):
    """Target 0 (strictly positive): pred = truth * (1 + N(0, sigma)); target 1 (crosses zero):
    pred = truth + N(0, offset_sigma)."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack([rng.uniform(10, 200, n), rng.normal(0, 5, n)]).astype(np.float32)
    pred = np.column_stack([truth[:, 0] * (1 + rng.normal(0, sigma, n)),
                            truth[:, 1] + rng.normal(0, offset_sigma, n)]).astype(np.float32)
    weight = (rng.exponential(1.0, n) + 0.01).astype(np.float32) if weighted else None
    return truth, pred, weight


@pytest.mark.parametrize("weighted", [False, True])
def test_regression_errors_equal_numpy_and_sklearn(weighted):
    truth, pred, weight = _regression(5000, 13, weighted=weighted)
    metrics = et.evaluate_regression(truth, pred, weight, ["pt", "eta"])
    for j, name in enumerate(["pt", "eta"]):
        t, p = truth[:, j].astype(np.float64), pred[:, j].astype(np.float64)
        assert metrics["rmse"][name] == pytest.approx(
            np.sqrt(skm.mean_squared_error(t, p, sample_weight=weight)), rel=1e-9)
        assert metrics["mae"][name] == pytest.approx(skm.mean_absolute_error(t, p, sample_weight=weight), rel=1e-9)
        assert metrics["bias"][name] == pytest.approx(np.average(p - t, weights=weight), rel=1e-9, abs=1e-12)
    losses = et.regression_losses(truth, pred, weight)
    assert losses["mse"] == pytest.approx(skm.mean_squared_error(truth, pred, sample_weight=weight), rel=1e-6)
    assert losses["mae"] == pytest.approx(skm.mean_absolute_error(truth, pred, sample_weight=weight), rel=1e-6)
    assert metrics["loss"] == losses
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics


@pytest.mark.parametrize("weighted", [False, True])
def test_response_and_resolution_recover_the_injected_smearing(weighted):
    sigma, offset_sigma = 0.1, 2.0
    truth, pred, weight = _regression(60_000, 14, weighted=weighted, sigma=sigma, offset_sigma=offset_sigma)
    metrics = et.evaluate_regression(truth, pred, weight, ["pt", "eta"], bins=6)
    assert metrics["response_kind"] == {"pt": "ratio", "eta": "difference"}
    np.testing.assert_allclose(metrics["response"]["pt"], 1.0, atol=0.01)
    np.testing.assert_allclose(metrics["resolution"]["pt"], sigma, rtol=0.06)
    np.testing.assert_allclose(metrics["response"]["eta"], 0.0, atol=0.1 * offset_sigma)  # ~6 standard errors
    np.testing.assert_allclose(metrics["resolution"]["eta"], offset_sigma, rtol=0.06)
    bins = metrics["bins"]["pt"]
    assert len(bins["edges"]) == 7 and len(bins["centres"]) == 6 and sum(bins["events"]) == 60_000
    assert bins["edges"] == sorted(bins["edges"])
    assert bins["edges"][0] == pytest.approx(truth[:, 0].min()) and bins["edges"][-1] == pytest.approx(truth[:, 0].max())
    if not weighted:  # quantile bins hold equal numbers of events
        assert bins["events"] == [10_000] * 6
    np.testing.assert_allclose(bins["centres"], (np.array(bins["edges"][1:]) + bins["edges"][:-1]) / 2)


def test_response_per_bin_is_the_median_of_that_bin():
    truth = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pred = truth * np.array([1.0, 1.2, 0.9, 2.0, 2.2, 1.8])
    metrics = et.evaluate_regression(truth, pred, None, ["e"], bins=2)
    assert metrics["bins"]["e"]["edges"] == [1.0, 3.0, 6.0]  # inverted-cdf quantiles: values of the sample
    assert metrics["bins"]["e"]["events"] == [3, 3]  # [1, 3] and (3, 6]
    assert metrics["bins"]["e"]["centres"] == [2.0, 4.5]
    assert metrics["response"]["e"] == pytest.approx([1.0, 2.0])
    assert metrics["resolution"]["e"] == pytest.approx([(1.2 - 0.9) / 2, (2.2 - 1.8) / 2])


def test_single_target_accepts_flat_arrays():
    truth, pred, weight = _regression(3000, 15, weighted=True)
    flat = et.evaluate_regression(truth[:, 0], pred[:, 0], weight, ["pt"])
    column = et.evaluate_regression(truth[:, :1], pred[:, :1], weight, ["pt"])
    assert flat == column
    assert flat["targets"] == ["pt"] and flat["events"] == 3000
    assert flat["rmse"]["pt"] == pytest.approx(
        np.sqrt(np.average((pred[:, 0] - truth[:, 0]).astype(np.float64) ** 2, weights=weight)), rel=1e-9)
    assert et.regression_losses(truth[:, 0], pred[:, 0])["mae"] == pytest.approx(
        np.mean(np.abs(pred[:, 0].astype(np.float64) - truth[:, 0])), rel=1e-9)


def test_regression_shape_errors():
    truth, pred, _ = _regression(100, 16)
    with pytest.raises(ValueError, match="2 column"):
        et.evaluate_regression(truth, pred, None, ["pt"])
    with pytest.raises(ValueError, match="shape"):
        et.evaluate_regression(truth, pred[:, :1], None, ["pt", "eta"])


# ---------------------------------------------------------------------------------------------- plots
def _written(paths, folder, stems):
    assert [p.name for p in paths] == [f"{s}.{ext}" for s in stems for ext in ("png", "pdf")]
    for path in paths:
        assert path.parent == folder and path.stat().st_size > 1000
        head = path.read_bytes()[:8]
        assert head.startswith(PNG_MAGIC if path.suffix == ".png" else b"%PDF")


def test_plot_multiclass_writes_every_plot(tmp_path):
    y, proba, weight = _multiclass(600, 17, k=4, weighted=True)
    y[y == 3] = 0  # a class with no events is drawn as such, not an error
    out = tmp_path / "plots"
    paths = et.plot_multiclass(y, proba, weight, ["b", "c", "light jets", "tau/had"], out)
    _written(paths, out, ["roc_multiclass", "confusion", "rejection_b", "rejection_c", "rejection_light_jets",
                          "rejection_tau_had"])


def test_plot_regression_writes_every_plot(tmp_path):
    truth, pred, weight = _regression(800, 18, weighted=True)
    paths = et.plot_regression(truth, pred, weight, ["Jet_pt[0]", "log(eta)"], tmp_path)
    _written(paths, tmp_path, ["regression_Jet_pt_0", "response_Jet_pt_0", "regression_log_eta", "response_log_eta"])
    paths = et.plot_regression(truth[:, 0], pred[:, 0], None, ["pt"], tmp_path / "one")
    _written(paths, tmp_path / "one", ["regression_pt", "response_pt"])
