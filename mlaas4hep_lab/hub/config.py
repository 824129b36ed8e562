"""Fill a JupyterHub config object from :class:`~mlaas4hep_lab.hub.settings.HubSettings`.

``jupyterhub_config.py`` calls ``apply(c)``; tests call it on a fresh ``traitlets.config.Config`` and look at
the result, or run a real hub with it. No JupyterHub import at module level: the values are plain data and
class names that JupyterHub resolves when it starts.

What it sets:

* the hub: public URL, its API address, state files (SQLite, cookie secret, PIDs) in one folder;
* the proxy: configurable-http-proxy from npm, started by the hub;
* the single-user servers: ``SimpleLocalProcessSpawner`` with a home per user (default; no container engine
  needed), same Python environment (``python -m jupyterhub.singleuser``, so Voila's server extension and the
  package are there), the example notebooks copied into new homes; or DockerSpawner / KubeSpawner with the
  image of ``jupyterhub_config/Dockerfile``;
* hub-managed services, ``tfaas`` (``mlaas4hep serve``), ``jobs`` (``mlaas4hep jobs``) and ``dask-gateway``
  (Dask Gateway, :mod:`mlaas4hep_lab.hub.gateway`), each a command list, checking users' hub tokens and
  their scopes; the single-user servers get the Gateway's address and auth in their environment, so that
  ``connect("gateway")`` and the Lab's "Dask Gateway" work with no configuration;
* custom scopes ``custom:tfaas:push`` and ``custom:jobs:submit``, granted through roles to every user or to
  the groups in ``MLAAS4HEP_HUB_PUSH_GROUPS``; users may access both services;
* the login: :class:`~mlaas4hep_lab.hub.authenticator.OIDCTokenAuthenticator` (default), or
  GenericOAuthenticator against the same IAM (``MLAAS4HEP_HUB_AUTH=oauth``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.hub.settings import HubSettings

__all__ = ["apply", "SCOPES", "copy_notebooks", "services", "roles"]

PUSH_SCOPE = "custom:tfaas:push"
SUBMIT_SCOPE = "custom:jobs:submit"
SCOPES = {
    PUSH_SCOPE: {"description": "Upload (push) model bundles to the inference service."},
    SUBMIT_SCOPE: {"description": "Submit, cancel and fetch training jobs on the jobs service."},
}
GATEWAY = "dask-gateway"   # mlaas4hep_lab.hub.gateway.SERVICE (not imported: it would load traitlets' Config)
SERVICE_ACCESS = {name: f"access:services!service={name}" for name in ("tfaas", "jobs", GATEWAY)}


def apply(c: Any, settings: HubSettings | None = None) -> HubSettings:
    """Configure the JupyterHub config object ``c`` (see the module docstring); returns the settings used."""
    s = settings or HubSettings.from_env()
    s.state_dir.mkdir(parents=True, exist_ok=True)
    _hub(c, s)
    _proxy(c, s)
    _spawner(c, s)
    c.JupyterHub.services = services(s)
    c.JupyterHub.custom_scopes = {k: dict(v) for k, v in SCOPES.items()}
    c.JupyterHub.load_roles = roles(s)
    _login(c, s)
    return s


def _hub(c: Any, s: HubSettings) -> None:
    c.JupyterHub.bind_url = s.bind_url
    c.JupyterHub.hub_ip = s.hub_ip
    c.JupyterHub.hub_port = s.hub_port
    c.JupyterHub.db_url = f"sqlite:///{s.state_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(s.state_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(s.state_dir / "jupyterhub.pid")
    # a slow single-user start (first import of the ML stack) is not a failure
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 30}


def _proxy(c: Any, s: HubSettings) -> None:
    if not Path(s.chp_command).exists() and shutil.which(s.chp_command) is None:
        # fail when the hub starts, with the install command, not with a Node traceback
        raise ConfigError(f"configurable-http-proxy not found at {s.chp_command!r}; install it with: "
                          "npm install --prefix ~/.cache/mlaas4hep/chp configurable-http-proxy "
                          "(or set MLAAS4HEP_CHP to its path)", key="MLAAS4HEP_CHP")
    c.ConfigurableHTTPProxy.command = [s.chp_command]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(s.state_dir / "jupyterhub-proxy.pid")


def _user_environment(s: HubSettings, base: str | None = None) -> dict[str, str]:
    """What the widgets and notebooks in a user's server read (see widgets_contract: Deploy panel), and Dask
    Gateway's client settings (``DASK_GATEWAY__*``). ``base``: where containers reach the services (the
    hub's public URL); local servers reach the gateway on the loopback.

    The inference and jobs services' URLs are their public ones, through the hub's proxy, for local servers too:
    the Deploy tab shows that URL to the user, who copies it into scripts and other machines' clients (the
    services' own loopback ports answer on the hub machine only)."""
    public = s.bind_url.rstrip("/")
    tfaas = (base or public) + "/services/tfaas/"
    jobs = (base or public) + "/services/jobs/"
    env = {"MLAAS4HEP_SERVICE_URL": tfaas, "MLAAS4HEP_JOBS_URL": jobs}
    if s.gateway.enabled:
        from mlaas4hep_lab.hub.gateway import PREFIX, client_environment

        # the browser opens dashboards through the hub's proxy; clients reach schedulers on the gateway's TLS port
        host = s.gateway.scheduler_host or (urlsplit(base).hostname if base else s.gateway.scheduler_ip or s.service_ip)
        env.update(client_environment(s.gateway, (base or s.service_url(GATEWAY)) + PREFIX,
                                      s.bind_url.rstrip("/") + PREFIX, host))
    return env


