"""The inference service serving multi-class and regression bundles end to end.

A module fixture writes the ``tth_tasks`` example (ttH, tt+bb, tt+light with generator truth), trains a
three-class PyTorch model, a two-target PyTorch regression and a three-class Deep Sets model of the objects
layout on it (one epoch), starts a real
``mlaas4hep serve`` on 127.0.0.1 and uploads both. What every route answers (OIP ``infer``, TFaaS ``/json``,
the raw-events route, ``predict-remote``) is compared with what the notebook computes from the same bundle
(``Bundle.predict_arrays``) and with ``mlaas4hep predict``; tritonclient reads the [N, W] output.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uproot

pytest.importorskip("fastapi")
from serving_support import ServerProcess, http_call  # noqa: E402

from mlaas4hep_lab.bundle import Bundle  # noqa: E402
from mlaas4hep_lab.serving.client import Client, ServiceError, tar_directory  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

TOKEN = "alice-tasks-token-0123"
RTOL, ATOL = 1e-5, 1e-6
ROWS = 100  # events per OIP or /json request (the service's body limit is 1 MiB)
MODELS = {  # served name -> (template, params file, targets, layout)
    "tth-classes": ("torch_multiclass", "params.json", None, "flat"),
    "tth-top": ("torch_regression", "params_regression.json", ["GenTop_pt", "GenTop_mass"], "flat"),
    # the objects layout: each collection a set of objects (Deep Sets), served from the same flat features
    "tth-sets": ("torch_deepsets", "params.json", None, "objects"),
}
TENSORS = {"tth-classes": ("probabilities", 3), "tth-top": ("targets", 2), "tth-sets": ("probabilities", 3)}


@dataclass
class Model:
    path: Path                # the bundle folder
    bundle: Bundle            # loaded locally: what the notebook computes
    events: object            # raw events (the branches the bundle needs)
    X: np.ndarray             # their model inputs
    expected: np.ndarray      # Bundle.predict_arrays of those events, [N, W]
    keep: np.ndarray


@dataclass
class Served:
    server: ServerProcess
    data: Path
    models: dict[str, Model]

    def client(self) -> Client:
        return Client(self.server.url, token=TOKEN)


def _train(data: Path, out: Path, template: str, params_file: str, targets, layout: str) -> Path:
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    params = json.loads((data / params_file).read_text())
    params.update(chunk_size=1000, epochs=1, layout=layout)
    if targets:
        params["target"] = targets
    inputs = load_inputs(data / "files.txt", None if targets else data / "labels.txt", params,
                         data / "preproc.json")
    train(inputs, ensure_specs(inputs, progress=False), template_path(template), out, progress=False, plots=False)
    return out / "bundle"


def _events(bundle: Bundle, data: Path, n: int = 150):
    import awkward as ak

    return ak.concatenate([uproot.open(f)[bundle.specs.tree].arrays(bundle.input_branches(), entry_stop=n)
                           for f in sorted(data.glob("*.root"))])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    from mlaas4hep_lab.data.datasets import tth_tasks

    base = tmp_path_factory.mktemp("serving-tasks")
    data = base / "data"
    tth_tasks(data, n_events=3000)
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"alice": TOKEN}))
    server = ServerProcess(base / "store", tokens, base / "server.log").start()
    try:
        models = {}
        for name, (template, params_file, targets, layout) in MODELS.items():
            path = _train(data, base / name, template, params_file, targets, layout)
            Client(server.url, token=TOKEN).upload(path, name=name)
            bundle = Bundle.load(path)
            events = _events(bundle, data)
            X = bundle.vectorize(events)[0]
            expected, keep = bundle.predict_arrays(events)
            models[name] = Model(path, bundle, events, X, expected, keep)
        yield Served(server, data, models)
    finally:
        server.stop()


def _post(served: Served, path: str, body) -> tuple[int, object]:
    return http_call(served.server.url, "POST", path, json.dumps(body).encode(), token=TOKEN)


def _infer_body(X: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32",
                        "data": X.reshape(-1).tolist()}], **extra}


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("name", list(MODELS))
def test_metadata_names_the_output_and_its_width(served, name):
    m = served.models[name]
    tensor, width = TENSORS[name]
    assert m.expected.shape == (len(m.X), width) and m.bundle.output_names == served.client().output_names(name)
    meta = served.client().metadata(name)
    assert meta["outputs"] == [{"name": tensor, "datatype": "FP32", "shape": [-1, width],
                                "parameters": {"columns": m.bundle.output_names}}]
    assert meta["task"] == m.bundle.task.kind and meta["columns"] == m.bundle.output_names
    assert meta["inputs"][0]["shape"] == [-1, len(m.bundle.features)]


@pytest.mark.parametrize("name", list(MODELS))
def test_oip_infer_answers_one_row_major_tensor(served, name):
    m = served.models[name]
    tensor, width = TENSORS[name]
    X, expected = m.X[:ROWS], m.expected[:ROWS]
    status, answer = _post(served, f"/v2/models/{name}/infer", _infer_body(X, id="r1"))
    assert status == 200, answer
    assert answer["id"] == "r1" and answer["model_version"] == "1"
    [out] = answer["outputs"]
    assert out["name"] == tensor and out["shape"] == [ROWS, width] and out["datatype"] == "FP32"
    assert len(out["data"]) == ROWS * width
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), expected, rtol=RTOL, atol=ATOL)
    # the client gives [N, W]; requesting the output by its name works, another name is refused
    np.testing.assert_allclose(served.client().infer(name, X), expected, rtol=RTOL, atol=ATOL)
    status, answer = _post(served, f"/v2/models/{name}/infer", _infer_body(m.X[:3], outputs=[{"name": tensor}]))
    assert status == 200 and answer["outputs"][0]["shape"] == [3, width], answer
    status, answer = _post(served, f"/v2/models/{name}/infer", _infer_body(m.X[:3], outputs=[{"name": "score"}]))
    assert status == 400 and tensor in answer["error"], answer
    status, answer = _post(served, f"/v2/models/{name}/infer", _infer_body(m.X[:0]))
    assert status == 200 and answer["outputs"][0]["shape"] == [0, width] and answer["outputs"][0]["data"] == []


@pytest.mark.parametrize("name", list(MODELS))
def test_tfaas_json_answers_a_list_per_event(served, name):
    m = served.models[name]
    width = TENSORS[name][1]
    keys = m.bundle.features[::-1]  # by name, in any order
    body = {"model": name, "keys": keys, "values": m.X[:ROWS, ::-1].tolist()}
    status, answer = _post(served, "/json", body)
    assert status == 200 and len(answer) == ROWS and all(len(row) == width for row in answer), answer
    np.testing.assert_allclose(answer, m.expected[:ROWS], rtol=RTOL, atol=ATOL)
    one = served.client().predict(name, m.X[:1])
    assert one.shape == (1, width)
    np.testing.assert_allclose(one, m.expected[:1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(MODELS))
def test_raw_events_answer_the_bundles_outputs(served, name):
    import awkward as ak

    m = served.models[name]
    scores, keep = served.client().predict_events(name, m.events, with_keep=True, batch_size=200)
    assert scores.shape == m.expected.shape
    np.testing.assert_allclose(scores, m.expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(keep, m.keep)
    # one object per event, on the raw route: the values come with their names
    rows = ak.to_list(m.events[:4])
    status, answer = _post(served, f"/raw/{name}", {"events": rows})
    assert status == 200, answer
    assert answer["outputs"] == m.bundle.output_names
    np.testing.assert_allclose(answer["scores"], m.expected[:4], rtol=RTOL, atol=ATOL)


def test_predict_remote_writes_the_columns_of_mlaas4hep_predict(served, tmp_path, capsys):
    from mlaas4hep_lab.cli import main

    files = sorted(str(p) for p in served.data.glob("*.root"))
    for name, m in served.models.items():
        remote, local = tmp_path / f"{name}-remote.csv", tmp_path / f"{name}-local.csv"
        assert main(["predict-remote", name, "--url", served.server.url, "--token", TOKEN, "--files", *files,
                     "--out", str(remote), "--batch-size", "700"]) == 0
        assert main(["predict", str(m.path), "--files", *files, "--out", str(local)]) == 0
        capsys.readouterr()
        got, want = list(csv.DictReader(remote.open())), list(csv.DictReader(local.open()))
        assert list(got[0]) == list(want[0]) and len(got) == len(want) == 3000
        assert [c for c in m.bundle.output_names if c in got[0]] == m.bundle.output_names
        for column in (*m.bundle.output_names, "passes_cuts"):
            np.testing.assert_allclose([float(r[column]) for r in got], [float(r[column]) for r in want],
                                       rtol=RTOL, atol=ATOL, err_msg=column)


def test_tritonclient_reads_the_output_tensor(served):
    import tritonclient.http as httpclient  # Triton's own client, with its defaults: binary in and out

    m = served.models["tth-classes"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    triton = httpclient.InferenceServerClient(served.server.url.split("//", 1)[1])
    try:
        meta = triton.get_model_metadata("tth-classes", headers=headers)
        assert meta["outputs"][0]["name"] == "probabilities" and meta["outputs"][0]["shape"] == [-1, 3]
        X = np.ascontiguousarray(m.X[:50], dtype=np.float32)
        features = httpclient.InferInput("features", list(X.shape), "FP32")
        features.set_data_from_numpy(X)
        result = triton.infer("tth-classes", [features], headers=headers,
                              outputs=[httpclient.InferRequestedOutput("probabilities")])
        probabilities = result.as_numpy("probabilities")
    finally:
        triton.close()
    assert probabilities.shape == (50, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, m.expected[:50], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_an_upload_whose_outputs_the_model_does_not_give_is_refused(served, tmp_path):
    """The upload's test prediction checks the export against the manifest: 4 classes declared, 3 given."""
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(served.models["tth-classes"].path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["task"]["classes"] = ["ttH", "ttbb", "ttlf", "ttcc"]
    manifest["outputs"] = manifest["task"]["outputs"] = [f"p_{c}" for c in manifest["task"]["classes"]]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServiceError) as err:
        served.client().upload(folder, name="four-classes")
    assert err.value.status == 400 and "expected [8, 4]" in err.value.error, err.value.error
    # outputs that do not follow the task are refused too, before the model is run
    manifest["outputs"] = ["a", "b"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    status, answer = http_call(served.server.url, "POST", "/upload?name=bad-outputs", tar_directory(folder),
                               token=TOKEN, content_type="application/gzip")
    assert status == 400 and "manifest 'outputs'" in answer["error"], answer
    assert {"four-classes", "bad-outputs"}.isdisjoint(m["name"] for m in served.client().models())
