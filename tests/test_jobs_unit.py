"""Unit tests of the jobs service: the jobs table, submission checks, the worker processes and their limits.

Jobs here run for real (``python -m mlaas4hep_lab.jobs.worker`` processes started by a :class:`JobService`
driven by hand, one ``tick()`` at a time) with small model.py files that misbehave on purpose: one takes
too much memory, one sleeps past the wall-clock limit with a child process, one burns CPU, one prints its
environment. The HTTP routes' refusals are checked on the app itself (in-process ASGI client); the
end-to-end file runs the real command on loopback.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlaas4hep_lab.auth import User
from mlaas4hep_lab.jobs import runner
from mlaas4hep_lab.jobs.db import JobDB
from mlaas4hep_lab.jobs.schemas import SubmitRequest
from mlaas4hep_lab.jobs.service import JobService
from mlaas4hep_lab.jobs.settings import Settings, parse_size
from mlaas4hep_lab.jobs.submission import check_submission, resolve_files
from mlaas4hep_lab.serving import ServingError

ALICE, BOB = User("alice", "static"), User("bob", "static")
TOKENS = {"alice": "alice-token-0123", "bob": "bob-token-4567"}
PACKAGE = Path(__file__).resolve().parent.parent / "mlaas4hep_lab" / "jobs"


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root with the Higgs-like example (small) and a file outside it."""
    from mlaas4hep_lab.data import datasets

    base = tmp_path_factory.mktemp("jobs-unit")
    ds = datasets.higgs(base / "data", n_events=2000, seed=3)
    (base / "outside.root").write_bytes((ds.files[0]).read_bytes())
    return ds.directory


def _request(data_root: Path, model: str = "sklearn", **changes) -> SubmitRequest:
    body = {"files": ["higgs_signal.root", "higgs_background.root"], "labels": [1, 0], "model": model,
            "params": {**json.loads((data_root / "params.json").read_text()), "chunk_size": 1000, "epochs": 1}}
    body.update(changes)
    return SubmitRequest.model_validate(body)


def _service(tmp_path: Path, data_root: Path, **kw) -> JobService:
    # the limits hold however the jobs are isolated: isolated where this machine can (as root with bubblewrap,
    # the job runs in its owner's account and sandbox), else as the test's own user
    kw.setdefault("poll_interval", 0.1)
    kw.setdefault("allow_unisolated", True)
    return JobService(Settings(state_dir=tmp_path / "state", data_roots=(data_root,), tokens=TOKENS, **kw))


def _wait_final(svc: JobService, job_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc.tick()
        job = svc.db.get(job_id)
        if not job.active:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {svc.db.get(job_id).status} after {timeout} s:\n"
                         + _log(svc, job_id))


