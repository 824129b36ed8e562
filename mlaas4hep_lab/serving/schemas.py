"""Request and response models of the inference service (pydantic), the body parser, and the
conversion of validated requests into the ``float32[N, F]`` rows a runtime scores.

Bodies are read as bytes, checked for nesting depth on the bytes (:mod:`.bodies`), parsed with orjson and
validated against these models in strict mode (numbers must be JSON numbers; booleans and strings are not
numbers). Every refusal is a :class:`~mlaas4hep_lab.serving.BadRequest` (400) or 422 with a message naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlaas4hep_lab.errors import MLaaSError, close_matches
from mlaas4hep_lab.serving import BadRequest, ServingError
from mlaas4hep_lab.serving.bodies import load_json
from mlaas4hep_lab.serving.tensors import as_float32

__all__ = ["parse_body", "load_json", "JsonRequest", "InferInput", "InferRequest", "RequestedOutput",
           "InferOutput", "InferResponse", "EventsRequest", "EventsResponse", "TagRequest", "ShareRequest",
           "ModelSummary", "ModelMetadata", "TensorMetadata", "ServerMetadata", "UploadResponse",
           "DeleteResponse", "ErrorResponse", "Health", "Ready", "WhoAmI", "BODY_MODELS", "json_matrix",
           "infer_matrix", "events_matrix", "read_upload", "Upload", "body_doc", "UPLOAD_DOC", "model_metadata"]

M = TypeVar("M", bound=BaseModel)
Version = Annotated[str | int, Field(description="a version (e.g. 3) or a tag (latest, prod)")]
Rows = list[float] | list[list[float]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ErrorResponse(BaseModel):
    error: str


# -- TFaaS -----------------------------------------------------------------------------------------
class JsonRequest(_Strict):
    """``POST /json``: model inputs by feature name. ``values`` is one event (a list) or a list of events;
    ``keys`` names each value's feature, in any order (None: the model's feature order)."""

    model: str = Field(min_length=1, max_length=300, description="name, or owner:name / owner/name")
    keys: list[str] | None = None
    values: Rows
    version: Version | None = None


# -- Open Inference Protocol v2 ----------------------------------------------------------------------
# OIP data: flat in row-major order, or nested as the shape (an objects-layout collection: [N, k, C]);
# true/false for BOOL (the masks of named inputs), strings for BYTES
TensorData = (list[float] | list[list[float]] | list[list[list[float]]] | list[bool] | list[list[bool]]
              | list[str])


class InferInput(_Strict):
    """One input tensor: ``data`` in JSON, or (binary tensor data extension) no ``data`` and
    ``parameters.binary_data_size``, its bytes after the JSON header."""

    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=8)
    datatype: str
    data: TensorData | None = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Strict):
    """An output asked for by name; ``parameters.binary_data: true`` answers it in binary."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    """``parameters.binary_data_output: true`` answers every output not asked otherwise in binary."""

    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class InferOutput(BaseModel):
    """One output tensor: ``score`` [N] of a binary model; ``probabilities`` or ``targets`` (the export's
    output name) [N, W] of a multi-class or regression model, ``data`` flat in row-major order; a column
    of a multi-output model [N] when asked for by name. In binary: no ``data``, ``parameters.binary_data_size``."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    """OIP model metadata plus what a client needs to build inputs (features, raw input branches)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    owner: str
    ref: str
    version: str
    tags: dict[str, str]
    shared: bool
    features: list[str]
    task: str | None = Field(default=None, description="multiclass or regression (absent: binary, one score)")
    columns: list[str] | None = Field(default=None, description="a multi-output model's output names, one per "
                                      "column of its output tensor (p_<class> or the regression targets)")
    named_inputs: list[TensorMetadata] | None = Field(default=None, description="an objects-layout model's "
                                                      "named inputs (flat, each collection and its _mask), which "
                                                      "an infer request may send, all of them, instead of features")
    input_branches: list[str] = []
    tree: str | None = None
    identifier: list[str] = []
    backend: str | None = None
    created: str | None = None
    uploaded: str | None = None
    labels: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    parameters: dict[str, Any] = {}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# -- raw events ------------------------------------------------------------------------------------
