"""Triton's management routes on a real ``mlaas4hep serve`` (127.0.0.1), spoken to by tritonclient.http:
model configuration, inference statistics, the model repository (index, load, unload, readiness) and the
log settings; raw HTTP for what tritonclient does not send (``{"ready": true}``, bad bodies, forms).

The models are small hand-built bundles (an ONNX logistic regression, a soft-max over three classes) whose
scores numpy computes, so every answer is checked against a number computed here, not a recorded one.
Users: alice (owns the models), bob (owns one model he shares, one he keeps) and admin (named by
``MLAAS4HEP_SERVE_ADMINS``; here ``--admin``), who alone may change the log settings.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")  # Triton's own client (the test extra)
from google.protobuf import json_format  # noqa: E402
from serving_support import ServerProcess, http_call  # noqa: E402
from test_serving_unit import B1, B2, FEATURES, W1, W2, make_bundle, scores, tarball  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from mlaas4hep_lab.serving.client import Client  # noqa: E402

pytestmark = [pytest.mark.serving]

TOKENS = {"alice": "alice-triton-0123", "bob": "bob-triton-4567", "admin": "admin-triton-8901"}
CLASSES = ["b", "c", "l"]
W3 = np.array([[0.5, -1.0, 0.2], [1.0, 0.3, -0.7], [-0.4, 0.8, 0.1], [0.2, 0.2, -0.3]], np.float32)
B3 = np.array([0.1, -0.2, 0.05], np.float32)
MAX_BATCH, DELAY_MS = 64, 2.0


def onnx_softmax(w: np.ndarray, b: np.ndarray) -> bytes:
    """ONNX: features float[N, F] -> score float[N, K] = softmax(features @ w + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["zb"]),
             helper.make_node("Softmax", ["zb"], ["score"], axis=1)]
    graph = helper.make_graph(
        nodes, "softmax", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def softmax_scores(X) -> np.ndarray:
    z = np.asarray(X, np.float32) @ W3 + B3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Served:
    server: ServerProcess
    base: Path

    def triton(self):
        return httpclient.InferenceServerClient(self.server.url.split("//", 1)[1], concurrency=4)

    def call(self, method: str, path: str, body=None, user: str = "alice", **kw):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return http_call(self.server.url, method, path, data, token=TOKENS[user], **kw)


def auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("triton-routes")
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    multi = {"task": {"kind": "multiclass", "classes": CLASSES}, "outputs": [f"p_{c}" for c in CLASSES]}
    server = ServerProcess(base / "store", tokens, base / "server.log", "--max-batch", str(MAX_BATCH),
                           "--max-delay-ms", str(DELAY_MS), "--admin", "admin").start()
    try:
        alice, bob = Client(server.url, token=TOKENS["alice"]), Client(server.url, token=TOKENS["bob"])
        for version, (w, b) in (("1", (W1, B1)), ("2", (W2, B2))):
            path = base / f"higgs-{version}.tar.gz"
            path.write_bytes(tarball(make_bundle(base / f"higgs-{version}", w=w, b=b)))
            alice.upload(path, name="higgs", version=version)
        path = base / "multi.tar.gz"
        path.write_bytes(tarball(make_bundle(base / "multi", manifest_extra=multi,
                                             onnx_bytes=onnx_softmax(W3, B3))))
        alice.upload(path, name="multi")
        for name, shared in (("secret", False), ("common", True)):
            path = base / f"{name}.tar.gz"
            path.write_bytes(tarball(make_bundle(base / name)))
            bob.upload(path, name=name, shared=shared)
        yield Served(server, base)
    finally:
        server.stop()


def _infer_body(X: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}


def _features(X: np.ndarray, binary: bool = True):
    tensor = httpclient.InferInput("features", list(X.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(X, np.float32), binary_data=binary)
    return tensor


# ------------------------------------------------------------------------------------------ configuration

def test_model_config_in_triton_form(served):
    triton = served.triton()
    try:
        config = triton.get_model_config("higgs", headers=auth())
        config_v1 = triton.get_model_config("higgs", "1", headers=auth())
        multi = triton.get_model_config("multi", headers=auth())
        meta = triton.get_model_metadata("multi", headers=auth())
    finally:
        triton.close()
    assert config["name"] == "higgs" and config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [len(FEATURES)]}]
    # one score per row: dims [1] reshaped to [], as Triton writes a batched tensor of one value
    assert config["output"] == [{"name": "score", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == int(DELAY_MS * 1000)
    assert json.loads(config["parameters"]["features"]["string_value"]) == FEATURES
    assert config_v1["parameters"]["version"]["string_value"] == "1"
    assert config["parameters"]["version"]["string_value"] == "2"  # latest
    # a multi-class model: the [N, 3] tensor, and each column it answers by name
    assert multi["output"][0] == {"name": meta["outputs"][0]["name"], "data_type": "TYPE_FP32", "dims": [3]}
    assert [o["name"] for o in multi["output"][1:]] == [f"p_{c}" for c in CLASSES]
    for out in meta["outputs"]:  # the configuration's dims are the metadata's shape without the batch axis
        dims = next(o["dims"] for o in multi["output"] if o["name"] == out["name"])
        assert dims == (out["shape"][1:] or [1])
    # the gRPC service sends these dicts as ModelConfig messages: field names and enum values must parse
    message = json_format.ParseDict(multi, model_config_pb2.ModelConfig())
    assert message.max_batch_size == MAX_BATCH and message.input[0].dims == [len(FEATURES)]
    assert message.dynamic_batching.max_queue_delay_microseconds == int(DELAY_MS * 1000)


def test_config_route_is_not_taken_for_metadata(served):
    """``{model:path}`` is greedy: ``/v2/models/higgs/config`` used to answer 404 "model 'higgs/config'"."""
    for path in ("/v2/models/higgs/config", "/v2/models/alice:higgs/config", "/v2/models/alice/higgs/config",
                 "/v2/models/higgs/versions/latest/config"):
        status, answer = served.call("GET", path)
        assert status == 200 and answer["max_batch_size"] == MAX_BATCH, (path, answer)
    status, answer = served.call("GET", "/v2/models/higgs")
    assert status == 200 and answer["versions"] == ["1", "2"]  # metadata still answers


# ------------------------------------------------------------------------------------------ statistics

def _stat(stats: dict, name: str, version: str) -> dict:
    return next(s for s in stats["model_stats"] if s["name"] == name and s["version"] == version)


def _check_sums(stat: dict) -> None:
    """What Triton's definitions imply about one version's statistics, whatever ran before."""
    infer = stat["inference_stats"]
    assert infer["queue"]["count"] == infer["compute_infer"]["count"] == infer["compute_input"]["count"]
    assert infer["compute_infer"]["count"] == infer["compute_output"]["count"]
    batches = stat["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == stat["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == stat["inference_count"]
    for key in ("success", "compute_infer"):  # queue may be 0 (an idle model, a named request: no queue)
        assert (infer[key]["ns"] > 0) == (infer[key]["count"] > 0)


def test_statistics_count_every_inference_whatever_the_route(served):
    rng = np.random.default_rng(3)
    triton = served.triton()
    try:
        before = triton.get_inference_statistics("higgs", headers=auth())
        start_1, start_2 = _stat(before, "higgs", "1"), _stat(before, "higgs", "2")
        rows = 0
        # tritonclient, binary tensors both ways
        X = rng.uniform(0, 1, (7, 4)).astype(np.float32)
        result = triton.infer("higgs", [_features(X)], headers=auth(),
                              outputs=[httpclient.InferRequestedOutput("score", binary_data=True)])
        np.testing.assert_allclose(result.as_numpy("score"), scores(X, W2, B2), rtol=1e-5, atol=1e-6)
        rows += 7
        # OIP JSON, TFaaS /json, raw events
        X = rng.uniform(0, 1, (5, 4)).astype(np.float32)
        status, answer = served.call("POST", "/v2/models/higgs/infer", _infer_body(X))
        assert status == 200, answer
        rows += 5
        status, answer = served.call("POST", "/json", {"model": "higgs", "keys": FEATURES, "values": X.tolist()})
        assert status == 200 and np.allclose(answer, scores(X, W2, B2), atol=1e-6), answer
        rows += 5
        events = {"a": [0.5, 1.0, 1.5], "b": [2.0, 3.0, 4.0], "jet_pt": [[50.0, 40.0], [60.0], []]}
        status, answer = served.call("POST", "/v2/models/higgs/events", {"events": events})
        assert status == 200 and len(answer["scores"]) == 3, answer
        rows += 3
        # concurrent requests, which the dynamic batcher may merge into fewer passes
        X = rng.uniform(0, 1, (4, 4)).astype(np.float32)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(
            served.call("POST", "/v2/models/higgs/infer", _infer_body(X))[0])) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [200] * 12
        rows += 48
        # refused before the model (wrong width): no inference, not counted
        status, _ = served.call("POST", "/v2/models/higgs/infer", _infer_body(X[:, :3]))
        assert status == 400
        # version 1, explicitly
        result = triton.infer("higgs", [_features(X, binary=False)], model_version="1", headers=auth())
        np.testing.assert_allclose(result.as_numpy("score"), scores(X, W1, B1), rtol=1e-5, atol=1e-6)
        after = triton.get_inference_statistics("higgs", headers=auth())
        only_v1 = triton.get_inference_statistics("higgs", "1", headers=auth())
        everything = triton.get_inference_statistics(headers=auth())
    finally:
        triton.close()
    end_2, end_1 = _stat(after, "higgs", "2"), _stat(after, "higgs", "1")
    requests = 1 + 1 + 1 + 1 + 12
    success = end_2["inference_stats"]["success"]["count"] - start_2["inference_stats"]["success"]["count"]
    assert success == requests
    assert end_2["inference_count"] - start_2["inference_count"] == rows
    assert end_2["inference_stats"]["fail"] == start_2["inference_stats"]["fail"]
    passes = end_2["execution_count"] - start_2["execution_count"]
    assert 1 <= passes <= requests
    assert end_2["last_inference"] >= start_2["last_inference"] and end_2["last_inference"] > 1.6e12
    assert end_1["inference_count"] - start_1["inference_count"] == 4
    assert only_v1["model_stats"] == [end_1]
    for stat in (end_1, end_2):
        _check_sums(stat)
    # every model alice can see and used; bob's unshared model is not among them
    names = {(s["name"], s["version"]) for s in everything["model_stats"]}
    assert {("higgs", "1"), ("higgs", "2")} <= names and not any(n.startswith("bob:secret") for n, _ in names)
    # the gRPC service sends these dicts as ModelStatistics messages
    message = json_format.ParseDict(after, service_pb2.ModelStatisticsResponse())
    assert {m.version for m in message.model_stats} == {"1", "2"}


def test_statistics_of_a_shared_model_and_of_unused_versions(served):
    status, answer = served.call("GET", "/v2/models/bob:common/stats", user="alice")
    assert status == 200 and answer["model_stats"][0]["name"] == "bob:common", answer
    status, answer = served.call("GET", "/v2/models/multi/versions/1/stats")
    assert status == 200, answer
    stat = answer["model_stats"][0]
    _check_sums(stat)
    X = np.full((2, 4), 0.5, np.float32)
    status, answer = served.call("POST", "/v2/models/multi/infer", _infer_body(X))
    assert status == 200
    np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (2, 3)), softmax_scores(X), atol=1e-6)
    _, later = served.call("GET", "/v2/models/multi/versions/1/stats")
    assert later["model_stats"][0]["inference_count"] == stat["inference_count"] + 2


