"""The Training panel's tasks (binary, multi-class, regression), headless as in test_widgets_panels.py:
the task selector switches the templates and writes params, bad task fields give one line, the live
plots draw each task's curves, and short multi-class and regression runs on the tth_tasks example end
with their own report (AUC per class and confusion matrix; RMSE, MAE and bias)."""

from __future__ import annotations

import json
import time

import pytest
from widget_support import dummy_comm  # noqa: F401  (autouse: headless widgets)

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.training.events import MetricEvent
from mlaas4hep_lab.widgets import Lab, remote, tasks
from mlaas4hep_lab.widgets import training as training_module
from mlaas4hep_lab.widgets.run import TrainingRun

BINARY = ["keras", "torch", "sklearn", "xgboost", "model.py path"]


@pytest.fixture(scope="module")
def tth(tmp_path_factory):
    """ttH / tt+bb / tt+light with truth: params.json multi-class, params_regression.json GenTop_pt."""
    return datasets.tth_tasks(tmp_path_factory.mktemp("tth_tasks"), n_events=3000, seed=5)


def tasks_lab(tth, workdir, regression: bool = False) -> Lab:
    if regression:   # a regression needs no labels.txt
        return Lab(tth.files_txt, None, tth.params_regression, model="torch_regression", workdir=workdir,
                   interval=0.1)
    return Lab(tth.files_txt, tth.labels_txt, tth.params_json, workdir=workdir, interval=0.1)


@pytest.fixture
def lab(tth, tmp_path):
    return tasks_lab(tth, tmp_path / "w")


@pytest.fixture
def regression_lab(tth, tmp_path):
    return tasks_lab(tth, tmp_path / "r", regression=True)


def error_of(panel) -> str:
    """The panel's task message: one line starting with "error:" (no traceback)."""
    text = panel.task_message.value
    assert "m4h-error" in text and "error:" in text and "\n" not in text and "Traceback" not in text, text
    return text


def test_task_selector_switches_templates_and_writes_params(lab):
    panel = lab.training
    assert panel.task.value == "multiclass" and panel.classes.value == "ttH\nttbb\nttlf"
    assert list(panel.model.options) == [f"{fw}_multiclass" for fw in BINARY[:4]] + ["model.py path"]
    assert panel.model.value == "keras_multiclass"
    assert panel.target.layout.display == "none" and panel.classes.layout.display == ""
    panel.model.value = "torch_multiclass"
    panel.task.value = "regression"   # the same framework's template; no target yet: refused in one line
    assert list(panel.model.options) == [f"{fw}_regression" for fw in BINARY[:4]] + ["model.py path"]
    assert panel.model.value == "torch_regression"
    assert "regression needs its target" in error_of(panel) and lab.state.params.task == "multiclass"
    assert panel.target.layout.display == "" and panel.class_weights.layout.display == "none"
    panel.target.value = "GenTop_pt\nmax(Jet_pt, axis=-1) if False else GenTop_mass"
    assert "error:" in panel.task_message.value   # not an expression the compiler takes
    panel.target.value = "GenTop_pt\nGenTop_mass / 2"
    p = lab.state.params
    assert (p.task, p.target, p.classes, p.class_weights) == ("regression", ["GenTop_pt", "GenTop_mass / 2"], [], None)
    assert panel.task_message.value == ""
    panel.task.value = "binary"   # labels 0, 1, 2 are not a binary task's
    assert list(panel.model.options) == BINARY and panel.model.value == "torch"
    assert "labels.txt" in error_of(panel) and lab.state.params.task == "regression"
    panel.task.value = "multiclass"
    panel.class_weights.value = "balanced"
    panel.classes.value = "H, bb, light"
    p = lab.state.params
    assert (p.task, p.classes, p.class_weights, p.target) == ("multiclass", ["H", "bb", "light"], "balanced", [])
    panel.label.value = "(nJet >= 6) + (nJet >= 8)"   # a per-event class, checked on the sample
    assert lab.state.params.label == "(nJet >= 6) + (nJet >= 8)"
    panel.apply_form()
    assert lab.state.model == "torch_multiclass" and lab.state.model_path().name == "torch_multiclass.py"
    assert tasks.template_for("regression", "/my/model.py") is None


