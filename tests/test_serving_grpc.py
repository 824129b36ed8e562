"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) of ``mlaas4hep serve
--grpc-port``, spoken by tritonclient.grpc 2.73 with its defaults.

A module fixture writes the ttH examples, trains a binary PyTorch model and a three-class one (one epoch
each), starts a real ``mlaas4hep serve`` with gRPC on 127.0.0.1 and uploads them for alice (the binary one
also as version 1 of a two-version model whose version 2 is the three-class one) and for bob. What gRPC
answers (tritonclient's raw tensors, a hand-built ``contents`` request, the stream, the aio client) is
compared with the HTTP JSON route and with ``Bundle.predict_arrays``; the management RPCs with what
tritonclient.http reads from the HTTP routes; every refusal has its gRPC code and the server still answers.
The descriptor set shipped with the package is checked against its ``.proto`` sources and tritonclient's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uproot

pytest.importorskip("fastapi")
grpcclient = pytest.importorskip("tritonclient.grpc")  # the test extra: Triton's own client
import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, json_format  # noqa: E402
from servers import run_coroutine  # noqa: E402
from serving_support import ServerProcess, http_call  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from mlaas4hep_lab.bundle import Bundle  # noqa: E402
from mlaas4hep_lab.serving.client import Client  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKENS = {"alice": "alice-grpc-token-0123", "bob": "bob-grpc-token-4567"}
ALICE = {"authorization": f"Bearer {TOKENS['alice']}"}
BOB = {"authorization": f"Bearer {TOKENS['bob']}"}
RTOL, ATOL = 1e-5, 1e-6
ROWS = 64
MAX_BODY = 1 << 20  # the server's body limit, which caps gRPC messages too
MODELS = {  # served name -> (dataset, template, output tensor, width)
    "tth-binary": ("tth", "torch", "score", None),
    "tth-classes": ("tth_tasks", "torch_multiclass", "probabilities", 3),
}


@dataclass
class Model:
    bundle: Bundle
    X: np.ndarray             # model inputs of some events
    expected: np.ndarray      # Bundle.predict_arrays of those events


@dataclass
class Served:
    server: ServerProcess
    models: dict[str, Model]

    def client(self):
        return grpcclient.InferenceServerClient(self.server.grpc_url)


def _train(base: Path, dataset: str, template: str) -> Model:
    from mlaas4hep_lab.data import datasets
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    data = base / dataset
    getattr(datasets, dataset)(data, n_events=2000)
    params = json.loads((data / "params.json").read_text())
    params.update(chunk_size=1000, epochs=1)
    inputs = load_inputs(data / "files.txt", data / "labels.txt", params, data / "preproc.json")
    train(inputs, ensure_specs(inputs, progress=False), template_path(template), base / f"out-{dataset}",
          progress=False, plots=False)
    bundle = Bundle.load(base / f"out-{dataset}" / "bundle")
    import awkward as ak

    events = ak.concatenate([uproot.open(f)[bundle.specs.tree].arrays(bundle.input_branches(), entry_stop=40)
                             for f in sorted(data.glob("*.root"))])
    X = bundle.vectorize(events)[0][:ROWS]
    return Model(bundle, np.ascontiguousarray(X, np.float32), bundle.predict_arrays(events)[0][:ROWS])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    base = tmp_path_factory.mktemp("serving-grpc")
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    models = {name: _train(base, dataset, template) for name, (dataset, template, _, _) in MODELS.items()}
    os.environ["MLAAS4HEP_SERVE_ADMINS"] = "alice"  # read by the server process for the log settings
    try:
        server = ServerProcess(base / "store", tokens, base / "server.log", "--max-body", str(MAX_BODY),
                               grpc_port=True).start()
    finally:
        del os.environ["MLAAS4HEP_SERVE_ADMINS"]
    try:
        alice, bob = Client(server.url, token=TOKENS["alice"]), Client(server.url, token=TOKENS["bob"])
        for name, model in models.items():
            alice.upload(model.bundle.path, name=name)
        alice.upload(models["tth-binary"].bundle.path, name="two-versions", version="1")
        alice.upload(models["tth-classes"].bundle.path, name="two-versions", version="2")
        bob.upload(models["tth-binary"].bundle.path, name="bobs")
        yield Served(server, models)
    finally:
        server.stop()


def _inputs(X: np.ndarray, datatype: str = "FP32") -> list:
    tensor = grpcclient.InferInput("features", list(X.shape), datatype)
    tensor.set_data_from_numpy(X)
    return [tensor]


def _http_infer(served: Served, name: str, X: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32",
                        "data": X.reshape(-1).tolist()}]}
    status, answer = http_call(served.server.url, "POST", f"/v2/models/{name}/infer", json.dumps(body).encode(),
                               token=TOKENS["alice"])
    assert status == 200, answer
    out = answer["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _refused(code: grpc.StatusCode, call, *args, **kw) -> str:
    """The message of a call tritonclient raises with ``code``."""
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kw)
    assert info.value.status() == str(code), info.value
    assert info.value.message(), info.value
    return info.value.message()


