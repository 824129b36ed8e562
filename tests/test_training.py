"""The trainer end to end on real ROOT files: schedules, metric events, stop, early stopping, resume
after a real kill, bad model files, bundle and predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep_lab.errors import ConfigError, MissingExtraError
from mlaas4hep_lab.params import load_params
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.events import EventBus
from mlaas4hep_lab.training.loop import Trainer
from mlaas4hep_lab.training.model_file import load_model_file
from mlaas4hep_lab.training.workflow import train

TORCH_SMALL = '''
import torch
from torch import nn

def model(idim):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(idim, 32), nn.ReLU(), nn.Linear(32, 1))
'''


def inputs_for(ds, **overrides):
    params = json.loads(Path(ds.params_json).read_text())
    params.update(verbose=0, **overrides)
    return load_inputs(ds.files_txt, ds.labels_txt, params)


@pytest.fixture
def torch_model(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(TORCH_SMALL)
    return path


def test_per_chunk_schedule_trains_each_chunk_epochs_times(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=8, training="per_chunk", weight="")
    specs = ensure_specs(inputs, progress=False)
    user = load_model_file(torch_model, specs.n_features)
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    result = Trainer(inputs, specs, user, tmp_path / "out", bus=bus).run()
    chunks = [e for e in seen if e.kind == "chunk"]
    assert [e.chunk for e in chunks] == [0, 1, 2]
    train_events = 30_000 * inputs.params.split[0]
    assert abs(result.metrics["events_seen"] - 8 * train_events) < 0.05 * 8 * train_events
    assert all(0 <= e.metrics["val_auc"] <= 1 and e.metrics["val_loss"] > 0 for e in chunks)
    assert seen[0].kind == "start" and seen[-1].kind == "end"
    assert result.metrics["auc"] > 0.65  # well above chance; quality is measured in test_backend_quality
    # the test split is scored once: every test event exactly once
    assert len(result.test["y"]) == result.metrics["n_events"]
    pairs = set(zip(result.test["file_index"].tolist(), result.test["entry"].tolist()))
    assert len(pairs) == len(result.test["y"])


def test_epochs_schedule_makes_full_passes(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=3, training="epochs")
    specs = ensure_specs(inputs, progress=False)
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    Trainer(inputs, specs, load_model_file(torch_model, specs.n_features), tmp_path / "o", bus=bus).run()
    chunks = [(e.epoch, e.chunk) for e in seen if e.kind == "chunk"]
    assert chunks == [(ep, k) for ep in range(3) for k in range(3)]
    assert [e.epoch for e in seen if e.kind == "epoch"] == [0, 1, 2]


def test_stop_request_stops_within_one_chunk(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=3_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    stop = threading.Event()
    bus = EventBus()
    chunks = []

    def on_event(event):
        if event.kind == "chunk":
            chunks.append(event.chunk)
            stop.set()

    bus.subscribe(on_event)
    result = Trainer(inputs, specs, load_model_file(torch_model, specs.n_features), tmp_path / "o",
                     bus=bus, stop=stop).run()
    assert result.stopped == "requested"
    assert chunks == [0]
    assert result.metrics["n_events"] > 0  # the model trained so far is still evaluated


@pytest.mark.parametrize("name", ["sklearn", "xgboost"])
def test_a_stop_before_the_first_chunk_says_nothing_was_trained(example_higgs, tmp_path, name):
    """scikit-learn and XGBoost stopped before they saw an event have no model to score the test split with
    (that raised NotFittedError / RuntimeError): one clear error, and the run record says stopped. (A
    network stopped early keeps its weights and is evaluated and bundled: test_widgets_logic.py.)"""
    from mlaas4hep_lab.errors import StoppedBeforeTraining
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.runlog import RunRecorder

    inputs = inputs_for(example_higgs, chunk_size=3_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    stop = threading.Event()
    stop.set()
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    model = template_path(name)
    with pytest.raises(StoppedBeforeTraining, match="no model to evaluate or save"):
        with RunRecorder(tmp_path / "o", inputs, model, bus, mlflow=None):
            Trainer(inputs, specs, load_model_file(model, specs.n_features), tmp_path / "o", bus=bus,
                    stop=stop).run()
    assert [e.kind for e in seen] == ["start", "end"]
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["status"] == "stopped" and "StoppedBeforeTraining" in record["error"]


def test_early_stopping(example_higgs, tmp_path):
    model = tmp_path / "model.py"
    # a model that cannot learn (learning rate 0): its validation loss only moves with each chunk's events, so
    # the best loss stops improving within a few chunks, on every CPU (a diverging learning rate, used before,
    # gave NaN outputs on one CPU and not on another)
    model.write_text(TORCH_SMALL + "\ndef optimizer(parameters):\n    return torch.optim.SGD(parameters, lr=0.0)\n")
    inputs = inputs_for(example_higgs, chunk_size=2_000, epochs=1, early_stopping=2)
    specs = ensure_specs(inputs, progress=False)
    result = Trainer(inputs, specs, load_model_file(model, specs.n_features), tmp_path / "o").run()
    assert result.stopped == "early_stopping"
    chunks = [h for h in result.history if h["kind"] == "chunk"]
    assert len(chunks) < 15
    losses = [h["metrics"]["val_loss"] for h in chunks]
    # stopped exactly when the best loss had not improved for 2 chunks
    assert min(losses[:-2]) <= min(losses[-2:]) and min(losses[:-3] or [np.inf]) > losses[-3]


def test_a_diverging_network_stops_with_a_clear_error(example_higgs, tmp_path):
    """NaN outputs (a learning rate far too large) end the training naming where, instead of an AUC error."""
    from mlaas4hep_lab.errors import TrainingDiverged
    from mlaas4hep_lab.training.runlog import RunRecorder

    model = tmp_path / "model.py"
    model.write_text(TORCH_SMALL + "\ndef optimizer(parameters):\n    return torch.optim.SGD(parameters, lr=1e30)\n")
    inputs = inputs_for(example_higgs, chunk_size=2_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1, chunk \d+: .*lower the learning"):
        with RunRecorder(tmp_path / "o", inputs, model, EventBus(), mlflow=None):
            Trainer(inputs, specs, load_model_file(model, specs.n_features), tmp_path / "o").run()
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["status"] == "failed" and "TrainingDiverged" in record["error"]


def test_metrics_jsonl_and_bundle(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1, hist="pdfs")
    specs = ensure_specs(inputs, progress=False)
    out = train(inputs, specs, torch_model, tmp_path / "out", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["kind"] for ln in lines][0] == "start" and lines[-1]["kind"] == "end"
    assert sum(ln["kind"] == "chunk" for ln in lines) == 3
    bundle = out.bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backend"] == "torch" and manifest["features"] == specs.features
    assert manifest["input_shape"] == [None, specs.n_features]
    assert manifest["metrics"]["auc"] == pytest.approx(out.metrics["auc"])
    assert manifest["software"]["torch"]
    for name in ("specs.json", "params.json", "preproc.json", "metrics.json", "model.py"):
        assert (bundle / name).is_file(), name
    assert Path(f"{bundle}.tar.gz").stat().st_size > 1000
    # weighted data: AMS reported, plots written
    assert out.metrics["ams"] > 0 and 0 <= out.metrics["ams_threshold"] <= 1
    assert (tmp_path / "out" / "plots" / "roc.png").is_file() and (tmp_path / "out" / "plots" / "roc.pdf").is_file()
    # params hist "pdfs": one distribution per feature, and all of them in one PDF
    pdfs = tmp_path / "out" / "plots" / "pdfs"
    assert len(list(pdfs.glob("pdf_*.png"))) == specs.n_features
    assert len(list(pdfs.glob("*.pdf"))) == 1
    assert (bundle / "plots" / "roc.png").is_file()


def test_bundle_scores_equal_the_trainers(example_higgs, torch_model, tmp_path):
    import uproot

    from mlaas4hep_lab.bundle import Bundle

    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1, shuffle=False)
    specs = ensure_specs(inputs, progress=False)
    out = train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False)
    test = out.result.test
    bundle = Bundle.load(f"{out.bundle}.tar.gz")
    f = inputs.files[0]
    arrays = uproot.open(f)["events"].arrays()
    scores, keep = bundle.predict_arrays(arrays)
    assert keep.all()
    sel = test["file_index"] == 0
    np.testing.assert_allclose(scores[test["entry"][sel]], test["score"][sel], atol=1e-6)
    bundle.close()


def test_predict_command_writes_scores_and_submission(example_higgs, torch_model, tmp_path):
    from mlaas4hep_lab.cli import main

    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    out = train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False)
    csv_path, sub = tmp_path / "scores.csv", tmp_path / "submission.csv"
    rc = main(["predict", str(out.bundle), "--files", str(example_higgs.files_txt), "--out", str(csv_path),
               "--submission", str(sub)])
    assert rc == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "file,entry,EventId,score,passes_cuts" and len(rows) == 30_001
    lines = sub.read_text().splitlines()
    assert lines[0] == "EventId,RankOrder,Class" and len(lines) == 30_001
    ranks = sorted(int(line.split(",")[1]) for line in lines[1:])
    assert ranks == list(range(1, 30_001))
    rc = main(["predict", str(out.bundle), "--files", *map(str, example_higgs.files), "--out",
               str(tmp_path / "scores.root")])
    import uproot

    assert uproot.open(tmp_path / "scores.root")["scores"].num_entries == 30_000


# -- bad model files --------------------------------------------------------------------------------
@pytest.mark.parametrize("source, message", [
    ("def build(idim):\n    return None\n", "defines no function `model`"),
    ("def model(idim):\n    raise RuntimeError('boom in the model')\n", "boom in the model"),
    ("def model(idim):\n    return {'not': 'a model'}\n", "which no backend handles"),
    ("def model(idim):\n    return None\n", "returned None"),
    ("def model(idim)\n    return 1\n", "syntax error at line 1"),
    ("import not_a_module_xyz\ndef model(idim):\n    return 1\n", "not_a_module_xyz"),
])
def test_bad_model_files(tmp_path, source, message):
    path = tmp_path / "model.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=message):
        load_model_file(path, 10)


def test_missing_model_file(tmp_path):
    with pytest.raises(OSError, match="model file not found"):
        load_model_file(tmp_path / "nope.py", 10)


def test_backend_framework_not_installed_says_which_extra(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import xgboost\ndef model():\n    return xgboost.XGBClassifier()\n")
    code = (
        "import sys\n"
        "sys.modules['xgboost'] = None  # as if xgboost were not installed\n"
        "from mlaas4hep_lab.errors import MissingExtraError\n"
        "from mlaas4hep_lab.training.model_file import load_model_file\n"
        "try:\n"
        f"    load_model_file({str(model)!r}, 10)\n"
        "except MissingExtraError as err:\n"
        "    print('MISSING', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MISSING" in out and "mlaas4hep-lab[xgboost]" in out
    assert issubclass(MissingExtraError, ImportError)


def test_unknown_backend_lists_valid_ones():
    from mlaas4hep_lab.backends.base import get_backend

    with pytest.raises(ConfigError, match="keras, torch, sklearn, xgboost"):
        get_backend("theano")


def test_resume_at_the_end_of_a_pass_closes_that_pass_and_goes_on(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=2, training="epochs", prefetch=1)
    specs = ensure_specs(inputs, progress=False)
    trainer = Trainer(inputs, specs, load_model_file(torch_model, specs.n_features), tmp_path / "o")
    seen = []
    trainer.bus.subscribe(seen.append)
    trainer._run_batches(0, trainer.stream.n_chunks)  # as --resume does from a checkpoint (0, n_chunks)
    trainer.stream.close()
    assert [(e.kind, e.epoch, e.chunk) for e in seen] == [("epoch", 0, 2), ("chunk", 1, 0), ("chunk", 1, 1),
                                                          ("chunk", 1, 2), ("epoch", 1, 2)]


# -- resume -----------------------------------------------------------------------------------------
def _workflow_cmd(ds, params, model, fout, *extra):
    return [sys.executable, "-m", "mlaas4hep_lab.cli", "workflow", "--files", str(ds.files_txt), "--labels",
            str(ds.labels_txt), "--params", str(params), "--model", str(model), "--fout", str(fout), *extra]


@pytest.mark.slow
def test_resume_after_kill_trains_every_chunk_exactly_once(example_higgs, torch_model, tmp_path):
    params = json.loads(Path(example_higgs.params_json).read_text())
    params.update(chunk_size=1_000, epochs=20, verbose=0, training="per_chunk", prefetch=0)
    p = tmp_path / "params.json"
    p.write_text(json.dumps(params))
    fout = tmp_path / "out"
    proc = subprocess.Popen(_workflow_cmd(example_higgs, p, torch_model, fout), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    state = fout / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                done = json.loads(state.read_text())["next_chunk"]
            except (json.JSONDecodeError, KeyError, FileNotFoundError):
                done = 0
            if done >= 3:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = done
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(_workflow_cmd(example_higgs, p, torch_model, fout, "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((fout / "bundle" / "history.json").read_text())
    trained = [h["chunk"] for h in history if h["kind"] == "chunk"]
    assert trained == list(range(30)), trained  # none lost, none trained twice
    assert "AUC" in resumed.stdout
    # metrics.jsonl: one history, the chunks done after the last checkpoint not repeated, events seen going on
    lines = _jsonl(fout / "metrics.jsonl")
    chunks = [ln for ln in lines if ln["kind"] == "chunk"]
    assert [ln["chunk"] for ln in chunks] == list(range(30))
    assert all(a["events_seen"] < b["events_seen"] for a, b in zip(chunks, chunks[1:]))
    starts = [ln for ln in lines if ln["kind"] == "start"]
    assert len(starts) == 2 and "restored" not in starts[0] and starts[1]["restored"] >= 3
    assert [ln["kind"] for ln in lines].count("end") == 1 and lines[-1]["kind"] == "end"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


XGB_RESUMABLE = """
import xgboost

