"""Validation before training: labels, duplicate files, events after cuts, classes per split, NaN/inf.

Every refusal goes through the real command (``cli.main``) on ROOT files written here, and must end with
exit code 2, a one-line ``error:`` message and no bundle; the Lab and the jobs service get the same rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TOY_BKG_ID0, TOY_BKG_N, TOY_SIG_N

from mlaas4hep_lab import cli
from mlaas4hep_lab.data.specs import load_specs
from mlaas4hep_lab.data.stream import split_of
from mlaas4hep_lab.data.validation import check_labels
from mlaas4hep_lab.errors import LabelsError, MissingClassError, NoEventsError
from mlaas4hep_lab.params import load_params
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.model_file import template_path


def run_main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc, err, *needles) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.py"
    shutil.copy(template_path("sklearn"), path)
    return path


def workflow(toy, model, fout, files=None, labels=None, params=None, preproc=None, original=False):
    argv = [f"--files={files or toy.files_txt}", f"--labels={labels or toy.labels_txt}",
            f"--params={params or toy.params_json}", f"--model={model}", f"--fout={fout}"]
    if preproc is not None:
        argv.append(f"--preproc={preproc}")
    return argv if original else ["workflow", *argv]


def assert_no_bundle(fout):
    assert not (fout / "bundle").exists() and not (fout / "bundle.tar.gz").exists()
    assert not (fout / "metrics.json").exists()


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


# -- labels --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("original", [False, True], ids=["workflow", "original-form"])
def test_label_2_among_0_and_1_is_refused_naming_line_file_and_value(toy_copy, tmp_path, model, capsys,
                                                                      original):
    third = shutil.copy(toy_copy.bkg, toy_copy.dir / "other.root")
    files = tmp_path / "files.txt"
    files.write_text(f"{toy_copy.sig}\n{toy_copy.bkg}\n{third}\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("# signal first\n2\n0\n1\n")
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_copy, model, fout, files, labels, original=original), capsys)
    one_line_error(rc, err, str(labels), "line 2 (for sig.root): 2 is not a label of the binary task",
                   "1 (signal), 0 (background)", '"task": "multiclass"')
    assert not fout.exists()   # refused before the specs pass


@pytest.mark.parametrize("value", ["0.7", "-1", "nan", "signal"])
def test_other_labels_are_refused(toy_data, tmp_path, model, capsys, value):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"1\n{value}\n")
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, labels=labels), capsys)
    one_line_error(rc, err, f"line 2 (for bkg.root): {value} is not", str(labels))
    assert not fout.exists()


def test_accepted_spellings_of_binary_labels(toy_data, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("1.0\nFalse\n")
    assert load_inputs(toy_data.files_txt, labels, toy_data.params_json).labels == [1.0, 0.0]
    assert check_labels([True, 0, "true", "-0", 1e0]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert load_inputs(toy_data.files, [1, 0], toy_data.params_json).labels == [1.0, 0.0]
    with pytest.raises(LabelsError, match=r"label 1 \(for sig.root\): 3 is not a label"):
        load_inputs(toy_data.files, [3, 0], toy_data.params_json)


def test_jobs_service_applies_the_same_label_rule():
    from mlaas4hep_lab.jobs.schemas import SubmitRequest
    from mlaas4hep_lab.jobs.submission import Invalid, check_submission

    for labels, needle in (([2, 0], "label 1: 2 is not a label of the binary task"),
                           ("1\n0.7\n", "label 2: 0.7 is not a label of the binary task")):
        request = SubmitRequest(files=["a.root", "b.root"], labels=labels, model="sklearn")
        with pytest.raises(Invalid, match=needle) as caught:
            check_submission(request, roots=())
        assert caught.value.status == 422 and "multiclass" in str(caught.value)


def test_evaluation_refuses_labels_other_than_0_and_1():
    from mlaas4hep_lab.training import evaluation as ev

    assert ev.auc([True, False, True], [0.9, 0.1, 0.8]) == 1.0
    with pytest.raises(ValueError, match=r"1 \(signal\) or 0 \(background\); 1 of 3 labels are not, e.g. 0.7"):
        ev.auc([1, 0.7, 0], [0.9, 0.5, 0.1])


# -- files listed twice --------------------------------------------------------------------------------
def test_the_same_file_through_two_spellings_is_refused_naming_both_lines(toy_copy, tmp_path, model, capsys):
    (toy_copy.dir / "sub").mkdir()
    (toy_copy.dir / "alias.root").symlink_to(toy_copy.sig)
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n0\n0\n")
    for spelling in ("sub/../sig.root", "alias.root"):
        files = toy_copy.dir / "files.txt"
        files.write_text(f"sig.root\n# background\nbkg.root\n{spelling}\n")
        fout = tmp_path / "out"
        rc, out, err = run_main(workflow(toy_copy, model, fout, files, labels), capsys)
        one_line_error(rc, err, str(files), "lines 1 and 4 name the same file", spelling,
                       "once with label 1 and once with label 0", "List each file once")
        assert not fout.exists()


# -- events after cuts ---------------------------------------------------------------------------------
def test_a_cut_removing_every_event_names_the_cut_and_the_counts_per_file(toy_data, tmp_path, model, capsys):
    preproc = write_json(tmp_path / "preproc.json", {
        "flat_cut": {"f_float32": {"cut": "f_float32 > 1e9"}},
        "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt > 0", "all"]}},
    })
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, preproc=preproc), capsys)
    line = one_line_error(rc, err, "no event is left after the cuts",
                          f"sig.root: {TOY_SIG_N:,} read", f"bkg.root: {TOY_BKG_N:,} read",
                          "flat_cut.f_float32.cut 'f_float32 > 1e9' keeps 0",
                          f"jagged_cut.Jet_pt.cut 'Jet_pt > 0' (all) keeps {TOY_SIG_N:,}", "Loosen the cut")
    assert "all cuts keep 0" in line
    assert_no_bundle(fout)
    specs = json.loads((fout / "specs.json").read_text())   # saved first: its counts explain the refusal
    assert specs["events"]["total"] == 0
    assert [flow["read"] for flow in specs["cutflow"].values()] == [TOY_SIG_N, TOY_BKG_N]
    assert [flow["cuts"]["flat_cut.f_float32.cut"] for flow in specs["cutflow"].values()] == [0, 0]


def test_a_cut_removing_all_signal_is_refused(toy_data, tmp_path, model, capsys):
    preproc = write_json(tmp_path / "preproc.json",
                         {"flat_cut": {"EventId": {"cut": f"EventId >= {TOY_BKG_ID0}"}}})
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, preproc=preproc), capsys)
    line = one_line_error(rc, err, "no signal (label 1) event is left after the cuts",
                          f"sig.root: {TOY_SIG_N:,} read, flat_cut.EventId.cut 'EventId >= {TOY_BKG_ID0}' keeps 0")
    assert "bkg.root" not in line   # only the files of the class that is missing
    assert_no_bundle(fout)


def test_only_signal_files_are_refused(toy_data, tmp_path, model, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n1\n")
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, labels=labels), capsys)
    one_line_error(rc, err, "no file has background (label 0)", "the labels given are 1")
    assert_no_bundle(fout)


def tiny_files(toy_write_tree, tmp_path):
    """50 signal and 5 background events, and a seed that leaves the background out of the test split
    only (found with the stream's own split rule, so the files stay small)."""
    rng = np.random.default_rng(3)
    sig = toy_write_tree({"x": rng.normal(1, 1, 50), "y": rng.normal(0, 1, 50)}, name="tiny_sig.root")
    bkg = toy_write_tree({"x": rng.normal(0, 1, 5), "y": rng.normal(0, 1, 5)}, name="tiny_bkg.root")
    fractions = load_params({}).split

    def counts(path, n, seed):
        return np.bincount(split_of(str(path), np.arange(n), fractions, seed), minlength=3)

    good = next(s for s in range(1000) if counts(bkg, 5, s).all() and counts(sig, 50, s).all())
    bad = next(s for s in range(1000) if counts(bkg, 5, s)[2] == 0 and counts(bkg, 5, s)[:2].all()
               and counts(sig, 50, s).all())
    (tmp_path / "files.txt").write_text(f"{sig}\n{bkg}\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    return tmp_path / "files.txt", tmp_path / "labels.txt", good, bad, counts(bkg, 5, bad)


def test_a_test_split_without_background_is_refused(toy_write_tree, tmp_path, model, capsys):
    files, labels, good, bad, per_split = tiny_files(toy_write_tree, tmp_path)
    params = write_json(tmp_path / "params.json", {"seed": bad, "verbose": 0})
    fout = tmp_path / "out"
    argv = ["workflow", f"--files={files}", f"--labels={labels}", f"--params={params}", f"--model={model}",
            f"--fout={fout}"]
    rc, out, err = run_main(argv, capsys)
    one_line_error(rc, err, "the test split has no background (label 0) events",
                   f"keep 5 events, {per_split[0]} train, {per_split[1]} validation, 0 test",
                   f"seed {bad}", "change params 'split' or 'seed'")
    assert_no_bundle(fout)
    # the specs counted the splits for this seed; another seed counts them again (the specs are reused)
    counted = load_specs(fout / "specs.json").split_events
    assert counted["seed"] == bad and list(counted["files"].values())[1] == per_split.tolist()
    write_json(params, {"seed": good, "verbose": 0})
    rc, out, err = run_main([*argv, "--dry-run"], capsys)
    assert rc == 0, err
    write_json(params, {"seed": bad, "verbose": 0})
    inputs = load_inputs(files, labels, params)
    specs = load_specs(fout / "specs.json")
    specs.split_events, specs.cutflow = {}, {}       # as an older specs file has them: counted again
    from mlaas4hep_lab.data.validation import check_training_data

    with pytest.raises(MissingClassError, match="the test split has no background"):
        check_training_data(inputs, specs)
    assert specs.split_events["seed"] == bad


# -- NaN and inf made by expressions ----------------------------------------------------------------------
def test_some_non_finite_values_give_a_warning_with_counts_in_specs(toy_data, tmp_path, model):
    preproc = write_json(tmp_path / "preproc.json",
                         {"new_branch": {"log_x": {"def": "log(f_float32)", "type": "flat"}}})
    fout = tmp_path / "out"
    # a real process: the warning must reach the terminal as the command sets up logging
    proc = subprocess.run([sys.executable, "-m", "mlaas4hep_lab.cli",
                           *workflow(toy_data, model, fout, preproc=preproc), "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    want = {name: int(np.count_nonzero(toy_data.raw[name]["f_float32"] < 0)) for name in ("sig", "bkg")}
    assert all(want.values())
    nonfinite = json.loads((fout / "specs.json").read_text())["nonfinite"]
    assert list(nonfinite) == ["log_x"]
    entry = nonfinite["log_x"]
    assert (entry["nan"], entry["inf"], entry["values"]) == (sum(want.values()), 0, TOY_SIG_N + TOY_BKG_N)
    per_file = {name.split("/")[-1]: counts for name, counts in entry["files"].items()}
    assert per_file == {"sig.root": {"values": TOY_SIG_N, "nan": want["sig"], "inf": 0},
                        "bkg.root": {"values": TOY_BKG_N, "nan": want["bkg"], "inf": 0}}
    warning = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1, err
    for needle in ("new branch 'log_x' = 'log(f_float32)'", f"{sum(want.values()):,} NaN",
                   f"sig.root: {want['sig']:,} NaN of {TOY_SIG_N:,}", f"bkg.root: {want['bkg']:,} NaN of {TOY_BKG_N:,}"):
        assert needle in warning[0], (needle, warning[0])
    assert_no_bundle(fout)


def test_a_feature_that_is_never_finite_is_refused(toy_data, tmp_path, model, capsys):
    preproc = write_json(tmp_path / "preproc.json",
                         {"new_branch": {"log_x": {"def": "log(f_float32 - 1000)", "type": "flat"}}})
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, preproc=preproc), capsys)
    one_line_error(rc, err, "new branch 'log_x' = 'log(f_float32 - 1000)' is NaN or inf in all "
                   f"{TOY_SIG_N + TOY_BKG_N:,} of its values", f"sig.root: {TOY_SIG_N:,} NaN of {TOY_SIG_N:,}",
                   "new_branch.log_x.def")
    assert_no_bundle(fout)


def test_a_feature_never_finite_in_one_class_is_refused(toy_data, tmp_path, model, capsys):
    # signal ids are below 2,000,000 and background ids above: NaN for every signal event only
    preproc = write_json(tmp_path / "preproc.json", {"new_branch": {
        "leak": {"def": f"sqrt(EventId - {TOY_BKG_ID0})", "type": "flat"}}})
    fout = tmp_path / "out"
    rc, out, err = run_main(workflow(toy_data, model, fout, preproc=preproc), capsys)
    one_line_error(rc, err, "new branch 'leak'", "NaN or inf in every signal (label 1) event",
                   "tell the classes apart")
    assert_no_bundle(fout)


def test_specs_files_without_the_new_counts_are_still_read(toy_data, tmp_path):
    inputs = load_inputs(toy_data.files_txt, toy_data.labels_txt, toy_data.params_json)
    path = tmp_path / "specs.json"
    ensure_specs(inputs, path, progress=False)
    data = json.loads(path.read_text())
    for key in ("cutflow", "split_events", "nonfinite"):
        data.pop(key)
    write_json(path, data)
    specs = ensure_specs(inputs, path)
    from mlaas4hep_lab.data.validation import check_training_data

    check_training_data(inputs, specs)     # counted again: nothing to refuse in the toy data
    assert sum(sum(v) for v in specs.split_events["files"].values()) == TOY_SIG_N + TOY_BKG_N


# -- the Lab gets the same exceptions --------------------------------------------------------------------
def test_the_lab_gets_the_same_errors(toy_data, tmp_path):
    from mlaas4hep_lab.widgets.run import TrainingRun
    from mlaas4hep_lab.widgets.state import LabState

    with pytest.raises(LabelsError, match=r"label 1 \(for sig.root\): 2 is not a label"):
        LabState(toy_data.files, [2, 0], toy_data.params_json, workdir=tmp_path)
    state = LabState(toy_data.files, [1, 0], toy_data.params_json, model="sklearn", workdir=tmp_path,
                     preproc={"flat_cut": {"f_float32": {"cut": "f_float32 > 1e9"}}}, sample_size=100)
    run = TrainingRun(state, interval=0.05)
    run.start()
    assert run.join(timeout=120)
    assert run.status == "failed" and run.error.startswith(f"{NoEventsError.__name__}: no event is left")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("bundle"))
