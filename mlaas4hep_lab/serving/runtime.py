"""Runtimes that score ``float32[N, F]`` feature rows: ONNX Runtime and TensorFlow SavedModel.

Which one serves a bundle is decided from its manifest (``manifest["inference"]``, its ``exports`` list)
and what is on disk under ``inference/``, with a preference: ``auto`` (ONNX when the bundle has
``model.onnx``, else the SavedModel), ``onnx`` or ``tf``. TensorFlow is imported only when a SavedModel is
served. Every runtime returns ``float32[N]`` scores for a binary model and ``float32[N, W]`` for a multi-class
(W class probabilities) or regression (W targets) model, as the manifest's ``task`` and ``outputs`` say
(:func:`model_outputs`; a manifest without ``task`` is binary).

Uploaded models are not trusted: paths named by the manifest must stay inside the bundle, ONNX models may
not point at external data files, and a SavedModel's serving signature may not contain file-system or
Python-calling operations. The native model formats (pickles, torch code) are never loaded here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.serving import BadRequest
from mlaas4hep_lab.task import Task

__all__ = ["Runtime", "OnnxRuntime", "TFRuntime", "Outputs", "BINARY", "model_outputs", "outputs_info",
           "find_exports", "build_runtime", "onnx_session", "probe_runtime", "onnx_bundle", "RUNTIME_ORDER", "PLATFORMS"]

log = logging.getLogger(__name__)

_ONNX_FORMATS = ("onnx",)
_TF_FORMATS = ("tf-savedmodel", "savedmodel", "tf_saved_model")
_DEFAULT_PATHS = {"onnx": "inference/model.onnx", "tf": "inference/saved_model"}
RUNTIME_ORDER = {"auto": ("onnx", "tf"), "onnx": ("onnx",), "tf": ("tf",)}  # preference -> kinds tried
PLATFORMS = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel"}
# operations a serving signature has no business running: file access, Python callbacks, checkpoints
_TF_DENIED_OPS = {
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "Save", "SaveV2",
    "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints", "ImmutableConst", "PrintV2",
    "Print", "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "ReaderReadV2",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "TFRecordDataset", "TFRecordDatasetV2",
    "TextLineDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "LoadAndRemapMatrix",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset",
    "SaveDatasetV2", "LoadDataset", "ExperimentalLMDBDataset", "WriteSummary", "WriteScalarSummary",
    "CreateSummaryFileWriter",
}


@dataclass(frozen=True)
class Outputs:
    """What a served model answers per event: one score (``kind`` binary) or the ``names``d columns of a
    multi-class or regression model. ``tensor`` names the Open Inference Protocol output."""

    kind: str = "binary"
    names: tuple[str, ...] = ("score",)
    tensor: str = "score"

    @property
    def width(self) -> int | None:
        """Values per event of a multi-output model (None: binary, one score)."""
        return None if self.kind == "binary" else len(self.names)

    def shape(self, n: int) -> list[int]:
        return [n] if self.width is None else [n, self.width]


BINARY = Outputs()


def model_outputs(manifest: dict[str, Any]) -> Outputs:
    """The outputs a bundle's manifest declares: its ``task`` (none: binary, as before tasks existed) and
    ``outputs`` (the column names). The OIP output is named after the export's output (``inference``
    ``output``), or ``probabilities``/``targets`` when the export calls it ``score``."""
    info = manifest.get("task")
    if info is None:
        return BINARY
    if not isinstance(info, dict):
        raise BadRequest('manifest \'task\' must be an object such as {"kind": "multiclass", "classes": [...]}')
    try:
        task = Task.from_dict(info)
    except (MLaaSError, TypeError, ValueError) as err:
        raise BadRequest(f"manifest 'task' is not usable: {err}") from None
    if task.kind == "binary":
        return BINARY
    names = task.output_names
    declared = manifest.get("outputs", names)
    if declared != names:
        raise BadRequest(f"manifest 'outputs' {str(declared)[:200]} do not match its {task.kind} task, which "
                         f"gives {names}")
    inference = manifest.get("inference")
    export = inference.get("output") if isinstance(inference, dict) else None
    usable = isinstance(export, str) and 0 < len(export) <= 128 and export != "score"
    return Outputs(task.kind, tuple(names), export if usable else task.tensor_name)


def outputs_info(outputs: Outputs) -> dict[str, Any]:
    """What the store records of a multi-output version for its metadata (nothing for a binary one)."""
    if outputs.width is None:
        return {}
    return {"task": outputs.kind, "outputs": list(outputs.names), "output_tensor": outputs.tensor}


class Runtime:
    """A loaded inference export. ``predict(X: float32[N, F])`` is thread-safe and returns ``float32[N]``
    (binary) or ``float32[N, W]`` (``outputs.width`` columns)."""

    kind = ""
    platform = ""
    row_seconds = float("inf")  # time of a one-row pass, measured by probe_runtime

    def __init__(self, n_features: int, path: Path, outputs: Outputs = BINARY):
        self.n_features = n_features
        self.path = path
        self.outputs = outputs

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.kind, "platform": self.platform}


def _scores(out: Any, n: int, outputs: Outputs = BINARY) -> np.ndarray:
    """Model outputs -> float32[N] (binary: [N], [N, 1], or [N, 2] class probabilities, column 1 = label 1)
    or float32[N, W] (a multi-output model; W = 1 may come as [N]), C-ordered."""
    out = np.asarray(out)
    width = outputs.width
    if width is None:
        if out.ndim == 2 and out.shape[1] in (1, 2):
            out = out[:, -1]
    elif out.ndim == 1 and width == 1:
        out = out[:, None]
    expected = tuple(outputs.shape(n))
    if out.shape != expected:
        what = "" if width is None else f" ({outputs.kind}: one column per output {list(outputs.names)})"
        raise BadRequest(f"the model returned shape {list(out.shape)} for {n} rows; "
                         f"expected {list(expected)}{what}")
    return np.ascontiguousarray(out, dtype=np.float32)


class OnnxRuntime(Runtime):
    kind = "onnx"
    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, n_features: int, input_name: str = "features", output_name: str = "score",
                 threads: int = 1, outputs: Outputs = BINARY):
        super().__init__(n_features, path, outputs)
        self.session = onnx_session(path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if input_name not in inputs:
            if len(inputs) != 1:
                raise BadRequest(f"the ONNX model has inputs {sorted(inputs)} and none is {input_name!r}")
            input_name = next(iter(inputs))
        spec = inputs[input_name]
        if spec.type not in ("tensor(float)", "tensor(double)"):
            raise BadRequest(f"ONNX input {input_name!r} is {spec.type}; a float tensor is needed")
        if len(spec.shape) != 2 or (isinstance(spec.shape[1], int) and spec.shape[1] != n_features):
            raise BadRequest(f"ONNX input {input_name!r} has shape {spec.shape}; the bundle has {n_features} "
                             f"features, so [N, {n_features}] is needed")
        self._dtype = np.float64 if spec.type == "tensor(double)" else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        if output_name not in outputs:
            output_name = outputs[-1] if len(outputs) == 1 else _pick_probability(self.session, outputs)
        self.input_name, self.output_name = input_name, output_name

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(self._dtype, copy=False)
        return _scores(self.session.run([self.output_name], {self.input_name: X})[0], len(X), self.outputs)


def onnx_session(path: Path, threads: int = 1):
    """An ONNX Runtime session (CPU, ``threads`` intra-op threads) of an uploaded ONNX file, once it passed
    :func:`_check_onnx` (no external data, no custom operator domains)."""
    _check_onnx(path)
    ort = extras.onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for broken graphs
        raise BadRequest(f"ONNX Runtime cannot load {path.name}: {_short(err)}") from err


def _pick_probability(session, outputs: list[str]) -> str:
    for out in session.get_outputs():  # converters of classifiers: (label, probabilities)
        if out.type == "tensor(float)" and "prob" in out.name.lower():
            return out.name
    raise BadRequest(f"the ONNX model has outputs {outputs} and none is 'score'")


def _check_onnx(path: Path) -> None:
    onnx = extras.onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise BadRequest(f"{path.name} is not a readable ONNX model: {_short(err)}") from err
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise BadRequest(f"{path.name} refers to external data files; upload a self-contained model")
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    allowed = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
    custom = sorted({op.domain for op in model.opset_import} - allowed)
    if custom:
        raise BadRequest(f"{path.name} uses custom operator domains {custom}, which this service cannot run")


class TFRuntime(Runtime):
    kind = "tf"
    platform = "tensorflow_savedmodel"

    def __init__(self, path: Path, n_features: int, input_name: str = "features", output_name: str = "score",
                 threads: int = 1, outputs: Outputs = BINARY):
        super().__init__(n_features, path, outputs)
        tf = extras.tensorflow()
        _set_tf_threads(tf, threads)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as err:
            raise BadRequest(f"TensorFlow cannot load the SavedModel: {_short(err)}") from err
        signatures = dict(loaded.signatures)
        fn = signatures.get("serving_default") or (next(iter(signatures.values())) if signatures else None)
        if fn is None:
            raise BadRequest("the SavedModel has no serving signature")
        _check_tf_ops(fn)
        kwargs = fn.structured_input_signature[1]
        if len(kwargs) != 1:
            raise BadRequest(f"the SavedModel signature takes {sorted(kwargs)}; one input is needed")
        self.input_name, spec = next(iter(kwargs.items()))
        if spec.shape.rank != 2 or spec.shape[1] not in (None, n_features):
            raise BadRequest(f"the SavedModel input has shape {spec.shape}; [N, {n_features}] is needed")
        outputs = fn.structured_outputs
        if output_name not in outputs:
            if len(outputs) != 1:
                raise BadRequest(f"the SavedModel has outputs {sorted(outputs)} and none is {output_name!r}")
            output_name = next(iter(outputs))
        self.output_name = output_name
        self._dtype = spec.dtype.as_numpy_dtype
        self._loaded, self._fn, self._tf = loaded, fn, tf  # keep the object: its variables live in it

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = self._fn(**{self.input_name: self._tf.constant(X.astype(self._dtype, copy=False))})
        return _scores(out[self.output_name].numpy(), len(X), self.outputs)


def _set_tf_threads(tf, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
    except RuntimeError:  # TensorFlow already initialised: the first setting stays
        pass


def _check_tf_ops(fn) -> None:
    graph_def = fn.graph.as_graph_def()
    ops = {n.op for n in graph_def.node}
    for function in graph_def.library.function:
        ops.update(n.op for n in function.node_def)
    denied = sorted(ops & _TF_DENIED_OPS)
    if denied:
        raise BadRequest(f"the SavedModel's serving signature uses operations this service refuses: {denied}")


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


def _inside(root: Path, candidate: Path) -> Path:
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise BadRequest(f"the manifest names {candidate} outside the bundle")
    return resolved


def find_exports(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"onnx"|"tf": {"path", "input", "output"}}`` of the exports the manifest names and that exist.

    Manifest paths are relative to the bundle (absolute ones, written at training time, are mapped to
    ``inference/<file name>``); a path that leaves the bundle is refused.
    """
    root = bundle_dir.resolve()
    info = manifest.get("inference") or {}
    if not isinstance(info, dict):
        raise BadRequest("manifest 'inference' must be an object")
    entries = [info] + [e for e in (info.get("exports") or []) if isinstance(e, dict)]
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        fmt = str(entry.get("format") or "").lower()
        kind = "onnx" if fmt in _ONNX_FORMATS else "tf" if fmt in _TF_FORMATS else None
        path = entry.get("path")
        if kind is None or kind in found or not isinstance(path, str) or not path:
            continue
        rel = Path(path)
        if rel.is_absolute():
            rel = Path("inference") / rel.name
        target = _inside(root, root / rel)
        if target.exists():
            found[kind] = {"path": target, "input": str(entry.get("input") or "features"),
                           "output": str(entry.get("output") or "score")}
    for kind, rel in _DEFAULT_PATHS.items():  # exports on disk that the manifest does not list
        target = root / rel
        if kind not in found and (target.is_file() or (target / "saved_model.pb").is_file()):
            found[kind] = {"path": _inside(root, target), "input": "features", "output": "score"}
    return found


