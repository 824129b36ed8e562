"""The Deploy panel against a real ``mlaas4hep serve`` on 127.0.0.1: push the Lab's bundle, list models and
versions, score raw events remotely and compare with the notebook's own scores. The comm is a dummy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_support import ServerProcess
from widget_support import DummyComm, dummy_comm  # noqa: F401  (autouse: headless widgets)

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.widgets import Lab
from mlaas4hep_lab.widgets.remote import score_events

pytestmark = [pytest.mark.serving, pytest.mark.slow]
TOKENS = {"alice": "alice-widgets-token", "bob": "bob-widgets-token"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("widgets-serve")
    (folder / "tokens.json").write_text(json.dumps(TOKENS))
    proc = ServerProcess(folder / "store", folder / "tokens.json", folder / "server.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Lab with a jagged preprocessing (ttH) and a torch bundle trained through its Training panel."""
    import comm

    saved = comm.create_comm, comm.get_comm_manager
    comm.create_comm, comm.get_comm_manager = (lambda **kw: DummyComm()), (lambda **kw: {})
    try:
        ds = datasets.tth(tmp_path_factory.mktemp("tth"), n_events=2000, seed=3)
        lab = Lab(files=ds.files_txt, labels=ds.labels_txt, params=ds.params_json, preproc=ds.preproc_json,
                  workdir=tmp_path_factory.mktemp("lab"), service_url="", token="")
        lab.training.model.value = "torch"
        lab.training.epochs.value = 2
        run = lab.training.start()
        assert run.join(300) and run.status == "done", run.error
    finally:
        comm.create_comm, comm.get_comm_manager = saved
    return lab


def test_hub_defaults_fill_the_form(monkeypatch, trained):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-xyz")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:41234/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/")
    monkeypatch.delenv("MLAAS4HEP_SERVICE_URL", raising=False)
    monkeypatch.delenv("MLAAS4HEP_TOKEN", raising=False)
    from mlaas4hep_lab.widgets.deploy import DeployPanel

    state = trained.state
    saved = state.service_url, state.token
    state.service_url = state.token = None
    try:
        panel = DeployPanel(state)
    finally:
        state.service_url, state.token = saved
    assert panel.url.value == "http://127.0.0.1:41234/services/tfaas/"
    assert panel.token.value == "hub-token-xyz"


def test_push_list_and_score_against_a_real_service(trained, server):
    panel = trained.deploy
    assert panel.name.value == "lab-torch"   # from the bundle's manifest
    panel.url.value = server.url
    panel.token.value = "wrong-token"
    assert panel.push() is None and panel.status.value.startswith("error:")
    panel.token.value = TOKENS["alice"]
    panel.name.value = "tth-from-lab"
    panel.push_button.click()
    assert panel.status.value.startswith("pushed"), panel.status.value
    assert "tth-from-lab" in panel.status.value and "version 1" in panel.status.value
    first = panel.pushed
    assert panel.push()["version"] != first["version"]   # a second push is a new version
    models = panel.refresh()
    mine = [m for m in models if m["name"] == "tth-from-lab"]
    assert len(mine) == 1 and len(mine[0]["versions"]) == 2
    assert "tth-from-lab" in panel.models.value
    panel.score_button.click()
    assert "<table" in panel.scores.value, panel.scores.value
    rows = panel.score(n=8)
    assert len(rows) == 8
    # the notebook's own scores of the same raw events, from the bundle on disk
    events, _ = score_events(trained.state, 8)
    bundle = Bundle.load(trained.state.bundle)
    expected, keep = bundle.predict_arrays(events[bundle.input_branches()])
    assert np.allclose([r.notebook for r in rows], expected, atol=0)
    assert np.allclose([r.remote for r in rows], expected, atol=1e-5)
    assert [r.passes for r in rows] == keep.tolist()
    # bob cannot score alice's private model
    panel.token.value = TOKENS["bob"]
    assert panel.score() is None and panel.scores.value.startswith("error:")
