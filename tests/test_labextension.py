"""The JupyterLab extension's server side against a real Jupyter server on 127.0.0.1 (token auth): what the
install enables, the routes (status codes, JSON shapes, refused paths, authentication), and the jobs and
inference services reached through it with the server's own token (real ``mlaas4hep jobs`` and
``mlaas4hep serve`` processes). The front end itself is driven in Chromium by test_lab_browser.py."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from servers import free_port

REPO = Path(__file__).resolve().parents[1]
BUILT = REPO / "mlaas4hep_lab" / "labextension"
API = "mlaas4hep-lab"


# ------------------------------------------------------------------------------------------------ harness
class JupyterServer:
    """``python -m jupyter_server`` on a free loopback port with a token, in its own process group; the
    extension is enabled by the config the package installs, as in a user's environment."""

    def __init__(self, root: Path, log: Path, env: dict[str, str] | None = None):
        self.root, self.log_path = root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLAAS4HEP_", "JUPYTERHUB_"))}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> JupyterServer:
        cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.allow_unauthenticated_access=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.call("GET", "status")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jupyter server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def call(self, method: str, route: str, body=None, token: str | None = "default", raw: bool = False,
             timeout: float = 120.0):
        """(status, JSON, headers) of one request to an extension route (``raw``: the bytes)."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"token {self.token if token == 'default' else token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.url}/{API}/{route}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
                status, payload, hdrs = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            status, payload, hdrs = err.code, err.read(), err.headers
        if raw:
            return status, payload, hdrs
        try:
            return status, json.loads(payload), hdrs
        except ValueError:
            return status, payload.decode("utf-8", "replace"), hdrs


def q(**kw) -> str:
    return "?" + urllib.parse.urlencode(kw, doseq=True)


def write_run(folder: Path, name: str, auc_shift: float = 0.0, finished: bool = True, seed: int = 0) -> Path:
    """A run folder as ``mlaas4hep workflow --fout`` leaves it (metrics.jsonl, and at the end metrics.json,
    bundle/manifest.json, report_sample.npz), with scores whose AUC the test knows."""
    from mlaas4hep_lab.training.report import ReportSample

    folder.mkdir(parents=True)
    events = [{"kind": "start", "epoch": 0, "chunk": 0, "events_seen": 0, "metrics": {}, "time": time.time() - 60}]
    for i in range(1, 4):
        events.append({"kind": "chunk", "epoch": 0, "chunk": i, "events_seen": 1000 * i, "time": time.time() - 60 + i,
                       "metrics": {"loss": 0.7 - 0.1 * i, "val_loss": 0.72 - 0.09 * i, "val_auc": 0.7 + 0.05 * i}})
    if finished:
        events.append({"kind": "end", "epoch": 0, "chunk": 3, "events_seen": 3000, "metrics": {"auc": 0.8},
                       "time": time.time()})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if not finished:
        return folder
    rng = np.random.default_rng(seed)
    y = (rng.random(2000) < 0.4).astype(np.float32)
    score = (rng.normal(y * (1.0 + auc_shift), 1.0)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 2000).astype(np.float32)
    ReportSample(["a", "b"], np.zeros((2000, 2), np.float32), y, score, y[:10], score[:10], w, w[:10]).save(
        folder / "report_sample.npz")
    (folder / "metrics.json").write_text(json.dumps({"task": "binary", "auc": 0.8 + auc_shift, "ams": 1.5,
                                                     "backend": "sklearn", "events_seen": 3000}))
    (folder / "bundle").mkdir()
    (folder / "bundle" / "manifest.json").write_text(json.dumps(
        {"name": name, "backend": "sklearn", "created": "2026-12-01T10:00:00+00:00", "task": {"kind": "binary"}}))
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The server's root folder: Higgs-like example data with files.txt/labels.txt/params.json, two finished
    runs and one in progress, a hidden run, a run too deep to be found, and a link pointing outside."""
    from mlaas4hep_lab.data import datasets

    base = tmp_path_factory.mktemp("labext")
    root = base / "home"
    ds = datasets.higgs(root / "higgs", n_events=3000, seed=5)
    write_run(root / "work" / "runs" / "20261201-100000", "gbt", 0.0, seed=1)
    write_run(root / "work" / "runs" / "20261201-110000", "gbt-better", 1.0, seed=2)
    write_run(root / "work" / "runs" / "20261201-120000", "partial", finished=False)
    write_run(root / ".hidden" / "run", "hidden")
    write_run(root.joinpath(*[f"d{i}" for i in range(8)]) / "run", "deep")
    (root / "notes.txt").write_text("not a ROOT file\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.root").write_bytes(b"x")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return {"root": root, "data": ds, "outside": outside}


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    srv = JupyterServer(root["root"], tmp_path_factory.mktemp("labext-log") / "jupyter.log").start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------- install
def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_install_enables_both_halves():
    """What ``pip install`` (editable or not) put in the environment: JupyterLab lists the prebuilt extension
    enabled and OK, Jupyter Server the server extension enabled; the installed copy is the package's build."""
    from jupyter_core.paths import jupyter_path

    def listing(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "jupyter", *args, "list"], capture_output=True, text=True,
                              timeout=120)
        return _plain(proc.stdout + proc.stderr)

    labs = listing("labextension")
    assert re.search(r"mlaas4hep-lab v0\.1\.0 enabled OK \(python, mlaas4hep-lab\)", labs), labs
    servers = listing("server", "extension")
    assert re.search(r"mlaas4hep_lab\.lab enabled", servers) and re.search(r"mlaas4hep_lab\.lab 0\.1\.0 OK", servers)
    installed = next(Path(p) / "mlaas4hep-lab" for p in jupyter_path("labextensions")
                     if (Path(p) / "mlaas4hep-lab" / "package.json").is_file())
    built = sorted(p.relative_to(BUILT).as_posix() for p in BUILT.rglob("*") if p.is_file() and p.name != "sources.sha256")
    copy = sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*")
                  if p.is_file() and p.name != "sources.sha256")   # (a `labextension develop` link has it)
    assert copy == built, f"{installed} is not the package's build: reinstall with pip install -e ."
    for rel in built:
        assert (installed / rel).read_bytes() == (BUILT / rel).read_bytes(), f"{rel}: reinstall (pip install -e .)"


