"""The objects layout (params "layout": "objects"): each collection of jagged branches as a set of objects
[n, k, C] with a mask, beside the flat inputs, checked against the values written to the ROOT files; the
DeepSets and attention templates train on it and their bundles predict what the trainer scored; a model
written for the other layout is refused naming model.py."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.objects import ObjectsLayout
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.errors import ConfigError, ModelFileError
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.model_file import template_path


@pytest.fixture(scope="module")
def tth_small(tmp_path_factory):
    return datasets.tth(tmp_path_factory.mktemp("tth_objects"), n_events=4000)


def inputs_of(ds, **extra):
    params = json.loads(ds.params_json.read_text())
    params.update({"verbose": 0, "chunk_size": 1500, "layout": "objects", **extra})
    return load_inputs(ds.files_txt, ds.labels_txt, params, ds.preproc_json)


def layout_of(inputs, specs) -> ObjectsLayout:
    p = inputs.params
    return ObjectsLayout.from_specs(specs, p.normalization, p.missing_values, p.collections)


@pytest.mark.parametrize("padding", ["multiplicity", "mask"])
def test_collections_are_sets_of_objects_with_the_files_multiplicities(tth_small, padding):
    inputs = inputs_of(tth_small, padding=padding)
    specs = ensure_specs(inputs, progress=False)
    layout = layout_of(inputs, specs)
    jets = next(c for c in layout.collections if c.name == "Jet")
    assert {"Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass"} <= set(jets.branches)
    shapes = layout.shapes()
    assert shapes["Jet"] == (specs.jdim["Jet_pt"], len(jets.branches)) and shapes["Jet_mask"] == (jets.k,)
    assert not any("[" in specs.features[i] or specs.features[i].startswith("mask(") for i in layout.flat_columns)
    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
        chunk = stream.build(0)
    named = layout.split(chunk.X)
    assert set(named) == set(shapes)
    assert all(np.array_equal(v, named[k]) for k, v in chunk.named_inputs().items())   # what the stream gives
    for j, c in ((0, 0), (jets.k - 1, len(jets.branches) - 1)):
        column = specs.features.index(f"{jets.branches[c]}[{j}]")
        np.testing.assert_array_equal(named["Jet"][:, j, c], chunk.X[:, column])
    # the mask is the multiplicity written to the files, clipped to k
    counts = np.empty(len(chunk), np.int64)
    for i, path in enumerate(inputs.files):
        n_jet = uproot.open(path)["events"]["nJet"].array(library="np")
        rows = chunk.file_index == i
        counts[rows] = n_jet[chunk.entry[rows]]
    expected = np.arange(jets.k)[None, :] < np.minimum(counts, jets.k)[:, None]
    np.testing.assert_array_equal(named["Jet_mask"], expected)
    # what the chunk mask says, and what a round trip through the manifest gives
    real = chunk.mask[:, jets.columns.reshape(-1)].reshape(len(chunk), jets.k, -1).any(axis=2)
    np.testing.assert_array_equal(named["Jet_mask"], real)
    again = ObjectsLayout.from_dict(json.loads(json.dumps(layout.to_dict()))).split(chunk.X)
    assert all(np.array_equal(again[k], named[k]) for k in named)


def test_declared_collections_and_their_errors(tth_small):
    inputs = inputs_of(tth_small, collections={"J": ["Jet_pt", "Jet_eta"]})
    specs = ensure_specs(inputs, progress=False)
    layout = layout_of(inputs, specs)
    declared = next(c for c in layout.collections if c.name == "J")
    assert declared.branches == ("Jet_eta", "Jet_pt")
    assert any("Jet_phi" in c.branches for c in layout.collections if c.name != "J")
    mixed = inputs_of(tth_small, collections={"Mixed": ["Jet_pt", "Muon_pt"]})
    with pytest.raises(ConfigError, match="do not have the same number of values in every event"):
        layout_of(mixed, ensure_specs(mixed, progress=False))
    nothing = inputs_of(tth_small, collections={"X": ["NoSuch_*"]})
    with pytest.raises(ConfigError, match="match no jagged feature branch"):
        layout_of(nothing, ensure_specs(nothing, progress=False))
    zeros = inputs_of(tth_small, padding="zeros")
    with pytest.raises(ConfigError, match="tell 'Electron' objects from padding"):
        layout_of(zeros, ensure_specs(zeros, progress=False))


FLAT_TORCH = '''
from torch import nn

def model(idim):
    return nn.Sequential(nn.Linear(idim, 8), nn.ReLU(), nn.Linear(8, 1))
'''


@pytest.mark.slow
@pytest.mark.parametrize("template", ["torch_deepsets", "torch_attention", "keras_deepsets"])
def test_objects_templates_train_and_their_bundles_predict_what_was_scored(tth_small, tmp_path, template):
    pytest.importorskip(template.split("_")[0])
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.training.workflow import train

    inputs = inputs_of(tth_small, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    out = train(inputs, specs, template_path(template), tmp_path / "out", progress=False, plots=False)
    assert 0.5 < out.metrics["auc"] <= 1.0
    bundle = Bundle.load(out.bundle)
    assert bundle.manifest["layout"]["layout"] == "objects"
    assert bundle.manifest["layout"]["inputs"]["Jet"][1:] == list(layout_of(inputs, specs).shapes()["Jet"])
    test = out.result.test
    arrays = uproot.open(inputs.files[0])["events"].arrays(bundle.input_branches())
    scores, _ = bundle.predict_arrays(arrays)
    mine = test["file_index"] == 0
    np.testing.assert_allclose(scores[test["entry"][mine]], test["score"][mine], rtol=1e-4, atol=1e-5)
    # the export on the named inputs, for programs that build the sets themselves, gives the same scores
    named = next(e for e in bundle.manifest["inference"]["exports"] if e["format"] == "onnx-named-inputs")
    assert named["inputs"]["Jet_mask"] == bundle.manifest["layout"]["inputs"]["Jet_mask"]
    import onnxruntime as ort

    X = bundle.vectorize(arrays)[0]
    split = bundle.layout.split(X)
    session = ort.InferenceSession(str(bundle.path / "inference" / "model_named_inputs.onnx"))
    assert sorted(i.name for i in session.get_inputs()) == sorted(split)
    got = session.run([named["output"]], {i.name: split[i.name] for i in session.get_inputs()})[0]
    np.testing.assert_allclose(got.reshape(-1), scores.reshape(-1), rtol=1e-4, atol=1e-5)


def test_a_model_for_the_other_layout_is_refused_naming_model_py(tth_small, tmp_path):
    pytest.importorskip("torch")
    from mlaas4hep_lab.training.loop import Trainer
    from mlaas4hep_lab.training.model_file import load_model_file

    inputs = inputs_of(tth_small)
    specs = ensure_specs(inputs, progress=False)
    flat = tmp_path / "flat.py"
    flat.write_text(FLAT_TORCH)
    with pytest.raises(ModelFileError, match=r"flat.py line 5: .*receives the shapes of the named inputs"):
        load_model_file(flat, specs.n_features, inputs=layout_of(inputs, specs).shapes())
    flat.write_text(FLAT_TORCH.replace("def model(idim):", "def model(shapes):\n    idim = shapes['flat'][0]"))
    user = load_model_file(flat, specs.n_features, inputs=layout_of(inputs, specs).shapes())
    with pytest.raises(ModelFileError, match=r"flat.py: .*dict of named inputs"):
        Trainer(inputs, specs, user, tmp_path / "out")
    flat_inputs = inputs_of(tth_small, layout="flat")
    flat_specs = ensure_specs(flat_inputs, progress=False)
    with pytest.raises(ModelFileError, match='torch_deepsets.py line .* needs params "layout": "objects"'):
        load_model_file(template_path("torch_deepsets"), flat_specs.n_features)


def test_tree_models_take_no_objects(tth_small, tmp_path):
    pytest.importorskip("sklearn")
    from mlaas4hep_lab.training.loop import Trainer
    from mlaas4hep_lab.training.model_file import load_model_file

    inputs = inputs_of(tth_small)
    specs = ensure_specs(inputs, progress=False)
    user = load_model_file(template_path("sklearn"), specs.n_features)
    with pytest.raises(ConfigError, match="objects layout feeds each collection"):
        Trainer(inputs, specs, user, tmp_path / "out")


def test_split_is_the_straightforward_construction_on_random_rows():
    from mlaas4hep_lab.data.objects import Collection

    rng = np.random.default_rng(0)
    X = rng.random((50, 9)).astype(np.float32)
    X[:, 8] = rng.integers(0, 4, 50) / 3.0          # a multiplicity normalised with min 0, max 3
    cols = np.array([[0, 1], [2, 3], [4, 5]])
    layout = ObjectsLayout(np.array([6, 7, 8]), (Collection("J", ("a", "b"), 3, cols, (8, 1 / 3.0, 0.0)),))
    named = layout.split(X)
    np.testing.assert_array_equal(named["flat"], X[:, [6, 7, 8]])
    np.testing.assert_array_equal(named["J"], np.stack([X[:, [0, 1]], X[:, [2, 3]], X[:, [4, 5]]], axis=1))
    np.testing.assert_array_equal(named["J_mask"], np.arange(3)[None, :] < np.rint(X[:, 8] * 3)[:, None])
    assert ak.all(named["J_mask"].sum(axis=1) == np.minimum(np.rint(X[:, 8] * 3), 3))
