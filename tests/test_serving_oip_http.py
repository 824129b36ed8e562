"""The Open Inference Protocol ``infer`` route as Triton's clients speak it: JSON and the binary tensor data
extension, compressed bodies, every numeric datatype, several inputs and outputs.

A module fixture trains two small bundles (the Higgs demo with torch; a three-class Deep Sets model of the
objects layout on the ``tth_tasks`` example, which takes named inputs and has one column per class), starts a
real ``mlaas4hep serve`` on 127.0.0.1 and uploads them (the Higgs one twice: versions 1 and 2). Answers
through ``tritonclient.http`` (binary by default, JSON, gzip and deflate both ways, its asyncio client) must
equal the JSON route's and ``Bundle.predict_arrays``; malformed binary and compressed bodies are a 4xx
naming what is wrong, after which the service still answers.
"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import uproot

pytest.importorskip("fastapi")
import tritonclient.http as httpclient  # noqa: E402
import tritonclient.http.aio as aioclient  # noqa: E402
from servers import run_coroutine  # noqa: E402
from serving_support import ServerProcess, build_bundles, http_call  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from mlaas4hep_lab.bundle import Bundle  # noqa: E402
from mlaas4hep_lab.serving import BadRequest, TooLarge  # noqa: E402
from mlaas4hep_lab.serving.client import Client  # noqa: E402
from mlaas4hep_lab.serving.oip import inflate  # noqa: E402
from mlaas4hep_lab.serving.tensors import (  # noqa: E402
    DATATYPES,
    Tensor,
    array_from_json,
    array_from_raw,
    array_to_raw,
    as_float32,
)

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKEN = "alice-oip-http-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RTOL, ATOL = 1e-5, 1e-6
HIGGS, SETS = "higgs", "tth-sets"


@dataclass
class Model:
    bundle: Bundle
    X: np.ndarray             # model inputs of some events (float32, the flat features)
    expected: np.ndarray      # Bundle.predict_arrays of those events


@dataclass
class Served:
    server: ServerProcess
    models: dict[str, Model]

    @property
    def host(self) -> str:
        return self.server.url.split("//", 1)[1]

    def triton(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.host)


def _events(bundle: Bundle, files, n: int):
    import awkward as ak

    return ak.concatenate([uproot.open(f)[bundle.specs.tree].arrays(bundle.input_branches(), entry_stop=n)
                           for f in sorted(files)])


def _model(path, files, n: int) -> Model:
    bundle = Bundle.load(path)
    events = _events(bundle, files, n)
    X = np.ascontiguousarray(bundle.vectorize(events)[0], dtype=np.float32)
    return Model(bundle, X, bundle.predict_arrays(events)[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    from mlaas4hep_lab.data.datasets import tth_tasks
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    base = tmp_path_factory.mktemp("serving-oip-http")
    higgs = build_bundles(base / "bundles", ("higgs-torch",))["higgs-torch"]
    data = base / "tth"
    tth_tasks(data, n_events=3000)
    params = json.loads((data / "params.json").read_text())
    params.update(layout="objects", chunk_size=1000, epochs=1)
    inputs = load_inputs(data / "files.txt", data / "labels.txt", params, data / "preproc.json")
    train(inputs, ensure_specs(inputs, progress=False), template_path("torch_deepsets"), base / "sets",
          progress=False, plots=False)
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"alice": TOKEN}))
    server = ServerProcess(base / "store", tokens, base / "server.log").start()
    try:
        client = Client(server.url, token=TOKEN)
        for _ in range(2):  # versions 1 and 2 of the same bundle
            client.upload(higgs, name=HIGGS)
        client.upload(base / "sets" / "bundle", name=SETS)
        models = {HIGGS: _model(higgs, (higgs.parent.parent / "data").glob("*.root"), 150),
                  SETS: _model(base / "sets" / "bundle", data.glob("*.root"), 40)}
        yield Served(server, models)
    finally:
        server.stop()


def _auth() -> dict[str, str]:
    """A new headers dict for each tritonclient call: it adds its own headers (Content-Encoding,
    Inference-Header-Content-Length) to the dict it is given, which a shared one would carry on."""
    return dict(AUTH)


def _input(name: str, a: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(a.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(a), binary_data=binary)
    return tensor


def _json_route(served: Served, name: str, X: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32",
                        "data": X.reshape(-1).tolist()}]}
    status, answer = http_call(served.server.url, "POST", f"/v2/models/{name}/infer", json.dumps(body).encode(),
                               token=TOKEN)
    assert status == 200, answer
    out = answer["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _raw(served: Served, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one raw POST, the body not decoded."""
    conn = http.client.HTTPConnection(served.host.split(":")[0], int(served.host.split(":")[1]), timeout=60)
    try:
        try:
            conn.request("POST", path, body=body, headers={**AUTH, **headers})
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early (413) and closed: read that answer
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _binary_body(inputs: list[tuple[str, np.ndarray, str]], **extra) -> tuple[bytes, int]:
    """A body of the binary extension built by hand: (body, JSON header length)."""
    header = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": dt,
                          "parameters": {"binary_data_size": a.nbytes}} for n, a, dt in inputs], **extra}
    raw = json.dumps(header).encode()
    return raw + b"".join(np.ascontiguousarray(a).tobytes() for _, a, _ in inputs), len(raw)