def test_built_assets_are_from_these_sources():
    """The committed build was made from the sources as they are (CI rebuilds and compares the bytes:
    `python labextension/build.py --check`); this needs no Node."""
    sys.path.insert(0, str(REPO / "labextension"))
    try:
        import build as labbuild
    finally:
        sys.path.pop(0)
    assert (BUILT / "sources.sha256").read_text() == labbuild.source_hashes(), (
        "labextension/ changed since the last build: run `python labextension/build.py` and commit the result")
    meta = json.loads((BUILT / "package.json").read_text())
    assert (BUILT / meta["jupyterlab"]["_build"]["load"]).is_file()
    assert json.loads((BUILT / "install.json").read_text())["packageName"] == "mlaas4hep-lab"
    assert not (REPO / "labextension" / "package-lock.json").read_text().count('"resolved": "file:')


def test_every_route_requires_authentication():
    """As the JupyterLab extension template checks it: a server that refuses unauthenticated access warns
    about any handler method without @web.authenticated; there is none."""
    code = """
import warnings
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import JupyterServerAuthWarning
app = ServerApp(allow_unauthenticated_access=False, jpserver_extensions={"mlaas4hep_lab.lab": True},
                reraise_server_extension_failures=True)
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    app.initialize(argv=[], find_extensions=False, new_httpserver=False)
bad = [str(r.message) for r in rec if issubclass(r.category, JupyterServerAuthWarning)]
routes = [inner.matcher.regex.pattern for host in app.web_app.default_router.rules
          for inner in getattr(host.target, "rules", []) if "mlaas4hep-lab" in inner.matcher.regex.pattern]
print(len(routes), bad)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, bad = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert bad == "[]" and int(count) >= 16


# ------------------------------------------------------------------------------------------- the routes
def test_auth_and_status(server):
    for token in (None, "wrong-token"):
        status, _, _ = server.call("GET", "status", token=token)
        assert status == 403
        assert server.call("GET", f"inspect{q(path='higgs/higgs_signal.root')}", token=token)[0] == 403
        assert server.call("POST", "new-lab", {"paths": ["higgs/files.txt"]}, token=token)[0] == 403
    status, answer, _ = server.call("GET", "status")
    assert status == 200 and answer["version"] == "0.1.0" and isinstance(answer["voila"], bool)
    for name in ("jobs", "models"):   # this server's environment names no service
        assert answer[name]["configured"] is False and "MLAAS4HEP_" in answer[name]["hint"]
        assert answer[name]["url"] == ""
    status, answer, _ = server.call("GET", "jobs")
    assert status == 503 and "MLAAS4HEP_JOBS_URL" in answer["message"]
    status, answer, _ = server.call("GET", "models")
    assert status == 503 and "MLAAS4HEP_SERVICE_URL" in answer["message"]


def test_inspect_lists_trees_branches_and_labels(server, root):
    status, info, _ = server.call("GET", f"inspect{q(path='higgs/higgs_signal.root')}")
    assert status == 200, info
    assert info["name"] == "higgs_signal.root" and info["size"] > 0
    [tree] = info["trees"]
    assert tree["name"] == "events" and tree["kind"] == "TTree" and tree["entries"] > 500
    names = {b["name"]: b for b in tree["branches"]}
    assert names["PRI_jet_num"]["kind"] == "flat" and names["EventId"]["dtype"] == "int64"
    assert info["labels"]["name"] == "signal" and info["labels"]["files_txt"] == "higgs/files.txt"
    assert [g["name"] for g in info["labels"]["groups"]] == ["signal", "background"]


@pytest.mark.parametrize(("path", "status", "words"), [
    (None, 400, "give the file"),
    ("notes.txt", 400, "not a .root file"),
    ("higgs", 400, "not a file"),
    ("nope.root", 404, "not found"),
    ("../outside/secret.root", 403, "leaves the server's root"),
    ("higgs/../../outside/secret.root", 403, "leaves the server's root"),
    ("escape/secret.root", 403, "points outside"),
    (".hidden/run/metrics.json", 404, "hidden"),
])
def test_inspect_refuses_bad_paths(server, path, status, words):
    got, answer, _ = server.call("GET", "inspect" + (q(path=path) if path is not None else ""))
    assert got == status and words in answer["message"], answer


def test_histogram_bins_on_the_server_with_labels(server, root):
    status, hist, _ = server.call("GET", f"histogram{q(path='higgs/higgs_signal.root', tree='events', branch='PRI_jet_num')}")
    assert status == 200, hist
    assert hist["integer"] is True and hist["edges"] == [-0.5, 0.5, 1.5, 2.5, 3.5]   # one bin per jet count
    sig, bkg = hist["series"]
    assert (sig["name"], sig["label"], bkg["name"], bkg["label"]) == ("signal", 1.0, "background", 0.0)
    assert sum(sig["counts"]) == sig["entries"] and sum(bkg["counts"]) == bkg["entries"]
    assert sig["entries"] + bkg["entries"] == 3000
    # a float branch with the challenge's -999: counted as missing (params.json), not drawn
    status, hist, _ = server.call("GET", f"histogram{q(path='higgs/higgs_background.root', tree='events', branch='DER_mass_MMC', bins=30)}")
    assert status == 200 and len(hist["edges"]) == 31 and hist["integer"] is False
    assert int(hist["missing"]["-999"]) > 0 and hist["edges"][0] > -999
    assert server.call("GET", f"histogram{q(path='higgs/higgs_signal.root', tree='events', branch='nope')}")[0] == 404
    assert server.call("GET", f"histogram{q(path='higgs/higgs_signal.root', branch='PRI_met')}")[0] == 400
    assert server.call("GET", f"histogram{q(path='higgs/higgs_signal.root', tree='events', branch='PRI_met', bins='x')}")[0] == 400


def test_new_lab_writes_the_notebook_beside_the_data(server, root):
    status, answer, _ = server.call("POST", "new-lab", {"paths": ["higgs/files.txt"]})
    assert status == 201, answer
    assert answer["path"] == "higgs/lab-higgs.ipynb" and answer["ready"] is True
    nb = json.loads((root["root"] / answer["path"]).read_text())
    code = "".join(nb["cells"][0]["source"])
    assert 'lab = Lab(files="files.txt", labels="labels.txt", params="params.json")' in code
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    # again: a new name; a folder means its files.txt
    assert server.call("POST", "new-lab", {"paths": ["higgs"]})[1]["path"] == "higgs/lab-higgs-2.ipynb"
    # .root files: labels from the files.txt that lists them, in the order picked
    status, answer, _ = server.call("POST", "new-lab", {"paths": ["higgs/higgs_background.root", "higgs/higgs_signal.root"]})
    assert status == 201 and answer["ready"] is True
    assert 'files=["higgs_background.root", "higgs_signal.root"], labels=[0, 1], params="params.json"' in answer["code"]


def test_new_lab_without_labels_is_not_run(server, root, tmp_path_factory):
    loose = root["root"] / "loose"
    loose.mkdir(exist_ok=True)
    (loose / "a.root").write_bytes((root["data"].files[0]).read_bytes())
    status, answer, _ = server.call("POST", "new-lab", {"paths": ["loose/a.root"]})
    assert status == 201 and answer["ready"] is False and "labels unknown for a.root" in answer["note"]
    assert "labels=None" in answer["code"]
    for body, expected in (({"paths": []}, 400), ({"paths": "notes.txt"}, 400), ({}, 400),
                           ({"paths": ["../outside"]}, 403), ({"paths": ["work"]}, 400)):
        got, reply, _ = server.call("POST", "new-lab", body)
        assert got == expected, (body, reply)


def test_dashboard_found_below_the_root(server, root):
    status, answer, _ = server.call("GET", "dashboard")
    assert status == 404 and "dashboard.ipynb" in answer["message"]
    nb = root["root"] / "notebooks" / "dashboard.ipynb"
    nb.parent.mkdir()
    nb.write_text((REPO / "notebooks" / "dashboard.ipynb").read_text())
    status, answer, _ = server.call("GET", "dashboard")
    assert status == 200 and answer == {"path": "notebooks/dashboard.ipynb",
                                        "voila": "/voila/render/notebooks/dashboard.ipynb"}


def test_runs_are_found_and_compared(server, root):
    status, answer, _ = server.call("GET", "runs")
    assert status == 200, answer
    runs = {r["id"]: r for r in answer["runs"]}
    assert set(runs) == {"work/runs/20261201-100000", "work/runs/20261201-110000", "work/runs/20261201-120000"}
    assert answer["complete"] is False   # the deep run lies beyond the walk's depth: said, not hidden
    done = runs["work/runs/20261201-110000"]
    assert (done["model"], done["backend"], done["task"], done["status"]) == ("gbt-better", "sklearn", "binary", "finished")
    assert done["metrics"]["auc"] == pytest.approx(1.8) and done["roc"] is True and done["bundle"] is True
    partial = runs["work/runs/20261201-120000"]
    assert partial["status"] in ("running", "incomplete") and partial["metrics"]["val_auc"] == pytest.approx(0.85)
    status, answer, _ = server.call("GET", "runs/curves" + q(run=["work/runs/20261201-100000", "work/runs/20261201-110000"]))
    assert status == 200
    first, second = answer["runs"]
    assert first["history"]["x"] == [1000.0, 2000.0, 3000.0] and set(first["history"]["series"]) == {"loss", "val_loss", "val_auc"}
    from sklearn.metrics import roc_auc_score

    with np.load(root["root"] / second["id"] / "report_sample.npz") as z:
        assert second["roc"]["auc"] == pytest.approx(roc_auc_score(z["y_test"], z["score_test"]), abs=1e-9)
        assert second["roc_weighted"]["auc"] == pytest.approx(
            roc_auc_score(z["y_test"], z["score_test"], sample_weight=z["w_test"]), abs=1e-9)
    assert second["roc"]["auc"] > first["roc"]["auc"] and len(second["roc"]["fpr"]) <= 200
    assert server.call("GET", "runs/curves")[0] == 400
    assert server.call("GET", f"runs/curves{q(run='higgs')}")[0] == 404
    assert server.call("GET", f"runs/curves{q(run='../outside')}")[0] == 403
    # a new run shows up on the next call (the walk's cache follows folder times)
    write_run(root["root"] / "work" / "runs" / "20261201-130000", "newest", seed=3)
    assert server.call("GET", "runs")[1]["runs"][0]["id"] == "work/runs/20261201-130000"


# ----------------------------------------------------------------------------------------- the services
FAST_MODEL = """
from sklearn.linear_model import SGDClassifier


