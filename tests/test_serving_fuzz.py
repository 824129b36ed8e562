"""Property-based fuzzing of the inference service's predict and upload routes (hypothesis).

A real ``mlaas4hep serve`` process on 127.0.0.1 (with a Higgs-like torch bundle and the jagged ttH-like
one) receives requests built from the routes' request models, mutated and mixed with junk: wrong types,
NaN and infinities, huge and negative shapes, unknown models, odd model references, random headers,
random bytes and random tarballs (links, devices, ``..`` paths). The properties: the service never
answers 5xx, every refusal is a 4xx with an ``error`` message, and it is alive and still scores
correctly afterwards. Example counts and time are bounded (``FUZZ_EXAMPLES`` examples per route).
"""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
import urllib.parse
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.serving.client import Client

try:
    from serving_support import ServerProcess, build_bundles, http_call
except ImportError:  # tests/ imported as a package
    from tests.serving_support import ServerProcess, build_bundles, http_call

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKEN, OTHER = "fuzz-token-0123", "other-token-4567"
FUZZ_EXAMPLES = int(os.environ.get("MLAAS4HEP_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------ the server

def call(server, method: str, path: str, body: bytes | None = None, auth: str | None = f"Bearer {TOKEN}",
         ctype: str | None = "application/json", headers: dict | None = None) -> tuple[int, object]:
    h = dict(headers or {})
    if auth is not None:
        h["Authorization"] = auth
    return http_call(server.url, method, path, body, headers=h, content_type=ctype)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    bundles = build_bundles(tmp_path_factory.getbasetemp() / "serving-bundles", keys=("higgs-torch", "tth-torch"))
    folder = tmp_path_factory.mktemp("serving-fuzz")
    (folder / "tokens.json").write_text(json.dumps({"fuzzer": TOKEN, "other": OTHER}))
    server = ServerProcess(folder / "store", folder / "tokens.json", folder / "server.log",
                           "--max-upload", str(4 << 20)).start()
    try:
        c = Client(server.url, token=TOKEN)
        server.bundles = bundles
        server.refs = {}
        for key, path in bundles.items():
            c.upload(path)
            server.refs[key] = Bundle.load(path)
        c.upload(bundles["higgs-torch"], name="version-two")  # a model with two versions
        c.upload(bundles["higgs-torch"], name="version-two")
        Client(server.url, token=OTHER).upload(bundles["higgs-torch"], name="theirs")
        yield server
    finally:
        server.stop()


STATUSES: defaultdict[str, Counter] = defaultdict(Counter)  # route -> HTTP status -> count


def assert_no_5xx(route: str, status: int, payload, what) -> None:
    STATUSES[route][status] += 1
    assert status < 500, (status, payload, what)
    if status >= 400:
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), (status, payload, what)


# ------------------------------------------------------------------------------------------ strategies

_floats = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 10) | st.integers(-2**70, 2**70)
_finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000)
_scalars = st.none() | st.booleans() | _floats | st.text(max_size=12)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)
_models = st.sampled_from(["higgs-torch", "tth-torch", "version-two", "other:theirs", "other/theirs",
                           "fuzzer:higgs-torch", "nobody:thing", "no-such-model", "", "..", "../../etc",
                           "a" * 400, "higgs-torch/../tth-torch", "%2e%2e", "x:y:z"]) | st.text(max_size=20)
_good_models = st.sampled_from(["higgs-torch", "version-two", "fuzzer:higgs-torch", "fuzzer/version-two"])
_versions = st.none() | st.sampled_from(["1", "2", "latest", "prod", "0", "-1", "99", "v1"]) | st.integers(-5, 5)
_good_versions = st.sampled_from([None, "1", "2", "latest", 1])


@st.composite
def _mutated(draw, valid):
    """A valid body with one part replaced by junk, removed, or one element added."""
    body = copy.deepcopy(draw(valid))  # never mutate objects shared with the strategy (st.just values)
    node, parent, key = body, None, None
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):  # walk to a random part
        parent = node
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        node = node[key]
    op = draw(st.sampled_from(["replace", "drop", "add"]))
    if parent is None:
        return draw(_json) if op == "replace" else body
    if op == "replace":
        parent[key] = draw(_json | _floats)
    elif op == "drop":
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(_json)
    else:
        parent.append(draw(_json | _floats))
    return body


