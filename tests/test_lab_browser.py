"""The JupyterLab extension in a real browser: JupyterLab (with the package's prebuilt extension and server
extension, as ``pip install`` enables them) on 127.0.0.1 beside the inference and jobs services, driven in
headless Chromium. A new user's path: the launcher card "New MLaaS4HEP Lab" on example data (the notebook
opens and builds the Lab), right-click a ``.root`` file and Inspect it (a branch histogram, signal over
background), the sidebar's Runs (two finished ``mlaas4hep workflow`` runs, overlaid), Jobs (submit the
notebook's Lab, see it succeed and pushed) and Models (the pushed model, a test request).
Screenshots of each view go to the test's tmp_path and to test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port, require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serving]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
TEMPLATES = REPO / "mlaas4hep_lab" / "training" / "templates"
TOKEN = "alice-lab-browser-token"
N_EVENTS = 3000


def _workflows(root: Path, data) -> list[subprocess.Popen]:
    """Two quick trainings (the XGBoost template, one with a shallower tree), started now and awaited when
    the Runs section is looked at, so they train while JupyterLab starts."""
    procs = []
    for name, depth in (("gbt", None), ("gbt-shallow", 2)):
        model = TEMPLATES / "xgboost_gbt.py"
        if depth is not None:
            text = (TEMPLATES / "xgboost_gbt.py").read_text()
            assert "max_depth=" in text, "the xgboost template changed: adapt this test's second model"
            model = root / "models" / f"{name}.py"
            model.parent.mkdir(exist_ok=True)
            model.write_text(_with_depth(text, depth))
        out = root / "runs" / name
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "workflow", "--files", str(data.files_txt),
               "--labels", str(data.labels_txt), "--params", str(data.params_json), "--model", str(model),
               "--fout", str(out), "--name", name]
        log = (root.parent / f"workflow-{name}.log").open("wb")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def _with_depth(text: str, depth: int) -> str:
    return re.sub(r"max_depth=\d+", f"max_depth={depth}", text, count=1)


class Lab:
    """``jupyter lab`` on a free loopback port with a token; settings and workspaces in a folder of its own."""

    def __init__(self, root: Path, state: Path, env: dict[str, str]):
        self.root, self.state = root, state
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLAAS4HEP_", "JUPYTERHUB_"))}
        self.env.update(env, JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
                        JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"))
        self.log_path = state / "jupyterlab.log"
        # no "Jupyter news?" toast over the views
        news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text(json.dumps({"fetchNews": "false"}))

    def start(self, timeout: float = 120) -> Lab:
        import urllib.request

        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--MappingKernelManager.cull_idle_timeout=0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            req = urllib.request.Request(f"{self.url}/mlaas4hep-lab/status",
                                         headers={"Authorization": f"token {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter lab not answering after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_chromium()
    from jobs_support import kill_leftover_workers
    from serving_support import JobsProcess, ServerProcess

    from mlaas4hep_lab.data import datasets

    base = tmp_path_factory.mktemp("lab-browser")
    root = base / "home"
    data = datasets.higgs(root / "higgs", n_events=N_EVENTS, seed=7)
    params = json.loads(data.params_json.read_text())
    params.update(chunk_size=1000, epochs=1, verbose=0)   # seconds to train, in the workflows and the job
    data.params_json.write_text(json.dumps(params, indent=1))
    workflows = _workflows(root, data)
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"alice": TOKEN}))
    serve = ServerProcess(base / "store", tokens, base / "serve.log").start()
    jobs = JobsProcess(base / "state", tokens, data.directory, base / "jobs.log", "--push-url", serve.url,
                       "--time-limit", "600", "--allow-unisolated")
    lab = None
    try:
        jobs.start()
        lab = Lab(root, base, {"MLAAS4HEP_SERVICE_URL": serve.url, "MLAAS4HEP_JOBS_URL": jobs.url,
                               "MLAAS4HEP_TOKEN": TOKEN}).start()
        yield {"lab": lab, "root": root, "data": data, "workflows": workflows, "base": base, "jobs": jobs}
    finally:
        for p in workflows:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if lab is not None:
            lab.stop()
        jobs.stop()
        serve.stop()
        kill_leftover_workers(base / "state")


def _shot(page, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(target, ARTIFACTS / f"jupyterlab-{name}.png")


def test_launcher_inspect_and_sidebar_in_jupyterlab(stack, page, tmp_path):
    lab, root = stack["lab"], stack["root"]
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1600, "height": 1000})
    try:
        page.goto(f"{lab.url}/lab?token={lab.token}")
        # the launcher card
        card = page.locator('.jp-LauncherCard[data-category="MLaaS4HEP"]', has_text="New MLaaS4HEP Lab")
        card.wait_for(state="visible", timeout=120_000)
        assert page.locator('.jp-LauncherCard[data-category="MLaaS4HEP"]', has_text="Open MLaaS4HEP dashboard").count() == 1
        _shot(page, tmp_path, "1-launcher")

        # New MLaaS4HEP Lab: pick higgs/files.txt; the notebook opens beside it and builds the Lab
        card.click()
        dialog = page.locator(".jp-Dialog")
        dialog.locator(".jp-DirListing-item", has_text="higgs").dblclick()
        dialog.locator(".jp-DirListing-item", has_text="files.txt").click()
        dialog.get_by_role("button", name="Select").click()
        tabs = page.locator(".jp-OutputArea-output .m4h-lab")
        tabs.wait_for(state="visible", timeout=180_000)
        assert (root / "higgs" / "lab-higgs.ipynb").is_file()
        assert page.locator("#filebrowser .jp-BreadCrumbs").inner_text().strip().strip("/").endswith("higgs")
        assert page.locator(".jp-OutputArea-output .lm-TabBar-tab", has_text="Branches").count() == 1
        _shot(page, tmp_path, "2-new-lab")

        # right-click a .root file in the file browser: Inspect, then a branch's histogram
        browser = page.locator("#filebrowser")
        browser.locator(".jp-DirListing-item[data-file-type='mlaas4hep-root']", has_text="higgs_signal.root").click(
            button="right")
        menu = page.locator(".lm-Menu")
        assert menu.locator(".lm-Menu-item", has_text="New MLaaS4HEP Lab from these files").count() == 1
        menu.locator(".lm-Menu-item", has_text="Inspect").click()
        view = page.locator(".m4h-inspect")
        view.locator(".m4h-branch-row").first.wait_for(state="visible")
        assert "label: signal in higgs/files.txt" in view.locator(".m4h-inspect-labels").inner_text()
        view.locator(".m4h-branch-row[data-branch='PRI_jet_num']").click()
        hist = view.locator(".m4h-hist[data-branch='PRI_jet_num']")
        hist.wait_for(state="visible")
        names = hist.locator("path.m4h-series").evaluate_all("els => els.map(e => e.dataset.name)")
        assert names == ["signal", "background"]
        assert "one bin per integer" in view.inner_text()
        _shot(page, tmp_path, "3-inspect")

        # the sidebar: Runs lists both workflow runs; overlay them
        for p in stack["workflows"]:
            assert p.wait(300) == 0, (stack["base"] / "workflow-gbt.log").read_text()[-3000:]
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id='mlaas4hep-sidebar']").click()
        sidebar = page.locator("#mlaas4hep-sidebar")
        handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first.bounding_box()
        page.mouse.move(handle["x"] + 1, handle["y"] + 200)     # a wider sidebar, as a user would drag it
        page.mouse.down()
        page.mouse.move(handle["x"] + 200, handle["y"] + 200, steps=5)
        page.mouse.up()
        sidebar.locator(".m4h-runs .m4h-refresh").click()
        rows = sidebar.locator(".m4h-run-row")
        rows.nth(1).wait_for(state="visible")
        assert {rows.nth(i).get_attribute("data-run") for i in range(rows.count())} == {"runs/gbt", "runs/gbt-shallow"}
        for i in range(2):
            rows.nth(i).locator("input[type=checkbox]").check()
        sidebar.locator(".m4h-compare").click()
        compare = page.locator(".m4h-compare-view")
        compare.locator(".m4h-compare-chart").nth(2).wait_for(state="visible")
        titles = compare.locator(".m4h-compare-chart h3").all_inner_texts()
        assert [t.split(" ")[0] for t in titles] == ["ROC", "Loss", "AUC"]
        assert compare.locator(".m4h-compare-chart").first.locator("path.m4h-series").count() == 2
        _shot(page, tmp_path, "4-runs-compare")

        # Jobs: submit the notebook's Lab (its Branches/Cuts choices), watch it succeed, pushed
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="lab-higgs.ipynb").click()   # its notebook
        jobs = sidebar.locator(".m4h-jobs")
        jobs.locator(".m4h-submit").click()
        form = page.locator(".jp-Dialog .m4h-submit-form")
        form.wait_for(state="visible")
        assert "higgs_signal.root" in form.inner_text()
        form.locator(".m4h-job-name").fill("browser-job")
        form.locator(".m4h-job-push").check()
        page.locator(".jp-Dialog").get_by_role("button", name="Submit").click()
        status = jobs.locator(".m4h-job-head")
        status.wait_for(state="visible")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(s in status.inner_text() for s in ("succeeded", "failed")):
            time.sleep(1)
        assert "succeeded" in status.inner_text(), (status.inner_text(), stack["jobs"].log_text()[-2000:])
        jobs.locator(".m4h-download").wait_for(state="visible")
        assert "done" in jobs.locator(".m4h-log").inner_text()
        _shot(page, tmp_path, "5-jobs")

        # Models: the pushed model; a test request
        models = sidebar.locator(".m4h-models")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and models.locator(".m4h-model-row[data-model='alice:browser-job']").count() == 0:
            models.get_by_role("button", name="Refresh").click()
            time.sleep(2)
        models.locator(".m4h-model-row[data-model='alice:browser-job']").click()
        models.locator(".m4h-send-test").click()
        models.locator(".m4h-test-ok").wait_for(state="visible")
        assert "answered in" in models.locator(".m4h-test-result").inner_text()
        _shot(page, tmp_path, "6-models")

        # the dark theme: the charts follow it
        page.locator(".lm-MenuBar-item", has_text="Settings").click()
        page.locator(".lm-Menu-item").filter(has_text=re.compile(r"^Theme$")).hover()
        page.get_by_role("menuitem", name="JupyterLab Dark", exact=True).click()
        page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="Compare 2 runs").click()
        axis = compare.locator(".m4h-ticklabel").first.evaluate("e => getComputedStyle(e).fill")
        assert axis != "rgb(0, 0, 0)", axis     # light text on the dark background
        _shot(page, tmp_path, "7-dark-theme")

        # Open dashboard: the Voila dashboard in a new browser tab
        target = root / "notebooks" / "dashboard.ipynb"
        target.parent.mkdir()
        shutil.copy(REPO / "notebooks" / "dashboard.ipynb", target)
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="Launcher").click()
        with page.context.expect_page() as opened:
            page.locator('.jp-LauncherCard[data-category="MLaaS4HEP"]', has_text="Open MLaaS4HEP dashboard").click()
        dashboard = opened.value
        assert dashboard.url.startswith(f"{lab.url}/voila/render/notebooks/dashboard.ipynb"), dashboard.url
        dashboard.close()
    except BaseException:
        print("---- jupyterlab log ----\n" + lab.log())
        _shot(page, tmp_path, "failure")
        raise
