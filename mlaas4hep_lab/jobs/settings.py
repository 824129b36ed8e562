"""Settings of the jobs service, each with its environment-variable default.

``Settings.from_env()`` reads the environment; ``mlaas4hep jobs`` builds the same object from its flags (a
flag wins over its variable). Authentication fields have the same names and variables as the inference
service's (:class:`mlaas4hep_lab.serving.settings.Settings`), so :meth:`Authenticator.from_settings` takes
either, and one tokens file or one hub configuration serves both services.

Example::

    settings = Settings.from_env(state_dir="/srv/jobs", data_roots=["/data"], tokens={"alice": "tok-a"})
    app = create_app(settings)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.jobs.isolation import MODES as ISOLATION_MODES
from mlaas4hep_lab.jobs.netpolicy import parse_allowed_hosts
from mlaas4hep_lab.serving.settings import AuthSettings, env_setting, url_prefix

__all__ = ["Settings", "parse_size", "SUBMIT_SCOPE"]

SUBMIT_SCOPE = "custom:jobs:submit"
MiB = 1 << 20
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(value: Any, key: str = "memory_limit") -> int:
    """``"4GB"``, ``"512M"``, ``"2GiB"``, ``4096`` (bytes) -> bytes; 0 or ``"none"`` -> 0 (no limit).

    Units are binary (``4GB`` = 4 x 2**30 bytes), as ``ulimit`` and container runtimes count memory."""
    if isinstance(value, bool):
        raise ConfigError(f"cannot read {value!r} as a size", key=key)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key=key)
        return int(value)
    text = str(value).strip()
    if text.lower() in ("", "0", "none", "off", "unlimited"):
        return 0
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"cannot read {value!r} as a size; write e.g. 4GB, 512MB or a number of bytes", key=key)
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def _list(raw: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in raw.split(os.pathsep) if p.strip())


@dataclass
class Settings(AuthSettings):
    """How ``mlaas4hep jobs`` runs. Environment variables in brackets give the defaults."""

    # -- where and how it listens
    # jobs.sqlite and one private folder per job (inputs, log, checkpoints, bundle) [MLAAS4HEP_JOBS_STATE]
    state_dir: Path = field(default_factory=lambda: Path(env_setting("MLAAS4HEP_JOBS_STATE", "mlaas4hep-jobs")))
    host: str = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_PORT", 8084, int))
    # URL prefix of every route; JupyterHub sets it for hub-managed services [JUPYTERHUB_SERVICE_PREFIX]
    prefix: str = field(default_factory=lambda: url_prefix(env_setting("JUPYTERHUB_SERVICE_PREFIX", "")))
    log_level: str = field(default_factory=lambda: env_setting("MLAAS4HEP_LOG_LEVEL", "warning"))

    # -- what a job may read: local paths must lie below one of these folders (os.pathsep-separated);
    # none: only root:// and http(s):// URLs are accepted [MLAAS4HEP_JOBS_DATA_ROOTS]
    data_roots: tuple[Path, ...] = field(default_factory=lambda: _paths(env_setting("MLAAS4HEP_JOBS_DATA_ROOTS", "")))
    # input URLs (files, params 'redirector') must name hosts whose addresses are all public; these hosts are
    # allowed although they are loopback, link-local or private (a site's XRootD redirector): host names,
    # host:port, IP addresses, [v6]:port, CIDR networks, comma-separated [MLAAS4HEP_JOBS_ALLOWED_HOSTS]
    allowed_hosts: tuple[str, ...] = field(default_factory=lambda: _list(env_setting("MLAAS4HEP_JOBS_ALLOWED_HOSTS", "")))

    # -- limits of each job (its own process and process group)
    max_concurrent: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_MAX_CONCURRENT", 1, int))
    # address-space limit (RLIMIT_AS) of the worker, e.g. 4GB; 0: none [MLAAS4HEP_JOBS_MEMORY_LIMIT]
    memory_limit: int = field(default_factory=lambda: parse_size(env_setting("MLAAS4HEP_JOBS_MEMORY_LIMIT", "8GB")))
    # wall-clock seconds of one run of a job (the service kills its process group); 0: none
    # [MLAAS4HEP_JOBS_TIME_LIMIT]
    time_limit: float = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_TIME_LIMIT", 3600.0, float))
    # CPU seconds (RLIMIT_CPU); default (0): time_limit x threads [MLAAS4HEP_JOBS_CPU_LIMIT]
    cpu_limit: float = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_CPU_LIMIT", 0.0, float))
    # threads of the numerical libraries in each job (OMP_NUM_THREADS, ...) [MLAAS4HEP_JOBS_THREADS]
    threads: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_THREADS", 1, int))
    max_body_bytes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_MAX_BODY", 2 * MiB, int))
    max_json_depth: int = 32
    max_files: int = 1000            # files of one job
    # jobs queued or running per user (0: no cap) [MLAAS4HEP_JOBS_PER_USER]
    max_jobs_per_user: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_PER_USER", 20, int))
    # a job whose worker died while the service was down restarts from its checkpoint this many times;
    # 0: it is marked interrupted [MLAAS4HEP_JOBS_RESUMES]
    max_resumes: int = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_RESUMES", 1, int))
    # seconds between two looks at the running jobs (status files, liveness, wall clock)
    poll_interval: float = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_POLL", 0.5, float))
    kill_grace: float = 3.0          # seconds between SIGTERM and SIGKILL of a job's process group
    # environment variables handed to the workers besides PATH, HOME, LANG... (comma-separated names);
    # the service's own secrets (JUPYTERHUB_API_TOKEN, ...) never are [MLAAS4HEP_JOBS_PASS_ENV]
    pass_env: tuple[str, ...] = field(default_factory=lambda: tuple(
        s.strip() for s in env_setting("MLAAS4HEP_JOBS_PASS_ENV", "").split(",") if s.strip()))

    # -- push of finished bundles to the inference service (with the submitter's own token)
    # the inference service's URL; when set, jobs may push only there [MLAAS4HEP_JOBS_PUSH_URL]
    push_url: str | None = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_PUSH_URL", None))

    # -- authorisation
    # a hub user's token must carry this scope to submit (custom:jobs:submit); "" : none needed
    # [MLAAS4HEP_JOBS_SUBMIT_SCOPE]
    submit_scope: str = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_SUBMIT_SCOPE", SUBMIT_SCOPE))
    # users who see and cancel every job (comma-separated); hub admins are admins too [MLAAS4HEP_JOBS_ADMINS]
    admins: tuple[str, ...] = field(default_factory=lambda: tuple(
        s.strip() for s in env_setting("MLAAS4HEP_JOBS_ADMINS", "").split(",") if s.strip()))

    # -- isolation of each job from the service, from other users' jobs and from the machine
    # (mlaas4hep_lab/jobs/isolation.py): auto (users+bwrap as root, bwrap otherwise, if it works here),
    # users+bwrap (an account per user, in a bubblewrap sandbox), users, bwrap, none [MLAAS4HEP_JOBS_ISOLATION]
    isolation: str = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_ISOLATION", "auto"))
    # run jobs although they cannot be isolated (or isolation is none); otherwise such a service refuses
    # them (503) [MLAAS4HEP_JOBS_ALLOW_UNISOLATED]
    allow_unisolated: bool = field(default_factory=lambda: env_setting("MLAAS4HEP_JOBS_ALLOW_UNISOLATED", False,
                                                                       bool))
    # more folders or files jobs must not see in their sandbox (the hub's state, ...), os.pathsep-separated;
    # the state dir, the tokens file and $MLAAS4HEP_STORE (the inference service's store) always are hidden
    # [MLAAS4HEP_JOBS_HIDE]
    hide_paths: tuple[Path, ...] = field(default_factory=lambda: _paths(env_setting("MLAAS4HEP_JOBS_HIDE", "")))

    def __post_init__(self) -> None:
        self.check_auth()
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.prefix = url_prefix(self.prefix)
        self.data_roots = tuple(Path(p).expanduser().resolve() for p in self.data_roots)
        self.memory_limit = parse_size(self.memory_limit)
        self.admins, self.pass_env = tuple(self.admins), tuple(self.pass_env)
        if isinstance(self.allowed_hosts, str):
            self.allowed_hosts = _list(self.allowed_hosts)
        self.allowed_hosts = tuple(str(h).strip() for h in self.allowed_hosts if str(h).strip())
        parse_allowed_hosts(self.allowed_hosts)  # a bad entry fails at start-up, named, not at the first job
        for name in ("max_concurrent", "threads", "max_body_bytes", "max_json_depth", "max_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"must be a positive integer, not {value!r}", key=name)
        for name in ("port", "max_jobs_per_user", "max_resumes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"must be a non-negative integer, not {value!r}", key=name)
        for name in ("time_limit", "cpu_limit", "kill_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must not be negative, not {getattr(self, name)!r}", key=name)
        if self.poll_interval <= 0:
            raise ConfigError(f"must be positive, not {self.poll_interval!r}", key="poll_interval")
        if self.push_url and not re.match(r"^https?://[^/\s]+", self.push_url):
            raise ConfigError(f"{self.push_url!r} is not an http(s):// URL", key="push_url")
        if self.push_url:
            self.push_url = self.push_url.rstrip("/")
        for root in self.data_roots:
            if not root.is_dir():
                raise ConfigError(f"data root {root} is not a folder", key="data_roots")
        self.isolation = str(self.isolation).strip().lower()
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(f"unknown isolation {self.isolation!r}; one of {', '.join(ISOLATION_MODES)}", key="isolation")
        self.hide_paths = tuple(Path(p).expanduser().resolve() for p in self.hide_paths)
        for path in self.hide_paths:   # a typo must not leave something visible that was meant to be hidden
            if not path.exists():
                raise ConfigError(f"{path} does not exist; a path to hide from jobs must exist when the service "
                                  "starts", key="hide_paths")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment, with ``overrides`` (None values are ignored)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def effective_cpu_limit(self) -> float:
        """CPU seconds a run may use (RLIMIT_CPU): ``cpu_limit``, else ``time_limit`` x ``threads`` plus the
        interpreter's start-up; 0: none."""
        if self.cpu_limit:
            return self.cpu_limit
        return self.time_limit * self.threads + 60 if self.time_limit else 0.0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"
