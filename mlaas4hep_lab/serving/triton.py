"""Triton's management extensions, protocol-neutral: model configuration, statistics, the model
repository (index, load, unload), readiness and log settings.

Every function takes the :class:`~.service.Service`, the authenticated :class:`~mlaas4hep_lab.auth.User`
and the model as the user addresses it (``name``, or ``owner:name`` for a model another user shared), and
returns the JSON object Triton's HTTP/REST API answers: the field names of ``model_config.proto`` and
``grpc_service.proto`` in their JSON mapping (``max_batch_size``, ``data_type: "TYPE_FP32"``, ``dims``,
numbers as numbers, as Triton's HTTP server writes them), so the HTTP routes send them as they are and the
gRPC service converts them with ``json_format.ParseDict``. Errors are :class:`~mlaas4hep_lab.serving.ServingError`
s with their status: a model the user cannot see, or a version it does not have, is 404.

Who may do what: anyone who can see a model (its owner, everyone once it is shared) reads its
configuration and statistics, checks its readiness and loads it (loading only spends memory the first
request would spend anyway); only the owner unloads it (it would slow everyone else's next request), others
get 403. Log settings are read by any user and changed by the service's admins only (403 otherwise):
the users named in ``settings.admins`` (or, where the settings have no such field, the comma-separated
``MLAAS4HEP_SERVE_ADMINS``) and JupyterHub admins.

State is per server process: with several workers, each loads, unloads and counts on its own (as each
Triton server does).

Only :func:`load_model` and :func:`model_ready` are coroutines (they may load a model in a thread); the
others are cheap and may be called on the event loop.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from mlaas4hep_lab import __version__
from mlaas4hep_lab.auth import User
from mlaas4hep_lab.errors import close_matches
from mlaas4hep_lab.serving import BadRequest, Forbidden, ServingError
from mlaas4hep_lab.serving import schemas as S

__all__ = ["model_config", "model_stats", "repository_index", "load_model", "unload_model", "model_ready",
           "log_settings", "is_admin", "DATA_TYPES", "EXTENSIONS", "server_metadata"]

# the server metadata's extensions (HTTP ``GET /v2`` and gRPC ``ServerMetadata``): the service's own, the
# binary tensor data extension of the infer route, and the routes of this module
EXTENSIONS = ("tfaas", "raw_events", "model_tags", "model_sharing", "dynamic_batching", "binary_tensor_data",
              "model_configuration", "statistics", "model_repository", "logging")


def server_metadata() -> dict[str, Any]:
    """The OIP server metadata, the same on HTTP and gRPC."""
    return {"name": "mlaas4hep-lab", "version": __version__, "extensions": list(EXTENSIONS)}
# OIP datatype -> model_config.proto DataType
DATA_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
              "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
              "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
              "BYTES": "TYPE_STRING", "BF16": "TYPE_BF16"}
_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorflow_savedmodel": "tensorflow"}
_UNLOADED = "unloaded"
_NOT_LOADED = "not loaded in this server process yet: the first request or a load request loads it"


# -- model configuration -------------------------------------------------------------------------------
def _dims(shape: list[int]) -> tuple[list[int], dict[str, Any]]:
    """Triton dims of an OIP shape with its batch axis first: the axis dropped; a tensor of one value per
    row ([-1]) is dims [1] reshaped to [] (how Triton writes a batched tensor without other axes)."""
    dims = [int(d) for d in shape[1:]]
    return (dims, {}) if dims else ([1], {"reshape": {"shape": []}})


def _tensor_config(tensor: dict[str, Any], optional: bool = False) -> dict[str, Any]:
    dims, extra = _dims(tensor["shape"])
    out = {"name": tensor["name"], "data_type": DATA_TYPES.get(tensor["datatype"], "TYPE_INVALID"), "dims": dims,
           **extra}
    if optional:
        out["optional"] = True
    return out


def model_config(svc, user: User, ref: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration of a version (default ``latest``; a tag works too).

    Inputs and outputs are those of the model's metadata without their batch axis (``max_batch_size`` is
    the service's ``max_batch``): ``features`` [F] and, for an objects-layout model, its named inputs
    (then all inputs are ``optional``: a request sends ``features`` or all the named ones); the output
    tensor ([1] reshaped to [] for one score per row, [W] for a multi-output model) and a multi-output
    model's columns, one value per row each. ``dynamic_batching`` is there when batching is on.
    ``parameters`` carry the features, task and columns (as strings: ``ModelParameter.string_value``)."""
    store, s = svc.store, svc.settings
    store.refresh()
    state, v = store.find(user.name, ref, version)
    name = ref
    meta = S.model_metadata(name, state, v, store.served_runtime(state, v)[1])
    named = meta.get("named_inputs") or []
    inputs = [_tensor_config(t, optional=bool(named)) for t in [*meta["inputs"], *named]]
    outputs = [_tensor_config(t) for t in meta["outputs"]]
    have = {t["name"] for t in outputs}
    outputs += [{"name": c, "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}
                for c in meta.get("columns") or [] if c not in have]
    platform = meta["platform"]
    params = {"features": json.dumps(meta["features"]), "owner": state["owner"], "version": v}
    if meta.get("task"):
        params["task"] = str(meta["task"])
    if meta.get("columns"):
        params["columns"] = json.dumps(meta["columns"])
    config = {"name": name, "platform": platform, "backend": _BACKENDS.get(platform, ""),
              "version_policy": {"all": {}}, "max_batch_size": s.max_batch, "input": inputs, "output": outputs,
              "instance_group": [{"name": name, "kind": "KIND_CPU", "count": s.inference_threads}],
              "parameters": {k: {"string_value": str(val)} for k, val in params.items()}}
    if s.batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(round(s.max_delay_ms * 1000)),
                                      "preserve_ordering": True,
                                      "default_queue_policy": {"max_queue_size": s.queue_size}}
    return config


