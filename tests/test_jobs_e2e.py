"""End-to-end tests of the jobs service: a real ``mlaas4hep jobs`` process and a real ``mlaas4hep serve`` on
127.0.0.1, plain HTTP calls as curl would make them, real training jobs on the package's Higgs-like data.

Shown here: a job trains to success, its log and its bundle come back (and load with ``Bundle``), the bundle
is pushed to the inference service with the submitter's token and predicts there what it predicts locally;
another user can neither see, cancel nor fetch it; the service is killed with SIGKILL mid-run and restarted,
and the job carries on (its worker survived) or, when its worker died too, resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import pytest
import uproot

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.serving.client import Client

try:
    from jobs_support import TOKENS, JobsProcess, kill_leftover_workers, slow_submission, submission, submit
    from serving_support import ServerProcess, http_call
except ImportError:  # tests/ imported as a package
    from tests.jobs_support import (
        TOKENS,
        JobsProcess,
        kill_leftover_workers,
        slow_submission,
        submission,
        submit,
    )
    from tests.serving_support import ServerProcess, http_call

pytestmark = [pytest.mark.serving, pytest.mark.slow]

N_EVENTS = 6000
_submission, _slow_submission, _submit = submission, slow_submission, submit


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """An inference service and a jobs service pushing to it, both with alice's and bob's tokens. Jobs are
    isolated where this machine can (root and bubblewrap: see test_jobs_isolation.py), else run as the
    service (--allow-unisolated): what is shown here holds either way."""
    from mlaas4hep_lab.data import datasets

    base = tmp_path_factory.mktemp("jobs-e2e")
    ds = datasets.higgs(base / "data", n_events=N_EVENTS, seed=11)
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    serve = ServerProcess(base / "store", tokens, base / "serve.log").start()
    jobs = JobsProcess(base / "state", tokens, ds.directory, base / "jobs.log", "--push-url", serve.url,
                       "--max-concurrent", "2", "--time-limit", "600", "--memory-limit", "8GB",
                       "--allow-unisolated")
    try:
        jobs.start()
        yield {"jobs": jobs, "serve": serve, "data": ds, "base": base}
    finally:
        jobs.stop()
        serve.stop()
        kill_leftover_workers(base / "state")


# ------------------------------------------------------------------------------------------ tests

def test_train_fetch_push_and_predict(stack):
    jobs, ds = stack["jobs"], stack["data"]
    job_id = _submit(jobs, _submission(ds, name="higgs-gbt", push={"name": "higgs-gbt"}))
    stack["job"] = job_id
    job = jobs.wait(job_id, lambda j: j["status"] == "succeeded", what="success")
    assert job["progress"] == 1.0 and job["bundle"] is True and job["error"] is None
    assert job["metrics"]["auc"] > 0.7 and job["metrics"]["backend"] == "sklearn"
    assert job["files"] == [str(p) for p in ds.files] and job["model"] == "sklearn"
    # the push runs after the job's success and writes the log's last line: wait for it, so the log is final
    job = jobs.wait(job_id, lambda j: j["push_result"] is not None, timeout=120, what="the push")
    # the log: the tail by default, or from an offset on, with where to continue
    status, tail = jobs.call("GET", f"/jobs/{job_id}/logs")
    assert status == 200 and "done: bundle" in tail["text"] and tail["next_offset"] == tail["size"]
    status, part = jobs.call("GET", f"/jobs/{job_id}/logs?offset=0&limit=100")
    assert part["offset"] == 0 and part["next_offset"] == 100 and tail["text"].endswith(
        jobs.call("GET", f"/jobs/{job_id}/logs?offset={tail['size'] - 50}")[1]["text"])
    assert jobs.call("GET", f"/jobs/{job_id}/logs?offset={tail['size']}")[1]["text"] == ""
    # the bundle as a tarball, loadable by the package
    tarball = stack["base"] / "fetched.tar.gz"
    tarball.write_bytes(_get_bytes(jobs.url, f"/jobs/{job_id}/bundle", TOKENS["alice"]))
    bundle = Bundle.load(tarball)
    assert bundle.name == "higgs-gbt" and bundle.manifest["backend"] == "sklearn"
    events = uproot.open(ds.files[0])["events"].arrays(bundle.input_branches(), entry_stop=300)
    local, _ = bundle.predict_arrays(events)
    # pushed with alice's own token, to the inference service: it predicts the same scores
    assert job["push_result"]["ok"] is True, job["push_result"]
    assert job["push_result"]["ref"] == "alice:higgs-gbt"
    assert not (jobs.state / "push_tokens" / job_id).exists(), "the token is deleted after the push"
    served = Client(stack["serve"].url, token=TOKENS["alice"]).predict_events(
        "higgs-gbt", {f: events[f] for f in events.fields})
    np.testing.assert_allclose(served, local, atol=1e-4)
    assert "higgs-gbt" not in {m.get("name") for m in Client(stack["serve"].url, token=TOKENS["bob"]).models()}


def _get_bytes(url: str, path: str, token: str) -> bytes:
    import http.client

    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "application/gzip"
        return resp.read()
    finally:
        conn.close()


def test_other_users_and_bad_requests_are_refused(stack):
    jobs, ds = stack["jobs"], stack["data"]
    job_id = stack.get("job") or _submit(jobs, _submission(ds))
    for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/logs"),
                         ("GET", f"/jobs/{job_id}/bundle"), ("DELETE", f"/jobs/{job_id}")):
        status, answer = jobs.call(method, path, user="bob")
        assert status == 404 and answer == {"error": f"no job {job_id!r}"}, (method, path, answer)
    assert job_id not in {j["id"] for j in jobs.call("GET", "/jobs", user="bob")[1]}
    assert job_id in {j["id"] for j in jobs.call("GET", "/jobs")[1]}
    assert jobs.job(job_id)["status"] == "succeeded", "bob's DELETE did nothing"
    assert jobs.call("GET", "/jobs", user=None)[0] == 401
    assert http_call(jobs.url, "GET", "/health")[0] == 200
    refusals = [
        (_submission(ds, files=["../secret.root", "x.root"]), 400, "'..' is not allowed"),
        (_submission(ds, files=["/etc/hostname", "x.root"]), 400, "outside the data roots"),
        (_submission(ds, files=["nothere.root", ds.files[1].name]), 400, "file not found"),
        (_submission(ds, params={"epochs": "three"}), 422, "key 'epochs'"),
        (_submission(ds, model="def model(:\n"), 422, "syntax error"),
    ]
    for body, code, message in refusals:
        status, answer = jobs.call("POST", "/submit", body)
        assert status == code and message in answer["error"], (body, answer)


def test_service_killed_mid_run_keeps_the_job(stack):
    jobs, ds = stack["jobs"], stack["data"]
    job_id = _submit(jobs, _slow_submission(ds, "restart"))
    before = jobs.wait(job_id, lambda j: j["detail"].get("events_seen", 0) > 0, timeout=120, what="training")
    pid = jobs.worker_pid(job_id)
    jobs.kill9()
    # the worker survives the service and keeps reporting its own state
    os.kill(pid, 0)
    deadline = time.monotonic() + 60
    while jobs.worker(job_id)["progress"] <= before["progress"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert jobs.worker(job_id)["progress"] > before["progress"], "the worker kept training while the service was down"
    jobs.start()
    after = jobs.job(job_id)
    assert after["status"] in ("running", "succeeded") and after["attempts"] == 1, after
    assert after["progress"] >= before["progress"] and after["created"] == before["created"]
    done = jobs.wait(job_id, lambda j: j["status"] == "succeeded", what="success after the restart")
    assert done["attempts"] == 1 and done["progress"] == 1.0, "the same worker finished the job"
    log = jobs.log_of(job_id)
    assert log.count("starting attempt") == 1 and "done: bundle" in log


def test_worker_dead_while_service_down_resumes_from_its_checkpoint(stack):
    jobs, ds = stack["jobs"], stack["data"]
    job_id = _submit(jobs, _slow_submission(ds, "resume"))
    jobs.wait(job_id, lambda j: j["detail"].get("epoch", 0) >= 1, timeout=120, what="the second pass")
    pid = jobs.worker_pid(job_id)
    jobs.kill9()
    os.killpg(pid, signal.SIGKILL)   # the machine lost the worker too
    jobs.start()
    done = jobs.wait(job_id, lambda j: j["status"] == "succeeded", what="success after resuming")
    assert done["attempts"] == 2, done
    log = jobs.log_of(job_id)
    assert "queued again, to resume from its last checkpoint" in log and "(resuming from the checkpoint)" in log
    resumed = log.split("starting attempt 2", 1)[1]
    first = re.search(r"chunk epoch (\d+) chunk (\d+)/", resumed)
    assert first and (int(first.group(1)), int(first.group(2))) >= (1, 1), \
        f"the resumed run starts after the last checkpoint, not from the beginning:\n{resumed[:2000]}"


def test_cancel_over_http_kills_the_worker_then_delete_removes_the_job(stack):
    jobs, ds = stack["jobs"], stack["data"]
    job_id = _submit(jobs, _slow_submission(ds, "cancel"))
    jobs.wait(job_id, lambda j: j["phase"] == "training", timeout=120, what="training")
    pid = jobs.worker_pid(job_id)
    status, answer = jobs.call("DELETE", f"/jobs/{job_id}")
    assert status == 200 and answer == {"id": job_id, "status": "cancelled", "deleted": False}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"worker {pid} still alive after the cancel")
    assert jobs.job(job_id)["status"] == "cancelled"
    for _ in range(50):   # the service reaps its child; then the finished job can be deleted
        status, answer = jobs.call("DELETE", f"/jobs/{job_id}")
        if status != 409:
            break
        time.sleep(0.2)
    assert status == 200 and answer["deleted"] is True, answer
    assert jobs.call("GET", f"/jobs/{job_id}")[0] == 404
    assert not (jobs.state / "jobs" / job_id).exists()