FlatOrJagged = list[float | bool] | list[list[float | bool]]


class EventsRequest(_Strict):
    """Raw events: ``{"events": {branch: [value per event] or [[values], ...]}}`` (columns) or
    ``{"events": [{branch: value or [values]}, ...]}`` (one object per event)."""

    events: dict[str, FlatOrJagged] | list[dict[str, float | bool | list[float | bool]]]
    version: Version | None = None
    id: str | None = None


class EventsResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    scores: list[float] | list[list[float]] = Field(description="one score per event (binary), or per event "
                                                    "the list of a multi-output model's values, named by outputs")
    outputs: list[str] | None = Field(default=None, description="a multi-class or regression model's output "
                                      "names (p_<class> or the targets), one per value of an event")
    keep: list[bool] = Field(description="whether each event passes the bundle's cuts (all are scored)")


# -- store -----------------------------------------------------------------------------------------
class TagRequest(_Strict):
    tag: str = Field(min_length=1, max_length=128)
    version: Version | None = Field(default=None, description="the version to tag; null removes the tag")


class ShareRequest(_Strict):
    shared: bool = True


class ModelSummary(BaseModel):
    name: str
    owner: str
    ref: str
    shared: bool
    tags: dict[str, str]
    versions: list[str]
    latest: str | None
    backend: str | None = None
    runtime: str | None = None
    n_features: int = 0
    created: str | None = None
    uploaded: str | None = None


class UploadResponse(ModelSummary):
    version: str
    features: list[str]


class DeleteResponse(BaseModel):
    deleted: str
    versions: list[str]
    model: ModelSummary | None = None


class Health(BaseModel):
    live: bool = True


class Ready(BaseModel):
    name: str | None = None
    version: str | None = None
    ready: bool


class WhoAmI(BaseModel):
    name: str
    source: str
    groups: list[str]
    usage: dict[str, int] | None = Field(default=None, description="bytes and versions stored, and the quota "
                                         "(quota_bytes, quota_versions; 0: no limit)")


# -- uploads ---------------------------------------------------------------------------------------
UPLOAD_FIELDS = ("bundle", "file", "tarball", "archive", "model")


@dataclass
class Upload:
    """An upload written to ``path`` (the caller removes it), with the form's or the query's fields."""

    path: str
    name: str | None
    version: str | None
    shared: bool | None
    bare: bool = False  # a bare model file of the original TFaaS form, not a bundle tarball
    params: dict[str, Any] | None = None
    labels: list[str] | None = None


