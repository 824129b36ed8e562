"""ONNX helpers of the tree backends (scikit-learn and XGBoost): the converter's graph reduced to one output
``score`` (:func:`onnx_with_score`, :func:`onnx_with_outputs`), checked against the model's own predictions
with onnxruntime before it is written (:func:`export_scored_onnx`, :func:`write_verified_onnx`); and a
workaround that lets skl2onnx convert HistGradientBoosting models (:func:`_int_missing_flags`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras

__all__ = ["ONNX_INPUT", "ONNX_OUTPUT", "export_scored_onnx", "onnx_with_score", "onnx_with_outputs",
           "write_verified_onnx"]

_ONNX_TOLERANCE = 1e-4
ONNX_INPUT = "features"
ONNX_OUTPUT = "score"


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for coll in (graph.value_info, graph.output, graph.initializer):
        for item in coll:
            if item.name == old:
                item.name = new


def _copy_for_score(model: Any, source: str) -> tuple[Any, Any, Any, Any]:
    """A copy of ``model`` in which the name ``score`` is free; with onnx's helper and TensorProto."""
    onnx = extras.onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {name for node in out.graph.node for name in (*node.input, *node.output)}
    if ONNX_OUTPUT in used and ONNX_OUTPUT != source:  # an internal tensor already has the name
        _rename_tensor(out.graph, ONNX_OUTPUT, "mlaas4hep_internal_score")
    return out, out.graph, onnx.helper, onnx.TensorProto


def _only_output(graph: Any, helper: Any, tp: Any, nodes: list, current: str, shape: list) -> None:
    nodes.append(helper.make_node("Identity", [current], [ONNX_OUTPUT]))
    graph.node.extend(nodes)
    # one output, as the Keras and torch exports have: the converter's label/probabilities go
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(ONNX_OUTPUT, tp.FLOAT, shape))


def onnx_with_score(model: Any, source: str, *, column: int | None, sigmoid: bool, clip: bool = False) -> Any:
    """A copy of an ONNX model whose only output is ``score`` float32[N]: column ``column`` of the tensor
    ``source`` (or ``source`` flattened), through a sigmoid when ``sigmoid``, clipped to [0, 1] when ``clip``."""
    out, graph, helper, tp = _copy_for_score(model, source)
    nodes, current = [], source
    if column is not None:
        graph.initializer.append(helper.make_tensor("mlaas4hep_column", tp.INT64, [], [int(column)]))
        nodes.append(helper.make_node("Gather", [current, "mlaas4hep_column"], ["mlaas4hep_gathered"], axis=1))
        current = "mlaas4hep_gathered"
    else:
        graph.initializer.append(helper.make_tensor("mlaas4hep_shape", tp.INT64, [1], [-1]))
        nodes.append(helper.make_node("Reshape", [current, "mlaas4hep_shape"], ["mlaas4hep_flat"]))
        current = "mlaas4hep_flat"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [current], ["mlaas4hep_sigmoid"]))
        current = "mlaas4hep_sigmoid"
    if clip:
        graph.initializer.extend([helper.make_tensor("mlaas4hep_lo", tp.FLOAT, [], [0.0]),
                                  helper.make_tensor("mlaas4hep_hi", tp.FLOAT, [], [1.0])])
        nodes.append(helper.make_node("Clip", [current, "mlaas4hep_lo", "mlaas4hep_hi"], ["mlaas4hep_clipped"]))
        current = "mlaas4hep_clipped"
    _only_output(graph, helper, tp, nodes, current, [None])
    return out


