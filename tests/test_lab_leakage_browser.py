"""The README's call in a real browser (issue 17): Voila serves a notebook that runs
``Lab(files="example/higgs/files.txt", labels="example/higgs/labels.txt")`` on the example data, in the dark
theme, and headless Chromium (Playwright, Debian's binary) checks that the Lab says it loaded params.json
(weight, identifier, sentinel) and shows no leakage; that making the weight a feature again brings the
leakage warning above every tab, naming Weight; and that the plots are transparent (the dark page shows
through). Screenshots go to the test's tmp_path and to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port, require_chromium

from mlaas4hep_lab.data import datasets

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
KERNEL_READY_S = 240       # Voila starts a kernel and runs the notebook: slow on a busy 2-core machine
README_CALL = 'Lab(files="example/higgs/files.txt", labels="example/higgs/labels.txt")'


def _notebook(folder: Path) -> Path:
    cell = f"from mlaas4hep_lab.widgets import Lab\n\nlab = {README_CALL}\nlab"
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "readme-call", "metadata": {},
                     "outputs": [], "source": cell}],
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                      "name": "python3"}, "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / "readme.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def voila(tmp_path):
    """``voila --theme=dark readme.ipynb`` on a free loopback port, beside ``example/higgs``."""
    require_chromium()
    datasets.higgs(tmp_path / "example" / "higgs", n_events=3000, seed=42)   # mlaas4hep example higgs
    notebook = _notebook(tmp_path)
    port = free_port()
    env = dict(os.environ, MLAAS4HEP_WORKDIR=str(tmp_path / "work"))
    log_path = tmp_path / "voila.log"
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--theme=dark",
           "--MappingKernelManager.cull_idle_timeout=0", str(notebook)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log_path, 120)
        yield f"http://127.0.0.1:{port}/", log_path
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
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"voila not answering after {timeout} s:\n{log_path.read_text()[-3000:]}")


def _shot(page, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(target, ARTIFACTS / f"lab-leakage-{name}.png")


def _poll(fn, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


_ALPHA_AT_CORNER = """img => new Promise(done => {
    const draw = () => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        done(g.getImageData(1, 1, 1, 1).data[3]);
    };
    img.complete ? draw() : img.addEventListener('load', draw);
})"""


def test_the_readme_call_loads_params_json_and_the_leakage_warning_shows(voila, page, tmp_path):
    url, log_path = voila
    page.set_default_timeout(60_000)
    try:
        page.goto(url, timeout=KERNEL_READY_S * 1000)
        notes = page.locator(".m4h-notes")
        notes.wait_for(state="visible", timeout=KERNEL_READY_S * 1000)
        said = notes.inner_text()
        assert "params.json loaded from example/higgs/" in said, said
        assert "weight Weight" in said and "identifier EventId" in said and "missing values -999" in said
        leakage = page.locator(".m4h-leakage")
        assert not leakage.is_visible()            # the README's call does not leak the label
        assert page.locator(".m4h-branch-weight select").input_value() == "Weight"
        _shot(page, tmp_path, "1-readme-call")

        # the user makes the weight a feature again: the warning comes before any training
        page.locator(".m4h-branch-weight select").select_option("(no weight)")
        exclude = page.locator(".m4h-branch-exclude input")
        exclude.fill("")
        exclude.press("Enter")
        _poll(lambda: leakage.is_visible() and "Possible leakage" in leakage.inner_text(), 60, "the warning")
        text = leakage.inner_text()
        assert "Weight" in text and "named like a weight" in text and "AUC 0.0" in text
        assert page.locator(".m4h-leakage .m4h-leak[data-feature='Weight']").count() == 1
        _shot(page, tmp_path, "2-leakage-warning")

        # above every tab: the Training tab still shows it, beside Start
        page.get_by_role("tab", name="Training").click()
        page.locator(".m4h-train-start").wait_for(state="visible")
        assert leakage.is_visible()
        _shot(page, tmp_path, "3-warning-on-training")

        # declared as the weight again: the warning goes
        page.get_by_role("tab", name="Branches").click()
        page.locator(".m4h-branch-weight select").select_option("Weight")
        _poll(lambda: not leakage.is_visible(), 60, "the warning to go")

        # the Cuts preview: an integer branch, a transparent plot on the dark page
        page.get_by_role("tab", name="Cuts").click()
        page.locator(".m4h-cut-expression input").fill("PRI_jet_num >= 1")
        message = page.locator(".m4h-cut-message")
        _poll(lambda: "ok: flat cut on PRI_jet_num" in message.inner_text(), 60, "the ok message")
        plot = page.locator("img.m4h-preview-plot")
        _poll(lambda: (plot.get_attribute("src") or "").startswith("blob:") or
              (plot.get_attribute("src") or "").startswith("data:"), 60, "the preview plot")
        assert plot.evaluate(_ALPHA_AT_CORNER) == 0
        page.locator(".m4h-cut-expression input").fill("PRI_met > 20 &&")
        _poll(lambda: "hint: the expression ends with an operator" in message.inner_text(), 60, "the hint")
        _shot(page, tmp_path, "4-dark-preview")
    except BaseException:
        print("---- voila log ----\n" + log_path.read_text(errors="replace")[-6000:])
        _shot(page, tmp_path, "failure")
        raise
