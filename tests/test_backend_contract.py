"""The one contract every ML backend honours, run over all of them (keras, torch, sklearn, xgboost).

Each backend's model comes from its shipped model.py template (``template_path(name)``) loaded as a
user's file is. A backend passes when it

* is picked by ``detect_backend`` for its own model and every other backend's ``accepts`` rejects it;
* trains through its own mode (``batches``: ``fit_chunk`` on 3 chunks; ``accumulate``: ``fit_all``;
  ``stream``: ``fit_stream`` over a ``ChunkSource``) to a test AUC above 0.85 on two separable gaussians;
* predicts ``float32[n]`` scores in [0, 1] (also for zero events);
* uses the sample weights (background weighted down -> higher scores on average);
* reloads what it saved with identical predictions;
* exports an artifact that onnxruntime / ``tf.saved_model.load`` runs to the same scores, or says why not;
* raises MissingExtraError naming its pip extra when its framework is missing;
* keeps its framework out of ``sys.modules`` until used.

The scores of an ONNX export are read as the serving runtime reads them: the output named by the export's
``output`` (else ``score``, else the last float output), column 1 when it has two columns.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep_lab.backends.base import BACKENDS, detect_backend, get_backend
from mlaas4hep_lab.training.model_file import load_model_file, template_path

NAMES = ("keras", "torch", "sklearn", "xgboost")
FRAMEWORK_MODULES = {"keras": ("keras", "tensorflow"), "torch": ("torch",), "sklearn": ("sklearn",),
                     "xgboost": ("xgboost",)}
HEAVY = ("tensorflow", "keras", "torch", "sklearn", "xgboost", "onnx", "onnxruntime", "tf2onnx")
IDIM = 12
N_EVENTS = 4000
N_TRAIN = 3200
EPOCHS = 2
BATCH = 64
BACKGROUND_WEIGHT = 0.05


# -- helpers shared with tests/test_backends_nn.py --------------------------------------------------------
def make_data(n: int = N_EVENTS, seed: int = 7, shift: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Two gaussian blobs in ``IDIM`` dimensions, the signal shifted by ``shift`` in every feature
    (best possible AUC about 0.96 for the default shift)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    X = rng.normal(0.0, 1.0, (n, IDIM)).astype(np.float32)
    X[y == 1] += shift
    return X, y


def rank_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve from the ranks of the scores (ties get their average rank)."""
    score = np.asarray(score, dtype=np.float64)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def build(name: str, seed: int = 0, path: Path | None = None, **options):
    """A backend around a fresh model from ``path`` (default: the ``name`` template), as the trainer builds it."""
    um = load_model_file(path or template_path(name), IDIM)
    cls = get_backend(um.backend)
    opts = {**um.options, "seed": seed, "batch_size": BATCH, "model_source": um.source,
            "model_path": str(um.path), **options}
    return cls(um.model, IDIM, opts)


def train(backend, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, *, n_chunks: int = 3,
          epochs: int = EPOCHS, batch_size: int = BATCH) -> list[dict]:
    """Train through the backend's own mode; returns the metrics it reported."""
    chunks = [(X[i], y[i], None if weight is None else weight[i])
              for i in np.array_split(np.arange(len(X)), n_chunks)]
    if backend.mode == "batches":
        return [backend.fit_chunk(*c, epochs=epochs, batch_size=batch_size) for c in chunks]
    if backend.mode == "accumulate":
        return [backend.fit_all(X, y, weight)]
    if backend.mode == "stream":
        return [backend.fit_stream(lambda: iter(chunks), None, epochs=epochs, batch_size=batch_size)]
    raise AssertionError(f"{backend.name}: unknown mode {backend.mode!r}")


