"""A local OIDC issuer for development and tests: its own RSA key, a JWKS and a discovery document on
127.0.0.1, and tokens shaped like those of an experiment's IAM (INDIGO IAM, as CMS's and ATLAS's).

It only signs what it is asked to sign: there is no login, no client registration, no refresh. Use it to try
the hub on a laptop, or in tests that need real signatures checked against a real JWKS over HTTP.

Example::

    with DevIssuer() as iss:                      # serves http://127.0.0.1:PORT/.well-known/...
        token = iss.token("alice", groups=["cms"], audience="mlaas4hep")
        # jupyterhub with MLAAS4HEP_OIDC_ISSUER=iss.url accepts `token` on its login page

From a shell (keys kept in a folder, so ``mint`` and ``serve`` agree)::

    python -m mlaas4hep_lab.hub.dev_issuer serve --keys ~/.mlaas4hep-issuer --port 9000 &
    python -m mlaas4hep_lab.hub.dev_issuer mint --keys ~/.mlaas4hep-issuer --port 9000 alice --groups cms
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from mlaas4hep_lab import extras

__all__ = ["DevIssuer", "main"]


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _load_or_make_key(folder: Path | None):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = folder / "issuer-key.pem" if folder else None
    if path is not None and path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key


class DevIssuer:
    """An OIDC issuer on ``http://127.0.0.1:PORT`` (``url``), started by ``start()`` or ``with``.

    Args:
        port: 0 picks a free one.
        key_dir: keep the private key there (``issuer-key.pem``) so restarts and ``mint`` keep the same key;
            None makes a fresh key in memory.
        kid: the key id announced in the JWKS and put in token headers.
        path: path part of the issuer URL (IAMs use ``/``; Keycloak uses ``/realms/NAME``).
    """

    def __init__(self, port: int = 0, key_dir: str | Path | None = None, kid: str = "dev-key-1",
                 path: str = "/"):
        self.key = _load_or_make_key(Path(key_dir).expanduser() if key_dir else None)
        self.kid = kid
        self._path = "/" + path.strip("/") if path.strip("/") else ""
        self._port = port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[str] = []  # paths asked for, for tests that check key caching

    # -- what it serves
    @property
    def url(self) -> str:
        """The issuer (the ``iss`` claim); no trailing slash."""
        if self._server is None and not self._port:
            raise RuntimeError("DevIssuer: start() it first, or give a fixed port")
        port = self._server.server_address[1] if self._server else self._port
        return f"http://127.0.0.1:{port}{self._path}"

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                          "n": _b64(numbers.n), "e": _b64(numbers.e)}]}

    def discovery(self) -> dict[str, Any]:
        base = self.url
        return {"issuer": base, "jwks_uri": f"{base}/jwk", "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token", "userinfo_endpoint": f"{base}/userinfo",
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"]}

    # -- tokens
    def token(self, username: str, groups: list[str] | tuple[str, ...] = (), audience: str | list[str] | None = None,
              lifetime: float = 3600.0, issued_ago: float = 0.0, issuer: str | None = None,
              username_claim: str = "preferred_username", groups_claim: str = "groups",
              scope: str = "openid profile", kid: str | None = None, **claims: Any) -> str:
        """A signed access token (RS256). ``lifetime`` < 0 gives an expired one; ``issuer`` overrides ``iss``."""
        jwt = extras.require("jwt")
        now = time.time() - issued_ago
        payload: dict[str, Any] = {"iss": issuer or self.url, "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, username)),
                                   username_claim: username, groups_claim: list(groups), "scope": scope,
                                   "iat": int(now), "nbf": int(now), "exp": int(now + lifetime),
                                   "jti": uuid.uuid4().hex}
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    # -- the HTTP server
    def start(self) -> DevIssuer:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - quiet: tests read `requests` instead
                pass

            def do_GET(self):
                issuer.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                routes = {f"{issuer._path}/.well-known/openid-configuration": issuer.discovery,
                          f"{issuer._path}/jwk": issuer.jwks}
                make = routes.get(path)
                body = json.dumps(make() if make else {"error": f"not found: {path}"}).encode()
                self.send_response(200 if make else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="mlaas4hep-dev-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._port = self._server.server_address[1]
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``serve`` the issuer, or ``mint`` a token with the same key (printed on stdout)."""
    parser = argparse.ArgumentParser(prog="python -m mlaas4hep_lab.hub.dev_issuer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "mint"):
        p = sub.add_parser(name)
        p.add_argument("--keys", required=True, help="folder holding issuer-key.pem (made on first use)")
        p.add_argument("--port", type=int, default=9000, help="port of the issuer (default: %(default)s)")
    mint = sub.choices["mint"]
    mint.add_argument("username")
    mint.add_argument("--groups", nargs="*", default=[])
    mint.add_argument("--audience", default=None)
    mint.add_argument("--lifetime", type=float, default=3600.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    issuer = DevIssuer(port=args.port, key_dir=args.keys)
    if args.command == "mint":
        print(issuer.token(args.username, args.groups, args.audience, args.lifetime))
        return 0
    issuer.start()
    print(f"issuer {issuer.url} (JWKS {issuer.url}/jwk); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        issuer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
