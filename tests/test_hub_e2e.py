"""The deployable hub end to end, on 127.0.0.1: a local OIDC issuer (own RSA key, JWKS and discovery over
HTTP), JupyterHub from jupyterhub_config/jupyterhub_config.py with configurable-http-proxy (npm), its
managed services ``tfaas`` (``mlaas4hep serve``) and ``jobs`` (``mlaas4hep jobs``), local single-user
servers, and headless Chromium driving the login page and the Voila dashboard.

What it shows: token login on the login page and the token exchange for scripts; refused tokens (expired,
another issuer, bad signature, missing group); the services behind hub tokens and scopes (push needs
``custom:tfaas:push``, submit needs ``custom:jobs:submit``, granted here to the group ``ml`` only); the
dashboard trains and pushes from a user's server with no copy-paste; the same user's hub token predicts from
outside; another user sees and deletes neither the model nor the job; a job submitted with plain HTTP
survives the jobs service being killed mid-run (JupyterHub restarts managed services that exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

pytest.importorskip("jupyterhub", reason="the hub extra is not installed")  # optional: pip install .[hub]

from servers import free_port, require_chp, require_chromium  # noqa: E402

from mlaas4hep_lab.hub.dev_issuer import DevIssuer  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.serving]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jupyterhub_config" / "jupyterhub_config.py"
ARTIFACTS = REPO / "test-artifacts"
AUD = "mlaas4hep-hub"
DASHBOARD = REPO / "notebooks" / "dashboard.ipynb"


# ------------------------------------------------------------------------------------------------ helpers
def http(method: str, url: str, token: str | None = None, body=None, scheme: str = "token",
         timeout: float = 60.0, headers: dict | None = None) -> tuple[int, object]:
    """(status, JSON or text) of one plain HTTP request (what curl would send)."""
    data = None
    h = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    if token is not None:
        h["Authorization"] = f"{scheme} {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URLs
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def wait_for(what: str, check, timeout: float, interval: float = 0.5, on_fail=lambda: ""):
    """Poll ``check()`` until it returns a truthy value; fail with ``what`` and ``on_fail()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as err:  # a server still starting or restarting
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"{what}: not after {timeout:.0f} s (last: {last!r})\n{on_fail()}", pytrace=False)


