"""The Lab's logic without any widget: branch selection -> params, cut validation and preview against the
engine, preproc.json round trip, hub defaults of the Deploy panel, metric events -> plot data, and Stop
ending training within one batch (Keras and torch) on real ROOT files."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dask_support import local_cluster  # noqa: F401  (fixture)

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.training.events import MetricEvent
from mlaas4hep_lab.widgets import preview as cuts
from mlaas4hep_lab.widgets import remote
from mlaas4hep_lab.widgets.run import Curves, Throttle, TrainingRun
from mlaas4hep_lab.widgets.state import LabState, run_on_choices


@pytest.fixture(scope="module")
def higgs(tmp_path_factory):
    return datasets.higgs(tmp_path_factory.mktemp("higgs"), n_events=3000, seed=7)


@pytest.fixture(scope="module")
def tth(tmp_path_factory):
    return datasets.tth(tmp_path_factory.mktemp("tth"), n_events=2000, seed=7)


@pytest.fixture
def state(higgs, tmp_path):
    return LabState(higgs.files_txt, higgs.labels_txt, higgs.params_json, workdir=tmp_path / "work")


# ------------------------------------------------------------------------------------------ branches
def test_widgets_package_is_not_imported_by_the_engine():
    import subprocess

    code = "import mlaas4hep_lab, sys; print('ipywidgets' in sys.modules, 'mlaas4hep_lab.widgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_branch_table_describes_every_numeric_branch(state, higgs):
    rows = {r.name: r for r in state.branch_rows()}
    assert set(rows) == set(datasets._physics.HIGGS_BRANCHES)
    assert rows["PRI_jet_num"].kind == "flat" and rows["PRI_jet_num"].entries == 3000
    jet = np.concatenate([np.asarray(s["PRI_jet_num"]) for s in state.sample])
    assert (rows["PRI_jet_num"].minimum, rows["PRI_jet_num"].maximum) == (jet.min(), jet.max())
    assert rows["PRI_jet_num"].spark and set(rows["PRI_jet_num"].spark) <= set(" ▁▂▃▄▅▆▇█")
    # -999 sentinels (params missing_values) are not a minimum
    assert rows["DER_mass_MMC"].minimum > -999.0
    specs = compute_specs(state.files, state.params, None, progress=False)
    state.set_specs(specs)
    assert {r.name: r.source for r in state.branch_rows()}["DER_mass_MMC"] == "specs"


def test_selecting_branches_changes_params(state):
    everything = len(state.branch_names)
    assert state.summary() == f"{everything - 2} of {everything} branches selected"  # EventId, Weight
    state.set_include("PRI_*")
    assert state.params.selected_branches == ["PRI_*"]
    assert all(b.startswith("PRI_") for b in state.selected())
    state.set_exclude("PRI_jet_*, PRI_met")
    assert state.params.exclude_branches == ["PRI_jet_*", "PRI_met"]
    assert "PRI_met" not in state.selected() and "PRI_jet_num" not in state.selected()
    # ticking a branch that a wildcard excluded keeps the wildcard's other branches excluded
    state.set_checked("PRI_jet_num", True)
    assert "PRI_jet_num" in state.selected() and "PRI_jet_leading_pt" not in state.selected()
    assert "PRI_jet_*" not in state.params.exclude_branches and "PRI_jet_leading_pt" in state.params.exclude_branches
    # ticking a branch outside the selection adds it; unticking excludes it
    state.set_checked("DER_mass_MMC", True)
    assert "DER_mass_MMC" in state.params.selected_branches and "DER_mass_MMC" in state.selected()
    state.set_checked("PRI_tau_pt", False)
    assert "PRI_tau_pt" not in state.selected() and "PRI_tau_pt" in state.params.exclude_branches
    state.set_identifier("EventId")
    assert state.params.identifier == ["EventId"]
    # a pattern that matches nothing is refused with the engine's message; params stay as they were
    before = state.params
    with pytest.raises(KeyError, match="PRJ_"):
        state.set_include("PRJ_*")
    assert state.params is before
    assert state.filter_names("jet_num") == ["PRI_jet_num"]
    assert state.filter_names("der_mass_*") == [n for n in state.branch_names if n.startswith("DER_mass_")]


def test_selection_is_what_the_engine_trains_on(state):
    from mlaas4hep_lab.data.plan import make_plan
    from mlaas4hep_lab.data.reader import TreeReader

    state.set_include("PRI_*, DER_mass_*")
    state.set_checked("PRI_met_phi", False)
    with TreeReader(state.files[0]) as reader:
        plan = make_plan(reader, state.inputs().params, None)
    assert sorted(plan.flat) == sorted(state.selected())


# ------------------------------------------------------------------------------------------ cuts
def test_invalid_expression_gives_the_compiler_message(state):
    bad = cuts.validate(state, cuts.CutDraft("flat cut", "PRI_met > > 3"))
    assert not bad.ok and "syntax error" in bad.message and "column" in bad.message
    unknown = cuts.validate(state, cuts.CutDraft("flat cut", "PRI_mett > 3"))
    assert not unknown.ok and "PRI_mett" in unknown.message and "PRI_met" in unknown.message
    unsafe = cuts.validate(state, cuts.CutDraft("flat cut", "__import__('os').system('true')"))
    assert not unsafe.ok and "invalid expression" in unsafe.message
    ok = cuts.validate(state, cuts.CutDraft("flat cut", "PRI_jet_num >= 1"))
    assert ok.ok and ok.message == "ok: flat cut on PRI_jet_num"
    assert ok.preproc == {"flat_cut": {"PRI_jet_num": {"cut": "PRI_jet_num >= 1", "remove": False}}}


def test_jagged_cuts_and_new_branches_on_tth(tth, tmp_path):
    # preproc={}: without cuts (None would take the example's preproc.json beside files.txt)
    state = LabState(tth.files_txt, tth.labels_txt, tth.params_json, preproc={}, workdir=tmp_path)
    jagged = [n for n, k in state.kinds.items() if k == "jagged"]
    pt = next(n for n in jagged if n.endswith("_pt") and n.startswith("Jet"))
    # a per-event cut on a list is refused with the engine's hint
    flat_on_list = cuts.validate(state, cuts.CutDraft("flat cut", f"{pt} > 30"))
    assert not flat_on_list.ok
    v = cuts.validate(state, cuts.CutDraft("jagged cut", f"{pt} > 40", mode="all"))
    assert v.ok and v.preproc["jagged_cut"][pt]["cut"] == [f"{pt} > 40", "all"]
    nb = cuts.validate(state, cuts.CutDraft("new branch", f"sum({pt} > 30)", name="n_hard_jets"))
    assert nb.ok and nb.preproc["new_branch"]["n_hard_jets"]["type"] == "flat"
    wrong = cuts.validate(state, cuts.CutDraft("new branch", f"log({pt})", name="lpt", branch_type="flat"))
    assert not wrong.ok and "declared flat" in wrong.message
    state.set_preproc(nb.preproc)
    v2 = cuts.validate(state, cuts.CutDraft("flat cut", "n_hard_jets >= 2"))
    assert v2.ok and v2.preproc["flat_cut"]["n_hard_jets"]["cut"] == "n_hard_jets >= 2"
    state.set_preproc(v2.preproc)
    again = cuts.validate(state, cuts.CutDraft("flat cut", "n_hard_jets <= 6"))
    assert again.preproc["flat_cut"]["n_hard_jets"]["cut_2"] == "n_hard_jets <= 6"
    state.set_preproc(again.preproc)
    listed = cuts.items(state.preproc_dict)
    assert [i.section for i in listed] == ["new_branch", "flat_cut", "flat_cut"]
    state.set_preproc(cuts.remove_item(state.preproc_dict, listed[1]))
    assert state.preproc_dict["flat_cut"]["n_hard_jets"] == {"cut_2": "n_hard_jets <= 6", "remove": False}
    shown = cuts.preview(state, variable="n_hard_jets")
    assert not shown.error and shown.variable == "n_hard_jets"
    assert len(shown.after) == sum(r["passed"] for r in shown.rows)


def test_preview_pass_fraction_equals_the_engine(state):
    """On a sample that holds every event, the preview's counts are the specs pass's events per file; on
    any sample they are Preproc.apply's."""
    draft = cuts.CutDraft("flat cut", "PRI_jet_num >= 1")
    v = cuts.validate(state, draft)
    shown = cuts.preview(state, v.preproc, v.variable)
    assert [r["events"] for r in shown.rows] == state.entries   # sample_size 2000 > entries per file
    specs = compute_specs(state.files, state.params, Preproc.from_json(v.preproc), progress=False)
    assert [r["passed"] for r in shown.rows] == [specs.events[f] for f in state.files]
    engine = Preproc.from_json(v.preproc)
    for row, events in zip(shown.rows, state.sample):
        _, keep = engine.apply(events)
        assert row["passed"] == int(keep.sum())
        assert row["fraction"] == keep.mean()
        assert row["passed"] == int((np.asarray(events["PRI_jet_num"]) >= 1).sum())
    assert specs.events["total"] == sum(r["passed"] for r in shown.rows)
    assert len(shown.before) == sum(state.entries) and len(shown.after) == specs.events["total"]
    assert "<table" in shown.table_html()