def _still_answers(served: Served) -> None:
    client = served.client()
    result = client.infer("tth-binary", _inputs(served.models["tth-binary"].X[:4]), headers=ALICE)
    np.testing.assert_allclose(result.as_numpy("score"), served.models["tth-binary"].expected[:4],
                               rtol=RTOL, atol=ATOL)
    client.close()


# ------------------------------------------------------------------------------------------ descriptors

def _proto_names(text: str) -> tuple[set[str], set[str]]:
    """The message names (nested ones as Outer.Inner) and rpc names declared by a .proto source."""
    messages, stack, depth = set(), [], 0
    text = re.sub(r"//[^\n]*", "", text)
    for token in re.finditer(r"\bmessage\s+(\w+)|[{}]", text):
        if token.group(1):
            stack.append((token.group(1), depth))
            messages.add(".".join(name for name, _ in stack))
        elif token.group(0) == "{":
            depth += 1
        else:
            depth -= 1
            if stack and stack[-1][1] == depth:
                stack.pop()
    return messages, set(re.findall(r"\brpc\s+(\w+)", text))


def _descriptor_names(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    def walk(messages, prefix=""):
        for m in messages:
            if not m.options.map_entry:  # map<k, v> fields' synthetic entry types
                yield prefix + m.name
            yield from walk(m.nested_type, f"{prefix}{m.name}.")
    return set(walk(file.message_type))


def _comparable(file) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    proto.ClearField("source_code_info")

    def strip(messages):  # json_name: protoc writes it into a descriptor set, not into generated _pb2 code
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)
    strip(proto.message_type)
    return proto


def test_descriptor_set_is_the_proto_sources_and_tritonclients():
    from mlaas4hep_lab.serving.grpc import protocol

    shipped = descriptor_pb2.FileDescriptorSet.FromString(protocol.DESCRIPTOR_SET.read_bytes())
    files = {f.name: f for f in shipped.file}
    assert sorted(files) == sorted(p.name for p in protocol.PROTO_FILES)
    for path in protocol.PROTO_FILES:  # a .proto edited without regenerating the set fails here
        text = path.read_text()
        assert "Redistribution and use in source and binary forms" in text  # the BSD-3 header kept
        messages, rpcs = _proto_names(text)
        assert messages == _descriptor_names(files[path.name]), path.name
        assert rpcs == {m.name for s in files[path.name].service for m in s.method}, path.name
    assert len(rpcs := {m.name for m in protocol.SERVICE.methods}) == 20 and "ModelStreamInfer" in rpcs
    # field by field (numbers, names, types, labels) what tritonclient 2.73 puts on the wire
    for ours, theirs in (("grpc_service.proto", service_pb2.DESCRIPTOR),
                         ("model_config.proto", model_config_pb2.DESCRIPTOR)):
        assert _comparable(protocol.POOL.FindFileByName(ours)) == _comparable(theirs), ours
    # a private pool: tritonclient's classes and ours live side by side in one process
    assert protocol.M.ModelInferRequest is not service_pb2.ModelInferRequest
    wire = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"1234"]).SerializeToString()
    assert protocol.M.ModelInferRequest.FromString(wire).raw_input_contents == [b"1234"]


# ------------------------------------------------------------------------------------------ health, metadata

def test_health_needs_no_token_and_the_rest_does(served):
    client = served.client()
    assert client.is_server_live() and client.is_server_ready()
    _refused(grpc.StatusCode.UNAUTHENTICATED, client.get_server_metadata)
    _refused(grpc.StatusCode.UNAUTHENTICATED, client.get_server_metadata,
             headers={"authorization": "Bearer not-a-token-of-anyone"})
    _refused(grpc.StatusCode.UNAUTHENTICATED, client.infer, "tth-binary", _inputs(served.models["tth-binary"].X))
    meta = client.get_server_metadata(headers=ALICE, as_json=True)
    status, http = http_call(served.server.url, "GET", "/v2", token=TOKENS["alice"])
    assert status == 200 and meta == http, (meta, http)
    client.close()


