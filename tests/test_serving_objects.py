"""The inference service taking an objects-layout model's named inputs on the Open Inference Protocol route.

A module fixture writes the ttH example, trains the Deep Sets template with ``"layout": "objects"`` (one
epoch), starts a real ``mlaas4hep serve`` on 127.0.0.1 and uploads the bundle. An ``infer`` request with the
named inputs (``flat``, each collection, each ``_mask``; built with ``bundle.layout.split``) must answer what
the ``features`` request and ``Bundle.predict_arrays`` answer; tritonclient sends them too; every malformed
named request is a 400 naming the input, after which the service still answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import uproot

pytest.importorskip("fastapi")
from serving_support import ServerProcess, http_call  # noqa: E402

from mlaas4hep_lab.bundle import Bundle  # noqa: E402
from mlaas4hep_lab.serving.client import Client  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKEN = "alice-objects-token-0123"
NAME = "tth-sets"
RTOL, ATOL = 1e-5, 1e-6
ROWS = 60
MASK_TYPES = {"BOOL": bool, "INT8": int, "UINT8": int, "INT32": int, "INT64": int, "FP32": float}


@dataclass
class Served:
    server: ServerProcess
    bundle: Bundle
    X: np.ndarray             # model inputs of some events (the flat features)
    named: dict               # the same rows as named inputs (bundle.layout.split)
    expected: np.ndarray      # Bundle.predict_arrays of those events


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    import awkward as ak

    from mlaas4hep_lab.data.datasets import tth
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    base = tmp_path_factory.mktemp("serving-objects")
    data = base / "data"
    tth(data, n_events=3000)
    params = json.loads((data / "params.json").read_text())
    params.update(layout="objects", chunk_size=1000, epochs=1)
    inputs = load_inputs(data / "files.txt", data / "labels.txt", params, data / "preproc.json")
    train(inputs, ensure_specs(inputs, progress=False), template_path("torch_deepsets"), base / "out",
          progress=False, plots=False)
    path = base / "out" / "bundle"
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"alice": TOKEN}))
    server = ServerProcess(base / "store", tokens, base / "server.log").start()
    try:
        Client(server.url, token=TOKEN).upload(path, name=NAME)
        bundle = Bundle.load(path)
        events = ak.concatenate([uproot.open(f)[bundle.specs.tree].arrays(bundle.input_branches(), entry_stop=40)
                                 for f in sorted(data.glob("*.root"))])
        X = bundle.vectorize(events)[0][:ROWS]
        expected = bundle.predict_arrays(events)[0][:ROWS]
        yield Served(server, bundle, X, bundle.layout.split(X), expected)
    finally:
        server.stop()


def _infer(served: Served, inputs: list[dict], **extra) -> tuple[int, object]:
    body = json.dumps({"inputs": inputs, **extra}).encode()
    return http_call(served.server.url, "POST", f"/v2/models/{NAME}/infer", body, token=TOKEN)


def _tensor(name: str, a: np.ndarray, datatype: str | None = None) -> dict:
    datatype = datatype or ("BOOL" if a.dtype == np.bool_ else "FP32")
    cast = MASK_TYPES.get(datatype, float) if a.dtype == np.bool_ else float
    return {"name": name, "shape": list(a.shape), "datatype": datatype, "data": [cast(v) for v in a.reshape(-1)]}


def _named(named: dict, **datatypes) -> list[dict]:
    return [_tensor(n, a, datatypes.get(n)) for n, a in named.items()]


def _scores(answer) -> np.ndarray:
    out = answer["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_named_inputs_answer_what_features_and_predict_arrays_answer(served):
    assert sorted(served.named) == sorted(served.bundle.layout.input_names) and len(served.named) >= 3
    status, by_features = _infer(served, [_tensor("features", served.X)])
    assert status == 200, by_features
    status, by_name = _infer(served, _named(served.named), id="named-1")
    assert status == 200, by_name
    assert by_name["id"] == "named-1" and by_name["outputs"][0]["name"] == by_features["outputs"][0]["name"]
    assert by_name["outputs"][0]["shape"] == by_features["outputs"][0]["shape"] == [len(served.X)]
    np.testing.assert_allclose(_scores(by_name), _scores(by_features), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_scores(by_name), served.expected, rtol=RTOL, atol=ATOL)
    # nested data, FP64/INT values and 0/1 masks in other datatypes are converted
    masks = {n: "INT8" if i % 2 else "FP32" for i, n in enumerate(n for n in served.named if n.endswith("_mask"))}
    nested = [dict(t, data=np.asarray(t["data"]).reshape(t["shape"]).tolist())
              for t in _named(served.named, flat="FP64", **masks)]
    status, answer = _infer(served, nested)
    assert status == 200, answer
    np.testing.assert_allclose(_scores(answer), served.expected, rtol=RTOL, atol=ATOL)


def test_tritonclient_sends_the_named_inputs(served):
    import tritonclient.http as httpclient  # Triton's own client, with its defaults: binary in and out

    headers = {"Authorization": f"Bearer {TOKEN}"}
    triton = httpclient.InferenceServerClient(served.server.url.split("//", 1)[1])
    try:
        inputs = []
        for name, a in served.named.items():
            tensor = httpclient.InferInput(name, list(a.shape), "BOOL" if a.dtype == np.bool_ else "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(a))
            inputs.append(tensor)
        result = triton.infer(NAME, inputs, headers=headers, outputs=[httpclient.InferRequestedOutput("score")])
        scores = result.as_numpy("score")
    finally:
        triton.close()
    np.testing.assert_allclose(scores, served.expected, rtol=RTOL, atol=ATOL)


def test_metadata_lists_the_named_inputs(served):
    status, meta = http_call(served.server.url, "GET", f"/v2/models/{NAME}", token=TOKEN)
    assert status == 200, meta
    assert [i["name"] for i in meta["inputs"]] == ["features"]
    shapes = served.bundle.layout.shapes()
    want = [{"name": n, "datatype": "BOOL" if n.endswith("_mask") else "FP32", "shape": [-1, *shapes[n]]}
            for n in shapes]
    assert meta["named_inputs"] == meta["parameters"]["named_inputs"] == want


def _bad_requests(named: dict) -> dict[str, tuple[list[dict], str]]:
    """case -> (inputs, a word the 400's message must hold)."""
    good = _named(named)
    mask = next(n for n in named if n.endswith("_mask"))
    collection = mask[: -len("_mask")]
    others = [t for t in good if t["name"] != collection]
    return {
        "missing": (others, collection),
        "unknown": (good + [_tensor("Jets", named[collection])], "Jets"),
        "mixed": (good + [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}], "features"),
        "shape": ([dict(t, shape=[t["shape"][0], t["shape"][1] + 1, *t["shape"][2:]]) if t["name"] == collection
                   else t for t in good], collection),
        "rows": ([_tensor("flat", named["flat"][:-1])] + [t for t in good if t["name"] != "flat"], "flat"),
        "datatype": ([dict(t, datatype="BYTES") if t["name"] == collection else t for t in good], collection),
        "bool-values": ([dict(t, datatype="BOOL", data=[True] * len(t["data"])) if t["name"] == "flat" else t
                         for t in good], "flat"),
        "mask-values": ([_tensor(mask, named[mask].astype(np.int64) * 2, "INT64") if t["name"] == mask else t
                         for t in good], mask),
        "non-finite": ([dict(t, data=[1e39] * len(t["data"])) if t["name"] == "flat" else t for t in good],
                       "flat"),  # beyond float32: JSON has no NaN or inf
    }


@pytest.mark.parametrize("case", ["missing", "unknown", "mixed", "shape", "rows", "datatype", "bool-values",
                                  "mask-values", "non-finite"])
def test_malformed_named_requests_are_400_naming_the_input(served, case):
    inputs, word = _bad_requests(served.named)[case]
    status, answer = _infer(served, inputs)
    assert status == 400, (case, status, answer)
    message = answer["error"]
    assert word in message and "\n" not in message, (case, message)
    status, answer = _infer(served, _named(served.named))  # the service still answers
    assert status == 200, answer
    np.testing.assert_allclose(_scores(answer), served.expected, rtol=RTOL, atol=ATOL)
