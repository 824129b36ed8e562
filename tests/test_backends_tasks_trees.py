"""The scikit-learn and XGBoost backends on the multi-class and regression tasks (issue 14), on synthetic
data: three gaussian blobs (K = 3) and a smooth regression of one and of two targets. Each backend is driven
through the training modes it has (partial_fit / warm start / fit; XGBoost over a stream of numpy chunks),
then: the outputs' shapes and dtypes, probabilities that sum to 1 in class-index order, accuracy and R^2
well above chance, identical predictions after save + load (and a resumed XGBoost training identical to an
uninterrupted one), ONNX exports equal to ``predict`` (or the reason there is none), and the errors that
say what to return instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import SGDClassifier
from sklearn.multioutput import MultiOutputRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.svm import SVC

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends.sklearn import SklearnBackend
from mlaas4hep_lab.backends.xgboost import XGBoostBackend
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import Task
from mlaas4hep_lab.training.model_file import load_model_file

xgb = extras.xgboost()

N_FEATURES = 6
CHUNK = 800
N_CHUNKS = 3
MULTICLASS = Task("multiclass", ("ttH", "ttbar", "QCD"))
REGRESSION_1 = Task("regression", (), ("E_true",))
REGRESSION_2 = Task("regression", (), ("E_true", "log(pt_true)"))
TEMPLATES = Path(load_model_file.__code__.co_filename).with_name("templates")


# -- data -----------------------------------------------------------------------------------------------
def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three unit gaussians in 6 dimensions, class c shifted by 2.5 along feature c (best accuracy ~0.93)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, N_FEATURES))
    X[np.arange(n), y] += 2.5
    return X.astype(np.float32), y.astype(np.float32)


def smooth(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth targets of uniform features with a little noise (best R^2 ~0.99)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, N_FEATURES))
    Y = np.stack([2 * X[:, 0] + np.sin(2 * X[:, 1]) + 0.5 * X[:, 2] ** 2 + 10,
                  X[:, 0] * X[:, 3] - np.abs(X[:, 4]) + 3], axis=1)
    Y += rng.normal(scale=0.1, size=Y.shape)
    return X.astype(np.float32), Y.astype(np.float32)


def chunks_of(X, y, weight=None):
    n = N_CHUNKS * CHUNK
    return [(X[i:i + CHUNK], y[i:i + CHUNK], None if weight is None else weight[i:i + CHUNK])
            for i in range(0, n, CHUNK)]


@pytest.fixture(scope="module")
def classes():
    X, y = blobs(N_CHUNKS * CHUNK + 1000, seed=1)
    # the first chunk without class 2: class columns must not depend on what a chunk holds
    first = np.flatnonzero(y[:CHUNK * 2] != 2)[:CHUNK]
    rest = np.setdiff1d(np.arange(N_CHUNKS * CHUNK), first)
    order = np.concatenate([first, rest])
    Xt, yt = X[order], y[order]
    return {"chunks": chunks_of(Xt, yt), "X": Xt, "y": yt, "validation": [(X[-1000:-500], y[-1000:-500], None)],
            "X_test": X[-500:], "y_test": y[-500:].astype(int)}


@pytest.fixture(scope="module")
def targets():
    X, Y = smooth(N_CHUNKS * CHUNK + 1000, seed=2)
    n = N_CHUNKS * CHUNK
    return {"X": X[:n], "Y": Y[:n], "validation": (X[n:n + 500], Y[n:n + 500]),
            "X_test": X[-500:], "Y_test": Y[-500:]}


def regression_data(targets, task):
    """The targets of ``task`` (one: the first column), as the trainer hands them: float32[n, T]."""
    width = len(task.targets)
    return (targets["Y"][:, :width], targets["validation"][1][:, :width], targets["Y_test"][:, :width])


def r2(Y, P) -> np.ndarray:
    Y, P = np.asarray(Y, np.float64).reshape(len(Y), -1), np.asarray(P, np.float64).reshape(len(Y), -1)
    return 1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)


def options(task, **more):
    return {"task": task, "seed": 0, "batch_size": 256, **more}


def train(backend, chunks):
    """Drive a backend the way the trainer does, by its (instance) mode."""
    if backend.mode == "batches":
        return [backend.fit_chunk(X, y, w, epochs=3, batch_size=256) for X, y, w in chunks]
    if backend.mode == "accumulate":
        backend.check_accumulate(sum(len(c[0]) for c in chunks), N_FEATURES)
        return [backend.fit_all(*(np.concatenate(part) if part[0] is not None else None for part in zip(*chunks)))]
    return [backend.fit_stream(lambda: iter(chunks), None)]


def check_probabilities(p, n):
    assert p.dtype == np.float32 and p.shape == (n, 3)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def check_round_trip_and_onnx(backend, cls, X, directory, task, *, onnx=True):
    """Save + load predicts exactly the same; the ONNX export (``onnx`` False: none, with its reason)
    gives ``predict``'s outputs."""
    before = backend.predict(X)
    backend.save(directory / "model")
    loaded = cls.load(directory / "model", N_FEATURES, {"task": task})
    np.testing.assert_array_equal(loaded.predict(X), before)
    exported = backend.export(directory / "inference")
    if not onnx:
        assert exported["format"] is None and exported["reason"], exported
        assert not (directory / "inference" / "model.onnx").exists()
        return exported
    assert exported["format"] == "onnx", exported
    assert exported["columns"] == task.output_names
    session = extras.onnxruntime().InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["score"]
    got = session.run(["score"], {"features": X})[0]
    assert got.shape == before.shape
    np.testing.assert_allclose(got, before, atol=1e-4 * max(1.0, float(np.abs(before).max())))
    np.testing.assert_allclose(session.run(["score"], {"features": X[:1]})[0], before[:1], rtol=1e-5, atol=1e-4)
    return exported