def build_runtime(bundle_dir: Path, manifest: dict[str, Any], n_features: int, preference: str = "auto",
                  threads: int = 1) -> Runtime:
    """The runtime for a bundle, following ``preference`` (``auto``, ``onnx`` or ``tf``), answering the
    outputs its manifest declares (:func:`model_outputs`)."""
    outputs = model_outputs(manifest)
    exports = find_exports(bundle_dir, manifest)
    reasons = []
    for kind in RUNTIME_ORDER[preference]:
        entry = exports.get(kind)
        if entry is None:
            reasons.append(f"no {kind} export")
            continue
        cls = OnnxRuntime if kind == "onnx" else TFRuntime
        try:
            return cls(entry["path"], n_features, entry["input"], entry["output"], threads, outputs)
        except BadRequest as err:
            if preference != "auto":
                raise
            reasons.append(str(err))
    why = (manifest.get("inference") or {}).get("reason") if isinstance(manifest.get("inference"), dict) else None
    raise BadRequest(f"the bundle has no export this service can run with runtime {preference!r} "
                     f"({'; '.join(reasons)})" + (f"; training said: {why}" if why else ""))


def probe_runtime(runtime: Runtime) -> None:
    """A test prediction before a model is activated: the shape the manifest's outputs say, finite values."""
    rng = np.random.default_rng(0)
    X = np.concatenate([np.zeros((1, runtime.n_features)), np.ones((1, runtime.n_features)),
                        rng.uniform(0, 1, (6, runtime.n_features))]).astype(np.float32)
    try:
        scores = runtime.predict(X)
    except BadRequest:
        raise
    except Exception as err:
        raise BadRequest(f"the model fails on a test prediction: {_short(err)}") from err
    if not np.all(np.isfinite(scores)):
        raise BadRequest("the model returns non-finite scores on a test prediction")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        runtime.predict(X[:1])
        timings.append(time.perf_counter() - start)
    runtime.row_seconds = sorted(timings)[2]


