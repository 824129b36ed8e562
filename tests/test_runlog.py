"""Run tracking (issue 17): every ``train`` writes ``fout/run.json`` (parameters, curves, test metrics, ROC,
bundle) while it runs, atomically and at most once a second, and records failed and stopped runs; where
mlflow is installed and ``MLFLOW_TRACKING_URI`` is set, the same run goes to MLflow (tested on a local
file store with the real mlflow package)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.params import Params
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training import runlog
from mlaas4hep_lab.training.events import EventBus, MetricEvent
from mlaas4hep_lab.training.loop import TrainResult
from mlaas4hep_lab.training.model_file import template_path
from mlaas4hep_lab.training.workflow import WorkflowResult, train


@pytest.fixture(scope="module")
def higgs(tmp_path_factory):
    return datasets.higgs(tmp_path_factory.mktemp("higgs"), n_events=3000, seed=13)


@pytest.fixture(scope="module")
def inputs(higgs):
    found = load_inputs(higgs.files_txt, higgs.labels_txt, higgs.params_json)
    found.params = found.params.replace(chunk_size=1000, epochs=1, verbose=0)
    return found


@pytest.fixture(scope="module")
def specs(inputs):
    return ensure_specs(inputs, progress=False)


def fake_inputs():
    return SimpleNamespace(params=Params(weight="w"), files=["a.root", "b.root"], labels=[1.0, 0.0])


def fake_result(fout: Path, history, stopped: str = "") -> WorkflowResult:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000).astype(np.float32)
    test = {"y": y, "score": (y + rng.normal(0, 0.8, 5000)).astype(np.float32),
            "weight": rng.uniform(0.5, 2, 5000).astype(np.float32)}
    metrics = {"task": "binary", "auc": 0.81, "auc_weighted": 0.83, "ams": float("nan"), "backend": "torch",
               "events_seen": 4000, "ranking": [{"feature": "x", "importance": 0.1}], "confusion": [[1, 2]]}
    (fout / "bundle").mkdir(parents=True, exist_ok=True)
    (fout / "bundle" / "manifest.json").write_text("{}")
    return WorkflowResult(TrainResult(None, history, test, metrics, stopped), fout / "bundle", metrics, [])


def chunk(i: int, **metrics) -> MetricEvent:
    return MetricEvent("chunk", chunk=i, events_seen=100 * (i + 1), events_total=1000,
                       metrics={"loss": 1.0 / (i + 1), "val_loss": 1.1 / (i + 1), "auc": 0.6, "val_auc": 0.7, **metrics})


# ------------------------------------------------------------------------------------------- the record
def test_the_recorder_writes_at_most_once_a_second_atomically_and_the_final_record(tmp_path, monkeypatch):
    writes = []
    replace = runlog.os.replace
    monkeypatch.setattr(runlog.os, "replace", lambda a, b: (writes.append(time.monotonic()), replace(a, b)))
    bus = EventBus()
    recorder = runlog.RunRecorder(tmp_path, fake_inputs(), "model.py", bus, interval=0.5, mlflow=None)
    bad_reads, stop = [], threading.Event()

    def reader():   # a reader never sees half a file
        while not stop.is_set():
            try:
                json.loads((tmp_path / "run.json").read_text())
            except FileNotFoundError:
                pass
            except ValueError as err:
                bad_reads.append(err)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with recorder as record:
        assert runlog.read_run(tmp_path)["status"] == "running" and len(writes) == 1
        bus.publish(MetricEvent("start", message="torch backend (batches), 3 features, 4 chunks"))
        for i in range(40):     # a burst: folded into one delayed write
            bus.publish(chunk(i, val_accuracy=0.5 if i % 2 else float("nan")))
        assert len(writes) == 1
        time.sleep(0.8)
        assert len(writes) == 2
        seen = runlog.read_run(tmp_path)
        assert len(seen["curves"]["chunk"]["loss"]) == 40 and seen["backend"] == "torch"
        assert seen["events_seen"] == 4000 and seen["curves"]["chunk"]["events"][:2] == [100, 200]
        assert seen["curves"]["chunk"]["val_accuracy"][:2] == [None, 0.5]   # NaN is null
        bus.publish(MetricEvent("epoch", events_seen=4000, metrics={"loss": 0.1}))
        history = [chunk(i).to_dict() for i in range(40)] + [MetricEvent("epoch", metrics={"loss": 0.1}).to_dict()]
        record.done(fake_result(tmp_path, history))
    stop.set()
    thread.join()
    assert not bad_reads and len(writes) == 3
    run = runlog.read_run(tmp_path)
    assert run["format"] == 1 and run["status"] == "finished" and run["finished"] >= run["started"]
    assert run["model"] == "model.py" and run["task"] == "binary" and run["bundle"] == "bundle"
    assert run["params"] == json.loads(json.dumps(Params(weight="w").to_dict()))
    assert run["files"] == ["a.root", "b.root"] and run["labels"] == [1.0, 0.0]
    assert run["metrics"]["auc"] == 0.81 and run["metrics"]["auc_weighted"] == 0.83
    assert run["metrics"]["ams"] is None and "ranking" not in run["metrics"]   # lists stay in metrics.json
    assert set(run["curves"]) == {"chunk", "epoch"} and len(run["curves"]["epoch"]["loss"]) == 1
    for key in ("roc", "roc_weighted"):
        assert 2 < len(run[key]["fpr"]) <= runlog.MAX_ROC_POINTS == 200
        assert run[key]["fpr"][0] == 0.0 and run[key]["tpr"][-1] == 1.0 and 0.7 < run[key]["auc"] < 0.9
    assert not list(tmp_path.glob(".run.json.*"))     # no temporary file left


def test_a_failed_or_interrupted_run_is_recorded(tmp_path):
    for error, status in ((ValueError("no events pass the cuts\n  details"), "failed"),
                          (KeyboardInterrupt(), "stopped")):
        fout = tmp_path / status
        with pytest.raises(type(error)):
            with runlog.RunRecorder(fout, fake_inputs(), "m.py", EventBus(), mlflow=None):
                raise error
        run = runlog.read_run(fout)
        assert run["status"] == status and run["finished"]
    assert runlog.read_run(tmp_path / "failed")["error"] == "ValueError: no events pass the cuts"
    with runlog.RunRecorder(tmp_path / "stop", fake_inputs(), "m.py", EventBus(), mlflow=None) as record:
        record.done(fake_result(tmp_path / "stop", [], stopped="requested"))   # Stop: a bundle, status stopped
    assert runlog.read_run(tmp_path / "stop")["status"] == "stopped"


def test_a_resumed_run_keeps_its_identity(tmp_path):
    with runlog.RunRecorder(tmp_path, fake_inputs(), "m.py", EventBus(), mlflow=None):
        pass
    first = runlog.read_run(tmp_path)
    with runlog.RunRecorder(tmp_path, fake_inputs(), "m.py", EventBus(), resume=True, mlflow=None):
        pass
    again = runlog.read_run(tmp_path)
    assert (again["id"], again["started"]) == (first["id"], first["started"])
    with runlog.RunRecorder(tmp_path, fake_inputs(), "m.py", EventBus(), mlflow=None):
        pass
    assert runlog.read_run(tmp_path)["id"] != first["id"]   # a new run in the same folder is another run


@pytest.mark.slow
def test_train_writes_run_json(inputs, specs, tmp_path):
    out = train(inputs, specs, template_path("sklearn"), tmp_path, progress=False)
    run = runlog.read_run(tmp_path)
    assert run["status"] == "finished" and run["backend"] == "sklearn" and run["task"] == "binary"
    assert run["model"] == template_path("sklearn").name and (tmp_path / run["bundle"]) == out.bundle
    assert run["metrics"]["auc"] == pytest.approx(out.metrics["auc"])
    assert run["metrics"]["auc_weighted"] == pytest.approx(out.metrics["auc_weighted"])
    assert run["events_seen"] == out.metrics["events_seen"] > 0
    assert run["params"]["chunk_size"] == 1000 and run["params"]["weight"] == "Weight"
    assert run["curves"]["epoch"]["val_auc"][0] == pytest.approx(out.result.history[-1]["metrics"]["val_auc"])
    assert len(run["roc"]["fpr"]) <= 200 and run["roc_weighted"]["auc"] == pytest.approx(
        out.metrics["auc_weighted"], abs=1e-3)
    assert run["warnings"] == []   # the example's params.json declares the weight and the identifier


@pytest.mark.slow
def test_a_failed_training_is_recorded(inputs, specs, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def model(idim):\n    raise RuntimeError('no model today')\n")
    with pytest.raises(Exception, match="no model today"):
        train(inputs, specs, broken, tmp_path / "failed", progress=False)
    run = runlog.read_run(tmp_path / "failed")
    assert run["status"] == "failed" and "no model today" in run["error"] and "\n" not in run["error"]


def test_the_engine_does_not_import_mlflow(monkeypatch):
    code = ("import mlaas4hep_lab, mlaas4hep_lab.training.workflow, sys; "
            "print('mlflow' in sys.modules, 'ipywidgets' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]
    assert runlog.MlflowLogger.from_environment({}) is None
    monkeypatch.setattr(runlog.importlib.util, "find_spec", lambda name: None)
    assert runlog.MlflowLogger.from_environment({"MLFLOW_TRACKING_URI": "file:///x"}) is None


# ---------------------------------------------------------------------------------------------- MLflow
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE to use one)."""
    pytest.importorskip("mlflow", reason="mlflow is optional: pip install mlflow-skinny (the test extra pins it)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mlaas4hep-tests")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())