def _fuzzed(valid):
    """Valid bodies, mutated ones and junk, in about equal parts."""
    return st.one_of(valid, _mutated(valid), _json)


def _json_bodies(features: list[str]):
    n = len(features)
    row = st.lists(_finite, min_size=n, max_size=n)
    valid = st.fixed_dictionaries(
        {"model": _good_models, "values": row | st.lists(row, min_size=1, max_size=4)},
        optional={"keys": st.just(features).map(list) | st.permutations(features), "version": _good_versions})
    # keys and values must agree: permute both together when keys are permuted
    def align(body):
        keys = body.get("keys")
        if keys is not None and keys != features:
            order = [features.index(k) for k in keys]
            rows = body["values"] if isinstance(body["values"][0], list) else [body["values"]]
            body["values"] = [[r[i] for i in order] for r in rows]
        if body.get("version") is None:
            body.pop("version", None)
        return body
    return _fuzzed(valid.map(align))


def _infer_bodies(n_features: int):
    def tensor(rows):
        return {"name": "features", "shape": [len(rows), n_features], "datatype": "FP32",
                "data": [x for r in rows for x in r]}
    rows = st.lists(st.lists(_finite, min_size=n_features, max_size=n_features), min_size=1, max_size=4)
    valid = st.builds(lambda rows, rid: {"inputs": [tensor(rows)], **({"id": rid} if rid else {})},
                      rows, st.none() | st.text(max_size=8))
    return _fuzzed(valid)


def _events_bodies(bundles: dict[str, Bundle]):
    """(model, body) pairs: raw events for one of the bundles, as columns or one object per event."""
    def events(key):
        branches = bundles[key].input_branches()
        jagged = set(bundles[key].specs.jkeys)

        def column(branch, n):
            if branch in jagged:
                return st.lists(st.lists(_finite, max_size=4), min_size=n, max_size=n)
            return st.lists(_finite, min_size=n, max_size=n)
        as_columns = st.integers(1, 3).flatmap(
            lambda n: st.fixed_dictionaries({b: column(b, n) for b in branches}))
        valid = st.fixed_dictionaries({"events": as_columns}, optional={"version": _good_versions.filter(
            lambda v: v is not None), "id": st.text(max_size=8)})
        return st.tuples(st.just(key), _fuzzed(valid))
    return st.sampled_from(sorted(bundles)).flatmap(events)


_TAR_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
              tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"S", b"x", b"g"]
_member_names = (st.sampled_from(["bundle/manifest.json", "manifest.json", "bundle/specs.json", "/etc/x",
                                  "../x", "bundle/../../x", "bundle/inference/model.onnx", "bundle", ".", "",
                                  "C:\\x", "bundle/\x00x"])
                 | st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))


@st.composite
def _tarballs(draw) -> bytes:
    buf = io.BytesIO()
    mode = draw(st.sampled_from(["w:gz", "w", "w:bz2", "w:xz"]))
    with tarfile.open(fileobj=buf, mode=mode, format=draw(st.sampled_from(
            [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))) as tar:
        for _ in range(draw(st.integers(0, 6))):
            info = tarfile.TarInfo(draw(_member_names))
            info.type = draw(st.sampled_from(_TAR_TYPES))
            data = b""
            if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE):
                data = draw(st.binary(max_size=200) | st.sampled_from([b"{}", b'{"name": "x", "features": []}',
                                                                          b"[]", b"null"]))
            info.size = len(data)
            info.linkname = draw(st.sampled_from(["", "/etc/passwd", "../../x", "bundle/manifest.json"]))
            info.mode = draw(st.integers(0, 0o7777))
            try:
                tar.addfile(info, io.BytesIO(data) if data else None)
            except (ValueError, UnicodeError):  # names the tar format cannot hold
                continue
    raw = buf.getvalue()
    cut = draw(st.none() | st.integers(0, max(0, len(raw))))
    return raw if cut is None else raw[:cut]


# ------------------------------------------------------------------------------------------ tests

def _encode(body) -> bytes:
    try:
        return json.dumps(body, allow_nan=True).encode()
    except (ValueError, TypeError):
        return b"null"