def test_bad_task_fields_give_one_line(lab, regression_lab):
    panel = lab.training
    panel.classes.value = "ttH, ttbb"   # labels.txt has 2 too
    assert "labels.txt gives 2" in error_of(panel) and lab.state.params.classes == ["ttH", "ttbb", "ttlf"]
    panel.classes.value = "a\nb\nc\nd"   # no file labelled 3
    assert "class 3 (d)" in error_of(panel)
    panel.classes.value = "a, a, b"
    assert "must differ" in error_of(panel)
    panel.classes.value = "ttH, ttbb, ttlf"
    assert panel.task_message.value == ""
    panel.label.value = "nJet"   # 4..n jets: not class indices 0..2
    assert "sampled events" in error_of(panel) and lab.state.params.label == ""
    panel.label.value = "nJets >= 5"
    assert "nJet" in error_of(panel)   # the closest spelling
    panel.label.value = "Jet_pt > 30"   # a list per event
    assert "one number per event" in error_of(panel)
    panel.label.value = "(nJet >= 6"
    assert "invalid expression" in error_of(panel)
    panel.start()   # Start refuses with the same line; nothing runs
    assert panel.run is None and panel.status.value.startswith("failed:") and "\n" not in panel.status.value

    reg = regression_lab.training
    assert reg.task.value == "regression" and reg.target.value == "GenTop_pt"
    reg.target.value = ""
    assert "needs its target" in error_of(reg) and regression_lab.state.params.target == ["GenTop_pt"]
    reg.start()
    assert reg.run is None and "target" in reg.status.value
    reg.target.value = "Jet_pt"
    assert "list per event" in error_of(reg)


def test_live_plots_draw_each_tasks_curves(regression_lab, monkeypatch):
    drawn = []
    monkeypatch.setattr(training_module, "curves_png", lambda series, label, x: drawn.append((list(series), label))
                        or b"png")
    panel = regression_lab.training
    for task, metrics, keys in (
            ("regression", {"loss": 0.9, "val_loss": 0.8, "val_rmse": 41.0, "val_mae": 30.0}, ["val_rmse", "val_mae"]),
            ("multiclass", {"loss": 1.0, "val_loss": 1.1, "auc": 0.7, "val_auc": 0.68}, ["auc", "val_auc"])):
        regression_lab.state.params = regression_lab.state.params.replace(
            task=task, target=["GenTop_pt"] if task == "regression" else [])
        run = TrainingRun(regression_lab.state, interval=0.01)
        panel.run, drawn[:] = run, []
        run.on_update(panel.refresh)
        run.status = "running"
        run.bus.publish(MetricEvent("chunk", events_seen=500, events_total=2000, metrics=metrics))
        assert panel.loss_points.value == "1"
        # legends say train / validation (and "(weighted)" when a weight branch is set: none here)
        assert drawn == [(["train loss", "validation loss"], "loss"),
                         (list(tasks.curve_labels(dict.fromkeys(keys), False)), tasks.curve_keys(task)[1])]
    assert "macro" in tasks.curve_keys("multiclass")[1] and "RMSE" in tasks.curve_keys("regression")[1]


