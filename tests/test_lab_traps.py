"""The Lab without traps (issue 17): the README's call takes params.json and preproc.json from beside
files.txt and says so; weight, identifiers, sentinels, normalisation and split are controls; a leakage check
on the sample warns before training; every cut of an imported preproc is listed (a new branch's too); the
progress bar counts the events the cuts keep; weighted and unweighted AUCs are labelled; construction
errors are one message; the cut builder hints at the usual slips; plots are theme-neutral, integer branches
are binned by integers and the step axis has integer ticks. Headless widgets as in test_widgets_panels.py."""

from __future__ import annotations

import io
import logging
import shutil
import time

import numpy as np
import pytest
from widget_support import dummy_comm  # noqa: F401  (autouse: headless widgets)

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.leakage import (
    AUC_LIMIT,
    check_sample,
    single_feature_auc,
    suspicious_name,
    warn_leakage,
)
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError
from mlaas4hep_lab.params import Params
from mlaas4hep_lab.pipeline import load_inputs
from mlaas4hep_lab.training import evaluation
from mlaas4hep_lab.training.events import MetricEvent
from mlaas4hep_lab.widgets import Lab, histograms, tasks
from mlaas4hep_lab.widgets import preview as cuts
from mlaas4hep_lab.widgets.run import TrainingRun, kept_fraction
from mlaas4hep_lab.widgets.state import LabState


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """What ``mlaas4hep example higgs --out example/higgs`` writes, under a fresh folder."""
    root = tmp_path_factory.mktemp("readme")
    datasets.higgs(root / "example" / "higgs", n_events=3000, seed=3)
    return root


@pytest.fixture(scope="module")
def tth(tmp_path_factory):
    return datasets.tth(tmp_path_factory.mktemp("tth"), n_events=2000, seed=3)


@pytest.fixture
def readme_lab(example, tmp_path, monkeypatch):
    monkeypatch.chdir(example)
    return Lab(files="example/higgs/files.txt", labels="example/higgs/labels.txt", workdir=tmp_path / "w",
               interval=0.05)


def walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


# ----------------------------------------------------------------------------- params.json beside files.txt
def test_the_readme_call_takes_params_json_beside_files_txt_and_says_so(readme_lab):
    state = readme_lab.state
    p = state.params
    assert (p.weight, p.identifier, p.missing_values) == ("Weight", ["EventId"], [-999.0])
    assert p.exclude_branches == ["Weight"] and p.normalization == "standard"
    assert "Weight" not in state.selected() and "EventId" not in state.selected()
    assert state.loaded["params"].name == "params.json"
    notes = readme_lab.notes.value
    assert "params.json loaded from example/higgs/" in notes and "weight Weight" in notes
    assert "missing values -999" in notes and "identifier EventId" in notes
    # the label does not leak: no feature separates the classes alone, none is named like a weight or id
    assert readme_lab.check_leakage() == [] and readme_lab.leakage.layout.display == "none"
    # the branch table leaves the -999 sentinels out of min/max
    assert {r.name: r for r in state.branch_rows()}["DER_mass_MMC"].minimum > -999


def test_a_folder_stands_for_its_files_txt_and_labels_txt(example, tmp_path):
    state = LabState(example / "example" / "higgs", workdir=tmp_path)
    assert state.labels == [1.0, 0.0] and set(state.loaded) == {"params", "labels"}
    assert state.params.weight == "Weight"
    assert "params.json and labels.txt loaded from" in state.notes[0]
    # given explicitly, nothing is looked up
    bare = LabState(example / "example" / "higgs" / "files.txt", [1, 0], params={}, workdir=tmp_path)
    assert bare.loaded == {} and bare.notes == [] and bare.params.weight == ""
    # a folder without params.json says what that means
    copy = tmp_path / "copy"
    shutil.copytree(example / "example" / "higgs", copy)
    (copy / "params.json").unlink()
    plain = LabState(copy / "files.txt", workdir=tmp_path)
    assert "no params.json beside files.txt" in plain.notes[-1] and "Branches tab" in plain.notes[-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no files.txt and no .root files"):
        LabState(tmp_path / "empty", workdir=tmp_path)


def test_data_controls_write_params(readme_lab):
    panel, state = readme_lab.branches, readme_lab.state
    assert panel.weight.value == "Weight" and panel.missing.value == "-999"
    assert panel.normalization.value == "standard" and panel.split.value == "0.64, 0.16, 0.2"
    panel.split.value = "0.7, 0.1, 0.2"
    assert state.params.split == [0.7, 0.1, 0.2]
    panel.split.value = "0.7, 0.5"   # refused with the engine's message; the params stay
    assert "summing to 1" in panel.message.value and state.params.split == [0.7, 0.1, 0.2]
    panel.missing.value = "-999, -1"
    assert state.params.missing_values == [-999.0, -1.0] and panel.message.value == ""
    panel.missing.value = "-999, n/a"
    assert "not a number" in panel.message.value and state.params.missing_values == [-999.0, -1.0]
    panel.normalization.value = "minmax"
    assert state.params.normalization == "minmax"
    panel.weight.value = "(no weight)"
    assert state.params.weight == ""
    panel.weight.value = "PRI_met"
    assert state.params.weight == "PRI_met" and "PRI_met" not in state.selected()
    with pytest.raises(ConfigError, match="not a numeric branch"):
        state.set_weight("Nope")


# ------------------------------------------------------------------------------------------- leakage
@pytest.mark.parametrize("weighted", [False, True])
def test_single_feature_auc_is_the_engines_auc_column_by_column(weighted):
    rng = np.random.default_rng(5)
    n = 2000
    y = rng.integers(0, 2, n)
    X = np.column_stack([rng.normal(size=n) + y, rng.integers(0, 4, n).astype(float),   # ties
                         np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n) - 2 * y),   # NaN left out
                         np.full(n, 3.0)])                                                  # constant
    w = rng.uniform(0.1, 5, n) if weighted else None
    got = single_feature_auc(X, y, w)
    for j in range(X.shape[1]):
        ok = np.isfinite(X[:, j])
        assert got[j] == pytest.approx(evaluation.auc(y[ok], X[ok, j], None if w is None else w[ok]), abs=1e-12)
    assert got[3] == pytest.approx(0.5) and np.isnan(single_feature_auc(X, np.ones(n))).all()