def test_fuzz_json_route(fuzz_server):
    features = fuzz_server.refs["higgs-torch"].features

    @FUZZ
    @given(body=_json_bodies(features))
    def check(body):
        status, payload = call(fuzz_server, "POST", "/json", _encode(body))
        assert_no_5xx("json", status, payload, body)
        if status == 200:
            assert isinstance(payload, list) and all(isinstance(v, float) for v in payload)

    check()
    print("json: HTTP statuses", dict(STATUSES["json"]))
    assert STATUSES["json"][200] > 0, STATUSES["json"]  # the examples reach the scoring code too


def test_fuzz_infer_route(fuzz_server):
    n_features = len(fuzz_server.refs["higgs-torch"].features)

    @FUZZ
    @given(body=_infer_bodies(n_features), model=_good_models | _models, version=_good_versions | _versions)
    def check(body, model, version):
        ref = urllib.parse.quote(model, safe=":/")
        path = f"/v2/models/{ref}" + (f"/versions/{urllib.parse.quote(str(version))}" if version is not None else "")
        status, payload = call(fuzz_server, "POST", path + "/infer", _encode(body))
        assert_no_5xx("infer", status, payload, (path, body))
        if status == 200:
            out = payload["outputs"][0]
            assert len(out["data"]) == out["shape"][0]

    check()
    print("infer: HTTP statuses", dict(STATUSES["infer"]))
    assert STATUSES["infer"][200] > 0, STATUSES["infer"]  # the examples reach the scoring code too


def test_fuzz_raw_events_route(fuzz_server):
    @FUZZ
    @given(model_body=_events_bodies(fuzz_server.refs), other=st.none() | _models,
           route=st.sampled_from(["/v2/models/{m}/events", "/raw/{m}", "/v2/models/{m}/versions/1/raw"]))
    def check(model_body, other, route):
        model, body = model_body
        path = route.format(m=urllib.parse.quote(other if other is not None else model, safe=":/"))
        status, payload = call(fuzz_server, "POST", path, _encode(body))
        assert_no_5xx("raw", status, payload, (path, body))
        if status == 200:
            assert len(payload["scores"]) == len(payload["keep"])

    check()
    print("raw: HTTP statuses", dict(STATUSES["raw"]))
    assert STATUSES["raw"][200] > 0, STATUSES["raw"]  # the examples reach the scoring code too


@st.composite
def _mutated_bundles(draw, members: list[tuple[str, bytes]]) -> bytes:
    """The real bundle's tarball with one member's content replaced, one evil member added, or one
    manifest field changed."""
    members = list(members)
    op = draw(st.sampled_from(["content", "evil", "manifest"]))
    evil = None
    if op == "content":
        i = draw(st.integers(0, len(members) - 1))
        members[i] = (members[i][0], draw(st.binary(max_size=300) | _json.map(_encode)))
    elif op == "manifest":
        i = next(i for i, (n, _) in enumerate(members) if n.endswith("/manifest.json"))
        manifest = json.loads(members[i][1])
        key = draw(st.sampled_from(sorted(manifest)))
        manifest[key] = draw(_json)
        members[i] = (members[i][0], _encode(manifest))
    else:
        evil = tarfile.TarInfo(draw(st.sampled_from(["bundle/x", "/tmp/fuzz-x", "bundle/../../fuzz-x"])))
        evil.type = draw(st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE,
                                          tarfile.REGTYPE]))
        evil.linkname = "/etc/passwd"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if evil is not None:
            tar.addfile(evil)
    return buf.getvalue()


