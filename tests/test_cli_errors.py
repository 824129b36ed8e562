"""The typical mistakes a physicist makes with ``mlaas4hep``, each ending as one line on stderr and a
non-zero status (no Python traceback unless ``--traceback`` asks for it), and ``predict --tree`` reading
a tree at another path or an RNTuple of another name."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
from conftest import TOY_JAGGED, toy_write

from mlaas4hep_lab import cli
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.workflow import train

XGB_SMALL = "import xgboost\n\n\ndef model():\n    return xgboost.XGBClassifier(n_estimators=5, max_depth=2)\n"

KERAS_WRONG_WIDTH = '''import keras


def model(idim):
    inputs = keras.Input(shape=(25,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    out = keras.layers.Dense(1, activation="sigmoid")(hidden)
    m = keras.Model(inputs, out)
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m
'''

TORCH_WRONG_WIDTH_MODULE = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(25, 1)

    def forward(self, x):
        return torch.sigmoid(self.first(x))


def model(idim):
    return Net()
'''

TORCH_WRONG_WIDTH_SEQUENTIAL = '''from torch import nn


def model(idim):
    # the width of the Higgs example, not of these data
    return nn.Sequential(nn.Linear(25, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
'''

TORCH_LOSS_FAILS_IN_TRAINING = '''from torch import nn


def model(idim):
    return nn.Sequential(nn.Linear(idim, 8), nn.ReLU(), nn.Linear(8, 1))


def loss(output, target):
    per_event = (output.reshape(-1) - target) ** 2
    return per_event.sum(dim=3)  # a dimension the output does not have
'''


def run_main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_short_error(rc, err, *needles, lines=1, status=2):
    """Exit ``status``, at most ``lines`` lines on stderr, the first an ``error: `` line holding every needle."""
    assert rc == status, err
    shown = err.strip().splitlines()
    assert 1 <= len(shown) <= lines and shown[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in shown[0], (needle, shown[0])
    return shown[0]


def workflow(toy, tmp_path, *extra, params=None, labels=None, preproc=None, files=None, fout=None):
    argv = ["workflow", f"--files={files or toy.files_txt}", f"--labels={labels or toy.labels_txt}",
            f"--params={params or toy.params_json}", f"--fout={fout or tmp_path / 'out'}", *extra]
    return argv + ([f"--preproc={preproc}"] if preproc else [])


def params_with(toy, tmp_path, **changes) -> Path:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(json.loads(toy.params_json.read_text()) | changes))
    return path


def write(tmp_path, name, text) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- input files, params, preproc ---------------------------------------------------------------------
def test_missing_root_file(toy_copy, tmp_path, capsys):
    toy_copy.files_txt.write_text("sig.root\nnot_there.root\n")
    rc, _, err = run_main(workflow(toy_copy, tmp_path, "--dry-run"), capsys)
    assert_short_error(rc, err, str(toy_copy.dir / "not_there.root"), "not found")


def test_missing_files_txt(toy_data, tmp_path, capsys):
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", files=tmp_path / "files.txt"), capsys)
    assert_short_error(rc, err, str(tmp_path / "files.txt"))


def test_missing_tree_lists_the_trees_closest_first(toy_data, tmp_path, capsys):
    params = params_with(toy_data, tmp_path, branch="event")
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", params=params), capsys)
    assert_short_error(rc, err, "tree 'event' not found", "did you mean 'events'", "Trees in the file: events")


def test_missing_branch(toy_data, tmp_path, capsys):
    params = params_with(toy_data, tmp_path, selected_branches=["MET", "Jet_ptt"])
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", params=params), capsys)
    assert_short_error(rc, err, "'Jet_ptt'", "did you mean 'Jet_pt'")


@pytest.mark.parametrize("name", ["params", "preproc"])
def test_malformed_json(toy_data, tmp_path, capsys, name):
    bad = write(tmp_path, f"{name}.json", '{"nevts": -1,\n "chunk_size": 1000\n "epochs": 5}\n')
    argv = workflow(toy_data, tmp_path, "--dry-run", **{name: bad})
    rc, _, err = run_main(argv, capsys)
    assert_short_error(rc, err, str(bad), "line 3")


def test_bad_expression_shows_where_in_a_few_lines(toy_data, tmp_path, capsys):
    preproc = write(tmp_path, "preproc.json", json.dumps(
        {"new_branch": {"ratio": {"def": "MET +* Jet_pt", "type": "jagged"}}}))
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", preproc=preproc), capsys)
    first = assert_short_error(rc, err, "'MET +* Jet_pt'", "column", lines=3)
    assert str(preproc) in first or "preproc" in first


def test_labels_and_files_count_mismatch(toy_data, tmp_path, capsys):
    labels = write(tmp_path, "labels.txt", "1\n0\n0\n")
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", labels=labels), capsys)
    assert_short_error(rc, err, "3 labels for 2 files")


def test_output_folder_under_a_file_is_an_os_error_line(toy_data, tmp_path, capsys):
    rc, _, err = run_main(workflow(toy_data, tmp_path, "--dry-run", fout=f"{toy_data.params_json}/out"), capsys)
    assert_short_error(rc, err, str(toy_data.params_json))


# -- model.py -----------------------------------------------------------------------------------------
def test_model_syntax_error_is_reported_before_the_specs_pass(toy_data, tmp_path, capsys):
    model = write(tmp_path, "model.py", "def model(idim)\n    return None\n")
    rc, out, err = run_main(workflow(toy_data, tmp_path, f"--model={model}"), capsys)
    assert_short_error(rc, err, str(model), "syntax error at line 1")
    assert not (tmp_path / "out").exists() and "specs:" not in out  # nothing computed first


def test_missing_model_file(toy_data, tmp_path, capsys):
    rc, _, err = run_main(workflow(toy_data, tmp_path, f"--model={tmp_path / 'nope.py'}"), capsys)
    assert_short_error(rc, err, "model file not found", str(tmp_path / "nope.py"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, needles", [
    ("def model(idim):\n    return {'layers': 3}\n", ("returned builtins.dict", "which no backend handles")),
    ("def model(idim):\n    return None\n", ("returned None",)),
    ("def build(idim):\n    return None\n", ("defines no function `model`",)),
    ("def model(idim):\n    sizes = [idim, 16]\n    return sizes[5]\n", ("line 3: IndexError", "in model(")),
])
def test_model_returning_the_wrong_thing(toy_data, tmp_path, capsys, source, needles):
    model = write(tmp_path, "model.py", source)
    rc, _, err = run_main(workflow(toy_data, tmp_path, f"--model={model}"), capsys)
    assert_short_error(rc, err, str(model), *needles)
    assert not (tmp_path / "out" / "bundle").exists()


@pytest.mark.parametrize("source, line", [
    pytest.param(KERAS_WRONG_WIDTH, 5, id="keras-input-layer"),
    pytest.param(TORCH_WRONG_WIDTH_MODULE, 11, id="torch-forward"),
    pytest.param(TORCH_WRONG_WIDTH_SEQUENTIAL, 6, id="torch-sequential"),
])
def test_model_built_for_another_input_width_names_the_line(toy_data, tmp_path, capsys, source, line):
    pytest.importorskip("keras" if "keras" in source else "torch")
    model = write(tmp_path, "model.py", source)
    rc, out, err = run_main(workflow(toy_data, tmp_path, f"--model={model}"), capsys)
    n = int(out.split("specs: ")[1].split(" features")[0])
    first = assert_short_error(rc, err, f"{model} line {line}: ", "25", f"model({n})",
                               f"the {n} input features", "idim")
    assert "Arguments received" not in first  # Keras' call-argument paragraphs are left out
    assert not (tmp_path / "out" / "checkpoint").exists()  # refused before any chunk was trained


def test_error_in_model_code_during_training_names_its_line(toy_data, tmp_path, capsys):
    pytest.importorskip("torch")
    model = write(tmp_path, "model.py", TORCH_LOSS_FAILS_IN_TRAINING)
    rc, _, err = run_main(workflow(toy_data, tmp_path, f"--model={model}"), capsys)
    assert_short_error(rc, err, f"{model} line 10: IndexError: ", "Dimension out of range", status=1)


# -- predict ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(toy_data, tmp_path_factory):
    """A small XGBoost bundle trained on the toy files (tree ``events``)."""
    folder = tmp_path_factory.mktemp("bundle")
    model = write(folder, "model.py", XGB_SMALL)
    inputs = load_inputs(toy_data.files_txt, toy_data.labels_txt, toy_data.params_json)
    specs = ensure_specs(inputs, progress=False)
    return train(inputs, specs, model, folder / "out", progress=False, plots=False).bundle


def read_scores(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(row["score"]) for row in csv.DictReader(f)])


def test_predict_tree_at_another_path_and_rntuple_of_another_name(toy_data, bundle, tmp_path, capsys):
    moved = toy_write(tmp_path / "moved.root", toy_data.raw["sig"], tree="dir/events")
    # the TTree's counter branches (nJet_pt, features of the bundle) are plain fields of an RNTuple
    fields = dict(toy_data.raw["sig"], **{f"n{name}": ak.num(toy_data.raw["sig"][name]).to_numpy().astype(np.int32)
                                          for name in TOY_JAGGED})
    renamed = toy_write(tmp_path / "renamed.root", fields, tree="ntuple", rntuple=True)
    rc, out, err = run_main(["predict", bundle, "--files", toy_data.sig, "--out", tmp_path / "ref.csv"], capsys)
    assert rc == 0, err
    reference = read_scores(tmp_path / "ref.csv")
    assert len(reference) == len(toy_data.raw["sig"]["EventId"])

    # without --tree the bundle's own tree is read, and is not in the moved file: the error lists the file's trees
    rc, _, err = run_main(["predict", bundle, "--files", moved, "--out", tmp_path / "m.csv"], capsys)
    assert_short_error(rc, err, "tree 'events' not found", "dir/events", "--tree")
    assert not (tmp_path / "m.csv").exists()  # no partial scores file

    for path, tree in ((moved, "dir/events"), (renamed, "ntuple")):
        scores = tmp_path / f"{tree.replace('/', '_')}.csv"
        rc, out, err = run_main(["predict", bundle, "--files", path, "--tree", tree, "--out", scores], capsys)
        assert rc == 0, err
        np.testing.assert_allclose(read_scores(scores), reference, rtol=1e-6, atol=1e-7)

    rc, _, err = run_main(["predict", bundle, "--files", renamed, "--tree", "ntupel", "--out", tmp_path / "x.csv"],
                          capsys)
    assert_short_error(rc, err, "tree 'ntupel' not found", "did you mean 'ntuple'", "Trees in the file: ntuple")


def test_predict_out_into_a_new_folder_creates_it(toy_data, bundle, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "x.csv"
    rc, _, err = run_main(["predict", bundle, "--files", toy_data.sig, "--out", out], capsys)
    assert rc == 0, err
    assert len(read_scores(out)) == len(toy_data.raw["sig"]["EventId"])


@pytest.mark.parametrize("where, needles", [
    ("params.json/x.csv", ("cannot create the folder", "in the way")),
    (".", ("is a folder", "give a file name")),
])
def test_predict_out_that_cannot_be_written(toy_data, bundle, capsys, where, needles):
    rc, _, err = run_main(["predict", bundle, "--files", toy_data.sig, "--out", toy_data.dir / where], capsys)
    assert_short_error(rc, err, "--out", *needles)


def test_predict_with_a_path_that_is_not_a_bundle(toy_data, tmp_path, capsys):
    rc, _, err = run_main(["predict", toy_data.dir, "--files", toy_data.sig, "--out", tmp_path / "x.csv"], capsys)
    assert_short_error(rc, err, str(toy_data.dir), "not a model bundle")
    rc, _, err = run_main(["predict", tmp_path / "nope", "--files", toy_data.sig, "--out", tmp_path / "x.csv"],
                          capsys)
    assert_short_error(rc, err, "bundle not found", str(tmp_path / "nope"))


# -- --traceback, MLAAS4HEP_TRACEBACK, Ctrl-C ---------------------------------------------------------
@pytest.mark.parametrize("how", ["before", "after", "env"])
def test_traceback_flag_shows_the_full_traceback(toy_data, tmp_path, capsys, monkeypatch, how):
    argv = ["predict", toy_data.dir, "--files", toy_data.sig, "--out", tmp_path / "x.csv"]
    if how == "env":
        monkeypatch.setenv("MLAAS4HEP_TRACEBACK", "1")
    else:
        argv = ["--traceback", *argv] if how == "before" else [*argv, "--traceback"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 2
    assert err.startswith("Traceback (most recent call last):") and "bundle.py" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "not a model bundle" in err


def test_interrupt_exits_with_130_and_one_line(toy_data, tmp_path):
    """Ctrl-C (SIGINT) during training: status 130, "interrupted", no traceback."""
    model = write(tmp_path, "model.py", "import xgboost\n\n\ndef model():\n"
                  "    return xgboost.XGBClassifier(n_estimators=100000, max_depth=4)\n")
    proc = subprocess.Popen([sys.executable, "-m", "mlaas4hep_lab.cli", *workflow(toy_data, tmp_path, f"--model={model}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # Ctrl-C as in a terminal: a suite started in the background (`&`) has SIGINT
                            # ignored, and the CLI would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        log = tmp_path / "out" / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and '"round"' in log.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