def copy_notebooks(source: Path, home: Path) -> Path | None:
    """Copy the example notebooks into ``home/notebooks`` unless the user already has that folder."""
    target = home / "notebooks"
    if not source.is_dir() or target.exists():
        return None
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__",
                                                                   "mlaas4hep-dashboard"))
    return target


def _spawner(c: Any, s: HubSettings) -> None:
    c.Spawner.start_timeout = s.start_timeout
    c.Spawner.http_timeout = s.start_timeout
    # $JUPYTERHUB_API_TOKEN in a user's server: the subset of these the user holds, so the widgets can push to
    # the inference service and submit jobs with no copy-paste
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", *_service_access(s),
                                     PUSH_SCOPE, SUBMIT_SCOPE]
    if s.spawner == "local":
        c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner: no system users needed
        c.SimpleLocalProcessSpawner.home_dir_template = s.home_template
        # the hub's own Python: the package, jupyter_server, Voila's server extension (/user/NAME/voila/)
        c.Spawner.cmd = [s.python, "-m", "jupyterhub.singleuser"]
        if s.as_root:  # JupyterHub answers a confusing 500 otherwise
            c.Spawner.args = ["--allow-root"]
        c.Spawner.environment = _user_environment(s)
        notebooks, template = s.notebooks_dir, s.home_template

        def pre_spawn_hook(spawner):
            home = Path(template.format(username=spawner.user.name))
            home.mkdir(parents=True, exist_ok=True)
            if notebooks is not None:
                copy_notebooks(notebooks, home)

        c.Spawner.pre_spawn_hook = pre_spawn_hook
        return
    # containers reach the services through the proxy's public URL, not the hub machine's loopback
    env = _user_environment(s, base=s.bind_url.rstrip("/"))
    c.JupyterHub.hub_ip = "0.0.0.0"  # containers connect to the hub API from their own network
    if s.spawner == "docker":
        c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
        c.DockerSpawner.image = s.image
        c.DockerSpawner.notebook_dir = "/home/jovyan"
        c.DockerSpawner.volumes = {"mlaas4hep-{username}": "/home/jovyan/work"}
        c.DockerSpawner.remove = True
        c.DockerSpawner.environment = env
        if s.mem_limit:
            c.DockerSpawner.mem_limit = s.mem_limit
    else:
        c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
        c.KubeSpawner.image = s.image
        c.KubeSpawner.notebook_dir = "/home/jovyan"
        c.KubeSpawner.environment = env
        c.KubeSpawner.storage_pvc_ensure = True
        c.KubeSpawner.pvc_name_template = "mlaas4hep-{username}"
        c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "mlaas4hep-{username}"}}]
        c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan/work"}]
        if s.mem_limit:
            c.KubeSpawner.mem_limit = s.mem_limit