def test_preproc_json_import_and_export(state, tth, tmp_path):
    v = cuts.validate(state, cuts.CutDraft("new branch", "log(PRI_met + 1)", name="log_met"))
    state.set_preproc(v.preproc)
    path = state.export_preproc(tmp_path / "preproc.json")
    assert Preproc.from_json(path) == Preproc.from_json(v.preproc)
    other = LabState(tth.files_txt, tth.labels_txt, tth.params_json, workdir=tmp_path)
    other.import_preproc(tth.preproc_json)
    assert Preproc.from_json(other.preproc_dict) == Preproc.from_json(tth.preproc_json)
    with pytest.raises(KeyError, match="Jet_pt"):  # ttH cuts name branches the Higgs files lack
        state.import_preproc(tth.preproc_json)


# ------------------------------------------------------------------------------------------ deploy defaults
def test_service_defaults_inside_a_hub():
    env = {"JUPYTERHUB_API_TOKEN": "hub-tok", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:45123/user/alice/",
           "JUPYTERHUB_BASE_URL": "/"}
    assert remote.default_service_url(env) == "http://127.0.0.1:45123/services/tfaas/"
    assert remote.default_credentials(env) == ("hub-tok", "token")
    env["JUPYTERHUB_PUBLIC_HUB_URL"] = "https://hub.example.org/prefix/hub/"
    env["JUPYTERHUB_BASE_URL"] = "/prefix/"
    assert remote.default_service_url(env) == "https://hub.example.org/prefix/services/tfaas/"
    env["MLAAS4HEP_SERVICE_URL"] = "http://127.0.0.1:8083"
    env["MLAAS4HEP_TOKEN"] = "mine"
    assert remote.default_service_url(env) == "http://127.0.0.1:8083"
    assert remote.default_credentials(env) == ("mine", "Bearer")
    assert remote.default_service_url({}) == "" and remote.default_credentials({}) == ("", "Bearer")