@pytest.mark.parametrize("name", [*MODELS, "two-versions"])
def test_model_metadata_is_the_http_metadata(served, name):
    client = served.client()
    meta = client.get_model_metadata(name, headers=ALICE, as_json=True)
    status, http = http_call(served.server.url, "GET", f"/v2/models/{name}", token=TOKENS["alice"])
    assert status == 200, http
    assert meta["name"] == http["name"] == name and meta["platform"] == http["platform"]
    assert meta["versions"] == http["versions"]
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]] \
            == [(t["name"], t["datatype"], t["shape"]) for t in http[key]]
    assert client.is_model_ready(name, headers=ALICE)
    assert not client.is_model_ready("no-such-model", headers=ALICE)
    client.close()


# ------------------------------------------------------------------------------------------ inference

@pytest.mark.parametrize("name", list(MODELS))
def test_infer_answers_the_http_route_and_predict_arrays(served, name):
    m, (_, _, tensor, width) = served.models[name], MODELS[name]
    client = served.client()
    result = client.infer(name, _inputs(m.X), request_id="req-7", headers=ALICE)
    response = result.get_response()
    assert response.id == "req-7" and response.model_name == name and response.model_version == "1"
    scores = result.as_numpy(tensor)
    assert scores.dtype == np.float32 and scores.shape == ((ROWS,) if width is None else (ROWS, width))
    np.testing.assert_allclose(scores, m.expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores, _http_infer(served, name, m.X), rtol=RTOL, atol=ATOL)
    # FP64 inputs are taken too; an output asked for by name; a multi-class model's column alone
    result = client.infer(name, _inputs(m.X.astype(np.float64), "FP64"), headers=ALICE,
                          outputs=[grpcclient.InferRequestedOutput(tensor)])
    np.testing.assert_allclose(result.as_numpy(tensor), m.expected, rtol=RTOL, atol=ATOL)
    if width is not None:
        column = m.bundle.output_names[1]
        result = client.infer(name, _inputs(m.X), headers=ALICE, outputs=[grpcclient.InferRequestedOutput(column)])
        np.testing.assert_allclose(result.as_numpy(column), m.expected[:, 1], rtol=RTOL, atol=ATOL)
    client.close()


