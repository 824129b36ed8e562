"""Every knob of the hub, each with its environment variable and default (``HubSettings.from_env()``).

``jupyterhub_config/jupyterhub_config.py`` reads these and hands them to
:func:`mlaas4hep_lab.hub.config.apply`; the table in that file's docstring lists the same variables.
No JupyterHub import here: tests and the docs read the settings without a hub.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlaas4hep_lab.errors import ConfigError

__all__ = ["HubSettings", "AUTH_MODES", "SPAWNERS"]

AUTH_MODES = ("token", "oauth")        # OIDC access token login | GenericOAuthenticator browser login
SPAWNERS = ("local", "docker", "kube")  # SimpleLocalProcessSpawner | DockerSpawner | KubeSpawner
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


def _find_chp() -> str:
    return (_env("MLAAS4HEP_CHP") or shutil.which("configurable-http-proxy")
            or os.path.expanduser("~/.cache/mlaas4hep/chp/node_modules/.bin/configurable-http-proxy"))


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
        """Where the hub and the proxy reach a service (``tfaas`` or ``jobs``)."""
        port = {"tfaas": self.tfaas_port, "jobs": self.jobs_port}[name]
        return f"http://{self.service_ip}:{port}"

    @property
    def as_root(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0
