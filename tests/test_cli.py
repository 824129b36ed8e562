"""The ``mlaas4hep`` command, in-process through ``main([...])`` and once as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mlaas4hep_lab import cli, pipeline
from mlaas4hep_lab.data.specs import load_specs

SUMMARY_KEYS = ("files", "chunks", "events_read", "events_after_cuts", "features", "flat_branches",
                "jagged_branches", "events_per_label", "split", "masked_fraction", "seconds", "events_per_second")


def inputs(toy, params=None, labels=None, files=None):
    return [f"--files={files or toy.files_txt}", f"--labels={labels or toy.labels_txt}",
            f"--params={params or toy.params_json}"]


def summary(text: str) -> dict[str, str]:
    """The indented ``key  value`` lines of the dry-run summary."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^  (\w+)\s+(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def run_main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc, out, err, *needles):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err


def test_workflow_dry_run_prints_summary_and_writes_specs(toy_data, tmp_path, capsys):
    fout = tmp_path / "out"
    rc, out, err = run_main(["workflow", *inputs(toy_data), "--dry-run", f"--fout={fout}"], capsys)
    assert rc == 0, err
    specs_path = fout / "specs.json"
    assert f"-> {specs_path}" in out
    specs = load_specs(specs_path)
    assert specs.events["total"] == 10_000
    assert re.search(rf"specs: {specs.n_features} features \(15 flat, 2 jagged branches\), 10,000 events", out)
    s = summary(out)
    assert tuple(s) == SUMMARY_KEYS
    assert (s["files"], s["chunks"], s["events_read"], s["events_after_cuts"]) == ("2", "10", "10000", "10000")
    assert s["features"] == str(specs.n_features) == "37"  # 15 flat, 2 x 10 jagged, 2 multiplicities
    assert json.loads(s["events_per_label"]) == {"0.0": 7000, "1.0": 3000}
    split = json.loads(s["split"])
    assert sum(split.values()) == 10_000 and 6000 < split["train"] < 6800


def test_second_run_reuses_the_specs(toy_data, tmp_path, capsys, monkeypatch):
    fout = tmp_path / "out"
    argv = ["workflow", *inputs(toy_data), "--dry-run", f"--fout={fout}"]
    assert run_main(argv, capsys)[0] == 0
    specs_path = fout / "specs.json"
    before = specs_path.read_bytes(), specs_path.stat().st_mtime_ns

    def no_recompute(*args, **kwargs):
        raise AssertionError("the specs were recomputed instead of reused")

    monkeypatch.setattr(pipeline, "compute_specs", no_recompute)
    rc, out, err = run_main(argv, capsys)
    assert rc == 0, err
    assert (specs_path.read_bytes(), specs_path.stat().st_mtime_ns) == before
    assert summary(out)["events_read"] == "10000"
    # --recompute-specs does recompute (--debug: the exception propagates instead of becoming an error line)
    with pytest.raises(AssertionError, match="recomputed"):
        cli.main(["--debug", *argv, "--recompute-specs"])


def test_explicit_specs_path(toy_data, tmp_path, capsys):
    specs_path = tmp_path / "elsewhere" / "my-specs.json"
    rc, out, err = run_main(["workflow", *inputs(toy_data), "--dry-run", f"--fout={tmp_path / 'o'}",
                             f"--specs={specs_path}"], capsys)
    assert rc == 0, err
    assert specs_path.is_file() and not (tmp_path / "o" / "specs.json").exists()


def test_stale_specs_are_reported(toy_copy, tmp_path, capsys):
    fout = tmp_path / "out"
    argv = ["workflow", *inputs(toy_copy), "--dry-run", f"--fout={fout}"]
    assert run_main(argv, capsys)[0] == 0
    params = json.loads(toy_copy.params_json.read_text()) | {"exclude_branches": "f_int8"}
    toy_copy.params_json.write_text(json.dumps(params))
    rc, out, err = run_main(argv, capsys)
    assert_one_line_error(rc, out, err, str(fout / "specs.json"), "other params")