def finish(panel, run, seconds=120):
    assert run is not None, panel.status.value
    assert run.join(seconds)
    deadline = time.monotonic() + 10
    while not panel.status.value.startswith("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert panel.status.value.startswith("done"), panel.status.value + run.error
    return json.loads((run.fout / "metrics.json").read_text())


@pytest.mark.slow
def test_multiclass_run_reports_auc_per_class(lab):
    panel = lab.training
    panel.model.value = "torch_multiclass"
    panel.epochs.value, panel.chunk_size.value = 1, 700
    run = panel.start()
    metrics = finish(panel, run)
    assert metrics["task"] == "multiclass" and int(panel.loss_points.value) == len(run.curves) >= 3
    assert "val_auc" in run.curves.values   # the macro one-vs-rest AUC, live
    text = panel.report_text.value
    for name in ("ttH", "ttbb", "ttlf"):
        assert f"<td>{name}</td><td>{metrics['auc_per_class'][name]:.4f}</td>" in text
    assert f"{metrics['auc_macro']:.4f}" in text and f"{metrics['accuracy']:.4f}" in text
    assert "m4h-confusion" in text and f"<td>{metrics['confusion'][0][0]:,}</td>" in text
    assert "macro AUC" in panel.result.value and "bundle" in panel.result.value
    names = ["roc_multiclass", "confusion", "rejection_ttH", "rejection_ttbb", "rejection_ttlf"]
    assert list(panel.report_plots) == names and len(panel.report.titles) == 5
    for name, image in panel.report_plots.items():
        assert image.value == (run.fout / "plots" / f"{name}.png").read_bytes(), name
    assert panel.roc_plot.value == panel.report_plots["roc_multiclass"].value


@pytest.mark.slow
def test_regression_run_reports_rmse(regression_lab):
    panel = regression_lab.training
    assert panel.model.value == "torch_regression"
    panel.epochs.value, panel.chunk_size.value = 1, 700
    metrics = finish(panel, panel.start())
    run = panel.run
    assert {"val_rmse", "val_mae", "val_loss"} <= set(run.curves.values) and "val_auc" not in run.curves.values
    text = panel.report_text.value
    rmse, mae, bias = (metrics[k]["GenTop_pt"] for k in ("rmse", "mae", "bias"))
    assert f"<td>GenTop_pt</td><td>{rmse:.4g}</td><td>{mae:.4g}</td><td>{bias:.4g}</td>" in text
    assert "RMSE GenTop_pt" in panel.result.value
    assert list(panel.report_plots) == ["regression_GenTop_pt", "response_GenTop_pt"]
    for name, image in panel.report_plots.items():
        assert image.value == (run.fout / "plots" / f"{name}.png").read_bytes(), name


def test_other_panels_work_on_a_multiclass_and_a_regression_lab(lab, regression_lab):
    for one in (lab, regression_lab):
        one.cuts.expression.value = "nJet >= 5"
        assert "ok: flat cut on nJet" in one.cuts.message.value
        assert one.cuts.preview_plot.value[:4] == b"\x89PNG" and len(one.cuts.last_preview.rows) == 3
        assert one.branches.summary.value.endswith("branches selected")
    # the Deploy panel's side-by-side scores of a multi-class model: one value per class
    row = remote.ScoreRow("a.root", 0, (0.2, 0.5, 0.3), (0.2, 0.49, 0.31), True)
    assert row.diff == pytest.approx(0.01)
    assert "0.2, 0.5, 0.3" in remote.scores_html([row])
    assert remote.ScoreRow("a.root", 0, 0.5, 0.25, False).diff == 0.25


@pytest.mark.slow
def test_the_objects_layout_offers_the_set_models_and_trains_one(lab):
    panel = lab.training
    panel.model.value = "torch_multiclass"
    panel.layout.value = "objects"   # the set models of any task, the same framework's first
    assert list(panel.model.options) == [*tasks.OBJECTS_TEMPLATES, "model.py path"]
    assert panel.model.value == "torch_deepsets" and lab.state.params.layout == "objects"
    panel.epochs.value, panel.chunk_size.value = 1, 700
    metrics = finish(panel, panel.start())
    assert metrics["task"] == "multiclass" and set(metrics["auc_per_class"]) == {"ttH", "ttbb", "ttlf"}
    manifest = json.loads((panel.run.fout / "bundle" / "manifest.json").read_text())
    assert manifest["layout"]["layout"] == "objects" and "Jet_mask" in manifest["layout"]["inputs"]
    panel.layout.value = "flat"
    assert panel.model.value == "torch_multiclass" and lab.state.params.layout == "flat"
