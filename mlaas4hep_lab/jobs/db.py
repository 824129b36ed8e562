"""The jobs table: one SQLite file (stdlib ``sqlite3``, WAL journal), written only by the service.

Workers never open the database: each one reports through ``status.json`` in its own job folder, which the
service reads (see :mod:`mlaas4hep_lab.jobs.runner`). So a user's model.py, which runs in the worker, has no
handle on other users' jobs, and the database has a single writer.

Example::

    db = JobDB("state/jobs.sqlite")
    job = db.create(owner="alice", spec={...}, job_dir="state/jobs/ab12")
    db.update(job.id, status="running", pid=1234)
    db.get(job.id).status      # 'running'
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JobDB", "Job", "STATUSES", "ACTIVE", "FINAL"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled',
                                           'interrupted')),
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    spec TEXT NOT NULL,            -- JSON: files, labels, params, preproc, model, push (no token)
    job_dir TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}',    -- JSON: epoch, chunk, n_chunks, events_seen, events_total
    metrics TEXT NOT NULL DEFAULT '{}',   -- JSON: the latest metrics (final ones once finished)
    error TEXT,
    pid INTEGER,
    pid_started REAL,              -- the worker's process start time (psutil), so a reused pid is not it
    attempts INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,    -- 1: the next run continues from the checkpoint
    used_seconds REAL NOT NULL DEFAULT 0, -- wall-clock seconds of earlier attempts (the time limit spans all)
    bundle TEXT,
    push TEXT,                     -- JSON: {"url", "name", "shared"} requested, or NULL
    push_result TEXT,              -- JSON: {"ok": bool, ...} once tried
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""
_JSON_COLUMNS = ("spec", "detail", "metrics", "push", "push_result")
_COLUMNS = ("owner", "name", "status", "created", "started", "finished", "spec", "job_dir", "progress", "phase",
            "detail", "metrics", "error", "pid", "pid_started", "attempts", "resume", "used_seconds", "bundle",
            "push", "push_result", "updated")
# columns added after the first release: (name, definition), added to older tables on open
_ADDED_COLUMNS = (("used_seconds", "REAL NOT NULL DEFAULT 0"),)


@dataclass
class Job:
    """One row of the jobs table, JSON columns decoded."""

    id: str
    owner: str
    status: str
    created: float
    spec: dict[str, Any]
    job_dir: str
    name: str = ""
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0
    phase: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    attempts: int = 0
    resume: bool = False
    used_seconds: float = 0.0
    bundle: str | None = None
    push: dict[str, Any] | None = None
    push_result: dict[str, Any] | None = None
    updated: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict[str, Any]:
        """What ``GET /jobs`` lists."""
        return {"id": self.id, "owner": self.owner, "name": self.name, "status": self.status,
                "created": self.created, "started": self.started, "finished": self.finished,
                "progress": self.progress, "phase": self.phase, "error": self.error}

    def public(self) -> dict[str, Any]:
        """What ``GET /jobs/{id}`` answers (no pid, no folder)."""
        spec = self.spec
        out = self.summary()
        out.update(detail=self.detail, metrics=self.metrics, attempts=self.attempts,
                   bundle=self.bundle is not None and self.status == "succeeded", push=self.push,
                   push_result=self.push_result,
                   files=spec.get("files", []), labels=spec.get("labels", []), model=spec.get("model_kind"),
                   params=spec.get("params", {}), preproc=spec.get("preproc"))
        return out


class JobDB:
    """The jobs table. Thread-safe (one connection, a lock): the service calls it from its event loop and
    from worker threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable across a service crash
            self._conn.executescript(_SCHEMA)
            have = {row["name"] for row in self._conn.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS:
                if name not in have:  # a table written by an older version
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
        try:
            self.path.chmod(0o600)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- rows <-> jobs
    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in _JSON_COLUMNS:
            if data.get(key) is not None:
                data[key] = json.loads(data[key])
        data["resume"] = bool(data["resume"])
        return Job(**data)

    @staticmethod
    def _encode(values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"jobs table has no column(s) {sorted(unknown)}")
        out = {}
        for key, value in values.items():
            if key in _JSON_COLUMNS and value is not None:
                value = json.dumps(value, default=_jsonable)
            elif key == "resume":
                value = int(bool(value))
            out[key] = value
        return out

    # -- operations
    def create(self, owner: str, spec: dict[str, Any], job_dir: str | Path, name: str = "",
               push: dict[str, Any] | None = None, job_id: str | None = None) -> Job:
        """Insert a queued job; ``job_id`` defaults to 16 random hex digits."""
        now = time.time()
        job_id = job_id or secrets.token_hex(8)
        row = self._encode({"owner": owner, "name": name, "status": "queued", "created": now, "spec": spec,
                            "job_dir": str(job_dir), "push": push, "updated": now})
        with self._lock:
            self._conn.execute(f"INSERT INTO jobs (id, {', '.join(row)}) VALUES (?, {', '.join('?' * len(row))})",
                               (job_id, *row.values()))
        return self.get(job_id)

    def new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(8)
            if self.get(job_id) is None:
                return job_id

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def update(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set columns of one job; with ``only_if``, only while its status is one of those (so that two
        decisions on the same job, e.g. a cancel and the worker's own end, cannot both win). Returns whether
        a row changed."""
        values = self._encode(dict(values, updated=time.time()))
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?"
        args: list[Any] = [*values.values(), job_id]
        if only_if:
            sql += f" AND status IN ({', '.join('?' * len(only_if))})"
            args += list(only_if)
        with self._lock:
            return self._conn.execute(sql, args).rowcount > 0

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def list(self, owner: str | None = None, status: tuple[str, ...] | None = None, limit: int = 1000) -> list[Job]:
        """Jobs of ``owner`` (all owners: None) with one of ``status``, oldest first."""
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if status:
            sql += f" AND status IN ({', '.join('?' * len(status))})"
            args += list(status)
        sql += " ORDER BY created, id LIMIT ?"
        args.append(int(limit))
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._job(r) for r in rows]

    def pending_pushes(self) -> list[Job]:
        """Succeeded jobs whose bundle is to be pushed and has not been tried yet."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs WHERE status = 'succeeded' AND push IS NOT NULL "
                                      "AND push_result IS NULL ORDER BY finished").fetchall()
        return [self._job(r) for r in rows]

    def count(self, owner: str | None = None, status: tuple[str, ...] = ACTIVE) -> int:
        sql = f"SELECT COUNT(*) FROM jobs WHERE status IN ({', '.join('?' * len(status))})"
        args: list[Any] = list(status)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float):
        return None
    return str(value)