def model():
    return SGDClassifier(loss="log_loss", random_state=0)
"""


@pytest.fixture(scope="module")
def services(root, tmp_path_factory):
    """The inference and jobs services (alice's token in a tokens file) and a Jupyter server whose
    environment names them, as the hub's does."""
    from serving_support import JobsProcess, ServerProcess

    base = tmp_path_factory.mktemp("labext-services")
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"alice": "alice-labext-token"}))
    serve = ServerProcess(base / "store", tokens, base / "serve.log").start()
    jobs = JobsProcess(base / "state", tokens, root["data"].directory, base / "jobs.log", "--push-url", serve.url,
                       "--time-limit", "600", "--allow-unisolated")
    jupyter = None
    try:
        jobs.start()
        jupyter = JupyterServer(root["root"], base / "jupyter.log", {
            "MLAAS4HEP_SERVICE_URL": serve.url, "MLAAS4HEP_JOBS_URL": jobs.url,
            "MLAAS4HEP_TOKEN": "alice-labext-token"}).start()
        yield {"jupyter": jupyter, "serve": serve, "jobs": jobs, "base": base}
    finally:
        if jupyter is not None:
            jupyter.stop()
        jobs.stop()
        serve.stop()
        from jobs_support import kill_leftover_workers

        kill_leftover_workers(base / "state")