def test_leakage_flags_separating_and_suspiciously_named_features():
    import awkward as ak

    rng = np.random.default_rng(1)
    n = 500
    samples = []
    for label in (1, 0):
        samples.append(ak.Array({
            "pt": rng.normal(50 + 5 * label, 10, n), "Jet_jetId": rng.integers(0, 7, n),
            "mc_truth_flag": np.full(n, float(label)) + rng.normal(0, 0.01, n),   # separates, innocent name
            "isSignal": rng.normal(0, 1, n), "evtWgt": rng.uniform(0.5, 1.5, n),
            "mass": np.where(rng.random(n) < 0.2, -999.0, rng.normal(125, 10, n) - 200 * label),
            "Jet_pt": ak.Array([[30.0, 20.0]] * n)}))
    params = Params(missing_values=[-999.0])
    found = {f.feature: f for f in check_sample(samples, [1, 0], params)}
    assert set(found) == {"mc_truth_flag", "isSignal", "evtWgt", "mass"}
    assert found["mc_truth_flag"].auc > AUC_LIMIT and "alone separates" in found["mc_truth_flag"].message
    assert found["mass"].auc < 1 - AUC_LIMIT          # below 0.02 separates as much as above 0.98
    assert found["isSignal"].named == "label" and not found["isSignal"].separates
    assert found["evtWgt"].named == "weight" and 'params "weight"' in found["evtWgt"].message
    # the weight and identifiers are not features: declared, they are not flagged
    declared = check_sample(samples, [1, 0], params.replace(weight="evtWgt", exclude_branches=["isSignal"]))
    assert {f.feature for f in declared} == {"mc_truth_flag", "mass"} and all(f.weighted for f in declared)
    for name, kind in (("Weight", "weight"), ("EventId", "identifier"), ("label", "label"), ("genWeight", "weight"),
                       ("run", "identifier"), ("Jet_jetId", None), ("Muon_tightId", None), ("PRI_met", None)):
        assert suspicious_name(name) == kind, name


def test_leakage_warning_shows_before_training_and_follows_the_params(example, tmp_path):
    lab = Lab(example / "example" / "higgs" / "files.txt", [1, 0], params={}, workdir=tmp_path)
    findings = {f.feature: f for f in lab.check_leakage()}
    assert set(findings) == {"Weight", "EventId"}
    # the example's weights differ by orders of magnitude between the classes
    assert findings["Weight"].named == "weight" and min(findings["Weight"].auc, 1 - findings["Weight"].auc) < 0.05
    assert "(alone: AUC 0.0" in findings["Weight"].message or "alone separates" in findings["Weight"].message
    assert lab.widget.children.index(lab.leakage) < lab.widget.children.index(lab.tabs)   # above every tab
    assert "Possible leakage: 2 features" in lab.leakage.value and lab.leakage.layout.display == ""
    assert "data-feature='Weight'" in lab.leakage.value
    lab.branches.weight.value = "Weight"          # the weight is not a feature any more
    assert "Weight" not in lab.leakage.value and "EventId" in lab.leakage.value
    lab.branches.identifier.value = "EventId"
    assert lab.leakage.value == "" and lab.leakage.layout.display == "none"