class Hub:
    """jupyterhub -f jupyterhub_config.py in its own process group, with every port free and on 127.0.0.1."""

    def __init__(self, root: Path, issuer: DevIssuer, data_root: Path):
        self.root = root
        self.state = root / "state"
        self.log_path = root / "jupyterhub.log"
        self.port, hub_port, api_port = free_port(), free_port(), free_port()
        self.tfaas_port, self.jobs_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLAAS4HEP_", "JUPYTERHUB_"))}
        self.env.update({
            "MLAAS4HEP_CHP": require_chp(),
            "MLAAS4HEP_HUB_STATE": str(self.state),
            "MLAAS4HEP_HUB_URL": self.url,
            "MLAAS4HEP_HUB_PORT": str(hub_port),
            "MLAAS4HEP_HUB_PROXY_API_PORT": str(api_port),
            "MLAAS4HEP_TFAAS_PORT": str(self.tfaas_port),
            "MLAAS4HEP_JOBS_PORT": str(self.jobs_port),
            "MLAAS4HEP_OIDC_ISSUER": issuer.url,
            "MLAAS4HEP_OIDC_AUDIENCE": AUD,
            "MLAAS4HEP_HUB_ALLOWED_GROUPS": "cms",
            "MLAAS4HEP_HUB_PUSH_GROUPS": "ml",
            "MLAAS4HEP_HUB_NOTEBOOKS": str(REPO / "notebooks"),
            "MLAAS4HEP_JOBS_DATA_ROOTS": str(data_root),
            "MLAAS4HEP_HUB_START_TIMEOUT": "300",
            # Dask Gateway has its own end-to-end test (test_hub_gateway.py, on free ports)
            "MLAAS4HEP_HUB_GATEWAY": "0",
            # auth state kept: a session ends when its access token expires (checked every 2 s here)
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
            "MLAAS4HEP_HUB_AUTH_REFRESH_AGE": "2",
        })
        self.proc: subprocess.Popen | None = None
        self._family: dict[int, psutil.Process] = {}

    def start(self) -> Hub:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)], cwd=self.root,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for("the hub answers through the proxy", lambda: self._alive() and self.get("/hub/health")[0] == 200,
                 180, on_fail=self.log_tail)
        for name, path in (("tfaas", "/services/tfaas/v2/health/ready"), ("jobs", "/services/jobs/health")):
            wait_for(f"the {name} service answers through the proxy",
                     lambda p=path: self._alive() and self.get(p)[0] == 200, 180, on_fail=self.log_tail)
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"jupyterhub exited with {self.proc.returncode}\n{self.log_tail()}", pytrace=False)
        self._remember_children()
        return True

    def _remember_children(self) -> None:
        # servers and services run in sessions of their own: remember them to stop them by PID at the end
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._family.setdefault(child.pid, child)

    def get(self, path: str, token: str | None = None, **kw):
        return http("GET", self.url + path, token, **kw)

    def service_pid(self, name: str) -> int | None:
        """PID of the running `mlaas4hep <name>` service process the hub started."""
        self._remember_children()
        for child in psutil.Process(self.proc.pid).children(recursive=False):
            with contextlib.suppress(psutil.Error):
                cmd = child.cmdline()
                if cmd[1:4] == ["-m", "mlaas4hep_lab.cli", name]:
                    return child.pid
        return None

    def exchange(self, jwt: str) -> tuple[int, object]:
        """The OIDC token exchange: a hub token for the JWT's user."""
        return http("POST", self.url + "/hub/api/oidc/token", jwt, scheme="Bearer")

    def log_tail(self, n: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "--- jupyterhub log (tail) ---\n" + "\n".join(text.splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        self._remember_children()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the hub stops its servers and services itself
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for child in self._family.values():  # whatever it left behind, by PID
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        self._log.close()


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory):
    """Example Higgs-like files for the jobs (below the jobs service's data root)."""
    from mlaas4hep_lab.data import datasets

    return datasets.higgs(tmp_path_factory.mktemp("hub-data") / "higgs", n_events=60_000, seed=11)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, issuer, hub_data):
    require_chp()
    h = Hub(tmp_path_factory.mktemp("hub"), issuer, hub_data.directory)
    try:
        yield h.start()
    finally:
        h.stop()


@pytest.fixture(scope="module")
def alice(hub, issuer):
    """A user in the push group: her hub token from the exchange."""
    status, answer = hub.exchange(issuer.token("alice", groups=["cms", "ml"], audience=AUD))
    assert status == 200, answer
    return answer["token"]


@pytest.fixture(scope="module")
def bob(hub, issuer):
    """Another user of the same groups."""
    status, answer = hub.exchange(issuer.token("bob", groups=["cms", "ml"], audience=AUD))
    assert status == 200, answer
    return answer["token"]


@pytest.fixture
def shots(request, tmp_path):
    """save(page, name): a screenshot in tmp_path, copied to test-artifacts/ for humans."""
    ARTIFACTS.mkdir(exist_ok=True)

    def save(page, name: str) -> Path:
        path = tmp_path / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path

    return save