def _wait_for(predicate, svc: JobService, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc.tick()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _log(svc: JobService, job_id: str) -> str:
    path = svc.log_path(svc.db.get(job_id))
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _descendant(svc: JobService, job_id: str, name: str) -> int | None:
    """The pid, as this test sees it, of the process ``name`` the job started (in a sandbox, the pid the job
    sees is another one: its PID namespace's)."""
    import psutil

    pid = svc.db.get(job_id).pid
    try:
        return next((p.pid for p in psutil.Process(pid).children(recursive=True) if p.name() == name), None)
    except psutil.Error:
        return None


def _submit(svc: JobService, data_root: Path, model_source: str, user: User = ALICE, **changes):
    sub = check_submission(_request(data_root, textwrap.dedent(model_source), **changes), svc.settings.data_roots)
    return svc.submit(user, sub, None, None, None)


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours counts as gone once reaped
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------ db

def test_db_round_trip_conditional_updates_and_wal(tmp_path):
    db = JobDB(tmp_path / "jobs.sqlite")
    job = db.create("alice", {"files": ["a.root"], "labels": [1.0]}, tmp_path / "j1", name="first",
                    push={"url": "http://x", "name": "m"})
    assert job.status == "queued" and job.spec["files"] == ["a.root"] and job.push["name"] == "m"
    assert len(job.id) == 16 and int(job.id, 16) >= 0
    # a decision only wins while the job is still in the expected state
    assert db.update(job.id, only_if=("queued",), status="running", pid=123, pid_started=1.5)
    assert not db.update(job.id, only_if=("queued",), status="cancelled")
    assert db.get(job.id).status == "running"
    db.update(job.id, metrics={"auc": 0.9}, detail={"chunk": 3}, progress=0.5)
    other = db.create("bob", {}, tmp_path / "j2")
    assert [j.id for j in db.list("alice")] == [job.id] and db.count("bob") == 1 and db.count() == 2
    assert db.pending_pushes() == []
    db.update(job.id, status="succeeded")
    assert [j.id for j in db.pending_pushes()] == [job.id]
    db.update(job.id, push_result={"ok": True})
    assert db.pending_pushes() == []
    with pytest.raises(KeyError, match="no column"):
        db.update(job.id, owner_name="x")
    db.close()
    # another connection (a restarted service) sees everything; the journal is WAL
    again = JobDB(tmp_path / "jobs.sqlite")
    row = again.get(job.id)
    assert row.metrics == {"auc": 0.9} and row.detail == {"chunk": 3} and row.progress == 0.5
    assert again.delete(other.id) and again.get(other.id) is None
    mode = sqlite3.connect(tmp_path / "jobs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert oct((tmp_path / "jobs.sqlite").stat().st_mode & 0o777) == oct(0o600)


def test_sizes_and_settings_checks(tmp_path):
    assert parse_size("4GB") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("2GiB") == 2 << 30
    assert parse_size(1000) == 1000 and parse_size("none") == 0 and parse_size("1.5g") == int(1.5 * 2**30)
    with pytest.raises(ValueError, match="memory_limit.*cannot read 'lots'"):
        parse_size("lots")
    with pytest.raises(ValueError, match="max_concurrent"):
        Settings(state_dir=tmp_path, max_concurrent=0)
    with pytest.raises(ValueError, match="data root .* is not a folder"):
        Settings(state_dir=tmp_path, data_roots=(tmp_path / "missing",))
    with pytest.raises(ValueError, match="push_url"):
        Settings(state_dir=tmp_path, push_url="ftp://x")
    s = Settings(state_dir=tmp_path / "rel", prefix="/services/jobs/", memory_limit="1GB", time_limit=100, threads=2)
    assert s.prefix == "/services/jobs" and s.memory_limit == 1 << 30 and s.state_dir.is_absolute()
    assert s.effective_cpu_limit == 100 * 2 + 60


# ------------------------------------------------------------------------------------------ submission checks

def _status(fn) -> tuple[int, str]:
    with pytest.raises(ServingError) as info:
        fn()
    return info.value.status, str(info.value)


def test_paths_are_confined_to_the_data_roots(data_root):
    roots = (data_root,)
    names = ("eos.example", "host", "cms-xrd-global.cern.ch")  # listed: not resolved (offline), see netpolicy
    ok = resolve_files(["higgs_signal.root", str(data_root / "higgs_background.root"),
                        "root://eos.example//store/x.root", "https://host/f.root"], roots, allowed_hosts=names)
    assert ok[0] == str(data_root / "higgs_signal.root") and ok[2].startswith("root://")
    cases = {
        "../outside.root": "'..' is not allowed",
        str(data_root / ".." / "outside.root"): "'..' is not allowed",
        str(data_root.parent / "outside.root"): "outside the data roots",
        "missing.root": "file not found below the data roots",
        "ftp://host/f.root": "scheme 'ftp' is not read",
        "file:///etc/passwd": "outside the data roots",
        "a; rm -rf /tmp/x.root": "file not found",   # a name, never a command
    }
    for entry, message in cases.items():
        status, text = _status(lambda entry=entry: resolve_files([entry], roots))
        assert status == 400 and message in text and repr(entry)[1:-1][:10] in text, (entry, text)
    # a symbolic link inside a root that points outside it is followed and refused
    link = data_root / "link.root"
    link.symlink_to(data_root.parent / "outside.root")
    try:
        assert "outside the data roots" in _status(lambda: resolve_files(["link.root"], roots))[1]
    finally:
        link.unlink()
    # without data roots only URLs are read; a redirector turns unknown paths into URLs (files.txt's rule)
    assert "reads no local files" in _status(lambda: resolve_files(["/store/x.root"], ()))[1]
    assert resolve_files(["/store/x.root"], (), "root://cms-xrd-global.cern.ch", names) == \
        ["root://cms-xrd-global.cern.ch//store/x.root"]


def test_bad_params_preproc_model_and_labels_are_4xx_naming_the_problem(data_root):
    roots = (data_root,)
    cases = [
        ({"params": {"epochs": "many"}}, "params: key 'epochs': must be an integer"),
        ({"params": {"split": [0.5, 0.6]}}, "key 'split'"),
        ({"labels": [1]}, "1 labels for 2 files"),
        ({"files": []}, "no file given"),
        ({"preproc": {"new_branch": {"x": {"def": "__import__('os').system('id')", "type": "flat"}}}},
         "preproc: invalid expression"),
        ({"model": "def model(idim):\n    return (\n"}, "model.py: syntax error at line"),
        ({"model": "import os\n\ndef build():\n    return 1\n"}, "defines no function `model`"),
        ({"model": "kerass"}, "neither a template"),
    ]
    for changes, message in cases:
        status, text = _status(lambda changes=changes: check_submission(_request(data_root, **changes), roots))
        assert status == 422 and message in text, (changes, text)
    # unknown params keys are accepted with a warning that names them
    sub = check_submission(_request(data_root, params={"chunk_size": 500, "epochz": 3}), roots)
    assert any("epochz" in w for w in sub.warnings) and "epochz" not in sub.params
    # files.txt / labels.txt text works as the original files did
    sub = check_submission(_request(data_root, files="# comment\nhiggs_signal.root\n\nhiggs_background.root\n",
                                    labels="1\n0\n"), roots)
    assert sub.labels == [1.0, 0.0] and sub.files[1].endswith("higgs_background.root")
    assert sub.model_kind == "sklearn" and "def model" in sub.model_source
    # a regression needs no labels, the other tasks do; multi-class labels are class indices
    sub = check_submission(_request(data_root, labels=None, model="sklearn_regression",
                                    params={"task": "regression", "target": "PRI_met"}), roots)
    assert sub.labels == [0.0, 0.0] and sub.params["task"] == "regression"
    status, text = _status(lambda: check_submission(_request(data_root, labels=None), roots))
    assert status == 422 and "the binary task needs one label per file" in text
    sub = check_submission(_request(data_root, labels=[2, 0], params={"task": "multiclass"}), roots)
    assert sub.labels == [2.0, 0.0]


def test_http_refusals_and_ownership_on_the_app(tmp_path, data_root):
    from fastapi.testclient import TestClient

    from mlaas4hep_lab.jobs.app import create_app

    settings = Settings(state_dir=tmp_path / "state", data_roots=(data_root,), tokens=TOKENS, poll_interval=0.2,
                        max_concurrent=1, max_body_bytes=64 * 1024, allow_unisolated=True)
    app = create_app(settings)
    alice, bob = ({"Authorization": f"Bearer {TOKENS[u]}"} for u in ("alice", "bob"))
    body = _request(data_root, "sklearn").model_dump()
    with TestClient(app) as http:
        assert http.get("/health").json()["live"] is True
        assert http.get("/jobs").status_code == 401 and "needs a token" in http.get("/jobs").json()["error"]
        assert http.get("/jobs", headers={"Authorization": "Bearer nope-nope-nope"}).status_code == 401
        r = http.post("/submit", content=b"{not json", headers=alice)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = http.post("/submit", json={**body, "unknown": 1}, headers=alice)
        assert r.status_code == 422 and "unknown" in r.json()["error"]
        r = http.post("/submit", json={**body, "files": ["../../etc/passwd", "x.root"]}, headers=alice)
        assert r.status_code == 400 and "'..' is not allowed" in r.json()["error"]
        r = http.post("/submit", json={**body, "params": {"chunk_size": -5}}, headers=alice)
        assert r.status_code == 422 and "chunk_size" in r.json()["error"]
        r = http.post("/submit", json={**body, "model": "x = 1\n" * 20_000}, headers=alice)
        assert r.status_code == 413 and "larger than this service's limit" in r.json()["error"]
        r = http.post("/submit", json={**body, "push": {"name": "m"}}, headers=alice)
        assert r.status_code == 400 and "no inference service configured" in r.json()["error"]
        # a real job, queued behind nothing: alice sees it, bob gets 404 everywhere
        r = http.post("/submit", json={**body, "name": "mine"}, headers=alice)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/logs"),
                             ("GET", f"/jobs/{job_id}/bundle"), ("DELETE", f"/jobs/{job_id}")):
            r = http.request(method, path, headers=bob)
            assert r.status_code == 404 and r.json()["error"] == f"no job {job_id!r}", (method, path, r.text)
        assert http.get("/jobs", headers=bob).json() == []
        assert [j["id"] for j in http.get("/jobs", headers=alice).json()] == [job_id]
        assert http.get(f"/jobs/{job_id}/bundle", headers=alice).status_code == 409
        r = http.delete(f"/jobs/{job_id}", headers=alice)
        assert r.status_code == 200 and r.json() == {"id": job_id, "status": "cancelled", "deleted": False}
        svc = app.state.service
        _wait_for(lambda: not runner.is_alive(svc.db.get(job_id).pid, svc.db.get(job_id).pid_started), svc,
                  what="the cancelled worker to go")
        r = http.delete(f"/jobs/{job_id}", headers=alice)
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert http.get(f"/jobs/{job_id}", headers=alice).status_code == 404
        assert not (settings.jobs_dir / job_id).exists()
        schema = http.get("/openapi.json", headers=alice).json()
        assert {"/submit", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/logs", "/jobs/{job_id}/bundle",
                "/health"} <= set(schema["paths"])
        assert "SubmitRequest" in schema["components"]["schemas"]


def test_hub_users_need_the_submit_scope(tmp_path, data_root):
    svc = _service(tmp_path, data_root)
    hub = User("carol", "hub", scopes=("access:services!service=jobs",))
    with pytest.raises(ServingError, match="custom:jobs:submit") as info:
        svc.check_submit_scope(hub)
    assert info.value.status == 403
    svc.check_submit_scope(User("carol", "hub", scopes=("custom:jobs:submit",)))
    svc.check_submit_scope(User("carol", "hub", scopes=("custom:jobs:submit!user=carol",)))
    svc.check_submit_scope(ALICE)   # static tokens: holding one is the authorisation
    assert svc.is_admin(User("root", "hub", claims={"admin": True})) and not svc.is_admin(ALICE)


# ------------------------------------------------------------------------------------------ processes and limits

MEMORY_HOG = """
    def model():
        hog = bytearray(3 * 2**30)      # 3 GiB, over the 1.5 GiB limit
        return hog
"""

SLEEPER_WITH_CHILD = """
    import subprocess, time
    from pathlib import Path

    def model():
        child = subprocess.Popen(["sleep", "300"])
        Path("child.pid").write_text(str(child.pid))
        time.sleep(300)
"""

CPU_BURNER = """
    def model():
        n = 0
        while True:
            n += 1
"""

ENV_DUMP = """
    import json, os
    from pathlib import Path

    def model():
        Path("env.json").write_text(json.dumps(dict(os.environ)))
        return None
"""


def test_memory_limit_fails_the_job_with_a_clear_error(tmp_path, data_root):
    svc = _service(tmp_path, data_root, memory_limit="1.5GB", time_limit=120)
    job = _wait_final(svc, _submit(svc, data_root, MEMORY_HOG).id)
    assert job.status == "failed", _log(svc, job.id)
    assert "memory limit of 1.5 GiB exceeded" in job.error and "MemoryError" in job.error, job.error
    assert "MemoryError" in _log(svc, job.id)


def test_wall_clock_limit_kills_the_process_group(tmp_path, data_root):
    svc = _service(tmp_path, data_root, time_limit=8, kill_grace=1.0)
    job = _submit(svc, data_root, SLEEPER_WITH_CHILD)
    folder = svc.settings.jobs_dir / job.id
    child_pid = _wait_for(lambda: (folder / "child.pid").exists() and _descendant(svc, job.id, "sleep"), svc,
                          what="the job's child process")
    job = _wait_final(svc, job.id)
    assert job.status == "failed" and "time limit of 8 s exceeded (wall clock)" in job.error, job.error
    assert _gone(job.pid) and _gone(child_pid), "the worker and its child must be killed with their group"
    assert "time limit of 8 s exceeded" in _log(svc, job.id)


def test_the_time_limit_spans_every_attempt_of_a_job(tmp_path, data_root):
    # a job resumed after its worker died has only what its earlier attempts left of the limit
    svc = _service(tmp_path, data_root, time_limit=8, kill_grace=1.0)
    job = _submit(svc, data_root, SLEEPER_WITH_CHILD)
    svc.db.update(job.id, used_seconds=6.0)
    job = _wait_final(svc, job.id)
    assert job.status == "failed", _log(svc, job.id)
    assert "time limit of 8 s exceeded (wall clock, 6 s of it in earlier attempts)" in job.error, job.error
    assert job.finished - job.started < 6.0, "the attempt got the whole limit again"


def test_an_interrupted_attempt_counts_until_its_last_sign_of_life(tmp_path, data_root):
    settings = Settings(state_dir=tmp_path / "state", data_roots=(data_root,), tokens=TOKENS, max_resumes=1)
    db = JobDB(settings.db_path)
    job = db.create("alice", {}, settings.jobs_dir / "j")
    folder = settings.jobs_dir / "j"
    (folder / runner.OUTPUT_DIR / "checkpoint").mkdir(parents=True)
    (folder / runner.OUTPUT_DIR / "checkpoint" / "state.json").write_text("{}")
    now = time.time()
    db.update(job.id, status="running", pid=2**22 - 3, pid_started=1.0, attempts=1, started=now - 500,
              used_seconds=40.0)
    db._conn.execute("UPDATE jobs SET updated = ? WHERE id = ?", (now - 450, job.id))
    runner.write_json_atomic(folder / runner.STATUS_FILE, {"status": "running", "attempt": 1})
    os.utime(folder / runner.STATUS_FILE, (now - 300, now - 300))  # its last report; then the service was down
    db.close()
    svc = JobService(settings)
    svc._watch(svc.db.get(job.id))
    job = svc.db.get(job.id)
    assert job.status == "queued" and job.resume, job
    assert 239 <= job.used_seconds <= 242  # 40 before + 200 until the last report, not 500 until now


def test_a_jobs_table_of_an_older_version_gains_the_new_columns(tmp_path):
    from mlaas4hep_lab.jobs import db as jobs_db

    old_schema = "\n".join(line for line in jobs_db._SCHEMA.splitlines() if "used_seconds" not in line)
    conn = sqlite3.connect(tmp_path / "jobs.sqlite")
    conn.executescript(old_schema)
    conn.execute("INSERT INTO jobs (id, owner, status, created, spec, job_dir, updated) "
                 "VALUES ('abc', 'alice', 'queued', 1.0, '{}', '/x', 1.0)")
    conn.commit()
    conn.close()
    db = JobDB(tmp_path / "jobs.sqlite")
    assert db.get("abc").used_seconds == 0.0
    assert db.update("abc", used_seconds=12.5) and db.get("abc").used_seconds == 12.5


def test_cpu_limit_fails_the_job(tmp_path, data_root):
    svc = _service(tmp_path, data_root, cpu_limit=4, time_limit=120)
    job = _wait_final(svc, _submit(svc, data_root, CPU_BURNER).id)
    assert job.status == "failed", _log(svc, job.id)
    assert "CPU time limit of 4 s exceeded" in job.error, job.error


def test_cancel_kills_the_process_group_and_queued_jobs_wait(tmp_path, data_root):
    svc = _service(tmp_path, data_root, max_concurrent=1, time_limit=300, kill_grace=1.0)
    first = _submit(svc, data_root, SLEEPER_WITH_CHILD)
    second = _submit(svc, data_root, SLEEPER_WITH_CHILD)
    folder = svc.settings.jobs_dir / first.id
    child_pid = _wait_for(lambda: (folder / "child.pid").exists() and _descendant(svc, first.id, "sleep"), svc,
                          what="the job's child process")
    assert svc.db.get(second.id).status == "queued", "the concurrency cap holds the second job back"
    worker_pid = svc.db.get(first.id).pid
    cancelled = svc.cancel(svc.db.get(first.id))
    assert cancelled.status == "cancelled"
    assert _gone(worker_pid) and _gone(child_pid)
    # the slot is free: the queued job starts; a queued job can be cancelled too
    _wait_for(lambda: svc.db.get(second.id).status == "running", svc, what="the queued job to start")
    svc.cancel(svc.db.get(second.id))
    assert svc.db.get(second.id).status == "cancelled" and _gone(svc.db.get(second.id).pid)
    svc.tick()
    assert svc.db.get(first.id).status == "cancelled", "a late report must not overwrite the cancel"
    assert "cancelled by the user" in _log(svc, first.id)


def test_workers_get_no_service_secrets_and_capped_threads(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-secret-token")
    monkeypatch.setenv("MLAAS4HEP_OIDC_ISSUER", "https://iam.example")
    svc = _service(tmp_path, data_root, threads=2, time_limit=120)
    job = _wait_final(svc, _submit(svc, data_root, ENV_DUMP).id)
    assert job.status == "failed" and "returned None" in job.error, job.error
    env = json.loads((svc.settings.jobs_dir / job.id / "env.json").read_text())
    assert "JUPYTERHUB_API_TOKEN" not in env and "MLAAS4HEP_OIDC_ISSUER" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["PATH"] == os.environ["PATH"]
    folder = svc.settings.jobs_dir / job.id
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    assert oct((folder / "model.py").stat().st_mode & 0o777) == oct(0o600)


def test_a_recycled_pid_is_not_the_job(tmp_path):
    me = os.getpid()
    import psutil

    started = psutil.Process(me).create_time()
    assert runner.is_alive(me, started)
    assert not runner.is_alive(me, started - 1000), "same pid, other start time: another process"
    assert not runner.kill_group(me, started - 1000, signal.SIGTERM), "never signal someone else's group"
    assert not runner.is_alive(None, None)


def test_restart_marks_dead_workers_interrupted_and_reattaches_live_ones(tmp_path, data_root):
    settings = Settings(state_dir=tmp_path / "state", data_roots=(data_root,), tokens=TOKENS, max_concurrent=1)
    db = JobDB(settings.db_path)
    (settings.jobs_dir).mkdir(parents=True)
    # a job whose worker died (no checkpoint), one whose pid now belongs to another process, one alive
    dead = db.create("alice", {}, settings.jobs_dir / "dead")
    recycled = db.create("alice", {}, settings.jobs_dir / "recycled")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    import psutil

    alive = db.create("alice", {}, settings.jobs_dir / "alive")
    try:
        for job in (dead, recycled, alive):
            (settings.jobs_dir / Path(job.job_dir).name).mkdir()
        db.update(dead.id, status="running", pid=2**22 - 3, pid_started=1.0, attempts=1, started=time.time())
        db.update(recycled.id, status="running", pid=os.getpid(), pid_started=1.0, attempts=1, started=time.time())
        db.update(alive.id, status="running", pid=sleeper.pid, pid_started=psutil.Process(sleeper.pid).create_time(),
                  attempts=1, started=time.time())
        db.close()
        svc = JobService(settings)     # the restarted service
        svc.tick()
        for job_id in (dead.id, recycled.id):
            job = svc.db.get(job_id)
            assert job.status == "interrupted" and "ended without reporting a result" in job.error, job
            assert "no checkpoint to resume from" in job.error
        assert svc.db.get(alive.id).status == "running", "a live worker is watched again, not touched"
        assert sleeper.poll() is None
        # its report is picked up like any other
        runner.write_json_atomic(settings.jobs_dir / "alive" / runner.STATUS_FILE,
                                 {"status": "running", "attempt": 1, "progress": 0.4, "phase": "training",
                                  "detail": {"chunk": 2}, "metrics": {"val_auc": 0.8}})
        svc.tick()
        job = svc.db.get(alive.id)
        assert job.progress == 0.4 and job.metrics == {"val_auc": 0.8} and job.detail == {"chunk": 2}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_shell_anywhere_in_the_service():
    """Processes are started from argument lists only; nothing reaches a shell or eval."""
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                raise AssertionError(f"{path.name}: shell= keyword")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen", "spawnl", "execl"):
                raise AssertionError(f"{path.name}: os.{node.attr}")
            if isinstance(node, ast.Name) and node.id in ("eval", "exec"):
                raise AssertionError(f"{path.name}: {node.id}")
    text = (PACKAGE / "runner.py").read_text()
    assert '[sys.executable, "-m", "mlaas4hep_lab.jobs.worker", str(job_dir)]' in text
