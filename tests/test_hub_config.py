"""jupyterhub_config/: the real config file loaded with traitlets as JupyterHub loads it, for each login and
spawner mode; the GenericOAuthenticator section instantiated (no network); the Dockerfile's pins checked
against pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytest.importorskip("jupyterhub", reason="the hub extra is not installed")  # optional: pip install .[hub]

from servers import run_coroutine  # noqa: E402
from traitlets.config import Config  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

from mlaas4hep_lab.errors import ConfigError  # noqa: E402
from mlaas4hep_lab.hub import config as hubconfig  # noqa: E402
from mlaas4hep_lab.hub.settings import HubSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "jupyterhub_config" / "jupyterhub_config.py"
DOCKERFILE = REPO / "jupyterhub_config" / "Dockerfile"


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """A clean environment for the config: state in tmp_path, an existing file as the proxy command."""
    for var in list(__import__("os").environ):
        if var.startswith("MLAAS4HEP_"):
            monkeypatch.delenv(var)
    chp = tmp_path / "configurable-http-proxy"
    chp.write_text("#!/bin/sh\n")
    monkeypatch.setenv("MLAAS4HEP_CHP", str(chp))
    monkeypatch.setenv("MLAAS4HEP_HUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MLAAS4HEP_OIDC_ISSUER", "https://iam.example.org/")
    return tmp_path


def load_config() -> Config:
    """Load jupyterhub_config.py exactly as JupyterHub does (PyFileConfigLoader provides get_config)."""
    loader = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent))
    return loader.load_config()


def test_default_config_local_hub(hub_env, monkeypatch):
    monkeypatch.setenv("MLAAS4HEP_OIDC_AUDIENCE", "mlaas4hep")
    monkeypatch.setenv("MLAAS4HEP_HUB_ALLOWED_GROUPS", "cms, atlas")
    monkeypatch.setenv("MLAAS4HEP_TFAAS_PORT", "9183")
    c = load_config()
    state = hub_env / "state"
    assert c.JupyterHub.db_url == f"sqlite:///{state / 'jupyterhub.sqlite'}"
    assert c.JupyterHub.spawner_class == "simple"
    assert c.SimpleLocalProcessSpawner.home_dir_template == str(state / "home" / "{username}")
    assert c.Spawner.cmd == [sys.executable, "-m", "jupyterhub.singleuser"]
    assert ("--allow-root" in c.Spawner.get("args", [])) == (__import__("os").geteuid() == 0)
    assert c.ConfigurableHTTPProxy.command == [str(hub_env / "configurable-http-proxy")]
    # the login
    assert c.JupyterHub.authenticator_class == "mlaas4hep_lab.hub.authenticator.OIDCTokenAuthenticator"
    assert c.OIDCTokenAuthenticator.issuer == "https://iam.example.org/"
    assert c.OIDCTokenAuthenticator.audience == "mlaas4hep"
    assert c.OIDCTokenAuthenticator.allowed_groups == {"cms", "atlas"}
    assert c.Authenticator.allow_all is False  # groups listed: a valid signature alone is not enough
    from mlaas4hep_lab.hub.authenticator import OIDCTokenAuthenticator

    auth = OIDCTokenAuthenticator(config=c)
    assert (auth.issuer, auth.audience, auth.allowed_groups, auth.manage_groups) == (
        "https://iam.example.org/", "mlaas4hep", {"cms", "atlas"}, True)
    # the services: command lists, never shell strings, run by this Python
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"tfaas", "jobs", "dask-gateway"}
    services.pop("dask-gateway")  # its own module (python -m mlaas4hep_lab.hub.gateway): tests/test_hub_gateway.py
    for svc in services.values():
        assert isinstance(svc["command"], list) and all(isinstance(a, str) for a in svc["command"])
        assert svc["command"][:3] == [sys.executable, "-m", "mlaas4hep_lab.cli"]
    assert services["tfaas"]["url"] == "http://127.0.0.1:9183"
    assert services["tfaas"]["command"][3:] == ["serve", "--host", "127.0.0.1", "--port", "9183", "--store",
                                                str(state / "models")]
    assert services["jobs"]["command"][3:6] == ["jobs", "--host", "127.0.0.1"]
    # jobs run isolated, with the hub's state and the model store hidden from them
    jobs_cmd = services["jobs"]["command"]
    assert jobs_cmd[jobs_cmd.index("--isolation") + 1] == "auto" and "--allow-unisolated" not in jobs_cmd
    assert {str(state), str(state / "models")} <= {jobs_cmd[i + 1] for i, a in enumerate(jobs_cmd) if a == "--hide"}
    assert "--allow-host" not in jobs_cmd
    monkeypatch.setenv("MLAAS4HEP_JOBS_ALLOWED_HOSTS", "xrootd.site.internal:1094, 10.1.0.0/16")
    jobs_cmd = {s["name"]: s for s in load_config().JupyterHub.services}["jobs"]["command"]
    assert [jobs_cmd[i + 1] for i, a in enumerate(jobs_cmd) if a == "--allow-host"] == [
        "xrootd.site.internal:1094", "10.1.0.0/16"]
    assert services["tfaas"]["environment"]["MLAAS4HEP_PUSH_SCOPE"] == "custom:tfaas:push"
    # single-user servers find the services and get a token with the scopes for them
    # the services' public URLs, through the hub's proxy (what the Deploy tab shows), not their loopback ports
    assert c.Spawner.environment["MLAAS4HEP_SERVICE_URL"] == "http://127.0.0.1:8000/services/tfaas/"
    assert c.Spawner.environment["MLAAS4HEP_JOBS_URL"] == "http://127.0.0.1:8000/services/jobs/"
    assert {"custom:tfaas:push", "custom:jobs:submit", "access:services!service=tfaas"} <= set(
        c.Spawner.server_token_scopes)


def test_sessions_follow_the_token_expiry_when_auth_state_can_be_kept(hub_env, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_CRYPT_KEY", raising=False)
    c = load_config()
    assert "enable_auth_state" not in c.Authenticator  # the hub refuses auth state without a key
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "ab" * 32)
    monkeypatch.setenv("MLAAS4HEP_HUB_AUTH_REFRESH_AGE", "60")
    c = load_config()
    assert c.Authenticator.enable_auth_state is True and c.Authenticator.refresh_pre_spawn is True
    assert c.Authenticator.auth_refresh_age == 60


def test_scopes_and_roles(hub_env, monkeypatch):
    c = load_config()
    assert set(c.JupyterHub.custom_scopes) == {"custom:tfaas:push", "custom:jobs:submit"}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(roles["user"]["scopes"]) == {"self", "access:services!service=tfaas", "access:services!service=jobs",
                                            "access:services!service=dask-gateway",
                                            "custom:tfaas:push", "custom:jobs:submit"}
    assert roles["mlaas4hep-services"]["services"] == ["tfaas", "jobs"]
    assert c.Authenticator.allow_all is True  # nothing listed: anyone the IAM vouches for
    # push and submit limited to groups
    monkeypatch.setenv("MLAAS4HEP_HUB_PUSH_GROUPS", "cms/ml")
    monkeypatch.setenv("MLAAS4HEP_HUB_JOBS", "0")
    c = load_config()
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:tfaas:push" not in roles["user"]["scopes"]
    assert roles["mlaas4hep-pusher"] == {"name": "mlaas4hep-pusher", "description": "push models and submit training jobs",
                                         "scopes": ["custom:tfaas:push", "custom:jobs:submit"], "groups": ["cms/ml"]}
    assert [s["name"] for s in c.JupyterHub.services] == ["tfaas", "dask-gateway"]
    assert roles["mlaas4hep-services"]["services"] == ["tfaas"]


def test_roles_are_valid_for_jupyterhub(hub_env):
    """The custom scopes and roles pass JupyterHub's own validation (as at hub start)."""
    from jupyterhub import roles as jroles
    from jupyterhub import scopes as jscopes

    c = load_config()
    jscopes.define_custom_scopes(c.JupyterHub.custom_scopes)
    try:
        for role in c.JupyterHub.load_roles:
            jroles._validate_role_name(role["name"])
            jscopes._check_scopes_exist(role["scopes"], who_for=f"role {role['name']}")
        jscopes._check_scopes_exist(c.Spawner.server_token_scopes, who_for="server token")
    finally:
        for name in c.JupyterHub.custom_scopes:
            jscopes.scope_definitions.pop(name, None)


