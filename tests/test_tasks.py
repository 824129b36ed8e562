"""Multi-class and regression tasks through the engine, on real ROOT files: the per-event truth (a
branch or an expression) is read but never a feature, counted in the specs pass, checked before training,
and in every chunk equal to the expression computed on the raw values; model.py receives the number of
outputs; a trained model's bundle predicts what the trainer scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep_lab.data.plan import make_plan
from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.errors import (
    BranchNotFoundError,
    ConfigError,
    LabelsError,
    MissingClassError,
    ModelFileError,
    NonFiniteError,
)
from mlaas4hep_lab.params import load_params
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.task import Task, run_task
from mlaas4hep_lab.training.loop import class_weight_table
from mlaas4hep_lab.training.model_file import load_model_file, model_arguments

LABEL = "(f_float32 > 0) + (f_float32 > 1)"   # 0, 1 or 2 per event


def params_of(toy, **extra) -> dict:
    params = json.loads(Path(toy.params_json).read_text())
    params.update({"verbose": 0, "chunk_size": 2500, **extra})
    return params


def raw_column(toy, name: str, file_index: int, entries: np.ndarray) -> np.ndarray:
    return np.asarray(toy.raw_of(file_index)[name])[entries]


def test_a_per_event_label_is_read_never_a_feature_and_equals_its_expression(toy_data):
    inputs = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label=LABEL,
                                                           classes=["low", "mid", "high"]))
    specs = ensure_specs(inputs, progress=False)
    assert "f_float32" not in specs.fkeys and "f_float32" not in specs.features
    # the specs pass counted each class per split with the stream's split hash
    x = np.concatenate([np.asarray(toy_data.raw_of(i)["f_float32"]) for i in (0, 1)])
    expected = (x > 0).astype(int) + (x > 1)
    counts = specs.truth["classes"]
    assert {k: sum(v) for k, v in counts.items()} == {str(c): int(np.sum(expected == c)) for c in (0, 1, 2)}
    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs) as stream:
        assert "f_float32" in stream.plan.read
        for chunk in stream:
            got = np.concatenate([
                (raw_column(toy_data, "f_float32", i, chunk.entry[chunk.file_index == i]) > 0).astype(int)
                + (raw_column(toy_data, "f_float32", i, chunk.entry[chunk.file_index == i]) > 1)
                for i in (0, 1)])
            order = np.concatenate([np.flatnonzero(chunk.file_index == i) for i in (0, 1)])
            np.testing.assert_array_equal(chunk.y[order], got)
            assert chunk.y.dtype == np.float32 and chunk.y.ndim == 1
    task = run_task(inputs.params, inputs.labels, specs)
    assert task == Task("multiclass", ("low", "mid", "high"), label=LABEL)


def test_regression_targets_and_what_they_are_computed_from_are_no_features(toy_data):
    preproc = {"new_branch": {"twice": {"def": "f_float64 * 2", "type": "flat"}}}
    params = params_of(toy_data, task="regression", target=["twice", "f_int16 / 1000"])
    inputs = load_inputs(toy_data.files, None, params, preproc)
    assert inputs.labels == [0.0, 0.0]   # a regression needs no labels.txt
    specs = ensure_specs(inputs, progress=False)
    for name in ("f_float64", "twice", "f_int16"):
        assert name not in specs.features
    stats = specs.truth["targets"]
    both = np.concatenate([np.asarray(toy_data.raw_of(i)["f_float64"]) for i in (0, 1)]) * 2
    assert stats["twice"]["mean"] == pytest.approx(both.mean(), rel=1e-9)
    assert stats["twice"]["std"] == pytest.approx(both.std(), rel=1e-9)
    task = run_task(inputs.params, inputs.labels, specs)
    assert task.targets == ("twice", "f_int16 / 1000") and task.output_names == ["twice", "f_int16_1000"]
    assert task.target_scale[0] == pytest.approx((both.mean(), both.std()))
    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
        chunk = stream.build(0)
    assert chunk.y.shape == (len(chunk), 2)
    first = chunk.file_index == 0
    np.testing.assert_allclose(chunk.y[first, 0], 2 * raw_column(toy_data, "f_float64", 0, chunk.entry[first]),
                               rtol=1e-6)
    np.testing.assert_allclose(chunk.y[first, 1], raw_column(toy_data, "f_int16", 0, chunk.entry[first]) / 1000,
                               rtol=1e-6)
    np.testing.assert_allclose(task.unstandardise(task.standardise(chunk.y)), chunk.y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("extra", "error", "needle"), [
    ({"task": "regression", "target": "Jet_pt"}, ConfigError, "list per event"),
    ({"task": "regression", "target": "no_such_branch * 2"}, BranchNotFoundError, "no_such_branch"),
    ({"task": "regression", "target": "__import__('os')"}, Exception, "__import__"),
    ({"task": "multiclass", "label": "Jet_pt > 3"}, ConfigError, "list per event"),
])
def test_a_truth_that_cannot_be_one_number_per_event_is_refused(toy_data, extra, error, needle):
    with pytest.raises(error, match=needle):
        reader = TreeReader(toy_data.sig, "events")
        make_plan(reader, load_params(params_of(toy_data, **extra)))


def test_non_finite_or_constant_targets_are_refused_before_training(toy_data):
    inputs = load_inputs(toy_data.files, None, params_of(toy_data, task="regression", target="log(f_float32)"))
    with pytest.raises(NonFiniteError, match=r"'log\(f_float32\)' is NaN or inf in [\d,]+ of 10,000 events"):
        ensure_specs(inputs, progress=False)
    inputs = load_inputs(toy_data.files, None, params_of(toy_data, task="regression", target="f_float32 * 0"))
    with pytest.raises(Exception, match="in every event: there is nothing to regress"):
        ensure_specs(inputs, progress=False)


def test_labels_of_a_multiclass_task(toy_data):
    base = params_of(toy_data, task="multiclass")
    assert load_inputs(toy_data.files, [2, 0], base).labels == [2.0, 0.0]
    with pytest.raises(LabelsError, match="class index 0, 1, ... K-1"):
        load_inputs(toy_data.files, [1.5, 0], base)
    with pytest.raises(LabelsError, match="needs labels.txt"):
        load_inputs(toy_data.files, None, base)
    inputs = load_inputs(toy_data.files, [2, 0], base)   # K = 3 from the largest label: class 1 has no file
    from mlaas4hep_lab.data.validation import check_training_data

    with pytest.raises(MissingClassError, match="no file has class 1"):
        check_training_data(inputs, ensure_specs(inputs, progress=False))
    named = load_inputs(toy_data.files, [2, 0], dict(base, classes=["a", "b"]))
    with pytest.raises(LabelsError, match="label 2 but params \"classes\" names 2 classes"):
        check_training_data(named, ensure_specs(named, progress=False))


def test_a_label_that_gives_one_class_or_no_index_is_refused(toy_data):
    from mlaas4hep_lab.data.validation import check_training_data

    one = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label="f_float32 * 0"))
    with pytest.raises(MissingClassError, match="single class"):
        check_training_data(one, ensure_specs(one, progress=False))
    half = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label="f_float32 / 2"))
    with pytest.raises(Exception, match="not a class index"):
        check_training_data(half, ensure_specs(half, progress=False))


def test_balanced_class_weights_follow_the_training_events(toy_data):
    inputs = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label=LABEL,
                                                           class_weights="balanced"))
    specs = ensure_specs(inputs, progress=False)
    task = run_task(inputs.params, inputs.labels, specs)
    weights = class_weight_table(task, inputs.params, inputs, specs)
    train = np.array([specs.truth["classes"][str(c)][0] for c in range(3)], float)
    np.testing.assert_allclose(weights, train.sum() / (3 * train), rtol=1e-6)
    by_file = load_inputs(toy_data.files, [1, 0], params_of(toy_data, class_weights="balanced"))
    specs = ensure_specs(by_file, progress=False)
    weights = class_weight_table(run_task(by_file.params, by_file.labels, specs), by_file.params, by_file, specs)
    per_file = specs.split_events["files"]
    n_sig, n_bkg = per_file[by_file.files[0]][0], per_file[by_file.files[1]][0]
    np.testing.assert_allclose(weights, [(n_sig + n_bkg) / (2 * n_bkg), (n_sig + n_bkg) / (2 * n_sig)], rtol=1e-6)


def test_model_py_receives_the_number_of_outputs():
    task = Task("multiclass", ("a", "b", "c"))

    def two(idim, n_outputs):
        return idim, n_outputs

    def named(idim, *, n_outputs=1, task="binary"):
        return idim, n_outputs, task

    def plain(idim):
        return idim

    def nothing():
        return None

    assert two(*model_arguments(two, 7, task)[0], **model_arguments(two, 7, task)[1]) == (7, 3)
    args, kwargs, call = model_arguments(named, 7, task)
    assert named(*args, **kwargs) == (7, 3, "multiclass") and call == "model(7, n_outputs=3, task='multiclass')"
    assert model_arguments(plain, 7, task)[:2] == ([7], {})
    assert model_arguments(nothing, 7, task)[:2] == ([], {})
    assert model_arguments(two, 7, None)[:2] == ([7], {})   # binary, as before: model(idim)


KERAS_WRONG_WIDTH = '''
import keras

def model(idim):
    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m
'''

TORCH_MULTICLASS = '''
import torch
from torch import nn

def model(idim, n_outputs):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(idim, 32), nn.ReLU(), nn.Linear(32, n_outputs))
'''


def test_a_model_with_the_wrong_number_of_outputs_is_refused_naming_model_py(toy_data, tmp_path):
    pytest.importorskip("torch")
    from mlaas4hep_lab.training.loop import Trainer

    inputs = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label=LABEL))
    specs = ensure_specs(inputs, progress=False)
    path = tmp_path / "model.py"
    path.write_text(TORCH_MULTICLASS.replace("n_outputs)", "2)").replace("idim, 2)", "idim, n_outputs)"))
    user = load_model_file(path, specs.n_features, task=run_task(inputs.params, inputs.labels, specs))
    with pytest.raises(ModelFileError, match=r"model.py: .*multiclass task needs 3 class probabilities"):
        Trainer(inputs, specs, user, tmp_path / "out")


def test_a_multiclass_model_trains_and_its_bundle_predicts_what_the_trainer_scored(toy_data, tmp_path):
    pytest.importorskip("torch")
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.training.workflow import train

    inputs = load_inputs(toy_data.files, [0, 0], params_of(toy_data, task="multiclass", label=LABEL, epochs=3,
                                                           classes=["low", "mid", "high"]))
    specs = ensure_specs(inputs, progress=False)
    path = tmp_path / "model.py"
    path.write_text(TORCH_MULTICLASS)
    out = train(inputs, specs, path, tmp_path / "out", progress=False, plots=False)
    metrics = out.metrics
    assert metrics["task"] == "multiclass" and metrics["classes"] == ["low", "mid", "high"]
    # the label is a cut on f_float32, which the model does not see: the numbers are checked, not their size
    assert 0 <= metrics["auc_macro"] <= 1 and set(metrics["auc_per_class"]) == {"low", "mid", "high"}
    assert np.asarray(metrics["confusion"]).sum() == len(out.result.test["y"])
    test = out.result.test
    assert test["score"].shape == (len(test["y"]), 3)
    np.testing.assert_allclose(test["score"].sum(axis=1), 1, rtol=1e-5)
    bundle = Bundle.load(out.bundle)
    assert bundle.task == Task("multiclass", ("low", "mid", "high"), label=LABEL)
    assert bundle.manifest["outputs"] == ["p_low", "p_mid", "p_high"]
    import uproot

    arrays = uproot.open(toy_data.sig)["events"].arrays(bundle.input_branches())
    scores, keep = bundle.predict_arrays(arrays)
    mine = test["file_index"] == 0
    np.testing.assert_allclose(scores[test["entry"][mine]], test["score"][mine], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("template", "extra"), [
    ("torch_regression", {"task": "regression", "target": ["f_float64", "f_int16 / 1000"]}),
    ("keras_multiclass", {"task": "multiclass", "label": LABEL}),
    ("torch_deepsets", {"task": "multiclass", "label": LABEL, "layout": "objects"}),
], ids=["torch-regression", "keras-multiclass", "torch-objects"])
def test_a_stopped_run_of_every_task_resumes_where_it_stopped(toy_data, tmp_path, template, extra):
    pytest.importorskip(template.split("_")[0])
    import threading

    from mlaas4hep_lab.training.events import EventBus
    from mlaas4hep_lab.training.workflow import train

    inputs = load_inputs(toy_data.files, None if extra["task"] == "regression" else [0, 0],
                         params_of(toy_data, chunk_size=1500, epochs=1, **extra))
    specs = ensure_specs(inputs, progress=False)
    stop, bus = threading.Event(), EventBus()
    bus.subscribe(lambda e: stop.set() if e.kind == "chunk" and e.chunk == 2 else None)
    from mlaas4hep_lab.training.model_file import template_path

    first = train(inputs, specs, template_path(template), tmp_path / "out", bus=bus, stop=stop, progress=False,
                  plots=False)
    assert first.result.stopped == "requested"
    done = [h["chunk"] for h in first.result.history if h["kind"] == "chunk"]
    assert done == [0, 1, 2]
    resumed = train(inputs, specs, template_path(template), tmp_path / "out", resume=True, progress=False,
                    plots=False)
    chunks = [h["chunk"] for h in resumed.result.history if h["kind"] == "chunk"]
    n_chunks = ChunkStream(inputs.files, inputs.labels, inputs.params, specs).n_chunks
    assert chunks == list(range(n_chunks))   # none lost, none trained twice
    task = run_task(inputs.params, inputs.labels, specs)
    out = resumed.result.test["score"]
    assert out.shape == (len(resumed.result.test["y"]), task.n_outputs) and np.all(np.isfinite(out))
    assert resumed.metrics["task"] == extra["task"]
