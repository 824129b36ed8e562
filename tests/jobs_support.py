"""The jobs service's end-to-end harness, shared by test_jobs_e2e.py and test_jobs_isolation.py: a real
``mlaas4hep jobs`` process (:class:`JobsProcess`) with alice's and bob's tokens, request bodies on the
package's Higgs-like data, and the clean-up of workers a test left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
from pathlib import Path

try:
    from serving_support import JobsProcess as _JobsProcess
except ImportError:  # tests/ imported as a package
    from tests.serving_support import JobsProcess as _JobsProcess

TOKENS = {"alice": "alice-token-0123", "bob": "bob-token-4567"}

# a linear model that takes its time on each chunk: long enough to restart the service in the middle
SLOW_MODEL = textwrap.dedent("""
    import time

    from sklearn.linear_model import SGDClassifier


    class SlowSGD(SGDClassifier):
        def partial_fit(self, X, y, classes=None, sample_weight=None):
            time.sleep(0.6)
            return super().partial_fit(X, y, classes=classes, sample_weight=sample_weight)


    def model():
        return SlowSGD(loss="log_loss", random_state=0)
""")


class JobsProcess(_JobsProcess):
    """``mlaas4hep jobs`` with alice's and bob's tokens."""

    users = TOKENS

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.owners: dict[str, str] = {}   # job id -> who submitted it (submit() notes it), for job() and wait()

    def job(self, job_id: str, user: str | None = None) -> dict:
        return super().job(job_id, user or self.owners.get(job_id, "alice"))

    def worker_pid(self, job_id: str) -> int | None:
        """The job's process as this machine sees it, from the jobs table (in a sandbox, the pid in the
        worker's status.json is the one inside its own PID namespace). Read-only, beside the service."""
        conn = sqlite3.connect(f"file:{self.state / 'jobs.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            conn.close()
        return row[0] if row else None


def kill_leftover_workers(state: Path) -> None:
    """SIGKILL to the process group of every worker of ``state`` still running (in a sandbox or not)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "mlaas4hep_lab.jobs.worker" in cmd and any(str(state) in c for c in cmd):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def submission(ds, model: str = "sklearn", **changes) -> dict:
    """A request body training ``model`` on the dataset ``ds`` (chunks of 1000 events, one epoch)."""
    params = json.loads(Path(ds.params_json).read_text())
    params.update(chunk_size=1000, epochs=1)
    body = {"files": [p.name for p in ds.files], "labels": ds.labels, "model": model, "params": params}
    body.update(changes)
    return body


def slow_submission(ds, name: str, **changes) -> dict:
    params = json.loads(Path(ds.params_json).read_text())
    # 6 chunks x 3 passes, one partial_fit (0.6 s) per chunk: ~15 s of training, a checkpoint per chunk
    params.update(chunk_size=1000, epochs=3, training="epochs", batch_size=1000)
    return submission(ds, SLOW_MODEL, params=params, name=name, **changes)


def submit(jobs: JobsProcess, body: dict, user: str = "alice") -> str:
    status, answer = jobs.call("POST", "/submit", body, user=user)
    assert status == 201, answer
    assert answer["url"] == f"/jobs/{answer['id']}"
    jobs.owners[answer["id"]] = user
    return answer["id"]