def _assert_still_answers(served: Served) -> None:
    m = served.models[HIGGS]
    np.testing.assert_allclose(_json_route(served, HIGGS, m.X[:3]), m.expected[:3], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------ the core, no server

@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_raw_layout_round_trips_every_datatype(datatype):
    from tritonclient.utils import serialize_byte_tensor

    if datatype == "BYTES":
        a = np.array([[b"ab", b""], [b"\x00\xff", "é".encode()]], dtype=object)
        wire = serialize_byte_tensor(a).item()  # what tritonclient sends
    else:
        a = (np.arange(6).reshape(2, 3) % 2 == 1) if datatype == "BOOL" else np.arange(6).reshape(2, 3)
        a = a.astype(DATATYPES[datatype])
        wire = a.tobytes()
    back = array_from_raw("x", datatype, list(a.shape), memoryview(b"#" + wire)[1:])  # unaligned on purpose
    assert back.dtype == DATATYPES[datatype] and back.shape == a.shape and (back == a).all()
    assert back.flags.aligned
    assert array_to_raw(Tensor("x", datatype, list(a.shape), back)) == wire
    with pytest.raises(BadRequest, match="'x'"):
        array_from_raw("x", datatype, [a.size + 1], wire)


def test_json_data_is_checked_against_its_datatype():
    assert array_from_json("x", "INT8", [2], [1.0, -3.0]).tolist() == [1, -3]
    assert array_from_json("x", "FP32", [2, 2], [[1, 2], [3, 4]]).dtype == np.float32
    for datatype, data, message in [("INT32", [1.5, 2.0], "whole numbers"), ("UINT8", [1, 300], "range"),
                                    ("FP32", [True, False], "true/false"), ("BOOL", [1, 0], "true/false"),
                                    ("FP32", [[1.0], [2.0, 3.0]], "equal lengths"), ("BF16", [1.0], "BF16"),
                                    ("FP32", [1.0, 2.0, 3.0], "needs 4")]:
        with pytest.raises(BadRequest, match=message):
            array_from_json("x", datatype, [2, 2] if message == "needs 4" else [2], data)
    big = Tensor("x", "FP32", [2], array_from_json("x", "FP32", [2], [1e39, 1.0]))  # inf, as a cast makes it
    with pytest.raises(BadRequest, match="finite"):
        as_float32(big)
    with pytest.raises(BadRequest, match="BYTES"):
        as_float32(Tensor("x", "BYTES", [1], np.array([b"1"], dtype=object)))


_PLAIN_CASES = [
    {"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [1, 2.5, 3, 4, 5, 6]}]},
    {"id": "r1", "inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP64",
                             "data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}]},
    {"inputs": [{"name": "features", "shape": [0, 3], "datatype": "FP16", "data": []}]},
    # not plain: the request model decides (same answers as before the plain path existed)
    {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1.0, True, 3.0]}]},
    {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1.0, None, 3.0]}]},
    {"inputs": [{"name": "features", "shape": [1, 3], "datatype": {}, "data": [1.0, 2.0, 3.0]}]},
    {"inputs": [{"name": "", "shape": [0], "datatype": {}, "data": None, "parameters": None}], "outputs": None},
    {"inputs": [{"name": "features", "shape": [1, -3], "datatype": "FP32", "data": [1.0]}]},
    {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]},
    {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [[1.0, 2.0], "x"]}]},
    {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}], "id": 7},
    {"inputs": [], "id": "x"},
    {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}],
     "outputs": [{"name": "score", "parameters": {"binary_data": True}}], "parameters": {"binary_data_output": False}},
    {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}],
     "outputs": [{"name": "score", "parameters": {"binary_data": "yes"}}]},
    {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}], "outputs": [{}]},
    {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0],
                 "parameters": {"shared_memory_region": "r"}}]},
    {"inputs": [{"name": 3, "shape": [1], "datatype": "FP32", "data": [1.0]}]},
]