async def read_upload(request, staging: Path, name: str | None, version: str | None,
                      shared: bool | None, max_depth: int = 32) -> Upload:
    """Stream ``POST /upload`` to a file under ``staging``: the body itself (a bundle tarball, or a
    SavedModel's), or the file field of a multipart form (``bundle``, ``file``, ``model``...) with its text
    fields ``name``, ``version``, ``shared`` and, as the original TFaaS form has them, ``params`` and
    ``labels`` files (``params`` JSON nested at most ``max_depth`` levels; with a tarball they serve a
    SavedModel's). Whatever fails (a bad field, the client gone
    mid-upload, a cancelled request), the file is removed before the error goes on."""
    # named after this process: a restarted server removes what a killed one left, not its siblings' files
    fd, path = tempfile.mkstemp(prefix=f"upload-{os.getpid()}-", suffix=".bin", dir=staging)
    upload = Upload(path, name or None, version or None, shared)
    form = None
    try:
        with os.fdopen(fd, "wb") as out:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                form = await request.form(max_files=8, max_fields=32)
                field = next((form[k] for k in UPLOAD_FIELDS if hasattr(form.get(k), "read")), None)
                if field is None:
                    raise BadRequest(f"the form has no model file (fields {', '.join(UPLOAD_FIELDS)})")
                text = {k: v.strip() for k, v in form.items() if isinstance(v, str) and v.strip()}
                upload.name, upload.version = text.get("name", upload.name), text.get("version", upload.version)
                if "shared" in text:
                    upload.shared = text["shared"].lower() in ("1", "true", "yes", "on")
                await asyncio.to_thread(shutil.copyfileobj, field.file, out, 1 << 20)
            else:
                async for chunk in request.stream():
                    out.write(chunk)
        if os.path.getsize(path) == 0:
            raise BadRequest("empty upload: send a bundle .tar.gz as the body or in a form field 'bundle'")
        if form is not None:  # params and labels serve a bare model, and a SavedModel tarball too
            upload.bare = not await asyncio.to_thread(tarfile.is_tarfile, path)
            upload.params, upload.labels = await _form_extras(form, max_depth)
        return upload
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        if form is not None:
            with contextlib.suppress(Exception):  # closing spooled files must not hide the real error
                await form.close()


_FORM_FILE_BYTES = 1 << 20  # params.json and labels.txt of the original TFaaS form


async def _form_extras(form, max_depth: int) -> tuple[dict[str, Any] | None, list[str] | None]:
    """``params`` (JSON object, depth-checked on its bytes before it is parsed) and ``labels`` (one per
    line) of the original TFaaS form: text fields or files, each at most 1 MiB."""
    params = labels = None
    given = {k for k in ("params", "labels") if hasattr(form.get(k), "read") or str(form.get(k) or "").strip()}
    if "params" in given:
        raw = await _form_bytes(form, "params")
        try:
            params = load_json(raw, max_depth, what="params")
        except BadRequest as err:  # the depth refusal does not say which field
            raise BadRequest(str(err) if "params" in str(err) else f"params: {err}") from None
        if not isinstance(params, dict):
            raise BadRequest("params must be a JSON object, e.g. {\"features\": [\"pt\", \"eta\"]}")
    if "labels" in given:
        raw = (await _form_bytes(form, "labels")).decode("utf-8", "replace")
        labels = [line.strip() for line in raw.splitlines() if line.strip()][:1000]
    return params, labels


async def _form_bytes(form, key: str) -> bytes:
    value = form[key]
    data = value.encode() if isinstance(value, str) else await value.read(_FORM_FILE_BYTES + 1)
    if len(data) > _FORM_FILE_BYTES:
        raise BadRequest(f"form field {key!r} is larger than {_FORM_FILE_BYTES} bytes")
    return data


# bodies parsed by parse_body (their schemas are added to the OpenAPI document by the app)
BODY_MODELS = (JsonRequest, InferRequest, EventsRequest, TagRequest, ShareRequest)


