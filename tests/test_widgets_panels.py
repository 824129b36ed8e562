"""The panels headless: ipywidgets' comm replaced by a dummy (as ipywidgets' own tests do), widgets
driven like a user does (values set, buttons clicked), assertions on widget state and on the messages
the kernel would have sent to the browser."""

from __future__ import annotations

import time

import ipywidgets
import pytest
from widget_support import dummy_comm  # noqa: F401  (autouse: headless widgets)

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.training.events import MetricEvent
from mlaas4hep_lab.widgets import Lab
from mlaas4hep_lab.widgets.run import TrainingRun


@pytest.fixture(scope="module")
def higgs(tmp_path_factory):
    return datasets.higgs(tmp_path_factory.mktemp("higgs"), n_events=3000, seed=11)


@pytest.fixture
def lab(higgs, tmp_path):
    return Lab(files=higgs.files_txt, labels=higgs.labels_txt, params=higgs.params_json, workdir=tmp_path / "w",
               interval=0.1)


def classes(widget) -> list[str]:
    return list(widget._dom_classes)


def walk(widget):
    """Every widget below ``widget`` (children of boxes and tabs)."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def sent_values(widget, name: str) -> list:
    """The values of trait ``name`` this widget sent to the front end, in order."""
    out = []
    for args, kwargs in widget.comm.messages:
        data = kwargs.get("data") or (args[0] if args else {})
        state = (data or {}).get("state", {})
        if name in state:
            out.append(state[name])
    return out


def test_lab_is_four_tabs_on_one_state(lab):
    # the tabs sit under the notes (what was loaded beside files.txt) and the leakage warning
    assert isinstance(lab.tabs, ipywidgets.Tab) and lab.widget.children[-1] is lab.tabs
    assert tuple(lab.tabs.titles) == ("Branches", "Cuts", "Training", "Deploy")
    assert lab.branches.state is lab.cuts.state is lab.training.state is lab.deploy.state is lab.state
    assert "application/vnd.jupyter.widget-view+json" in lab._repr_mimebundle_()
    # every DOM hook of the contract is on a widget
    hooks = {c for w in walk(lab.widget) for c in getattr(w, "_dom_classes", ())}
    for hook in ("m4h-branch-search", "m4h-branch-include", "m4h-branch-exclude", "m4h-branch-table",
                 "m4h-branch-check", "m4h-branch-summary", "m4h-cut-kind", "m4h-cut-name", "m4h-cut-expression",
                 "m4h-cut-mode", "m4h-cut-message", "m4h-cut-add", "m4h-cut-list", "m4h-preview-table",
                 "m4h-preview-plot", "m4h-train-model", "m4h-train-epochs", "m4h-train-chunk-size",
                 "m4h-train-batch-size", "m4h-train-start", "m4h-train-stop", "m4h-train-status",
                 "m4h-train-progress", "m4h-loss-plot", "m4h-loss-points", "m4h-auc-plot", "m4h-train-result",
                 "m4h-deploy-url", "m4h-deploy-token", "m4h-deploy-name", "m4h-deploy-push", "m4h-deploy-status",
                 "m4h-deploy-refresh", "m4h-deploy-models", "m4h-deploy-score", "m4h-deploy-scores"):
        assert hook in hooks, hook
    assert isinstance(lab.deploy.token, ipywidgets.Password)
    assert list(lab.training.model.options) == ["keras", "torch", "sklearn", "xgboost", "model.py path"]
    assert list(lab.cuts.kind.options) == ["new branch", "flat cut", "jagged cut"]


def test_branch_ticks_and_wildcards_change_params(lab):
    panel = lab.branches
    n = len(lab.state.branch_names)
    assert panel.checks["PRI_jet_num"].description == "PRI_jet_num"
    assert "m4h-branch-check" in classes(panel.checks["PRI_jet_num"])
    panel.include.value = "PRI_*"
    assert lab.state.params.selected_branches == ["PRI_*"]
    assert panel.checks["PRI_met"].value and not panel.checks["DER_mass_MMC"].value
    n_pri = sum(name.startswith("PRI_") for name in lab.state.branch_names)
    assert panel.summary.value == f"{n_pri} of {n} branches selected"
    assert panel.summary.value in sent_values(panel.summary, "value")   # the browser got it
    panel.checks["PRI_met"].value = False
    assert lab.state.params.exclude_branches == ["Weight", "PRI_met"]   # the Higgs params exclude Weight
    assert panel.exclude.value == "Weight, PRI_met"
    assert panel.summary.value == f"{n_pri - 1} of {n} branches selected"
    panel.checks["DER_mass_MMC"].value = True
    assert lab.state.params.selected_branches == ["PRI_*", "DER_mass_MMC"]
    panel.include.value = "NOPE_*"   # refused, with the engine's message; params unchanged
    assert "error" in panel.message.value and "NOPE_*" in panel.message.value
    assert lab.state.params.selected_branches == ["PRI_*", "DER_mass_MMC"]
    panel.search.value = "jet_n"
    shown = [name for name, row in panel.rows.items() if row.layout.display != "none"]
    assert shown == ["PRI_jet_num"]
    panel.search.value = ""
    assert all(row.layout.display != "none" for row in panel.rows.values())


def test_invalid_expression_shows_the_message_and_valid_one_previews(lab):
    panel = lab.cuts
    panel.kind.value = "flat cut"
    panel.expression.value = "PRI_jet_num >= "
    assert "syntax error" in panel.message.value and panel.add_button.disabled
    assert "m4h-error" in panel.message.value
    panel.expression.value = "PRI_jet_nu >= 1"
    assert "PRI_jet_num" in panel.message.value    # the closest spelling
    assert panel.add() is False and lab.state.preproc_dict == {}
    before_plot = panel.preview_plot.value
    panel.expression.value = "PRI_jet_num >= 1"
    assert panel.message.value.count("ok: flat cut on PRI_jet_num") == 1 and not panel.add_button.disabled
    assert panel.preview_plot.value != before_plot and panel.preview_plot.value[:4] == b"\x89PNG"
    # the live preview is the engine's Preproc on the sampled events
    engine = Preproc.from_json({"flat_cut": {"PRI_jet_num": {"cut": "PRI_jet_num >= 1"}}})
    expected = [int(engine.apply(s)[1].sum()) for s in lab.state.sample]
    assert [r["passed"] for r in panel.last_preview.rows] == expected
    for passed in expected:
        assert f"<td>{passed}</td>" in panel.preview_table.value
    panel.add_button.click()
    assert lab.state.preproc_dict["flat_cut"]["PRI_jet_num"]["cut"] == "PRI_jet_num >= 1"
    assert panel.expression.value == ""
    removes = [c for c in panel.list.children if "m4h-cut-remove" in classes(c.children[0])]
    assert len(removes) == 1 and "PRI_jet_num &gt;= 1" in removes[0].children[1].value
    # a new branch, then remove the cut with its button
    panel.kind.value = "new branch"
    assert panel.name.layout.display == "" and panel.mode.layout.display == "none"
    panel.name.value = "log_met"
    panel.expression.value = "log(PRI_met + 1)"
    assert panel.add()
    assert lab.state.preproc_dict["new_branch"]["log_met"]["type"] == "flat"
    removes = [c.children[0] for c in panel.list.children]
    removes[1].click()   # items list the new branch first, then the cut
    assert "flat_cut" not in lab.state.preproc_dict and "log_met" in lab.state.preproc_dict["new_branch"]
    panel.path.value = str(lab.state.workdir / "exported.json")
    panel.export_button.click()
    assert "exported" in panel.file_status.value
    assert Preproc.from_json(lab.state.workdir / "exported.json") == Preproc.from_json(lab.state.preproc_dict)


def test_metric_events_update_the_plots(lab):
    panel = lab.training
    run = TrainingRun(lab.state, interval=0.05)
    panel.run = run
    run.on_update(panel.refresh)
    run.status = "running"
    first = panel.loss_plot.value
    run.bus.publish(MetricEvent("chunk", events_seen=500, events_total=2000,
                                metrics={"loss": 0.69, "val_loss": 0.7, "auc": 0.6, "val_auc": 0.58}))
    assert panel.loss_points.value == "1" and panel.loss_plot.value != first
    assert panel.progress.value == 500 and panel.progress.max == 2000
    assert "events/s" in panel.rate.value
    one_point = panel.loss_plot.value
    for i in range(2, 6):   # a burst inside the throttle interval ...
        run.bus.publish(MetricEvent("chunk", events_seen=500 * i, events_total=2000,
                                    metrics={"loss": 0.69 / i, "val_loss": 0.7 / i, "auc": 0.6, "val_auc": 0.6}))
    deadline = time.monotonic() + 10
    while panel.loss_points.value != "5" and time.monotonic() < deadline:   # ... is drawn at its end
        time.sleep(0.02)
    assert panel.loss_points.value == "5" and panel.loss_plot.value != one_point
    assert len(sent_values(panel.loss_plot, "value")) < 5   # not one redraw per event
    assert "5" in sent_values(panel.loss_points, "value")


@pytest.mark.slow
def test_start_trains_in_the_background_and_stop_button_stops(lab):
    panel = lab.training
    panel.model.value = "torch"
    panel.epochs.value = 400
    panel.chunk_size.value = 1000
    panel.batch_size.value = 8
    panel.start_button.click()
    assert panel.run is not None and panel.run.status == "running"
    assert panel.status.value.startswith("running") and not panel.stop_button.disabled
    assert panel.start_button.disabled
    deadline = time.monotonic() + 120
    while panel.run.message.startswith("computing") and time.monotonic() < deadline:
        time.sleep(0.05)   # the kernel's thread is free while it trains
    time.sleep(1.0)
    panel.stop_button.click()
    assert panel.status.value.startswith(("stopping", "stopped"))
    assert panel.run.join(180)
    deadline = time.monotonic() + 10
    while not panel.status.value.startswith("stopped") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert panel.status.value.startswith("stopped"), panel.status.value
    assert "bundle" in panel.result.value and "stopped early" in panel.result.value
    assert lab.state.bundle is not None and lab.deploy.name.value == "lab-torch"


@pytest.mark.slow
def test_a_short_training_fills_every_plot(lab):
    panel = lab.training
    panel.model.value = "keras"
    panel.epochs.value = 1
    panel.chunk_size.value = 700
    lab.cuts.expression.value = "PRI_jet_num >= 0"
    assert lab.cuts.add()
    run = panel.start()
    assert run.join(300)
    deadline = time.monotonic() + 10
    while not panel.status.value.startswith("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert panel.status.value.startswith("done"), panel.status.value + run.error
    assert int(panel.loss_points.value) == len(run.curves) >= 3
    assert "test AUC" in panel.result.value and "best AMS" in panel.result.value
    assert panel.roc_plot.value[:4] == b"\x89PNG" and panel.progress.value > 0
    # the training report: each tab shows the run's own plot, the KS p-values and ranking above them
    for name, image in panel.report_plots.items():
        assert image.value == (run.fout / "plots" / f"{name}.png").read_bytes(), name
    assert "Kolmogorov-Smirnov" in panel.report_text.value
    assert run.summary["ranking"][0]["feature"] in panel.report_text.value
    assert lab.state.specs is not None and lab.state.specs.events["total"] == 3000