# -- statistics ------------------------------------------------------------------------------------------
def model_stats(svc, user: User, ref: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Triton's ``{"model_stats": [...]}``: of one version (``version`` given: a version or a tag), of
    every version of one model (``ref`` given), or (neither) of every version the user can see that was
    loaded or used in this process. Versions not used yet have zero counts."""
    store, stats = svc.store, svc.stats
    store.refresh()
    if ref is None:
        if version is not None:
            raise BadRequest("a version needs a model name")
        used = set(stats.keys())
        out = []
        for summary in store.visible(user.name):
            owner, name = summary["owner"], summary["name"]
            address = name if owner == user.name else f"{owner}:{name}"
            for v in summary["versions"]:
                if (owner, name, v) in used or store.loaded(owner, name, v) is not None:
                    out.append(stats.model(owner, name, v).to_dict(address, v))
        return {"model_stats": out}
    state, resolved = store.find(user.name, ref, version)
    versions = [resolved] if version is not None else store.summary(state)["versions"]
    return {"model_stats": [stats.model(state["owner"], state["name"], v).to_dict(ref, v) for v in versions]}


# -- model repository ------------------------------------------------------------------------------------
def repository_index(svc, user: User, ready_only: bool = False) -> list[dict[str, Any]]:
    """Triton's repository index: one entry per version of every model the user can see (``name`` as
    they address it), ``state`` READY when it is loaded in this process, else UNAVAILABLE with the
    ``reason`` (``unloaded`` by its owner, or not loaded yet); ``ready_only`` keeps the READY ones."""
    store = svc.store
    store.refresh()
    out = []
    for summary in store.visible(user.name):
        owner, name = summary["owner"], summary["name"]
        address = name if owner == user.name else f"{owner}:{name}"
        for v in summary["versions"]:
            if store.loaded(owner, name, v) is not None:
                out.append({"name": address, "version": v, "state": "READY"})
            elif not ready_only:
                reason = _UNLOADED if store.is_unloaded(owner, name, v) else _NOT_LOADED
                out.append({"name": address, "version": v, "state": "UNAVAILABLE", "reason": reason})
    return out


def _check_parameters(parameters: Any, allowed: dict[str, type], what: str) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{what} 'parameters' must be a JSON object")
    for key, value in parameters.items():
        if key == "config" or key.startswith("file:"):
            raise BadRequest(f"{what} parameter {key!r} is not supported: this service loads models from its "
                             "store; upload a model or a new version with POST /upload instead")
        if key not in allowed:
            raise BadRequest(f"unknown {what} parameter {str(key)[:100]!r}; known: {sorted(allowed) or 'none'}")
        if not isinstance(value, allowed[key]):
            raise BadRequest(f"{what} parameter {key!r} must be a {allowed[key].__name__}")
    return parameters


async def load_model(svc, user: User, ref: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a model's tagged versions (``latest``, ``prod``...) into memory, so that their first request
    does not pay for it; already loaded ones stay. Any user who can see the model may. Triton's
    ``config`` and ``file:`` parameters are refused (400): models enter the store by upload. Returns
    ``{"name", "versions"}`` (what is loaded now)."""
    _check_parameters(parameters, {}, "load")
    svc.store.refresh()
    state, _ = svc.store.find(user.name, ref)
    versions = sorted(set(state["tags"].values()))
    for v in versions:
        await svc.model(user, ref, v)
    return {"name": ref, "versions": versions}