# -- scikit-learn, multi-class ----------------------------------------------------------------------------
SKLEARN_CLASSIFIERS = [
    (lambda: SGDClassifier(loss="log_loss", random_state=0), "partial_fit"),
    (lambda: MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0), "partial_fit"),
    (lambda: RandomForestClassifier(n_estimators=30, min_samples_leaf=3, random_state=0), "warm_start"),
    (lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0), "fit"),
    (lambda: SVC(random_state=0), "fit"),  # no predict_proba: a softmax of the decision scores
]


@pytest.mark.parametrize("factory, strategy", SKLEARN_CLASSIFIERS,
                         ids=[type(f()).__name__ for f, _ in SKLEARN_CLASSIFIERS])
def test_sklearn_multiclass_trains_predicts_saves_and_exports(classes, factory, strategy, tmp_path):
    backend = SklearnBackend(factory(), N_FEATURES, options(MULTICLASS, n_chunks=N_CHUNKS))
    assert backend.strategy == strategy
    metrics = train(backend, classes["chunks"])
    assert all(np.isfinite(m["loss"]) and m["loss"] < np.log(3) for m in metrics), metrics
    p = backend.predict(classes["X_test"])
    check_probabilities(p, len(classes["X_test"]))
    accuracy = float(np.mean(p.argmax(axis=1) == classes["y_test"]))
    assert accuracy > 0.8, f"{backend.estimator_name}: accuracy {accuracy:.3f} (chance 0.33)"
    np.testing.assert_array_equal(backend.model.classes_, [0, 1, 2])
    empty = backend.predict(classes["X_test"][:0])
    assert empty.dtype == np.float32 and empty.shape == (0, 3)
    check_round_trip_and_onnx(backend, SklearnBackend, classes["X_test"], tmp_path, MULTICLASS)


def test_sklearn_multiclass_partial_fit_is_told_every_class_first(classes):
    estimator = SGDClassifier(loss="log_loss", random_state=0)
    calls = []
    original = estimator.partial_fit
    estimator.partial_fit = lambda X, y, **kw: calls.append(kw) or original(X, y, **kw)
    backend = SklearnBackend(estimator, N_FEATURES, options(MULTICLASS))
    X0, y0, _ = classes["chunks"][0]
    assert 2 not in y0  # the first chunk has no event of class 2
    backend.fit_chunk(X0, y0, None, epochs=1, batch_size=256)
    np.testing.assert_array_equal(calls[0]["classes"], [0, 1, 2])
    assert all("classes" not in kw for kw in calls[1:])


def test_sklearn_multiclass_columns_follow_the_class_index(classes, tmp_path):
    """A model that never saw class 1 gives it probability 0, in column 1; warm-started ensembles keep every
    class column although a chunk lacked a class (zero-weight stand-ins)."""
    X, y = classes["X"], classes["y"]
    seen = y != 1
    backend = SklearnBackend(HistGradientBoostingClassifier(max_iter=20), N_FEATURES, options(MULTICLASS))
    backend.fit_all(X[seen], y[seen], None)
    p = backend.predict(classes["X_test"])
    check_probabilities(p, len(classes["X_test"]))
    assert np.all(p[:, 1] == 0) and p[:, 2].max() > 0.9
    check_round_trip_and_onnx(backend, SklearnBackend, classes["X_test"], tmp_path, MULTICLASS)

    forest = RandomForestClassifier(n_estimators=9, random_state=0)
    backend = SklearnBackend(forest, N_FEATURES, options(MULTICLASS, n_chunks=N_CHUNKS))
    backend.fit_chunk(*classes["chunks"][0], epochs=1, batch_size=256)  # classes 0 and 1 only
    assert [t.n_classes_ for t in forest.estimators_] == [3] * 3
    assert np.all(backend.predict(classes["X_test"])[:, 2] == 0)
    backend.fit_chunk(*classes["chunks"][1], epochs=1, batch_size=256)
    p = backend.predict(classes["X_test"])  # half the trees know class 2
    check_probabilities(p, len(classes["X_test"]))
    assert p[:, 2].max() >= 0.45 and np.mean(p.argmax(axis=1) == classes["y_test"]) > 0.8


def test_sklearn_multiclass_refuses_what_cannot_give_probabilities(classes, tmp_path):
    with pytest.raises(ConfigError, match=r"HistGradientBoostingRegressor is not a classifier, but the task is "
                                          r"multiclass \(3 classes: ttH, ttbar, QCD\).*return a classifier") as err:
        SklearnBackend(HistGradientBoostingRegressor(), N_FEATURES, options(MULTICLASS))
    assert err.value.key == "model" and isinstance(err.value, ValueError)
    backend = SklearnBackend(SGDClassifier(loss="log_loss"), N_FEATURES, options(MULTICLASS))
    with pytest.raises(ConfigError, match=r"class labels must be 0\.\.2"):
        backend.fit_chunk(classes["X"][:10], np.full(10, 3, np.float32), None, epochs=1, batch_size=5)
    # a model of four classes loaded for a task of three
    four = SklearnBackend(HistGradientBoostingClassifier(max_iter=5), N_FEATURES,
                          options(Task("multiclass", ("a", "b", "c", "d"))))
    four.fit_all(classes["X"], np.where(classes["y"] == 2, 3, classes["y"]), None)
    four.save(tmp_path / "four")
    with pytest.raises(ConfigError, match=r"trained on the classes \[0, 1, 3\], but the task has 3 classes"):
        SklearnBackend.load(tmp_path / "four", N_FEATURES, {"task": MULTICLASS})


def test_sklearn_multiclass_template(classes):
    um = load_model_file(TEMPLATES / "sklearn_multiclass.py", N_FEATURES)
    assert um.backend == "sklearn"
    backend = SklearnBackend(um.model.set_params(max_iter=30), N_FEATURES, options(MULTICLASS))
    train(backend, classes["chunks"])
    p = backend.predict(classes["X_test"])
    check_probabilities(p, len(classes["X_test"]))
    assert np.mean(p.argmax(axis=1) == classes["y_test"]) > 0.8


