"""The rows of benchmarks/stream.py that are not ours: raw uproot, plain awkward, ROOT's RDataLoader.

Each function reads the same files and branches as our rows and returns events/s (plus what the
printout needs). ROOT runs in a subprocess with the python of its own venv (benchmarks/_root_loader.py):
ROOT is no dependency of the project. The memory probes at the end serve both our child process and
ROOT's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

HERE = Path(__file__).resolve().parent
ROOT_VENV = Path("/root/.cache/mlaas4hep/root-venv")
ROOT_INSTALL = (f"python -m venv {ROOT_VENV} && "
                f"{ROOT_VENV}/bin/pip install ROOT==0.1a12 uproot awkward psutil numpy")


def _sources(files, tree: str) -> list[str]:
    return [f"{path}:{tree}" for path in files]


def warm(files) -> None:
    """Read the files' bytes once, so the first timed row does not pay for a cold page cache alone."""
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def clusters(files, tree: str) -> list[int]:
    """Entries of every cluster of every file: ROOT's loader fills its shuffle buffer cluster by cluster."""
    sizes = []
    for path in files:
        with uproot.open(path) as f:
            sizes += np.diff(f[tree].common_entry_offsets()).tolist()
    return sizes


def raw_rate(files, tree: str, branches, chunk_size: int) -> float:
    """events/s of ``uproot.iterate(library="ak")`` over ``branches``: the reference row."""
    t0 = time.perf_counter()
    n = 0
    for arrays in uproot.iterate(_sources(files, tree), branches, step_size=chunk_size, library="ak"):
        n += len(arrays)
    return n / (time.perf_counter() - t0)


# -- plain awkward: what a physicist would write -------------------------------------------------------

def _matrix(arrays, flat, jdim: dict[str, int]) -> np.ndarray:
    """float32[n, F]: flat branches, then each jagged branch padded or clipped to its k, zeros for padding."""
    columns = [ak.to_numpy(arrays[name])[:, None] for name in flat]
    columns += [ak.to_numpy(ak.fill_none(ak.pad_none(arrays[name], k, clip=True), 0))
                for name, k in jdim.items()]
    return np.concatenate(columns, axis=1, dtype=np.float32, casting="unsafe")


def _minmax(X: np.ndarray) -> None:
    """Min-max normalise each column in place with the chunk's own min and max (no first pass)."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    X -= lo
    X /= np.where(hi > lo, hi - lo, 1)


def awkward_rate(files, labels, tree: str, branches, flat, jdim, chunk_size: int, seed: int = 0) -> float:
    """events/s of uproot.iterate + pad_none/fill_none/to_numpy + one float32 matrix + min-max + shuffle."""
    label_of = dict(zip(map(str, files), labels))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    n = 0
    for arrays, report in uproot.iterate(_sources(files, tree), branches, step_size=chunk_size, library="ak",
                                         report=True):
        X = _matrix(arrays, flat, jdim)
        _minmax(X)
        y = np.full(len(X), label_of[report.file_path], np.float32)
        order = rng.permutation(len(X))
        X, y = X[order], y[order]
        n += len(X)
    return n / (time.perf_counter() - t0)


def awkward_features(flat, jdim) -> int:
    return len(flat) + sum(jdim.values())


# -- ROOT's RDataLoader, in its own venv -------------------------------------------------------------------

def root_python_path() -> Path:
    """Where the python of the venv with ROOT is looked for: $MLAAS4HEP_ROOT_PYTHON, else the default venv."""
    given = os.environ.get("MLAAS4HEP_ROOT_PYTHON")
    return Path(given) if given else ROOT_VENV / "bin" / "python"


def root_python() -> Path | None:
    path = root_python_path()
    return path if path.is_file() else None


def root_missing() -> str:
    return (f"skipped: no {root_python_path()} (set MLAAS4HEP_ROOT_PYTHON to ROOT's python, or install ROOT "
            f"6.40 in its own venv: {ROOT_INSTALL})")


def root_job(files, labels, tree: str, flat, jdim, chunk_size: int, batch_size: int, seed: int,
             epochs: int) -> dict:
    """The JSON job of benchmarks/_root_loader.py: one warm-up epoch (JIT) plus ``epochs`` timed ones."""
    return {"files": [str(f) for f in files], "labels": [float(v) for v in labels], "tree": tree,
            "columns": [*flat, *jdim], "max_vec_sizes": dict(jdim), "batch_size": batch_size,
            "batches_in_memory": max(1, chunk_size // batch_size), "seed": seed, "epochs": epochs}


def run_root(python: Path, job: dict) -> dict:
    """Run the job in a fresh process of ROOT's python; raise with its stderr when it fails."""
    out = subprocess.run([str(python), str(HERE / "_root_loader.py")], input=json.dumps(job),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{python} benchmarks/_root_loader.py failed (exit {out.returncode}):\n"
                           f"{out.stderr.strip()[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rates"]:
        result["rate"] = statistics.median(result["rates"])
    return result


# -- memory probes (used in our child process and in ROOT's) -----------------------------------------------

def _status_mb(field: str) -> float | None:
    """A field of /proc/self/status in MiB (None without /proc)."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith(f"{field}:")), None)
    except OSError:
        return None


def peak_mb() -> float:
    """Peak RSS of this process image (VmHWM). Linux carries ``ru_maxrss`` across fork and exec, so in a
    child it would start at its parent's peak; ``ru_maxrss`` only where /proc is missing."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonPeak:
    """The highest RssAnon (memory not backed by a file) while the block runs, sampled every 5 ms.

    The kernel keeps a peak of the whole RSS only, and that counts the resident pages of memory-mapped
    files: uproot maps local files, so it grows with the bytes read although the kernel can drop them.

    Example::

        with AnonPeak() as anon:
            work()
        anon.peak_mb - anon.baseline_mb
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.baseline_mb = self.peak_mb = _status_mb("RssAnon") or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="anon-peak", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon") or 0.0)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon") or 0.0)
