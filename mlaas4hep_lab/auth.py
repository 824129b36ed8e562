"""Who is calling: token validation for the HTTP services (inference, jobs).

Three sources, tried in this order, any number of them switched on together:

* **static tokens**: a JSON file ``{"alice": "tok-a", ...}`` (or ``{"tokens": {...}}``) for a standalone
  server;
* **OIDC access tokens** (JWT, as issued by an experiment's IAM and fetched with ``oidc-agent``): the
  signature is checked against the issuer's JWKS (PyJWT's ``PyJWKClient``), then expiry, issuer and
  audience; a configurable claim (``preferred_username`` by default) names the user;
* **JupyterHub tokens**, when the service runs as a hub service (``JUPYTERHUB_API_URL``): the token is
  checked with ``GET {hub_api}/user`` and ``Authorization: token ...``; answers are cached for a short TTL.

Clients send ``Authorization: Bearer TOKEN`` or, as JupyterHub clients do, ``Authorization: token TOKEN``.
The module imports no web framework; the services wrap :meth:`Authenticator.authenticate` in a dependency.

Example::

    auth = Authenticator(tokens={"alice": "tok-a"})
    user = await auth.authenticate("Bearer tok-a")     # User(name='alice', source='static', ...)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError, MLaaSError
from mlaas4hep_lab.json_depth import DEFAULT_MAX_DEPTH, too_deep

__all__ = ["User", "AuthError", "Authenticator", "OIDCVerifier", "load_tokens", "valid_username"]

log = logging.getLogger(__name__)
_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
_CACHE_MAX = 10_000
MAX_TOKEN_LENGTH = 16 * 1024   # JWTs of real issuers are a few kB; hub and static tokens far less


@dataclass(frozen=True)
class User:
    """An authenticated caller. ``source`` is ``static``, ``oidc``, ``hub`` or ``anonymous``."""

    name: str
    source: str
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class AuthError(MLaaSError, PermissionError):
    """A missing, malformed or rejected token (401), or an identity provider out of reach (503)."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


def valid_username(name: str) -> bool:
    """Whether ``name`` can own models: it becomes a folder of the model store."""
    return isinstance(name, str) and bool(_USERNAME.match(name))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_tokens(source: str | Path | Mapping[str, Any]) -> dict[str, str]:
    """Read a tokens file (or mapping): ``{"alice": "tok-a"}`` or ``{"tokens": {"alice": "tok-a"}}``."""
    where = "tokens"
    if not isinstance(source, Mapping):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the tokens file: {err}", source=where) from err
    if isinstance(source, Mapping) and isinstance(source.get("tokens"), Mapping):
        source = source["tokens"]
    if not isinstance(source, Mapping):
        raise ConfigError('expected {"user": "token", ...} or {"tokens": {...}}', source=where)
    out: dict[str, str] = {}
    seen: set[bytes] = set()
    for user, token in source.items():
        if not valid_username(user):
            raise ConfigError(f"user name {user!r} is not usable (letters, digits, _ . @ + -)", source=where)
        if not isinstance(token, str) or len(token) < 8:
            raise ConfigError(f"token of {user!r} must be a string of at least 8 characters", source=where)
        if _digest(token) in seen:
            raise ConfigError(f"token of {user!r} is also another user's token", source=where)
        seen.add(_digest(token))
        out[user] = token
    return out


class _TTLCache:
    """token digest -> (expiry, value); bounded, cleared when full (tokens are cheap to re-check)."""

    def __init__(self) -> None:
        self._data: dict[bytes, tuple[float, Any]] = {}

    def get(self, key: bytes) -> Any:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            self._data.pop(key, None)
            return None
        return hit[1]

    def put(self, key: bytes, value: Any, ttl: float) -> None:
        if len(self._data) >= _CACHE_MAX:
            self._data.clear()
        self._data[key] = (time.monotonic() + ttl, value)


