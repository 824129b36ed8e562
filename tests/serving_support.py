"""The inference service's test harness, shared by the end-to-end and fuzz tests and the benchmark's idea
of a server: demo bundles trained by the package, a real ``mlaas4hep serve`` process, raw HTTP calls."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

try:
    from servers import free_port
except ImportError:  # tests/ imported as a package
    from tests.servers import free_port

DEMOS = {  # bundle key -> (demo --kind, --backend)
    "higgs-torch": ("higgs", "torch"),
    "higgs-keras": ("higgs", "keras"),
    "tth-torch": ("tth", "torch"),
}


def build_bundles(base: Path, keys=tuple(DEMOS)) -> dict[str, Path]:
    """Train the demo bundles (in parallel processes) under ``base``; reuse those already there."""
    procs = {}
    for key in keys:
        kind, backend = DEMOS[key]
        out = base / key
        if (out / "output" / "bundle" / "manifest.json").exists():
            continue
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "demo", "--out", str(out), "--kind", kind,
               "--backend", backend, "--events", "20000", "--epochs", "1"]
        out.mkdir(parents=True, exist_ok=True)
        log = (base / f"{key}.log").open("w")
        procs[key] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    for key, (proc, log) in procs.items():
        rc = proc.wait(600)
        log.close()
        assert rc == 0, f"demo {key} failed:\n{(base / f'{key}.log').read_text()[-3000:]}"
    return {key: base / key / "output" / "bundle" for key in keys}


class ServiceProcess:
    """A ``python -m mlaas4hep_lab.cli COMMAND ...`` service in its own process group, ready when
    ``health_path`` answers 200, stopped (or crashed, :meth:`kill9`) by its PID; output in ``log``."""

    health_path = "/healthz"

    def __init__(self, log: Path, port: int | None = None):
        self.log_path = log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self._log = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120.0):
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", *self.command()]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[3]} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if http_call(self.url, "GET", self.health_path, token=None, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{cmd[3]} not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def kill9(self) -> None:
        """What a crash does: SIGKILL to the service's process group."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None and not self._log.closed:
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ServerProcess(ServiceProcess):
    """``mlaas4hep serve`` (the inference service) over ``store`` with a tokens file; with ``grpc_port``
    (a port, or True for a free one) the gRPC service too, at ``grpc_url`` (``host:port``)."""

    health_path = "/v2/health/ready"

    def __init__(self, store: Path, tokens: Path, log: Path, *extra: str, port: int | None = None,
                 grpc_port: int | bool | None = None):
        super().__init__(log, port)
        self.store, self.tokens, self.extra = store, tokens, extra
        self.grpc_port = grpc_port or None
        while self.grpc_port is True or self.grpc_port == self.port:
            self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def command(self) -> list[str]:
        grpc = ["--grpc-port", str(self.grpc_port)] if self.grpc_port else []
        return ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--store", str(self.store),
                "--tokens", str(self.tokens), *grpc, *self.extra]


class JobsProcess(ServiceProcess):
    """``mlaas4hep jobs`` with a tokens file and one data root."""

    health_path = "/health"

    users: dict[str, str] = {}   # user -> token, for call(user=...)

    def __init__(self, state: Path, tokens: Path, data_root: Path, log: Path, *extra: str):
        super().__init__(log)
        self.state, self.tokens, self.data_root, self.extra = state, tokens, data_root, extra

    def command(self) -> list[str]:
        return ["jobs", "--host", "127.0.0.1", "--port", str(self.port), "--state", str(self.state),
                "--tokens", str(self.tokens), "--data-root", str(self.data_root), "--log-level", "info",
                *self.extra]

    def call(self, method: str, path: str, body=None, user: str | None = "alice", **kw):
        data = json.dumps(body).encode() if body is not None else None
        return http_call(self.url, method, path, data, token=self.users[user] if user else None, **kw)

    def job(self, job_id: str, user: str = "alice") -> dict:
        status, answer = self.call("GET", f"/jobs/{job_id}", user=user)
        assert status == 200, answer
        return answer

    def wait(self, job_id: str, until, timeout: float = 240.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        job = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            if job["status"] in ("failed", "cancelled", "interrupted") and not until(job):
                break
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} never reached {what or 'the expected state'}: {job}\n"
                             f"log:\n{self.log_of(job_id)}\nservice log:\n{self.log_text()[-2000:]}")

    def log_of(self, job_id: str) -> str:
        status, answer = self.call("GET", f"/jobs/{job_id}/logs?offset=0&limit=1000000")
        return answer["text"] if status == 200 else f"({status}: {answer})"

    def worker(self, job_id: str) -> dict:
        """The worker's own report (status.json in its job folder), read as the service would."""
        return json.loads((self.state / "jobs" / job_id / "status.json").read_text())


def http_call(url: str, method: str, path: str, body: bytes | None = None, token: str | None = None,
              headers: dict | None = None, timeout: float = 60.0,
              content_type: str | None = "application/json") -> tuple[int, object]:
    """(status, decoded JSON or text) of one raw request, with full control of the headers."""
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        h = dict(headers or {})
        if token is not None:
            h.setdefault("Authorization", f"Bearer {token}")
        if body is not None and content_type:
            h.setdefault("Content-Type", content_type)
        try:
            conn.request(method, path, body=body, headers=h)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service answered early (413) and closed: read that answer
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")
