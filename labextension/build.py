"""Build the JupyterLab extension into mlaas4hep_lab/labextension, or check that the committed build matches
the sources.

    python labextension/build.py            # npm ci, tsc, the JupyterLab builder; writes the package's copy
    python labextension/build.py --check    # the same in a temporary copy, compared file by file (CI)

The build needs Node 20 and npm (Debian's), and the npm registry for ``npm ci``; every npm package is
pinned by package-lock.json, and the builder (``@jupyter/builder``) with the core metadata of JupyterLab
(``@jupyterlab/core-meta``) are exact devDependencies, so the same sources give the same bytes.
Installing the package needs none of it: the built files are committed.

``sources.sha256`` in the output lists a hash of every source file, so a test without Node can tell that
a source changed after the last build (tests/test_labextension.py).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "mlaas4hep_lab" / "labextension"
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "rspack.config.js", "install.json", "src", "style")
HASHES = "sources.sha256"


def source_files(folder: Path = HERE) -> list[Path]:
    """The files the build reads, in a fixed order."""
    out = []
    for name in SOURCES:
        p = folder / name
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


def source_hashes(folder: Path = HERE) -> str:
    """``sha256  relative/path`` lines of :func:`source_files`."""
    return "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(folder).as_posix()}\n"
                   for f in source_files(folder))


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def build(folder: Path = HERE, install: bool = True) -> Path:
    """npm ci (unless ``install`` is False and node_modules is there), then the build; the output folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: apt-get install nodejs npm (Node 20)")
    if install or not (folder / "node_modules").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], folder)
    _run([npm, "run", "build"], folder)
    out = folder.parent / "mlaas4hep_lab" / "labextension"
    shutil.copy(folder / "install.json", out / "install.json")
    (out / HASHES).write_text(source_hashes(folder))
    return out


def _differences(a: Path, b: Path) -> list[str]:
    out = []
    cmp = filecmp.dircmp(a, b)
    out += [f"only in the committed build: {x}" for x in cmp.left_only]
    out += [f"only in the fresh build: {x}" for x in cmp.right_only]
    out += [f"differs: {x}" for x in cmp.diff_files]
    for sub in cmp.common_dirs:
        out += [f"{sub}/{d}" for d in _differences(a / sub, b / sub)]
    for name in cmp.common_files:   # filecmp's shallow test trusts size and time; compare bytes
        if name not in cmp.diff_files and (a / name).read_bytes() != (b / name).read_bytes():
            out.append(f"differs: {name}")
    return out


def check() -> int:
    """Rebuild in a temporary copy of the sources and compare with the committed build; 0 when equal."""
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-labextension-") as tmp:
        copy = Path(tmp) / "labextension"
        copy.mkdir()
        for name in SOURCES:
            src = HERE / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
        fresh = build(copy)
        diffs = _differences(OUTPUT, fresh)
    if diffs:
        print("the committed build in mlaas4hep_lab/labextension does not match the sources; run "
              "`python labextension/build.py` and commit the result:\n  " + "\n  ".join(diffs), file=sys.stderr)
        return 1
    print("mlaas4hep_lab/labextension matches a fresh build of labextension/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare")
    parser.add_argument("--no-install", action="store_true", help="reuse labextension/node_modules")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    build(install=not args.no_install)
    return 0


if __name__ == "__main__":
    sys.exit(main())