def test_infer_with_contents_through_a_plain_channel(served):
    m = served.models["tth-classes"]
    request = service_pb2.ModelInferRequest(model_name="tth-classes", id="by-hand")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=list(m.X.shape))
    tensor.contents.fp32_contents.extend(m.X.reshape(-1).tolist())
    with grpc.insecure_channel(served.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(ALICE.items()))
    assert response.id == "by-hand" and [o.name for o in response.outputs] == ["probabilities"]
    out = response.outputs[0]
    assert out.datatype == "FP32" and list(out.shape) == [ROWS, 3]
    scores = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(out.shape))
    np.testing.assert_allclose(scores, m.expected, rtol=RTOL, atol=ATOL)
    # FP64 in its own field works too; values in another datatype's field are refused by name
    request.inputs[0].datatype = "FP64"
    request.inputs[0].contents.Clear()
    request.inputs[0].contents.fp64_contents.extend(m.X.astype(np.float64).reshape(-1).tolist())
    with grpc.insecure_channel(served.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(ALICE.items()))
        np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(ROWS, 3),
                                   m.expected, rtol=RTOL, atol=ATOL)
        request.inputs[0].datatype = "FP32"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, metadata=tuple(ALICE.items()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents.fp32_contents" in info.value.details(), info.value.details()


def test_infer_with_versions(served):
    client = served.client()
    binary, classes = served.models["tth-binary"], served.models["tth-classes"]
    one = client.infer("two-versions", _inputs(binary.X), model_version="1", headers=ALICE)
    assert one.get_response().model_version == "1"
    np.testing.assert_allclose(one.as_numpy("score"), binary.expected, rtol=RTOL, atol=ATOL)
    for version in ("2", ""):  # version 2 is the latest
        two = client.infer("two-versions", _inputs(classes.X), model_version=version, headers=ALICE)
        assert two.get_response().model_version == "2"
        np.testing.assert_allclose(two.as_numpy("probabilities"), classes.expected, rtol=RTOL, atol=ATOL)
    _refused(grpc.StatusCode.NOT_FOUND, client.infer, "two-versions", _inputs(classes.X), model_version="9",
             headers=ALICE)
    client.close()


def test_stream_infer_answers_each_request_in_order(served):
    m = served.models["tth-classes"]
    answers = queue.Queue()
    client = served.client()
    client.start_stream(lambda result, error: answers.put((result, error)), headers=ALICE)
    chunks = np.array_split(np.arange(ROWS), 8)
    for i, rows in enumerate(chunks):
        X = m.X[rows] if i != 3 else m.X[rows][:, :-1]  # the fourth request has the wrong shape
        client.async_stream_infer("tth-classes", _inputs(np.ascontiguousarray(X)), request_id=f"s{i}")
    got = [answers.get(timeout=60) for _ in chunks]
    client.stop_stream()
    client.close()
    for i, ((result, error), rows) in enumerate(zip(got, chunks)):
        if i == 3:
            assert result is None and "shape" in error.message(), error
            continue
        assert error is None, error
        assert result.get_response().id == f"s{i}"
        np.testing.assert_allclose(result.as_numpy("probabilities"), m.expected[rows], rtol=RTOL, atol=ATOL)
    # a stream without a token ends before any request is answered
    client = served.client()
    client.start_stream(lambda result, error: answers.put((result, error)))
    with contextlib.suppress(InferenceServerException):  # the stream may be closed already
        client.async_stream_infer("tth-classes", _inputs(m.X[:2]))
    result, error = answers.get(timeout=60)
    assert result is None and error.status() == str(grpc.StatusCode.UNAUTHENTICATED), error
    client.stop_stream()
    client.close()


def test_aio_client(served):
    import tritonclient.grpc.aio as aioclient

    m = served.models["tth-binary"]

    async def run():
        client = aioclient.InferenceServerClient(served.server.grpc_url)
        try:
            assert await client.is_server_live()
            tensor = aioclient.InferInput("features", list(m.X.shape), "FP32")
            tensor.set_data_from_numpy(m.X)
            results = await asyncio.gather(*(client.infer("tth-binary", [tensor], headers=ALICE)
                                             for _ in range(4)))
            return [r.as_numpy("score") for r in results]
        finally:
            await client.close()

    for scores in run_coroutine(run()):
        np.testing.assert_allclose(scores, m.expected, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------ management

def test_model_config_and_statistics_are_the_http_ones(served):
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(served.server.url.split("//", 1)[1])
    client = served.client()
    for name in MODELS:
        config = client.get_model_config(name, headers=ALICE).config
        want = json_format.ParseDict(http.get_model_config(name, headers=ALICE), model_config_pb2.ModelConfig())
        assert config == want and config.name == name and config.input[0].name == "features"
    m = served.models["tth-binary"]
    before = client.get_inference_statistics("tth-binary", "1", headers=ALICE).model_stats[0]
    client.infer("tth-binary", _inputs(m.X[:5]), headers=ALICE)
    after = client.get_inference_statistics("tth-binary", "1", headers=ALICE).model_stats[0]
    assert after.name == "tth-binary" and after.version == "1"
    assert after.inference_count == before.inference_count + 5
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    want = http.get_inference_statistics("tth-binary", "1", headers=ALICE)["model_stats"][0]
    assert int(want["inference_count"]) == after.inference_count  # the HTTP route counts the same
    every = client.get_inference_statistics(headers=ALICE, as_json=True)["model_stats"]
    assert {"tth-binary", "tth-classes"} <= {s["name"] for s in every}
    _refused(grpc.StatusCode.NOT_FOUND, client.get_model_config, "bobs", headers=ALICE)
    http.close()
    client.close()


def test_repository_index_load_unload(served):
    client = served.client()
    index = client.get_model_repository_index(headers=ALICE, as_json=True)["models"]
    assert {(e["name"], e["version"]) for e in index} >= {("tth-binary", "1"), ("tth-classes", "1"),
                                                        ("two-versions", "1"), ("two-versions", "2")}
    assert "bobs" not in {e["name"] for e in index}  # bob's own model
    try:
        client.unload_model("tth-classes", headers=ALICE)
        assert not client.is_model_ready("tth-classes", headers=ALICE)
        states = {(e["name"], e["version"]): e for e in
                  client.get_model_repository_index(headers=ALICE, as_json=True)["models"]}
        assert states[("tth-classes", "1")]["state"] == "UNAVAILABLE" and states[("tth-classes", "1")]["reason"]
        with grpc.insecure_channel(served.server.grpc_url) as channel:  # tritonclient never asks ready=true
            ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=True), metadata=tuple(ALICE.items())).models
        assert ready and all(e.state == "READY" for e in ready) and "tth-classes" not in {e.name for e in ready}
    finally:
        client.load_model("tth-classes", headers=ALICE)
    assert client.is_model_ready("tth-classes", headers=ALICE)
    message = _refused(grpc.StatusCode.INVALID_ARGUMENT, client.load_model, "tth-classes", headers=ALICE,
                       config=json.dumps({"max_batch_size": 4}))
    assert "config" in message
    _refused(grpc.StatusCode.NOT_FOUND, client.unload_model, "bobs", headers=ALICE)
    client.close()