def services(s: HubSettings) -> list[dict[str, Any]]:
    """The hub-managed services: command lists (never shell strings), their URLs and environments.

    JupyterHub starts each with ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL`` and
    ``JUPYTERHUB_SERVICE_PREFIX`` (``/services/NAME/``), and restarts it when it exits (checked every 30 s).
    """
    home = s.state_dir / "services"  # HOME of the services: caches of the ML frameworks land there
    home.mkdir(parents=True, exist_ok=True)
    cli = [s.python, "-m", "mlaas4hep_lab.cli"]
    common = {"HOME": str(home), "MLAAS4HEP_LOG_LEVEL": "info"}
    tfaas = {
        "name": "tfaas",
        "url": s.service_url("tfaas"),
        "command": [*cli, "serve", "--host", s.service_ip, "--port", str(s.tfaas_port), "--store", str(s.store_dir)],
        "environment": {**common,
                        # a token must be allowed to access this service (or all services: admins)
                        "MLAAS4HEP_HUB_SCOPES": f"{SERVICE_ACCESS['tfaas']},access:services",
                        "MLAAS4HEP_PUSH_SCOPE": PUSH_SCOPE},
        "cwd": str(s.state_dir),
        "oauth_no_confirm": True,
    }
    out = [tfaas]
    if s.jobs_service:
        out.append({
            "name": "jobs",
            "url": s.service_url("jobs"),
            "command": [*cli, "jobs", "--host", s.service_ip, "--port", str(s.jobs_port),
                        "--state", str(s.jobs_state_dir), *_jobs_isolation(s)],
            "environment": {**common,
                            "MLAAS4HEP_HUB_SCOPES": f"{SERVICE_ACCESS['jobs']},access:services",
                            "MLAAS4HEP_JOBS_SUBMIT_SCOPE": SUBMIT_SCOPE,
                            # finished jobs push their bundles there, with the submitter's token
                            "MLAAS4HEP_JOBS_PUSH_URL": s.service_url("tfaas") + "/services/tfaas",
                            "MLAAS4HEP_JOBS_DATA_ROOTS": os.pathsep.join(s.data_roots)},
            "cwd": str(s.state_dir),
            "oauth_no_confirm": True,
        })
    if s.gateway.enabled:
        g = s.gateway
        # containers reach the scheduler port from their own network (the hub's proxy carries only HTTP)
        scheduler_ip = g.scheduler_ip or (s.service_ip if s.spawner == "local" else "0.0.0.0")  # noqa: S104
        out.append({
            "name": GATEWAY,
            "url": s.service_url(GATEWAY),
            "command": [s.python, "-m", "mlaas4hep_lab.hub.gateway"],
            "environment": {**common, **g.to_env(backend=g.backend_for(s.spawner, s.as_root),
                                                 scheduler_ip=scheduler_ip)},
            "cwd": str(s.state_dir),   # a site's dask_gateway_config.py there is loaded after ours
            "display": False,          # an API and dashboards, no page of its own on the hub's home
        })
    return out


def _jobs_isolation(s: HubSettings) -> list[str]:
    """The jobs service's isolation flags. It runs as the hub's user: as root, with bubblewrap installed, each
    training job runs under a system account of its owner in a bubblewrap sandbox (users+bwrap); not as
    root, in the sandbox only, under the hub's uid (bwrap; needs unprivileged user namespaces). Without
    either it refuses jobs (503) unless MLAAS4HEP_JOBS_ALLOW_UNISOLATED=1. The hub's state (its database,
    cookie secret, users' homes) and the model store are hidden from jobs; the jobs' data roots stay readable.
    """
    s.store_dir.mkdir(parents=True, exist_ok=True)   # a path to hide must exist when the jobs service starts
    flags = ["--isolation", os.environ.get("MLAAS4HEP_JOBS_ISOLATION", "auto").strip() or "auto",
             "--hide", str(s.state_dir), "--hide", str(s.store_dir)]
    if os.environ.get("MLAAS4HEP_JOBS_ALLOW_UNISOLATED", "").strip().lower() in ("1", "true", "yes", "on"):
        flags.append("--allow-unisolated")
    # internal data servers (a site XRootD redirector) jobs may read although their addresses are private
    for host in os.environ.get("MLAAS4HEP_JOBS_ALLOWED_HOSTS", "").split(","):
        if host.strip():
            flags += ["--allow-host", host.strip()]
    return flags


def _service_access(s: HubSettings) -> list[str]:
    names = ["tfaas", *(["jobs"] if s.jobs_service else []), *([GATEWAY] if s.gateway.enabled else [])]
    return [SERVICE_ACCESS[n] for n in names]


