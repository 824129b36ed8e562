"""Where the events come from: files.txt / labels.txt, redirectors, local and remote opening with retries.

Local paths are read into buffers; ``root://`` goes through fsspec-xrootd (XRootD finds the grid
credentials itself) and ``http(s)://`` through uproot's HTTP source (range requests), which sends the
WLCG bearer token (``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``, ...) to ``https://`` servers. Transient
remote errors are retried with exponential backoff and then reported with the file's URL; a missing or
corrupt file is reported at once.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import uproot

from mlaas4hep_lab.errors import InputFileError, LabelsError, RemoteReadError, TreeNotFoundError

__all__ = [
    "is_remote",
    "resolve_path",
    "read_file_list",
    "read_labels",
    "file_info",
    "open_file",
    "get_tree",
    "with_retries",
    "bearer_headers",
    "FileInfo",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs (``root://``, ``http(s)://``, ...), False for local paths and ``file://``."""
    text = str(path)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def resolve_path(path: str, base_dir: str | os.PathLike | None = None, redirector: str | None = None) -> str:
    """Resolve one entry of files.txt.

    URLs are kept. A relative path is resolved against ``base_dir`` (the folder of files.txt). A path that
    does not exist locally is prefixed with ``redirector`` when one is given, as the original did
    (``root://cms-xrd-global.cern.ch`` + ``/store/...`` gives ``root://cms-xrd-global.cern.ch//store/...``).
    """
    path = path.strip()
    if is_remote(path):
        return path
    local = Path(os.path.expanduser(_local(path)))
    candidate = local if local.is_absolute() or base_dir is None else Path(base_dir) / local
    if candidate.exists() or not redirector:
        return str(candidate)
    return redirector.rstrip("/") + "//" + path.lstrip("/")


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{what} file not found: {p}", str(p))
    lines = []
    for raw in p.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise InputFileError(f"{what} file {p} lists nothing (only blank lines or # comments)", str(p))
    return lines


def read_file_list(path: str | os.PathLike, redirector: str | None = None) -> list[str]:
    """Read files.txt: one path or URL per line, ``#`` comments and blank lines ignored."""
    base = Path(path).resolve().parent
    return [resolve_path(line, base, redirector) for line in _read_lines(path, "files list")]


def read_labels(path: str | os.PathLike, n_files: int | None = None) -> list[float]:
    """Read labels.txt: one numeric label per line, matched to files by order."""
    labels = []
    for i, line in enumerate(_read_lines(path, "labels"), 1):
        try:
            labels.append(float(line))
        except ValueError:
            raise LabelsError(f"label {i} is {line!r}, not a number", source=str(path)) from None
    if n_files is not None and len(labels) != n_files:
        raise LabelsError(
            f"{len(labels)} labels for {n_files} files: labels.txt needs one label per line of files.txt, "
            "in the same order",
            source=str(path),
        )
    return labels


@dataclass(frozen=True)
class FileInfo:
    """Size and modification time of a file, used to tell whether a specs file is stale."""

    size: int | None
    mtime: float | None


def file_info(path: str) -> FileInfo:
    if not is_remote(path):
        try:
            st = os.stat(_local(path))
        except FileNotFoundError:
            raise InputFileError(f"ROOT file not found: {_local(path)}", _local(path)) from None
        return FileInfo(st.st_size, round(st.st_mtime, 3))
    try:
        import fsspec

        headers = bearer_headers(path)
        fs, fpath = fsspec.core.url_to_fs(path, **({"headers": headers} if headers else {}))
        info = fs.info(fpath)
        mtime = info.get("mtime") or info.get("LastModified")
        return FileInfo(info.get("size"), float(mtime) if isinstance(mtime, (int, float)) else None)
    except Exception as err:  # remote metadata is best-effort: it only helps detect stale specs
        log.debug("no size/mtime for %s: %s", path, err)
        return FileInfo(None, None)


_STATUS = re.compile(r"(?:status|response was|^)\s*(\d{3})\b")
_MISSING = ("No such file", "[3011]", "returned 404", "Not Found", "does not exist")
_TRANSIENT_WORDS = ("timed out", "timeout", "expired", "connection", "socket", "temporarily", "try again",
                    "reset by peer", "broken pipe", "[3012]", "unavailable")


def _http_status(err: BaseException) -> int | None:
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return status
    match = _STATUS.search(str(err))
    return int(match.group(1)) if match else None