# ------------------------------------------------------------------------------------------ repository

def _loaded_gauge(served) -> int:
    status, text = served.call("GET", "/metrics")
    assert status == 200
    return int(re.search(r"^mlaas4hep_models_loaded (\d+)$", text, re.M).group(1))


def test_repository_index_load_unload_and_readiness(served):
    triton = served.triton()
    try:
        index = triton.get_model_repository_index(headers=auth())
        entries = {(e["name"], e["version"]): e for e in index}
        assert {("higgs", "1"), ("higgs", "2"), ("multi", "1"), ("bob:common", "1")} <= set(entries)
        assert not any(name.startswith("bob:secret") or name == "secret" for name, _ in entries)
        assert entries[("higgs", "2")]["state"] == "READY"
        loaded = _loaded_gauge(served)
        triton.unload_model("higgs", headers=auth())
        assert not triton.is_model_ready("higgs", headers=auth())
        assert not triton.is_model_ready("higgs", "1", headers=auth())
        status, answer = served.call("GET", "/v2/models/higgs/ready")
        assert status == 400 and "unloaded" in answer["error"]  # not ready: 400, as Triton answers
        assert _loaded_gauge(served) < loaded  # really dropped from memory
        index = {(e["name"], e["version"]): e for e in triton.get_model_repository_index(headers=auth())}
        assert index[("higgs", "2")]["state"] == "UNAVAILABLE" and index[("higgs", "2")]["reason"] == "unloaded"
        status, ready_only = served.call("POST", "/v2/repository/index", {"ready": True})
        assert status == 200 and all(e["state"] == "READY" for e in ready_only)
        assert ("higgs", "2") not in {(e["name"], e["version"]) for e in ready_only}
        # the files stay: the next request loads it again, and answers as before
        X = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
        result = triton.infer("higgs", [_features(X)], headers=auth())
        np.testing.assert_allclose(result.as_numpy("score"), scores(X, W2, B2), rtol=1e-5, atol=1e-6)
        assert triton.is_model_ready("higgs", headers=auth())
        triton.unload_model("higgs", headers=auth())
        triton.load_model("higgs", headers=auth())  # loads the tagged versions
        assert triton.is_model_ready("higgs", headers=auth())
        assert not triton.is_model_ready("higgs", "1", headers=auth())  # untagged: still unloaded
        index = {(e["name"], e["version"]): e["state"] for e in triton.get_model_repository_index(headers=auth())}
        assert index[("higgs", "2")] == "READY" and index[("higgs", "1")] == "UNAVAILABLE"
        # a model shared with alice: she may load it, not unload it
        triton.load_model("bob:common", headers=auth("alice"))
        with pytest.raises(InferenceServerException) as err:  # only the owner unloads
            triton.unload_model("bob:common", headers=auth("alice"))
        assert err.value.status() == "403"
        with pytest.raises(InferenceServerException) as err:  # Triton's config/file overrides: upload instead
            triton.load_model("higgs", headers=auth(), config=json.dumps({"name": "higgs"}))
        assert err.value.status() == "400" and "upload" in err.value.message()
    finally:
        triton.close()
    for body in (b"[1]", b"{\"ready\": \"yes\"}", b"{\"ready\": true, \"x\": 1}", b"{not json"):
        status, answer = served.call("POST", "/v2/repository/index", body)
        assert status in (400, 422) and "error" in answer, (body, answer)
    status, answer = served.call("POST", "/v2/repository/models/higgs/unload", {"parameters": {"x": 1}})
    assert status == 400 and "unload_dependents" in answer["error"]
    status, answer = served.call("POST", "/v2/repository/models/higgs/unload",
                                 {"parameters": {"unload_dependents": False}})
    assert status == 200 and answer["versions"] == ["2"]