fit_options = {"checkpoint_rounds": 10}


def model():
    return xgboost.XGBClassifier(n_estimators=120, max_depth=3, learning_rate=0.1, random_state=0)
"""


@pytest.mark.slow
def test_xgboost_resume_after_kill_continues_the_boosting(example_higgs, tmp_path):
    """kill -9 in the middle of the boosting, then --resume: the bundle's model has every round once, as
    an uninterrupted run's (same scores), and metrics.jsonl lists each round once."""
    model = tmp_path / "model.py"
    model.write_text(XGB_RESUMABLE)
    params = json.loads(Path(example_higgs.params_json).read_text())
    params.update(chunk_size=10_000, verbose=0)
    p = tmp_path / "params.json"
    p.write_text(json.dumps(params))
    fout = tmp_path / "out"
    proc = subprocess.Popen(_workflow_cmd(example_higgs, p, model, fout), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    state = fout / "checkpoint" / "state.json"
    deadline = time.monotonic() + 180
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rounds = json.loads(state.read_text()).get("rounds", 0)
        except (json.JSONDecodeError, FileNotFoundError):
            rounds = 0
        if rounds >= 20:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = rounds
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_at is not None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL and killed_at < 120
    assert not (fout / "bundle").exists()
    resumed = subprocess.run(_workflow_cmd(example_higgs, p, model, fout, "--resume"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((fout / "bundle" / "model" / "xgboost.json").read_text())
    assert meta["rounds"] == 120
    rounds = [ln["epoch"] for ln in _jsonl(fout / "metrics.jsonl") if ln["kind"] == "round"]
    assert rounds == list(range(1, 121)), rounds  # the rounds after the last checkpoint are not listed twice
    history = json.loads((fout / "bundle" / "history.json").read_text())
    assert [h["epoch"] for h in history if h["kind"] == "round"] == list(range(1, 121))

    # the same training without the kill (in this process): the same model
    inputs = load_inputs(example_higgs.files_txt, example_higgs.labels_txt, p)
    specs = ensure_specs(inputs, progress=False)
    whole = Trainer(inputs, specs, load_model_file(model, specs.n_features), tmp_path / "whole").run()
    assert whole.backend.booster.num_boosted_rounds() == 120
    import uproot

    from mlaas4hep_lab.bundle import Bundle

    bundle = Bundle.load(fout / "bundle")
    scores, _ = bundle.predict_arrays(uproot.open(inputs.files[0])["events"].arrays())
    bundle.close()
    sel = whole.test["file_index"] == 0
    np.testing.assert_allclose(scores[whole.test["entry"][sel]], whole.test["score"][sel], atol=1e-6)
    events = [h["events_seen"] for h in history if h["kind"] == "round"]
    assert events[0] == events[-1] == whole.metrics["events_seen"]  # one pass's training events, not re-counted


def test_new_run_into_an_existing_folder_starts_a_fresh_history(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    for _ in range(2):
        train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False)
    kinds = [ln["kind"] for ln in _jsonl(tmp_path / "out" / "metrics.jsonl")]
    assert kinds.count("start") == 1 and kinds.count("chunk") == 3 and kinds.count("end") == 1


def test_resumed_run_continues_the_history_of_the_run_it_resumes(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=5_000, epochs=2, training="epochs")
    specs = ensure_specs(inputs, progress=False)
    stop = threading.Event()
    bus = EventBus()
    bus.subscribe(lambda e: stop.set() if e.kind == "chunk" and (e.epoch, e.chunk) == (0, 3) else None)
    first = train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False, bus=bus, stop=stop)
    assert first.result.stopped == "requested"
    # the interrupted run's end line, and a chunk line written after its checkpoint (as a kill leaves it):
    # neither belongs to the history the resumed run continues
    log = tmp_path / "out" / "metrics.jsonl"
    orphan = dict(_jsonl(log)[-2], chunk=4, events_seen=10**9)
    log.write_text(log.read_text() + json.dumps(orphan) + "\n")
    train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False, resume=True)
    lines = _jsonl(log)
    chunks = [(ln["epoch"], ln["chunk"]) for ln in lines if ln["kind"] == "chunk"]
    n = len([c for c in chunks if c[0] == 0])
    assert chunks == [(e, c) for e in range(2) for c in range(n)]
    seen = [ln["events_seen"] for ln in lines if ln["kind"] == "chunk"]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert [ln["epoch"] for ln in lines if ln["kind"] == "epoch"] == [0, 1]
    kinds = [ln["kind"] for ln in lines]
    assert kinds.count("start") == 2 and kinds.count("end") == 1 and kinds[-1] == "end"
    assert lines[kinds.index("start", 1)]["restored"] == 4  # chunks 0-3 of the first pass


def test_resume_without_a_checkpoint_starts_a_fresh_history(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False)
    import shutil

    shutil.rmtree(tmp_path / "out" / "checkpoint")
    train(inputs, specs, torch_model, tmp_path / "out", progress=False, plots=False, resume=True)
    kinds = [ln["kind"] for ln in _jsonl(tmp_path / "out" / "metrics.jsonl")]
    assert kinds.count("start") == 1 and kinds.count("chunk") == 3


def test_resume_with_changed_configuration_is_refused(example_higgs, torch_model, tmp_path):
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    Trainer(inputs, specs, load_model_file(torch_model, specs.n_features), tmp_path / "o").run()
    changed = inputs_for(example_higgs, chunk_size=10_000, epochs=1, batch_size=64)
    with pytest.raises(ConfigError, match="configuration changed.*batch_size"):
        Trainer(changed, specs, load_model_file(torch_model, specs.n_features), tmp_path / "o", resume=True).run()


KERAS_COUNTED = """
import keras


class Fits(keras.callbacks.Callback):
    # the batches of each model.fit call

    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_begin(self, logs=None):
        self.batches.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.batches[-1] += 1


fit_options = {"callbacks": [Fits()]}


def model(idim):
    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return m
"""


@pytest.mark.slow
def test_keras_trains_each_pass_in_one_fit_and_resumes_after_a_stop(example_higgs, tmp_path):
    """Keras: one model.fit per pass (fit_parts), every chunk reported after its batches with the compiled
    metrics; a Stop during a chunk's batches ends the run after that batch, and --resume redoes that chunk."""
    path = tmp_path / "model.py"
    path.write_text(KERAS_COUNTED)
    inputs = inputs_for(example_higgs, chunk_size=10_000, epochs=2, training="epochs", batch_size=128)
    specs = ensure_specs(inputs, progress=False)
    user = load_model_file(path, specs.n_features)
    fits = user.options["fit_options"]["callbacks"][0].batches
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    result = Trainer(inputs, specs, user, tmp_path / "full", bus=bus).run()
    chunks = [e for e in seen if e.kind == "chunk"]
    assert [(e.epoch, e.chunk) for e in chunks] == [(ep, k) for ep in range(2) for k in range(3)]
    assert [e.epoch for e in seen if e.kind == "epoch"] == [0, 1]
    assert all({"loss", "accuracy", "auc", "val_loss", "val_auc"} <= set(e.metrics) for e in chunks)
    train_events = result.metrics["events_seen"] // 2
    assert len(fits) == 2 and fits[0] == fits[1] > train_events / 128
    assert result.stopped == "" and result.metrics["auc"] > 0.6   # it learns (quality: test_backend_quality)

    # a stop in the middle of chunk 1 of the first pass
    stop = threading.Event()
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    bus.subscribe(lambda e: stop.set() if e.kind == "chunk" else None)
    user = load_model_file(path, specs.n_features)
    first = Trainer(inputs, specs, user, tmp_path / "o", bus=bus, stop=stop).run()
    assert first.stopped == "requested"
    assert [(e.epoch, e.chunk) for e in seen if e.kind == "chunk"] == [(0, 0)]
    state = json.loads((tmp_path / "o" / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["next_chunk"], state["done"]) == (0, 1, False)
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    resumed = Trainer(inputs, specs, load_model_file(path, specs.n_features), tmp_path / "o", bus=bus,
                      resume=True).run()
    assert resumed.stopped == ""
    assert [(e.epoch, e.chunk) for e in seen if e.kind == "chunk"] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [e.epoch for e in seen if e.kind == "epoch"] == [0, 1]


def test_params_early_stopping_key():
    assert load_params({"early_stopping": 3}).early_stopping == 3