def test_train_logs_the_leakage_it_finds(example, caplog):
    files = example / "example" / "higgs"
    inputs = load_inputs(files / "files.txt", files / "labels.txt", {})
    with caplog.at_level(logging.WARNING, logger="mlaas4hep_lab.data.leakage"):
        found = warn_leakage(inputs)
    assert [f.feature for f in found] == ["Weight", "EventId"]
    assert "possible leakage: Weight" in caplog.text and "AUC 0.0" in caplog.text
    assert warn_leakage(load_inputs(files / "files.txt", files / "labels.txt", files / "params.json")) == []


# ---------------------------------------------------------------------------------------------- cuts
def test_every_cut_of_an_imported_preproc_is_listed(tth, tmp_path):
    lab = Lab(tth.files_txt, tth.labels_txt, workdir=tmp_path)   # preproc.json beside files.txt, loaded
    assert lab.state.loaded["preproc"] == tth.preproc_json
    labels = [i.label for i in cuts.items(lab.state.preproc_dict)]
    assert "cut on new branch Jet_pt_log (cut): Jet_pt_log>3.4 (any)" in labels
    assert len(labels) == 5    # the new branch, its cut, two flat cuts, one jagged cut
    shown = [row.children[1].value for row in lab.cuts.list.children]
    assert any("cut on new branch Jet_pt_log" in text for text in shown)
    # its remove button removes that cut alone; the new branch stays
    row = next(r for r in lab.cuts.list.children if "cut on new branch" in r.children[1].value)
    row.children[0].click()
    entry = lab.state.preproc_dict["new_branch"]["Jet_pt_log"]
    assert "cut" not in entry and entry["def"] == "log(Jet_pt)"
    assert Preproc.from_json(lab.state.preproc_dict).new_branch_kinds() == {"Jet_pt_log": "jagged"}


def test_a_bad_preproc_or_input_is_one_message_at_construction(example, tmp_path, monkeypatch):
    monkeypatch.chdir(example)
    files, labels = "example/higgs/files.txt", "example/higgs/labels.txt"
    with pytest.raises(BranchNotFoundError, match="Nope"):
        LabState(files, labels, preproc={"flat_cut": {"Nope": {"cut": "Nope > 1"}}}, workdir=tmp_path)
    for kwargs, said in (({"preproc": {"flat_cut": {"Nope": {"cut": "Nope > 1"}}}}, "branch 'Nope' not found"),
                         ({"files": "example/missing/files.txt"}, "not found"),
                         ({"preproc": {"flat_cut": {"PRI_met": {"cut": "PRI_met >"}}}}, "syntax error"),
                         ({"labels": [1, 0, 1]}, "3 labels for 2 files")):
        lab = Lab(**{"files": files, "labels": labels, "workdir": tmp_path, **kwargs})
        assert lab.state is None and said in lab.error, lab.error
        shown = [c.value for c in walk(lab.widget) if "m4h-lab-error" in getattr(c, "value", "")]
        assert len(shown) == 1 and "Traceback" not in shown[0] and "m4h-lab" in lab.widget._dom_classes
        assert repr(lab).startswith("Lab(error: ")


def test_the_cut_builder_hints_at_the_usual_slips(readme_lab):
    state = readme_lab.state

    def message(text: str) -> str:
        v = cuts.validate(state, cuts.CutDraft("flat cut", text))
        assert not v.ok
        return v.message

    assert cuts.validate(state, cuts.CutDraft("flat cut", "PRI_met > 20 && PRI_jet_num >= 1")).ok
    assert cuts.validate(state, cuts.CutDraft("flat cut", "!(PRI_met > 20) || PRI_tau_pt < 30")).ok
    assert "ends with an operator" in message("PRI_met > 20 &&")    # typed so far: the compiler says column 1
    assert "write ==" in message("PRI_jet_num = 1")
    assert "write >= and <=" in message("PRI_met => 20")
    assert "lower case" in message("PRI_met > 20 AND PRI_tau_pt < 30")
    assert "where(condition" in message("PRI_met > 20 ? 1 : 0")
    # compiles, but & binds tighter than >: refused on the sample, with the reason
    assert "bind tighter than comparisons" in message("PRI_met > 20 & PRI_tau_pt < 30")
    panel = readme_lab.cuts
    panel.expression.value = "PRI_met > 20 &&"
    assert "hint:" in panel.message.value and panel.add_button.disabled