# ------------------------------------------------------------------------------------------ log settings

def test_log_settings_read_by_users_changed_by_admins(served):
    triton = served.triton()
    try:
        settings = triton.get_log_settings(headers=auth("bob"))
        assert set(settings) == {"log_file", "log_info", "log_warning", "log_error", "log_verbose_level",
                                 "log_format"}
        with pytest.raises(InferenceServerException) as err:
            triton.update_log_settings({"log_info": True}, headers=auth("bob"))
        assert err.value.status() == "403"
        assert triton.get_log_settings(headers=auth("alice")) == settings  # nothing changed
        new = triton.update_log_settings({"log_info": True, "log_format": "ISO8601"}, headers=auth("admin"))
        assert new == {**settings, "log_info": True, "log_format": "ISO8601"}
        assert triton.get_log_settings(headers=auth("bob")) == new
        # the service logs at INFO now, with ISO 8601 timestamps: the change itself is the first such line
        line = next(ln for ln in served.server.log_text().splitlines() if "log settings changed by admin" in ln)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line), line
        back = triton.update_log_settings({"log_info": settings["log_info"], "log_format": "default"},
                                          headers=auth("admin"))
        assert back == settings
    finally:
        triton.close()
    refusals = [({"log_info": "yes"}, 422), ({"log_verbose_level": -1}, 422), ({"log_level": 2}, 422),
                ({"log_warning": False, "log_info": True}, 400), ({"log_format": "json"}, 400),
                ({"log_file": "/tmp/x.log"}, 400)]
    for body, expected in refusals:
        status, answer = served.call("POST", "/v2/logging", body, user="admin")
        assert status == expected and "error" in answer, (body, answer)
    assert served.call("GET", "/v2/logging", user="admin")[1] == settings