# -- scikit-learn, regression -----------------------------------------------------------------------------
SKLEARN_REGRESSORS = [
    (lambda: MLPRegressor(hidden_layer_sizes=(64,), learning_rate_init=0.02, random_state=0), "partial_fit",
     REGRESSION_2, 0.6),
    (lambda: RandomForestRegressor(n_estimators=30, min_samples_leaf=3, random_state=0), "warm_start",
     REGRESSION_2, 0.7),
    (lambda: HistGradientBoostingRegressor(max_iter=60, random_state=0), "fit", REGRESSION_1, 0.9),
    (lambda: MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=60, random_state=0)), "fit",
     REGRESSION_2, 0.85),
    # a one-target regression through the wrapper, which wants y as a column [n, 1]
    (lambda: MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=30, random_state=0)), "fit",
     REGRESSION_1, 0.85),
]


@pytest.mark.parametrize("factory, strategy, task, least_r2", SKLEARN_REGRESSORS,
                         ids=[f"{type(f()).__name__}-{len(t.targets)}" for f, _, t, _ in SKLEARN_REGRESSORS])
def test_sklearn_regression_trains_predicts_saves_and_exports(targets, factory, strategy, task, least_r2, tmp_path):
    Y, _, Y_test = regression_data(targets, task)
    backend = SklearnBackend(factory(), N_FEATURES, options(task, n_chunks=N_CHUNKS))
    assert backend.strategy == strategy
    metrics = train(backend, chunks_of(targets["X"], Y))
    assert 0 < metrics[-1]["loss"] < Y.var(axis=0).mean(), metrics[-1]  # mean squared error, better than the mean
    out = backend.predict(targets["X_test"])
    assert out.dtype == np.float32 and out.shape == (len(Y_test), len(task.targets))
    score = r2(Y_test, out)
    assert np.all(score > least_r2), f"{backend.estimator_name}: R^2 {score}"
    assert backend.predict(targets["X_test"][:0]).shape == (0, len(task.targets))
    check_round_trip_and_onnx(backend, SklearnBackend, targets["X_test"], tmp_path, task)


def test_sklearn_regression_refuses_a_classifier_and_a_single_output_for_two_targets():
    with pytest.raises(ConfigError, match=r"RandomForestClassifier is a classifier, but the task is a regression "
                                          r"of \['E_true'\]: model\(\) must return a regressor") as err:
        SklearnBackend(RandomForestClassifier(), N_FEATURES, options(REGRESSION_1))
    assert err.value.key == "model"
    with pytest.raises(ConfigError, match=r"HistGradientBoostingRegressor predicts one target, but the regression "
                                          r"has 2 .*sklearn\.multioutput\.MultiOutputRegressor") as err:
        SklearnBackend(HistGradientBoostingRegressor(), N_FEATURES, options(REGRESSION_2))
    assert err.value.key == "model"
    # scikit-learn's tags say MLPRegressor takes one target; it takes several, and is let through
    assert SklearnBackend(MLPRegressor(), N_FEATURES, options(REGRESSION_2)).strategy == "partial_fit"
    backend = SklearnBackend(RandomForestRegressor(n_estimators=2), N_FEATURES, options(REGRESSION_2))
    with pytest.raises(ConfigError, match=r"needs y of shape \[n, 2\], got \(10, 3\)"):
        backend.fit_chunk(np.zeros((10, N_FEATURES)), np.zeros((10, 3)), None, epochs=1)