def roles(s: HubSettings) -> list[dict[str, Any]]:
    """Roles: every user may use the services (and start Dask Gateway clusters); push and submit go to
    everyone or to the push groups."""
    # the gateway identifies callers with their own tokens and reads nothing else of the hub
    names = [svc["name"] for svc in services(s) if svc["name"] != GATEWAY]
    user_scopes = ["self", *_service_access(s)]
    out = []
    if s.push_groups:
        out.append({"name": "mlaas4hep-pusher", "description": "push models and submit training jobs",
                    "scopes": [PUSH_SCOPE, SUBMIT_SCOPE], "groups": sorted(s.push_groups)})
    else:
        user_scopes += [PUSH_SCOPE, SUBMIT_SCOPE]
    # redefining the default 'user' role gives these scopes to every user, present and future
    out.insert(0, {"name": "user", "description": "mlaas4hep-lab user", "scopes": user_scopes})
    # the services identify callers with GET /hub/api/user and the caller's token (no rights needed for that);
    # these let them show names and groups of other users (sharing, admin views)
    out.append({"name": "mlaas4hep-services", "description": "what the tfaas and jobs services may read",
                "scopes": ["read:users:name", "read:users:groups"], "services": names})
    return out


def _login(c: Any, s: HubSettings) -> None:
    c.Authenticator.admin_users = set(s.admin_users)
    c.Authenticator.allowed_users = set(s.allowed_users)
    # nobody gets in on a valid signature alone when groups or users are listed; else any IAM user may
    c.Authenticator.allow_all = not (s.allowed_groups or s.allowed_users)
    if s.auth == "token":
        c.JupyterHub.authenticator_class = "mlaas4hep_lab.hub.authenticator.OIDCTokenAuthenticator"
        a = c.OIDCTokenAuthenticator
        a.issuer, a.audience, a.jwks_url = s.oidc_issuer, s.oidc_audience, s.oidc_jwks_url
        a.username_claim, a.groups_claim = s.username_claim, s.groups_claim
        a.allowed_groups, a.admin_groups = set(s.allowed_groups), set(s.admin_groups)
        if s.keep_auth_state:  # the token's expiry is kept (encrypted): sessions end with the token
            c.Authenticator.enable_auth_state = True
            c.Authenticator.auth_refresh_age = s.auth_refresh_age
            c.Authenticator.refresh_pre_spawn = True
        return
    generic_oauth(c, s)


def generic_oauth(c: Any, s: HubSettings) -> None:
    """GenericOAuthenticator (oauthenticator 17) for browser login to the same IAM.

    Register a client at the IAM with the redirect URI ``https://HUB/hub/oauth_callback`` and the scopes
    ``openid profile email`` (plus what gives the groups: ``wlcg.groups`` on WLCG-profile IAMs), then set
    ``MLAAS4HEP_HUB_AUTH=oauth``, ``MLAAS4HEP_OIDC_ISSUER``, ``MLAAS4HEP_OAUTH_CLIENT_ID``,
    ``MLAAS4HEP_OAUTH_CLIENT_SECRET`` and ``MLAAS4HEP_OAUTH_CALLBACK_URL``. INDIGO IAM's endpoints are
    ``{issuer}/authorize``, ``/token`` and ``/userinfo`` (the defaults here).
    """
    if not s.oidc_issuer:
        raise ConfigError("GenericOAuthenticator needs the IAM's address", key="MLAAS4HEP_OIDC_ISSUER")
    issuer = s.oidc_issuer.rstrip("/")
    c.JupyterHub.authenticator_class = "generic-oauth"
    g = c.GenericOAuthenticator
    g.client_id, g.client_secret = s.oauth_client_id, s.oauth_client_secret
    g.oauth_callback_url = s.oauth_callback_url or s.bind_url.rstrip("/") + "/hub/oauth_callback"
    g.authorize_url, g.token_url, g.userdata_url = f"{issuer}/authorize", f"{issuer}/token", f"{issuer}/userinfo"
    g.login_service = "your experiment's IAM"
    g.scope = list(s.oauth_scopes)
    g.username_claim = s.username_claim
    g.manage_groups = True
    g.auth_state_groups_key = f"oauth_user.{s.groups_claim}"
    g.allowed_groups, g.admin_groups = set(s.allowed_groups), set(s.admin_groups)
    g.allow_all = not (s.allowed_groups or s.allowed_users)
    g.enable_pkce = True