# ------------------------------------------------------------------------------------------ isolation

def test_other_users_models_and_bad_versions_are_404_on_every_route(served):
    triton = served.triton()
    try:
        calls = {"config": lambda m, **k: triton.get_model_config(m, **k),
                 "config version": lambda m, **k: triton.get_model_config(m, "1", **k),
                 "stats": lambda m, **k: triton.get_inference_statistics(m, **k),
                 "stats version": lambda m, **k: triton.get_inference_statistics(m, "1", **k),
                 "load": lambda m, **k: triton.load_model(m, **k),
                 "unload": lambda m, **k: triton.unload_model(m, **k),
                 "metadata": lambda m, **k: triton.get_model_metadata(m, **k)}
        for model in ("secret", "bob:secret", "alice:nothing"):
            for what, call in calls.items():
                with pytest.raises(InferenceServerException) as err:
                    call(model, headers=auth("alice"))
                assert err.value.status() == "404", (model, what, err.value)
                assert "not found" in err.value.message()
        assert not triton.is_model_ready("bob:secret", headers=auth("alice"))
        for what, call in (("config", lambda: triton.get_model_config("higgs", "9", headers=auth())),
                           ("stats", lambda: triton.get_inference_statistics("higgs", "9", headers=auth()))):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert err.value.status() == "404" and "no version or tag '9'" in err.value.message(), what
    finally:
        triton.close()
    assert served.call("GET", "/v2/models/higgs/versions/9/ready")[0] == 404
    for path in ("/v2/models/stats", "/v2/models/higgs/config", "/v2/logging"):
        assert http_call(served.server.url, "GET", path, token=None)[0] == 401
    assert http_call(served.server.url, "POST", "/v2/repository/index", b"", token=None)[0] == 401
    # bob's own model still serves him, untouched by alice's attempts
    status, answer = served.call("POST", "/v2/models/secret/infer", _infer_body(np.ones((1, 4), np.float32)),
                                 user="bob")
    assert status == 200, answer