def test_sklearn_regression_template(targets):
    for task in (REGRESSION_1, REGRESSION_2):
        Y, _, Y_test = regression_data(targets, task)
        um = load_model_file(TEMPLATES / "sklearn_regression.py", N_FEATURES, task=task)
        assert isinstance(um.model, MultiOutputRegressor) == (len(task.targets) > 1)
        um.model.set_params(**{"estimator__max_iter" if len(task.targets) > 1 else "max_iter": 60})
        backend = SklearnBackend(um.model, N_FEATURES, options(task))
        train(backend, chunks_of(targets["X"], Y))
        assert np.all(r2(Y_test, backend.predict(targets["X_test"])) > 0.85)
    # called as model(idim), without the task: one target
    assert isinstance(load_model_file(TEMPLATES / "sklearn_regression.py", N_FEATURES).model,
                      HistGradientBoostingRegressor)


# -- XGBoost, multi-class ---------------------------------------------------------------------------------
class Source:
    """A ChunkSource over fixed numpy chunks; counts its passes."""

    def __init__(self, chunks):
        self.chunks, self.passes = chunks, 0

    def __call__(self):
        self.passes += 1
        yield from self.chunks


XGB_CLASSIFIERS = {
    "XGBClassifier-default": lambda: xgb.XGBClassifier(n_estimators=20, max_depth=3),
    "template": lambda: load_model_file(TEMPLATES / "xgboost_multiclass.py", N_FEATURES).model.set_params(
        n_estimators=20, max_depth=3),
    "dict": lambda: {"objective": "multi:softprob", "n_estimators": 20, "max_depth": 3},
}


@pytest.mark.parametrize("name", list(XGB_CLASSIFIERS))
def test_xgboost_multiclass_over_the_stream(classes, name, tmp_path):
    backend = XGBoostBackend(XGB_CLASSIFIERS[name](), N_FEATURES,
                             options(MULTICLASS, external_memory=name == "dict", cache_dir=str(tmp_path)))
    assert backend.params["objective"] == "multi:softprob" and backend.params["num_class"] == 3
    assert backend.params["eval_metric"] == ["mlogloss", "merror"]
    rounds = []
    train, validation = Source(classes["chunks"]), Source(classes["validation"])
    result = backend.fit_stream(train, validation, on_round=lambda m: rounds.append(m) and False)
    assert train.passes >= 2 and len(rounds) == 20 == result["rounds"]
    for key in ("train_mlogloss", "train_merror", "validation_mlogloss", "validation_merror", "loss", "val_loss"):
        assert key in rounds[-1], rounds[-1]
    assert rounds[-1]["loss"] == rounds[-1]["train_mlogloss"] < rounds[0]["loss"]
    assert rounds[-1]["val_loss"] == rounds[-1]["validation_mlogloss"]
    p = backend.predict(classes["X_test"])
    check_probabilities(p, len(classes["X_test"]))
    accuracy = float(np.mean(p.argmax(axis=1) == classes["y_test"]))
    assert accuracy > 0.85, f"accuracy {accuracy:.3f}"
    assert rounds[-1]["validation_merror"] < 0.15
    assert backend.predict(classes["X_test"][:0]).shape == (0, 3)
    check_round_trip_and_onnx(backend, XGBoostBackend, classes["X_test"], tmp_path, MULTICLASS)


def test_xgboost_multiclass_in_memory_and_early_stopping(classes):
    backend = XGBoostBackend(xgb.XGBClassifier(n_estimators=300, max_depth=4, learning_rate=0.9,
                                               early_stopping_rounds=3), N_FEATURES, options(MULTICLASS))
    backend.fit_stream(Source(classes["chunks"]), Source(classes["validation"]))
    assert backend.best_iteration is not None and backend.booster.num_boosted_rounds() == backend.best_iteration + 1
    assert backend.booster.num_boosted_rounds() < 100  # stopped on the validation mlogloss
    in_memory = XGBoostBackend(xgb.XGBClassifier(n_estimators=10, max_depth=3), N_FEATURES, options(MULTICLASS))
    in_memory.fit_all(classes["X"], classes["y"], None)
    assert np.mean(in_memory.predict(classes["X_test"]).argmax(axis=1) == classes["y_test"]) > 0.85