# ------------------------------------------------------------------------------------------ training
def test_metric_events_update_the_plot_data():
    calls = []
    run_curves = Curves()
    throttle = Throttle(lambda: calls.append(time.monotonic()), interval=0.3)
    for i in range(20):   # a burst: one immediate call, the rest folded into one delayed call
        run_curves.add({"loss": 1.0 / (i + 1), "val_loss": 1.2 / (i + 1)})
        throttle()
    assert len(calls) == 1
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.25
    assert run_curves.series("loss")["loss"][1][-1] == pytest.approx(0.05)
    throttle.flush()
    assert len(calls) == 3


def test_training_run_collects_curves_from_the_trainer_events(state):
    run = TrainingRun(state, interval=0.2)
    seen = []
    run.on_update(lambda: seen.append(len(run.curves)))
    events = [MetricEvent("start"),
              MetricEvent("chunk", chunk=0, events_seen=100, events_total=300, metrics={"loss": 0.7, "auc": 0.6}),
              MetricEvent("chunk", chunk=1, events_seen=200, events_total=300,
                          metrics={"loss": 0.6, "val_loss": 0.65, "auc": 0.7, "val_auc": 0.68}),
              MetricEvent("epoch", events_seen=200, metrics={"loss": 0.6})]   # repeats the last chunk
    for e in events:
        run.bus.publish(e)
    assert len(run.curves) == 2 and run.events_seen == 200 and run.events_total == 300
    run.bus.publish(MetricEvent("end", events_seen=200, metrics={"auc": 0.7}, message="done"))
    assert run.events_total == 200   # at the end the bar is full: the cuts kept fewer events than expected
    assert run.curves.values["loss"] == [0.7, 0.6]
    assert np.isnan(run.curves.values["val_loss"][0]) and run.curves.values["val_auc"][1] == 0.68
    assert seen and seen[-1] == 2   # the end event always reaches the views


