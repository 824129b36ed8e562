"""The original TFaaS uploads that carry TensorFlow models, made servable.

TFaaS took a frozen TensorFlow graph (``model=@tf_model.pb``, a ``GraphDef``) with ``params=@params.json``
naming its ``inputNode`` and ``outputNode``, and a SavedModel directory as a tarball (``saved_model.pb``
plus ``variables/``). Here a frozen graph is converted to ONNX at upload (tf2onnx, with the keras extra's
TensorFlow) and then stored as any bare ONNX model of the form (:func:`.runtime.onnx_bundle`); a SavedModel
is wrapped, as it is, in a minimal bundle served by the TensorFlow runtime (:class:`.runtime.TFRuntime`).
Without TensorFlow, or without the nodes, the upload is refused (400) saying what to send instead.

The graph is checked before TensorFlow sees it: no file-system or Python-calling operation may appear in
it (the same list the TensorFlow runtime refuses), since the converter folds constants by running parts
of the graph. Feature names come from params ``features`` (or ``keys``); without them the inputs are
named ``f00, f01, ...`` and ``/json`` takes its ``keys`` as the input order (:func:`positional_features`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.errors import MissingExtraError
from mlaas4hep_lab.serving import BadRequest
from mlaas4hep_lab.serving.runtime import _TF_DENIED_OPS, _short, bare_features, generated_features

__all__ = ["TFAAS_SOURCES", "PositionalKeys", "is_onnx", "frozen_graph_to_onnx", "saved_model_root", "savedmodel_bundle",
           "generated_features", "positional_features", "write_minimal_bundle"]

TFAAS_SOURCES = ("tfaas-form", "tfaas-savedmodel")  # manifest "source" of the bundles the TFaaS forms make
_INSTEAD = "send an ONNX model, a SavedModel archive (.tar.gz of saved_model.pb and variables/) or a bundle"


def positional_features(manifest: dict[str, Any], features: list[str]) -> bool:
    """Whether a bundle's inputs were never named (a TFaaS form without ``features``): then ``/json`` takes
    its ``keys`` as the input order."""
    return manifest.get("source") in TFAAS_SOURCES and features == generated_features(len(features))


class PositionalKeys(dict):
    """The ``/json`` key orders (``LoadedModel.key_orders``) of a model whose inputs were never named: keys
    that are the generated names (``f0``...) are matched by name; any other keys give the input order
    (None: the values as sent), as TFaaS took them."""

    def __init__(self, features: list[str]):
        super().__init__()
        self.features = list(features)

    def get(self, keys, default=None):
        if len(keys) != len(self.features):
            raise BadRequest(f"{len(keys)} keys, but the model takes {len(self.features)} inputs (it was uploaded "
                             "without feature names, so its keys are taken in the order sent)")
        if set(keys) == set(self.features) and list(keys) != self.features:
            position = {k: i for i, k in enumerate(keys)}
            return np.array([position[f] for f in self.features])
        return None


def _tensorflow(what: str):
    try:
        return extras.tensorflow()
    except MissingExtraError:
        raise BadRequest(f"{what} needs TensorFlow on the server (pip install \"mlaas4hep-lab[keras]\"), which "
                         f"this one lacks; {_INSTEAD}") from None


def is_onnx(path: Path) -> bool:
    """Whether a file is an ONNX model with a graph (a GraphDef also parses as an empty ModelProto)."""
    onnx = extras.onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf at all
        return False
    return bool(model.graph.node) and model.ir_version > 0


def _node(name: Any, key: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"a TensorFlow frozen graph needs params.json with {key!r} (and 'inputNode'/'outputNode' "
                         f"both: the names of its input and output nodes, as TFaaS asked for them); or {_INSTEAD}")
    return name.strip().split(":")[0]


def frozen_graph_to_onnx(graph_file: Path, target: Path, params: dict[str, Any] | None) -> Path:
    """Convert a frozen ``GraphDef`` (the ``model`` file of TFaaS's form) to ONNX at ``target``, between the
    nodes params ``inputNode`` and ``outputNode``; the ONNX input and output keep those names. 400 when
    TensorFlow is missing, the nodes are not given or not in the graph, or the graph cannot be converted."""
    params = params or {}
    input_node, output_node = _node(params.get("inputNode"), "inputNode"), _node(params.get("outputNode"),
                                                                                  "outputNode")
    tf = _tensorflow("a TensorFlow frozen graph")
    graph = tf.compat.v1.GraphDef()
    try:
        graph.ParseFromString(graph_file.read_bytes())
    except Exception:
        graph.Clear()
    if not graph.node:
        raise BadRequest(f"the uploaded model is neither ONNX nor a TensorFlow frozen graph (GraphDef); {_INSTEAD}")
    nodes = {n.name: n for n in graph.node}
    for key, name in (("inputNode", input_node), ("outputNode", output_node)):
        if name not in nodes:
            placeholders = sorted(n.name for n in graph.node if n.op == "Placeholder")[:10]
            raise BadRequest(f"params {key} {name!r} is not a node of the graph (its inputs, Placeholder nodes: "
                             f"{placeholders})")
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    denied = sorted(ops & _TF_DENIED_OPS)
    if denied:
        raise BadRequest(f"the graph uses operations this service refuses: {denied}")
    tf2onnx = _tf2onnx()
    from mlaas4hep_lab.backends.base import quiet

    try:
        with quiet("tf2onnx", "tensorflow", "absl"):
            model, _ = tf2onnx.convert.from_graph_def(graph, input_names=[f"{input_node}:0"],
                                                      output_names=[f"{output_node}:0"])
    except Exception as err:  # tf2onnx and TensorFlow raise many kinds
        raise BadRequest(f"tf2onnx cannot convert the graph: {_short(err)}; {_INSTEAD}") from None
    _rename(model.graph, f"{input_node}:0", input_node)
    _rename(model.graph, f"{output_node}:0", output_node)
    target.write_bytes(model.SerializeToString())
    return target


def _tf2onnx():
    try:
        return extras.require("tf2onnx")
    except MissingExtraError:
        raise BadRequest(f"converting a TensorFlow frozen graph needs tf2onnx on the server (pip install "
                         f"\"mlaas4hep-lab[keras]\"); {_INSTEAD}") from None


def _rename(graph, old: str, new: str) -> None:
    """Rename a graph input or output (tf2onnx keeps TensorFlow's ``name:0``) everywhere it is used."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def saved_model_root(folder: Path) -> Path | None:
    """The SavedModel directory of an unpacked upload: ``folder`` itself or its one subfolder."""
    if (folder / "saved_model.pb").is_file():
        return folder
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "saved_model.pb").is_file():
        return entries[0]
    return None


def _signature(root: Path, params: dict[str, Any]) -> tuple[str, int | None, str]:
    """(input key, input width or None, output key) of a SavedModel's serving signature."""
    _tensorflow("a TensorFlow SavedModel")
    saved_model_pb2 = extras.require("tensorflow.core.protobuf.saved_model_pb2")

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((root / "saved_model.pb").read_bytes())
    except Exception as err:
        raise BadRequest(f"saved_model.pb is not a readable SavedModel: {_short(err)}") from None
    signatures = {k: v for mg in saved.meta_graphs for k, v in mg.signature_def.items() if not k.startswith("__")}
    sig = signatures.get("serving_default") or (next(iter(signatures.values())) if len(signatures) == 1 else None)
    if sig is None:
        raise BadRequest(f"the SavedModel has no serving_default signature (signatures: {sorted(signatures)})")
    inputs, outputs = dict(sig.inputs), dict(sig.outputs)
    key = params.get("inputNode") if params.get("inputNode") in inputs else (
        next(iter(inputs)) if len(inputs) == 1 else None)
    if key is None:
        raise BadRequest(f"the SavedModel signature takes inputs {sorted(inputs)}: name the one to feed with "
                         "params 'inputNode' (one input of shape [N, F] is served)")
    shape = inputs[key].tensor_shape
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank or len(dims) != 2:
        raise BadRequest(f"the SavedModel input {key!r} has shape {dims}; [N, F] is needed")
    out = next((o for o in (params.get("outputNode"), "score") if o in outputs), None)
    if out is None and len(outputs) == 1:
        out = next(iter(outputs))
    if out is None:
        raise BadRequest(f"the SavedModel has outputs {sorted(outputs)}: name the score with params 'outputNode'")
    return key, (dims[1] if dims[1] > 0 else None), out


def savedmodel_bundle(folder: Path, root: Path, name: str, params: dict[str, Any] | None = None,
                      labels: list[str] | None = None) -> Path:
    """A minimal bundle at ``folder`` around the SavedModel directory ``root`` (moved into it), served by
    the TensorFlow runtime; features from params ``features``/``keys`` or ``f00...`` from its input width."""
    params = params if isinstance(params, dict) else {}
    key, width, out = _signature(root, params)
    features = bare_features(params, width, "the SavedModel input")
    (folder / "inference").mkdir(parents=True)
    os.replace(root, folder / "inference" / "saved_model")
    manifest = {"name": name, "backend": "tensorflow", "source": "tfaas-savedmodel",
                "inference": {"format": "tf-savedmodel", "path": "inference/saved_model", "input": key, "output": out}}
    write_minimal_bundle(folder, manifest, list(features), params, labels)
    return folder


def write_minimal_bundle(folder: Path, manifest: dict[str, Any], features: list[str], params: dict[str, Any],
                         labels: list[str] | None) -> None:
    """specs.json (the features, no normalisation), params.json, preproc.json, tfaas_params.json and the
    manifest of a model that came without a bundle."""
    from mlaas4hep_lab.data.specs import Specs
    from mlaas4hep_lab.params import Params

    Specs(fkeys=list(features), jkeys=[], jdim={}, minv={}, maxv={}, normalization="none").save(folder / "specs.json")
    (folder / "params.json").write_text(json.dumps(Params(normalization="none").to_dict()))
    (folder / "preproc.json").write_text("{}")
    (folder / "tfaas_params.json").write_text(json.dumps(params))
    manifest = {"bundle_version": 1, "version": 1,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "features": list(features), "input_shape": [None, len(features)],
                "labels": {str(i): label for i, label in enumerate(labels)} if labels else {"1": "signal",
                                                                                            "0": "background"},
                **manifest}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