def test_generic_oauthenticator_section(hub_env, monkeypatch):
    monkeypatch.setenv("MLAAS4HEP_HUB_AUTH", "oauth")
    monkeypatch.setenv("MLAAS4HEP_OAUTH_CLIENT_ID", "mlaas4hep-client")
    monkeypatch.setenv("MLAAS4HEP_OAUTH_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("MLAAS4HEP_HUB_URL", "https://hub.example.org")
    monkeypatch.setenv("MLAAS4HEP_HUB_ALLOWED_GROUPS", "cms")
    monkeypatch.setenv("MLAAS4HEP_HUB_ADMIN_GROUPS", "cms/admins")
    c = load_config()
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    # the short name resolves to oauthenticator's class, as JupyterHub resolves it
    entry = importlib.metadata.entry_points(group="jupyterhub.authenticators")["generic-oauth"]
    cls = entry.load()
    auth = cls(config=c)  # no network: endpoints are only contacted at login
    assert type(auth).__name__ == "GenericOAuthenticator"
    assert auth.authorize_url == "https://iam.example.org/authorize"
    assert auth.token_url == "https://iam.example.org/token"
    assert auth.userdata_url == "https://iam.example.org/userinfo"
    assert auth.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"
    assert (auth.client_id, auth.client_secret) == ("mlaas4hep-client", "s3cret")
    assert auth.scope == ["openid", "profile", "email"]
    assert auth.username_claim == "preferred_username"
    assert auth.manage_groups and auth.auth_state_groups_key == "oauth_user.groups"
    assert auth.allowed_groups == {"cms"} and auth.admin_groups == {"cms/admins"}
    assert auth.allow_all is False and auth.enable_pkce is True
    # the groups of a userinfo answer become the user's hub groups, and decide who is allowed in

    userinfo = {"auth_state": {"oauth_user": {"preferred_username": "alice", "groups": ["cms", "cms/admins"]}}}
    assert run_coroutine(auth.get_user_groups(userinfo["auth_state"])) == {"cms", "cms/admins"}
    assert run_coroutine(auth.check_allowed("alice", {"name": "alice", "admin": None, "groups": ["cms"],
                                                    "auth_state": {}})) is True
    assert run_coroutine(auth.check_allowed("bob", {"name": "bob", "admin": None, "groups": ["lhcb"],
                                                  "auth_state": {}})) is False


def test_containers_modes(hub_env, monkeypatch):
    monkeypatch.setenv("MLAAS4HEP_HUB_SPAWNER", "docker")
    monkeypatch.setenv("MLAAS4HEP_HUB_IMAGE", "registry.example.org/mlaas4hep:1")
    monkeypatch.setenv("MLAAS4HEP_HUB_MEM_LIMIT", "4G")
    monkeypatch.setenv("MLAAS4HEP_HUB_URL", "https://hub.example.org")
    c = load_config()
    assert c.JupyterHub.spawner_class == "dockerspawner.DockerSpawner"
    assert c.DockerSpawner.image == "registry.example.org/mlaas4hep:1" and c.DockerSpawner.mem_limit == "4G"
    assert c.DockerSpawner.environment["MLAAS4HEP_SERVICE_URL"] == "https://hub.example.org/services/tfaas/"
    assert c.JupyterHub.hub_ip == "0.0.0.0"
    assert "cmd" not in c.Spawner  # the image's CMD runs jupyterhub-singleuser
    monkeypatch.setenv("MLAAS4HEP_HUB_SPAWNER", "kube")
    c = load_config()
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.KubeSpawner.image == "registry.example.org/mlaas4hep:1"


def test_bad_settings_say_which_variable(hub_env, monkeypatch):
    for var, value, needle in [("MLAAS4HEP_HUB_AUTH", "ldap", "MLAAS4HEP_HUB_AUTH"),
                               ("MLAAS4HEP_HUB_SPAWNER", "slurm", "MLAAS4HEP_HUB_SPAWNER"),
                               ("MLAAS4HEP_TFAAS_PORT", "http", "MLAAS4HEP_TFAAS_PORT"),
                               ("MLAAS4HEP_HUB_HOMES", "/home/all", "MLAAS4HEP_HUB_HOMES"),
                               ("MLAAS4HEP_CHP", str(hub_env / "missing"), "npm install")]:
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(ConfigError, match=needle):
                hubconfig.apply(Config(), HubSettings.from_env())
    monkeypatch.setenv("MLAAS4HEP_HUB_AUTH", "oauth")
    monkeypatch.delenv("MLAAS4HEP_OIDC_ISSUER")
    with pytest.raises(ConfigError, match="MLAAS4HEP_OIDC_ISSUER"):
        hubconfig.apply(Config(), HubSettings.from_env())


def test_pre_spawn_hook_copies_notebooks_once(hub_env, monkeypatch):
    source = hub_env / "nbs"
    (source / ".ipynb_checkpoints").mkdir(parents=True)
    (source / "dashboard.ipynb").write_text("{}")
    monkeypatch.setenv("MLAAS4HEP_HUB_NOTEBOOKS", str(source))
    c = load_config()

    class FakeSpawner:  # the hook only reads spawner.user.name
        class user:
            name = "alice"

    c.Spawner.pre_spawn_hook(FakeSpawner)
    home = hub_env / "state" / "home" / "alice"
    assert (home / "notebooks" / "dashboard.ipynb").read_text() == "{}"
    assert not (home / "notebooks" / ".ipynb_checkpoints").exists()
    (home / "notebooks" / "dashboard.ipynb").write_text('{"edited": 1}')
    c.Spawner.pre_spawn_hook(FakeSpawner)  # a user's own copy is never overwritten
    assert (home / "notebooks" / "dashboard.ipynb").read_text() == '{"edited": 1}'


def _pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)", req)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_dockerfile_agrees_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        pins.update(_pins(reqs))
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    body = "\n".join(instructions)
    docker_pins = dict(re.findall(r"\b([A-Za-z0-9_.\-]+)==([0-9][^\s\"']*)", body))
    assert docker_pins, "the Dockerfile pins nothing"
    for name, version in docker_pins.items():
        key = name.lower().replace("_", "-")
        assert key in pins, f"the Dockerfile pins {name}, which pyproject.toml does not pin"
        assert pins[key] == version, f"{name}: Dockerfile {version}, pyproject.toml {pins[key]}"
    # torch first and from the CPU index, then the package with every extra; Python as pyproject allows
    assert body.index("torch==") < body.index("[all]")
    assert "download.pytorch.org/whl/cpu" in body
    base = re.search(r"^FROM\s+(\S+)", body, re.M).group(1)
    py = re.search(r"python:(\d+)\.(\d+)", base)
    low = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups())
    assert py and (int(py.group(1)), int(py.group(2))) >= low
    # what it copies exists in the repository, and it runs the single-user server
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", body, re.M):
        for path in src.split():
            assert (REPO / path).exists(), f"COPY {path}: not in the repository"
    assert re.search(r'^CMD \["jupyterhub-singleuser"', body, re.M)