def _error_kind(err: BaseException) -> str:
    """``"missing"``, ``"transient"`` (worth retrying) or ``"fatal"`` (truncated, corrupt, refused)."""
    text = str(err)
    if isinstance(err, FileNotFoundError) or any(m in text for m in _MISSING):
        return "missing"
    status = _http_status(err) if type(err).__name__ in ("ClientResponseError", "HTTPException") else None
    if status is not None:
        if status == 404:
            return "missing"
        return "transient" if status >= 500 or status in (408, 425, 429) else "fatal"
    if isinstance(err, (TimeoutError, ConnectionError)):
        return "transient"
    name = type(err).__name__
    if any(w in name for w in ("Timeout", "Connection", "Disconnected", "ServerError")):
        return "transient"
    if isinstance(err, OSError) and any(w in text.lower() for w in _TRANSIENT_WORDS):
        return "transient"
    return "fatal"


def _is_transient(err: BaseException) -> bool:
    return _error_kind(err) == "transient"


def with_retries(fn: Callable[[], T], path: str, retries: int = 3, backoff: float = 0.5, what: str = "read") -> T:
    """Call ``fn``; for a remote ``path`` retry transient errors with exponential backoff."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_remote(path) or not _is_transient(err) or attempt >= retries:
                if is_remote(path) and _is_transient(err):
                    raise RemoteReadError(
                        f"cannot {what} {path} after {attempt + 1} attempts: {type(err).__name__}: {err}. "
                        "Check the URL, the server and your grid credentials (X509/token).",
                        path,
                    ) from err
                raise
            delay = backoff * (2**attempt)
            log.warning("%s %s failed (%s); retry %d/%d in %.1fs", what, path, err, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


def open_file(path: str, retries: int = 3, backoff: float = 0.5, timeout: float = 30) -> uproot.ReadOnlyDirectory:
    """Open a ROOT file, local or remote, with clear errors for missing and corrupt files."""
    if not is_remote(path):
        local = _local(path)
        if not os.path.exists(local):
            raise InputFileError(
                f"ROOT file not found: {local}. Check the path in files.txt, or set params 'redirector' "
                "(e.g. root://cms-xrd-global.cern.ch) to read it from the grid.",
                local,
            )
        if os.path.isdir(local):
            raise InputFileError(f"{local} is a directory, not a ROOT file", local)
        try:
            # read into buffers that are freed after decompression, not memory-mapped: every page of a
            # mapped file that was read stays in the process's resident memory while the file is open,
            # so RSS grew with the file (+565 MiB over a 540 MB file) although the work is bounded
            return uproot.open(local, handler=uproot.source.file.MultithreadedFileSource)
        except Exception as err:
            raise InputFileError(
                f"cannot read ROOT file {local}: {type(err).__name__}: {err}. "
                "The file may be truncated, corrupt or not a ROOT file.",
                local,
            ) from err

    def _open():
        # http(s): uproot's own HTTP source raises on server errors (fsspec's hands back the exception
        # object in place of the bytes during reads, which then fails far from its cause)
        handler = _AuthHTTPSource if path.startswith(("http://", "https://")) else None
        return uproot.open(path, timeout=timeout, handler=handler)

    try:
        return with_retries(_open, path, retries, backoff, what="open")
    except RemoteReadError:
        raise
    except Exception as err:
        if _error_kind(err) == "missing":
            raise InputFileError(f"remote ROOT file not found: {path} ({type(err).__name__}: {err})", path) from err
        hint = "The file may be truncated, corrupt or not a ROOT file, or access was refused."
        if _http_status(err) in (401, 403):
            hint = ("Access was refused: " + ("the bearer token sent (WLCG discovery: BEARER_TOKEN, BEARER_TOKEN_FILE, "
                    "$XDG_RUNTIME_DIR/bt_u$UID, /tmp/bt_u$UID) was not accepted; is it valid, unexpired and "
                    "allowed to read this path?" if bearer_headers(path) else
                    "no bearer token was found to send (set BEARER_TOKEN_FILE); tokens go to https:// only."))
        raise InputFileError(f"cannot read remote ROOT file {path}: {type(err).__name__}: {err}. {hint}",
                             path) from err


def bearer_headers(url: str) -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` for an ``https://`` URL when this process has a WLCG bearer
    token (:func:`~mlaas4hep_lab.cluster.credentials.find_credentials`), else ``{}``: a token is never
    sent in clear text (``http://``). Its value must never be logged."""
    if not str(url).startswith("https://"):
        return {}
    from mlaas4hep_lab.cluster.credentials import find_credentials

    token = find_credentials().get("bearer")
    return {"Authorization": "Bearer " + token.decode("ascii", "replace")} if token else {}


