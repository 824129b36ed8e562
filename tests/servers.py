"""Real servers on 127.0.0.1 for remote-reading tests: an XRootD server and an HTTP range server.

Both are context managers that yield the server's base URL as a :class:`ServerURL` (a ``str``) whose
``.file(relpath)`` gives the right URL of a file for that protocol::

    with xrootd_server(folder) as base:          # 'root://127.0.0.1:PORT/'
        uproot.open(base.file("events.root"))    # 'root://127.0.0.1:PORT//events.root'
    with http_range_server(folder) as base:      # 'http://127.0.0.1:PORT/'
        uproot.open(base.file("events.root"))    # 'http://127.0.0.1:PORT/events.root'

XRootD URL forms: the server runs with ``oss.localroot <folder>`` and ``all.export /``, so a file is
named by its absolute path below the local root, which in a URL needs a double slash:
``root://127.0.0.1:PORT//events.root`` (or ``//sub/events.root``). The single-slash form
``root://127.0.0.1:PORT/events.root`` is refused by the server ("[3010] Opening relative path
'events.root' is disallowed"), and the host path (``//tmp/.../events.root``) is not found, because
the local root is prepended to it.

If the ``xrootd`` binary (or the XRootD Python client) is missing the tests are skipped, unless
``MLAAS4HEP_REQUIRE_SERVERS=1`` is set (CI sets it), in which case they fail with the install hint.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import os
import posixpath
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "ServerURL",
    "HTTPControl",
    "xrootd_server",
    "http_range_server",
    "require_xrootd",
    "free_port",
    "require_chromium",
    "run_coroutine",
    "require_chp",
    "CHROMIUM_ARGS",
]

HOST = "127.0.0.1"
REQUIRE_ENV = "MLAAS4HEP_REQUIRE_SERVERS"


class ServerURL(str):
    """A server's base URL (a plain ``str`` to every caller) with helpers.

    Attributes:
        folder: the folder the server serves (for XRootD, the served snapshot: files written there
            after the start are served too).
        control: for the HTTP server, its :class:`HTTPControl` (failure injection, request log).
        log_path: for the XRootD server, its log file.
    """

    scheme: str
    folder: Path
    control: HTTPControl | None
    log_path: Path | None

    def __new__(cls, url: str, scheme: str, folder: Path, control=None, log_path=None):
        self = super().__new__(cls, url)
        self.scheme, self.folder, self.control, self.log_path = scheme, Path(folder), control, log_path
        return self

    def file(self, relpath: str | os.PathLike) -> str:
        """URL of ``relpath`` (relative to the served folder) on this server."""
        rel = Path(relpath).as_posix().lstrip("/")
        if self.scheme == "root":
            return f"{self}/{rel}"  # root://host:port//rel : absolute path below oss.localroot
        return f"{self}{urllib.parse.quote(rel)}"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _missing(what: str, hint: str) -> None:
    msg = f"{what}; install it with: {hint}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1 makes this a failure instead of a skip)", pytrace=False)
    pytest.skip(msg)


def require_xrootd() -> str:
    """Path of the ``xrootd`` binary; skips (or fails under MLAAS4HEP_REQUIRE_SERVERS=1) without it
    or without the XRootD Python client that uproot's ``root://`` reading uses."""
    binary = shutil.which("xrootd")
    if binary is None:
        _missing("the 'xrootd' server binary is not on PATH", "apt-get install xrootd-server")
    try:
        import fsspec_xrootd  # noqa: F401
        import XRootD.client  # noqa: F401
    except ImportError as err:
        _missing(f"the XRootD Python client is not importable ({err})", "pip install xrootd fsspec-xrootd")
    return binary


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def run_coroutine(coro):
    """``asyncio.run(coro)`` on a thread of its own: Playwright's sync API (browser tests) leaves an event
    loop running on the main thread for the rest of the session, where ``asyncio.run`` would refuse."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="test-asyncio") as pool:
        return pool.submit(asyncio.run, coro).result()


def require_chromium() -> str:
    """Path of the Debian ``chromium`` binary (Playwright drives it; never ``playwright install``);
    skips (or fails under MLAAS4HEP_REQUIRE_SERVERS=1) without it or without Playwright."""
    binary = os.environ.get("MLAAS4HEP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(binary):
        _missing("Chromium is not installed", "apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        _missing(f"Playwright is not importable ({err})", "pip install playwright==1.65.2")
    return binary


def require_chp() -> str:
    """Path of configurable-http-proxy (JupyterHub's proxy, from npm): $MLAAS4HEP_CHP, PATH, or the
    folder `.ci/run` installs it into."""
    candidates = [os.environ.get("MLAAS4HEP_CHP"), shutil.which("configurable-http-proxy"),
                  os.path.expanduser("~/.cache/mlaas4hep/chp/node_modules/.bin/configurable-http-proxy")]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    _missing("configurable-http-proxy is not installed",
             "npm install --prefix ~/.cache/mlaas4hep/chp configurable-http-proxy")
    return ""  # unreachable: _missing skips or fails


# --------------------------------------------------------------------------------------------- XRootD
def _make_world_readable(root: Path) -> None:
    """chmod a+rX below ``root`` (directories 0755, files gain a+r)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _traversable_by_others(path: Path) -> Path | None:
    """The first of ``path`` and its parents that 'other' users cannot enter, or None."""
    for p in [path, *path.parents]:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
    return None


def _nobody_ids() -> tuple[int, int] | None:
    try:
        import pwd

        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return None


def _tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(lines[-n:])


def _probe_xrootd(base: ServerURL, timeout: float) -> str | None:
    """None when the server answers real requests, else why not (yet)."""
    roots = sorted(base.folder.rglob("*.root"))
    try:
        if roots:
            import uproot

            with uproot.open(base.file(roots[0].relative_to(base.folder)), timeout=timeout):
                pass
        else:
            from XRootD import client

            status, _ = client.FileSystem(str(base)).stat("/", timeout=max(1, int(timeout)))
            if not status.ok:
                return status.message
    except Exception as err:  # keep polling until the deadline
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def xrootd_server(folder: str | os.PathLike, *, snapshot: bool = True, startup_timeout: float = 30.0,
                  attempts: int = 3) -> Iterator[ServerURL]:
    """Serve ``folder`` read-only with a real ``xrootd`` on 127.0.0.1; yield ``root://127.0.0.1:PORT/``.

    File URLs are ``root://127.0.0.1:PORT//relpath`` (see :meth:`ServerURL.file`).

    xrootd refuses to run as root, so when running as root it is started with ``-R nobody``, which then
    must be able to read the files. With ``snapshot=True`` (default) the folder is copied into a fresh
    0755 temporary folder (pytest's ``tmp_path`` lives below a 0700 folder); with ``snapshot=False`` it
    is served in place after ``chmod a+rX``, which needs every parent folder to be enterable by others.

    xrootd 5.5 cannot bind its port to one interface, so it listens on all of them but accepts
    connections only from 127.0.0.1 (``xrd.allow host``); others are refused at accept time.
    """
    binary = require_xrootd()
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise NotADirectoryError(f"xrootd_server: {folder} is not a folder")
    workdir = Path(tempfile.mkdtemp(prefix="mlaas4hep-xrootd-"))
    proc: subprocess.Popen | None = None
    try:
        os.chmod(workdir, 0o755)
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        if snapshot:
            served = workdir / "data"
            shutil.copytree(folder, served, symlinks=False)
        else:
            served = folder
        if as_root:
            _make_world_readable(served)
            blocked = _traversable_by_others(served)
            if blocked is not None:
                raise PermissionError(
                    f"xrootd_server: {blocked} is not enterable by user 'nobody' (mode "
                    f"{stat.filemode(os.stat(blocked).st_mode)}); use snapshot=True or chmod o+x it"
                )
        admin = workdir / "admin"
        admin.mkdir(mode=0o755)
        ids = _nobody_ids() if as_root else None
        if ids:
            os.chown(admin, *ids)

        log_path = workdir / "xrootd.log"
        last_error = ""
        for _attempt in range(attempts):
            port = free_port()
            cfg = workdir / "xrd.cfg"
            cfg.write_text(
                f"xrd.port {port}\n"
                f"xrd.allow host {HOST}\n"
                "xrd.allow host localhost\n"
                f"all.adminpath {admin}\n"
                f"all.pidpath {admin}\n"
                "ofs.persist off\n"
                f"oss.localroot {served}\n"
                "all.export / r/o\n"
            )
            cmd = [binary, "-c", str(cfg)]
            if as_root:
                cmd[1:1] = ["-R", "nobody"]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=workdir, start_new_session=True)
            base = ServerURL(f"root://{HOST}:{port}/", "root", served, log_path=log_path)
            deadline = time.monotonic() + startup_timeout
            why = "did not start"
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    why = f"exited with status {proc.returncode}"
                    break
                try:
                    with socket.create_connection((HOST, port), timeout=0.5):
                        pass
                except OSError as err:
                    why = f"port {port} not accepting connections ({err})"
                    time.sleep(0.05)
                    continue
                why = _probe_xrootd(base, timeout=5)
                if why is None:
                    break
                time.sleep(0.1)
            else:
                why = f"not ready after {startup_timeout:.0f}s: {why}"
            if why is None:
                break
            last_error = f"{' '.join(cmd)}: {why}\n--- xrootd log ({log_path}) ---\n{_tail(log_path)}"
            _stop(proc)
            proc = None
            if "Address already in use" not in _tail(log_path, 400):
                break  # only a lost port race is worth another try
        if proc is None:
            pytest.fail(f"xrootd did not start: {last_error}", pytrace=False)
        yield base
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


