"""Dask Gateway on the hub: its settings as the gateway server reads them, the users' client environment, and
end to end a real JupyterHub (configurable-http-proxy from npm) with the ``dask-gateway`` service of our
config, where a user's kernel starts a cluster with ``connect("gateway:1")`` (workers run a task; the limits
hold; another user's Gateway client neither sees nor reaches it; a token without the service's scope is
refused) and the Lab in Chromium trains on "Dask Gateway" and links the cluster's dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("jupyterhub", reason="the hub extra is not installed")  # optional: pip install .[hub]

from servers import free_port, require_chp, require_chromium, run_coroutine  # noqa: E402
from test_hub_e2e import AUD, CONFIG, DASHBOARD, Hub, http, login, shots, wait_for  # noqa: E402, F401  (shots: fixture)
from traitlets.config import Config  # noqa: E402

from mlaas4hep_lab.errors import ConfigError  # noqa: E402
from mlaas4hep_lab.hub import config as hubconfig  # noqa: E402
from mlaas4hep_lab.hub.gateway import PREFIX, gateway_config  # noqa: E402
from mlaas4hep_lab.hub.settings import GatewaySettings, HubSettings  # noqa: E402

LIMITS = {"MLAAS4HEP_GATEWAY_MAX_WORKERS": "4", "MLAAS4HEP_GATEWAY_MAX_CORES": "3",
          "MLAAS4HEP_GATEWAY_WORKER_MEMORY": "1G", "MLAAS4HEP_GATEWAY_SCHEDULER_MEMORY": "512M",
          "MLAAS4HEP_GATEWAY_MAX_MEMORY": "4G", "MLAAS4HEP_GATEWAY_IDLE_TIMEOUT": "600"}


@pytest.fixture
def gateway_env(monkeypatch, tmp_path):
    """A clean environment for the hub's config (as tests/test_hub_config.py), with tight cluster limits."""
    for var in list(os.environ):
        if var.startswith(("MLAAS4HEP_", "DASK_GATEWAY")):
            monkeypatch.delenv(var)
    chp = tmp_path / "configurable-http-proxy"
    chp.write_text("#!/bin/sh\n")
    monkeypatch.setenv("MLAAS4HEP_CHP", str(chp))
    monkeypatch.setenv("MLAAS4HEP_HUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MLAAS4HEP_OIDC_ISSUER", "https://iam.example.org/")
    for var, value in LIMITS.items():
        monkeypatch.setenv(var, value)
    return tmp_path