class OIDCVerifier:
    """Checks OIDC access tokens (JWT) of one issuer.

    Args:
        issuer: the ``iss`` the tokens must carry (e.g. ``https://cms-auth.web.cern.ch/``).
        audience: the ``aud`` they must carry; None accepts any audience (say so in the deployment notes).
        jwks_url: where the signing keys are; default: ``jwks_uri`` of ``{issuer}/.well-known/openid-configuration``.
        username_claim, groups_claim: claims naming the user and their groups.
    """

    def __init__(self, issuer: str | None, audience: str | None = None, jwks_url: str | None = None,
                 username_claim: str = "preferred_username", groups_claim: str = "groups",
                 algorithms: tuple[str, ...] = ("RS256", "ES256"), leeway: float = 30.0, ttl: float = 300.0):
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.username_claim, self.groups_claim = username_claim, groups_claim
        self.algorithms, self.leeway, self.ttl = list(algorithms), leeway, ttl
        self._client = None

    def _jwks_client(self):
        if self._client is None:
            jwt = _jwt()
            url = self.jwks_url
            if not url:
                if not self.issuer:
                    raise AuthError("OIDC is configured without an issuer or a JWKS URL", 503)
                discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                with urllib.request.urlopen(discovery, timeout=5) as resp:  # noqa: S310 (configured URL)
                    url = json.loads(resp.read())["jwks_uri"]
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=self.ttl, timeout=5)
        return self._client

    def verify(self, token: str) -> tuple[User, float]:
        """(user, expiry as a Unix time); raises AuthError. Blocking: fetches the JWKS when needed."""
        jwt = _jwt()
        _check_jwt_shape(token)
        try:
            key = self._jwks_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as err:
            raise AuthError(f"cannot fetch the OIDC signing keys: {err}", 503) from err
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as err:
            raise AuthError(f"invalid token: {err}") from err
        except OSError as err:
            raise AuthError(f"cannot reach the OIDC issuer: {err}", 503) from err
        options = {"require": ["exp", "iat"] + (["iss"] if self.issuer else []),
                   "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(token, key.key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway, options=options)
        except jwt.InvalidTokenError as err:
            raise AuthError(f"invalid token: {err}") from err
        name = claims.get(self.username_claim)
        if not isinstance(name, str) or not name:
            raise AuthError(f"the token has no {self.username_claim!r} claim to name the user")
        groups = claims.get(self.groups_claim) or ()
        groups = tuple(str(g) for g in groups) if isinstance(groups, list) else (str(groups),)
        scopes = tuple(str(claims.get("scope", "")).split())
        return User(name, "oidc", groups, scopes, claims), float(claims["exp"])


def _check_jwt_shape(token: str) -> None:
    """PyJWT parses a token's header with ``json`` before checking anything: a header of a thousand nested
    arrays would raise RecursionError there (a 500). Refuse it, a deep payload and a huge token first."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError(f"token longer than {MAX_TOKEN_LENGTH} characters")
    for i, segment in enumerate(token.split(".")[:2]):
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (ValueError, binascii.Error):
            raise AuthError("invalid token: not a JWT (bad base64)") from None
        if too_deep(raw, DEFAULT_MAX_DEPTH):
            raise AuthError(f"invalid token: its {('header', 'payload')[i]} is nested too deep")


def _jwt():
    from mlaas4hep_lab import extras

    return extras.require("jwt")


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`User` (see the module docstring).

    Args:
        tokens: user -> token (static tokens).
        hub_api_url, hub_api_token: the JupyterHub API (``JUPYTERHUB_API_URL``) and the service's token.
        hub_cache_ttl: seconds a hub answer is reused for the same token.
        hub_scopes: when given, a hub token must carry one of these scopes (e.g.
            ``access:services!service=tfaas``); by default any valid hub token of a user is accepted.
        oidc: an :class:`OIDCVerifier`, or None.
        allow_anonymous: requests without a header act as user ``anonymous`` (development only).
    """

    def __init__(self, tokens: Mapping[str, str] | None = None, hub_api_url: str | None = None,
                 hub_api_token: str | None = None, hub_cache_ttl: float = 60.0,
                 oidc: OIDCVerifier | None = None, allow_anonymous: bool = False,
                 hub_scopes: tuple[str, ...] = ()):
        self._static = {_digest(tok): User(user, "static") for user, tok in (tokens or {}).items()}
        self.hub_api_url = hub_api_url.rstrip("/") if hub_api_url else None
        self.hub_api_token = hub_api_token
        self.hub_cache_ttl = hub_cache_ttl
        self.hub_scopes = tuple(hub_scopes)
        self.oidc = oidc
        self.allow_anonymous = allow_anonymous
        self._cache = _TTLCache()      # accepted tokens -> User
        self._rejected = _TTLCache()   # rejected tokens -> reason, for a few seconds
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._session = None

    @classmethod
    def from_settings(cls, settings) -> Authenticator:
        tokens = dict(load_tokens(settings.tokens_file)) if settings.tokens_file else {}
        tokens.update(load_tokens(settings.tokens) if settings.tokens else {})
        oidc = None
        if settings.oidc_issuer or settings.oidc_jwks_url:
            oidc = OIDCVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url,
                                settings.oidc_username_claim, settings.oidc_groups_claim,
                                settings.oidc_algorithms, settings.oidc_leeway)
        return cls(tokens, settings.hub_api_url, settings.hub_api_token, settings.hub_cache_ttl, oidc,
                   settings.allow_anonymous, settings.hub_scopes)

    @property
    def methods(self) -> list[str]:
        return [m for m, on in (("static", self._static), ("oidc", self.oidc), ("hub", self.hub_api_url),
                                ("anonymous", self.allow_anonymous)) if on]

    @staticmethod
    def token_from_header(header: str | None) -> str | None:
        """The token of ``Bearer TOKEN`` or ``token TOKEN``; None when there is no header."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() not in ("bearer", "token") or not token or " " in token:
            raise AuthError("malformed Authorization header: send 'Bearer TOKEN' or 'token TOKEN'")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(f"token longer than {MAX_TOKEN_LENGTH} characters")
        return token

    async def authenticate(self, header: str | None) -> User:
        """The user of this ``Authorization`` header; raises :class:`AuthError`."""
        token = self.token_from_header(header)
        if token is None:
            if self.allow_anonymous:
                return User("anonymous", "anonymous")
            raise AuthError("this service needs a token: send 'Authorization: Bearer TOKEN'")
        key = _digest(token)
        user = self._static.get(key) or self._cache.get(key)
        if user is None:
            rejected = self._rejected.get(key)
            if rejected is not None:
                raise AuthError(rejected)
            user = await self._check(key, token)
        if not valid_username(user.name):
            raise AuthError(f"user name {user.name!r} cannot own models (letters, digits, _ . @ + -)", 403)
        return user

    async def _check(self, key: bytes, token: str) -> User:
        # concurrent requests with the same new token share one check
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            user = await self._check_uncached(key, token)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            if isinstance(err, AuthError) and err.status == 401:
                self._rejected.put(key, str(err), min(self.hub_cache_ttl, 10.0))
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        else:
            future.set_result(user)
            return user
        finally:
            self._inflight.pop(key, None)

    async def _check_uncached(self, key: bytes, token: str) -> User:
        errors = []
        if self.oidc is not None and token.count(".") == 2:
            try:
                user, exp = await asyncio.to_thread(self.oidc.verify, token)
                self._cache.put(key, user, max(0.0, min(self.oidc.ttl, exp - time.time())))
                return user
            except AuthError as err:
                if not self.hub_api_url or err.status != 401:
                    raise
                errors.append(str(err))
        if self.hub_api_url:
            user = await self._hub_user(token)
            self._cache.put(key, user, self.hub_cache_ttl)
            return user
        raise AuthError(errors[0] if errors else "invalid token")

    async def _hub_user(self, token: str) -> User:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._session.get(f"{self.hub_api_url}/user",
                                         headers={"Authorization": f"token {token}"}) as resp:
                if resp.status in (401, 403, 404):
                    raise AuthError("token rejected by JupyterHub")
                if resp.status != 200:
                    raise AuthError(f"JupyterHub answered {resp.status} to the token check", 503)
                model = await resp.json(content_type=None)
        except aiohttp.ClientError as err:
            raise AuthError(f"cannot reach JupyterHub at {self.hub_api_url}: {err}", 503) from err
        except asyncio.TimeoutError as err:
            raise AuthError(f"JupyterHub at {self.hub_api_url} did not answer in time", 503) from err
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise AuthError("JupyterHub's answer names no user", 503)
        if self.hub_scopes and not set(self.hub_scopes) & set(model.get("scopes") or ()):
            raise AuthError(f"the token lacks the scope this service needs (one of {list(self.hub_scopes)})", 403)
        return User(model["name"], "hub", tuple(model.get("groups") or ()), tuple(model.get("scopes") or ()),
                    model)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
