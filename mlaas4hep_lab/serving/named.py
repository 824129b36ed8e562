"""The named inputs of an objects-layout model on the Open Inference Protocol ``infer`` route.

A bundle trained with ``"layout": "objects"`` serves its main export on the flat ``features`` input, and
carries beside it ``inference/model_named_inputs.onnx`` (manifest ``inference.exports`` entry of format
``onnx-named-inputs``): the user's network on the named inputs ``flat`` (float32[N, F]), each collection
(float32[N, k, C]) and its ``<name>_mask`` (bool[N, k]). A request that sends all of those, one OIP input
each, is answered by that export with the same output tensor as a ``features`` request.

The export is loaded on the first named request only (:func:`named_runtime`) and kept with the loaded model,
with the same checks as any uploaded ONNX model (path inside the bundle, no external data; see
:func:`.runtime.onnx_session`) and the store's intra-op threads. Named requests do not go through the
dynamic batcher: each runs as one pass on the service's inference threads (their number bounds them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.serving import BadRequest
from mlaas4hep_lab.serving.runtime import Outputs, _inside, _scores, _short, onnx_session
from mlaas4hep_lab.serving.tensors import NUMERIC, as_float32

__all__ = ["NAMED_FORMAT", "NamedRuntime", "named_export", "named_inputs_info", "named_runtime", "is_named",
           "named_feeds"]

NAMED_FORMAT = "onnx-named-inputs"
_LOAD_LOCK = threading.Lock()


def named_export(bundle) -> dict[str, Any] | None:
    """``{"path", "shapes", "output"}`` of a bundle's named-input export, or None (a flat model, or an
    objects model whose export failed at training). Shapes come from the layout (without the event axis);
    the export's own ``inputs`` must agree with them."""
    layout = bundle.layout
    info = bundle.manifest.get("inference")
    if layout is None or not isinstance(info, dict):
        return None
    entry = next((e for e in info.get("exports") or [] if isinstance(e, dict) and e.get("format") == NAMED_FORMAT
                  and isinstance(e.get("path"), str) and e["path"]), None)
    if entry is None:
        return None
    root = Path(bundle.path).resolve()
    rel = Path(entry["path"])
    if rel.is_absolute():  # written at training time: the file is under inference/ in the bundle
        rel = Path("inference") / rel.name
    path = _inside(root, root / rel)
    if not path.is_file():
        return None
    shapes = {name: tuple(int(d) for d in shape) for name, shape in layout.shapes().items()}
    declared = entry.get("inputs")
    if isinstance(declared, dict):
        said = {str(n): tuple(s[1:]) if isinstance(s, list) else s for n, s in declared.items()}
        if said != shapes:
            raise BadRequest(f"the manifest's {NAMED_FORMAT} inputs {str(declared)[:200]} do not match its layout")
    return {"path": path, "shapes": shapes, "output": str(entry.get("output") or "")}


def named_inputs_info(bundle) -> dict[str, Any]:
    """What the store records of a version with named inputs for its metadata (nothing for other models)."""
    try:
        export = named_export(bundle)
    except (BadRequest, KeyError, TypeError, ValueError):
        return {}
    if export is None:
        return {}
    return {"named_inputs": [{"name": n, "datatype": "BOOL" if n.endswith("_mask") else "FP32",
                              "shape": [-1, *shape]} for n, shape in export["shapes"].items()]}


@dataclass
class NamedRuntime:
    """A loaded named-input export: ``predict({name: array})`` returns what the main runtime returns."""

    session: Any
    shapes: dict[str, tuple[int, ...]]
    output: str
    outputs: Outputs
    dtypes: dict[str, type]  # graph input -> numpy dtype it takes (unused inputs may be pruned by exporters)

    @classmethod
    def load(cls, export: dict[str, Any], outputs: Outputs, threads: int) -> NamedRuntime:
        session = onnx_session(export["path"], threads)
        shapes = export["shapes"]
        dtypes = {}
        for spec in session.get_inputs():
            if spec.name not in shapes:
                raise BadRequest(f"the {NAMED_FORMAT} export takes {spec.name!r}, which the layout does not name")
            dtypes[spec.name] = {"tensor(bool)": np.bool_, "tensor(double)": np.float64}.get(spec.type, np.float32)
        names = [o.name for o in session.get_outputs()]
        output = export["output"] if export["output"] in names else names[0]
        return cls(session, shapes, output, outputs, dtypes)

    def predict(self, feeds: dict[str, np.ndarray], n: int) -> np.ndarray:
        feed = {name: feeds[name].astype(dtype, copy=False) for name, dtype in self.dtypes.items()}
        return _scores(self.session.run([self.output], feed)[0], n, self.outputs)


