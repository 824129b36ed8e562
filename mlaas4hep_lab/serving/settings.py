"""Settings of the inference service, each with its environment-variable default.

``Settings.from_env()`` reads the environment; ``mlaas4hep serve`` builds the same object from its flags
(a flag wins over the variable). Every field is documented where it is declared.

Example::

    settings = Settings.from_env(store_dir="/srv/models", tokens={"alice": "tok-a"})
    app = create_app(settings)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError

__all__ = ["Settings", "AuthSettings", "RUNTIMES", "SETTINGS_ENV", "env_setting", "url_prefix"]

RUNTIMES = ("auto", "onnx", "tf")
SETTINGS_ENV = "MLAAS4HEP_SERVE_SETTINGS"  # JSON of the settings, passed to uvicorn worker processes
MiB = 1 << 20


def env_setting(name: str, default: Any, kind: type = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        if kind is bool:
            if raw.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError as err:
        raise ConfigError(f"cannot read {raw!r} as {kind.__name__}", key=name, source="environment") from err


def url_prefix(raw: str) -> str:
    """``/services/tfaas/`` -> ``/services/tfaas``; ``/`` or empty -> ``""``."""
    raw = (raw or "").strip()
    if not raw or raw == "/":
        return ""
    return "/" + raw.strip("/")


@dataclass
class AuthSettings:
    """Who may call a service (any number of methods on together): the fields both HTTP services (inference,
    jobs) share, with the same environment variables; :meth:`Authenticator.from_settings` reads them."""

    # JSON file {"alice": "tok-a", ...} or {"tokens": {...}} [MLAAS4HEP_TOKENS]
    tokens_file: Path | None = field(default_factory=lambda: env_setting("MLAAS4HEP_TOKENS", None, Path))
    tokens: dict[str, str] = field(default_factory=dict)  # user -> token, beside (or instead of) the file
    # JupyterHub API, when run as a hub service: tokens are checked with GET {url}/user [JUPYTERHUB_API_URL]
    hub_api_url: str | None = field(default_factory=lambda: env_setting("JUPYTERHUB_API_URL", None))
    hub_api_token: str | None = field(default_factory=lambda: env_setting("JUPYTERHUB_API_TOKEN", None))
    hub_cache_ttl: float = field(default_factory=lambda: env_setting("MLAAS4HEP_HUB_CACHE_TTL", 60.0, float))
    # scopes one of which a hub token must carry, comma-separated (e.g. access:services!service=tfaas);
    # empty: any valid token of a hub user [MLAAS4HEP_HUB_SCOPES]
    hub_scopes: tuple[str, ...] = field(default_factory=lambda: tuple(
        s.strip() for s in env_setting("MLAAS4HEP_HUB_SCOPES", "").split(",") if s.strip()))
    # OIDC access tokens (JWT): issuer, audience, JWKS URL (default: from the issuer's discovery document)
    oidc_issuer: str | None = field(default_factory=lambda: env_setting("MLAAS4HEP_OIDC_ISSUER", None))
    oidc_audience: str | None = field(default_factory=lambda: env_setting("MLAAS4HEP_OIDC_AUDIENCE", None))
    oidc_jwks_url: str | None = field(default_factory=lambda: env_setting("MLAAS4HEP_OIDC_JWKS_URL", None))
    oidc_username_claim: str = field(default_factory=lambda: env_setting("MLAAS4HEP_OIDC_USERNAME_CLAIM",
                                                                  "preferred_username"))
    oidc_groups_claim: str = field(default_factory=lambda: env_setting("MLAAS4HEP_OIDC_GROUPS_CLAIM", "groups"))
    oidc_algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
    oidc_leeway: float = 30.0  # seconds of clock skew accepted on exp/nbf/iat
    # development only: requests without a token act as user "anonymous" [MLAAS4HEP_NO_AUTH]
    allow_anonymous: bool = field(default_factory=lambda: env_setting("MLAAS4HEP_NO_AUTH", False, bool))

    def check_auth(self) -> None:
        """Normalise and validate the fields above (called by the services' ``__post_init__``)."""
        self.tokens_file = Path(self.tokens_file) if self.tokens_file else None
        self.oidc_algorithms, self.hub_scopes = tuple(self.oidc_algorithms), tuple(self.hub_scopes)
        if self.hub_cache_ttl < 0:
            raise ConfigError(f"must not be negative, not {self.hub_cache_ttl!r}", key="hub_cache_ttl")
        if not isinstance(self.tokens, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in self.tokens.items()):
            raise ConfigError("must map user names to token strings", key="tokens")

    def auth_configured(self) -> bool:
        return bool(self.tokens_file or self.tokens or self.hub_api_url or self.oidc_issuer
                    or self.oidc_jwks_url or self.allow_anonymous)


@dataclass
class Settings(AuthSettings):
    """How ``mlaas4hep serve`` runs. Environment variables in brackets give the defaults."""

    # -- where and how it listens
    store_dir: Path = field(default_factory=lambda: Path(env_setting("MLAAS4HEP_STORE", "mlaas4hep-store")))
    host: str = field(default_factory=lambda: env_setting("MLAAS4HEP_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: env_setting("MLAAS4HEP_PORT", 8083, int))
    # port of the Open Inference Protocol's gRPC service (tritonclient.grpc) beside HTTP; 0: none
    # [MLAAS4HEP_GRPC_PORT]
    grpc_port: int = field(default_factory=lambda: env_setting("MLAAS4HEP_GRPC_PORT", 0, int))
    # uvicorn worker processes; each has its own batching queue, all share the store on disk [MLAAS4HEP_WORKERS]
    workers: int = field(default_factory=lambda: env_setting("MLAAS4HEP_WORKERS", 1, int))
    # URL prefix of every route; JupyterHub sets it for hub-managed services [JUPYTERHUB_SERVICE_PREFIX]
    prefix: str = field(default_factory=lambda: url_prefix(env_setting("JUPYTERHUB_SERVICE_PREFIX", "")))
    log_level: str = field(default_factory=lambda: env_setting("MLAAS4HEP_LOG_LEVEL", "warning"))

    # scope a hub user's token must carry to upload models (custom:tfaas:push under the hub); "": none.
    # Users of static or OIDC tokens are not asked for it [MLAAS4HEP_PUSH_SCOPE]
    push_scope: str = field(default_factory=lambda: env_setting("MLAAS4HEP_PUSH_SCOPE", ""))
    # users who may change the service's log settings (comma-separated); hub admins are admins too
    # [MLAAS4HEP_SERVE_ADMINS]
    admins: tuple[str, ...] = field(default_factory=lambda: tuple(
        s.strip() for s in env_setting("MLAAS4HEP_SERVE_ADMINS", "").split(",") if s.strip()))

    # -- models
    runtime: str = field(default_factory=lambda: env_setting("MLAAS4HEP_RUNTIME", "auto"))  # auto | onnx | tf
    runtime_threads: int = field(default_factory=lambda: env_setting("MLAAS4HEP_RUNTIME_THREADS", 1, int))
    preload: bool = True  # load the tagged versions of every model at start, not at first request

    # -- dynamic batching
    batching: bool = field(default_factory=lambda: env_setting("MLAAS4HEP_BATCHING", True, bool))
    max_batch: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_BATCH", 512, int))  # rows per pass
    # how long a batch waits for more requests after its first one; 0: take what is queued, no wait
    max_delay_ms: float = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_DELAY_MS", 0.0, float))
    queue_size: int = field(default_factory=lambda: env_setting("MLAAS4HEP_QUEUE_SIZE", 4096, int))  # full -> 503
    inference_threads: int = field(default_factory=lambda: env_setting("MLAAS4HEP_INFERENCE_THREADS", 2, int))
    # requests of at most this many rows that find their model idle are scored on the event loop itself,
    # when a one-row pass takes < 0.1 ms: lowest latency for a lone client, less throughput under load
    # (the passes no longer overlap with the HTTP work); 0: always in the inference threads
    inline_rows: int = field(default_factory=lambda: env_setting("MLAAS4HEP_INLINE_ROWS", 0, int))

    # -- limits
    max_body_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_BODY", 1 * MiB, int))
    max_upload_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_UPLOAD", 500 * MiB, int))
    max_json_depth: int = 32
    # an uploaded tarball is unpacked in one pass that stops at the first member or byte over these caps
    # (whatever its headers claim): members [MLAAS4HEP_MAX_TAR_MEMBERS], bytes of one member
    # [MLAAS4HEP_MAX_TAR_MEMBER_BYTES], unpacked bytes in all [MLAAS4HEP_MAX_TAR_BYTES]
    max_tar_members: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_TAR_MEMBERS", 10_000, int))
    max_tar_member_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_TAR_MEMBER_BYTES",
                                                                          2 << 30, int))
    max_tar_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_TAR_BYTES", 2 << 30, int))
    # unpacked bytes per uploaded byte above which an upload is refused as a compression bomb (checked
    # past 16 MiB unpacked; real models compress 1-10x, zeros 1000x); 0: no check [MLAAS4HEP_MAX_TAR_RATIO]
    max_tar_ratio: float = field(default_factory=lambda: env_setting("MLAAS4HEP_MAX_TAR_RATIO", 100.0, float))

    # -- quotas, per owner over all their models; 0: no limit (over one: 413 saying what is used)
    # unpacked bytes of the stored bundles [MLAAS4HEP_QUOTA_BYTES]
    quota_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_QUOTA_BYTES", 10 << 30, int))
    # model versions [MLAAS4HEP_QUOTA_VERSIONS]
    quota_versions: int = field(default_factory=lambda: env_setting("MLAAS4HEP_QUOTA_VERSIONS", 100, int))

    def __post_init__(self) -> None:
        self.check_auth()
        self.store_dir = Path(self.store_dir)
        self.prefix = url_prefix(self.prefix)
        self.admins = tuple(str(a) for a in self.admins)
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}",
                              key="runtime")
        for name in ("port", "grpc_port", "workers", "runtime_threads", "max_batch", "queue_size",
                     "inference_threads", "max_body_bytes", "max_upload_bytes", "max_json_depth", "max_tar_members",
                     "max_tar_member_bytes", "max_tar_bytes", "quota_bytes", "quota_versions"):
            value = getattr(self, name)
            least = 0 if name in ("port", "grpc_port", "quota_bytes", "quota_versions") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"must be {'a non-negative' if least == 0 else 'a positive'} integer, not "
                                  f"{value!r}", key=name)
        if self.grpc_port and self.grpc_port == self.port:
            raise ConfigError(f"must differ from the HTTP port {self.port}", key="grpc_port")
        if self.max_delay_ms < 0 or self.inline_rows < 0 or self.max_tar_ratio < 0:
            raise ConfigError("max_delay_ms, inline_rows and max_tar_ratio must not be negative")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment, with ``overrides`` (None values are ignored)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["store_dir"] = str(self.store_dir)
        data["tokens_file"] = str(self.tokens_file) if self.tokens_file else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
