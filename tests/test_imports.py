"""The engine stays light (no ML framework, widget or web import) and never calls eval/exec."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlaas4hep_lab

HEAVY = ("tensorflow", "torch", "xgboost", "ipywidgets", "fastapi", "keras", "sklearn")
PACKAGE = Path(mlaas4hep_lab.__file__).resolve().parent


def test_import_and_lazy_attributes_pull_in_no_framework():
    code = f"""
import json, sys
import mlaas4hep_lab
before = sorted(m for m in {HEAVY!r} if m in sys.modules)
objs = [mlaas4hep_lab.Params, mlaas4hep_lab.TreeReader, mlaas4hep_lab.ChunkStream, mlaas4hep_lab.Specs,
        mlaas4hep_lab.Vectorizer, mlaas4hep_lab.load_params, mlaas4hep_lab.inspect_file, mlaas4hep_lab.errors]
import mlaas4hep_lab.pipeline, mlaas4hep_lab.cli
print(json.dumps({{
    "before": before,
    "after": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}),
    "names": [getattr(o, "__name__", "") for o in objs],
    "uproot": "uproot" in sys.modules,
}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"] == [] and result["after"] == []
    assert result["names"] == ["Params", "TreeReader", "ChunkStream", "Specs", "Vectorizer", "load_params",
                               "inspect_file", "mlaas4hep_lab.errors"]
    assert result["uproot"]


def test_public_api_is_curated():
    assert "Params" in dir(mlaas4hep_lab) and "ChunkStream" in mlaas4hep_lab.__all__
    assert mlaas4hep_lab.Params is __import__("mlaas4hep_lab.params", fromlist=["Params"]).Params
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mlaas4hep_lab.Nope  # noqa: B018


def _eval_exec_calls(tree: ast.AST) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            hits.append((node.lineno, func.id))
        elif (isinstance(func, ast.Attribute) and func.attr in ("eval", "exec")
              and isinstance(func.value, ast.Name) and func.value.id in ("builtins", "__builtins__")):
            hits.append((node.lineno, f"{func.value.id}.{func.attr}"))
        elif (isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in ("eval", "exec")):
            hits.append((node.lineno, f"getattr(..., {node.args[1].value!r})"))
    return hits


def test_the_detector_finds_calls():
    src = "import builtins\neval('1')\nx.eval()\nbuiltins.exec('y=1')\ngetattr(builtins, 'eval')('2')\n"
    assert _eval_exec_calls(ast.parse(src)) == [(2, "eval"), (4, "builtins.exec"), (5, "getattr(..., 'eval')")]


def test_no_module_calls_eval_or_exec():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    found = {}
    for path in files:
        hits = _eval_exec_calls(ast.parse(path.read_text(), filename=str(path)))
        if hits:
            found[str(path.relative_to(PACKAGE))] = hits
    assert found == {}


def test_every_public_name_resolves_without_frameworks():
    code = (
        "import sys, mlaas4hep_lab as m\n"
        "for name in m.__all__:\n"
        "    getattr(m, name)\n"
        "heavy = [x for x in ('tensorflow', 'torch', 'xgboost', 'keras', 'sklearn', 'ipywidgets', 'fastapi')\n"
        "         if x in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