def test_metric_events_go_to_mlflow_with_their_steps(mlflow_store, tmp_path):
    bus = EventBus()
    with runlog.RunRecorder(tmp_path / "run", fake_inputs(), "model.py", bus) as record:
        assert isinstance(record.mlflow, runlog.MlflowLogger)
        for i in range(5):
            bus.publish(chunk(i))
        bus.publish(MetricEvent("epoch", events_seen=500, metrics={"loss": 0.2, "val_auc": 0.75}))
        record.done(fake_result(tmp_path / "run", []))
    run_id = runlog.read_run(tmp_path / "run")["mlflow"]["run_id"]
    run = mlflow_store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == runlog.read_run(tmp_path / "run")[
        "mlflow"]["experiment_id"]
    assert run.data.params["weight"] == "w" and run.data.params["model"] == "model.py"
    assert json.loads(run.data.params["split"]) == [0.64, 0.16, 0.2]
    history = mlflow_store.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5] and history[-1].value == pytest.approx(0.2)
    assert [m.step for m in mlflow_store.get_metric_history(run_id, "epoch_val_auc")] == [1]
    assert run.data.metrics["test_auc"] == 0.81 and run.data.metrics["test_auc_weighted"] == 0.83
    assert "test_ams" not in run.data.metrics          # NaN is not logged
    assert run.data.tags["mlaas4hep.backend"] == "torch" and run.data.tags["mlaas4hep.task"] == "binary"
    artifacts = {a.path for a in mlflow_store.list_artifacts(run_id)}
    assert {"bundle", "run.json"} <= artifacts
    assert [a.path for a in mlflow_store.list_artifacts(run_id, "bundle")] == ["bundle/manifest.json"]