def test_log_settings(served):
    client = served.client()
    settings = client.get_log_settings(headers=BOB, as_json=True)["settings"]
    assert {"log_info", "log_warning", "log_error", "log_verbose_level", "log_format"} <= set(settings)
    _refused(grpc.StatusCode.PERMISSION_DENIED, client.update_log_settings, {"log_info": True}, headers=BOB)
    changed = client.update_log_settings({"log_info": True}, headers=ALICE, as_json=True)["settings"]
    assert changed["log_info"] == {"bool_param": True}
    _refused(grpc.StatusCode.INVALID_ARGUMENT, client.update_log_settings, {"log_nonsense": True}, headers=ALICE)
    client.update_log_settings({"log_info": settings["log_info"]["bool_param"]}, headers=ALICE)
    client.close()


# ------------------------------------------------------------------------------------------ refusals

def test_another_users_model_is_not_found(served):
    client = served.client()
    X = served.models["tth-binary"].X
    for ref in ("bobs", "bob:bobs"):
        message = _refused(grpc.StatusCode.NOT_FOUND, client.infer, ref, _inputs(X), headers=ALICE)
        assert "not found" in message
        _refused(grpc.StatusCode.NOT_FOUND, client.get_model_metadata, ref, headers=ALICE)
    result = client.infer("bobs", _inputs(X), headers=BOB)  # bob's own
    np.testing.assert_allclose(result.as_numpy("score"), served.models["tth-binary"].expected, rtol=RTOL,
                               atol=ATOL)
    client.close()


def test_grpc_port_setting(monkeypatch, tmp_path):
    from mlaas4hep_lab.errors import ConfigError
    from mlaas4hep_lab.serving.settings import Settings

    assert Settings(store_dir=tmp_path).grpc_port == 0  # no gRPC unless asked
    monkeypatch.setenv("MLAAS4HEP_GRPC_PORT", "8084")
    assert Settings(store_dir=tmp_path).grpc_port == 8084
    for bad in (-1, "8084", True):
        with pytest.raises(ConfigError, match="grpc_port"):
            Settings(store_dir=tmp_path, grpc_port=bad)
    with pytest.raises(ConfigError, match="grpc_port.*HTTP port"):
        Settings(store_dir=tmp_path, port=8090, grpc_port=8090)


def test_errors_become_the_grpc_code_of_their_status(caplog):
    from mlaas4hep_lab.auth import AuthError
    from mlaas4hep_lab.serving import BadRequest, Forbidden, NotFound, ServingError, TooLarge, Unavailable
    from mlaas4hep_lab.serving.grpc.server import status_of

    code = grpc.StatusCode
    for exc, want in ((BadRequest("bad"), code.INVALID_ARGUMENT), (NotFound("none"), code.NOT_FOUND),
                      (Forbidden("owner only"), code.PERMISSION_DENIED), (TooLarge("big"), code.RESOURCE_EXHAUSTED),
                      (Unavailable("queue full"), code.UNAVAILABLE), (AuthError("no token"), code.UNAUTHENTICATED),
                      (ServingError("not here", 501), code.UNIMPLEMENTED)):
        assert status_of(exc, "/r") == (want, str(exc))
    got, message = status_of(KeyError("a detail of the server"), "/inference.GRPCInferenceService/ModelInfer")
    assert got == code.INTERNAL and "KeyError" in message and "detail" not in message
    assert "ModelInfer" in caplog.text and "a detail of the server" in caplog.text  # logged, with its traceback