def test_xgboost_multiclass_refusals(classes, tmp_path):
    cases = [
        (xgb.XGBClassifier(objective="multi:softmax"), "objective", r"'multi:softmax' gives the most likely class "
                                                                    r"only.*use objective 'multi:softprob'"),
        ({"objective": "multi:softprob", "num_class": 4}, "num_class", r"num_class=4, but the task is multiclass "
                                                                       r"\(3 classes: ttH, ttbar, QCD\)"),
        ({"objective": "binary:logistic"}, "objective", r"'binary:logistic' does not give class probabilities"),
        (xgb.XGBRegressor(), "model", r"returned an XGBRegressor, but the task is multiclass.*XGBClassifier\("
                                      r"objective='multi:softprob'\)"),
    ]
    for model, key, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            XGBoostBackend(model, N_FEATURES, options(MULTICLASS))
        assert err.value.key == key
    backend = XGBoostBackend({"objective": "multi:softprob", "n_estimators": 2}, N_FEATURES, options(MULTICLASS))
    with pytest.raises(ConfigError, match=r"class labels must be 0\.\.2 .* from 0 to 5"):
        backend.fit_all(classes["X"][:20], np.arange(20, dtype=np.float32) % 6, None)
    backend.fit_all(classes["X"], classes["y"], None)
    backend.save(tmp_path / "three")
    with pytest.raises(ConfigError, match=r"num_class=3, but the task has 4 classes") as err:
        XGBoostBackend.load(tmp_path / "three", N_FEATURES, {"task": Task("multiclass", ("a", "b", "c", "d"))})
    assert err.value.key == "classes"


# -- XGBoost, regression ----------------------------------------------------------------------------------
def _template(**settings):
    return load_model_file(TEMPLATES / "xgboost_regression.py", N_FEATURES).model.set_params(**settings)


XGB_REGRESSORS = {  # name: (model, task); the template at its own learning rate of 0.1
    "template-1": (lambda: _template(n_estimators=100, max_depth=4), REGRESSION_1),
    "template-2": (lambda: _template(n_estimators=100, max_depth=4), REGRESSION_2),
    # XGBoost starts pseudo-Huber from one Newton step, far off for targets away from 0 (dmlc/xgboost#9378):
    # it needs a base_score near them
    "pseudohuber-1": (lambda: xgb.XGBRegressor(objective="reg:pseudohubererror", huber_slope=5.0, base_score=10.0,
                                               n_estimators=40, max_depth=4), REGRESSION_1),
    "absoluteerror-2-external": (lambda: {"objective": "reg:absoluteerror", "n_estimators": 40, "max_depth": 4},
                                 REGRESSION_2),
    "multi_output_tree-2": (lambda: xgb.XGBRegressor(multi_strategy="multi_output_tree", n_estimators=40,
                                                     max_depth=4), REGRESSION_2),
}


@pytest.mark.parametrize("name", list(XGB_REGRESSORS))
def test_xgboost_regression_over_the_stream(targets, name, tmp_path):
    factory, task = XGB_REGRESSORS[name]
    model = factory()
    Y, Y_val, Y_test = regression_data(targets, task)
    backend = XGBoostBackend(model, N_FEATURES, options(task, external_memory="external" in name,
                                                        cache_dir=str(tmp_path)))
    assert backend.params["eval_metric"] == ["rmse"] and backend.params["objective"].startswith("reg:")
    rounds = []
    backend.fit_stream(Source(chunks_of(targets["X"], Y)), Source([(targets["validation"][0], Y_val, None)]),
                       on_round=lambda m: rounds.append(m) and False)
    assert rounds[-1]["loss"] == rounds[-1]["train_rmse"] < rounds[0]["loss"]
    assert rounds[-1]["val_loss"] == rounds[-1]["validation_rmse"]
    out = backend.predict(targets["X_test"])
    assert out.dtype == np.float32 and out.shape == (len(Y_test), len(task.targets))
    score = r2(Y_test, out)
    assert np.all(score > 0.85), f"R^2 {score}"
    assert backend.predict(targets["X_test"][:0]).shape == (0, len(task.targets))
    exported = check_round_trip_and_onnx(backend, XGBoostBackend, targets["X_test"], tmp_path, task,
                                         onnx=len(task.targets) == 1)
    if len(task.targets) > 1:
        assert "does not convert an XGBoost regression of 2 targets" in exported["reason"]
        assert ("vector leaves" in exported["reason"]) == ("multi_output_tree" in name)