# ----------------------------------------------------------------------------------------------- HTTP
@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class HTTPControl:
    """Live settings and request log of one :func:`http_range_server` (thread-safe).

    ``fail_first``: the next N requests (all paths together, or per path with ``fail_per_path``) answer
    ``fail_status`` (503) instead of data. ``truncate``: URL path -> ``(source relpath, size)``, serving
    the first ``size`` bytes (an int, or a float fraction of the file) of the source under that path.
    ``multirange=False`` makes the server answer multi-range requests with the whole file (200), as
    servers without multipart/byteranges support do.
    """

    fail_first: int = 0
    fail_per_path: bool = False
    fail_status: int = 503
    truncate: dict[str, tuple[str, int | float]] = field(default_factory=dict)
    multirange: bool = True
    requests: list[RequestRecord] = field(default_factory=list)
    failures_sent: int = 0
    _per_path: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_failures(self, n: int, per_path: bool = False, status: int = 503) -> None:
        """Make the next ``n`` requests (per path with ``per_path``) fail with ``status``."""
        with self._lock:
            self.fail_first, self.fail_per_path, self.fail_status = n, per_path, status
            self._per_path.clear()
            self.failures_sent = 0

    def reset(self) -> None:
        """No failures, empty request log."""
        self.set_failures(0)
        with self._lock:
            self.requests.clear()

    def _should_fail(self, path: str) -> bool:
        with self._lock:
            if self.fail_per_path:
                used = self._per_path.get(path, 0)
                if used < self.fail_first:
                    self._per_path[path] = used + 1
                    self.failures_sent += 1
                    return True
                return False
            if self.fail_first > 0:
                self.fail_first -= 1
                self.failures_sent += 1
                return True
            return False

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def ranges_seen(self) -> list[str]:
        with self._lock:
            return [r.range for r in self.requests if r.range]