STOP_TORCH = '''
import time
import torch
from torch import nn


TRAIN_CALLS = []    # time of every training forward pass (one per batch)


class Net(nn.Module):
    def __init__(self, idim):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        if self.training:
            TRAIN_CALLS.append(time.monotonic())
        return self.body(x)


def model(idim):
    return Net(idim)
'''

STOP_KERAS = '''
import time
import keras


TRAIN_CALLS = []    # time of every training batch


class Batches(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        TRAIN_CALLS.append(time.monotonic())


fit_options = {"callbacks": [Batches()]}


def model(idim):
    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m
'''


def _batch_times(model: Path) -> list[float]:
    """TRAIN_CALLS of the model.py the trainer imported (found by its file, once imported)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(model):
            return getattr(module, "TRAIN_CALLS", [])   # registered before its code has run
    return []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_stop_stops_training_within_one_batch(state, tmp_path, backend):
    model = tmp_path / "model.py"
    model.write_text(STOP_TORCH if backend == "torch" else STOP_KERAS)
    state.model = str(model)
    # 4 chunks of ~750 events, 600 epochs per chunk in batches of 8: each chunk is minutes of batches
    state.params = state.params.replace(chunk_size=750, epochs=600, batch_size=8, training="per_chunk")
    run = TrainingRun(state, interval=0.1)
    run.start()
    deadline = time.monotonic() + 240
    while len(_batch_times(model)) < 20 and run.status == "running" and time.monotonic() < deadline:
        time.sleep(0.02)   # until the first chunk's batches are under way
    assert run.status == "running", run.error
    t_stop = time.monotonic()
    run.stop()
    assert run.status == "stopping"
    assert run.join(240), "training did not end after Stop"
    assert run.status == "stopped", run.error
    times = np.asarray(_batch_times(model))
    after = np.count_nonzero(times >= t_stop)
    assert np.count_nonzero(times < t_stop) >= 20
    assert after <= 1, f"{after} batches started after Stop"
    assert len(run.curves) == 0                       # the first chunk never finished
    assert run.result.result.stopped == "requested"
    assert Path(run.summary["bundle"], "manifest.json").is_file()   # a stopped model is still bundled


@pytest.mark.slow
def test_a_short_training_gives_curves_roc_ams_and_a_bundle(state):
    state.model = "sklearn"
    state.params = state.params.replace(chunk_size=1000, epochs=1)
    run = TrainingRun(state, interval=0.1)
    updates = []
    run.on_update(lambda: updates.append((run.status, len(run.curves))))
    run.start()
    assert run.join(300)
    assert run.status == "done", run.error
    assert len(run.curves) >= 1 and run.roc is not None
    assert 0.5 < run.summary["test_auc"] <= 1.0 and run.summary["ams"] > 0
    assert state.bundle == Path(run.summary["bundle"]) and (state.bundle / "manifest.json").is_file()
    assert json.loads((state.workdir / "specs.json").read_text())["features"]
    assert updates[0][0] == "running" and updates[-1][0] == "done"


# ------------------------------------------------------------------------------------ where training runs
def test_run_on_offers_dask_gateway_only_where_the_hub_set_it(state, monkeypatch):
    assert run_on_choices({}, cpus=2) == {"this kernel": None, "local cluster (2 workers)": "local:2"}
    assert run_on_choices({"DASK_GATEWAY__ADDRESS": " "}, cpus=1) == {"this kernel": None,
                                                                      "local cluster (1 worker)": "local:1"}
    hub = run_on_choices({"DASK_GATEWAY__ADDRESS": "http://127.0.0.1:8085/services/dask-gateway"}, cpus=2)
    assert list(hub)[-1] == "Dask Gateway" and hub["Dask Gateway"] == "gateway"
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS", raising=False)
    changes = []
    state.on("dask", lambda: changes.append(state.dask))
    assert state.dask is None and state.run_on() == "this kernel"
    local = [label for label in state.run_on_options() if label.startswith("local cluster")]
    assert len(local) == 1 and "Dask Gateway" not in state.run_on_options()
    state.set_run_on(local[0])
    assert state.dask == f"local:{os.cpu_count()}" and state.run_on() == local[0] and changes == [state.dask]
    with pytest.raises(ConfigError, match="choose one of this kernel, local cluster"):
        state.set_run_on("Dask Gateway")     # not on the hub
    with pytest.raises(ConfigError, match="not understood"):
        state.set_dask("gatway")
    assert state.dask == f"local:{os.cpu_count()}"   # a refused value changes nothing
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", "http://127.0.0.1:8085/services/dask-gateway")
    state.set_run_on("Dask Gateway")
    assert state.dask == "gateway"
    state.set_dask("tcp://127.0.0.1:8786")   # an address given in code is offered as it is
    assert state.run_on() == "tcp://127.0.0.1:8786" and "tcp://127.0.0.1:8786" in state.run_on_options()
    state.set_dask(None)
    assert state.run_on() == "this kernel"


@pytest.mark.slow
def test_a_run_on_a_local_cluster_links_its_dashboard_and_closes_it_at_the_end(state):
    state.model = "sklearn"
    state.params = state.params.replace(chunk_size=1000, epochs=1)
    state.set_dask("local:1")
    run = TrainingRun(state, interval=0.1)
    seen = []
    run.on_update(lambda: seen.append((run.cluster_state, run.cluster)))
    run.start()
    assert run.join(300)
    assert run.status == "done", run.error
    states = [s for s, _ in seen]
    assert "starting" in states and "open" in states and states.index("starting") < states.index("open")
    assert run.cluster_state == "closed" and run.cluster is None and run.workers == 1
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/status", run.dashboard_link), run.dashboard_link
    opened = next(c for _, c in seen if c is not None)
    assert opened.owned is False and opened.client.status == "closed"   # closed with the run
    assert opened.cluster.status.name == "closed"                        # and its LocalCluster with it


@pytest.mark.slow
def test_a_run_on_a_given_cluster_leaves_it_open_and_stop_ends_it(state, local_cluster):  # noqa: F811
    state.model = "sklearn"
    state.params = state.params.replace(chunk_size=1000, epochs=1)
    run = TrainingRun(state, interval=0.1, dask=local_cluster)
    run.start()
    assert run.join(300) and run.status == "done", run.error
    assert run.cluster_state == "closed" and run.dashboard_link == local_cluster.dashboard_link
    assert local_cluster.client.status == "running" and local_cluster.n_workers == 2   # not ours to close
    stopped = TrainingRun(state, interval=0.1, dask=local_cluster)
    stopped.start()
    stopped.stop()
    assert stopped.join(120) and stopped.status == "stopped", stopped.error
    assert stopped.cluster_state == "closed" and stopped.result is None
    assert local_cluster.client.status == "running"


def test_a_cluster_that_cannot_start_fails_the_run_with_the_reason(state):
    import dask

    assert dask.config.get("gateway.address", None) is None   # not on a hub: no gateway to ask
    state.set_dask("gateway")
    run = TrainingRun(state, interval=0.1)
    run.start()
    assert run.join(120) and run.status == "failed"
    assert "DASK_GATEWAY__ADDRESS" in run.error and run.cluster_state == "" and run.result is None