def test_fuzz_upload_route(fuzz_server):
    root = fuzz_server.bundles["higgs-torch"]
    members = [(f"bundle/{p.relative_to(root)}", p.read_bytes()) for p in sorted(root.rglob("*"))
               if p.is_file() and "plots" not in p.parts]
    accepted = []

    @settings(FUZZ, max_examples=max(1, FUZZ_EXAMPLES // 2))
    @given(body=_tarballs() | st.binary(max_size=2000) | _mutated_bundles(members),
           name=st.none() | st.sampled_from(["fz-upload", "fz-2", "", "..", "../../etc", "a" * 400, "x:y", "a/b",
                                             "%2e%2e", " ", "-x", "fz-\u00e9"]) | st.text(max_size=20).map("fz-".__add__),
           ctype=st.sampled_from(["application/gzip", "application/octet-stream", "application/x-tar",
                                  "multipart/form-data; boundary=xyz", "text/plain", ""]))
    def check(body, name, ctype):
        # uploads land under fz-* names (or a refused name), so the other tests' models stay as they are
        query = f"?name={urllib.parse.quote(name or 'fz-upload')}"
        status, payload = call(fuzz_server, "POST", f"/upload{query}", body, ctype=ctype or None)
        assert_no_5xx("upload", status, payload, (name, ctype, body[:200]))
        if status == 201:  # a mutation that left a servable bundle: it must then really serve
            assert payload["name"].startswith("fz-"), payload
            accepted.append(payload["ref"])
            n = len(payload["features"])
            out = Client(fuzz_server.url, token=TOKEN).infer(payload["ref"], np.zeros((2, n), np.float32))
            assert out.shape == (2,)

    check()
    print("upload: HTTP statuses", dict(STATUSES["upload"]))
    assert STATUSES["upload"][400] > 0
    for ref in sorted(set(accepted)):
        Client(fuzz_server.url, token=TOKEN).delete(ref)


def test_fuzz_headers_and_raw_bytes(fuzz_server):
    routes = ["/json", "/v2/models/higgs-torch/infer", "/raw/higgs-torch", "/echo", "/upload",
              "/v2/models/higgs-torch/tags", "/v2/models/version-two/share"]

    @FUZZ
    @given(route=st.sampled_from(routes), body=st.binary(max_size=300) | _json.map(_encode),
           auth=st.none() | st.sampled_from([f"Bearer {TOKEN}", f"token {TOKEN}", "Bearer", "Basic abc", "",
                                             f"Bearer {TOKEN} extra", f"bearer {TOKEN}", f"Bearer {OTHER}x"])
           | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
    def check(route, body, auth):
        status, payload = call(fuzz_server, "POST", route, body, auth=auth)
        assert_no_5xx("headers", status, payload, (route, auth, body[:100]))

    check()
    print("headers: HTTP statuses", dict(STATUSES["headers"]))
    assert STATUSES["headers"][401] > 0 and sum(STATUSES["headers"].values()) > STATUSES["headers"][401]


def test_the_service_survived_the_fuzzing(fuzz_server):
    """After every fuzz test: alive, ready, correct scores, the same models, no 5xx counted."""
    c = Client(fuzz_server.url, token=TOKEN)
    assert fuzz_server.proc.poll() is None
    assert c.health() == {"live": True, "ready": True}
    b = fuzz_server.refs["tth-torch"]
    import uproot

    data = fuzz_server.bundles["tth-torch"].parent.parent / "data"
    events = uproot.open(sorted(data.glob("*.root"))[0])[b.specs.tree].arrays(b.input_branches(), entry_stop=200)
    np.testing.assert_allclose(c.predict_events("tth-torch", events), b.predict_arrays(events)[0], atol=1e-5, rtol=0)
    refs = {m["ref"] for m in c.models()}
    assert {"fuzzer:higgs-torch", "fuzzer:tth-torch", "fuzzer:version-two"} <= refs, refs
    assert c.metadata("higgs-torch")["versions"] == ["1"] and c.metadata("version-two")["versions"] == ["1", "2"]
    text = c.request("GET", "/metrics")
    five = [line for line in text.splitlines() if 'status="5' in line and not line.startswith("#")]
    assert five == [], five
    assert "Traceback" not in fuzz_server.log_path.read_text(errors="replace")


def test_openapi_schema_lists_the_routes(fuzz_server):
    status, schema = call(fuzz_server, "GET", "/openapi.json")
    assert status == 200 and schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [("/json", "post"), ("/upload", "post"), ("/models", "get"), ("/delete/{model}", "delete"),
                         ("/params/{model}", "get"), ("/v2", "get"), ("/v2/health/live", "get"),
                         ("/v2/health/ready", "get"), ("/v2/models/{model}", "get"),
                         ("/v2/models/{model}/infer", "post"), ("/v2/models/{model}/versions/{version}/infer", "post"),
                         ("/v2/models/{model}/events", "post"), ("/raw/{model}", "post"), ("/metrics", "get"),
                         ("/echo", "post")]:
        assert method in paths.get(path, {}), (path, sorted(paths))
    components = schema["components"]["schemas"]
    for name in ("JsonRequest", "InferRequest", "EventsRequest", "ErrorResponse"):
        assert name in components, sorted(components)
    body = paths["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/InferRequest")
    # the schema is not public
    assert call(fuzz_server, "GET", "/openapi.json", auth=None)[0] == 401