def test_specs_command(toy_data, tmp_path, capsys):
    target = tmp_path / "s" / "specs.json"
    rc, out, err = run_main(["specs", *inputs(toy_data), f"--fout={target}"], capsys)
    assert rc == 0, err
    specs = load_specs(target)
    assert out.startswith(f"wrote {target}: {specs.n_features} features, 15 flat and 2 jagged branches, "
                          "10,000 events after cuts")
    assert specs.fkeys[0] == "MET" and "EventId" not in specs.fkeys and specs.jdim == {"Jet_pt": 10,
                                                                                       "Trk_nhits": 10}


def test_inspect(toy_data, capsys):
    rc, out, err = run_main(["inspect", toy_data.sig], capsys)
    assert rc == 0, err
    assert f"TTree 'events' in {toy_data.sig}: 3000 entries, 16 flat and 2 jagged" in out
    assert re.search(r"^Jet_pt\s+float\[\]\s+float32\s+jagged$", out, re.M)
    assert re.search(r"^f_uint16\s+uint16_t\s+uint16\s+flat$", out, re.M)
    rc, out, err = run_main(["inspect", toy_data.rntuple, "--tree", "events"], capsys)
    assert rc == 0 and out.startswith("RNTuple 'events'")


def test_original_style_without_subcommand(toy_data, tmp_path, capsys):
    """The original workflow.py call trains end to end and writes the bundle."""
    fout = tmp_path / "out"
    model = tmp_path / "model.py"
    model.write_text("import torch\nfrom torch import nn\n\n"
                     "def model(idim):\n    return nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), nn.Linear(16, 1))\n")
    rc, out, err = run_main([*inputs(toy_data), f"--model={model}", f"--fout={fout}"], capsys)
    assert rc == 0, err
    assert "trained torch model on" in out and "AUC" in out
    assert (fout / "specs.json").is_file()
    assert (fout / "bundle" / "manifest.json").is_file() and (fout / "bundle.tar.gz").is_file()


def test_original_style_with_options_in_another_order(toy_data, tmp_path, capsys):
    """argparse options have no order: the original call may name --params or --labels first."""
    fout = tmp_path / "out"
    argv = [f"--params={toy_data.params_json}", f"--labels={toy_data.labels_txt}",
            f"--files={toy_data.files_txt}", "--dry-run", f"--fout={fout}"]
    try:
        rc, out, err = run_main(argv, capsys)
    except SystemExit as exit_:
        pytest.fail(f"argparse rejected the original call (exit {exit_.code}): {capsys.readouterr().err}")
    assert rc == 0, err
    assert (fout / "specs.json").is_file()


def test_no_command_prints_help(capsys):
    rc, out, err = run_main([], capsys)
    assert rc == 2 and "usage: mlaas4hep" in out


# -- errors: exit code 2 and one line ---------------------------------------------------------------
def test_missing_root_file(toy_copy, tmp_path, capsys):
    toy_copy.files_txt.write_text("sig.root\nmissing.root\n")
    rc, out, err = run_main(["workflow", *inputs(toy_copy), "--dry-run", f"--fout={tmp_path / 'o'}"], capsys)
    assert_one_line_error(rc, out, err, str(toy_copy.dir / "missing.root"), "not found")


def test_root_file_removed_after_specs_were_written(toy_copy, tmp_path, capsys):
    """Re-running with a saved specs file whose ROOT file has since disappeared: a clear error, no traceback."""
    argv = ["workflow", *inputs(toy_copy), "--dry-run", f"--fout={tmp_path / 'o'}"]
    assert run_main(argv, capsys)[0] == 0
    toy_copy.bkg.unlink()
    rc, out, err = run_main(argv, capsys)
    assert_one_line_error(rc, out, err, str(toy_copy.bkg))


def test_labels_count_mismatch(toy_data, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n0\n0\n")
    rc, out, err = run_main(["workflow", *inputs(toy_data, labels=labels), "--dry-run",
                             f"--fout={tmp_path / 'o'}"], capsys)
    assert_one_line_error(rc, out, err, "3 labels for 2 files", str(labels))
    assert not (tmp_path / "o").exists()  # nothing computed


def test_malformed_params_json(toy_data, tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text('{"nevts": -1,\n "chunk_size": 1000\n "epochs": 5}\n')
    rc, out, err = run_main(["specs", *inputs(toy_data, params=params), f"--fout={tmp_path / 's.json'}"], capsys)
    assert_one_line_error(rc, out, err, str(params), "line 3, column 2")


def test_wrong_type_in_params(toy_data, tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"chunk_size": "big"}))
    rc, out, err = run_main(["specs", *inputs(toy_data, params=params), f"--fout={tmp_path / 's.json'}"], capsys)
    assert_one_line_error(rc, out, err, "'chunk_size'", "integer")


