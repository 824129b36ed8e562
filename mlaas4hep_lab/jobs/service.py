"""What the routes share (:class:`JobService`): the jobs table, the job folders, the worker processes, the
queue, the watchdog and the pushes to the inference service.

Life of a job: ``submit`` checks it, writes its folder (``model.py``; the push token goes to the service's
own ``push_tokens/``) and a ``queued`` row; the monitor (every ``poll_interval``) starts queued jobs while
fewer than ``max_concurrent`` run, copies each worker's ``status.json`` into the table, applies the
wall-clock limit, notices ended workers, and pushes bundles. All state is in the table and the job folders, so the service
can be killed at any time:

* **restart**: workers run in their own sessions and survive the service; on start-up, a job whose worker
  is still alive (same pid *and* start time) is simply watched again; one whose worker ended meanwhile
  gets its result from ``status.json``; one whose worker died without a result is **resumed from its
  checkpoint** (at most ``max_resumes`` times), or marked ``interrupted`` when there is none.
* **isolation** (:mod:`~mlaas4hep_lab.jobs.isolation`): each job runs under its owner's system account in a
  bubblewrap sandbox where the machine allows it; a service that cannot isolate its jobs refuses them (503)
  unless ``allow_unisolated`` is set. The job folder then belongs to the job: the service reads from it
  only through :func:`~mlaas4hep_lab.jobs.runner.open_in` and keeps what it trusts in its own state folder
  (0700): ``logs/ID.log``, ``push_tokens/ID``, ``bundles/ID.tar.gz`` (the copy it serves and pushes),
  ``accounts.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request

from mlaas4hep_lab.auth import Authenticator, AuthError, User
from mlaas4hep_lab.jobs import runner
from mlaas4hep_lab.jobs.db import Job, JobDB
from mlaas4hep_lab.jobs.isolation import Account, IsolationError, resolve
from mlaas4hep_lab.jobs.settings import Settings
from mlaas4hep_lab.jobs.submission import Submission
from mlaas4hep_lab.serving import BadRequest, Conflict, Forbidden, NotFound, ServingError, Unavailable

__all__ = ["JobService"]

log = logging.getLogger("mlaas4hep_lab.jobs")


class TooMany(ServingError):
    status = 429


class JobService:
    """The jobs service's state and work (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auth = Authenticator.from_settings(settings)
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        # job accounts without a sandbox reach their own folders by path through these: traverse, not list
        private = 0o711 if settings.isolation == "users" else 0o700
        os.chmod(settings.state_dir, private)
        os.chmod(settings.jobs_dir, private)
        for name in ("logs", "push_tokens", "bundles"):
            (settings.state_dir / name).mkdir(mode=0o700, exist_ok=True)
            os.chmod(settings.state_dir / name, 0o700)
        self.db = JobDB(settings.db_path)
        for suffix in ("-wal", "-shm"):   # SQLite made them with the umask's mode, before the table's chmod
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{settings.db_path}{suffix}", 0o600)
        self.isolation = resolve(settings)
        (log.info if self.isolation.mode != "none" else log.warning)("%s", self.isolation.describe())
        self.procs: dict[str, Any] = {}          # job id -> Popen of the workers this process started
        self._lock = threading.RLock()           # job state transitions (monitor thread vs routes)
        self._pushing: set[str] = set()

    # -- who is calling ---------------------------------------------------------------------------
    async def user(self, request: Request) -> User:
        try:
            return await self.auth.authenticate(request.headers.get("authorization"))
        except AuthError as err:
            raise ServingError(str(err), err.status) from None

    def is_admin(self, user: User) -> bool:
        return user.name in self.settings.admins or (user.source == "hub" and bool(user.claims.get("admin")))

    def check_submit_scope(self, user: User) -> None:
        """Hub users need the submit scope (``custom:jobs:submit``); static and OIDC users are authorised by
        holding a token of this service."""
        scope = self.settings.submit_scope
        if not scope or user.source != "hub":
            return
        if scope in user.scopes or f"{scope}!user={user.name}" in user.scopes:
            return
        raise Forbidden(f"submitting needs the scope {scope!r}, which this token does not carry; ask the hub's "
                        "administrator for a role with it")

    def owned(self, user: User, job_id: str) -> Job:
        """The job ``job_id`` if ``user`` may see it; 404 otherwise (also for other users' jobs, so that
        their existence does not leak)."""
        job = self.db.get(job_id) if len(job_id) <= 64 else None
        if job is None or (job.owner != user.name and not self.is_admin(user)):
            raise NotFound(f"no job {job_id!r}")
        return job

    def job_dir(self, job: Job) -> Path:
        return Path(job.job_dir)

    def log_path(self, job: Job) -> Path:
        """The job's log: in the service's state, where the job cannot swap it for a link to a secret."""
        return self.settings.state_dir / "logs" / f"{job.id}.log"

    def _token_path(self, job_id: str) -> Path:
        return self.settings.state_dir / "push_tokens" / job_id

    def _account(self, owner: str) -> Account | None:
        try:
            return self.isolation.account(owner)
        except IsolationError as err:
            raise Unavailable(f"cannot give your jobs their own system account: {err}") from err

    # -- submit / cancel / delete -----------------------------------------------------------------
    def submit(self, user: User, sub: Submission, name: str | None, push: dict[str, Any] | None,
               token: str | None) -> Job:
        s = self.settings
        if not self.isolation.ready:
            raise Unavailable(self.isolation.refusal())
        if s.max_jobs_per_user and self.db.count(user.name) >= s.max_jobs_per_user:
            raise TooMany(f"you have {s.max_jobs_per_user} jobs queued or running, this service's limit; wait "
                          "for one to end or cancel one (DELETE /jobs/{id})")
        if push is not None:
            url = (push.get("url") or "").rstrip("/") or s.push_url
            if not url:
                raise BadRequest("push: this service has no inference service configured: give push.url")
            if s.push_url and url != s.push_url:
                raise BadRequest(f"push: this service pushes only to {s.push_url}")
            if not url.startswith(("http://", "https://")):
                raise BadRequest(f"push: url {url!r} is not an http(s):// URL")
            if not token:
                raise BadRequest("push: your request carries no token to push with")
            push = {"url": url, "name": push["name"], "shared": bool(push.get("shared"))}
        self._account(user.name)   # created now: a failure is this request's answer, not a failed job
        job_id = self.db.new_id()
        folder = s.jobs_dir / job_id
        folder.mkdir(mode=0o700)
        _write_private(folder / "model.py", sub.model_source)
        if push is not None:
            _write_private(self._token_path(job_id), token)
        spec = {"files": sub.files, "labels": sub.labels, "params": sub.params, "preproc": sub.preproc,
                "model_kind": sub.model_kind, "warnings": sub.warnings}
        job = self.db.create(user.name, spec, folder, name=name or "", push=push, job_id=job_id)
        log.info("job %s of %s queued (%d files, model %s)", job_id, user.name, len(sub.files), sub.model_kind)
        return job

    def cancel(self, job: Job) -> Job:
        """Stop a queued or running job (its whole process group) and mark it cancelled."""
        with self._lock:
            job = self.db.get(job.id) or job
            if job.status == "queued":
                self.db.update(job.id, only_if=("queued",), status="cancelled", finished=time.time(),
                               phase="cancelled")
            elif job.status == "running":
                if self.db.update(job.id, only_if=("running",), status="cancelled", finished=time.time(),
                                  phase="cancelled"):
                    self._stop(job)
            self._forget_token(job)
        self._note(job, "cancelled by the user")
        return self.db.get(job.id) or job

    def delete(self, job: Job) -> None:
        """Remove a finished job: its row and its folder."""
        if job.active:
            raise Conflict(f"job {job.id} is {job.status}; cancel it first")
        if job.pid and runner.is_alive(job.pid, job.pid_started):
            raise Conflict(f"job {job.id} is still stopping; try again in a few seconds")
        with self._lock:
            self.db.delete(job.id)
            self.procs.pop(job.id, None)
        folder = Path(job.job_dir)
        if folder.parent == self.settings.jobs_dir:  # never anything else, whatever the table says
            shutil.rmtree(folder, ignore_errors=True)   # fd-based: links in the job's folder are not followed
        self._forget_token(job)
        for path in (self.log_path(job), self.settings.state_dir / "bundles" / f"{job.id}.tar.gz"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- the monitor ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One look at every running job, then start queued ones, then pushes. Blocking (file reads,
        process checks): the app runs it in a thread."""
        with self._lock:
            for job in self.db.list(status=("running",), limit=100_000):
                try:
                    self._watch(job)
                except Exception:  # one broken job folder must not stop the others being watched
                    log.exception("watching job %s", job.id)
            self._start_queued()
            for job in self.db.pending_pushes():
                if job.id not in self._pushing:
                    self._pushing.add(job.id)
                    threading.Thread(target=self._push, args=(job,), name=f"push-{job.id}", daemon=True).start()

    def _watch(self, job: Job) -> None:
        folder = Path(job.job_dir)
        report = runner.read_status(folder)
        if report.get("attempt") == job.attempts:
            if report.get("status") in ("succeeded", "failed"):
                self._finish(job, report)
                return
            self._progress(job, report)
        proc = self.procs.get(job.id)
        if proc is not None:
            rc = proc.poll()
            if rc is not None:
                self.procs.pop(job.id, None)
                report = runner.read_status(folder)  # it may have reported just before it exited
                if report.get("attempt") == job.attempts and report.get("status") in ("succeeded", "failed"):
                    self._finish(job, report)
                else:
                    s = self.settings
                    self._fail(job, runner.exit_reason(rc, s.memory_limit, s.effective_cpu_limit,
                                                       sandboxed=self.isolation.sandboxed))
                return
        elif not runner.is_alive(job.pid, job.pid_started):
            report = runner.read_status(folder)
            if report.get("attempt") == job.attempts and report.get("status") in ("succeeded", "failed"):
                self._finish(job, report)
            else:
                self._interrupted(job, "its worker process ended without reporting a result (the service was "
                                       "restarted meanwhile, or the process was killed)")
            return
        limit = self.settings.time_limit
        if limit and job.started and time.time() - job.started + job.used_seconds > limit:
            earlier = f", {job.used_seconds:.0f} s of it in earlier attempts" if job.used_seconds >= 0.5 else ""
            if self.db.update(job.id, only_if=("running",), status="failed", finished=time.time(), phase="failed",
                              error=f"time limit of {limit:g} s exceeded (wall clock{earlier}); the job was "
                                    "stopped. Use fewer events or epochs, or ask for a service with a larger limit"):
                self._note(job, f"time limit of {limit:g} s exceeded: stopping the job")
                self._stop(job)
                self._forget_token(job)

    def _progress(self, job: Job, report: dict[str, Any]) -> None:
        values = {k: report[k] for k in ("progress", "phase", "detail", "metrics") if k in report}
        if any(getattr(job, k) != v for k, v in values.items()):
            self.db.update(job.id, only_if=("running",), **values)

    def _finish(self, job: Job, report: dict[str, Any]) -> None:
        status = report["status"]
        bundle = None
        if status == "succeeded":
            try:
                bundle = self._collect_bundle(job, str(report.get("bundle") or ""))
            except OSError as err:
                status, report = "failed", dict(report, error=f"the job ended without a bundle ({err})")
        self.db.update(job.id, only_if=("running",), status=status, bundle=bundle,
                       finished=report.get("finished") or time.time(), progress=report.get("progress", 1.0),
                       phase=report.get("phase", status), metrics=report.get("metrics") or job.metrics,
                       detail=report.get("detail") or job.detail, error=report.get("error"))
        self.procs.pop(job.id, None)
        if status != "succeeded" or not job.push:
            self._forget_token(job)
        log.info("job %s %s", job.id, status)

    def _fail(self, job: Job, error: str) -> None:
        self.db.update(job.id, only_if=("running",), status="failed", finished=time.time(), phase="failed",
                       error=error)
        self._note(job, f"failed: {error}")
        self._forget_token(job)

    def _interrupted(self, job: Job, reason: str) -> None:
        has_checkpoint = _has_checkpoint(Path(job.job_dir))
        if has_checkpoint and job.attempts <= self.settings.max_resumes:
            used = job.used_seconds + _attempt_seconds(job)
            if self.db.update(job.id, only_if=("running",), status="queued", resume=True, pid=None,
                              pid_started=None, phase="queued to resume", used_seconds=used):
                self._note(job, f"{reason}; queued again, to resume from its last checkpoint")
            return
        why = "no checkpoint to resume from" if not has_checkpoint else \
            f"already resumed {job.attempts - 1} time(s)"
        self.db.update(job.id, only_if=("running",), status="interrupted", finished=time.time(),
                       phase="interrupted", error=f"{reason}; {why}")
        self._note(job, f"interrupted: {reason}; {why}")
        self._forget_token(job)

    def _start_queued(self) -> None:
        s = self.settings
        if not self.isolation.ready:   # queued before the service lost its isolation: they wait for it
            return
        free = s.max_concurrent - self.db.count(status=("running",))
        for job in self.db.list(status=("queued",), limit=max(free, 0)) if free > 0 else []:
            self._start(job)

    def _start(self, job: Job) -> None:
        s = self.settings
        folder = Path(job.job_dir)
        attempt = job.attempts + 1
        spec = dict(job.spec, id=job.id, owner=job.owner, name=job.name or f"job-{job.id}",
                    resume=job.resume, attempt=attempt,
                    limits={"memory": s.memory_limit, "cpu": s.effective_cpu_limit},
                    allowed_hosts=list(s.allowed_hosts))  # the worker checks input addresses again
        self._note(job, f"starting attempt {attempt}" + (" (resuming)" if job.resume else ""))
        try:   # IsolationError is an OSError too
            account = self.isolation.account(job.owner)
            _hand_over(folder, account)
            runner.write_json_atomic(folder / runner.SPEC_FILE, spec,
                                     owner=(account.uid, account.gid) if account else None)
            launched = runner.launch(folder, s.threads, s.pass_env, log_file=self.log_path(job),
                                     isolation=self.isolation, account=account)
        except OSError as err:
            self.db.update(job.id, only_if=("queued",), status="failed", finished=time.time(),
                           error=f"cannot start the worker process: {err}")
            return
        self.procs[job.id] = launched.proc
        if not self.db.update(job.id, only_if=("queued",), status="running", started=time.time(), finished=None,
                              pid=launched.pid, pid_started=launched.started, attempts=attempt,
                              phase="starting", error=None):
            self._stop(self.db.get(job.id) or job, launched)  # cancelled meanwhile
        log.info("job %s started (pid %s, attempt %d)", job.id, launched.pid, attempt)

    def _stop(self, job: Job, launched: runner.Launched | None = None) -> None:
        """SIGTERM to the job's process group, SIGKILL after ``kill_grace`` seconds (in a thread)."""
        pid = launched.pid if launched else job.pid
        started = launched.started if launched else job.pid_started
        proc = launched.proc if launched else self.procs.pop(job.id, None)
        if not pid:
            return
        runner.kill_group(pid, started, signal.SIGTERM)
        grace = self.settings.kill_grace

        def finish() -> None:
            if not runner.wait_gone(pid, started, grace):
                runner.kill_group(pid, started, signal.SIGKILL)
            if proc is not None:
                proc.wait()

        threading.Thread(target=finish, name=f"stop-{job.id}", daemon=True).start()

    # -- push -------------------------------------------------------------------------------------
    def _push(self, job: Job) -> None:
        from mlaas4hep_lab.serving.client import Client, ServiceError

        token_file = self._token_path(job.id)
        push = job.push or {}
        try:
            token = token_file.read_text().strip()
        except OSError:
            token = ""
        result: dict[str, Any]
        if not token:
            result = {"ok": False, "url": push.get("url"), "error": "the token kept for the push is gone"}
        else:
            result = {"ok": False, "url": push.get("url"), "error": "not tried"}
            for attempt in range(3):
                try:
                    client = Client(push["url"], token=token, scheme="Bearer", upload_timeout=300)
                    answer = client.upload(job.bundle, name=push["name"], shared=push.get("shared", False))
                    result = {"ok": True, "url": push["url"], "name": push["name"],
                              "ref": answer.get("ref") if isinstance(answer, dict) else None,
                              "version": answer.get("version") if isinstance(answer, dict) else None}
                    break
                except ServiceError as err:
                    result = {"ok": False, "url": push["url"], "status": err.status, "error": str(err)}
                    if err.status is not None:
                        break   # the service answered: trying again would get the same answer
                    time.sleep(2.0 * (attempt + 1))
                except Exception as err:  # noqa: BLE001 - reported in the job, not lost in a thread
                    result = {"ok": False, "url": push["url"], "error": f"{type(err).__name__}: {err}"}
                    break
        self._forget_token(job)
        # the log's line first: whoever sees the result then finds the job's log complete
        self._note(job, f"push to {push.get('url')}: " + ("done" if result["ok"] else f"failed: {result['error']}"))
        self.db.update(job.id, push_result=result)
        self._pushing.discard(job.id)

    def _forget_token(self, job: Job) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._token_path(job.id).unlink()

    def _collect_bundle(self, job: Job, relative: str) -> str:
        """Copy the bundle the worker reported into the service's state (``bundles/ID.tar.gz``, 0600): what
        is served and pushed is then a file the job can no longer change or replace with a link."""
        target = self.settings.state_dir / "bundles" / f"{job.id}.tar.gz"
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        with os.fdopen(runner.open_in(job.job_dir, relative), "rb") as source:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return str(target)

    def _note(self, job: Job, message: str) -> None:
        """A line of the service's own in the job's log, so the user sees what happened to the job."""
        try:
            fd = os.open(self.log_path(job), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] service: {message}\n")
        except OSError:
            pass

    def counts(self) -> dict[str, int]:
        return {"queued": self.db.count(status=("queued",)), "running": self.db.count(status=("running",))}

    def close(self) -> None:
        # the workers are left running on purpose: they belong to their jobs, not to this process
        self.db.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _hand_over(folder: Path, account: Account | None) -> None:
    """Give a job folder the service still owns (a new job, or one queued before isolation) and its model.py
    to the job's account. A folder the account owns already is left alone: its content is the job's."""
    if account is None or os.lstat(folder).st_uid != os.geteuid():
        return
    os.chown(folder / "model.py", account.uid, account.gid, follow_symlinks=False)
    os.chown(folder, account.uid, account.gid, follow_symlinks=False)


def _has_checkpoint(folder: Path) -> bool:
    """Whether the job left a checkpoint to resume from (what ``Checkpoint.load`` would find), looked at
    without following links: the folder is the job's."""
    for name in ("checkpoint", "checkpoint.old", "checkpoint.new"):
        try:
            os.close(runner.open_in(folder, f"{runner.OUTPUT_DIR}/{name}/state.json"))
            return True
        except OSError:
            continue
    return False



def _attempt_seconds(job: Job) -> float:
    """Wall-clock seconds the attempt of a job whose worker died ran for: until its last sign of life (its
    last report, or the last change the service saw), not until now (the service may have been down)."""
    if not job.started:
        return 0.0
    last = job.updated
    try:
        last = max(last, os.stat(Path(job.job_dir) / runner.STATUS_FILE, follow_symlinks=False).st_mtime)
    except OSError:
        pass
    return max(0.0, min(last, time.time()) - job.started)
