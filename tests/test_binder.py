"""What Binder and Colab need, checked offline.

- ``binder/``: the files repo2docker reads, the Jupyter pins of ``binder/requirements.txt`` against
  ``pyproject.toml``, and ``binder/postBuild`` (strict bash, torch pinned and installed first from the CPU
  index, then the package with its extras, then the example data through the real CLI parser).
- ``notebooks/*.ipynb``: the Colab install cell first, outputs stored from one real top-to-bottom run, no
  error outputs, and cells whose output nbval compares free of run-specific values.

Building the Binder image cannot be done here (no container engine); the notebooks themselves run as tests
under nbval (pyproject.toml's pytest settings collect ``notebooks/`` with ``--nbval-lax``).
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = "https://github.com/mlaas4hep/mlaas4hep-lab"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# what the widgets need in the browser: these must be installed with the same versions as in the kernel
FRONT_END = {"jupyterlab", "jupyter-server", "ipywidgets", "ipykernel", "voila"}


# ------------------------------------------------------------------------------------------ helpers


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def exact_pins(requirements: list[str], where: str) -> dict[str, str]:
    """canonical name -> version of every ``name==version`` requirement; a package pinned twice to different
    versions is an error."""
    pins: dict[str, str] = {}
    for text in requirements:
        req = Requirement(text)
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            name = canonicalize_name(req.name)
            assert pins.get(name, specs[0].version) == specs[0].version, (
                f"{where}: {name} pinned to both {pins[name]} and {specs[0].version}"
            )
            pins[name] = specs[0].version
    return pins


def pyproject_pins() -> dict[str, str]:
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return exact_pins(requirements, "pyproject.toml")


def binder_requirements() -> list[str]:
    lines = []
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def postbuild_commands() -> list[list[str]]:
    """postBuild's commands as argument lists (comments dropped, continuation lines joined)."""
    text = (BINDER / "postBuild").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """The arguments after ``pip install`` of every pip install command, in order."""
    out = []
    for words in commands:
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                out.append(words[i + 2 :])
                break
    return out


def extras_of(requirement: str) -> set[str]:
    return set(Requirement(requirement.replace(".[", "mlaas4hep-lab[", 1)).extras)


# ------------------------------------------------------------------------------------------ binder/


def test_binder_uses_the_python_buildpack():
    """runtime.txt + requirements.txt + postBuild, and nothing that makes repo2docker pick another buildpack
    (an environment.yml, for one, would make it ignore requirements.txt)."""
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert "3.11" in SpecifierSet(pyproject()["project"]["requires-python"])
    assert (BINDER / "requirements.txt").is_file() and (BINDER / "postBuild").is_file()
    for other in (
        "environment.yml",
        "Dockerfile",
        "Pipfile",
        "pyproject.toml",
        "setup.py",
        "Project.toml",
        "install.R",
        "default.nix",
        "apt.txt",
    ):
        assert not (BINDER / other).exists(), f"binder/{other} changes how repo2docker builds the image"


def test_binder_requirements_agree_with_pyproject():
    pins = pyproject_pins()
    lines = binder_requirements()
    binder = exact_pins(lines, "binder/requirements.txt")
    assert len(binder) == len(lines), f"every line of binder/requirements.txt must be name==version: {lines}"
    assert FRONT_END <= set(binder), f"binder/requirements.txt lacks {sorted(FRONT_END - set(binder))}"
    for name, version in binder.items():
        if name in pins:
            assert version == pins[name], (
                f"binder/requirements.txt pins {name}=={version}, pyproject.toml pins {name}=={pins[name]}"
            )
    # what the tests below compare against must itself be pinned in pyproject.toml
    assert FRONT_END | {"torch"} <= set(pins)