@pytest.mark.slow
@pytest.mark.serving
def test_jobs_and_models_through_the_extension(services, root):
    srv, ds = services["jupyter"], root["data"]
    status, answer, _ = srv.call("GET", "status")
    assert answer["jobs"] == {"configured": True, "url": services["jobs"].url, "token": True, "hint": ""}
    params = json.loads(Path(ds.params_json).read_text())
    params.update(chunk_size=1000, epochs=1)
    body = {"files": [str(f) for f in ds.files], "labels": ds.labels, "model": FAST_MODEL, "params": params,
            "name": "labext-sgd", "push": {"name": "labext-sgd"}}
    assert srv.call("POST", "jobs", {**body, "bogus": 1})[0] == 400
    status, answer, _ = srv.call("POST", "jobs", body)
    assert status == 201, answer
    job_id = answer["id"]
    deadline = time.monotonic() + 300
    job = {}
    while time.monotonic() < deadline:
        job = srv.call("GET", f"jobs/{job_id}")[1]
        if job["status"] not in ("queued", "running") and job.get("push_result") is not None:
            break
        time.sleep(1)
    assert job["status"] == "succeeded" and job["bundle"] is True, (job, services["jobs"].log_text()[-3000:])
    assert job["push_result"]["ok"] is True, job["push_result"]
    status, listing, _ = srv.call("GET", "jobs")
    assert status == 200 and listing["jobs"][0]["id"] == job_id
    status, log, _ = srv.call("GET", f"jobs/{job_id}/logs")
    assert status == 200 and "done" in log["text"] and log["next_offset"] == log["size"]
    assert srv.call("GET", f"jobs/{job_id}/logs{q(offset=log['size'])}")[1]["text"] == ""
    status, data, headers = srv.call("GET", f"jobs/{job_id}/bundle", raw=True)
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="labext-sgd.tar.gz"'
    tarball = services["base"] / "bundle.tar.gz"
    tarball.write_bytes(data)
    with tarfile.open(tarball) as tar:
        assert any(n.endswith("manifest.json") for n in tar.getnames())
    assert srv.call("GET", "jobs/nope")[0] == 404

    # the pushed model: listed, shared, tagged, scored by a test request, deleted
    status, answer, _ = srv.call("GET", "models")
    [model] = [m for m in answer["models"] if m["name"] == "labext-sgd"]
    ref = urllib.parse.quote(model["ref"], safe="")
    assert model["owner"] == "alice" and model["versions"] == ["1"] and model["shared"] is False
    status, meta, _ = srv.call("GET", f"models/{ref}")
    n = len(meta["inputs"][0]["shape"]) and meta["inputs"][0]["shape"][-1]
    assert status == 200 and n == model["n_features"] > 5
    assert srv.call("POST", f"models/{ref}/share", {"shared": True})[1]["shared"] is True
    assert srv.call("POST", f"models/{ref}/share", {"shared": "yes"})[0] == 400
    assert srv.call("POST", f"models/{ref}/tags", {"tag": "prod", "version": "1"})[1]["tags"]["prod"] == "1"
    status, answer, _ = srv.call("POST", f"models/{ref}/test", {"rows": [[0.0] * n, [1.0] * n]})
    assert status == 200, answer
    [out] = answer["outputs"]
    assert out["shape"][0] == 2 and all(0.0 <= v <= 1.0 for v in out["data"]) and answer["ms"] > 0
    assert srv.call("POST", f"models/{ref}/test", {"rows": [[0.0] * (n + 1)]})[0] == 400   # the service says why
    assert srv.call("POST", f"models/{ref}/test", {"rows": [["x"]]})[0] == 400
    assert srv.call("GET", "models/nobody%3Anope")[0] == 404
    status, answer, _ = srv.call("DELETE", f"models/{ref}")
    assert status == 200, answer
    assert not [m for m in srv.call("GET", "models")[1]["models"] if m["name"] == "labext-sgd"]
    # the finished job: deleted with its files (409 while its worker process is still exiting, as the service says)
    deadline = time.monotonic() + 60
    while (reply := srv.call("DELETE", f"jobs/{job_id}"))[0] == 409 and time.monotonic() < deadline:
        assert "still stopping" in reply[1]["message"], reply
        time.sleep(1)
    status, answer, _ = reply
    assert status == 200 and answer["deleted"] is True, answer
    assert srv.call("GET", f"jobs/{job_id}")[0] == 404
