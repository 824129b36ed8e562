"""Each job's own process: how it is started, isolated, limited, watched and stopped.

A job runs as ``[sys.executable, "-m", "mlaas4hep_lab.jobs.worker", JOB_DIR]`` (an argument list, never a
shell), in a **new session** (its own process group, so that a cancel kills everything it started, and so
that it survives a restart of the service), with stdout and stderr going to its log (kept in the service's
private state) and an environment stripped of the service's secrets. Its limits:

* memory: ``RLIMIT_AS`` (address space), set in the worker before it imports anything heavy;
* CPU time: ``RLIMIT_CPU`` likewise (the kernel sends SIGXCPU, then SIGKILL);
* wall clock: watched by the service, which kills the process group when a run takes longer.

The worker reports through ``JOB_DIR/status.json`` (replaced atomically). A process is identified by its
pid **and** its start time, so that after a restart of the service a recycled pid is not taken for a job.

**What a job can touch** (isolation ``users+bwrap``, see :mod:`mlaas4hep_lab.jobs.isolation`): it runs as
the system account of its owner (``mlj-...``, no supplementary groups, no new privileges), inside a
bubblewrap sandbox. It can write its own job folder (``model.py``, ``job.json``, ``status.json``,
``output/``) and a private ``/tmp``; read the data roots, the interpreter and the package; read the rest of
the file system as that unprivileged account would (read-only); open network connections (its inputs are
root:// and http(s):// URLs). It cannot see the service's state folder (jobs table, logs, push tokens,
bundles, account table: an empty folder in the sandbox), the tokens file (covered), the inference
service's store or other hidden paths, other users' job folders, the service's or other jobs' processes
(its own PID namespace and ``/proc``: no command lines, no environments, nothing to signal), nor the
service's environment variables (:func:`worker_env` passes a short list). The worker's pid in
``status.json`` is the one inside its namespace; the jobs table keeps the real one (the sandbox's leader).
The other modes give less: ``users`` alone, no sandbox (the job sees what any unprivileged account sees,
world-readable files and every process's command line included, and the shared ``/tmp``); ``bwrap`` alone,
the sandbox under the service's own uid and groups; ``none`` (only with ``allow_unisolated``), everything
the service can reach.

Files of the job folder are the job's: the service, which may run as root, opens them without following
symbolic links (:func:`open_in`), takes only regular files with a single link, and copies the bundle into
its own state before it serves or pushes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from mlaas4hep_lab.jobs.isolation import Account, Isolation

__all__ = ["Launched", "launch", "is_alive", "kill_group", "read_status", "write_json_atomic", "worker_env",
           "exit_reason", "wait_gone", "open_in", "STATUS_FILE", "SPEC_FILE", "LOG_FILE", "OUTPUT_DIR"]

log = logging.getLogger("mlaas4hep_lab.jobs")

SPEC_FILE = "job.json"        # what the service asks the worker to do (written by the service)
STATUS_FILE = "status.json"   # what the worker reports (written by the worker)
MAX_STATUS_BYTES = 1 << 20    # a larger status.json is not read
LOG_FILE = "job.log"          # the job's log, in the service's state (logs/JOB_ID.log), not in the job folder
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


def launch(job_dir: Path, threads: int = 1, pass_env: tuple[str, ...] = (), log_file: Path | None = None,
           isolation: Isolation | None = None, account: Account | None = None) -> Launched:
    """Start the worker of ``job_dir`` (which holds job.json) in a new session, under ``isolation`` as
    ``account`` (none: as the service); output to ``log_file`` (default ``job_dir/job.log``)."""
    job_dir = Path(job_dir)
    cmd = [sys.executable, "-m", "mlaas4hep_lab.jobs.worker", str(job_dir)]
    env, extra = worker_env(threads, pass_env), {}
    if isolation is not None:
        cmd, env, extra = isolation.wrap(cmd, job_dir, account, env)
    log_file = Path(log_file) if log_file is not None else job_dir / LOG_FILE
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(job_dir), env=env, start_new_session=True, close_fds=True, **extra)
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
    killed. When the leader is a sandbox (bubblewrap), a signal other than SIGKILL goes to the processes
    inside it only: bubblewrap itself would die of SIGTERM at once and leave a worker that ignores it
    running, unwatched. SIGKILL goes to the whole group; killing the sandbox's init ends every process in
    its PID namespace, also those that left the group."""
    if not is_alive(pid, started):
        return False
    try:
        if sig != signal.SIGKILL and _is_sandbox(pid):
            for proc in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)   # psutil checks the pid still is that process
            return True
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
    except (PermissionError, psutil.AccessDenied) as err:
        log.error("cannot signal the process group of job pid %s: %s", pid, err)
        return False


def _is_sandbox(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "bwrap"
    except psutil.Error:
        return False


def exit_reason(returncode: int, memory_limit: int, cpu_limit: float, sandboxed: bool = False) -> str:
    """A sentence on why a worker ended without reporting a result. In a sandbox, bubblewrap exits with
    128 + N when the worker was killed by signal N."""
    if sandboxed and 128 < returncode < 128 + 65:
        returncode = 128 - returncode
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


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o600,
                      owner: tuple[int, int] | None = None) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so a reader never sees half of it.

    The temporary file has a random name and is created, never opened if there (``O_EXCL``, no link
    followed): the service writes job.json into a folder its job owns. ``owner``: (uid, gid) to give it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w") as f:
            fd = -1
            json.dump(data, f, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_in(folder: str | Path, relative: str | Path) -> int:
    """A read-only descriptor of the regular file ``relative`` below ``folder``, opened without following a
    symbolic link at any step (each folder is opened relative to the previous one, ``O_NOFOLLOW``), so a job
    that owns ``folder`` cannot make the service read another file. Raises OSError (ELOOP for a link,
    EINVAL for a path that leaves the folder or is not a regular file, EMLINK for a file with other links).
    The caller closes the descriptor."""
    parts = PurePosixPath(str(relative)).parts
    if not parts or parts[0] == "/" or any(p in ("..", ".", "") for p in parts):
        raise OSError(errno.EINVAL, f"{relative!r} is not a path inside the job folder")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(folder, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            sub = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        # O_NONBLOCK: a FIFO planted there must not hang the service
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    info = os.fstat(file_fd)
    problem = None if stat.S_ISREG(info.st_mode) else (errno.EINVAL, "is not a regular file")
    if problem is None and info.st_nlink != 1:   # a hard link to a file the job should not read
        problem = (errno.EMLINK, f"has {info.st_nlink} links")
    if problem is not None:
        os.close(file_fd)
        raise OSError(problem[0], f"{relative} in {folder} {problem[1]}")
    return file_fd


def read_status(job_dir: str | Path) -> dict[str, Any]:
    """The worker's last report (``{}`` when there is none yet or it cannot be read)."""
    try:
        with os.fdopen(open_in(job_dir, STATUS_FILE), "rb") as f:
            raw = f.read(MAX_STATUS_BYTES + 1)
        data = json.loads(raw) if len(raw) <= MAX_STATUS_BYTES else None
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