def body_doc(model: type) -> dict[str, Any]:
    """OpenAPI requestBody of a route that parses its body itself (orjson, depth check, strict model)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


_BINARY = {"type": "string", "format": "binary"}
# POST /upload's body, which read_upload streams itself: documented so that clients and fuzzers send one
UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    "application/gzip": {"schema": dict(_BINARY, description="the bundle .tar.gz (query: name, version, shared)")},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "bundle": dict(_BINARY, description="the bundle .tar.gz (also accepted in a field file, tarball, archive)"),
        "model": dict(_BINARY, description="the original TFaaS form: a bare ONNX file or a TensorFlow frozen "
                      "graph (.pb), with params and labels"),
        "params": dict(_BINARY, description="TFaaS form: params JSON with features (or keys), inputNode and "
                       "outputNode (a frozen graph's nodes)"),
        "labels": dict(_BINARY, description="TFaaS form: one label per line"),
        "name": {"type": "string"}, "version": {"type": "string"},
        "shared": {"type": "string", "description": "1, true, yes or on to share it"}}}}}}}


def model_metadata(name: str, state: dict[str, Any], version: str, platform: str) -> dict[str, Any]:
    """The OIP model metadata (plus features, raw input branches, tags...) of a stored version. A
    multi-class or regression model has one output [-1, W] and says its ``task`` and output ``columns``."""
    info = state["versions"][version]
    features = info.get("features") or []
    columns = info.get("outputs")
    output = {"name": "score", "datatype": "FP32", "shape": [-1]}
    task = {}
    if columns:  # recorded by the store for multi-output versions only
        output = {"name": info.get("output_tensor") or "score", "datatype": "FP32",
                  "shape": [-1, len(columns)], "parameters": {"columns": columns}}
        task = {"task": info.get("task"), "columns": columns}
    params = {"features": features, "input_branches": info.get("input_branches") or [],
              "tree": info.get("tree"), "identifier": info.get("identifier") or []}
    named = info.get("named_inputs")
    if named:  # an objects-layout model also takes these inputs, all of them, instead of features
        task["named_inputs"] = params["named_inputs"] = named
    return {"name": name, "versions": sorted(state["versions"], key=lambda v: (not v.isdigit(), v.zfill(12))),
            "platform": platform, "owner": state["owner"],
            "ref": f"{state['owner']}:{state['name']}", "version": version, "tags": state["tags"],
            "shared": bool(state.get("shared")),
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, len(features)],
                        "parameters": {"features": features}}],
            "outputs": [output], **task,
            **params, "backend": info.get("backend"), "created": info.get("created"),
            "uploaded": info.get("uploaded"), "labels": info.get("labels"), "metrics": info.get("metrics") or {},
            "parameters": params}


def parse_body(body: bytes, model: type[M], max_depth: int) -> M:
    """Validate a JSON body against ``model``; 400 for bad JSON, 422 naming the wrong fields."""
    return validate(load_json(body, max_depth), model)


def validate(obj: Any, model: type[M]) -> M:
    """Validate a parsed JSON body against ``model``; 422 naming the wrong fields."""
    if not isinstance(obj, dict):
        raise ServingError(f"body must be a JSON object ({model.__name__})", 422)
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        raise ServingError(f"invalid {model.__name__}: {summarize(err)}", 422) from None


def summarize(err: ValidationError, limit: int = 3) -> str:
    """The first errors of a pydantic ValidationError, as 'field.path: message'."""
    parts, seen = [], set()
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and "[" in p)) or "body"
        if loc in seen:
            continue
        seen.add(loc)
        parts.append(f"{loc}: {e['msg']}")
        if len(parts) == limit:
            break
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# -- request bodies -> float32[N, F] model inputs ----------------------------------------------------
_F32_MAX = float(np.finfo(np.float32).max)
_UNSEEN = object()


def _finite32(X: np.ndarray, what: str) -> np.ndarray:
    if X.dtype != np.float32:
        if X.size and not np.all(np.abs(X) <= _F32_MAX):
            raise BadRequest(f"{what}: values must be finite numbers within the float32 range")
        X = X.astype(np.float32)
    elif X.size and not np.all(np.isfinite(X)):
        raise BadRequest(f"{what}: values must be finite numbers within the float32 range")
    return X


def json_matrix(req: JsonRequest, model) -> np.ndarray:
    """``/json`` values, reordered from ``keys`` to the model's feature order."""
    rows = req.values if req.values and isinstance(req.values[0], list) else [req.values]
    try:
        X = np.asarray(rows, dtype=np.float64)
    except ValueError:
        raise BadRequest("every event in 'values' needs the same number of values") from None
    n_features = len(model.features)
    if req.keys is None:
        if X.shape[1] != n_features:
            raise BadRequest(f"{X.shape[1]} values per event, but model {model.ref!r} takes {n_features} "
                             f"features; send 'keys' naming them, or all {n_features} in the model's order")
        return _finite32(X, "values")
    keys = req.keys
    if X.shape[1] != len(keys):
        raise BadRequest(f"{len(keys)} keys but {X.shape[1]} values per event")
    order = model.key_orders.get(tuple(keys), _UNSEEN)
    if order is _UNSEEN:
        order = _key_order(keys, model)
        if len(model.key_orders) < 64:
            model.key_orders[tuple(keys)] = order
    X = _finite32(X, "values")
    return X if order is None else X[:, order]


