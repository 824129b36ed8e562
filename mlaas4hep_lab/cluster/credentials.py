"""Grid credentials of this process, handed to the Dask workers that read the files.

A worker on another machine does not see this process's files or environment. What the reading side
needs is found here as the grid tools find it (the WLCG bearer token discovery order: ``BEARER_TOKEN``,
``BEARER_TOKEN_FILE``, ``$XDG_RUNTIME_DIR/bt_u$UID``, ``/tmp/bt_u$UID``; the X.509 proxy in
``X509_USER_PROXY`` or ``/tmp/x509up_u$UID``), sent once to every worker (present and future) through a
worker plugin, written there to a private file (mode 0600) in the worker's own folder, and pointed at by the
same variables (``BEARER_TOKEN_FILE``, ``X509_USER_PROXY``) so XRootD and the HTTP reader pick them up.
Their contents are never logged, printed or shown in a repr.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["forward_credentials", "find_credentials"]

log = logging.getLogger(__name__)

PLUGIN_NAME = "mlaas4hep-credentials"


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def _read(path: str | os.PathLike | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def find_credentials(environ: dict | None = None) -> dict[str, bytes]:
    """``{"bearer": token, "x509": proxy}`` as far as this process has them (missing ones left out)."""
    env = os.environ if environ is None else environ
    found: dict[str, bytes] = {}
    token = env.get("BEARER_TOKEN", "").strip().encode() or _read(env.get("BEARER_TOKEN_FILE"))
    if token is None and env.get("XDG_RUNTIME_DIR"):
        token = _read(Path(env["XDG_RUNTIME_DIR"]) / f"bt_u{_uid()}")
    if token is None:
        token = _read(f"/tmp/bt_u{_uid()}")
    if token and token.strip():
        found["bearer"] = token.strip()
    proxy = _read(env.get("X509_USER_PROXY")) or _read(f"/tmp/x509up_u{_uid()}")
    if proxy:
        found["x509"] = proxy
    return found


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _mask(content: bytes) -> tuple[bytes, bytes]:
    pad = os.urandom(len(content))
    return pad, _xor(content, pad)


def _unmask(masked: tuple[bytes, bytes]) -> bytes:
    pad, content = masked
    return _xor(content, pad)


class _CredentialsPlugin:
    """The worker side: write each credential to a private file and point the usual variable at it."""

    name = PLUGIN_NAME
    # not idempotent: registering again (a renewed token: WLCG tokens live minutes to hours) replaces it
    idempotent = False
    _files = {"bearer": ("bt", "BEARER_TOKEN_FILE"), "x509": ("x509up", "X509_USER_PROXY")}

    def __init__(self, credentials: dict[str, bytes]):
        # masked with a random pad: Dask's DEBUG logs print the pickled plugin as it travels, and the token
        # must not appear there in clear (this hides it from logs; the comm's TLS protects it in transit)
        self._credentials = {kind: _mask(content) for kind, content in credentials.items()}

    def setup(self, worker=None) -> None:
        base = Path(getattr(worker, "local_directory", None) or os.environ.get("TMPDIR", "/tmp"))
        folder = base / "mlaas4hep-credentials"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for kind, masked in self._credentials.items():
            content = _unmask(masked)
            filename, variable = self._files[kind]
            path = folder / filename
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.chmod(path, 0o600)
            os.environ[variable] = str(path)
            if kind == "bearer":
                os.environ.pop("BEARER_TOKEN", None)  # the file is what readers use now, one source only

    def teardown(self, worker=None) -> None:
        for kind in self._credentials:
            path = os.environ.get(self._files[kind][1], "")
            if path.endswith(("/mlaas4hep-credentials/bt", "/mlaas4hep-credentials/x509up")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def __repr__(self) -> str:
        return f"<mlaas4hep credentials: {', '.join(sorted(self._credentials)) or 'none'}>"

    __str__ = __repr__


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class CredentialsPlugin(_CredentialsPlugin, WorkerPlugin):
        pass

    return CredentialsPlugin


def forward_credentials(client, environ: dict | None = None) -> list[str]:
    """Register this process's grid credentials with every worker of ``client``; returns their kinds
    (``["bearer", "x509"]``, or fewer: nothing is registered when there are none)."""
    credentials = find_credentials(environ)
    if not credentials:
        return []
    client.register_plugin(_plugin_class()(credentials), name=PLUGIN_NAME)
    kinds = sorted(credentials)
    log.info("grid credentials sent to the Dask workers: %s", ", ".join(kinds))
    return kinds