# ------------------------------------------------------------------------------------ progress, metrics
def test_the_progress_bar_counts_the_events_the_cuts_keep(readme_lab):
    state = readme_lab.state
    pre = Preproc.from_json({"flat_cut": {"PRI_jet_num": {"cut": "PRI_jet_num >= 1"}}})
    specs = compute_specs(state.files, state.params, pre, progress=False)
    read = sum(c["read"] for c in specs.cutflow.values())
    train = sum(v[0] for v in specs.split_events["files"].values())
    assert kept_fraction(specs) == pytest.approx(train / (read * state.params.split[0]))
    assert 0.4 < kept_fraction(specs) < 0.8        # PRI_jet_num >= 1 keeps about 60%
    run = TrainingRun(state, interval=0.01)
    run._kept = kept_fraction(specs)
    expected_by_trainer = int(read * state.params.split[0])      # what the trainer expects: events read
    run.bus.publish(MetricEvent("chunk", events_seen=train // 2, events_total=expected_by_trainer))
    assert run.events_total == round(expected_by_trainer * kept_fraction(specs)) == pytest.approx(train, abs=1)
    run.bus.publish(MetricEvent("end", events_seen=train - 3, events_total=expected_by_trainer, message="done"))
    assert run.events_total == run.events_seen      # done: a full bar
    stopped = TrainingRun(state, interval=0.01)
    stopped.bus.publish(MetricEvent("end", events_seen=10, events_total=1000, message="requested"))
    assert stopped.events_total == 1000             # stopped: the bar shows how far it got


def test_weighted_and_unweighted_test_auc_are_labelled_side_by_side():
    both = tasks.result_html(tasks.summary_of("binary", {"auc": 0.62, "auc_weighted": 0.91, "ams": 1.2}))
    assert "test AUC: weighted <b class='m4h-auc-weighted'>0.9100</b>" in both
    assert "unweighted <b class='m4h-auc-unweighted'>0.6200</b>" in both
    alone = tasks.result_html(tasks.summary_of("binary", {"auc": 0.62}))
    assert "test AUC (unweighted, no weight branch)" in alone
    assert list(tasks.curve_labels({"loss": 1, "val_loss": 2, "val_auc": 3}, True)) == [
        "train loss (weighted)", "validation loss (weighted)", "validation AUC (weighted)"]


# ---------------------------------------------------------------------------------------------- plots
def test_plots_are_transparent_integer_binned_with_integer_step_ticks():
    from PIL import Image

    image = Image.open(io.BytesIO(histograms.curves_png({"train loss": ([1, 2, 3], [0.7, 0.6, 0.5])}, "loss")))
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0     # no background: the theme shows through
    fig = histograms.curves_figure({"train loss": ([1, 2, 3, 4, 5], [0.7, 0.6, 0.5, 0.45, 0.4])}, "loss", "chunk")
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) and np.all(ticks == np.round(ticks))              # no tick at 1.25
    jets = np.array([0, 1, 1, 2, 3, 3, 3, 0, 2])
    assert histograms.integer_edges(jets).tolist() == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert histograms.integer_edges(jets + 0.5) is None and histograms.integer_edges(np.arange(1000.0)) is None
    fig = histograms.distribution_figure(jets, jets[jets > 0], "PRI_jet_num")
    outline = fig.axes[0].patches[0].get_xy()[:, 0]             # the "before" histogram's outline
    assert sorted(set(outline.tolist())) == [-0.5, 0.5, 1.5, 2.5, 3.5]   # one bin per integer
    ticks = fig.axes[0].get_xticks()
    assert np.all(ticks == np.round(ticks))
    assert len(histograms.sparkline(jets)) == 4                # one character per value 0..3


def test_no_field_description_is_cut(readme_lab):
    import ipywidgets as w

    described = [x for x in walk(readme_lab.widget) if getattr(x, "description", "")
                 and not isinstance(x, (w.Button, w.Checkbox)) and x.style.has_trait("description_width")]
    names = {x.description for x in described}
    assert {"preproc.json", "Model name", "Class weights", "Missing values", "Normalisation"} <= names
    assert all(x.style.description_width == "initial" for x in described)


@pytest.mark.slow
def test_the_readme_call_trains_without_the_label_and_says_which_auc(readme_lab):
    panel = readme_lab.training
    panel.model.value = "sklearn"
    panel.epochs.value = 1
    panel.chunk_size.value = 1000
    readme_lab.cuts.expression.value = "PRI_jet_num >= 1"
    assert readme_lab.cuts.add()
    run = panel.start()
    assert run.join(300)
    deadline = time.monotonic() + 10
    while not panel.status.value.startswith("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.status == "done", run.error
    assert "Weight" not in run.result.result.feature_names and "EventId" not in run.result.result.feature_names
    assert run.weighted and "weighted <b" in panel.result.value and "unweighted <b" in panel.result.value
    assert panel.progress.value == panel.progress.max == run.events_seen    # counted after the cut
    assert run.summary["test_auc"] < 0.95                                    # no leak: a plain physics AUC