def _numbers(t) -> bool:
    """Whether an input of a case holds FP32 numbers only (it then has a binary form too)."""
    if not isinstance(t, dict) or t.get("datatype") != "FP32" or not isinstance(t.get("data"), list):
        return False
    leaves = [y for x in t["data"] for y in (x if isinstance(x, list) else [x])]
    return all(type(x) in (int, float) for x in leaves)


@pytest.mark.parametrize("case", _PLAIN_CASES)
def test_plain_json_requests_read_as_the_request_model_reads_them(case):
    """The plain path (no request-model validation for the common request) gives the same call, or the same
    refusal, as validating with the request model."""
    from mlaas4hep_lab.serving import ServingError
    from mlaas4hep_lab.serving import schemas as S
    from mlaas4hep_lab.serving.oip import _call, _plain, read_request

    def outcome(read):
        try:
            call = read()
        except ServingError as err:
            return ("error", err.status, str(err))
        return ("call", call.id, call.outputs, call.parameters,
                [(t.name, t.datatype, t.shape, t.array.dtype.str, t.array.tolist()) for t in call.inputs])

    by_model = outcome(lambda: _call(S.validate(case, S.InferRequest), None))
    assert outcome(lambda: read_request(json.dumps(case).encode(), {}, 64)) == by_model
    if _plain(case) is not None:  # the plain path only takes what the request model accepts
        S.InferRequest.model_validate(case)
    # the same header in the binary form: inputs' data after it
    header = {k: v for k, v in case.items()}
    if isinstance(header.get("inputs"), list) and header["inputs"] and all(_numbers(t) for t in header["inputs"]):
        raw = [np.asarray(t["data"], np.float32).tobytes() for t in header["inputs"]]
        header["inputs"] = [{**{k: v for k, v in t.items() if k != "data"}, "parameters": {"binary_data_size": len(r)}}
                            for t, r in zip(header["inputs"], raw)]
        body = json.dumps(header).encode()
        head = {"inference-header-content-length": str(len(body))}
        binary = outcome(lambda: read_request(body + b"".join(raw), head, 64))
        by_model_binary = outcome(lambda: _call(S.validate(header, S.InferRequest), memoryview(b"".join(raw))))
        assert binary == by_model_binary


def test_inflate_stops_at_the_cap():
    body = b"x" * 5000
    assert inflate(gzip.compress(body), "gzip", 5000) == body
    assert inflate(zlib.compress(body), "Deflate", 5000) == body
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert inflate(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 5000) == body
    with pytest.raises(TooLarge):
        inflate(gzip.compress(body), "gzip", 4999)
    with pytest.raises(BadRequest, match="truncated"):
        inflate(gzip.compress(body)[:-10], "gzip", 5000)
    with pytest.raises(BadRequest, match="after"):
        inflate(gzip.compress(body) + b"junk", "gzip", 5000)


