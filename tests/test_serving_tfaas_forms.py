"""The original TFaaS calls, as its README and curl client documentation make them, on a real
``mlaas4hep serve`` (127.0.0.1), with the bodies curl sends (multipart forms written here byte by byte):

* ``curl -F name=vk -F params=@params.json -F model=@model.pb -F labels=@labels.txt /upload``: a frozen
  TensorFlow graph (built in the test: a small dense net, ``tf.function`` -> ``convert_variables_to_constants_v2``
  -> ``GraphDef``) with params ``inputNode``/``outputNode``, converted to ONNX at upload; ``/json`` answers
  what TensorFlow computes, with the ``keys`` taken as the input order when params name no features;
* a SavedModel directory as a tarball (``tar cfz model.tar.gz model``), as the body with
  ``Content-Encoding: gzip`` or in the form;
* ``DELETE /delete`` with the model in the query or a form field; ``GET /params`` without a model;
* without TensorFlow on the server (hidden from it), a frozen graph or a SavedModel is a 400 that says what
  to send instead.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
tf = pytest.importorskip("tensorflow")  # the keras extra: what converts and serves TensorFlow models
pytest.importorskip("tf2onnx")
convert_to_constants = pytest.importorskip("tensorflow.python.framework.convert_to_constants")
from serving_support import ServerProcess, http_call  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKENS = {"alice": "alice-tfaas-0123", "bob": "bob-tfaas-4567"}
WIDTH = 4
RTOL, ATOL = 1e-5, 1e-6


class DenseNet(tf.Module):
    """4 inputs -> 8 relu -> 1 sigmoid, fixed weights."""

    def __init__(self, seed: int = 7):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = tf.Variable(rng.normal(0, 1, (WIDTH, 8)).astype(np.float32))
        self.b1 = tf.Variable(rng.normal(0, 0.1, 8).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(0, 1, (8, 1)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="inputs")])
    def __call__(self, x):
        hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
        return tf.identity(tf.sigmoid(tf.matmul(hidden, self.w2)), name="output_node0")


def frozen_graph(net: tf.Module) -> tuple[bytes, object]:
    """The frozen GraphDef of ``net`` (variables as constants) and the frozen function (TensorFlow's answer)."""
    frozen = convert_to_constants.convert_variables_to_constants_v2(net.__call__.get_concrete_function())
    return frozen.graph.as_graph_def().SerializeToString(), frozen


def tf_scores(frozen, X: np.ndarray) -> np.ndarray:
    return np.asarray(frozen(tf.constant(X, tf.float32))[0]).reshape(-1)


def saved_model_tarball(net: tf.Module, base: Path, folder: str = "model") -> bytes:
    """``tar cfz model.tar.gz model`` of ``tf.saved_model.save(net, "model")``."""
    tf.saved_model.save(net, str(base / folder), signatures={"serving_default": net.__call__})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(base / folder, arcname=folder)
    return buf.getvalue()


def multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as curl writes it: ``-F name=value`` (no file name) or ``-F name=@file``."""
    boundary = f"------------------------{uuid.uuid4().hex[:16]}"
    parts = []
    for name, filename, data in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        if filename is not None:
            head += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'
        parts.append(head.encode() + b"\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Served:
    server: ServerProcess
    base: Path

    def call(self, method: str, path: str, body=None, user: str = "alice", content_type="application/json",
             **kw):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return http_call(self.server.url, method, path, data, token=TOKENS[user], content_type=content_type, **kw)

    def form(self, path: str, fields, user: str = "alice", method: str = "POST"):
        body, content_type = multipart(fields)
        return self.call(method, path, body, user, content_type=content_type)

    def staging_is_empty(self) -> bool:
        return list((self.server.store / ".staging").iterdir()) == []


def _server(base: Path, name: str, env: dict[str, str] | None = None) -> ServerProcess:
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        return ServerProcess(base / f"store-{name}", tokens, base / f"{name}.log").start()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfaas-forms")
    server = _server(base, "server")
    try:
        yield Served(server, base)
    finally:
        server.stop()


X = np.random.default_rng(11).uniform(-2, 2, (9, WIDTH)).astype(np.float32)
PARAMS = {"name": "vk", "model": "model.pb", "labels": "labels.txt", "inputNode": "inputs",
          "outputNode": "output_node0"}


def test_frozen_graph_form_upload_and_json_with_keys_as_the_order(served):
    graph, frozen = frozen_graph(DenseNet())
    status, answer = served.form("/upload", [("name", None, b"vk"), ("params", "params.json", json.dumps(PARAMS).encode()),
                                             ("model", "model.pb", graph), ("labels", "labels.txt", b"bkg\nsig\n")])
    assert status == 201, answer
    assert answer["ref"] == "alice:vk" and answer["features"] == ["f0", "f1", "f2", "f3"]
    expected = tf_scores(frozen, X)
    # TFaaS's own call: keys name the inputs in the model's order, whatever they are called
    keys = ["pt", "eta", "phi", "mass"]
    status, scores = served.call("POST", "/json", {"keys": keys, "values": X.tolist(), "model": "vk"})
    assert status == 200, scores
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)
    # the names the service gave the inputs (metadata) are matched by name, in any order
    status, scores = served.call("POST", "/json", {"keys": ["f3", "f2", "f1", "f0"], "values": X[:, ::-1].tolist(),
                                                   "model": "vk"})
    assert status == 200 and np.allclose(scores, expected, rtol=RTOL, atol=ATOL), scores
    status, one = served.call("POST", "/json", {"keys": keys, "values": X[0].tolist(), "model": "vk"})
    assert status == 200 and np.allclose(one, expected[:1], rtol=RTOL, atol=ATOL), one
    status, answer = served.call("POST", "/json", {"keys": keys[:3], "values": X[:, :3].tolist(), "model": "vk"})
    assert status == 400 and "3 keys" in answer["error"] and "4 inputs" in answer["error"]
    # the OIP route serves it too, converted to ONNX
    status, meta = served.call("GET", "/v2/models/vk")
    assert status == 200 and meta["platform"] == "onnxruntime_onnx" and meta["labels"] == {"0": "bkg", "1": "sig"}
    assert served.staging_is_empty()


def test_frozen_graph_with_feature_names_reorders_by_keys(served):
    graph, frozen = frozen_graph(DenseNet(seed=5))
    names = ["a", "b", "c", "d"]
    params = {**PARAMS, "name": "named", "features": names}
    status, answer = served.form("/upload", [("params", "params.json", json.dumps(params).encode()),
                                             ("model", "tf_model.pb", graph)])
    assert status == 201 and answer["features"] == names, answer
    order = [2, 0, 3, 1]
    status, scores = served.call("POST", "/json", {"keys": [names[i] for i in order], "values": X[:, order].tolist(),
                                                   "model": "named"})
    assert status == 200, scores
    np.testing.assert_allclose(scores, tf_scores(frozen, X), rtol=RTOL, atol=ATOL)


def test_frozen_graph_refusals_say_what_to_send(served):
    graph, _ = frozen_graph(DenseNet())
    no_nodes = {"name": "nodes"}
    status, answer = served.form("/upload", [("params", "params.json", json.dumps(no_nodes).encode()),
                                             ("model", "model.pb", graph)])
    assert status == 400 and "inputNode" in answer["error"] and "SavedModel" in answer["error"], answer
    wrong = {**PARAMS, "name": "wrong", "inputNode": "dense_4_input"}
    status, answer = served.form("/upload", [("params", "params.json", json.dumps(wrong).encode()),
                                             ("model", "model.pb", graph)])
    assert status == 400 and "'dense_4_input' is not a node" in answer["error"] and "inputs" in answer["error"]
    status, answer = served.form("/upload", [("params", "params.json", json.dumps({**PARAMS, "name": "junk"}).encode()),
                                             ("model", "model.pb", b"\x0a\x03abc not a graph")])
    assert status == 400 and "neither ONNX nor a TensorFlow frozen graph" in answer["error"], answer

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="inputs")])
        def __call__(self, x):
            leak = tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)
            return tf.identity(tf.reduce_sum(x, 1) + leak * 0, name="output_node0")

    evil, _ = frozen_graph(Reader())
    status, answer = served.form("/upload", [("params", "params.json", json.dumps({**PARAMS, "name": "evil"}).encode()),
                                             ("model", "model.pb", evil)])
    assert status == 400 and "ReadFile" in answer["error"], answer
    status, models = served.call("GET", "/models")
    assert status == 200 and not {"nodes", "wrong", "junk", "evil"} & {m["name"] for m in models}
    assert served.staging_is_empty()


def test_savedmodel_tarball_as_the_body_and_in_the_form(served, tmp_path):
    net = DenseNet(seed=3)
    _, frozen = frozen_graph(net)
    expected = tf_scores(frozen, X)
    data = saved_model_tarball(net, tmp_path)
    # the README's bundle call: curl -H "Content-Encoding: gzip" -H "content-type: application/octet-stream"
    status, answer = served.call("POST", "/upload", data, content_type="application/octet-stream",
                                 headers={"Content-Encoding": "gzip"})
    assert status == 201, answer
    assert answer["ref"] == "alice:model" and answer["runtime"] == "tf"  # named after its folder, as TFaaS did
    status, scores = served.call("POST", "/json", {"keys": ["x1", "x2", "x3", "x4"], "values": X.tolist(),
                                                   "model": "model"})
    assert status == 200, scores
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)
    # in a form, with a name and params naming the features
    params = {"features": ["a", "b", "c", "d"]}
    status, answer = served.form("/upload", [("name", None, b"saved"), ("params", "params.json", json.dumps(params).encode()),
                                             ("bundle", "model.tar.gz", data)])
    assert status == 201 and answer["features"] == ["a", "b", "c", "d"], answer
    status, scores = served.call("POST", "/json", {"keys": ["d", "c", "b", "a"], "values": X[:, ::-1].tolist(),
                                                   "model": "saved"})
    assert status == 200, scores
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)
    status, answer = served.call("POST", "/v2/models/saved/infer", {"inputs": [
        {"name": "features", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]})
    assert status == 200, answer
    np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=RTOL, atol=ATOL)
    # a tarball of neither a bundle nor a SavedModel is still refused as before
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("stuff/readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    status, answer = served.call("POST", "/upload?name=stuff", buf.getvalue(), content_type="application/gzip")
    assert status == 400 and "no model bundle" in answer["error"]
    assert served.staging_is_empty()


def _upload_small(served, name: str, user: str = "alice") -> None:
    graph, _ = frozen_graph(DenseNet())
    status, answer = served.form("/upload", [("name", None, name.encode()),
                                             ("params", "params.json", json.dumps(PARAMS).encode()),
                                             ("model", "model.pb", graph)], user=user)
    assert status == 201, answer


def test_delete_by_query_and_form_field(served):
    for name in ("del-query", "del-form", "del-urlencoded", "bobs"):
        _upload_small(served, name, user="bob" if name == "bobs" else "alice")
    status, answer = served.call("DELETE", "/delete?model=del-query")
    assert status == 200 and answer["deleted"] == "alice:del-query", answer
    status, answer = served.form("/delete", [("model", None, b"del-form")], method="DELETE")
    assert status == 200 and answer["deleted"] == "alice:del-form", answer
    status, answer = served.call("DELETE", "/delete", b"model=del-urlencoded",
                                 content_type="application/x-www-form-urlencoded")
    assert status == 200 and answer["deleted"] == "alice:del-urlencoded", answer
    status, answer = served.call("DELETE", "/delete")
    assert status == 400 and "?model=" in answer["error"]
    for how in ("query", "form"):  # another user's model: not found, and still there
        if how == "query":
            status, answer = served.call("DELETE", "/delete?model=bob:bobs")
        else:
            status, answer = served.form("/delete", [("model", None, b"bob:bobs")], method="DELETE")
        assert status == 404, answer
    status, models = served.call("GET", "/models", user="bob")
    assert "bobs" in {m["name"] for m in models}
    status, models = served.call("GET", "/models")
    assert not {"del-query", "del-form", "del-urlencoded"} & {m["name"] for m in models}


def test_params_without_a_model_lists_yours(served):
    _upload_small(served, "listed")
    _upload_small(served, "private-of-bob", user="bob")
    status, listing = served.call("GET", "/params")
    assert status == 200 and isinstance(listing, list), listing
    by_name = {p["name"]: p for p in listing}
    assert "listed" in by_name and "private-of-bob" not in by_name
    assert all(p["owner"] == "alice" for p in listing)
    one = served.call("GET", "/params/listed")[1]
    assert by_name["listed"] == one and one["manifest"]["source"] == "tfaas-form"


def test_without_tensorflow_the_refusal_says_what_to_send(served, tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "tensorflow.py").write_text('raise ImportError("TensorFlow is hidden from this server")\n')
    server = _server(tmp_path, "no-tf", {"PYTHONPATH": str(hidden)})
    try:
        other = Served(server, tmp_path)
        graph, _ = frozen_graph(DenseNet())
        status, answer = other.form("/upload", [("params", "params.json", json.dumps(PARAMS).encode()),
                                                ("model", "model.pb", graph)])
        assert status == 400, answer
        assert "needs TensorFlow" in answer["error"] and "ONNX" in answer["error"] and "bundle" in answer["error"]
        data = saved_model_tarball(DenseNet(), tmp_path)
        status, answer = other.call("POST", "/upload?name=sm", data, content_type="application/gzip")
        assert status == 400 and "SavedModel needs TensorFlow" in answer["error"], answer
        assert other.staging_is_empty() and server.alive()
        assert other.call("GET", "/models")[1] == []
    finally:
        server.stop()