# ------------------------------------------------------------------------------- configuration (no hub)
def test_the_gateway_service_reads_the_hubs_settings(gateway_env, monkeypatch):
    pytest.importorskip("dask_gateway_server", reason="the hub extra is not installed")
    from dask_gateway_server.auth import JupyterHubAuthenticator
    from dask_gateway_server.backends.local import LocalClusterConfig
    from dask_gateway_server.proxy import Proxy

    monkeypatch.setenv("MLAAS4HEP_GATEWAY_PORT", "9185")
    monkeypatch.setenv("MLAAS4HEP_GATEWAY_SCHEDULER_PORT", "9186")
    c = Config()
    settings = hubconfig.apply(c, HubSettings.from_env())
    service = {s["name"]: s for s in c.JupyterHub.services}["dask-gateway"]
    assert service["url"] == "http://127.0.0.1:9185"
    assert service["command"] == [sys.executable, "-m", "mlaas4hep_lab.hub.gateway"]
    # with local servers (every one runs as the hub's user) the clusters run as the hub's user too
    assert service["environment"]["MLAAS4HEP_GATEWAY_BACKEND"] == "unsafe"
    # users may use it, and their servers' tokens carry the scope the gateway requires
    scope = "access:services!service=dask-gateway"
    assert scope in {r["name"]: r for r in c.JupyterHub.load_roles}["user"]["scopes"]
    assert scope in c.Spawner.server_token_scopes

    # the service's process: nothing but its environment, read back as the hub wrote it
    for var in list(os.environ):
        if var.startswith("MLAAS4HEP_"):
            monkeypatch.delenv(var)
    for var, value in service["environment"].items():
        monkeypatch.setenv(var, value)
    g = GatewaySettings()
    assert (g.port, g.scheduler_port, g.clusters_dir) == (9185, 9186, settings.gateway.clusters_dir)
    gc = gateway_config(g)
    assert gc.DaskGateway.backend_class.endswith("UnsafeLocalBackend")
    # the gateway's own classes take the values: the limits of every cluster, its proxy below the prefix
    cluster = LocalClusterConfig(config=gc)
    assert (cluster.worker_cores, cluster.worker_memory, cluster.idle_timeout) == (1, 2**30, 600)
    assert (cluster.cluster_max_cores, cluster.cluster_max_memory) == (3, 4 * 2**30)
    assert cluster.cluster_max_workers == 2   # 3 cores, one the scheduler's: 2 workers although 4 are allowed
    assert cluster.scheduler_cmd == [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    proxy = Proxy(config=gc)
    assert (proxy.address, proxy.tcp_address, proxy.prefix) == ("127.0.0.1:9185", "127.0.0.1:9186", PREFIX)
    assert JupyterHubAuthenticator(config=gc).jupyterhub_service_name == "dask-gateway"


def test_a_users_server_needs_no_gateway_configuration(gateway_env, monkeypatch):
    pytest.importorskip("dask_gateway", reason="the dask extra is not installed")
    monkeypatch.setenv("MLAAS4HEP_HUB_URL", "https://hub.example.org")
    c = Config()
    hubconfig.apply(c, HubSettings.from_env())
    env = c.Spawner.environment
    assert env["DASK_GATEWAY__ADDRESS"] == "http://127.0.0.1:8085/services/dask-gateway"
    assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == "https://hub.example.org/services/dask-gateway"
    # what dask_gateway.Gateway() makes of that environment, in a fresh process as a kernel would
    code = ("from dask_gateway import Gateway; g = Gateway(); "
            "print(g.address, g.proxy_address, g._public_address, type(g.auth).__name__, g.auth.api_token)")
    child = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run([sys.executable, "-c", code], env={**child, **env, "JUPYTERHUB_API_TOKEN": "tok"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["http://127.0.0.1:8085/services/dask-gateway", "gateway://127.0.0.1:8086",
                                  "https://hub.example.org/services/dask-gateway", "JupyterHubAuth", "tok"]
    # servers in containers reach the gateway through the hub's URL, and its scheduler port on the hub's host
    monkeypatch.setenv("MLAAS4HEP_HUB_SPAWNER", "docker")
    c = Config()
    hubconfig.apply(c, HubSettings.from_env())
    env = c.DockerSpawner.environment
    assert env["DASK_GATEWAY__ADDRESS"] == "https://hub.example.org/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://hub.example.org:8086"
    service = {s["name"]: s for s in c.JupyterHub.services}["dask-gateway"]
    assert service["environment"]["MLAAS4HEP_GATEWAY_SCHEDULER_IP"] == "0.0.0.0"
    # turned off: no service, no scope, nothing in the servers' environment
    monkeypatch.setenv("MLAAS4HEP_HUB_GATEWAY", "0")
    c = Config()
    hubconfig.apply(c, HubSettings.from_env())
    assert "dask-gateway" not in [s["name"] for s in c.JupyterHub.services]
    assert not [k for k in c.DockerSpawner.environment if k.startswith("DASK_GATEWAY")]
    assert "access:services!service=dask-gateway" not in c.Spawner.server_token_scopes


def test_bad_gateway_settings_say_which_variable(gateway_env, monkeypatch):
    for var, value, needle in [("MLAAS4HEP_GATEWAY_BACKEND", "slurm", "unsafe, local"),
                               ("MLAAS4HEP_GATEWAY_WORKER_MEMORY", "lots", "memory size"),
                               ("MLAAS4HEP_GATEWAY_MAX_CORES", "1", "no room for one worker"),
                               ("MLAAS4HEP_GATEWAY_MAX_WORKERS", "0", "at least 1"),
                               ("MLAAS4HEP_GATEWAY_IDLE_TIMEOUT", "-5", "0 or more"),
                               ("MLAAS4HEP_GATEWAY_SCHEDULER_PORT", "8085", "must differ")]:
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(ConfigError, match=needle) as err:
                HubSettings.from_env()
            assert var in str(err.value)
    g = GatewaySettings()
    assert [g.backend_for(spawner, root) for spawner, root in
            (("local", True), ("docker", True), ("kube", False))] == ["unsafe", "local", "unsafe"]


# ----------------------------------------------------------------------------------------- end to end
class GatewayHub(Hub):
    """The e2e hub of tests/test_hub_e2e.py with Dask Gateway on free ports, tight limits, no jobs service."""

    def __init__(self, root, issuer, data_root):
        super().__init__(root, issuer, data_root)
        self.scheduler_port = free_port()
        self.env.update({**LIMITS, "MLAAS4HEP_GATEWAY_MAX_WORKERS": "1",
                         "MLAAS4HEP_GATEWAY_PORT": str(free_port()),
                         "MLAAS4HEP_GATEWAY_SCHEDULER_PORT": str(self.scheduler_port),
                         "MLAAS4HEP_HUB_JOBS": "0", "MLAAS4HEP_HUB_GATEWAY": "1"})

    def start(self) -> GatewayHub:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)], cwd=self.root,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for("the hub answers through the proxy", lambda: self._alive() and self.get("/hub/health")[0] == 200,
                 180, on_fail=self.log_tail)
        wait_for("Dask Gateway answers through the hub's proxy",
                 lambda: self._alive() and self.get(PREFIX + "/api/health")[0] == 200, 180, on_fail=self.log_tail)
        return self

    @contextlib.contextmanager
    def gateway(self, token: str):
        """A Dask Gateway client as another program would make it: through the hub's proxy, with ``token``."""
        from dask_gateway import Gateway, JupyterHubAuth

        g = Gateway(address=self.url + PREFIX, proxy_address=f"gateway://127.0.0.1:{self.scheduler_port}",
                    auth=JupyterHubAuth(api_token=token))
        try:
            yield g
        finally:
            g.close()
            del g._loop_runner   # dask-gateway 2026.3's __del__ would close it again, and raise: its loop is gone


@pytest.fixture(scope="module")
def gw_hub(tmp_path_factory, issuer):
    require_chp()
    pytest.importorskip("dask_gateway_server", reason="the hub extra is not installed")
    h = GatewayHub(tmp_path_factory.mktemp("gw-hub"), issuer, tmp_path_factory.mktemp("gw-data"))
    try:
        yield h.start()
    finally:
        h.stop()


def _token(hub: Hub, issuer, name: str) -> str:
    status, answer = hub.exchange(issuer.token(name, groups=["cms"], audience=AUD))
    assert status == 200, answer
    return answer["token"]


def _start_server(hub: Hub, name: str, token: str) -> None:
    status, answer = http("POST", f"{hub.url}/hub/api/users/{name}/server", token)
    assert status in (201, 202, 400), answer   # 400: already running
    wait_for(f"{name}'s server ready", lambda: hub.get(f"/hub/api/users/{name}", token)[1]["servers"][""]["ready"],
             300, interval=1.0, on_fail=hub.log_tail)


async def _execute(ws_url: str, token: str, code: str, timeout: float) -> tuple[str, str]:
    """Run ``code`` in a kernel over its websocket (what JupyterLab does): (stdout, error or "")."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    out, error = [], ""
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), timeout)
            if raw is None:
                raise ConnectionError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), error
    finally:
        ws.close()


class Kernel:
    """A kernel in a user's server, driven through the server's REST API and websocket with the user's token."""

    def __init__(self, hub: Hub, user: str, token: str):
        self.hub, self.user, self.token = hub, user, token
        status, kernel = http("POST", f"{hub.url}/user/{user}/api/kernels", token, body={"name": "python3"})
        assert status == 201, kernel
        self.id = kernel["id"]

    def run(self, code: str, timeout: float = 180) -> str:
        ws = f"{self.hub.url.replace('http', 'ws', 1)}/user/{self.user}/api/kernels/{self.id}/channels"
        out, error = run_coroutine(_execute(ws, self.token, code, timeout))
        assert not error, re.sub(r"\x1b\[[0-9;]*m", "", error) + "\n" + self.hub.log_tail(40)
        return out

    def shutdown(self) -> None:
        http("DELETE", f"{self.hub.url}/user/{self.user}/api/kernels/{self.id}", self.token)


_START = """
import json, os, warnings
from mlaas4hep_lab.cluster.connect import connect

cluster = connect("gateway:1")        # address, scheduler proxy and auth: from the server's environment
def where(x):
    import os
    return x * 2, os.environ.get("DASK_GATEWAY_CLUSTER_NAME"), os.getpid()
done = cluster.client.submit(where, 21, pure=False).result()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cluster.cluster.scale(3)          # beyond the hub's limit of 1 worker
print(json.dumps({"name": cluster.cluster.name, "done": done, "kernel_pid": os.getpid(),
                  "workers": cluster.n_workers, "dashboard": cluster.dashboard_link,
                  "scale_warning": " ".join(str(w.message) for w in caught)}))
"""


@pytest.mark.browser
@pytest.mark.slow
def test_a_users_kernel_starts_a_gateway_cluster_only_they_see(gw_hub, issuer, page, shots):  # noqa: F811
    alice, bob = _token(gw_hub, issuer, "alice"), _token(gw_hub, issuer, "bob")
    _start_server(gw_hub, "alice", alice)
    kernel = Kernel(gw_hub, "alice", alice)
    try:
        answer = json.loads(kernel.run(_START).strip().splitlines()[-1])
        name = answer["name"]
        # the task ran on a worker of her gateway cluster, not in the kernel
        assert answer["done"][:2] == [42, name] and answer["done"][2] != answer["kernel_pid"]
        assert answer["workers"] == 1
        assert "exceed" in answer["scale_warning"] and "1 worker" in answer["scale_warning"], answer
        # the dashboard's link is the hub's public address, and the hub's proxy reaches the scheduler's dashboard
        assert answer["dashboard"] == f"{gw_hub.url}{PREFIX}/clusters/{name}/status", answer
        # (the scheduler's page: its plots where bokeh is installed, else a page asking for bokeh)
        require_chromium()
        response = page.goto(answer["dashboard"])
        assert response.status == 200 and "bokeh" in page.content().lower(), (response.status, page.content()[:300])
        shots(page, "dask-dashboard")

        # hers, through the hub's proxy with her hub token; bob's client neither lists nor reaches it
        with gw_hub.gateway(alice) as mine:
            assert [c.name for c in mine.list_clusters()] == [name]
        with gw_hub.gateway(bob) as his:
            assert his.list_clusters() == []
            with pytest.raises(Exception, match="403"):   # Forbidden: the name is known, the cluster not his
                his.connect(name)
        assert http("POST", f"{gw_hub.url}{PREFIX}/api/v1/clusters/{name}/scale", bob, body={"count": 0},
                    scheme="jupyterhub")[0] == 403
        assert http("DELETE", f"{gw_hub.url}{PREFIX}/api/v1/clusters/{name}", bob, scheme="jupyterhub")[0] == 403
        # no token, or a token of hers without the service's scope: refused
        assert gw_hub.get(PREFIX + "/api/v1/clusters/")[0] == 401
        status, narrow = http("POST", f"{gw_hub.url}/hub/api/users/alice/tokens", alice,
                              body={"note": "no gateway", "scopes": ["read:users:name!user=alice"]})
        assert status == 201, narrow
        assert http("GET", f"{gw_hub.url}{PREFIX}/api/v1/clusters/", narrow["token"], scheme="jupyterhub")[0] == 401

        # closing it in the kernel stops it at the gateway
        kernel.run("cluster.close()")
        with gw_hub.gateway(alice) as mine:
            wait_for("the cluster stopped", lambda: mine.list_clusters() == [], 60)
    finally:
        kernel.shutdown()


@pytest.mark.browser
@pytest.mark.slow
def test_the_lab_trains_on_dask_gateway_and_links_its_dashboard(gw_hub, issuer, page, shots):  # noqa: F811
    require_chromium()
    assert DASHBOARD.exists(), "notebooks/dashboard.ipynb is missing"
    alice = _token(gw_hub, issuer, "alice")
    page.set_default_timeout(120_000)
    login(page, gw_hub, issuer.token("alice", groups=["cms"], audience=AUD))
    page.wait_for_url(re.compile(r"/user/alice/"), timeout=300_000, wait_until="commit")
    page.goto(f"{gw_hub.url}/user/alice/voila/render/notebooks/dashboard.ipynb", timeout=300_000)
    page.locator(".lm-TabBar-tab", has_text="Training").first.wait_for(timeout=300_000)
    page.locator(".lm-TabBar-tab", has_text="Training").first.click()
    run_on = page.locator(".m4h-train-run-on select")
    # the hub set DASK_GATEWAY__ADDRESS in her server: the Lab offers the gateway beside this kernel
    options = [o.replace("\xa0", " ") for o in run_on.locator("option").all_inner_texts()]   # ipywidgets: nbsp
    assert options[0] == "this kernel" and "Dask Gateway" in options and options[1].startswith("local cluster")
    run_on.select_option("Dask Gateway")
    page.locator(".m4h-train-model select").select_option("sklearn")
    page.locator(".m4h-train-epochs input").fill("1")
    page.locator(".m4h-train-epochs input").press("Enter")
    page.locator(".m4h-train-start").click()
    link, status = page.locator(".m4h-train-dashboard a"), page.locator(".m4h-train-status")
    wait_for("the cluster's dashboard linked in the Lab",
             lambda: link.count() or status.inner_text().strip().startswith("failed"), 240, interval=0.2,
             on_fail=lambda: status.inner_text() + "\n" + gw_hub.log_tail(40))
    assert link.count(), status.inner_text()
    href = link.get_attribute("href")
    assert re.fullmatch(rf"{re.escape(gw_hub.url + PREFIX)}/clusters/[0-9a-f.]+/status", href), href
    shots(page, "gateway-dashboard-link")
    name = href.split("/clusters/")[1].split("/")[0]
    wait_for("training done in the Lab", lambda: status.inner_text().strip().startswith(("done", "failed")), 300,
             interval=1.0, on_fail=lambda: status.inner_text() + "\n" + gw_hub.log_tail(40))
    shots(page, "gateway-trained")
    assert status.inner_text().strip().startswith("done"), status.inner_text()
    # the run's end closed its cluster
    assert "closed" in page.locator(".m4h-train-dashboard").inner_text()
    every = ["pending", "running", "stopping", "stopped", "failed"]
    with gw_hub.gateway(alice) as mine:   # her cluster, started from the Lab, and stopped at the run's end
        assert name in [c.name for c in mine.list_clusters(status=every)]
        wait_for("the Lab's cluster stopped", lambda: name not in [c.name for c in mine.list_clusters()], 60)
    with gw_hub.gateway(_token(gw_hub, issuer, "bob")) as his:
        assert name not in [c.name for c in his.list_clusters(status=every)]