def login(page, hub: Hub, token: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.locator("#token_input").fill(token)
    page.locator("#login_submit").click()


# -------------------------------------------------------------------------------------------------- tests
def test_refused_tokens_on_login_page_and_api(hub, issuer, other_issuer, page, shots):
    require_chromium()
    cases = {
        "expired": issuer.token("alice", groups=["cms"], audience=AUD, lifetime=600, issued_ago=3600),
        "other-issuer": other_issuer.token("alice", groups=["cms"], audience=AUD),
        "bad-signature": other_issuer.token("alice", groups=["cms"], audience=AUD, issuer=issuer.url,
                                            kid=issuer.kid),
        "wrong-audience": issuer.token("alice", groups=["cms"], audience="another-client"),
        "missing-group": issuer.token("mallory", groups=["lhcb"], audience=AUD),
    }
    reasons = {"expired": "expired", "other-issuer": "signing key", "bad-signature": "signature",
               "wrong-audience": "audience", "missing-group": "none of the groups"}
    for case, token in cases.items():
        login(page, hub, token)
        error = page.locator("#m4h-login-error")
        error.wait_for(timeout=60_000)
        assert reasons[case] in error.inner_text().lower(), (case, error.inner_text())
        assert "/hub/login" in page.url and page.locator("#token_input").count() == 1
        shots(page, case)
        # the same token from a script: no hub token for it
        status, answer = hub.exchange(token)
        assert status == (403 if case == "missing-group" else 401), (case, answer)
        assert reasons[case] in json.dumps(answer).lower(), (case, answer)
        # and the services take only hub tokens: a JWT itself is not one
        assert hub.get("/services/tfaas/models", token, scheme="Bearer")[0] == 401
    assert hub.get("/hub/api/users/mallory", None)[0] in (403, 404)  # never created
    status, _ = http("POST", hub.url + "/hub/api/oidc/token")
    assert status == 401  # no credential at all
    # nobody was logged in: the browser has no hub session
    page.goto(f"{hub.url}/hub/home")
    assert "/hub/login" in page.url


def test_a_browser_session_ends_when_its_access_token_expires(hub, issuer, page, shots):
    require_chromium()
    # accepted for 30 more seconds: it expires now, and the hub allows 30 s of clock skew
    token = issuer.token("dave", groups=["cms"], audience=AUD, lifetime=600, issued_ago=600)
    valid_until = time.time() + 30
    page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Ftoken")  # a page that needs a login, no server spawned
    page.locator("#token_input").fill(token)
    page.locator("#login_submit").click()
    page.wait_for_url("**/hub/token", timeout=60_000)
    assert time.time() < valid_until, "the login took longer than the token's validity: nothing to check"
    shots(page, "logged-in")
    time.sleep(max(0.0, valid_until - time.time()) + 3)  # expired, and the refresh age (2 s) passed
    page.goto(f"{hub.url}/hub/token")
    assert "/hub/login" in page.url, page.url
    assert page.locator("#token_input").count() == 1
    shots(page, "asked-to-log-in-again")


def test_services_need_hub_tokens_and_scopes(hub, issuer, alice):
    # the hub's own API accepts the exchanged token; it names alice, her groups and her scopes
    status, me = hub.get("/hub/api/user", alice)
    assert status == 200 and me["name"] == "alice" and set(me["groups"]) == {"cms", "ml"}
    assert {"custom:tfaas:push", "custom:jobs:submit", "access:services!service=tfaas"} <= set(me["scopes"])
    # a token made with the hub API (as scripts and CI jobs do) works as well
    status, made = http("POST", f"{hub.url}/hub/api/users/alice/tokens", alice,
                        body={"note": "e2e", "expires_in": 600})
    assert status == 201, made
    assert hub.get("/services/tfaas/whoami", made["token"])[1]["name"] == "alice"
    assert hub.get("/services/jobs/whoami", made["token"])[1]["can_submit"] is True
    # no token, a made-up token: refused by both services
    for path in ("/services/tfaas/models", "/services/jobs/jobs"):
        assert hub.get(path)[0] == 401
        assert hub.get(path, "0123456789abcdef0123456789abcdef")[0] == 401
    # carol is in cms (may log in) but not in ml: she may use the services, not push or submit
    status, answer = hub.exchange(issuer.token("carol", groups=["cms"], audience=AUD))
    assert status == 200, answer
    carol = answer["token"]
    assert hub.get("/services/tfaas/models", carol)[0] == 200
    assert "custom:tfaas:push" not in hub.get("/hub/api/user", carol)[1]["scopes"]
    status, answer = http("POST", hub.url + "/services/tfaas/upload?name=nope", carol, body=b"\x1f\x8b not a bundle",
                          headers={"Content-Type": "application/gzip"})
    assert status == 403 and "custom:tfaas:push" in json.dumps(answer), answer
    status, answer = http("POST", hub.url + "/services/jobs/submit", carol,
                          body={"files": ["/nowhere.root"], "labels": [1], "model": "sklearn"})
    assert status == 403 and "custom:jobs:submit" in json.dumps(answer), answer
    assert hub.get("/services/jobs/whoami", carol)[1]["can_submit"] is False


def test_dashboard_train_push_then_predict_from_outside(hub, issuer, alice, bob, page, shots):
    require_chromium()
    assert DASHBOARD.exists(), "notebooks/dashboard.ipynb is missing"
    page.set_default_timeout(120_000)
    login(page, hub, issuer.token("alice", groups=["cms", "ml"], audience=AUD))
    # the hub spawns her server (SimpleLocalProcessSpawner) and sends her there (JupyterLab: not waited for)
    page.wait_for_url(re.compile(r"/user/alice/"), timeout=300_000, wait_until="commit")
    status, me = hub.get("/hub/api/user", alice)
    assert status == 200 and me["servers"][""]["ready"] is True, me
    page.goto(f"{hub.url}/user/alice/voila/render/notebooks/dashboard.ipynb", timeout=300_000)
    page.locator(".lm-TabBar-tab", has_text="Training").first.wait_for(timeout=300_000)
    shots(page, "dashboard")
    page.locator(".lm-TabBar-tab", has_text="Training").first.click()
    page.locator(".m4h-train-model select").select_option("sklearn")
    page.locator(".m4h-train-epochs input").fill("1")
    page.locator(".m4h-train-epochs input").press("Enter")
    page.locator(".m4h-train-start").click()
    status = page.locator(".m4h-train-status")
    wait_for("training done in the dashboard",
             lambda: status.inner_text().strip().startswith(("done", "failed")), 240, interval=1.0,
             on_fail=lambda: status.inner_text())
    shots(page, "trained")
    assert status.inner_text().strip().startswith("done"), status.inner_text()
    page.locator(".lm-TabBar-tab", has_text="Deploy").first.click()
    # no copy-paste: the service URL and her server's token came from the environment
    # the service's public URL, through the hub's proxy: what works from anywhere, not its loopback port
    assert page.locator(".m4h-deploy-url input").input_value() == hub.url + "/services/tfaas/"
    page.locator(".m4h-deploy-name input").fill("higgs-lab")
    page.locator(".m4h-deploy-name input").press("Enter")
    page.locator(".m4h-deploy-push").click()
    deploy = page.locator(".m4h-deploy-status")
    wait_for("push from the dashboard", lambda: deploy.inner_text().strip().startswith(("pushed", "error")), 180,
             interval=1.0, on_fail=lambda: deploy.inner_text())
    shots(page, "pushed")
    assert deploy.inner_text().strip().startswith("pushed"), deploy.inner_text()

    # from outside the browser, with her hub token: the model is hers and predicts
    status, models = hub.get("/services/tfaas/models", alice)
    assert status == 200 and [m["name"] for m in models if m["owner"] == "alice"] == ["higgs-lab"], models
    status, params = hub.get("/services/tfaas/params/higgs-lab", alice)
    assert status == 200, params
    features = params["manifest"]["features"]
    values = [[0.5] * len(features), [1.5] * len(features)]
    status, scores = http("POST", hub.url + "/services/tfaas/json", alice,
                          body={"keys": features, "values": values, "model": "higgs-lab"})
    assert status == 200 and len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores), scores

    # bob neither sees nor deletes it
    status, models = hub.get("/services/tfaas/models", bob)
    assert status == 200 and not [m for m in models if m["owner"] == "alice"], models
    assert http("POST", hub.url + "/services/tfaas/json", bob,
                body={"keys": features, "values": values, "model": "alice/higgs-lab"})[0] in (403, 404)
    assert http("DELETE", hub.url + "/services/tfaas/delete/higgs-lab", bob)[0] == 404
    assert http("DELETE", hub.url + "/services/tfaas/delete/alice/higgs-lab", bob)[0] in (403, 404)
    assert http("DELETE", hub.url + "/services/tfaas/v2/models/alice/higgs-lab", bob)[0] in (403, 404)
    status, again = http("POST", hub.url + "/services/tfaas/json", alice,
                         body={"keys": features, "values": values, "model": "higgs-lab"})
    assert status == 200 and again == scores


