"""The dashboard in a real browser: Voila serves notebooks/dashboard.ipynb on 127.0.0.1, headless Chromium
(driven by Playwright) selects branches, adds a cut, starts a short training, watches the loss plot move
and waits for the end. Screenshots go to the test's tmp_path and to test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port, require_chromium

from mlaas4hep_lab.data._physics import HIGGS_BRANCHES

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "dashboard.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
KERNEL_READY_S = 240       # Voila starts a kernel and runs the notebook: slow on a busy 2-core machine
TRAINING_S = 420


@pytest.fixture
def voila(tmp_path):
    """``voila dashboard.ipynb`` on a free loopback port, with its working folder in tmp_path."""
    require_chromium()
    port = free_port()
    env = dict(os.environ, MLAAS4HEP_WORKDIR=str(tmp_path / "work"))
    env.pop("MLAAS4HEP_SERVICE_URL", None)
    log_path = tmp_path / "voila.log"
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           # a dashboard that trains for minutes must not be culled while the browser waits
           "--MappingKernelManager.cull_idle_timeout=0", str(NOTEBOOK)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log_path, 120)
        yield url, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return          # it answers
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"voila not answering after {timeout} s:\n{log_path.read_text()[-3000:]}")


def _shot(page, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(target, ARTIFACTS / f"voila-dashboard-{name}.png")


def _poll(fn, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def test_dashboard_selects_cuts_and_trains_in_chromium(voila, page, tmp_path):
    url, log_path = voila
    page.set_default_timeout(60_000)
    try:
        page.goto(url, timeout=KERNEL_READY_S * 1000)
        summary = page.locator(".m4h-branch-summary")
        summary.wait_for(state="visible", timeout=KERNEL_READY_S * 1000)
        total = int(re.search(r"of (\d+) branches", summary.inner_text()).group(1))
        _shot(page, tmp_path, "1-branches")

        # Branches: a wildcard selection, then untick one branch
        include = page.locator(".m4h-branch-include input")
        include.fill("PRI_*, DER_mass_MMC")
        include.press("Enter")
        n_pri = sum(name.startswith("PRI_") for name in HIGGS_BRANCHES)
        _poll(lambda: summary.inner_text().startswith(f"{n_pri + 1} of"), 60, "the wildcard selection")
        page.locator(".m4h-branch-check", has_text="PRI_met_sumet").locator("input").uncheck()
        _poll(lambda: summary.inner_text() == f"{n_pri} of {total} branches selected", 60, "the untick")
        assert page.locator(".m4h-branch-exclude input").input_value() == "Weight, PRI_met_sumet"
        _shot(page, tmp_path, "2-selected")

        # Cuts: an invalid expression shows the compiler's message, a valid one previews and is added
        page.get_by_role("tab", name="Cuts").click()
        expression = page.locator(".m4h-cut-expression input")
        message = page.locator(".m4h-cut-message")
        expression.fill("PRI_jet_num >= ")
        _poll(lambda: "syntax error" in message.inner_text(), 60, "the syntax error message")
        expression.fill("PRI_jet_num >= 1")
        _poll(lambda: "ok: flat cut on PRI_jet_num" in message.inner_text(), 60, "the ok message")
        _poll(lambda: page.locator(".m4h-preview-table table td").count() >= 8, 60, "the preview table")
        page.locator(".m4h-cut-add").click()
        _poll(lambda: "PRI_jet_num >= 1" in page.locator(".m4h-cut-list").inner_text(), 60, "the cut in the list")
        _shot(page, tmp_path, "3-cuts")

        # Training: start, watch the loss plot update, wait for the end
        page.get_by_role("tab", name="Training").click()
        loss_plot = page.locator("img.m4h-loss-plot")
        first_src = loss_plot.get_attribute("src")
        points = page.locator(".m4h-loss-points")
        assert points.inner_text().strip() == "0"
        page.locator(".m4h-train-start").click()
        status = page.locator(".m4h-train-status")
        _poll(lambda: status.inner_text().startswith(("running", "done")), 60, "the running status")
        _poll(lambda: int(points.inner_text().strip() or 0) > 0, TRAINING_S, "the first loss point")
        assert loss_plot.get_attribute("src") != first_src
        _shot(page, tmp_path, "4-training")
        _poll(lambda: status.inner_text().startswith(("done", "failed", "stopped")), TRAINING_S, "the end")
        assert status.inner_text().startswith("done"), status.inner_text()
        assert int(points.inner_text()) >= 3            # 4000 events in chunks of 800: several points
        result = page.locator(".m4h-train-result").inner_text()
        assert "test AUC" in result and "best AMS" in result and "bundle" in result
        assert page.locator("img.m4h-roc-plot").get_attribute("src")
        _shot(page, tmp_path, "5-done")
    except BaseException:
        print("---- voila log ----\n" + log_path.read_text(errors="replace")[-6000:])
        _shot(page, tmp_path, "failure")
        raise
    bundles = list((tmp_path / "work" / "runs").glob("*/bundle/manifest.json"))
    assert len(bundles) == 1
    assert "PRI_jet_num >= 1" in (bundles[0].parent / "preproc.json").read_text()