def onnx_scores(path: str | Path, X: np.ndarray, result: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    out_name = result.get("output") or ("score" if "score" in names else
                                        [o.name for o in outputs if o.type == "tensor(float)"][-1])
    in_name = result.get("input") or session.get_inputs()[0].name
    got = np.asarray(session.run([out_name], {in_name: X})[0])
    return (got[:, 1] if got.ndim == 2 and got.shape[1] == 2 else got).reshape(-1)


def savedmodel_scores(path: str | Path, X: np.ndarray) -> np.ndarray:
    import tensorflow as tf  # noqa: TID251 -- reading the artifact as the serving side does

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    (arg,) = fn.structured_input_signature[1]
    (out,) = fn(**{arg: tf.constant(X)}).values()
    got = out.numpy()
    return (got[:, 1] if got.ndim == 2 and got.shape[1] == 2 else got).reshape(-1)


def export_scores(result: dict, X: np.ndarray) -> np.ndarray:
    if result["format"] == "onnx":
        return onnx_scores(result["path"], X, result)
    if result["format"] == "tf-savedmodel":
        return savedmodel_scores(result["path"], X)
    raise AssertionError(f"unknown export format {result['format']!r}")


# -- one trained model per backend, shared by the tests of this module ------------------------------------
@dataclass
class Trained:
    name: str
    backend: object
    X_test: np.ndarray
    y_test: np.ndarray
    scores: np.ndarray
    saved: Path
    metrics: list


@pytest.fixture(scope="module", params=NAMES)
def trained(request, tmp_path_factory) -> Trained:
    name = request.param
    X, y = make_data()
    backend = build(name)
    metrics = train(backend, X[:N_TRAIN], y[:N_TRAIN], np.ones(N_TRAIN, np.float32))
    saved = tmp_path_factory.mktemp(f"saved_{name}")
    backend.save(saved)
    return Trained(name, backend, X[N_TRAIN:], y[N_TRAIN:], backend.predict(X[N_TRAIN:]), saved, metrics)


# -- the contract ---------------------------------------------------------------------------------------
def _backend_module_exists(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[name].partition(":")[0]) is not None


@pytest.mark.parametrize("name", NAMES)
def test_detected_and_rejected_by_the_others(name):
    model = load_model_file(template_path(name), IDIM).model
    assert detect_backend(model) == name
    others = [o for o in NAMES if o != name and _backend_module_exists(o)]
    accepted = [o for o in others if get_backend(o).accepts(model)]
    assert accepted == [], f"{type(model).__name__} also accepted by {accepted}"
    assert get_backend(name).accepts(model)


@pytest.mark.slow
def test_trains_to_a_good_auc(trained):
    auc = rank_auc(trained.scores, trained.y_test)
    print(f"{trained.name}: test AUC {auc:.4f}, metrics {trained.metrics}")
    assert auc > 0.85, f"{trained.name} reached AUC {auc:.3f}"
    for m in trained.metrics:
        assert isinstance(m, dict)
        assert all(isinstance(v, float) for v in m.values() if isinstance(v, (int, float)))


@pytest.mark.slow
def test_predict_gives_float32_scores_in_0_1(trained):
    s = trained.scores
    assert s.dtype == np.float32 and s.shape == (len(trained.X_test),)
    assert np.all(np.isfinite(s)) and s.min() >= 0.0 and s.max() <= 1.0
    assert s.std() > 0.05  # not a constant
    empty = trained.backend.predict(trained.X_test[:0])
    assert empty.dtype == np.float32 and empty.shape == (0,)
    # float64 input is accepted and gives the same scores
    np.testing.assert_allclose(trained.backend.predict(trained.X_test.astype(np.float64)), s, atol=1e-6)


@pytest.mark.slow
def test_sample_weights_are_used(trained):
    X, y = make_data()
    weight = np.where(y == 1, 1.0, BACKGROUND_WEIGHT).astype(np.float32)
    backend = build(trained.name)
    train(backend, X[:N_TRAIN], y[:N_TRAIN], weight[:N_TRAIN])
    weighted = backend.predict(trained.X_test)
    # the background counts 20 times less, so every event looks more signal-like on average
    assert weighted.mean() > trained.scores.mean() + 0.05, (weighted.mean(), trained.scores.mean())


@pytest.mark.slow
def test_save_then_load_predicts_the_same(trained):
    cls = get_backend(trained.name)
    files = sorted(p.name for p in trained.saved.iterdir())
    assert files, "save() wrote nothing"
    loaded = cls.load(trained.saved, IDIM, {})
    assert isinstance(loaded, cls)
    np.testing.assert_allclose(loaded.predict(trained.X_test), trained.scores, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_export_reproduces_predict_or_says_why_not(trained, tmp_path):
    result = trained.backend.export(tmp_path / "inference")
    assert "format" in result
    if result["format"] is None:
        assert isinstance(result.get("reason"), str) and result["reason"]
        pytest.skip(f"{trained.name}: no export ({result['reason']})")
    assert Path(result["path"]).exists()
    got = export_scores(result, trained.X_test)
    np.testing.assert_allclose(got, trained.scores, atol=1e-4, rtol=0)
    # the batch dimension is free: one event at a time gives the same score
    np.testing.assert_allclose(export_scores(result, trained.X_test[:1]), trained.scores[:1], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_missing_framework_names_the_extra(trained):
    extra = get_backend(trained.name).extra
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        for module in {FRAMEWORK_MODULES[trained.name]!r}:
            sys.modules[module] = None  # as if it were not installed
        from mlaas4hep_lab.errors import MissingExtraError
        from mlaas4hep_lab.backends.base import get_backend
        try:
            get_backend({trained.name!r}).load(Path({str(trained.saved)!r}), {IDIM})
            print(json.dumps({{"raised": None}}))
        except MissingExtraError as err:
            print(json.dumps({{"raised": "MissingExtraError", "message": str(err),
                               "is_import_error": isinstance(err, ImportError)}}))
        except Exception as err:
            print(json.dumps({{"raised": type(err).__name__, "message": str(err)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["raised"] == "MissingExtraError", result
    assert result["is_import_error"]
    assert f"mlaas4hep-lab[{extra}]" in result["message"]


@pytest.mark.parametrize("name", NAMES)
def test_backend_module_imports_no_framework(name):
    module = BACKENDS[name].partition(":")[0]
    code = textwrap.dedent(f"""
        import json, sys
        import mlaas4hep_lab.backends.base
        base = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        from mlaas4hep_lab.backends.base import get_backend
        cls = get_backend({name!r})
        after = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"base": base, "after": after, "name": cls.name, "extra": cls.extra,
                           "module": cls.__module__}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["base"] == [], "importing mlaas4hep_lab.backends.base pulled in a framework"
    assert result["after"] == [], f"importing {module} pulled in {result['after']}"
    assert result["name"] == name and result["module"] == module
    assert result["extra"], "the backend names no pip extra"


# -- the same contract for the other tasks (multi-class, regression), every backend --------------------
TASKS = ("multiclass", "regression")
N_CLASSES = 3


def make_task_data(kind: str, n: int = N_EVENTS, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Three gaussian blobs (y = class index 0..2), or two smooth targets of the features (y [n, 2])."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, (n, IDIM)).astype(np.float32)
    if kind == "multiclass":
        y = rng.integers(0, N_CLASSES, n).astype(np.float32)
        X[:, :N_CLASSES] += 1.5 * np.eye(N_CLASSES, dtype=np.float32)[y.astype(int)]
        return X, y
    y = np.stack([50.0 + 20.0 * X[:, 0] + 10.0 * X[:, 1] ** 2, 5.0 * X[:, 2] - 3.0 * X[:, 3]], axis=1)
    return X, (y + rng.normal(0.0, 2.0, y.shape)).astype(np.float32)


def task_of(kind: str, y: np.ndarray):
    from mlaas4hep_lab.task import Task

    if kind == "multiclass":
        return Task("multiclass", ("a", "b", "c"))
    return Task("regression", (), ("t0", "t1")).with_scale(list(zip(y.mean(axis=0), y.std(axis=0))))


def quality(kind: str, out: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (multiclass) or the worst target's R^2 (regression)."""
    if kind == "multiclass":
        return float(np.mean(out.argmax(axis=1) == y))
    return float(np.min(1 - ((out - y) ** 2).mean(axis=0) / y.var(axis=0)))


@dataclass
class TrainedTask:
    name: str
    kind: str
    task: object
    backend: object
    X_test: np.ndarray
    y_test: np.ndarray
    out: np.ndarray
    saved: Path


@pytest.fixture(scope="module", params=[(n, k) for n in NAMES for k in TASKS], ids=lambda p: f"{p[0]}-{p[1]}")
def trained_task(request, tmp_path_factory) -> TrainedTask:
    name, kind = request.param
    X, y = make_task_data(kind)
    task = task_of(kind, y[:N_TRAIN])
    um = load_model_file(template_path(f"{name}_{kind}"), IDIM, task=task)
    assert um.backend == name
    backend = get_backend(name)(um.model, IDIM, {**um.options, "seed": 0, "batch_size": BATCH, "task": task,
                                                 "model_source": um.source, "model_path": str(um.path)})
    train(backend, X[:N_TRAIN], y[:N_TRAIN], np.ones(N_TRAIN, np.float32), epochs=4)
    saved = tmp_path_factory.mktemp(f"saved_{name}_{kind}")
    backend.save(saved)
    return TrainedTask(name, kind, task, backend, X[N_TRAIN:], y[N_TRAIN:], backend.predict(X[N_TRAIN:]), saved)


@pytest.mark.slow
def test_every_backend_learns_every_task(trained_task):
    t = trained_task
    width = N_CLASSES if t.kind == "multiclass" else 2
    assert t.out.dtype == np.float32 and t.out.shape == (len(t.X_test), width)
    assert np.all(np.isfinite(t.out))
    if t.kind == "multiclass":
        np.testing.assert_allclose(t.out.sum(axis=1), 1.0, atol=1e-5)
        assert t.out.min() >= 0.0
    score = quality(t.kind, t.out, t.y_test)
    print(f"{t.name} {t.kind}: {'accuracy' if t.kind == 'multiclass' else 'worst R^2'} {score:.3f}")
    assert score > (0.7 if t.kind == "multiclass" else 0.5), score   # chance: 0.33 / 0.0
    empty = t.backend.predict(t.X_test[:0])
    assert empty.dtype == np.float32 and empty.shape == (0, width)


@pytest.mark.slow
def test_every_task_reloads_and_exports_the_same(trained_task, tmp_path):
    t = trained_task
    loaded = get_backend(t.name).load(t.saved, IDIM, {"task": t.task})
    np.testing.assert_allclose(loaded.predict(t.X_test), t.out, rtol=1e-6, atol=1e-5)
    result = t.backend.export(tmp_path / "inference")
    if result["format"] is None:
        assert isinstance(result.get("reason"), str) and result["reason"]
        pytest.skip(f"{t.name} {t.kind}: no export ({result['reason']})")
    if result["format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(result["path"]), providers=["CPUExecutionProvider"])
        got = np.asarray(session.run([result["output"]], {result["input"]: t.X_test})[0])
    else:
        import tensorflow as tf  # noqa: TID251 -- reading the artifact as the serving side does

        artifact = tf.saved_model.load(str(result["path"]))   # kept: its functions need it alive
        got = artifact.serve(tf.constant(t.X_test)).numpy()
    scale = max(1.0, float(np.abs(t.out).max()))
    np.testing.assert_allclose(got.reshape(t.out.shape), t.out, atol=1e-4 * scale, rtol=0)