def _job(hub: Hub, token: str, job_id: str) -> dict:
    status, job = hub.get(f"/services/jobs/jobs/{job_id}", token)
    assert status == 200, job
    return job


def test_job_survives_a_restart_of_the_jobs_service(hub, hub_data, alice, bob):
    submit = {"files": [str(p) for p in hub_data.files], "labels": list(hub_data.labels), "model": "torch",
              "params": {"chunk_size": 5000, "epochs": 4, "batch_size": 128, "identifier": ["EventId"]},
              "name": "restart-me"}
    status, answer = http("POST", hub.url + "/services/jobs/submit", alice, body=submit)
    assert status == 201, answer
    job_id = answer["id"]
    running = wait_for("the job running", lambda: _job(hub, alice, job_id)["status"] == "running"
                       and _job(hub, alice, job_id), 180, on_fail=hub.log_tail)
    # bob neither sees nor cancels it
    assert hub.get(f"/services/jobs/jobs/{job_id}", bob)[0] == 404
    assert http("DELETE", f"{hub.url}/services/jobs/jobs/{job_id}", bob)[0] == 404
    assert job_id not in [j["id"] for j in hub.get("/services/jobs/jobs", bob)[1]]

    # kill the service mid-run (as a crash would); JupyterHub notices (it polls every 30 s) and restarts it
    pid = hub.service_pid("jobs")
    assert pid is not None, hub.log_tail()
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for("the jobs service down", lambda: hub.get("/services/jobs/health")[0] != 200, 30)
    wait_for("JupyterHub restarting the jobs service",
             lambda: hub.service_pid("jobs") not in (None, pid) and hub.get("/services/jobs/health")[0] == 200,
             120, interval=1.0, on_fail=hub.log_tail)

    # the job is still there, still alice's, and runs to its end (resumed) or says it was interrupted
    after = _job(hub, alice, job_id)
    assert (after["id"], after["name"], after["owner"]) == (job_id, "restart-me", "alice")
    assert job_id in [j["id"] for j in hub.get("/services/jobs/jobs", alice)[1]]
    assert running["status"] == "running"
    final = wait_for("the job finishing after the restart",
                     lambda: _job(hub, alice, job_id)["status"] in ("succeeded", "interrupted", "failed")
                     and _job(hub, alice, job_id), 240, interval=1.0)
    assert final["status"] in ("succeeded", "interrupted"), final
    assert final["finished"] > killed_at  # it was mid-run when its service died
    print(f"job {job_id}: {final['status']} after {final['attempts']} attempt(s); phase {final['phase']!r}; "
          f"ran {final['finished'] - final['started']:.1f} s, finished {final['finished'] - killed_at:.1f} s after "
          "the kill")
    status, logs = hub.get(f"/services/jobs/jobs/{job_id}/logs", alice)
    assert status == 200 and logs["size"] > 0
    assert hub.get(f"/services/jobs/jobs/{job_id}", bob)[0] == 404
