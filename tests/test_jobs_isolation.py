"""Job isolation, shown on the real jobs service (see mlaas4hep_lab/jobs/isolation.py).

A probe ``model.py`` submitted by alice tries, when it is imported, each thing a job must not do: read the
service's database, its tokens file, its state folder, bob's job folder and push token (bob has a job
running, with a push to do), the inference service's store, the service's command line and environment;
signal bob's worker and the service; write outside its folder. It writes what it saw into ``probe.json`` in
its own folder, then trains to success. The test then checks each answer, from outside. The service runs
as root with bubblewrap (``isolation auto`` = ``users+bwrap``); without those the test is skipped, unless
MLAAS4HEP_REQUIRE_SERVERS=1 (CI), where it fails.

The other tests need neither: a service that cannot isolate refuses jobs with a 503 saying why, unless
``--allow-unisolated``; the sandbox's mounts are ordered so that hiding wins where it must; the service
reads a job's folder without following the links a hostile job plants there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from mlaas4hep_lab.auth import User
from mlaas4hep_lab.jobs import runner
from mlaas4hep_lab.jobs.isolation import Account, Isolation, account_name
from mlaas4hep_lab.jobs.service import JobService
from mlaas4hep_lab.jobs.settings import Settings
from mlaas4hep_lab.jobs.submission import check_submission

try:
    from jobs_support import TOKENS, JobsProcess, kill_leftover_workers, slow_submission, submission, submit
    from servers import REQUIRE_ENV
    from serving_support import http_call
except ImportError:  # tests/ imported as a package
    from tests.jobs_support import (
        TOKENS,
        JobsProcess,
        kill_leftover_workers,
        slow_submission,
        submission,
        submit,
    )
    from tests.servers import REQUIRE_ENV
    from tests.serving_support import http_call

pytestmark = [pytest.mark.serving, pytest.mark.slow]

# what alice's job tries when its model.py is imported; TARGETS is filled in by the test (JSON, no code)
PROBE = '''
import json
import os
from pathlib import Path

TARGETS = json.loads(r"""{targets}""")
seen = {{}}


def _try(name, action):
    try:
        value = action()
        seen[name] = {{"ok": True, "value": value if isinstance(value, (str, int, list, type(None))) else repr(value)}}
    except Exception as err:
        seen[name] = {{"ok": False, "error": f"{{type(err).__name__}}: {{err}}"}}


def _read(path):
    with open(path, "rb") as f:
        return f.read(300).decode("latin-1")


def _write(path):
    Path(path).write_text("planted by a job")
    return "written"


_try("uid", os.getuid)
_try("groups", os.getgroups)
_try("database", lambda: _read(TARGETS["database"]))
_try("tokens", lambda: _read(TARGETS["tokens"]))
_try("state", lambda: sorted(os.listdir(TARGETS["state"])))
_try("jobs", lambda: sorted(os.listdir(TARGETS["jobs"])))
_try("logs", lambda: sorted(os.listdir(TARGETS["logs"])))
_try("other_job", lambda: sorted(os.listdir(TARGETS["other_job"])))
_try("other_model", lambda: _read(TARGETS["other_job"] + "/model.py"))
_try("push_tokens", lambda: sorted(os.listdir(TARGETS["push_tokens"])))
_try("push_token", lambda: _read(TARGETS["push_token"]))
_try("store", lambda: sorted(os.listdir(TARGETS["store"])))
_try("store_secret", lambda: _read(TARGETS["store_secret"]))
_try("cmdline", lambda: _read(f"/proc/{{TARGETS['service_pid']}}/cmdline"))
_try("environ", lambda: _read(f"/proc/{{TARGETS['service_pid']}}/environ"))
_try("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
_try("signal_service", lambda: os.kill(TARGETS["service_pid"], 0))
for pid in TARGETS["other_pids"]:
    _try(f"signal_{{pid}}", lambda pid=pid: os.kill(pid, 0))
_try("write_data", lambda: _write(TARGETS["data"] + "/planted.txt"))
_try("write_package", lambda: _write(TARGETS["package"] + "/planted.txt"))
_try("write_tmp", lambda: _write("/tmp/planted.txt"))
_try("read_data", lambda: len(_read(TARGETS["data_file"])))
_try("secret_env", lambda: sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k))
Path("probe.json").write_text(json.dumps(seen, indent=1))   # its own folder: allowed
'''

TEMPLATE = Path(__file__).resolve().parent.parent / "mlaas4hep_lab" / "training" / "templates" / "sklearn_gbt.py"
PACKAGE = Path(__file__).resolve().parent.parent / "mlaas4hep_lab"


def _require_isolation() -> None:
    why = "the test runs as root" if os.geteuid() != 0 else None
    if why is None and shutil.which("bwrap") is None:
        why = "bubblewrap is installed (apt-get install bubblewrap)"
    if why is None:
        return
    msg = f"job isolation (users+bwrap) needs that {why}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1 makes this a failure instead of a skip)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def outside_tmp():
    """A folder outside /tmp (the sandbox hides /tmp whole): the state, tokens and store there are hidden by
    their own rules, not by that one."""
    parent = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="mlaas4hep-isolation-", dir=parent))
    try:
        yield base
    finally:
        kill_leftover_workers(base / "state")
        shutil.rmtree(base, ignore_errors=True)


def test_a_job_sees_only_its_own_folder(outside_tmp):
    _require_isolation()
    from mlaas4hep_lab.data import datasets

    base = outside_tmp
    ds = datasets.higgs(base / "data", n_events=6000, seed=5)
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    os.chmod(tokens, 0o644)   # readable by every account on purpose: the sandbox must hide it anyway
    store = base / "store"
    (store / "alice").mkdir(parents=True)
    (store / "alice" / "secret.txt").write_text("a model of alice's")
    jobs = JobsProcess(base / "state", tokens, ds.directory, base / "jobs.log", "--max-concurrent", "2",
                       "--time-limit", "600", "--push-url", "http://127.0.0.1:9/services/tfaas",
                       "--hide", str(store))
    try:
        jobs.start()
        status, health = http_call(jobs.url, "GET", "/health")
        assert status == 200 and health["isolation"] == "users+bwrap", (health, jobs.log_text()[-2000:])
        # bob's job: slow, with a push to do, so that it runs and its push token is kept meanwhile
        body = slow_submission(ds, "bob-slow", push={"name": "bob-model"})
        body["params"]["epochs"] = 12
        bob_id = submit(jobs, body, user="bob")
        jobs.wait(bob_id, lambda j: j["phase"] == "training", timeout=120, what="bob's job training")
        import psutil

        bob_pid = jobs.worker_pid(bob_id)
        bob_pids = [bob_pid, *(p.pid for p in psutil.Process(bob_pid).children(recursive=True))]
        state = jobs.state
        push_token = state / "push_tokens" / bob_id
        assert push_token.read_text() == TOKENS["bob"] and stat.S_IMODE(push_token.stat().st_mode) == 0o600
        assert not (state / "jobs" / bob_id / "push_token").exists(), "no token in the job's folder"
        targets = {
            "database": str(state / "jobs.sqlite"), "tokens": str(tokens), "state": str(state),
            "jobs": str(state / "jobs"), "logs": str(state / "logs"), "other_job": str(state / "jobs" / bob_id),
            "push_tokens": str(state / "push_tokens"), "push_token": str(push_token), "store": str(store),
            "store_secret": str(store / "alice" / "secret.txt"), "service_pid": jobs.proc.pid,
            "other_pids": bob_pids, "data": str(ds.directory), "data_file": str(ds.files[0]),
            "package": str(PACKAGE),
        }
        probe = PROBE.format(targets=json.dumps(targets)) + "\n" + TEMPLATE.read_text()
        alice_id = submit(jobs, submission(ds, probe, name="probe"))
        done = jobs.wait(alice_id, lambda j: j["status"] == "succeeded", timeout=300, what="the probe job's success")
        assert done["metrics"]["auc"] > 0.6 and done["bundle"] is True
        assert jobs.job(bob_id, user="bob")["status"] == "running", "bob's job was not disturbed"

        folder = state / "jobs" / alice_id
        seen = json.loads((folder / "probe.json").read_text())
        text = json.dumps(seen)
        for token in TOKENS.values():
            assert token not in text, f"a token reached the job: {seen}"
        # who it ran as: its own account, neither the service's (root) nor bob's jobs'
        alice_uid, bob_uid = folder.stat().st_uid, (state / "jobs" / bob_id).stat().st_uid
        assert seen["uid"]["value"] == alice_uid and (folder / "probe.json").stat().st_uid == alice_uid
        assert alice_uid not in (0, os.getuid(), bob_uid) and bob_uid != 0, (alice_uid, bob_uid)
        import pwd

        assert pwd.getpwuid(alice_uid).pw_name == account_name("alice")
        assert pwd.getpwuid(bob_uid).pw_name == account_name("bob")
        assert seen["groups"]["value"] == [], "no supplementary groups"
        # invisible or unreadable: every answer an error, or an empty folder
        for name in ("database", "other_job", "other_model", "push_tokens", "push_token", "logs", "store_secret",
                     "cmdline", "environ", "signal_service", *(f"signal_{pid}" for pid in bob_pids),
                     "write_data", "write_package"):
            assert seen[name]["ok"] is False, (name, seen[name])
        assert seen["tokens"]["ok"] is False or seen["tokens"]["value"] == "", seen["tokens"]
        assert seen["store"]["ok"] is False or seen["store"]["value"] == [], seen["store"]
        assert seen["state"]["ok"] is False or set(seen["state"]["value"]) <= {"jobs"}, seen["state"]
        assert seen["jobs"]["value"] == [alice_id], "only its own folder in the service's jobs folder"
        assert jobs.proc.pid not in seen["pids"]["value"] and len(seen["pids"]["value"]) <= 6, seen["pids"]
        assert seen["secret_env"]["value"] == []
        # what a job needs still works: its inputs, a private /tmp, its own folder
        assert seen["read_data"]["ok"] and seen["write_tmp"]["ok"], seen
        assert not (ds.directory / "planted.txt").exists() and not (PACKAGE / "planted.txt").exists()
        assert not Path("/tmp/planted.txt").exists(), "the job's /tmp is its own"
        # the service's own state stayed private; bob's job is cancelled, its token forgotten
        assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == 0
        assert stat.S_IMODE((state / "jobs.sqlite").stat().st_mode) == 0o600
        assert jobs.call("DELETE", f"/jobs/{bob_id}", user="bob")[1]["status"] == "cancelled"
        assert not push_token.exists()
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in bob_pids):
            assert time.monotonic() < deadline, "bob's cancelled job is still running"
            time.sleep(0.2)
    finally:
        jobs.stop()


def test_a_service_that_cannot_isolate_refuses_jobs_unless_allowed(tmp_path):
    from mlaas4hep_lab.data import datasets

    ds = datasets.higgs(tmp_path / "data", n_events=2000, seed=2)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    # the real command, isolation off and not allowed: a warning at start-up, 503 with the reason on submit
    jobs = JobsProcess(tmp_path / "state", tokens, ds.directory, tmp_path / "jobs.log", "--isolation", "none")
    try:
        jobs.start()
        assert http_call(jobs.url, "GET", "/health")[1]["isolation"] == "none"
        status, answer = jobs.call("POST", "/submit", submission(ds))
        assert status == 503, answer
        assert "cannot isolate training jobs" in answer["error"] and "isolation='none'" in answer["error"]
        assert "--allow-unisolated" in answer["error"] and "bubblewrap" in answer["error"]
        assert jobs.call("GET", "/jobs")[1] == [], "nothing was queued"
    finally:
        jobs.stop()
    log = jobs.log_text()
    assert "WARNING: training jobs are not isolated" in log and "--allow-unisolated" in log, log[-2000:]
    # allowed: the same job runs, as the service itself
    svc = JobService(Settings(state_dir=tmp_path / "state2", data_roots=(ds.directory,), tokens=TOKENS,
                              isolation="none", allow_unisolated=True, poll_interval=0.1))
    assert svc.isolation.mode == "none" and svc.isolation.ready
    sub = check_submission(_request(ds), svc.settings.data_roots)
    job = svc.submit(User("alice", "static"), sub, None, None, None)
    deadline = time.monotonic() + 180
    while svc.db.get(job.id).active and time.monotonic() < deadline:
        svc.tick()
        time.sleep(0.1)
    job = svc.db.get(job.id)
    assert job.status == "succeeded", (job.error, svc.log_path(job).read_text()[-2000:])
    assert (Path(job.job_dir) / runner.STATUS_FILE).stat().st_uid == os.getuid()
    assert Path(job.bundle).parent == svc.settings.state_dir / "bundles"


def _request(ds):
    from mlaas4hep_lab.jobs.schemas import SubmitRequest

    return SubmitRequest.model_validate(submission(ds))


def test_hiding_wins_over_the_mounts_it_must_win_over():
    iso = Isolation("users+bwrap", "auto", True, bwrap="bwrap", setpriv="setpriv",
                    hidden=(Path("/srv/hub"), Path("/data/secret")), hidden_files=(Path("/etc/tokens.json"),),
                    readable=(Path("/data"), Path("/srv/hub/public")), runtime=(Path("/root/venv"),),
                    blocked=(Path("/root"),))
    args = iso.sandbox_args(Path("/srv/hub/jobs/jobs/abc"))
    order = [(args[i], args[i + 1]) for i in range(len(args) - 1)
             if args[i] in ("--tmpfs", "--ro-bind", "--bind", "--dir")]

    def at(op, path):
        return order.index((op, path))

    assert args[:7] == ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    assert at("--tmpfs", "/srv/hub") < at("--ro-bind", "/srv/hub/public"), "a data root inside hidden state"
    assert at("--ro-bind", "/data") < at("--tmpfs", "/data/secret"), "a hidden folder inside a data root"
    assert at("--tmpfs", "/root") < at("--ro-bind", "/root/venv"), "Python below a folder jobs cannot pass"
    assert ("--ro-bind", "/dev/null") in order and "/etc/tokens.json" in args
    # the job folder comes last, writable, with its parents made passable on the hidden state's tmpfs
    assert order[-1] == ("--bind", "/srv/hub/jobs/jobs/abc")
    assert at("--dir", "/srv/hub/jobs") < at("--dir", "/srv/hub/jobs/jobs") < len(order) - 1
    assert "--die-with-parent" not in args and "--new-session" not in args
    assert {"--unshare-pid", "--unshare-ipc"} <= set(args) and "--unshare-net" not in args
    argv, env, kwargs = iso.wrap(["python", "-m", "w"], Path("/srv/hub/jobs/jobs/abc"), Account("mlj-x", 990, 990),
                                 {"HOME": "/root", "PATH": "/usr/bin"})
    inner = argv[argv.index("--") + 1:]
    assert inner[:7] == ["setpriv", "--reuid=990", "--regid=990", "--clear-groups", "--no-new-privs",
                         "--inh-caps=-all", "--"] and inner[7:] == ["python", "-m", "w"]
    assert env["HOME"] == "/tmp" and env["USER"] == "mlj-x" and kwargs == {"umask": 0o077}
    # accounts without a sandbox: the same command, switched to the account (no groups) before exec
    users = Isolation("users", "users", True)
    argv, env, kwargs = users.wrap(["python", "-m", "w"], Path("/j/abc"), Account("mlj-x", 990, 991),
                                   {"HOME": "/root", "TMPDIR": "/var/tmp/svc"})
    assert argv == ["python", "-m", "w"] and env["HOME"] == "/j/abc" and "TMPDIR" not in env
    assert kwargs == {"umask": 0o077, "user": 990, "group": 991, "extra_groups": []}


def test_the_service_reads_a_job_folder_without_following_its_links(tmp_path):
    folder = tmp_path / "job"
    (folder / "output").mkdir(parents=True)
    secret = tmp_path / "tokens.json"
    secret.write_text(json.dumps({"status": "succeeded", "alice": TOKENS["alice"]}))
    (folder / "output" / "bundle.tar.gz").write_bytes(b"a bundle")
    fd = runner.open_in(folder, "output/bundle.tar.gz")
    assert os.read(fd, 100) == b"a bundle"
    os.close(fd)
    (folder / "status.json").symlink_to(secret)
    (folder / "leak.tar.gz").symlink_to(secret)
    (folder / "linked").symlink_to(tmp_path)
    os.link(secret, folder / "hard.tar.gz")
    os.mkfifo(folder / "fifo.tar.gz")
    assert runner.read_status(folder) == {}, "status.json as a link to another file is not read"
    for relative, message in (("leak.tar.gz", "Too many levels"), ("linked/tokens.json", "Not a directory"),
                              ("../tokens.json", "not a path inside"), ("/etc/passwd", "not a path inside"),
                              ("hard.tar.gz", "has 2 links"), ("fifo.tar.gz", "not a regular file"),
                              ("output", "not a regular file")):
        with pytest.raises(OSError, match=message):
            os.close(runner.open_in(folder, relative))
    # a hostile job reports success with its bundle as a link to the tokens file: it fails, nothing is served
    svc = JobService(Settings(state_dir=tmp_path / "state", tokens=TOKENS, isolation="none", allow_unisolated=True))
    job = svc.db.create("alice", {}, folder)
    svc.db.update(job.id, status="running", attempts=1, started=time.time())
    svc._finish(svc.db.get(job.id), {"status": "succeeded", "bundle": "leak.tar.gz", "attempt": 1})
    job = svc.db.get(job.id)
    assert job.status == "failed" and job.bundle is None and "without a bundle" in job.error, job


def test_the_isolation_setting_is_checked():
    with pytest.raises(ValueError, match="unknown isolation 'sandbox'; one of auto, users\\+bwrap"):
        Settings(state_dir="/tmp/x", isolation="sandbox")
    with pytest.raises(ValueError, match="hide_paths.*does not exist"):
        Settings(state_dir="/tmp/x", hide_paths=("/nonexistent/store",))
    # an account name useradd takes whatever the hub user name holds: mlj- and 12 hex digits
    for name in ("alice", "x" * 500, "a:b,c\n", "élodie@cern.ch"):
        assert re.fullmatch(r"mlj-[0-9a-f]{12}", account_name(name)), name
    assert account_name("alice") != account_name("Alice")
