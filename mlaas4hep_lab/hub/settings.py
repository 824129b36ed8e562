"""Every knob of the hub, each with its environment variable and default (``HubSettings.from_env()``).

``jupyterhub_config/jupyterhub_config.py`` reads these and hands them to
:func:`mlaas4hep_lab.hub.config.apply`; the table in that file's docstring lists the same variables.
No JupyterHub import here: tests and the docs read the settings without a hub.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError

__all__ = ["HubSettings", "GatewaySettings", "AUTH_MODES", "SPAWNERS", "GATEWAY_BACKENDS"]

AUTH_MODES = ("token", "oauth")        # OIDC access token login | GenericOAuthenticator browser login
SPAWNERS = ("local", "docker", "kube")  # SimpleLocalProcessSpawner | DockerSpawner | KubeSpawner
# Dask Gateway's process backends: UnsafeLocalBackend runs every cluster as the gateway's (the hub's) user;
# LocalBackend runs each as the system account named like the hub user (needs root and those accounts)
GATEWAY_BACKENDS = ("auto", "unsafe", "local")
REPO = Path(__file__).resolve().parents[2]  # a source checkout: notebooks/ and jupyterhub_config/ beside it


def _env(name: str, default: str = "") -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"must be an integer, not {raw!r}", key=name, source="environment") from None


def _bool(name: str, default: bool) -> bool:
    raw = _env(name, "1" if default else "0").lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"must be a boolean (1/0, true/false), not {raw!r}", key=name, source="environment")
    return raw in ("1", "true", "yes", "on")


def _set(name: str) -> frozenset[str]:
    return frozenset(s.strip() for s in _env(name).split(",") if s.strip())


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"must be a number, not {raw!r}", key=name, source="environment") from None
    if not value >= 0:
        raise ConfigError(f"must be 0 or more, not {raw!r}", key=name, source="environment")
    return value


def _memory(name: str, default: str) -> str:
    """A memory size as Dask Gateway reads it: a number of bytes, or a number with K, M, G or T (binary)."""
    raw = _env(name, default)
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]?", raw, re.IGNORECASE):
        raise ConfigError(f"must be a memory size such as 2G or 512M, not {raw!r}", key=name, source="environment")
    return raw.upper().replace(" ", "")


def _find_chp() -> str:
    return (_env("MLAAS4HEP_CHP") or shutil.which("configurable-http-proxy")
            or os.path.expanduser("~/.cache/mlaas4hep/chp/node_modules/.bin/configurable-http-proxy"))


def _setting(var: str, read, default) -> Any:
    """A field read from ``var`` by ``read(var, default)``; the variable's name stays in the field's metadata
    (:meth:`GatewaySettings.to_env` writes the settings back as variables)."""
    return field(default_factory=lambda: read(var, default), metadata={"env": var})


@dataclass
class GatewaySettings:
    """Dask Gateway on the hub (a hub-managed service, :mod:`mlaas4hep_lab.hub.gateway`): its ports, how it runs
    clusters, and the resources and limits of each cluster a user starts; ``[VAR]`` names the variable.

    The hub hands these to the gateway's process as the same variables (:meth:`to_env`); that process reads
    them back with ``GatewaySettings()``."""

    enabled: bool = _setting("MLAAS4HEP_HUB_GATEWAY", _bool, True)  # run Dask Gateway [MLAAS4HEP_HUB_GATEWAY]
    # the gateway's HTTP proxy, on the services' interface; the hub's proxy routes /services/dask-gateway/ to it
    ip: str = _setting("MLAAS4HEP_SERVICE_IP", _env, "127.0.0.1")  # [MLAAS4HEP_SERVICE_IP]
    port: int = _setting("MLAAS4HEP_GATEWAY_PORT", _int, 8085)  # [MLAAS4HEP_GATEWAY_PORT]
    # its scheduler proxy (TLS, routed by SNI): clients reach their schedulers there directly, since an HTTP
    # proxy cannot carry Dask's protocol [MLAAS4HEP_GATEWAY_SCHEDULER_PORT]
    scheduler_port: int = _setting("MLAAS4HEP_GATEWAY_SCHEDULER_PORT", _int, 8086)
    # where that port listens [MLAAS4HEP_GATEWAY_SCHEDULER_IP] and the host clients use for it
    # [MLAAS4HEP_GATEWAY_SCHEDULER_HOST]; defaults: MLAAS4HEP_SERVICE_IP for local servers, 0.0.0.0 and the hub
    # URL's host for servers in containers
    scheduler_ip: str = _setting("MLAAS4HEP_GATEWAY_SCHEDULER_IP", _env, "")
    scheduler_host: str = _setting("MLAAS4HEP_GATEWAY_SCHEDULER_HOST", _env, "")
    # auto: unsafe with local servers (they run as the hub's user already), local otherwise (as root)
    backend: str = _setting("MLAAS4HEP_GATEWAY_BACKEND", _env, "auto")  # [MLAAS4HEP_GATEWAY_BACKEND]
    python: str = _setting("MLAAS4HEP_HUB_PYTHON", _env, sys.executable)  # schedulers' and workers' Python
    # working folders of the clusters (logs, TLS files), removed when a cluster stops [STATE/dask-gateway]
    clusters_dir: str = _setting("MLAAS4HEP_GATEWAY_CLUSTERS", _env, "")
    # -- every cluster: its workers' size, and its limits (a limit counts the scheduler too)
    worker_cores: int = _setting("MLAAS4HEP_GATEWAY_WORKER_CORES", _int, 1)  # [MLAAS4HEP_GATEWAY_WORKER_CORES]
    worker_memory: str = _setting("MLAAS4HEP_GATEWAY_WORKER_MEMORY", _memory, "2G")  # [..._WORKER_MEMORY]
    scheduler_memory: str = _setting("MLAAS4HEP_GATEWAY_SCHEDULER_MEMORY", _memory, "1G")
    max_workers: int = _setting("MLAAS4HEP_GATEWAY_MAX_WORKERS", _int, 4)  # [MLAAS4HEP_GATEWAY_MAX_WORKERS]
    max_cores: float = _setting("MLAAS4HEP_GATEWAY_MAX_CORES", _float, 8.0)  # [MLAAS4HEP_GATEWAY_MAX_CORES]
    max_memory: str = _setting("MLAAS4HEP_GATEWAY_MAX_MEMORY", _memory, "16G")  # [MLAAS4HEP_GATEWAY_MAX_MEMORY]
    # seconds without a client or a task before the gateway stops a cluster; 0: never
    idle_timeout: float = _setting("MLAAS4HEP_GATEWAY_IDLE_TIMEOUT", _float, 1800.0)

    def __post_init__(self) -> None:
        if self.backend not in GATEWAY_BACKENDS:
            raise ConfigError(f"unknown Dask Gateway backend {self.backend!r}; choose one of "
                              f"{', '.join(GATEWAY_BACKENDS)}", key="MLAAS4HEP_GATEWAY_BACKEND")
        if self.port == self.scheduler_port:
            raise ConfigError(f"the gateway's HTTP and scheduler ports must differ (both {self.port})",
                              key="MLAAS4HEP_GATEWAY_SCHEDULER_PORT")
        for name, value in (("MLAAS4HEP_GATEWAY_WORKER_CORES", self.worker_cores),
                            ("MLAAS4HEP_GATEWAY_MAX_WORKERS", self.max_workers)):
            if value < 1:
                raise ConfigError(f"must be at least 1, not {value}", key=name)
        if self.max_cores < self.worker_cores + 1:
            raise ConfigError(f"{self.max_cores:g} cores leave no room for one worker of {self.worker_cores} "
                              "beside the scheduler's core", key="MLAAS4HEP_GATEWAY_MAX_CORES")

    def backend_for(self, spawner: str, as_root: bool) -> str:
        """``unsafe`` or ``local`` (see :data:`GATEWAY_BACKENDS`); ``auto`` picks unsafe where the users' servers
        already run as the hub's user (local servers) or where LocalBackend cannot switch users (not root)."""
        if self.backend != "auto":
            return self.backend
        return "unsafe" if spawner == "local" or not as_root else "local"

    def to_env(self, **overrides: Any) -> dict[str, str]:
        """These settings as the environment variables they are read from (``overrides``: per field)."""
        out = {}
        for f in fields(self):
            value = overrides.get(f.name, getattr(self, f.name))
            out[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else f"{value}"
        return out


@dataclass
class HubSettings:
    """The hub's settings; ``[VAR]`` names the environment variable giving each default."""

    # -- where things live
    state_dir: Path = field(default_factory=lambda: Path(_env("MLAAS4HEP_HUB_STATE", "mlaas4hep-hub")))  # [MLAAS4HEP_HUB_STATE]
    # per-user home folders; {username} is replaced [MLAAS4HEP_HUB_HOMES] (default: STATE/home/{username})
    home_template: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_HOMES"))
    # notebooks copied into each new home (not over a user's own copy) [MLAAS4HEP_HUB_NOTEBOOKS]
    notebooks_dir: Path | None = field(default_factory=lambda: Path(_env("MLAAS4HEP_HUB_NOTEBOOKS", str(REPO / "notebooks"))))
    # folders whose files jobs may read by path, os.pathsep-separated; none: only root:// and http(s)://
    # URLs [MLAAS4HEP_JOBS_DATA_ROOTS]
    data_roots: tuple[str, ...] = field(default_factory=lambda: tuple(
        p for p in _env("MLAAS4HEP_JOBS_DATA_ROOTS").split(os.pathsep) if p.strip()))

    # -- network
    bind_url: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_URL", "http://127.0.0.1:8000"))  # public URL [MLAAS4HEP_HUB_URL]
    hub_ip: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_IP", "127.0.0.1"))  # hub API [MLAAS4HEP_HUB_IP]
    hub_port: int = field(default_factory=lambda: _int("MLAAS4HEP_HUB_PORT", 8081))  # [MLAAS4HEP_HUB_PORT]
    proxy_api_port: int = field(default_factory=lambda: _int("MLAAS4HEP_HUB_PROXY_API_PORT", 8001))
    chp_command: str = field(default_factory=_find_chp)  # configurable-http-proxy [MLAAS4HEP_CHP]
    service_ip: str = field(default_factory=lambda: _env("MLAAS4HEP_SERVICE_IP", "127.0.0.1"))
    tfaas_port: int = field(default_factory=lambda: _int("MLAAS4HEP_TFAAS_PORT", 8083))  # [MLAAS4HEP_TFAAS_PORT]
    jobs_port: int = field(default_factory=lambda: _int("MLAAS4HEP_JOBS_PORT", 8084))  # [MLAAS4HEP_JOBS_PORT]
    store_dir: Path | None = field(default_factory=lambda: Path(_env("MLAAS4HEP_STORE")) if _env("MLAAS4HEP_STORE") else None)
    jobs_state_dir: Path | None = field(default_factory=lambda: Path(_env("MLAAS4HEP_JOBS_STATE")) if _env("MLAAS4HEP_JOBS_STATE") else None)
    jobs_service: bool = field(default_factory=lambda: _bool("MLAAS4HEP_HUB_JOBS", True))  # run the jobs service
    # Dask Gateway: ports, backend, each user's cluster limits (MLAAS4HEP_HUB_GATEWAY, MLAAS4HEP_GATEWAY_*)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    # -- login
    auth: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_AUTH", "token"))  # token | oauth [MLAAS4HEP_HUB_AUTH]
    oidc_issuer: str = field(default_factory=lambda: _env("MLAAS4HEP_OIDC_ISSUER"))  # [MLAAS4HEP_OIDC_ISSUER]
    oidc_audience: str = field(default_factory=lambda: _env("MLAAS4HEP_OIDC_AUDIENCE"))  # [MLAAS4HEP_OIDC_AUDIENCE]
    oidc_jwks_url: str = field(default_factory=lambda: _env("MLAAS4HEP_OIDC_JWKS_URL"))  # [MLAAS4HEP_OIDC_JWKS_URL]
    username_claim: str = field(default_factory=lambda: _env("MLAAS4HEP_OIDC_USERNAME_CLAIM", "preferred_username"))
    groups_claim: str = field(default_factory=lambda: _env("MLAAS4HEP_OIDC_GROUPS_CLAIM", "groups"))
    allowed_groups: frozenset[str] = field(default_factory=lambda: _set("MLAAS4HEP_HUB_ALLOWED_GROUPS"))
    allowed_users: frozenset[str] = field(default_factory=lambda: _set("MLAAS4HEP_HUB_ALLOWED_USERS"))
    admin_groups: frozenset[str] = field(default_factory=lambda: _set("MLAAS4HEP_HUB_ADMIN_GROUPS"))
    admin_users: frozenset[str] = field(default_factory=lambda: _set("MLAAS4HEP_HUB_ADMIN_USERS"))
    # groups whose members may push models and submit jobs; empty: every user [MLAAS4HEP_HUB_PUSH_GROUPS]
    push_groups: frozenset[str] = field(default_factory=lambda: _set("MLAAS4HEP_HUB_PUSH_GROUPS"))
    # with JUPYTERHUB_CRYPT_KEY set (auth state kept), a session is checked against its access token's expiry
    # at most this often (seconds); an expired token means logging in again [MLAAS4HEP_HUB_AUTH_REFRESH_AGE]
    auth_refresh_age: int = field(default_factory=lambda: _int("MLAAS4HEP_HUB_AUTH_REFRESH_AGE", 300))
    keep_auth_state: bool = field(default_factory=lambda: bool(_env("JUPYTERHUB_CRYPT_KEY")))
    # GenericOAuthenticator (auth = oauth): the IAM client; endpoints default to the issuer's IAM paths
    oauth_client_id: str = field(default_factory=lambda: _env("MLAAS4HEP_OAUTH_CLIENT_ID"))
    oauth_client_secret: str = field(default_factory=lambda: _env("MLAAS4HEP_OAUTH_CLIENT_SECRET"))
    oauth_callback_url: str = field(default_factory=lambda: _env("MLAAS4HEP_OAUTH_CALLBACK_URL"))
    oauth_scopes: tuple[str, ...] = field(default_factory=lambda: tuple(
        _env("MLAAS4HEP_OAUTH_SCOPES", "openid profile email").split()))

    # -- single-user servers
    spawner: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_SPAWNER", "local"))  # local | docker | kube
    image: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_IMAGE", "mlaas4hep-lab-singleuser:0.1.0"))
    start_timeout: int = field(default_factory=lambda: _int("MLAAS4HEP_HUB_START_TIMEOUT", 300))  # seconds
    mem_limit: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_MEM_LIMIT"))  # e.g. 4G (containers)
    python: str = field(default_factory=lambda: _env("MLAAS4HEP_HUB_PYTHON", sys.executable))  # servers' Python

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        if not self.home_template:
            self.home_template = str(self.state_dir / "home" / "{username}")
        if self.store_dir is None:
            self.store_dir = self.state_dir / "models"
        if self.jobs_state_dir is None:
            self.jobs_state_dir = self.state_dir / "jobs"
        if not self.gateway.clusters_dir:
            self.gateway.clusters_dir = str(self.state_dir / "dask-gateway")
        self.gateway.python = self.python   # clusters run the Python the users' kernels run
        self.gateway.ip = self.service_ip
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"unknown login {self.auth!r}; choose one of {', '.join(AUTH_MODES)}",
                              key="MLAAS4HEP_HUB_AUTH")
        if self.spawner not in SPAWNERS:
            raise ConfigError(f"unknown spawner {self.spawner!r}; choose one of {', '.join(SPAWNERS)}",
                              key="MLAAS4HEP_HUB_SPAWNER")
        if "{username}" not in self.home_template:
            raise ConfigError("must contain {username}, so that every user gets a home of their own",
                              key="MLAAS4HEP_HUB_HOMES")

    @classmethod
    def from_env(cls, **overrides) -> HubSettings:
        """Settings from the environment, with ``overrides`` (keyword per field)."""
        return cls(**overrides)

    def service_url(self, name: str) -> str:
        """Where the hub and the proxy reach a service (``tfaas``, ``jobs`` or ``dask-gateway``)."""
        port = {"tfaas": self.tfaas_port, "jobs": self.jobs_port, "dask-gateway": self.gateway.port}[name]
        return f"http://{self.service_ip}:{port}"

    @property
    def as_root(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0