def test_xgboost_regression_in_memory_and_refusals(targets, tmp_path):
    Y, _, Y_test = regression_data(targets, REGRESSION_2)
    backend = XGBoostBackend({"n_estimators": 30, "max_depth": 4}, N_FEATURES, options(REGRESSION_2))
    assert backend.params["objective"] == "reg:squarederror"
    backend.fit_all(targets["X"], Y, None)
    assert np.all(r2(Y_test, backend.predict(targets["X_test"])) > 0.85)
    backend.save(tmp_path / "two")
    with pytest.raises(ConfigError, match=r"predicts 2 target\(s\), but the task has 1"):
        XGBoostBackend.load(tmp_path / "two", N_FEATURES, {"task": REGRESSION_1})
    cases = [
        (xgb.XGBClassifier(), "model", r"returned an XGBClassifier, but the task is a regression of \['E_true'\]: "
                                       r"return xgboost\.XGBRegressor"),
        ({"objective": "binary:logistic"}, "objective", r"'binary:logistic' is not a regression.*reg:squarederror"),
        ({"objective": "reg:squarederror", "num_class": 3}, "num_class", r"num_class=3 is for classes"),
    ]
    for model, key, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            XGBoostBackend(model, N_FEATURES, options(REGRESSION_1))
        assert err.value.key == key
    with pytest.raises(ConfigError, match=r"needs labels of shape \[10, 2\], got \(10,\)"):
        XGBoostBackend({"n_estimators": 1}, N_FEATURES, options(REGRESSION_2)).fit_all(
            targets["X"][:10], Y[:10, 0], None)


@pytest.mark.parametrize("task", [MULTICLASS, REGRESSION_2], ids=["multiclass", "regression-2"])
def test_xgboost_resumes_a_checkpoint_as_if_never_interrupted(classes, targets, task, tmp_path):
    if task.kind == "multiclass":
        chunks, validation = classes["chunks"], classes["validation"]
        X_test = classes["X_test"]
    else:
        Y, Y_val, _ = regression_data(targets, task)
        chunks, validation = chunks_of(targets["X"], Y), [(targets["validation"][0], Y_val, None)]
        X_test = targets["X_test"]

    def fresh():
        return XGBoostBackend({"n_estimators": 12, "max_depth": 3, "early_stopping_rounds": 50}, N_FEATURES,
                              options(task))

    whole = fresh()
    whole.fit_stream(Source(chunks), Source(validation))
    first, seen = fresh(), []
    first.fit_stream(Source(chunks), Source(validation), on_round=lambda m: seen.append(m) or len(seen) == 5)
    assert first.booster.num_boosted_rounds() == 5
    first.save(tmp_path / "checkpoint")
    meta = json.loads((tmp_path / "checkpoint" / "xgboost.json").read_text())
    assert meta["params"].get("num_class") == (3 if task.kind == "multiclass" else None)
    resumed = XGBoostBackend.load(tmp_path / "checkpoint", N_FEATURES, {"task": task, "seed": 0})
    more = []
    resumed.fit_stream(Source(chunks), Source(validation), on_round=lambda m: more.append(m) and False,
                       previous_rounds=seen)
    assert [m["round"] for m in more] == list(range(6, 13))
    np.testing.assert_array_equal(resumed.predict(X_test), whole.predict(X_test))
