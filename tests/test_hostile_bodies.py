"""Bodies built to crash a parser, sent to every route of both services: each is refused with a 4xx and
the service stays up (it answers its health check and still scores correctly afterwards).

* 100,000-deep arrays and objects (and unclosed ones) to every operation of the inference service's own
  OpenAPI schema and to ``/echo``, to the jobs service's ``/submit``, in the ``params`` field of a multipart
  ``/upload``, and as ``manifest.json`` inside an uploaded tarball;
* a 200 MiB chunked ``POST /submit`` (no Content-Length): stopped at the body cap while it is read, so the
  service's memory does not grow by the body's size.

The depth scan itself is checked against a plain reference over random bytes.
"""

from __future__ import annotations

import http.client
import io
import json
import random
import re
import tarfile

import numpy as np
import psutil
import pytest

from mlaas4hep_lab.serving import BadRequest
from mlaas4hep_lab.serving.bodies import json_depth, load_json

try:
    from serving_support import JobsProcess, ServerProcess, build_bundles, http_call
except ImportError:  # tests/ imported as a package
    from tests.serving_support import JobsProcess, ServerProcess, build_bundles, http_call

TOKEN = "hostile-token-0123"
DEEP = 100_000
BOMBS = {
    "arrays": b"[" * DEEP + b"]" * DEEP,
    "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "unclosed": b"[" * DEEP,
    "mixed": b'{"values":' + b'[{"x":' * (DEEP // 2) + b"0" + b"}]" * (DEEP // 2) + b"}",
}


# ------------------------------------------------------------------------------ the depth scan itself

def _reference_depth(text: str) -> int:
    """Character by character: a quote after an even run of backslashes opens or closes a string;
    brackets outside strings nest."""
    depth = deepest = run = 0
    inside = False
    for c in text:
        if c == '"' and run % 2 == 0:
            inside = not inside
        elif not inside and c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not inside and c in "]}":
            depth -= 1
        run = run + 1 if c == "\\" else 0
    return deepest


def test_depth_scan_matches_a_reference_on_random_text():
    rng = random.Random(7)
    alphabet = '[]{}"\\a,: '
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert json_depth(text.encode()) == _reference_depth(text), text
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(30))
        assert json_depth(raw) == _reference_depth(raw.decode("latin-1")), raw


def test_depth_scan_on_json_documents():
    doc = {"a": [1, {"b": "]]]\\\"[[[", "c": [[["x\\\\"]]]}], "d": "{"}
    text = json.dumps(doc)
    assert json_depth(text.encode()) == 6 == _reference_depth(text)
    assert json_depth(b"3") == 0 and json_depth(b"") == 0 and json_depth(b'"[[["') == 0
    for name, bomb in BOMBS.items():
        assert json_depth(bomb) >= DEEP // 2, name
        with pytest.raises(BadRequest, match="nested .* levels deep"):
            load_json(bomb, 32)
    assert load_json(text.encode(), 32) == doc
    with pytest.raises(BadRequest, match="nested 33 levels"):
        load_json(b"[" * 33 + b"]" * 33, 32)
    assert load_json(b"[" * 32 + b"]" * 32, 32)


# ------------------------------------------------------------------------------ the two services

@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "tokens.json"
    path.write_text(json.dumps({"alice": TOKEN}))
    return path


@pytest.fixture(scope="module")
def serve(tmp_path_factory, tokens):
    bundles = build_bundles(tmp_path_factory.getbasetemp() / "serving-bundles", keys=("higgs-torch",))
    base = tokens.parent
    server = ServerProcess(base / "store", tokens, base / "serve.log", "--max-body", str(16 << 20)).start()
    server.bundle = bundles["higgs-torch"]
    try:
        status, answer = http_call(server.url, "POST", "/upload?name=higgs",
                                   (server.bundle.parent / "bundle.tar.gz").read_bytes(),
                                   token=TOKEN, content_type="application/gzip")
        assert status == 201, answer
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def jobs(tokens):
    from mlaas4hep_lab.data import datasets

    base = tokens.parent
    data = datasets.higgs(base / "data", n_events=2000, seed=3)
    server = JobsProcess(base / "state", tokens, data.directory, base / "jobs.log", "--allow-unisolated")
    try:
        yield server.start()
    finally:
        server.stop()


def _operations(url: str) -> list[tuple[str, str]]:
    status, schema = http_call(url, "GET", "/openapi.json", token=TOKEN)
    assert status == 200, schema
    ops = []
    for path, methods in schema["paths"].items():
        concrete = re.sub(r"\{model[^}]*\}", "higgs", path).replace("{version}", "1")
        ops += [(method.upper(), concrete) for method in methods if method in ("post", "put", "patch")]
    return ops + [("POST", "/echo")]


def _scores_still_right(serve) -> None:
    from mlaas4hep_lab.bundle import Bundle

    rng = np.random.default_rng(0)
    b = Bundle.load(serve.bundle)
    X = rng.random((5, len(b.specs.features)), dtype=np.float32)
    status, answer = http_call(serve.url, "POST", "/json", json.dumps({"model": "higgs",
                               "values": X.tolist()}).encode(), token=TOKEN)
    assert status == 200, answer
    np.testing.assert_allclose(answer, b.backend.predict(X), rtol=1e-4, atol=1e-5)


def test_deep_json_to_every_route_of_the_inference_service(serve):
    ops = _operations(serve.url)
    assert ("POST", "/json") in ops and ("POST", "/v2/models/higgs/infer") in ops
    for method, path in ops:
        for name, bomb in BOMBS.items():
            status, answer = http_call(serve.url, method, path, bomb, token=TOKEN)
            assert 400 <= status < 500, (method, path, name, status, answer)
            assert serve.alive(), (method, path, name, serve.log_text()[-2000:])
    status, answer = http_call(serve.url, "POST", "/json", BOMBS["arrays"], token=TOKEN)
    assert status == 400 and "levels deep" in answer["error"]
    assert http_call(serve.url, "GET", "/v2/health/live", token=None)[0] == 200
    _scores_still_right(serve)


def _multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "hostile-boundary-4c1f"
    out = io.BytesIO()
    for name, (filename, data) in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _staging(serve) -> list:
    return sorted(p.name for p in (serve.store / ".staging").iterdir())


def test_deep_json_in_upload_parts_and_bundle_files(serve):
    for name, bomb in BOMBS.items():
        # the original TFaaS form: a bare model file with params.json beside it
        body, ctype = _multipart({"model": ("model.onnx", b"not a tarball"), "name": (None, b"bare"),
                                  "params": ("params.json", bomb)})
        status, answer = http_call(serve.url, "POST", "/upload", body, token=TOKEN, content_type=ctype)
        assert 400 <= status < 500, (name, status, answer)
        # a tarball whose manifest.json is the bomb
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("bundle/manifest.json")
            info.size = len(bomb)
            tar.addfile(info, io.BytesIO(bomb))
        status, answer = http_call(serve.url, "POST", "/upload?name=bomb", buf.getvalue(), token=TOKEN,
                                   content_type="application/gzip")
        assert 400 <= status < 500, (name, status, answer)
        assert serve.alive(), serve.log_text()[-2000:]
        assert _staging(serve) == [], f"{name}: left in staging: {_staging(serve)}"
    _scores_still_right(serve)


def test_deep_json_to_the_jobs_service(jobs):
    for name, bomb in BOMBS.items():
        status, answer = http_call(jobs.url, "POST", "/submit", bomb, token=TOKEN)
        assert 400 <= status < 500, (name, status, answer)
        # nested inside an otherwise valid-looking submission
        body = b'{"files": ["a.root"], "labels": [1], "model": "sklearn", "params": ' + bomb + b"}"
        status, answer = http_call(jobs.url, "POST", "/submit", body, token=TOKEN)
        assert 400 <= status < 500, (name, status, answer)
        assert jobs.alive(), jobs.log_text()[-2000:]
    assert http_call(jobs.url, "GET", "/health", token=None)[0] == 200
    assert http_call(jobs.url, "GET", "/jobs", token=TOKEN)[0] == 200


def test_a_huge_chunked_submit_is_stopped_at_the_cap(jobs):
    """200 MiB sent without Content-Length: the service answers 413 without buffering it all."""
    server = psutil.Process(jobs.proc.pid)
    rss_before = server.memory_info().rss
    block = b" " * (1 << 20)

    def body():
        yield b'{"files": ["'
        for _ in range(200):
            yield block

    host, port = jobs.url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        try:
            conn.request("POST", "/submit", body=body(), encode_chunked=True,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                                  "Transfer-Encoding": "chunked"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service answered and closed while we were still sending
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413, answer
    assert "larger than" in answer["error"]
    growth = server.memory_info().rss - rss_before
    assert growth < 64 << 20, f"the service grew by {growth / 2**20:.0f} MiB reading a refused body"
    assert http_call(jobs.url, "GET", "/health", token=None)[0] == 200