# uproot's HTTP sources send only the basic auth of a URL's user:password@; these send the bearer token
# too, in the size request (HEAD), in every range request and on redirects, and in the fallback source
# uproot switches to when a server cannot answer multi-range requests
class _AuthHTTPResource(uproot.source.http.HTTPResource):
    def __init__(self, file_path: str, timeout, headers: dict[str, str]):
        super().__init__(file_path, timeout)
        self._auth_headers = {**self._auth_headers, **headers}


class _AuthHeaders:
    def _auth_init(self, file_path: str) -> None:
        self._bearer = bearer_headers(file_path)  # before the base class's __init__, which calls _open

    def _resources(self, n: int) -> None:
        make = [_AuthHTTPResource(self._file_path, self._timeout, self._bearer) for _ in range(n)]
        futures = uproot.source.futures
        self._executor = (futures.ResourceThreadPoolExecutor(make) if self._use_threads
                          else futures.ResourceTrivialExecutor(make[0]))

    @property
    def num_bytes(self) -> int:
        if self._num_bytes is None:
            self._num_bytes = _content_length(self._file_path, self._timeout, self.auth_headers)
        return self._num_bytes

    def __repr__(self) -> str:  # uproot's shows the path only; said here so that it stays that way
        return f"<{type(self).__name__} {self._file_path!r}>"


class _AuthMultithreadedHTTPSource(_AuthHeaders, uproot.source.http.MultithreadedHTTPSource):
    def __init__(self, file_path: str, **options):
        self._auth_init(file_path)
        super().__init__(file_path, **options)
        self._auth_headers = {**self._auth_headers, **self._bearer}

    def _open(self) -> None:
        self._resources(self._num_workers if self._use_threads else 1)


class _AuthHTTPSource(_AuthHeaders, uproot.source.http.HTTPSource):
    def __init__(self, file_path: str, **options):
        self._auth_init(file_path)
        super().__init__(file_path, **options)
        self._auth_headers = {**self._auth_headers, **self._bearer}

    def _open(self) -> None:
        self._resources(1)

    def _set_fallback(self) -> None:
        with self._fallback_lock:
            if self._fallback is None:
                self._fallback = _AuthMultithreadedHTTPSource(self._file_path, **self._fallback_options)


def _content_length(url: str, timeout, headers: dict[str, str], redirects: int = 10) -> int:
    """The file's size from a HEAD request sent with ``headers`` (uproot's sends basic auth only)."""
    parsed = urllib.parse.urlparse(url)
    for _ in range(redirects + 1):
        connection = uproot.source.http.make_connection(parsed, timeout)
        try:
            connection.request("HEAD", uproot.source.http.full_path(parsed), headers=headers)
            response = connection.getresponse()
            location = response.getheader("location")
            if 300 <= response.status < 400 and location:
                parsed = urllib.parse.urlparse(urllib.parse.urljoin(parsed.geturl(), location))
                continue
            if response.status == 404:
                raise FileNotFoundError(f"HTTP(S) returned 404 for {url}")
            if response.status != 200:
                raise http.client.HTTPException(f"HTTP response was {response.status}, rather than 200, in attempt "
                                                f"to get file size in file {url}")
            length = response.getheader("content-length")
            if not length or length.strip() == "0":
                raise http.client.HTTPException(f"response headers did not include content-length in file {url}")
            return int(length)
        finally:
            connection.close()
    raise http.client.HTTPException(f"more than {redirects} redirects for {url}")


def _tree_like(obj) -> bool:
    return isinstance(obj, uproot.behaviors.TBranch.HasBranches) or type(obj).__name__.endswith("RNTuple")


def get_tree(file: uproot.ReadOnlyDirectory, tree: str, path: str):
    """The TTree or RNTuple at ``tree`` (e.g. ``events`` or ``dir/events``), or TreeNotFoundError."""
    try:
        obj = file[tree]
    except Exception:
        obj = None
    if obj is None or not _tree_like(obj):
        available = [
            key.split(";")[0]
            for key, cls in file.classnames(recursive=True).items()
            if cls in ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple", "TNtuple", "TNtupleD")
        ]
        raise TreeNotFoundError(tree, path, available)
    return obj