# ------------------------------------------------------------------------------------------ tests

def test_tritonclient_defaults_send_and_read_binary_tensors(served):
    m = served.models[HIGGS]
    triton = served.triton()
    try:
        result = triton.infer(HIGGS, [_input("features", m.X, "FP32")], headers=_auth(), request_id="b-1")
    finally:
        triton.close()
    header = result.get_response()
    [out] = header["outputs"]
    assert header["id"] == "b-1" and header["model_name"] == HIGGS and header["model_version"] == "2"
    assert out["parameters"] == {"binary_data_size": 4 * len(m.X)} and "data" not in out  # binary, as asked
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and scores.shape == (len(m.X),)
    np.testing.assert_allclose(scores, m.expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores, _json_route(served, HIGGS, m.X), rtol=RTOL, atol=ATOL)


def test_tritonclient_in_json_equals_binary(served):
    m = served.models[HIGGS]
    triton = served.triton()
    try:
        result = triton.infer(HIGGS, [_input("features", m.X[:40], "FP32", binary=False)], headers=_auth(),
                              outputs=[httpclient.InferRequestedOutput("score", binary_data=False)])
    finally:
        triton.close()
    [out] = result.get_response()["outputs"]
    assert len(out["data"]) == 40 and "parameters" not in out
    np.testing.assert_allclose(result.as_numpy("score"), m.expected[:40], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers(served, algorithm):
    m = served.models[HIGGS]
    triton = served.triton()
    try:
        for binary in (True, False):
            result = triton.infer(HIGGS, [_input("features", m.X, "FP32", binary)], headers=_auth(),
                                  outputs=[httpclient.InferRequestedOutput("score", binary_data=binary)],
                                  request_compression_algorithm=algorithm,
                                  response_compression_algorithm=algorithm)
            np.testing.assert_allclose(result.as_numpy("score"), m.expected, rtol=RTOL, atol=ATOL)
    finally:
        triton.close()
    # what went over the wire: the answer compressed as accepted, the body inflated as said
    body, size = _binary_body([("features", m.X, "FP32")], parameters={"binary_data_output": True})
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    status, headers, raw = _raw(served, f"/v2/models/{HIGGS}/infer", packed,
                                {"Content-Encoding": algorithm, "Accept-Encoding": f"br, {algorithm}",
                                 "Inference-Header-Content-Length": str(size)})
    assert status == 200, raw
    assert headers["content-encoding"] == algorithm and headers["content-type"] == "application/octet-stream"
    plain = gzip.decompress(raw) if algorithm == "gzip" else zlib.decompress(raw)
    length = int(headers["inference-header-content-length"])
    answer = json.loads(plain[:length])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == len(plain) - length == 4 * len(m.X)
    np.testing.assert_allclose(np.frombuffer(plain[length:], np.float32), m.expected, rtol=RTOL, atol=ATOL)
    # a client that accepts neither gets the answer as it is
    status, headers, raw = _raw(served, f"/v2/models/{HIGGS}/infer", body,
                                {"Accept-Encoding": "br;q=1, gzip;q=0", "Inference-Header-Content-Length": str(size)})
    assert status == 200 and "content-encoding" not in headers


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT32", "INT64", "UINT8"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_datatypes_are_cast_to_what_the_model_takes(served, datatype, binary):
    from tritonclient.utils import triton_to_np_dtype

    m = served.models[HIGGS]
    dtype = triton_to_np_dtype(datatype)
    X = m.X[:30] * (10 if dtype().dtype.kind in "iu" else 1)  # integers: features of a wider range
    X = np.abs(X) if dtype().dtype.kind == "u" else X
    sent = X.astype(dtype)
    expected = m.bundle.backend.predict(sent.astype(np.float32))
    triton = served.triton()
    try:
        result = triton.infer(HIGGS, [_input("features", sent, datatype, binary)], headers=_auth(),
                              outputs=[httpclient.InferRequestedOutput("score", binary_data=binary)])
    finally:
        triton.close()
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_and_bf16_to_a_numeric_model_are_refused(served, binary):
    m = served.models[HIGGS]
    strings = np.array([[str(v).encode() for v in row] for row in m.X[:2]], dtype=object)
    triton = served.triton()
    try:
        with pytest.raises(InferenceServerException) as err:
            triton.infer(HIGGS, [_input("features", strings, "BYTES", binary)], headers=_auth())
        assert err.value.status() == "400" and "BYTES" in err.value.message() and "FP32" in err.value.message()
        if binary:  # tritonclient sends BF16 only in binary
            import ml_dtypes

            with pytest.raises(InferenceServerException) as err:
                triton.infer(HIGGS, [_input("features", m.X[:2].astype(ml_dtypes.bfloat16), "BF16")], headers=_auth())
            assert err.value.status() == "400" and "BF16" in err.value.message()
    finally:
        triton.close()
    _assert_still_answers(served)


def test_model_versions_and_the_async_client(served):

    m = served.models[HIGGS]

    async def run():
        triton = aioclient.InferenceServerClient(served.host)
        try:
            answers = {}
            for version in ("1", "2"):
                result = await triton.infer(HIGGS, [_input("features", m.X[:20], "FP32")], model_version=version,
                                            headers=_auth())
                answers[version] = (result.get_response()["model_version"], result.as_numpy("score"))
            with pytest.raises(InferenceServerException) as err:
                await triton.infer(HIGGS, [_input("features", m.X[:2], "FP32")], model_version="9", headers=_auth())
            return answers, err.value
        finally:
            await triton.close()

    answers, missing = run_coroutine(run())
    for version, (said, scores) in answers.items():
        assert said == version
        np.testing.assert_allclose(scores, m.expected[:20], rtol=RTOL, atol=ATOL)
    assert missing.status() == "404" and "9" in missing.message()


def test_named_inputs_in_binary_and_the_output_columns(served):
    m = served.models[SETS]
    named = m.bundle.layout.split(m.X)
    masks = [n for n in named if n.endswith("_mask")]
    assert masks and len(named) >= 3
    columns = m.bundle.output_names
    triton = served.triton()
    try:
        inputs = [_input(n, a.astype(np.bool_) if n in masks else a.astype(np.float32),
                         "BOOL" if n in masks else "FP32") for n, a in named.items()]
        # a mask in INT8, a value in FP64: cast as the export takes them
        inputs[-1] = _input(masks[-1], named[masks[-1]].astype(np.int8), "INT8")
        inputs[0] = _input("flat", named["flat"].astype(np.float64), "FP64")
        outputs = [httpclient.InferRequestedOutput("probabilities"),
                   httpclient.InferRequestedOutput(columns[0], binary_data=False),
                   httpclient.InferRequestedOutput(columns[2])]
        result = triton.infer(SETS, inputs, headers=_auth(), outputs=outputs, request_id="sets-1")
        header = result.get_response()
        by_features = triton.infer(SETS, [_input("features", m.X, "FP32")], headers=_auth()).as_numpy("probabilities")
        with pytest.raises(InferenceServerException) as err:
            triton.infer(SETS, inputs, headers=_auth(), outputs=[httpclient.InferRequestedOutput("p_nothing")])
    finally:
        triton.close()
    assert header["id"] == "sets-1"
    assert [o["name"] for o in header["outputs"]] == ["probabilities", columns[0], columns[2]]
    assert "data" in header["outputs"][1] and "parameters" in header["outputs"][2]  # JSON and binary mixed
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(m.X), 3)
    np.testing.assert_allclose(probabilities, m.expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(by_features, m.expected, rtol=RTOL, atol=ATOL)
    for i in (0, 2):
        assert result.as_numpy(columns[i]).shape == (len(m.X),)
        np.testing.assert_allclose(result.as_numpy(columns[i]), m.expected[:, i], rtol=RTOL, atol=ATOL)
    assert err.value.status() == "400" and "p_nothing" in err.value.message()
    assert all(repr(c) in err.value.message() for c in ("probabilities", *columns))


def test_a_wrong_token_is_401_through_tritonclient(served):
    m = served.models[HIGGS]
    triton = served.triton()
    try:
        for headers in ({"Authorization": "Bearer not-the-token"}, {}):
            with pytest.raises(InferenceServerException) as err:
                triton.infer(HIGGS, [_input("features", m.X[:2], "FP32")], headers=headers)
            assert err.value.status() == "401", err.value
    finally:
        triton.close()


def _malformed(served: Served) -> dict[str, tuple[bytes, dict, int]]:
    """Bodies that must be refused: (body, headers, status)."""
    m = served.models[HIGGS]
    X = m.X[:4]
    body, size = _binary_body([("features", X, "FP32")])
    header = json.loads(body[:size])

    def with_size(n) -> bytes:
        h = json.dumps({"inputs": [dict(header["inputs"][0], parameters={"binary_data_size": n})]}).encode()
        return h + body[size:], len(h)

    short, short_len = with_size(X.nbytes - 4)
    negative, negative_len = with_size(-4)
    text, text_len = with_size("16")
    both = json.dumps({"inputs": [dict(header["inputs"][0], data=X.reshape(-1).tolist())]}).encode()
    bomb = gzip.compress(b"0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    ok = {"Inference-Header-Content-Length": str(size)}
    return {
        "header length beyond the body": (body, {"Inference-Header-Content-Length": str(len(body) + 10)}, 400),
        "header length not a number": (body, {"Inference-Header-Content-Length": "twelve"}, 400),
        "header length zero": (body, {"Inference-Header-Content-Length": "0"}, 400),
        "header length cutting the JSON": (body, {"Inference-Header-Content-Length": str(size - 5)}, 400),
        "size not matching the shape": (short, {"Inference-Header-Content-Length": str(short_len)}, 400),
        "negative size": (negative, {"Inference-Header-Content-Length": str(negative_len)}, 400),
        "size as a string": (text, {"Inference-Header-Content-Length": str(text_len)}, 400),
        "bytes after the inputs": (body + b"\0" * 8, ok, 400),
        "data missing": (body[:size] + body[size:][:-4], ok, 400),
        "size without the header": (body[:size], {}, 400),
        "data and size both": (both + body[size:], {"Inference-Header-Content-Length": str(len(both))}, 400),
        "gzip bomb": (bomb, {"Content-Encoding": "gzip"}, 413),
        "truncated gzip": (gzip.compress(body)[:-12], {**ok, "Content-Encoding": "gzip"}, 400),
        "corrupt deflate": (b"\x78\x9c" + b"\xff" * 40, {**ok, "Content-Encoding": "deflate"}, 400),
        "gzip said, none sent": (body, {**ok, "Content-Encoding": "gzip"}, 400),
        "unknown encoding": (body, {**ok, "Content-Encoding": "br"}, 415),
        "bool bytes not 0 or 1": _bool_body(X),
        "a NaN in FP32": _nan_body(X, np.nan),
        "an inf in FP16": _nan_body(X.astype(np.float16), np.inf, "FP16"),
    }


def _nan_body(X: np.ndarray, value: float, datatype: str = "FP32") -> tuple[bytes, dict, int]:
    X = X.copy()
    X.flat[3] = value
    body, size = _binary_body([("features", X, datatype)])
    return body, {"Inference-Header-Content-Length": str(size)}, 400


def _bool_body(X: np.ndarray) -> tuple[bytes, dict, int]:
    raw = json.dumps({"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "BOOL",
                                  "parameters": {"binary_data_size": X.size}}]}).encode()
    return raw + b"\x07" * X.size, {"Inference-Header-Content-Length": str(len(raw))}, 400


def test_malformed_binary_and_compressed_bodies_are_refused(served):
    for what, (body, headers, want) in _malformed(served).items():
        status, _, raw = _raw(served, f"/v2/models/{HIGGS}/infer", body, headers)
        assert status == want, (what, status, raw[:300])
        error = json.loads(raw)["error"]
        assert isinstance(error, str) and error, what
        _assert_still_answers(served)
    assert served.server.alive()
