"""Each job's own process: how it is started, limited, watched and stopped.

A job runs as ``[sys.executable, "-m", "mlaas4hep_lab.jobs.worker", JOB_DIR]`` (an argument list, never a
shell), in a **new session** (its own process group, so that a cancel kills everything it started, and so
that it survives a restart of the service), with stdout and stderr going to ``JOB_DIR/job.log`` and an
environment stripped of the service's secrets. Its limits:

* memory: ``RLIMIT_AS`` (address space), set in the worker before it imports anything heavy;
* CPU time: ``RLIMIT_CPU`` likewise (the kernel sends SIGXCPU, then SIGKILL);
* wall clock: watched by the service, which kills the process group when a run takes longer.

The worker reports through ``JOB_DIR/status.json`` (replaced atomically). A process is identified by its
pid **and** its start time, so that after a restart of the service a recycled pid is not taken for a job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = ["Launched", "launch", "is_alive", "kill_group", "read_status", "write_json_atomic", "worker_env",
           "exit_reason", "wait_gone", "STATUS_FILE", "SPEC_FILE", "LOG_FILE", "TOKEN_FILE", "OUTPUT_DIR"]

log = logging.getLogger("mlaas4hep_lab.jobs")

SPEC_FILE = "job.json"        # what the service asks the worker to do (written by the service)
STATUS_FILE = "status.json"   # what the worker reports (written by the worker)
LOG_FILE = "job.log"
TOKEN_FILE = "push_token"     # the submitter's token for the push, 0600, deleted after the push
OUTPUT_DIR = "output"         # fout of the training: specs, checkpoints, metrics.jsonl, bundle

# variables a worker inherits from the service (prefix match); everything else is left out, so the
# service's JUPYTERHUB_API_TOKEN, its OIDC settings or a cloud credential never reach a user's model.py
_PASS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_", "TZ", "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV",
         "CONDA_", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "X509_", "XRD_", "XrdSec", "CUDA_VISIBLE",
         "NVIDIA_VISIBLE", "KERAS_BACKEND", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy",
         "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass
class Launched:
    pid: int
    started: float                  # psutil create_time of the process
    proc: subprocess.Popen | None   # None for a process re-attached after a restart


def worker_env(threads: int, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a worker: a few harmless variables of the service's, thread caps, quiet libraries."""
    env = {k: v for k, v in os.environ.items() if k.startswith(_PASS) or k in extra}
    env.update({name: str(threads) for name in _THREAD_VARS})
    env.update({
        "PYTHONUNBUFFERED": "1",            # the log file shows lines as they come
        "MALLOC_ARENA_MAX": "2",            # glibc reserves 64 MiB of address space per thread arena:
                                            # with RLIMIT_AS, threads would exhaust it without using memory
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
    })
    return env


def launch(job_dir: Path, threads: int = 1, pass_env: tuple[str, ...] = ()) -> Launched:
    """Start the worker of ``job_dir`` (which holds job.json) in a new session; output to job.log."""
    job_dir = Path(job_dir)
    cmd = [sys.executable, "-m", "mlaas4hep_lab.jobs.worker", str(job_dir)]
    with open(job_dir / LOG_FILE, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(job_dir), env=worker_env(threads, pass_env), start_new_session=True,
                                close_fds=True)
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # already gone (it could not even start): poll() will say how
        started = 0.0
    return Launched(proc.pid, started, proc)


def is_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie, not a new process
    that got the same pid)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if started and abs(p.create_time() - started) > 0.05:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_group(pid: int, started: float | None, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the process group the worker leads (its own session); False when it is gone.

    The leader is checked (pid and start time) first: a recycled pid must not get someone else's group
    killed."""
    if not is_alive(pid, started):
        return False
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as err:
        log.error("cannot signal the process group of job pid %s: %s", pid, err)
        return False


def exit_reason(returncode: int, memory_limit: int, cpu_limit: float) -> str:
    """A sentence on why a worker ended without reporting a result."""
    if returncode >= 0:
        return f"the worker exited with status {returncode} without reporting a result (see the job log)"
    sig = -returncode
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_limit):
        hint = f" the CPU time limit is {cpu_limit:g} s;" if cpu_limit else ""
        return (f"the worker was killed by {name}:{hint} a job over its CPU time limit ends this way "
                f"(or the system ran out of memory)")
    hint = f" (memory limit {memory_limit / 2**30:.3g} GiB: a library may have failed to allocate)" \
        if memory_limit and sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) else ""
    return f"the worker was killed by {name}{hint}"


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, default=_jsonable)
    os.replace(tmp, path)


def read_status(job_dir: str | Path) -> dict[str, Any]:
    """The worker's last report (``{}`` when there is none yet or it cannot be read)."""
    try:
        data = json.loads((Path(job_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def wait_gone(pid: int, started: float | None, timeout: float) -> bool:
    """Poll until the process is gone; whether it went within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid, started):
            return True
        time.sleep(0.05)
    return not is_alive(pid, started)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