def named_runtime(model, threads: int) -> NamedRuntime:
    """The named-input runtime of a loaded model, loaded on first use and kept on the model (blocking: call
    it in a thread). A model without one, or whose export cannot be loaded, is a 400 naming why."""
    cached = model.named
    if cached is None:
        with _LOAD_LOCK:
            cached = model.named
            if cached is None:
                try:
                    export = named_export(model.bundle)
                    if export is None:
                        raise BadRequest(f"model {model.ref!r} takes one input 'features' (it has no "
                                         f"{NAMED_FORMAT} export)")
                    cached = NamedRuntime.load(export, model.runtime.outputs, threads)
                except BadRequest as err:
                    cached = err
                except Exception as err:  # a broken file: answered, and not retried on every request
                    cached = BadRequest(f"the {NAMED_FORMAT} export cannot be loaded: {_short(err)}")
                model.named = cached
    if isinstance(cached, BadRequest):
        raise BadRequest(str(cached))
    return cached


def is_named(call, model) -> bool:
    """Whether an inference call is not the one ``features`` input (and the model may take named inputs)."""
    if len(call.inputs) == 1 and call.inputs[0].name in ("features", getattr(model.runtime, "input_name", "")):
        return False
    return model.bundle.layout is not None


def named_feeds(call, runtime: NamedRuntime, ref: str) -> tuple[dict[str, np.ndarray], int]:
    """The named inputs of an inference call (:class:`~.tensors.Tensor` s) as arrays of the layout's
    shapes, and their number of rows N. Values (any numeric datatype) must be finite within float32; masks
    are BOOL, or 0/1 in a numeric datatype."""
    shapes = runtime.shapes
    expected = ", ".join(f"{n} {[-1, *s]}" for n, s in shapes.items())
    names = [t.name for t in call.inputs]
    if "features" in names:
        raise BadRequest(f"input 'features' cannot be sent with named inputs; send either 'features' alone or "
                         f"all of: {expected}")
    for name in names:
        if name not in shapes:
            raise BadRequest(f"unknown input {name!r}; model {ref!r} takes 'features' or all of: {expected}")
        if names.count(name) > 1:
            raise BadRequest(f"input {name!r} is given more than once")
    missing = [n for n in shapes if n not in names]
    if missing:
        raise BadRequest(f"missing input {missing[0]!r}: with named inputs model {ref!r} takes all of: {expected}")
    feeds, n = {}, None
    for t in call.inputs:
        shape = shapes[t.name]
        if tuple(t.shape[1:]) != shape or len(t.shape) != len(shape) + 1:
            raise BadRequest(f"input {t.name!r} has shape {t.shape}; the layout gives {[-1, *shape]}")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise BadRequest(f"input {t.name!r} has {t.shape[0]} rows, input {call.inputs[0].name!r} {n}")
        feeds[t.name] = _mask(t) if t.name.endswith("_mask") and t.name[:-5] in shapes else as_float32(t)
    return feeds, n


def _mask(t) -> np.ndarray:
    X = t.array
    if t.datatype == "BOOL":
        return X
    if t.datatype not in NUMERIC:
        raise BadRequest(f"input {t.name!r}: datatype {t.datatype!r} is not supported; a mask is BOOL (or 0/1 "
                         f"in a numeric datatype)")
    if X.size and not ((X == 0) | (X == 1)).all():
        raise BadRequest(f"input {t.name!r}: a mask holds 0 or 1 (or true/false)")
    return X.astype(np.bool_)
