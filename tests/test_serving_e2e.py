"""End-to-end tests of the inference service: real bundles, a real ``mlaas4hep serve`` process, the client.

The session fixture trains three small bundles with the package's own ``demo`` command (Higgs-like data
with torch and with Keras, and the jagged ttH-like data with torch), starts the server on a free port of
127.0.0.1 with two users (alice, bob) and stops it at the end. Scores served by every route are compared
with what the notebook computes from the same bundle (``Bundle.predict_arrays`` / the backend).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uproot

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.serving.client import Client, ServiceError, tar_directory

try:
    from serving_support import ServerProcess, build_bundles, free_port, http_call
except ImportError:  # tests/ imported as a package
    from tests.serving_support import ServerProcess, build_bundles, free_port, http_call

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKENS = {"alice": "alice-token-0123", "bob": "bob-token-4567"}
MAX_UPLOAD = 8 << 20  # the test server's upload cap (--max-upload), so that "too large" is cheap to send
TOL = 1e-5


# ------------------------------------------------------------------------------------------ helpers

def assert_refused(status: int, payload, statuses=range(400, 500)) -> None:
    assert status in statuses, (status, payload)
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"], payload


def read_events(bundle: Bundle, data_dir: Path, n: int = 400):
    """The first ``n`` events of each example file (signal and background), the branches the bundle needs."""
    import awkward as ak

    parts = []
    for f in sorted(data_dir.glob("*.root")):
        tree = uproot.open(f)[bundle.specs.tree]
        parts.append(tree.arrays(bundle.input_branches(), entry_stop=n))
    return ak.concatenate(parts)


# ------------------------------------------------------------------------------------------ fixtures

@dataclass
class Served:
    server: ServerProcess
    bundles: dict[str, Path]
    refs: dict[str, Bundle]             # loaded locally: what the notebook computes
    events: dict[str, object]           # raw events per bundle key
    expected: dict[str, np.ndarray]     # the notebook's scores of those events
    X: dict[str, np.ndarray]            # their model inputs
    keep: dict[str, np.ndarray]
    uploads: dict[str, dict]

    def client(self, user: str | None = "alice", **kw) -> Client:
        return Client(self.server.url, token=TOKENS[user] if user else "", **kw)


@pytest.fixture(scope="session")
def serving_bundles(tmp_path_factory) -> dict[str, Path]:
    return build_bundles(tmp_path_factory.getbasetemp() / "serving-bundles")


@pytest.fixture(scope="session")
def serving_tokens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serving-auth") / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    return path


@pytest.fixture(scope="session")
def served(serving_bundles, serving_tokens, tmp_path_factory) -> Served:
    """The session's server with alice's three demo bundles uploaded."""
    folder = tmp_path_factory.mktemp("serving")
    server = ServerProcess(folder / "store", serving_tokens, folder / "server.log",
                           "--max-upload", str(MAX_UPLOAD)).start()
    try:
        refs, events, expected, X, keep, uploads = {}, {}, {}, {}, {}, {}
        alice = Client(server.url, token=TOKENS["alice"])
        for key, path in serving_bundles.items():
            uploads[key] = alice.upload(path)
            b = refs[key] = Bundle.load(path)
            events[key] = read_events(b, path.parent.parent / "data")
            X[key], _, keep[key] = b.vectorize(events[key])
            expected[key] = b.backend.predict(X[key]).astype(np.float32)
        yield Served(server, serving_bundles, refs, events, expected, X, keep, uploads)
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch):
    monkeypatch.delenv("MLAAS4HEP_TOKEN", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)


# ------------------------------------------------------------------------------------------ tests

def test_health_needs_no_token(served):
    assert Client(served.server.url, token="").health() == {"live": True, "ready": True}
    assert http_call(served.server.url, "GET", "/healthz")[0] == 200
    # nothing listening: health says so, other calls raise ServiceError without a status
    nowhere = Client(f"http://127.0.0.1:{free_port()}", token=TOKENS["alice"], timeout=5)
    assert nowhere.health() == {"live": False, "ready": False}
    with pytest.raises(ServiceError) as err:
        nowhere.models()
    assert err.value.status is None and "no answer" in str(err.value)


def test_upload_answers_what_was_stored(served):
    for key, answer in served.uploads.items():
        b = served.refs[key]
        assert answer["ref"] == f"alice:{b.name}" and answer["version"] == "1"
        assert answer["features"] == b.features and answer["tags"]["latest"] == "1"
        assert answer["shared"] is False
    listed = {m["ref"] for m in served.client().models()}
    assert {f"alice:{served.refs[k].name}" for k in served.uploads} <= listed
    meta = served.client().metadata("tth-torch")
    assert meta["features"] == served.refs["tth-torch"].features
    assert meta["input_branches"] == served.refs["tth-torch"].input_branches()
    assert meta["inputs"][0]["shape"] == [-1, len(meta["features"])]


def test_upload_after_the_server_closed_an_idle_connection(served):
    """uvicorn closes a keep-alive connection after 5 s idle; an upload (never retried) must not use it."""
    import time

    c = served.client()
    c.models()  # opens the kept-alive connection
    time.sleep(6.5)
    answer = c.upload(served.bundles["higgs-torch"], name="after-idle")
    assert answer["ref"] == "alice:after-idle" and answer["version"] == "1"
    assert "alice:after-idle" in {m["ref"] for m in c.models()}
    c.delete("after-idle")


@pytest.mark.parametrize("key", ["higgs-torch", "higgs-keras"])
def test_both_protocols_equal_the_bundle(served, key):
    c, X, expected = served.client(), served.X[key], served.expected[key]
    np.testing.assert_allclose(c.infer(key, X), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(c.predict(key, X), expected, atol=TOL, rtol=0)
    # TFaaS keys are honoured: the same values sent in another column order give the same scores
    features = served.refs[key].features
    perm = np.random.default_rng(1).permutation(len(features))
    shuffled = c.predict(key, keys=[features[i] for i in perm], values=X[:, perm])
    np.testing.assert_allclose(shuffled, expected, atol=TOL, rtol=0)
    one = c.predict(key, X[0])  # a single event as a flat list
    assert one.shape == (1,) and abs(one[0] - expected[0]) <= TOL
    # the OIP answer itself
    body = {"inputs": [{"name": "features", "shape": [2, X.shape[1]], "datatype": "FP32",
                        "data": X[:2].tolist()}], "id": "req-7"}
    status, answer = http_call(served.server.url, "POST", f"/v2/models/{key}/infer", json.dumps(body).encode(),
                               TOKENS["alice"])
    assert status == 200, answer
    assert answer["model_name"] == key and answer["model_version"] == "1" and answer["id"] == "req-7"
    out = answer["outputs"][0]
    assert out["name"] == "score" and out["shape"] == [2] and out["datatype"] == "FP32"


@pytest.mark.parametrize("key", ["higgs-torch", "higgs-keras", "tth-torch"])
def test_raw_events_equal_the_notebook(served, key):
    c = served.client()
    scores, keep = c.predict_events(key, served.events[key], with_keep=True)
    notebook, notebook_keep = served.refs[key].predict_arrays(served.events[key])
    np.testing.assert_allclose(scores, notebook, atol=TOL, rtol=0)
    np.testing.assert_array_equal(keep, notebook_keep)
    if key == "tth-torch":
        assert 0 < notebook_keep.sum() < len(notebook_keep)  # the cuts really select
    # one object per event, through the TFaaS-style raw route
    import awkward as ak

    rows = ak.to_list(served.events[key][:5])
    status, answer = http_call(served.server.url, "POST", f"/raw/{key}", json.dumps({"events": rows}).encode(),
                               TOKENS["alice"])
    assert status == 200, answer
    np.testing.assert_allclose(answer["scores"], notebook[:5], atol=TOL, rtol=0)


def test_versions_tags_and_reupload_change_the_scores(served):
    c = served.client()
    X = served.X["higgs-torch"]
    torch_scores, keras_scores = served.expected["higgs-torch"], served.expected["higgs-keras"]
    assert np.abs(torch_scores - keras_scores).max() > 1e-3  # two different models on the same features
    first = c.upload(served.bundles["higgs-torch"], name="versioned")
    second = c.upload(served.bundles["higgs-keras"].parent.parent / "output" / "bundle.tar.gz", name="versioned")
    assert (first["version"], second["version"]) == ("1", "2")
    assert c.metadata("versioned")["versions"] == ["1", "2"]
    assert c.metadata("versioned")["tags"]["latest"] == "2"
    np.testing.assert_allclose(c.infer("versioned", X), keras_scores, atol=TOL, rtol=0)
    np.testing.assert_allclose(c.infer("versioned", X, version=1), torch_scores, atol=TOL, rtol=0)
    np.testing.assert_allclose(c.predict("versioned", X), keras_scores, atol=TOL, rtol=0)
    assert c.params("versioned")["version"] == "2"
    assert c.params("versioned", version=1)["manifest"]["backend"] == "torch"
    # a tag follows the version it was set on, not latest
    c.tag("versioned", "prod", 1)
    np.testing.assert_allclose(c.infer("versioned", X, version="prod"), torch_scores, atol=TOL, rtol=0)
    # replacing version 1 in place: the served scores change at once (no stale model cache)
    replaced = c.upload(served.bundles["higgs-keras"], name="versioned", version=1)
    assert replaced["version"] == "1"
    np.testing.assert_allclose(c.infer("versioned", X, version=1), keras_scores, atol=TOL, rtol=0)
    # deleting one version keeps the others
    c.delete("versioned", version=2)
    assert c.metadata("versioned")["versions"] == ["1"]
    c.delete("versioned")
    with pytest.raises(ServiceError) as err:
        c.infer("versioned", X)
    assert err.value.status == 404


def test_auth_refusals(served, monkeypatch):
    url = served.server.url
    X = served.X["higgs-torch"][:1]
    infer = json.dumps({"inputs": [{"name": "features", "shape": [1, X.shape[1]], "datatype": "FP32",
                                    "data": X.ravel().tolist()}]}).encode()
    routes = [("GET", "/models", None), ("GET", "/v2", None), ("GET", "/v2/models/higgs-torch", None),
              ("POST", "/v2/models/higgs-torch/infer", infer), ("POST", "/json", b'{"model":"higgs-torch"}'),
              ("POST", "/raw/higgs-torch", b'{"events":{}}'), ("POST", "/upload", b"x"),
              ("DELETE", "/delete/higgs-torch", None), ("GET", "/params/higgs-torch", None),
              ("GET", "/metrics", None), ("POST", "/echo", b"{}"), ("GET", "/openapi.json", None)]
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token-000"}, {"Authorization": "token wrong-token-000"},
                        {"Authorization": "Basic YWxpY2U6cGFzcw=="}, {"Authorization": "Bearer"}):
            status, payload = http_call(url, method, path, body, headers=headers)
            assert status == 401, (method, path, headers, status, payload)
            assert payload.get("error"), payload
    # the model survived all that
    assert served.client().infer("higgs-torch", X).shape == (1,)
    # both header schemes work, and the token comes from the environment
    status, who = http_call(url, "GET", "/whoami", headers={"Authorization": f"token {TOKENS['bob']}"})
    assert status == 200 and who["name"] == "bob"
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKENS["bob"])
    hub = Client(url)
    assert hub.scheme == "token" and hub.request("GET", "/whoami")["name"] == "bob"
    monkeypatch.setenv("MLAAS4HEP_TOKEN", TOKENS["alice"])
    assert Client(url).request("GET", "/whoami")["name"] == "alice"
    with pytest.raises(ServiceError) as err:
        Client(url, token="not-a-token-at-all").models()
    assert err.value.status == 401 and "token" in err.value.error


def test_other_users_cannot_touch_an_unshared_model(served):
    alice, bob = served.client("alice"), served.client("bob")
    X, expected = served.X["higgs-torch"], served.expected["higgs-torch"]
    alice.upload(served.bundles["higgs-torch"], name="private")
    assert all(m["ref"] != "alice:private" for m in bob.models())
    events = {b: served.events["higgs-torch"][b][:3] for b in served.refs["higgs-torch"].input_branches()}
    attempts = [lambda r: bob.infer(r, X[:2]), lambda r: bob.predict(r, X[:2], keys=served.refs["higgs-torch"].features),
                lambda r: bob.predict_events(r, events), lambda r: bob.params(r), lambda r: bob.metadata(r),
                lambda r: bob.delete(r), lambda r: bob.share(r)]
    for ref in ("alice:private", "alice/private", "private"):
        for attempt in attempts:
            with pytest.raises(ServiceError) as err:
                attempt(ref)
            assert err.value.status in (403, 404), (ref, err.value)
    # bob's own model of the same name is his, not alice's
    bob.upload(served.bundles["higgs-keras"], name="private")
    np.testing.assert_allclose(bob.infer("private", X), served.expected["higgs-keras"], atol=TOL, rtol=0)
    np.testing.assert_allclose(alice.infer("private", X), expected, atol=TOL, rtol=0)
    # once shared, bob may read alice's model as owner:name, but still not change it
    assert alice.share("private")["shared"] is True
    for ref in ("alice:private", "alice/private"):
        np.testing.assert_allclose(bob.infer(ref, X), expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(bob.predict(ref, X), expected, atol=TOL, rtol=0)
    assert bob.params("alice:private")["owner"] == "alice"
    assert "alice:private" in {m["ref"] for m in bob.models()}
    for attempt in (lambda: bob.delete("alice:private"), lambda: bob.share("alice:private", False),
                    lambda: bob.tag("alice:private", "prod", 1)):
        with pytest.raises(ServiceError) as err:
            attempt()
        assert err.value.status == 403
    # and bob cannot overwrite it by uploading: an upload always lands in the uploader's own space
    assert bob.upload(served.bundles["higgs-keras"], name="private")["ref"] == "bob:private"
    np.testing.assert_allclose(bob.infer("alice:private", X), expected, atol=TOL, rtol=0)
    alice.share("private", False)
    with pytest.raises(ServiceError) as err:
        bob.infer("alice:private", X)
    assert err.value.status in (403, 404)
    alice.delete("private")
    bob.delete("private")


def test_upload_shared_from_the_start(served):
    alice, bob = served.client("alice"), served.client("bob")
    answer = alice.upload(served.bundles["tth-torch"], name="public-tth", shared=True)
    assert answer["shared"] is True
    key = "tth-torch"
    scores = bob.predict_events("alice:public-tth", served.events[key])
    np.testing.assert_allclose(scores, served.expected[key], atol=TOL, rtol=0)
    alice.delete("public-tth")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def _attacks(bundle: Path, escape: Path) -> dict[str, bytes]:
    """Malicious or broken uploads, each of which must be refused with a 4xx."""
    manifest = (bundle / "manifest.json").read_bytes()
    real = [_file(f"bundle/{p.relative_to(bundle)}", p.read_bytes()) for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.stat().st_size < (1 << 20)]
    oversize = tarfile.TarInfo("bundle/huge.bin")
    oversize.size = 3 << 30  # claims 3 GiB; the data never comes
    header = oversize.tobuf(tarfile.GNU_FORMAT)
    many = _tar([_file(f"bundle/f{i}", b"") for i in range(10_001)])
    bad_manifest = json.loads(manifest)
    bad_manifest["inference"] = {"format": "onnx", "path": "../../../../etc/passwd"}
    return {
        "absolute path": _tar([_file(str(escape / "abs.txt"), b"owned")] + real),
        "dot-dot": _tar(real + [_file(f"bundle/../../../../../..{escape}/dotdot.txt", b"owned")]),
        "dot-dot only": _tar([_file("../escape.txt", b"owned")]),
        "symlink": _tar(real + [_special("bundle/inference/model.onnx.lnk", tarfile.SYMTYPE, "/etc/passwd")]),
        "symlink dir": _tar([_special("bundle", tarfile.SYMTYPE, str(escape))] + real),
        "hardlink": _tar(real + [_special("bundle/passwd", tarfile.LNKTYPE, "/etc/passwd")]),
        "char device": _tar(real + [_special("bundle/null", tarfile.CHRTYPE)]),
        "block device": _tar(real + [_special("bundle/disk", tarfile.BLKTYPE)]),
        "fifo": _tar(real + [_special("bundle/pipe", tarfile.FIFOTYPE)]),
        "too many members": many,
        "oversize content": _gzip(header),
        "oversize upload": os.urandom(MAX_UPLOAD + 1024),
        "not a tarball": b"this is not a tarball at all" * 100,
        "truncated": _tar(real)[:5000],
        "empty": b"",
        "no manifest": _tar([_file("bundle/specs.json", b"{}")]),
        "manifest escapes": _tar(_swap_manifest(real, bad_manifest)),
        "garbage manifest": _tar([_file("bundle/manifest.json", b"[1, 2")]),
    }


def _swap_manifest(real, manifest: dict):
    out = []
    for info, data in real:
        if info.name == "bundle/manifest.json":
            info, data = _file(info.name, json.dumps(manifest).encode())
        out.append((info, data))
    return out


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_every_attack_tarball_is_refused(served, tmp_path):
    alice = served.client()
    escape = tmp_path / f"escape-{uuid.uuid4().hex}"
    escape.mkdir()
    attacks = _attacks(served.bundles["higgs-torch"], escape)
    before = {m["ref"]: m["versions"] for m in alice.models()}
    for what, body in attacks.items():
        for name in (None, "attacked"):
            query = "?name=attacked" if name else ""
            status, payload = http_call(served.server.url, "POST", f"/upload{query}", body, TOKENS["alice"],
                                        headers={"Content-Type": "application/gzip"})
            assert_refused(status, payload)
            if what in ("oversize upload",):
                assert status == 413, payload
        assert served.server.alive(), what
    # nothing escaped the store, nothing was activated, and the service still serves
    assert not any(escape.iterdir()), list(escape.iterdir())
    assert not Path("/escape.txt").exists()
    assert {m["ref"]: m["versions"] for m in alice.models()} == before
    assert alice.health() == {"live": True, "ready": True}
    np.testing.assert_allclose(alice.infer("higgs-torch", served.X["higgs-torch"]), served.expected["higgs-torch"],
                               atol=TOL, rtol=0)
    staging = list((served.server.store / ".staging").iterdir())
    assert staging == [], staging  # no upload left behind


def test_multipart_upload_as_the_original_tfaas(served):
    """The original TFaaS client posted a multipart form; the same form works here."""
    data = tar_directory(served.bundles["higgs-torch"])
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nfrom-form\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="b.tar.gz"\r\n'
             f"Content-Type: application/gzip\r\n\r\n".encode() + data + b"\r\n", f"--{boundary}--\r\n".encode()]
    status, answer = http_call(served.server.url, "POST", "/upload", b"".join(parts), TOKENS["alice"],
                               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201, answer
    assert answer["ref"] == "alice:from-form"
    c = served.client()
    np.testing.assert_allclose(c.infer("from-form", served.X["higgs-torch"]), served.expected["higgs-torch"],
                               atol=TOL, rtol=0)
    c.delete("from-form")


def _post(served, path: str, body, token=TOKENS["alice"]):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http_call(served.server.url, "POST", path, data, token)


def test_bad_requests_are_4xx_with_an_error(served):
    X = served.X["higgs-torch"]
    F = X.shape[1]
    row = X[0].tolist()

    def infer(shape, data, datatype="FP32", name="features"):
        return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}

    nan_row = ", ".join(["NaN"] + [str(v) for v in row[1:]])
    cases = [
        ("/v2/models/higgs-torch/infer", infer([1, F - 1], row[:-1])),                # wrong feature count
        ("/v2/models/higgs-torch/infer", infer([2, F], row)),                          # data shorter than shape
        ("/v2/models/higgs-torch/infer", infer([1, F], row + [0.0])),                  # data longer than shape
        ("/v2/models/higgs-torch/infer", infer([F], row)),                             # rank 1
        ("/v2/models/higgs-torch/infer", infer([1, F], row, datatype="BYTES")),
        ("/v2/models/higgs-torch/infer", infer([1, F], [str(v) for v in row])),        # strings for numbers
        ("/v2/models/higgs-torch/infer", infer([1, F], [1e39] + row[1:])),              # beyond float32
        ("/v2/models/higgs-torch/infer", infer([1, F], row, name="other")),
        ("/v2/models/higgs-torch/infer", {"inputs": []}),
        ("/v2/models/higgs-torch/infer", b'{"inputs": [{"name": "features", "shape": [1, %d], "datatype": "FP32", '
                                         b'"data": [%s]}]}' % (F, nan_row.encode())),  # NaN
        ("/v2/models/higgs-torch/infer", b'{"inputs": [{"name": "features", "shape": [1, %d], "datatype": "FP32", '
                                         b'"data": [Infinity%s]}]}' % (F, (", 0.0" * (F - 1)).encode())),
        ("/json", b'{"model": "higgs-torch", "values": [%s]}' % nan_row.encode()),
        ("/json", {"model": "higgs-torch", "values": row[:-1]}),                         # too few values
        ("/json", {"model": "higgs-torch", "keys": ["nope"] * F, "values": row}),          # unknown keys
        ("/json", {"model": "higgs-torch", "keys": served.refs["higgs-torch"].features[:-1], "values": row[:-1]}),
        ("/json", {"model": "higgs-torch", "values": [row, row[:-1]]}),                  # ragged
        ("/json", {"model": "higgs-torch", "values": [True] * F}),
        ("/json", {"values": row}),                                                      # no model
        ("/json", [row]),                                                                # not an object
        ("/json", b"{not json"),
        ("/json", b""),
        ("/json", b"[" * 100 + b"]" * 100),                                             # deep nesting
        ("/raw/higgs-torch", {"events": {"PRI_met": [1.0, 2.0]}}),                       # missing branches
        ("/raw/higgs-torch", {"events": {b: [1.0] for b in served.refs["higgs-torch"].input_branches()}
                              | {"PRI_met": [1.0, 2.0]}}),                               # unequal lengths
        ("/raw/higgs-torch", {"events": {b: [float("nan")] for b in served.refs["higgs-torch"].input_branches()}}),
        ("/raw/tth-torch", {"events": {"Jet_pt": [[1.0, 2.0], 3.0]}}),                   # mixed list / value
        ("/raw/higgs-torch", {"events": "everything"}),
    ]
    for path, body in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if isinstance(body, dict) and "events" in body and isinstance(body["events"], dict):
            data = json.dumps(body).encode()  # json.dumps writes NaN: the service must refuse it
        status, payload = http_call(served.server.url, "POST", path, data, TOKENS["alice"])
        assert_refused(status, payload)
    # unknown models and versions: 404
    for path in ("/v2/models/no-such-model/infer", "/v2/models/higgs-torch/versions/99/infer",
                 "/v2/models/bob:no-such/infer"):
        status, payload = _post(served, path, infer([1, F], row))
        assert_refused(status, payload, (404,))
    status, payload = _post(served, "/json", {"model": "no-such-model", "values": row})
    assert_refused(status, payload, (404,))
    for path in ("/v2/models/no-such-model", "/params/no-such-model", "/v2/models/higgs-torch/versions/7"):
        status, payload = http_call(served.server.url, "GET", path, token=TOKENS["alice"])
        assert_refused(status, payload, (404,))
    status, payload = http_call(served.server.url, "DELETE", "/delete/no-such-model", token=TOKENS["alice"])
    assert_refused(status, payload, (404,))
    # a body over the JSON cap (1 MiB by default)
    big = {"model": "higgs-torch", "values": [row] * 20_000}
    status, payload = _post(served, "/json", big)
    assert_refused(status, payload, (413,))
    # and the client raises with the server's message
    with pytest.raises(ServiceError) as err:
        served.client().infer("higgs-torch", X[:, :-1])
    assert err.value.status == 400 and "[N, 30]" in err.value.error
    assert served.server.alive()


def test_echo_metrics_and_server_metadata(served):
    c = served.client()
    body = {"keys": ["a"], "values": [[1.5, 2]], "nested": {"x": None}}
    assert c.echo(body) == body
    assert c.server()["name"] == "mlaas4hep-lab"
    text = c.request("GET", "/metrics")
    assert isinstance(text, str) and "# TYPE" in text
    assert c.model_ready("higgs-torch") and not c.model_ready("no-such-model")


def test_cli_push_models_and_predict_remote(served, tmp_path, capsys):
    from mlaas4hep_lab.cli import main

    url, token = served.server.url, TOKENS["bob"]
    bundle = served.bundles["tth-torch"]
    assert main(["push", str(bundle), "--url", url, "--token", token, "--name", "cli-tth"]) == 0
    n = len(served.refs["tth-torch"].features)
    assert f"uploaded bob:cli-tth version 1 (torch model, onnx runtime, {n} features)" in capsys.readouterr().out
    assert main(["models", "--url", url, "--token", token]) == 0
    assert "bob:cli-tth" in capsys.readouterr().out
    data = bundle.parent.parent / "data"
    files = sorted(str(p) for p in data.glob("*.root"))
    out = tmp_path / "scores.csv"
    # small batches, so that several requests (and the 413 split) are exercised
    assert main(["predict-remote", "cli-tth", "--url", url, "--token", token, "--files", *files,
                 "--out", str(out), "--max-events", "600", "--batch-size", "700"]) == 0
    assert "scored 1,200 events" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1200 and list(rows[0])[:2] == ["file", "entry"]
    b = served.refs["tth-torch"]
    assert set(b.specs.identifier) <= set(rows[0])
    expected, keep = [], []
    for f in files:
        arrays = uproot.open(f)[b.specs.tree].arrays(b.input_branches(), entry_stop=600)
        s, k = b.predict_arrays(arrays)
        expected.append(s)
        keep.append(k)
    np.testing.assert_allclose([float(r["score"]) for r in rows], np.concatenate(expected), atol=TOL, rtol=0)
    np.testing.assert_array_equal([r["passes_cuts"] == "1" for r in rows], np.concatenate(keep))
    # a wrong token: exit code 2 and the server's message, no traceback
    assert main(["models", "--url", url, "--token", "wrong-token-000"]) == 2
    assert "401" in capsys.readouterr().err


def test_restart_keeps_models_and_the_tf_runtime_serves_them(served, serving_tokens, tmp_path):
    """A fresh server over another store: upload, stop, start again (TF SavedModel runtime this time)."""
    key = "higgs-keras"
    X, expected = served.X[key], served.expected[key]
    server = ServerProcess(tmp_path / "store", serving_tokens, tmp_path / "server.log").start()
    try:
        c = Client(server.url, token=TOKENS["alice"])
        c.upload(served.bundles[key], name="kept")
        c.upload(served.bundles[key], name="kept")
        c.upload(served.bundles["higgs-torch"], name="shared-one", shared=True)
        assert c.metadata("kept")["platform"] == "onnxruntime_onnx"
        np.testing.assert_allclose(c.infer("kept", X), expected, atol=TOL, rtol=0)
    finally:
        server.stop()
    assert not server.alive()
    server = ServerProcess(tmp_path / "store", serving_tokens, tmp_path / "server.log", "--runtime", "tf").start()
    try:
        c = Client(server.url, token=TOKENS["alice"])
        meta = c.metadata("kept")
        assert meta["versions"] == ["1", "2"] and meta["tags"]["latest"] == "2"
        np.testing.assert_allclose(c.infer("kept", X), expected, atol=TOL, rtol=0)
        maps = Path(f"/proc/{server.proc.pid}/maps")
        if maps.exists():  # the server really runs TensorFlow now (it never imports it for ONNX models)
            assert "tensorflow" in maps.read_text()
        np.testing.assert_allclose(c.infer("kept", X, version=1), expected, atol=TOL, rtol=0)
        scores = c.predict_events("kept", served.events[key])
        np.testing.assert_allclose(scores, expected, atol=TOL, rtol=0)
        # sharing survived the restart too; the torch bundle has no SavedModel: a clear refusal, not a 500
        bob = Client(server.url, token=TOKENS["bob"])
        assert "alice:shared-one" in {m["ref"] for m in bob.models()}
        with pytest.raises(ServiceError) as err:
            bob.infer("alice:shared-one", X)
        assert 400 <= err.value.status < 500
        platform = c.metadata("kept")["platform"]
    finally:
        server.stop()
    assert platform == "tensorflow_savedmodel"  # the runtime serving now, not the one at upload time


def test_the_server_logged_no_unexpected_error(served):
    """Run last in this file: nothing above made the service fail internally (no 5xx, no traceback)."""
    text = served.client().request("GET", "/metrics")
    five = [line for line in text.splitlines() if not line.startswith("#") and 'status="5' in line
            and not line.rstrip().endswith(" 0") and not line.rstrip().endswith(" 0.0")]
    assert five == [], five
    assert "Traceback" not in served.server.log_text(), served.server.log_text()[-3000:]