def test_server_metadata_names_the_extensions(served):
    triton = served.triton()
    try:
        meta = triton.get_server_metadata(headers=auth())
    finally:
        triton.close()
    assert {"model_configuration", "statistics", "model_repository", "logging"} <= set(meta["extensions"])


# ------------------------------------------------------------------------------------------ objects layout

@pytest.mark.slow
def test_objects_layout_config_lists_the_named_inputs_and_stats_count_them(served, tmp_path_factory):
    """An objects-layout model (the Deep Sets template, one epoch on the ttH example): its configuration
    lists ``features`` and the named inputs, all optional; a named request is counted like any other."""
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.data.datasets import tth
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    base = tmp_path_factory.mktemp("triton-objects")
    tth(base / "data", n_events=1500)
    params = json.loads((base / "data" / "params.json").read_text())
    params.update(layout="objects", chunk_size=1000, epochs=1)
    inputs = load_inputs(base / "data" / "files.txt", base / "data" / "labels.txt", params,
                         base / "data" / "preproc.json")
    train(inputs, ensure_specs(inputs, progress=False), template_path("torch_deepsets"), base / "out",
          progress=False, plots=False)
    Client(served.server.url, token=TOKENS["alice"]).upload(base / "out" / "bundle", name="sets")
    bundle = Bundle.load(base / "out" / "bundle")
    status, meta = served.call("GET", "/v2/models/sets")
    status, config = served.call("GET", "/v2/models/sets/config")
    assert status == 200, config
    named = meta["named_inputs"]
    assert [i["name"] for i in config["input"]] == ["features"] + [t["name"] for t in named]
    assert all(i["optional"] for i in config["input"])
    for tensor, entry in zip(named, config["input"][1:]):
        assert entry["dims"] == tensor["shape"][1:] and entry["data_type"] == f"TYPE_{tensor['datatype']}"
    json_format.ParseDict(config, model_config_pb2.ModelConfig())
    # one named request of 6 rows: counted in the statistics like a features request
    X = np.zeros((6, len(bundle.manifest["features"])), np.float32)
    parts = bundle.layout.split(X)
    body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": "BOOL" if a.dtype == np.bool_ else "FP32",
                        "data": a.ravel().tolist()} for n, a in parts.items()]}
    _, before = served.call("GET", "/v2/models/sets/stats")
    status, answer = served.call("POST", "/v2/models/sets/infer", body)
    assert status == 200 and answer["outputs"][0]["shape"] == [6], answer
    _, after = served.call("GET", "/v2/models/sets/stats")
    start, end = before["model_stats"][0], after["model_stats"][0]
    assert end["inference_stats"]["success"]["count"] == start["inference_stats"]["success"]["count"] + 1
    assert end["inference_count"] == start["inference_count"] + 6
    assert end["execution_count"] == start["execution_count"] + 1
    assert 6 in {b["batch_size"] for b in end["batch_stats"]}
    _check_sums(end)