def test_a_tracking_server_that_fails_is_one_warning_and_training_goes_on(mlflow_store, tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///dev/null/mlruns")   # cannot be created
    bus = EventBus()
    with runlog.RunRecorder(tmp_path, fake_inputs(), "model.py", bus) as record:
        for i in range(3):
            bus.publish(chunk(i))
        record.done(fake_result(tmp_path, []))
    assert record.mlflow.failed and caplog.text.count("MLflow logging stopped") == 1
    assert runlog.read_run(tmp_path)["status"] == "finished" and "mlflow" not in runlog.read_run(tmp_path)


@pytest.mark.slow
def test_a_training_is_logged_to_mlflow(mlflow_store, inputs, specs, tmp_path):
    out = train(inputs, specs, template_path("sklearn"), tmp_path, progress=False)
    run_id = runlog.read_run(tmp_path)["mlflow"]["run_id"]
    run = mlflow_store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["chunk_size"] == "1000"
    assert run.data.metrics["test_auc"] == pytest.approx(out.metrics["auc"])
    assert run.data.metrics["test_auc_weighted"] == pytest.approx(out.metrics["auc_weighted"])
    assert "epoch_val_auc" in run.data.metrics
    names = {a.path for a in mlflow_store.list_artifacts(run_id, "bundle")}
    assert "bundle/manifest.json" in names and "bundle/specs.json" in names