def _key_order(keys: list[str], model) -> np.ndarray | None:
    index = model.index
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise BadRequest(f"keys repeat {dup[:5]}")
    unknown = [k for k in keys if k not in index]
    if unknown:
        hints = {k: close_matches(k, model.features, 1) for k in unknown[:5]}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise BadRequest(f"unknown keys for model {model.ref!r}: {said}")
    missing = [f for f in model.features if f not in set(keys)]
    if missing:
        raise BadRequest(f"keys lack features of model {model.ref!r}: {missing[:10]}"
                         + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    # column j of the model's input is the value at position pos[j] of each event
    pos = {k: i for i, k in enumerate(keys)}
    order = np.array([pos[f] for f in model.features])
    return None if np.array_equal(order, np.arange(len(order))) else order


def infer_matrix(call, model) -> np.ndarray:
    """The one input ``features`` of an inference call (:class:`~.tensors.InferCall`; any numeric
    datatype, shape [N, F]) as float32[N, F]."""
    if len(call.inputs) != 1:
        raise BadRequest(f"expected one input 'features', got {len(call.inputs)}")
    t = call.inputs[0]
    if t.name not in ("features", getattr(model.runtime, "input_name", "features")):
        raise BadRequest(f"unknown input {t.name!r}; model {model.ref!r} takes one input 'features'")
    n_features = len(model.features)
    if len(t.shape) != 2 or t.shape[1] != n_features:
        raise BadRequest(f"input shape {t.shape}: model {model.ref!r} takes [N, {n_features}]")
    return as_float32(t)


def events_matrix(events, model) -> tuple[np.ndarray, np.ndarray]:
    """Raw events -> (float32[N, F] in the model's input order, keep[N]) with the bundle's preprocessing."""
    import awkward as ak

    if isinstance(events, list):
        if not events:
            raise BadRequest("no events")
        names = list(events[0])
        for i, event in enumerate(events):
            if event.keys() != events[0].keys():
                raise BadRequest(f"event {i} has branches {sorted(event)[:10]}, event 0 has {sorted(names)[:10]}")
        events = {b: [e[b] for e in events] for b in names}
    if not events:
        raise BadRequest("no branches in 'events'")
    lengths = {b: len(v) for b, v in events.items()}
    if len(set(lengths.values())) != 1:
        raise BadRequest(f"branches have different numbers of events: {dict(list(lengths.items())[:10])}")
    columns = {}
    for branch, values in events.items():
        if values and isinstance(values[0], list):
            if not all(isinstance(v, list) for v in values):
                raise BadRequest(f"branch {branch!r} mixes lists and single values")
            counts = np.fromiter(map(len, values), np.int64, len(values))
            content = np.asarray([x for v in values for x in v], dtype=np.float64)
            columns[branch] = ak.unflatten(content, counts)
        else:
            if any(isinstance(v, list) for v in values):
                raise BadRequest(f"branch {branch!r} mixes lists and single values")
            columns[branch] = np.asarray(values, dtype=np.float64)
    try:
        X, _, keep = model.bundle.vectorize(ak.Array(columns))
    except MLaaSError as err:
        raise BadRequest(str(err)) from None
    except Exception as err:  # awkward/numpy refusals of odd input: the client's problem, not a crash
        raise BadRequest(f"cannot preprocess these events: {type(err).__name__}: {err}") from None
    if model.raw_order is not None:
        X = X[:, model.raw_order]
    return X, keep