_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``Range: bytes=...`` -> list of inclusive (first, last) satisfiable ranges.

    Returns None for a header to ignore (not bytes, malformed: serve the whole file) and [] when no
    range is satisfiable (416).
    """
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    out = []
    for spec in specs.split(","):
        m = _RANGE_SPEC.match(spec)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        a, b = m.group(1), m.group(2)
        if not a:  # suffix: the last b bytes
            n = int(b)
            if n == 0:
                continue
            first, last = max(0, size - n), size - 1
        else:
            first = int(a)
            last = size - 1 if not b else min(int(b), size - 1)
            if b and int(b) < first:
                return None
        if first < size:
            out.append((first, last))
    return out


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects
    server_version = "mlaas4hep-test-http/1.0"
    timeout = 30  # idle keep-alive connections end by themselves
    root: Path
    control: HTTPControl

    def log_message(self, format, *args):  # noqa: A002 - quiet; the control keeps a request log
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _send_simple(self, status: int, message: str, extra: Mapping[str, str] | None = None,
                     head: bool = False) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _resolve(self, urlpath: str) -> tuple[Path, int | None] | None:
        """(file on disk, truncated size or None) for a URL path, or None if not servable."""
        rel = posixpath.normpath(urllib.parse.unquote(urlpath)).lstrip("/")
        if rel.startswith("..") or "\x00" in rel:
            return None
        truncated = self.control.truncate.get(rel)
        if truncated is not None:
            src_rel, size = truncated
            src = (self.root / src_rel).resolve()
            if not src.is_file():
                return None
            full = src.stat().st_size
            n = int(full * size) if isinstance(size, float) else int(size)
            return src, max(0, min(n, full))
        p = (self.root / rel).resolve()
        if self.root not in (p, *p.parents) or not p.is_file():
            return None
        return p, None

    def _serve(self, head: bool) -> None:
        urlpath = urllib.parse.urlsplit(self.path).path
        range_header = self.headers.get("Range")
        status = 500
        try:
            if self.control._should_fail(urlpath):
                status = self.control.fail_status
                self._send_simple(status, "simulated transient failure", {"Retry-After": "0"}, head)
                return
            resolved = self._resolve(urlpath)
            if resolved is None:
                status = 404
                self._send_simple(status, f"not found: {urlpath}", head=head)
                return
            path, truncated_size = resolved
            st = path.stat()
            size = st.st_size if truncated_size is None else truncated_size
            common = {
                "Accept-Ranges": "bytes",
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "ETag": f'"{st.st_ino:x}-{size:x}-{int(st.st_mtime_ns):x}"',
            }
            ranges = parse_ranges(range_header, size) if range_header else None
            if ranges is not None and len(ranges) > 1 and not self.control.multirange:
                ranges = None
            if ranges == []:
                status = 416
                self._send_simple(status, "range not satisfiable", {"Content-Range": f"bytes */{size}", **common},
                                  head)
                return
            with open(path, "rb") as f:
                if ranges is None:
                    status = 200
                    self.send_response(status)
                    for k, v in common.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if not head:
                        remaining = size
                        while remaining > 0:
                            block = f.read(min(remaining, 1 << 20))
                            if not block:
                                break
                            self.wfile.write(block)
                            remaining -= len(block)
                    return
                status = 206
                if len(ranges) == 1:
                    first, last = ranges[0]
                    f.seek(first)
                    data = f.read(last - first + 1)
                    self.send_response(status)
                    for k, v in common.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(data)
                    return
                boundary = f"mlaas4hep{os.urandom(8).hex()}"
                parts = []
                for first, last in ranges:
                    f.seek(first)
                    parts.append(
                        (
                            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
                        ).encode()
                        + f.read(last - first + 1)
                        + b"\r\n"
                    )
                parts.append(f"--{boundary}--\r\n".encode())
                body = b"".join(parts)
                self.send_response(status)
                for k, v in common.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.control._record(RequestRecord(self.command, urlpath, range_header, status))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def http_range_server(folder: str | os.PathLike, *, fail_first: int = 0, fail_per_path: bool = False,
                      fail_status: int = 503, truncate: Mapping[str, tuple[str, int | float]] | None = None,
                      multirange: bool = True) -> Iterator[ServerURL]:
    """Serve ``folder`` over HTTP/1.1 on 127.0.0.1 with byte ranges; yield ``http://127.0.0.1:PORT/``.

    Supports HEAD, ``Range: bytes=a-b`` (206 + Content-Range), open and suffix ranges, multi-range
    requests (206 multipart/byteranges, as uproot's HTTPSource sends them), 416 for unsatisfiable
    ranges. Failure injection and truncated copies: see :class:`HTTPControl` (``base.control`` lets a
    test change them while the server runs).
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"http_range_server: {root} is not a folder")
    control = HTTPControl(fail_first=fail_first, fail_per_path=fail_per_path, fail_status=fail_status,
                          truncate={k.lstrip("/"): v for k, v in (truncate or {}).items()}, multirange=multirange)
    handler = type("RangeHandler", (_RangeHandler,), {"root": root, "control": control})
    server = _Server((HOST, 0), handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"http_range_server:{port}", daemon=True)
    thread.start()
    try:
        yield ServerURL(f"http://{HOST}:{port}/", "http", root, control=control)
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(5)