def test_postbuild_is_executable_strict_bash():
    path = BINDER / "postBuild"
    mode = path.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXGRP and mode & stat.S_IXOTH, "chmod +x binder/postBuild"
    lines = path.read_text().splitlines()
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    commands = postbuild_commands()
    assert commands[0] == ["set", "-euo", "pipefail"], (
        "the first command of postBuild must be set -euo pipefail"
    )
    bash = shutil.which("bash")
    assert bash, "bash is needed to check postBuild's syntax"
    check = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_postbuild_installs_pinned_cpu_torch_first_then_the_package():
    installs = pip_installs(postbuild_commands())
    assert len(installs) == 2, installs
    torch, package = installs
    assert f"torch=={pyproject_pins()['torch']}" in torch, (
        f"first install must pin torch as pyproject does: {torch}"
    )
    assert torch[torch.index("--index-url") + 1] == TORCH_CPU_INDEX
    assert not any(w.startswith(".") or w.startswith("-e") for w in torch), "torch alone first"

    editable = package[package.index("-e") + 1]
    assert editable.startswith(".["), f"the package is installed editable from the checkout: {package}"
    extras = extras_of(editable)
    optional = pyproject()["project"]["optional-dependencies"]
    assert extras <= set(optional), f"unknown extras {sorted(extras - set(optional))}"
    everything = set().union(*(extras_of(r) for r in optional["all"] if r.startswith("mlaas4hep-lab[")))
    # every extra of "all" but the hub (the image's jupyterhub must stay the one Binder's hub expects)
    assert extras == everything - {"hub"}, (
        f"postBuild installs {sorted(extras)}, 'all' has {sorted(everything)}"
    )


def test_postbuild_writes_example_data_with_the_cli():
    from mlaas4hep_lab.cli import build_parser

    commands = postbuild_commands()
    last_install = max(i for i, c in enumerate(commands) if "pip" in " ".join(c))
    examples = [c for c in commands if c[:2] == ["mlaas4hep", "example"]]
    assert {c[2] for c in examples} == {"higgs", "tth"}
    for words in examples:
        assert commands.index(words) > last_install, "example data is written after the package is installed"
        args = build_parser().parse_args(words[1:])  # the real CLI accepts the command as written
        assert args.kind == words[2] and args.out == f"example/{words[2]}"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/example/" in ignored or "example/" in ignored, "the example data must stay out of git"


# ------------------------------------------------------------------------------------------ notebooks


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"higgs_challenge.ipynb", "tth_jagged.ipynb", "inference_service.ipynb"} <= names


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    nb = nbformat.read(request.param, as_version=4)
    nbformat.validate(nb)
    return nb


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_first_code_cell_installs_on_colab_only(notebook):
    source = code_cells(notebook)[0].source
    tree = ast.parse(source)  # parsed, not run
    guarded = [node for node in tree.body if isinstance(node, ast.If)]
    assert len(guarded) == 1 and ast.unparse(guarded[0].test) in (
        "'google.colab' in sys.modules",
        '"google.colab" in sys.modules',
    ), source
    # outside the guard only imports: the cell does nothing elsewhere
    assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.If)) for n in tree.body), source
    inside = ast.unparse(guarded[0])
    torch = f"torch=={pyproject_pins()['torch']}"
    package = f"mlaas4hep-lab[all] @ git+{REPO_URL}"
    assert torch in inside and package in inside, inside
    assert inside.index(torch) < inside.index(package), "torch is installed (pinned) before the package"


def test_outputs_are_stored_from_one_clean_run(notebook):
    cells = code_cells(notebook)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"execution counts {counts}: store the outputs of one top-to-bottom run (jupyter nbconvert --execute --inplace)"
    )
    assert any(c.outputs for c in cells), "no stored outputs"
    for cell in cells:
        for out in cell.outputs:
            assert out.output_type != "error", f"stored error output in cell:\n{cell.source[:300]}"
            if out.output_type == "stream":
                assert "Traceback (most recent call last)" not in out.text, cell.source[:300]
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_compared_outputs_hold_no_run_specific_values(notebook):
    """Cells nbval compares (``# NBVAL_CHECK_OUTPUT``) must have output, and none that changes from run to
    run: temporary paths, object addresses, timings."""
    tmp = re.escape(tempfile.gettempdir().rstrip("/") + "/")
    volatile = re.compile(rf"{tmp}|/tmp/|0x[0-9a-f]{{6,}}|\b\d+\.\d+ ?s\b|\bseconds\b", re.IGNORECASE)
    checked = [c for c in code_cells(notebook) if "NBVAL_CHECK_OUTPUT" in c.source]
    for cell in checked:
        assert cell.outputs, f"a checked cell without stored output checks nothing:\n{cell.source[:300]}"
        for out in cell.outputs:
            text = out.get("text", "") or "".join(
                str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")
            )
            found = volatile.search(text)
            assert not found, (
                f"run-specific output {found.group(0)!r} in a checked cell:\n{cell.source[:300]}"
            )