def onnx_with_outputs(model: Any, source: str, *, width: int, softmax: bool = False,
                      mapping: np.ndarray | None = None) -> Any:
    """A copy of an ONNX model whose only output is ``score`` float32[N, width]: the tensor ``source``
    ([N, C]), through a softmax over its columns when ``softmax``, multiplied by ``mapping`` (a 0/1 matrix
    [C, width] that puts column i where it belongs: a class index) when given."""
    out, graph, helper, tp = _copy_for_score(model, source)
    nodes, current = [], source
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], ["mlaas4hep_softmax"], axis=1))
        current = "mlaas4hep_softmax"
    if mapping is not None:
        mapping = np.asarray(mapping, dtype=np.float32)
        graph.initializer.append(helper.make_tensor("mlaas4hep_mapping", tp.FLOAT, list(mapping.shape),
                                                    mapping.reshape(-1).tolist()))
        nodes.append(helper.make_node("MatMul", [current, "mlaas4hep_mapping"], ["mlaas4hep_mapped"]))
        current = "mlaas4hep_mapped"
    graph.initializer.append(helper.make_tensor("mlaas4hep_shape", tp.INT64, [2], [-1, int(width)]))
    nodes.append(helper.make_node("Reshape", [current, "mlaas4hep_shape"], ["mlaas4hep_columns"]))
    _only_output(graph, helper, tp, nodes, "mlaas4hep_columns", [None, int(width)])
    return out


def export_scored_onnx(model: Any, source: str, *, variants: tuple[tuple[int | None, bool], ...],
                       predict: Any, X: np.ndarray, directory: Path, what: str, clip: bool = False
                       ) -> dict[str, Any]:
    """Add the ``score`` output, trying each ``(column, sigmoid)`` variant in turn (converters differ
    in which column holds class 1 and whether a link function is applied), check it against
    ``predict(X)`` with onnxruntime and write ``directory/model.onnx`` only when they agree within 1e-4."""
    result: dict[str, Any] = {"format": None, "reason": f"no ONNX export for {what}"}
    for column, sigmoid in variants:
        scored = onnx_with_score(model, source, column=column, sigmoid=sigmoid, clip=clip)
        result = write_verified_onnx(scored, predict, X, directory, what)
        if result["format"] is not None:
            break
    return result


def write_verified_onnx(model: Any, predict: Any, X: np.ndarray, directory: Path, what: str) -> dict[str, Any]:
    """Run ``model`` with onnxruntime on ``X``, compare its ``score`` with ``predict(X)`` and write
    ``directory/model.onnx`` only when they have the same shape and agree within 1e-4 (times the largest
    ``|predict(X)|`` where that is above 1: regression targets in their own units, float32 sums)."""
    ort = extras.onnxruntime()
    payload = model.SerializeToString()
    try:
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
        got = session.run([ONNX_OUTPUT], {ONNX_INPUT: X})[0]
    except Exception as err:
        return {"format": None, "reason": f"the ONNX export of {what} does not run in onnxruntime: "
                                          f"{type(err).__name__}: {str(err)[:300]}"}
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(predict(X), dtype=np.float64)
    if got.shape != expected.shape:
        return {"format": None, "reason": f"the ONNX export of {what} gives outputs of shape {got.shape}, the "
                                          f"model {expected.shape}, on {len(X)} test rows; not exported"}
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    tolerance = _ONNX_TOLERANCE * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    if not diff <= tolerance:
        return {"format": None, "reason": f"the ONNX export of {what} differs from the model by {diff:.2g} "
                                          f"(> {tolerance:.2g}) on {len(X)} test rows; not exported"}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    path.write_bytes(payload)
    return {"format": "onnx", "path": str(path), "input": ONNX_INPUT, "output": ONNX_OUTPUT,
            "max_abs_diff": diff}


@contextlib.contextmanager
def _int_missing_flags():
    """skl2onnx 1.20 gives a leaf of a HistGradientBoosting tree the missing-value flag ``False`` (a Python
    bool), which protobuf 7 refuses in an integer-list attribute, so the conversion fails. During the
    conversion the flag is handed over as an int (0/1, what ONNX means by it); the export is verified
    against the estimator afterwards in any case."""
    try:
        module = importlib.import_module("skl2onnx.common.tree_ensemble")
    except ImportError:
        yield
        return
    original = getattr(module, "add_node", None)
    if original is None:
        yield
        return

    @functools.wraps(original)
    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        return original(*args, **kwargs)

    module.add_node = add_node
    try:
        yield
    finally:
        module.add_node = original
