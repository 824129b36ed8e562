"""In-process tests of the inference service: store (versions, tags, restart), auth (static tokens, OIDC
JWT against a JWKS served on 127.0.0.1, JupyterHub token checks against a fake hub), dynamic batching,
limits and hostile tarballs.

The bundles here are built by hand in a few milliseconds: specs with two flat branches and one jagged
branch, a flat cut, and an ONNX logistic regression ``sigmoid(X @ w + b)`` whose scores the tests compute
with numpy. No training, no TensorFlow (except the one SavedModel test).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the service's own dependencies (not an ML framework)
import httpx  # noqa: E402

with warnings.catch_warnings():  # starlette asks for httpx2, which is not needed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from servers import run_coroutine  # noqa: E402

from mlaas4hep_lab.auth import Authenticator, AuthError, OIDCVerifier, load_tokens  # noqa: E402
from mlaas4hep_lab.bundle import Bundle  # noqa: E402
from mlaas4hep_lab.cli import build_parser, main  # noqa: E402
from mlaas4hep_lab.data.specs import Specs  # noqa: E402
from mlaas4hep_lab.errors import ConfigError  # noqa: E402
from mlaas4hep_lab.params import Params  # noqa: E402
from mlaas4hep_lab.serving.app import create_app  # noqa: E402
from mlaas4hep_lab.serving.batching import Batcher, QueueFull  # noqa: E402
from mlaas4hep_lab.serving.settings import Settings  # noqa: E402
from mlaas4hep_lab.serving.store import ModelStore  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

TOKENS = {"alice": "tok-alice-123", "bob": "tok-bob-4567"}
ALICE = {"Authorization": f"Bearer {TOKENS['alice']}"}
BOB = {"Authorization": f"token {TOKENS['bob']}"}  # the JupyterHub scheme works too
FEATURES = ["a", "b", "jet_pt[0]", "jet_pt[1]"]
W1, B1 = np.array([0.5, -1.0, 2.0, 0.25], np.float32), 0.1
W2, B2 = np.array([-1.5, 0.5, 0.3, 1.0], np.float32), -0.2


# ------------------------------------------------------------------------------------------ bundles

def onnx_logistic(w: np.ndarray, b: float, n_inputs: int | None = None) -> bytes:
    """ONNX: features float[N, F] -> score float[N] = sigmoid(features @ w + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = n_inputs or len(w)
    nodes = [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["zb"]),
             helper.make_node("Sigmoid", ["zb"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["score"])]
    graph = helper.make_graph(
        nodes, "logistic", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w.reshape(-1, 1).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([b], np.float32), "B"),
         numpy_helper.from_array(np.array([-1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_bundle(folder: Path, name: str = "higgs", w=W1, b=B1, manifest_extra: dict | None = None,
                onnx_bytes: bytes | None = None) -> Path:
    """A bundle directory as write_bundle lays it out, with the ONNX export only."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = Specs(fkeys=["a", "b"], jkeys=["jet_pt"], jdim={"jet_pt": 2},
                  minv={"a": -2.0, "b": 0.0, "jet_pt": 20.0}, maxv={"a": 2.0, "b": 10.0, "jet_pt": 220.0},
                  tree="events", identifier=["evt"])
    assert specs.features == FEATURES
    specs.save(folder / "specs.json")
    (folder / "params.json").write_text(json.dumps(Params().to_dict()))
    (folder / "preproc.json").write_text(json.dumps({"flat_cut": {"a": {"cut": "a > 0", "remove": False}}}))
    (folder / "inference").mkdir(exist_ok=True)
    (folder / "inference" / "model.onnx").write_bytes(onnx_bytes or onnx_logistic(w, b))
    manifest = {"bundle_version": 1, "name": name, "version": 1, "backend": "torch", "created": "2026-01-01",
                "features": FEATURES, "input_shape": [None, 4], "labels": {"1": "signal", "0": "background"},
                "metrics": {"auc": 0.9}, "inference": {"format": "onnx", "path": "inference/model.onnx",
                                                       "input": "features", "output": "score"}}
    manifest.update(manifest_extra or {})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def tarball(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def scores(X, w=W1, b=B1) -> np.ndarray:
    return (1 / (1 + np.exp(-(np.asarray(X, np.float32) @ w + b)))).astype(np.float32)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("bundles")
    return {"v1": tarball(make_bundle(base / "one")), "v2": tarball(make_bundle(base / "two", w=W2, b=B2)),
            "dir": base / "one"}


def make_client(tmp_path, **settings) -> TestClient:
    options = {"store_dir": tmp_path / "store", "tokens": TOKENS, "preload": True, **settings}
    return TestClient(create_app(Settings(**options)))


@pytest.fixture
def client(tmp_path, bundles):
    with make_client(tmp_path) as c:
        r = c.post("/upload", content=bundles["v1"], headers={**ALICE, "Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
        yield c


def predict(c, values, model="higgs", keys=FEATURES, headers=ALICE, **extra):
    values = values.tolist() if isinstance(values, np.ndarray) else values
    return c.post("/json", json={"keys": keys, "values": values, "model": model, **extra}, headers=headers)


X4 = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5]])


# ------------------------------------------------------------------------------------------ auth on every route

def test_every_route_but_health_needs_a_token(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200 and client.get("/healthz").status_code == 200
    checked = 0
    for route in client.app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD" or route.path.startswith(("/v2/health", "/healthz")):
                continue
            path = route.path.replace("{model:path}", "higgs").replace("{version}", "1")
            r = client.request(method, path, json={})
            assert r.status_code == 401, (method, route.path, r.status_code)
            assert r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 25
    assert client.get("/models", headers={"Authorization": "Bearer nope-nope"}).status_code == 401
    assert client.get("/models", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/whoami", headers=BOB).json() == {"name": "bob", "source": "static", "groups": [], "usage": {
        "bytes": 0, "versions": 0, "quota_bytes": 10 << 30, "quota_versions": 100}}


# ------------------------------------------------------------------------------------------ store

def test_versions_tags_replacement_and_restart(tmp_path, bundles):
    gz = {"Content-Type": "application/gzip"}
    with make_client(tmp_path) as c:
        first = c.post("/upload", content=bundles["v1"], headers={**ALICE, **gz}).json()
        assert (first["version"], first["tags"], first["features"]) == ("1", {"latest": "1"}, FEATURES)
        second = c.post("/upload", content=bundles["v2"], headers={**ALICE, **gz}).json()
        assert second["version"] == "2" and second["tags"]["latest"] == "2" and second["versions"] == ["1", "2"]
        np.testing.assert_allclose(predict(c, X4).json(), scores(X4, W2, B2), atol=1e-6)
        assert c.post("/v2/models/higgs/tags", json={"tag": "prod", "version": 1}, headers=ALICE).status_code == 200
        np.testing.assert_allclose(predict(c, X4, version="prod").json(), scores(X4), atol=1e-6)
        assert [m["name"] for m in c.get("/models?tag=prod", headers=ALICE).json()] == ["higgs"]
        assert c.get("/models?name=nothing", headers=ALICE).json() == []
        assert c.post("/v2/models/higgs/tags", json={"tag": "latest", "version": 1}, headers=ALICE).status_code == 400
        # an explicit version replaces what is served under it at once
        replaced = c.post("/upload?version=1", content=bundles["v2"], headers={**ALICE, **gz}).json()
        assert replaced["version"] == "1" and replaced["tags"] == {"latest": "2", "prod": "1"}  # the highest
        np.testing.assert_allclose(predict(c, X4, version="prod").json(), scores(X4, W2, B2), atol=1e-6)
        listed = c.get("/models", headers=ALICE).json()
    # a new process over the same store serves the same models, versions and tags
    with make_client(tmp_path) as c:
        assert c.get("/models", headers=ALICE).json() == listed
        np.testing.assert_allclose(predict(c, X4, version="2").json(), scores(X4, W2, B2), atol=1e-6)
        assert c.get("/v2/models/higgs/versions/prod/ready", headers=ALICE).json()["ready"] is True
        assert c.delete("/v2/models/higgs/versions/1", headers=ALICE).json()["versions"] == ["1"]
        assert c.get("/v2/models/higgs", headers=ALICE).json()["tags"] == {"latest": "2"}
        assert c.delete("/delete/higgs", headers=ALICE).status_code == 200
        assert c.get("/models", headers=ALICE).json() == []
        assert c.get("/v2/models/higgs", headers=ALICE).status_code == 404
        nxt = c.post("/upload", content=bundles["v1"], headers={**ALICE, **gz}).json()
        assert nxt["version"] == "1" and list((tmp_path / "store" / ".staging").iterdir()) == []
        assert c.get("/v2/models/higgs", headers=ALICE).json()["platform"] == "onnxruntime_onnx"
    # restarted with another runtime preference: metadata says what serves now; no SavedModel, a clear 400
    with make_client(tmp_path, runtime="tf") as c:
        assert c.get("/v2/models/higgs", headers=ALICE).json()["platform"] == ""
        r = predict(c, X4)
        assert r.status_code == 400 and "no tf export" in r.json()["error"]


def test_two_processes_share_one_store(tmp_path, bundles):
    a, b = ModelStore(tmp_path / "s"), ModelStore(tmp_path / "s")
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(bundles["v1"])
    a.ingest("alice", archive, name="higgs")
    b.refresh()
    assert b.find("alice", "higgs")[1] == "1"
    a.ingest("alice", archive, name="higgs")
    b.refresh()
    assert b.find("alice", "higgs")[1] == "2" and b.load("alice", "higgs", "2").features == FEATURES


def test_sharing_and_ownership(client, bundles):
    assert predict(client, X4, headers=BOB).status_code == 404
    r = predict(client, X4, model="alice:higgs", headers=BOB)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert client.post("/v2/models/higgs/share", json={"shared": True}, headers=ALICE).json()["shared"] is True
    expected = scores(X4)
    for ref in ("alice:higgs", "alice/higgs"):
        np.testing.assert_allclose(predict(client, X4, model=ref, headers=BOB).json(), expected, atol=1e-6)
    body = {"inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32", "data": X4.ravel().tolist()}]}
    for path in ("alice:higgs", "alice/higgs", "alice%2Fhiggs"):
        r = client.post(f"/v2/models/{path}/infer", json=body, headers=BOB)
        assert r.status_code == 200, (path, r.text)
    hint = predict(client, X4, headers=BOB).json()["error"]
    assert "alice:higgs" in hint  # bob is told how to address alice's model
    assert client.delete("/delete/alice:higgs", headers=BOB).status_code == 403
    assert client.post("/v2/models/alice:higgs/tags", json={"tag": "prod", "version": 1}, headers=BOB).status_code == 403
    assert client.post("/v2/models/alice:higgs/share", json={"shared": False}, headers=BOB).status_code == 403
    # bob's own model of the same name is his
    r = client.post("/upload", content=bundles["v2"], headers={**BOB, "Content-Type": "application/gzip"})
    assert r.json()["ref"] == "bob:higgs"
    np.testing.assert_allclose(predict(client, X4, headers=BOB).json(), scores(X4, W2, B2), atol=1e-6)
    assert {m["ref"] for m in client.get("/models", headers=BOB).json()} == {"alice:higgs", "bob:higgs"}
    assert {m["ref"] for m in client.get("/models", headers=ALICE).json()} == {"alice:higgs"}
    client.post("/v2/models/higgs/share", json={"shared": False}, headers=ALICE)
    assert predict(client, X4, model="alice:higgs", headers=BOB).status_code == 404


# ------------------------------------------------------------------------------------------ predictions

def test_json_honours_keys(client):
    expected = scores(X4)
    np.testing.assert_allclose(predict(client, X4).json(), expected, atol=1e-6)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(predict(client, X4[:, perm], keys=[FEATURES[i] for i in perm]).json(), expected,
                               atol=1e-6)
    one = predict(client, X4[1])  # one event as a flat list
    assert one.status_code == 200 and np.allclose(one.json(), expected[1:2], atol=1e-6)
    no_keys = client.post("/json", json={"values": X4.tolist(), "model": "higgs"}, headers=ALICE)
    np.testing.assert_allclose(no_keys.json(), expected, atol=1e-6)
    bad = {
        "missing key": predict(client, X4[:, :3], keys=FEATURES[:3]),
        "unknown key": predict(client, X4, keys=["a", "b", "jet_pt[0]", "jet_PT[1]"]),
        "repeated key": predict(client, X4, keys=["a", "a", "jet_pt[0]", "jet_pt[1]"]),
        "ragged": predict(client, [[1, 2, 3, 4], [1, 2, 3]]),
        "too many values": predict(client, [[1, 2, 3, 4, 5]]),
        "beyond float32": predict(client, [[1e39, 0, 0, 0]]),
        "unknown model": predict(client, X4, model="nope"),
    }
    for what, r in bad.items():
        assert r.status_code in (400, 404), what
        assert r.json()["error"], what
    assert "did you mean 'jet_pt[1]'" in bad["unknown key"].json()["error"]
    assert bad["unknown model"].status_code == 404
    strings = predict(client, [["1", 2, 3, 4]])
    assert strings.status_code == 422 and "values" in strings.json()["error"]


def test_open_inference_protocol(client):
    meta = client.get("/v2/models/higgs", headers=ALICE).json()
    assert meta["features"] == FEATURES and meta["inputs"][0]["shape"] == [-1, 4]
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"] and meta["tree"] == "events"
    assert meta["input_branches"] == ["a", "b", "jet_pt"] and meta["identifier"] == ["evt"]
    assert client.get("/v2", headers=ALICE).json()["name"] == "mlaas4hep-lab"
    assert client.get("/v2/models/higgs/ready", headers=ALICE).json()["ready"] is True

    def infer(data, shape=(3, 4), datatype="FP32", name="features", path="/v2/models/higgs/infer", **extra):
        body = {"id": "r1", "inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}
        return client.post(path, json={**body, **extra}, headers=ALICE)

    for data, datatype in ((X4.ravel().tolist(), "FP32"), (X4.tolist(), "FP64")):
        r = infer(data, datatype=datatype)
        answer = r.json()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == ("higgs", "1", "r1")
        out = answer["outputs"][0]
        assert (out["name"], out["shape"], out["datatype"]) == ("score", [3], "FP32")
        np.testing.assert_allclose(out["data"], scores(X4), atol=1e-6)
    assert infer(X4.tolist(), path="/v2/models/higgs/versions/latest/infer").status_code == 200
    refusals = [infer(X4.ravel().tolist(), shape=(3, 5)), infer(X4.ravel().tolist(), shape=(4, 4)),
                infer(X4.ravel().tolist(), datatype="INT8"), infer(X4.ravel().tolist(), name="x"),
                infer([[1, 2, 3, 4], [1, 2]], shape=(2, 4)), infer([], shape=(3, 4)),
                infer(X4.ravel().tolist(), outputs=[{"name": "logits"}]),
                infer(X4.ravel().tolist(), path="/v2/models/higgs/versions/9/infer"),
                client.post("/v2/models/higgs/infer", json={"inputs": []}, headers=ALICE),
                client.post("/v2/models/higgs/infer", content=b"{not json", headers=ALICE)]
    for r in refusals:
        assert 400 <= r.status_code < 500 and r.json()["error"], r.text
    assert infer([], shape=(0, 4)).json()["outputs"][0]["data"] == []


def test_raw_events_use_the_bundles_preprocessing(client, bundles):
    events = {"a": [0.5, -1.0, 1.5], "b": [2.0, 4.0, 8.0], "jet_pt": [[50.0, 30.0, 25.0], [], [120.0]]}
    reference = Bundle.load(bundles["dir"])
    X, _, keep = reference.vectorize(events)
    expected = scores(X)
    for path in ("/v2/models/higgs/events", "/v2/models/higgs/raw", "/raw/higgs",
                 "/v2/models/higgs/versions/1/events"):
        r = client.post(path, json={"events": events, "id": "e"}, headers=ALICE)
        assert r.status_code == 200, (path, r.text)
        np.testing.assert_allclose(r.json()["scores"], expected, atol=1e-6)
        assert r.json()["keep"] == keep.tolist() == [True, False, True] and r.json()["id"] == "e"
    records = [{"a": a, "b": b, "jet_pt": j} for a, b, j in zip(events["a"], events["b"], events["jet_pt"])]
    r = client.post("/v2/models/higgs/events", json={"events": records}, headers=ALICE)
    np.testing.assert_allclose(r.json()["scores"], expected, atol=1e-6)
    bad = [{"a": [1.0], "b": [1.0]},                                   # a branch missing
           {"a": [1.0, 2.0], "b": [1.0], "jet_pt": [[1.0]]},           # lengths differ
           {"a": [[1.0]], "b": [1.0], "jet_pt": [1.0]},                 # jagged where flat is expected
           {"a": [1.0], "b": [1.0], "jet_pt": [[1.0], 2.0]},            # mixed
           [{"a": 1.0, "b": 1.0, "jet_pt": [1.0]}, {"a": 1.0}], [], {}]
    for events in bad:
        r = client.post("/v2/models/higgs/events", json={"events": events}, headers=ALICE)
        assert 400 <= r.status_code < 500 and r.json()["error"], (events, r.text)


def test_original_multipart_form_upload(tmp_path, bundles):
    with make_client(tmp_path) as c:
        r = c.post("/upload", files={"bundle": ("b.tar.gz", bundles["v1"], "application/gzip")},
                   data={"name": "form-model", "version": "7", "shared": "true"}, headers=ALICE)
        assert r.status_code == 201, r.text
        assert (r.json()["ref"], r.json()["version"], r.json()["shared"]) == ("alice:form-model", "7", True)
        r = c.post("/upload", files={"labels": ("l.txt", b"1\n0\n")}, headers=ALICE)
        assert r.status_code == 400 and "bundle" in r.json()["error"]
        params = c.get("/params/form-model", headers=ALICE).json()
        assert params["manifest"]["features"] == FEATURES and params["preproc"]["flat_cut"]
        # the original TFaaS form with a bare model file: ONNX, params.json (feature names), labels.txt
        names = ["pt", "eta", "mass", "met"]
        files = {"model": ("model.onnx", onnx_logistic(W1, B1)),
                 "params": ("params.json", json.dumps({"features": names, "outputNode": "score"}).encode()),
                 "labels": ("labels.txt", b"background\nsignal\n")}
        r = c.post("/upload", files=files, data={"name": "bare"}, headers=ALICE)
        assert r.status_code == 201 and r.json()["features"] == names, r.text
        np.testing.assert_allclose(predict(c, X4, model="bare", keys=names).json(), scores(X4), atol=1e-6)
        events = {n: X4[:, i].tolist() for i, n in enumerate(names)}
        r = c.post("/v2/models/bare/events", json={"events": events}, headers=ALICE)
        np.testing.assert_allclose(r.json()["scores"], scores(X4), atol=1e-6)
        assert c.get("/v2/models/bare", headers=ALICE).json()["labels"] == {"0": "background", "1": "signal"}
        r = c.post("/upload", files={"model": ("m.pb", b"\x08\x01 not onnx")}, data={"name": "tf1"}, headers=ALICE)
        assert r.status_code == 400 and "neither a bundle tarball nor an ONNX model" in r.json()["error"]


# ------------------------------------------------------------------------------------------ limits and attacks

def _tar(members) -> bytes:
    """A gzipped tar of (TarInfo, bytes | None) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name, kind=tarfile.REGTYPE, data=b"x", **attrs):
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, (data if kind == tarfile.REGTYPE else None)


def _good_members(folder: Path):
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out.append(_member(f"bundle/{path.relative_to(folder)}", data=path.read_bytes()))
    return out


ATTACKS = {
    "absolute path": lambda g: _tar(g + [_member("/tmp/evil")]),
    "dot-dot": lambda g: _tar(g + [_member("bundle/../../evil")]),
    "symlink": lambda g: _tar(g + [_member("bundle/link", tarfile.SYMTYPE, linkname="/etc/passwd")]),
    "hardlink": lambda g: _tar(g + [_member("bundle/hard", tarfile.LNKTYPE, linkname="bundle/manifest.json")]),
    "char device": lambda g: _tar(g + [_member("bundle/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)]),
    "fifo": lambda g: _tar(g + [_member("bundle/fifo", tarfile.FIFOTYPE)]),
    "too many members": lambda g: _tar(g + [_member(f"bundle/f{i}") for i in range(60)]),
    "too large": lambda g: _tar(g + [_member("bundle/big", data=bytes(300_000))]),
    "not a tar": lambda g: b"\x1f\x8b garbage" * 100,
    "empty": lambda g: b"",
    "no manifest": lambda g: _tar([_member("bundle/readme.txt")]),
}


@pytest.fixture
def small_limits_client(tmp_path, bundles):
    with make_client(tmp_path, max_tar_members=40, max_tar_bytes=250_000, max_upload_bytes=200_000,
                     max_body_bytes=20_000, max_json_depth=8) as c:
        assert c.post("/upload", content=bundles["v1"], headers=ALICE).status_code == 201
        yield c


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_tarballs_are_refused(small_limits_client, bundles, attack, tmp_path):
    c = small_limits_client
    good = _good_members(bundles["dir"])
    r = c.post("/upload?name=evil", content=ATTACKS[attack](good), headers=ALICE)
    assert 400 <= r.status_code < 500 and r.json()["error"], (attack, r.status_code, r.text)
    assert c.get("/v2/health/live").status_code == 200
    assert [m["name"] for m in c.get("/models", headers=ALICE).json()] == ["higgs"]  # nothing new
    np.testing.assert_allclose(predict(c, X4).json(), scores(X4), atol=1e-6)  # still serving
    store = tmp_path / "store"
    assert not (Path("/tmp") / "evil").exists() and list((store / ".staging").iterdir()) == []


@pytest.mark.parametrize("problem", ["manifest path escapes", "wrong input width", "not onnx", "no features",
                                     "huge jagged length"])
def test_unservable_bundles_are_refused_before_activation(client, tmp_path, problem):
    broken = {"manifest path escapes": {"manifest_extra": {"inference": {"format": "onnx", "path": "../../x.onnx"}}},
              "wrong input width": {"onnx_bytes": onnx_logistic(np.ones(5, np.float32), 0.0)},
              "not onnx": {"onnx_bytes": b"not a protobuf at all"},
              "no features": {"manifest_extra": {"features": []}}, "huge jagged length": {}}[problem]
    folder = make_bundle(tmp_path / "broken", name="higgs", **broken)
    if problem == "huge jagged length":
        specs = json.loads((folder / "specs.json").read_text())
        specs["jdim"]["jet_pt"] = 10**9
        (folder / "specs.json").write_text(json.dumps(specs))
    if problem == "manifest path escapes":
        (folder / "inference" / "model.onnx").unlink()
    r = client.post("/upload", content=tarball(folder), headers=ALICE)
    assert r.status_code == 400 and r.json()["error"], r.text
    meta = client.get("/v2/models/higgs", headers=ALICE).json()
    assert meta["versions"] == ["1"]  # the previous version keeps serving
    np.testing.assert_allclose(predict(client, X4).json(), scores(X4), atol=1e-6)


def test_request_limits(small_limits_client):
    c = small_limits_client
    r = c.post("/upload", content=bytes(300_000), headers=ALICE)
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = c.post("/json", content=b"[" + b"0," * 20_000 + b"0]", headers=ALICE)
    assert r.status_code == 413

    def chunks():
        for _ in range(30):
            yield b" " * 1000
    assert c.post("/echo", content=chunks(), headers=ALICE).status_code == 413  # no Content-Length
    assert c.post("/echo", content=b"[" * 9 + b"]" * 9, headers=ALICE).status_code == 400
    assert c.post("/echo", content=b"[" * 8 + b"]" * 8, headers=ALICE).status_code == 200
    assert c.post("/echo", json={"a": [1, 2, {"b": None}]}, headers=ALICE).json() == {"a": [1, 2, {"b": None}]}
    assert c.post("/echo", content=b"NaN", headers=ALICE).status_code == 400
    assert c.post("/json", content=b"", headers=ALICE).status_code == 400
    assert c.post("/json", json=[1, 2], headers=ALICE).status_code == 422
    deep = {"model": "higgs", "values": [1, 2, 3, 4], "parameters": {"x": [[[[[[[[[1]]]]]]]]]}}
    assert c.post("/json", json=deep, headers=ALICE).status_code == 400
    assert c.get("/v2/health/live").status_code == 200


# ------------------------------------------------------------------------------------------ batching

class CountingModel:
    def __init__(self, delay: float = 0.02):
        self.calls, self.rows, self.delay = 0, [], delay

    def __call__(self, X):
        self.calls += 1
        self.rows.append(len(X))
        time.sleep(self.delay)
        return X[:, 0].astype(np.float32) * 2


def test_batcher_merges_concurrent_requests():
    from concurrent.futures import ThreadPoolExecutor

    model = CountingModel()

    async def run():
        batcher = Batcher(model, max_batch=64, max_delay_ms=5, executor=ThreadPoolExecutor(2))
        requests = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(40)]
        answers = await asyncio.gather(*[batcher.submit(X) for X in requests])
        for X, y in zip(requests, answers):
            np.testing.assert_array_equal(y, X[:, 0] * 2)
        return batcher

    batcher = run_coroutine(run())
    assert batcher.passes == model.calls < 10 and max(model.rows) <= 64 and sum(model.rows) == 79


def test_batcher_limits_queue_inline_and_close():
    model = CountingModel(delay=0.0)

    async def run():
        b = Batcher(model, max_batch=4, queue_size=3, inline_rows=8)
        assert (await b.submit(np.ones((2, 1), np.float32))).tolist() == [2, 2]  # idle: inline
        assert model.calls == 1 and b._queue is None
        b.inline_rows = 0
        tasks = [asyncio.ensure_future(b.submit(np.ones((3, 1), np.float32) * i)) for i in range(5)]
        await asyncio.sleep(0)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        full = [d for d in done if isinstance(d, QueueFull)]
        assert len(full) == 2 and full[0].status == 503
        assert all(np.array_equal(d, np.full(3, 2.0 * i)) for i, d in enumerate(done[:3]))
        assert max(model.rows) <= 4  # 3 + 3 rows do not fit one pass of 4
        b.close()
        assert (await b.submit(np.ones((9, 1), np.float32))).shape == (9,)  # closed: still answers

    run_coroutine(run())


def test_service_batches_concurrent_http_requests(tmp_path, bundles):
    app = create_app(Settings(store_dir=tmp_path / "store", tokens=TOKENS, inline_rows=0, max_delay_ms=20))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/upload", content=bundles["v1"], headers=ALICE)
            assert r.status_code == 201
            body = {"keys": FEATURES, "model": "higgs"}
            rs = await asyncio.gather(*[c.post("/json", json={**body, "values": X4[i % 3].tolist()}, headers=ALICE)
                                        for i in range(30)])
            assert [r.status_code for r in rs] == [200] * 30
            for i, r in enumerate(rs):
                assert abs(r.json()[0] - scores(X4[i % 3:i % 3 + 1])[0]) < 1e-6
            metrics = (await c.get("/metrics", headers=ALICE)).text
        return metrics

    metrics = run_coroutine(run())
    model = app.state.service.store.loaded("alice", "higgs", "1")
    assert 1 <= model.batcher.passes < 15  # 30 requests, a few forward passes
    assert 'mlaas4hep_batch_requests_count{model="alice:higgs"}' in metrics
    assert 'mlaas4hep_requests_total{route="/json",method="POST",status="200"} 30' in metrics
    assert 'route="/upload",le="+Inf"' in metrics


# ------------------------------------------------------------------------------------------ auth sources

class _JSONServer:
    """A tiny HTTP server on 127.0.0.1 answering GET paths from a dict (or a callable per request)."""

    def __init__(self, routes):
        outer = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                status, payload = routes(self) if callable(routes) else (200, routes.get(self.path))
                body = json.dumps(payload).encode()
                self.send_response(status if payload is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_oidc_jwt_checked_against_jwks(tmp_path):
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    issuer, audience = "https://iam.example.org/", "mlaas4hep"

    def token(signer=key, kid="k1", **claims):
        now = int(time.time())
        body = {"iss": issuer, "aud": audience, "iat": now, "exp": now + 600, "preferred_username": "dana",
                "groups": ["cms"], **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, signer, algorithm="RS256",
                          headers={"kid": kid})

    routes = {"/jwks": {"keys": [jwk]}}
    with _JSONServer(routes) as jwks:
        # the JWKS found through the issuer's discovery document
        routes["/.well-known/openid-configuration"] = {"issuer": jwks.url, "jwks_uri": f"{jwks.url}/jwks"}
        found = Authenticator(oidc=OIDCVerifier(jwks.url, audience))
        assert run_coroutine(found.authenticate(f"Bearer {token(iss=jwks.url)}")).name == "dana"
        auth = Authenticator(oidc=OIDCVerifier(issuer, audience, f"{jwks.url}/jwks"))
        user = run_coroutine(auth.authenticate(f"Bearer {token()}"))
        assert (user.name, user.source, user.groups) == ("dana", "oidc", ("cms",))
        refused = {"expired": token(exp=int(time.time()) - 120), "audience": token(aud="other"),
                   "issuer": token(iss="https://evil.example.org/"), "signature": token(signer=other),
                   "no username": token(preferred_username=None), "unknown kid": token(kid="k9"),
                   "garbage": "a.b.c"}
        for what, tok in refused.items():
            with pytest.raises(AuthError) as err:
                run_coroutine(auth.authenticate(f"Bearer {tok}"))
            assert err.value.status == 401, what
        # the same checks through the service, beside static tokens
        settings = Settings(store_dir=tmp_path / "store", tokens=TOKENS, oidc_issuer=issuer,
                            oidc_audience=audience, oidc_jwks_url=f"{jwks.url}/jwks")
        with TestClient(create_app(settings)) as c:
            assert c.get("/whoami", headers={"Authorization": f"Bearer {token()}"}).json()["name"] == "dana"
            assert c.get("/whoami", headers={"Authorization": f"Bearer {refused['expired']}"}).status_code == 401
            assert c.get("/whoami", headers=ALICE).json()["name"] == "alice"


def test_jupyterhub_tokens_checked_and_cached():
    def hub(handler):
        if handler.path == "/hub/api/user" and handler.headers.get("Authorization") == "token hub-good-token":
            return 200, {"name": "carol", "kind": "user", "groups": ["physics"], "scopes": ["access:services"]}
        return 403, {"message": "nope"}

    with _JSONServer(hub) as server:
        auth = Authenticator(hub_api_url=f"{server.url}/hub/api", hub_cache_ttl=60)

        async def run():
            users = await asyncio.gather(*[auth.authenticate("token hub-good-token") for _ in range(5)])
            again = await auth.authenticate("Bearer hub-good-token")
            with pytest.raises(AuthError) as err:
                await auth.authenticate("token hub-bad-token")
            with pytest.raises(AuthError):
                await auth.authenticate("token hub-bad-token")  # from the short negative cache
            await auth.aclose()
            return users, again, err.value

        users, again, err = run_coroutine(run())
        assert {u.name for u in users} == {"carol"} and again.groups == ("physics",)
        assert err.status == 401 and server.hits == 2  # one check per token, then the cache
        scoped = Authenticator(hub_api_url=f"{server.url}/hub/api", hub_scopes=("access:services!service=tfaas",))
        assert run_coroutine(_refusal(scoped, "token hub-good-token")) == 403  # valid user, token not for us
    down = Authenticator(hub_api_url=f"{server.url}/hub/api")
    assert run_coroutine(_refusal(down, "token other-token")) == 503  # the hub is gone


async def _refusal(auth: Authenticator, header: str) -> int:
    try:
        await auth.authenticate(header)
    except AuthError as err:
        return err.status
    finally:
        await auth.aclose()
    raise AssertionError("accepted")


def test_tokens_file_formats(tmp_path):
    plain, nested, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    plain.write_text(json.dumps(TOKENS))
    nested.write_text(json.dumps({"tokens": TOKENS}))
    assert load_tokens(plain) == load_tokens(nested) == TOKENS
    for content in ('{"alice": "short"}', '{"../x": "long-enough-token"}', "[1, 2]", "{not json",
                    '{"a": "same-token-1", "b": "same-token-1"}'):
        bad.write_text(content)
        with pytest.raises(ConfigError):
            load_tokens(bad)


# ------------------------------------------------------------------------------------------ app, CLI, runtimes

def test_prefix_openapi_and_light_import(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/tfaas/")
    with TestClient(create_app(Settings(store_dir=tmp_path / "store", tokens=TOKENS))) as c:
        assert c.get("/services/tfaas/v2/health/ready").status_code == 200
        assert c.get("/v2/health/ready").status_code == 404
        schema = c.get("/services/tfaas/openapi.json", headers=ALICE).json()
        assert "/services/tfaas/v2/models/{model}/infer" in schema["paths"]
        assert {"InferRequest", "JsonRequest", "EventsRequest"} <= set(schema["components"]["schemas"])
    code = "import sys, mlaas4hep_lab, mlaas4hep_lab.serving, mlaas4hep_lab.cli; print('fastapi' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_serve_command_flags(tmp_path, monkeypatch, capsys):
    for var in ("JUPYTERHUB_API_URL", "MLAAS4HEP_TOKENS", "MLAAS4HEP_OIDC_ISSUER", "MLAAS4HEP_OIDC_JWKS_URL",
                "MLAAS4HEP_NO_AUTH"):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args(["serve", "--store", str(tmp_path), "--port", "9999", "--no-batching",
                                      "--runtime", "tf", "--max-batch", "64"])
    assert (args.store, args.port, args.batching, args.runtime, args.max_batch) == (str(tmp_path), 9999, False,
                                                                                      "tf", 64)
    assert main(["serve", "--store", str(tmp_path / "s")]) == 2  # no way to authenticate: refuse to start
    assert "--tokens" in capsys.readouterr().err
    bad = tmp_path / "tokens.json"
    bad.write_text("{not json")
    assert main(["serve", "--store", str(tmp_path / "s"), "--tokens", str(bad)]) == 2
    with pytest.raises(ConfigError):
        Settings(store_dir=tmp_path, runtime="gpu")


@pytest.mark.slow
def test_tf_savedmodel_runtime_and_refused_ops(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from mlaas4hep_lab.serving import BadRequest
    from mlaas4hep_lab.serving.runtime import TFRuntime, build_runtime

    class Logistic(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(W1.reshape(-1, 1))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def serve(self, features):
            return {"output_0": tf.reshape(tf.sigmoid(features @ self.w + B1), [-1])}

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def serve(self, features):
            leak = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return {"output_0": tf.reduce_sum(features, 1) + tf.cast(leak, tf.float32) * 0}

    folder = make_bundle(tmp_path / "tfb")
    (folder / "inference" / "model.onnx").unlink()
    good = Logistic()
    tf.saved_model.save(good, str(folder / "inference" / "saved_model"), signatures={"serving_default": good.serve})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"format": "tf-savedmodel", "path": str(folder / "inference" / "saved_model")}
    runtime = build_runtime(folder, manifest, 4, "auto")
    assert isinstance(runtime, TFRuntime)
    np.testing.assert_allclose(runtime.predict(X4.astype(np.float32)), scores(X4), atol=1e-6)
    with pytest.raises(BadRequest, match="no onnx export"):
        build_runtime(folder, manifest, 4, "onnx")
    evil = Reader()
    tf.saved_model.save(evil, str(tmp_path / "evil"), signatures={"serving_default": evil.serve})
    with pytest.raises(BadRequest, match="ReadFile"):
        TFRuntime(tmp_path / "evil", 4)


@pytest.mark.parametrize("command, module, folder_flag", [("serve", "mlaas4hep_lab.serving.app", "--store"),
                                                          ("jobs", "mlaas4hep_lab.jobs.app", "--state")])
def test_both_services_take_the_same_auth_flags(tmp_path, monkeypatch, command, module, folder_flag):
    import importlib

    started = []
    monkeypatch.setattr(importlib.import_module(module), "serve", started.append)
    flags = ["--prefix", "/services/x/", "--oidc-issuer", "https://iam.example/", "--oidc-audience", "mlaas",
             "--oidc-jwks-url", "http://127.0.0.1:1/jwks", "--oidc-username-claim", "sub",
             "--oidc-groups-claim", "wlcg.groups", "--log-level", "debug"]
    assert main([command, folder_flag, str(tmp_path / "d"), "--port", "9999", *flags]) == 0
    (settings,) = started
    assert (settings.prefix, settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url,
            settings.oidc_username_claim, settings.oidc_groups_claim, settings.log_level, settings.port) == (
        "/services/x", "https://iam.example/", "mlaas", "http://127.0.0.1:1/jwks", "sub", "wlcg.groups", "debug",
        9999)
