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
    """``mlaas4hep serve`` (the inference service) over ``store`` with a tokens file."""

    health_path = "/v2/health/ready"

    def __init__(self, store: Path, tokens: Path, log: Path, *extra: str, port: int | None = None):
        super().__init__(log, port)
        self.store, self.tokens, self.extra = store, tokens, extra

    def command(self) -> list[str]:
        return ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--store", str(self.store),
                "--tokens", str(self.tokens), *self.extra]


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