def test_misspelled_selected_branch(toy_data, tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(json.loads(toy_data.params_json.read_text()) | {"selected_branches": "MET,Jet_ptt"}))
    rc, out, err = run_main(["workflow", *inputs(toy_data, params=params), "--dry-run",
                             f"--fout={tmp_path / 'o'}"], capsys)
    assert_one_line_error(rc, out, err, "'Jet_ptt'", "did you mean 'Jet_pt'", "selected_branches")


def test_inspect_missing_file(tmp_path, capsys):
    rc, out, err = run_main(["inspect", tmp_path / "nope.root"], capsys)
    assert_one_line_error(rc, out, err, str(tmp_path / "nope.root"))


def test_debug_shows_the_exception(tmp_path):
    from mlaas4hep_lab.errors import InputFileError

    with pytest.raises(InputFileError):
        cli.main(["--debug", "inspect", str(tmp_path / "nope.root")])


# -- the installed command ----------------------------------------------------------------------------
def test_installed_command_in_a_subprocess(toy_data, tmp_path):
    exe = shutil.which("mlaas4hep")
    command = [exe] if exe else [sys.executable, "-m", "mlaas4hep_lab.cli"]
    rel = os.path.relpath(toy_data.dir, tmp_path)
    proc = subprocess.run(
        [*command, "workflow", f"--files={rel}/files.txt", f"--labels={rel}/labels.txt",
         f"--params={rel}/params.json", "--dry-run", "--fout=out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "specs.json").is_file()
    assert summary(proc.stdout)["events_after_cuts"] == "10000"
    bad = subprocess.run([*command, "inspect", "nope.root"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ROOT file not found: nope.root")


def test_truncated_root_file(toy_copy, tmp_path, capsys):
    data = toy_copy.bkg.read_bytes()
    toy_copy.bkg.write_bytes(data[: len(data) // 2])
    rc, out, err = run_main(["specs", *inputs(toy_copy), f"--fout={tmp_path / 's.json'}"], capsys)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert str(toy_copy.bkg) in err and "truncated" in err
    assert not (tmp_path / "s.json").exists()


ORIGINAL_SPECS = {"jdim": {"Jet_pt": 3}, "minv": {"MET": 0.0, "Jet_pt": 20.0},
                  "maxv": {"MET": 500.0, "Jet_pt": 300.0}, "fkeys": ["MET"], "jkeys": ["Jet_pt"],
                  "nans": {"MET": 0.0, "Jet_pt": -0.07}}


def test_original_format_specs_are_used(toy_data, tmp_path, capsys):
    specs_path = tmp_path / "specs.json"
    specs_path.write_text(json.dumps(ORIGINAL_SPECS))
    params = tmp_path / "params.json"
    params.write_text(json.dumps(json.loads(toy_data.params_json.read_text()) | {"selected_branches": "MET,Jet_pt"}))
    rc, out, err = run_main(["workflow", *inputs(toy_data, params=params), "--dry-run", f"--fout={tmp_path / 'o'}",
                             f"--specs={specs_path}"], capsys)
    assert rc == 0, err
    assert summary(out)["features"] == "4"  # MET, Jet_pt[0..2] as the original specs say
    assert json.loads(specs_path.read_text()) == ORIGINAL_SPECS  # reused, not rewritten


def test_original_format_specs_of_other_branches(toy_data, tmp_path, capsys):
    """An old specs file (no fingerprint) for other branches: a one-line error, not a ValueError traceback."""
    specs_path = tmp_path / "specs.json"
    specs_path.write_text(json.dumps(ORIGINAL_SPECS))
    rc, out, err = run_main(["workflow", *inputs(toy_data), "--dry-run", f"--fout={tmp_path / 'o'}",
                             f"--specs={specs_path}"], capsys)
    assert_one_line_error(rc, out, err, "recompute")