def _raw_request(name: str, datatype: str, shape: list[int], raw: bytes, input_name: str = "features"):
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name=input_name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_malformed_requests_get_their_code_and_the_server_answers(served):
    X = served.models["tth-binary"].X
    n, f = X.shape
    metadata = tuple(ALICE.items())
    bad = {  # what is wrong -> (request, code, a word the message must hold)
        "wrong shape": (_raw_request("tth-binary", "FP32", [n, f + 1], np.zeros((n, f + 1), "<f4").tobytes()),
                        grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        "raw size": (_raw_request("tth-binary", "FP32", [n, f], X.tobytes()[:-4]),
                     grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        "unknown input": (_raw_request("tth-binary", "FP32", [n, f], X.tobytes(), "jets"),
                          grpc.StatusCode.INVALID_ARGUMENT, "jets"),
        "BYTES": (_raw_request("tth-binary", "BYTES", [1, f], b"\x03\x00\x00\x00abc" * f),
                  grpc.StatusCode.INVALID_ARGUMENT, "BYTES"),
        "no data": (service_pb2.ModelInferRequest(model_name="tth-binary", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[n, f])]),
            grpc.StatusCode.INVALID_ARGUMENT, "no data"),
        "too large": (_raw_request("tth-binary", "FP32", [MAX_BODY // 4 // f + 1, f],
                                   np.zeros((MAX_BODY // 4 // f + 1, f), "<f4").tobytes()),
                      grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        "no model": (_raw_request("", "FP32", [n, f], X.tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "model"),
    }
    shared = _raw_request("tth-binary", "FP32", [n, f], X.tobytes())
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    bad["shared memory"] = (shared, grpc.StatusCode.UNIMPLEMENTED, "shared memory")
    with grpc.insecure_channel(served.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for what, (request, code, word) in bad.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == code, (what, info.value)
            assert word in info.value.details(), (what, info.value.details())
        with pytest.raises(grpc.RpcError) as info:
            stub.CudaSharedMemoryStatus(service_pb2.CudaSharedMemoryStatusRequest(), metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _still_answers(served)
    assert served.server.alive() and "Traceback" not in served.server.log_text()


def test_metrics_count_grpc_calls(served):
    client = served.client()
    client.infer("tth-binary", _inputs(served.models["tth-binary"].X[:2]), headers=ALICE)
    _refused(grpc.StatusCode.UNAUTHENTICATED, client.get_model_metadata, "tth-binary")
    client.close()
    status, text = http_call(served.server.url, "GET", "/metrics", token=TOKENS["alice"])
    assert status == 200
    route = "/inference.GRPCInferenceService"
    ok = re.search(rf'requests_total{{route="{route}/ModelInfer",method="GRPC",status="OK"}} (\d+)', text)
    refused = re.search(rf'requests_total{{route="{route}/ModelMetadata",method="GRPC",'
                        rf'status="UNAUTHENTICATED"}} (\d+)', text)
    assert ok and int(ok.group(1)) >= 1 and refused and int(refused.group(1)) >= 1, text[:3000]
    assert f'request_duration_seconds_count{{route="{route}/ModelInfer"}}' in text


# ------------------------------------------------------------------------------------------ workers

def _listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (each uvicorn worker's gRPC server has its own, SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                count += state == "0A" and int(local.split(":")[1], 16) == port
    return count


def test_a_grpc_port_in_use_stops_the_server(served, tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        server = ServerProcess(served.server.store, served.server.tokens, tmp_path / "busy.log",
                               grpc_port=holder.getsockname()[1])
        with pytest.raises(RuntimeError, match="cannot listen for gRPC"):
            server.start(timeout=60)
        server.stop()


def test_two_workers_serve_grpc(served, tmp_path):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("counting listening sockets needs Linux's /proc/net/tcp")
    m = served.models["tth-binary"]
    server = ServerProcess(served.server.store, served.server.tokens, tmp_path / "workers.log", "--workers", "2",
                           grpc_port=True).start()
    try:
        deadline = time.monotonic() + 60
        while _listeners(server.grpc_port) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listeners(server.grpc_port) == 2, server.log_text()[-2000:]
        for _ in range(6):  # a new connection each time: the kernel spreads them over the workers
            client = grpcclient.InferenceServerClient(server.grpc_url)
            result = client.infer("tth-binary", _inputs(m.X), headers=ALICE)
            np.testing.assert_allclose(result.as_numpy("score"), m.expected, rtol=RTOL, atol=ATOL)
            client.close()
    finally:
        server.stop()