def unload_model(svc, user: User, ref: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drop every version of a model from memory (owner only: 403 for a model shared with the user). The
    files stay; the next request for a version (or a load request) loads it again, and until then it is
    not ready. ``unload_dependents`` is accepted (this store has no ensembles). Returns ``{"name",
    "versions"}`` (those that were loaded)."""
    _check_parameters(parameters, {"unload_dependents": bool}, "unload")
    store = svc.store
    store.refresh()
    state = store.owned(user.name, ref)
    return {"name": ref, "versions": store.unload(state["owner"], state["name"])}


async def model_ready(svc, user: User, ref: str, version: str | None = None) -> tuple[bool, str, ServingError | None]:
    """(ready, version, why not) of a version (default ``latest``): ready when loaded; a version its owner
    unloaded is not ready until loaded again (why: a 400, as Triton answers for a model not ready); one not
    loaded yet is loaded now (why, when that fails: a 503 with the reason)."""
    store = svc.store
    store.refresh()
    state, v = store.find(user.name, ref, version)
    owner, name = state["owner"], state["name"]
    if store.loaded(owner, name, v) is not None:
        return True, v, None
    if store.is_unloaded(owner, name, v):
        return False, v, BadRequest(f"model {ref!r} version {v} is not ready: it was unloaded; a load request or "
                                    "its next inference loads it")
    try:
        await svc.model(user, ref, v)
    except ServingError as err:
        return False, v, ServingError(f"model {ref!r} version {v} cannot be loaded: {err}", 503)
    return True, v, None


# -- log settings ----------------------------------------------------------------------------------------
_LOGGER = "mlaas4hep_lab"
_LOG_LOCK = threading.Lock()
_LOG_STATE: dict[str, Any] = {}
_FORMATS = ("default", "ISO8601")
_ISO = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
_SAVED_FORMATTERS: dict[int, logging.Formatter | None] = {}
_LEVELS = ("log_verbose_level", "log_info", "log_warning", "log_error")  # each implies the next one


def is_admin(svc, user: User) -> bool:
    """Whether ``user`` may change the service's settings: named in ``settings.admins`` (``serve --admin``,
    ``MLAAS4HEP_SERVE_ADMINS``), or a JupyterHub admin."""
    return user.name in svc.settings.admins or (user.source == "hub" and bool(user.claims.get("admin")))


def _current() -> dict[str, Any]:
    if not _LOG_STATE:
        level = logging.getLogger(_LOGGER).getEffectiveLevel()
        _LOG_STATE.update(log_file="", log_info=level <= logging.INFO, log_warning=level <= logging.WARNING,
                          log_error=level <= logging.ERROR, log_verbose_level=int(level <= logging.DEBUG),
                          log_format="default")
    return dict(_LOG_STATE)


def _check_update(update: Any, state: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise BadRequest("log settings must be a JSON object, e.g. {\"log_verbose_level\": 1}")
    new = dict(state)
    for key, value in update.items():
        if key not in state:
            hint = close_matches(str(key), list(state), 1)
            raise BadRequest(f"unknown log setting {str(key)[:100]!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                             else f"; settings: {', '.join(state)}"))
        if key == "log_file":
            if value != state["log_file"]:
                raise BadRequest("log_file cannot be changed: the service logs where it was started to")
        elif key == "log_verbose_level":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequest("log_verbose_level must be an integer >= 0")
        elif key == "log_format":
            if value not in _FORMATS:
                raise BadRequest(f"log_format must be one of {list(_FORMATS)}")
        elif not isinstance(value, bool):
            raise BadRequest(f"{key} must be true or false")
        new[key] = value
    enabled = [bool(new[k]) for k in _LEVELS]
    for i in range(len(enabled) - 1):
        if enabled[i] and not enabled[i + 1]:
            raise BadRequest(f"{_LEVELS[i]} on with {_LEVELS[i + 1]} off cannot be expressed: the service's "
                             "Python loggers log a level and every level above it (verbose > info > warning "
                             "> error)")
    return new


def _apply(state: dict[str, Any]) -> None:
    level = (logging.DEBUG if state["log_verbose_level"] else logging.INFO if state["log_info"]
             else logging.WARNING if state["log_warning"] else logging.ERROR if state["log_error"]
             else logging.CRITICAL + 10)
    logging.getLogger(_LOGGER).setLevel(level)
    # the service's records reach the root logger's handlers (``mlaas4hep serve`` sets them up)
    for handler in logging.getLogger().handlers:
        if state["log_format"] == "ISO8601":
            _SAVED_FORMATTERS.setdefault(id(handler), handler.formatter)
            handler.setFormatter(_ISO)
        elif id(handler) in _SAVED_FORMATTERS:
            handler.setFormatter(_SAVED_FORMATTERS.pop(id(handler)))


def log_settings(svc, user: User, update: dict[str, Any] | None = None) -> dict[str, Any]:
    """Triton's log settings mapped onto the service's Python loggers (``mlaas4hep_lab``): ``log_info``,
    ``log_warning``, ``log_error`` (whether those levels are logged), ``log_verbose_level`` (> 0: debug
    messages too), ``log_format`` (``default`` or ``ISO8601`` timestamps) and ``log_file`` (read only).
    With ``update`` (admins only, else 403), the settings it names change and all are returned. Python
    logs a level and all above it, so a combination such as info on and warning off is refused (400)."""
    with _LOG_LOCK:
        state = _current()
        if update is None:
            return state
        if not is_admin(svc, user):
            raise Forbidden("changing the log settings needs an admin of this service")
        new = _check_update(update, state)
        _apply(new)
        _LOG_STATE.update(new)
        logging.getLogger(_LOGGER).info("log settings changed by %s: %s", user.name, update)
        return dict(new)