def generated_features(width: int) -> list[str]:
    """The names of a bare model's ``width`` inputs when params name none: ``f0..f9``, ``f00..f29``..."""
    return [f"f{i:0{len(str(width - 1))}d}" for i in range(width)]


def bare_features(params: dict[str, Any], width: int | None, what: str) -> list[str]:
    """The feature names of a bare model (TFaaS form): params ``features`` (or TFaaS's ``keys``), checked
    against the input width, else generated; 400 when neither can be."""
    features = params.get("features") or params.get("keys")
    if features is not None:
        if (not isinstance(features, list) or not all(isinstance(f, str) and f for f in features)
                or len(set(features)) != len(features) or (width and len(features) != width)):
            raise BadRequest(f"params 'features' must name the {width or 'N'} inputs, each once")
        return features
    if width:
        return generated_features(width)
    raise BadRequest(f"{what} has no fixed width: list the feature names in params 'features'")


def onnx_bundle(folder: Path, onnx_path: Path, name: str, params: dict[str, Any] | None = None,
                labels: list[str] | None = None) -> Path:
    """A minimal bundle around a bare ONNX model (the original TFaaS form: model file, params.json,
    labels.txt). Feature names come from params ``features`` (or ``keys``), else ``f00, f01, ...``; the
    input and output from params ``inputNode``/``outputNode``, else the graph's. Raw events for such a
    model are its features by name, not normalised."""
    import datetime as _dt
    import json
    import shutil

    from mlaas4hep_lab.data.specs import Specs
    from mlaas4hep_lab.params import Params

    onnx = extras.onnx()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:
        raise BadRequest("the uploaded model is neither a bundle tarball nor an ONNX model") from err
    params = params if isinstance(params, dict) else {}
    weights = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in weights}
    input_name = params.get("inputNode") or (next(iter(inputs)) if len(inputs) == 1 else None)
    if input_name not in inputs:
        raise BadRequest(f"name the ONNX input with params 'inputNode' (inputs: {sorted(inputs)})")
    dims = inputs[input_name].type.tensor_type.shape.dim
    width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    features = bare_features(params, width, "the ONNX input")
    outputs = [o.name for o in model.graph.output]
    output_name = params.get("outputNode") or ("score" if "score" in outputs else outputs[0])
    (folder / "inference").mkdir(parents=True)
    shutil.copyfile(onnx_path, folder / "inference" / "model.onnx")
    Specs(fkeys=list(features), jkeys=[], jdim={}, minv={}, maxv={}, normalization="none").save(
        folder / "specs.json")
    (folder / "params.json").write_text(json.dumps(Params(normalization="none").to_dict()))
    (folder / "preproc.json").write_text("{}")
    (folder / "tfaas_params.json").write_text(json.dumps(params))
    manifest = {"bundle_version": 1, "name": name, "version": 1, "backend": "onnx", "source": "tfaas-form",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "features": list(features), "input_shape": [None, len(features)],
                "labels": {str(i): label for i, label in enumerate(labels)} if labels else {"1": "signal",
                                                                                            "0": "background"},
                "inference": {"format": "onnx", "path": "inference/model.onnx", "input": input_name,
                              "output": output_name}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder
