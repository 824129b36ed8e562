"""The service's routes: fast Starlette twins of the hot routes, then the FastAPI routers (health, TFaaS,
Open Inference Protocol v2 with the raw-events and store routes, service). See :mod:`.app` for the list."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.routing import Match, Route

from mlaas4hep_lab.auth import User
from mlaas4hep_lab.serving import BadRequest
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving import schemas_triton as ST
from mlaas4hep_lab.serving import triton as T
from mlaas4hep_lab.serving.service import Service
from mlaas4hep_lab.serving.service import error_response as _error
from mlaas4hep_lab.serving.service import json_response as _json

__all__ = ["fast_routes", "routers"]


class _Route(Route):
    """A Starlette route that records itself in the scope (as FastAPI's do) for the metrics' labels."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def fast_routes(svc: Service) -> list[Route]:
    """The hot routes as plain Starlette routes, placed before their FastAPI twins (which document them
    in the OpenAPI schema): FastAPI's per-request machinery would cost more than the prediction, twice
    over when the handler waits for a batch. Same auth (``Service.user``), same code, same errors."""

    async def predict_json(request: Request) -> Response:
        return await svc.predict_json(request, await svc.user(request))

    async def infer(request: Request) -> Response:
        params = request.path_params
        return await svc.infer(request, await svc.user(request), params["model"], params.get("version"))

    async def events(request: Request) -> Response:
        params = request.path_params
        return await svc.events(request, await svc.user(request), params["model"], params.get("version"))

    async def echo(request: Request) -> Response:
        await svc.user(request)
        return await svc.echo(request)

    p, post = svc.settings.prefix, ["POST"]
    routes = [_Route(f"{p}/json", predict_json, methods=post), _Route(f"{p}/echo", echo, methods=post),
              _Route(f"{p}/v2/models/{{model:path}}/versions/{{version}}/infer", infer, methods=post),
              _Route(f"{p}/v2/models/{{model:path}}/infer", infer, methods=post),
              _Route(f"{p}/raw/{{model:path}}", events, methods=post)]
    for suffix in ("events", "raw"):
        routes += [_Route(f"{p}/v2/models/{{model:path}}/versions/{{version}}/{suffix}", events, methods=post),
                   _Route(f"{p}/v2/models/{{model:path}}/{suffix}", events, methods=post)]
    return routes


_ERRORS = {code: {"model": S.ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 503)}


def _public_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["health"])

    @router.get("/healthz", response_model=S.Health)
    async def healthz():
        return _json({"live": True})

    @router.get("/v2/health/live", response_model=S.Health)
    async def live():
        return _json({"live": True})

    @router.get("/v2/health/ready", response_model=S.Ready)
    async def ready():
        return _json({"ready": True})

    return router


def _tfaas_router(svc: Service) -> APIRouter:
    router = APIRouter(prefix=svc.settings.prefix, tags=["tfaas"], responses=_ERRORS)
    user_dep = Depends(svc.user)

    @router.post("/json", response_model=list[float] | list[list[float]],
                 openapi_extra=S.body_doc(S.JsonRequest))
    async def predict_json(request: Request, user: User = user_dep):
        """Scores of model inputs given by feature name (TFaaS): ``values`` is one event or a list of
        events, ``keys`` names their features in any order; returns a list of floats, one per event, or
        for a multi-class or regression model one list per event of its values (in the order of the
        metadata's ``columns``: ``p_<class>`` or the targets)."""
        return await svc.predict_json(request, user)

    @router.post("/upload", status_code=201, response_model=S.UploadResponse, openapi_extra=S.UPLOAD_DOC)
    async def upload(request: Request, name: str | None = None, version: str | None = None,
                     shared: bool | None = None, user: User = user_dep):
        """Upload a bundle: the tarball as the body (``application/gzip``, query ``name``, ``version``,
        ``shared``) or a multipart form with the tarball in a file field ``bundle`` (or ``file``,
        ``model``) and optional fields ``name``, ``version``, ``shared``. The original TFaaS form with a
        bare ONNX file in ``model`` (plus ``params`` JSON with ``features``, ``labels``) works too.
        The model is loaded and tested before it replaces the served version (201)."""
        svc.check_push_scope(user)
        return _json(await _upload(svc, request, user, name, version, shared), 201)

    @router.get("/models", response_model=list[S.ModelSummary])
    async def models(name: str | None = None, tag: str | None = None, owner: str | None = None,
                     user: User = user_dep):
        """Models you can use (yours and those shared), filtered by part of the name, a tag, an owner."""
        svc.store.refresh()
        return _json(svc.store.visible(user.name, name, tag, owner))

    @router.delete("/delete/{model:path}", response_model=S.DeleteResponse)
    async def delete(model: str, user: User = user_dep):
        """Delete one of your models with all its versions."""
        return _json(await _delete(svc, user, model))

    @router.delete("/delete", response_model=S.DeleteResponse)
    async def delete_named(request: Request, model: str | None = None, user: User = user_dep):
        """Delete one of your models with all its versions, named as the original TFaaS took it: in the
        query (``?model=X``) or in a form field ``model`` (multipart or urlencoded body)."""
        if model is None and request.headers.get("content-type", "").startswith(
                ("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form(max_files=0, max_fields=8)
            value = form.get("model")
            model = value if isinstance(value, str) else None
            await form.close()
        if not model or not model.strip():
            raise BadRequest("no model named: give ?model=NAME or a form field 'model'")
        return _json(await _delete(svc, user, model.strip()))

    @router.get("/params", response_model=list[dict[str, Any]])
    async def params_all(user: User = user_dep):
        """The manifest, params, preproc and specs of the latest version of every model you can use (yours
        and those shared), as ``GET /params/{model}`` gives them one by one."""
        svc.store.refresh()
        states = [svc.store.find(user.name, m["ref"]) for m in svc.store.visible(user.name)]
        return _json(await asyncio.to_thread(lambda: [_bundle_files(svc, st, v) for st, v in states]))

    @router.get("/params/{model:path}")
    async def params(model: str, version: str | None = None, user: User = user_dep):
        """The manifest, params, preproc and specs of a model version (default: latest)."""
        svc.store.refresh()
        state, v = svc.store.find(user.name, model, version)
        return _json(await asyncio.to_thread(_bundle_files, svc, state, v))

    @router.post("/raw/{model:path}", response_model=S.EventsResponse,
                 openapi_extra=S.body_doc(S.EventsRequest))
    async def raw(model: str, request: Request, user: User = user_dep):
        """Scores of raw events, with the bundle's own cuts, new branches and normalisation (a
        multi-output model: per event the list of its values, named by ``outputs``)."""
        return await svc.events(request, user, model, None)

    return router


async def _delete(svc: Service, user: User, model: str, version: str | None = None) -> dict[str, Any]:
    """Delete a model (or one version) and forget the statistics of what went."""
    svc.store.refresh()
    answer = await asyncio.to_thread(svc.store.delete, user.name, model, version)
    owner, _, name = answer["deleted"].partition(":")
    svc.stats.drop(owner, name, answer["versions"])
    return answer


def _bundle_files(svc: Service, state: dict[str, Any], version: str) -> dict[str, Any]:
    folder = svc.store.root / state["owner"] / state["name"] / version
    out: dict[str, Any] = {"name": state["name"], "owner": state["owner"], "version": version,
                           "tags": state["tags"], "shared": bool(state.get("shared"))}
    for key in ("manifest", "params", "preproc", "specs", "metrics"):
        try:
            out[key] = orjson.loads((folder / f"{key}.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            out[key] = None
    return out


async def _upload(svc: Service, request: Request, user: User, name, version, shared) -> dict[str, Any]:
    """Stream the upload to ``.staging`` and hand it to the store; the staged file goes whatever happens
    (the store removes its own extraction folder)."""
    upload = await S.read_upload(request, svc.store.root / ".staging", name, version, shared,
                                 svc.settings.max_json_depth)
    try:
        if upload.bare:  # the original TFaaS form with a bare model file (ONNX, or a frozen TensorFlow graph)
            return await asyncio.to_thread(svc.store.ingest_onnx, user.name, upload.path, upload.name,
                                           upload.version, upload.shared, upload.params, upload.labels)
        return await asyncio.to_thread(svc.store.ingest, user.name, upload.path, upload.name, upload.version,
                                       upload.shared, upload.params, upload.labels)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload.path)


def _v2_router(svc: Service) -> APIRouter:
    router = APIRouter(prefix=svc.settings.prefix, tags=["v2"], responses=_ERRORS)
    user_dep = Depends(svc.user)
    depth = svc.settings.max_json_depth

    @router.get("/v2", response_model=S.ServerMetadata)
    async def server(user: User = user_dep):
        return _json(T.server_metadata())

    # versioned routes first: {model:path} is greedy
    @router.post("/v2/models/{model:path}/versions/{version}/infer", response_model=S.InferResponse,
                 openapi_extra=S.body_doc(S.InferRequest))
    async def infer_version(model: str, version: str, request: Request, user: User = user_dep):
        """OIP inference: one input ``features`` (shape [N, F], any numeric datatype: FP32, FP16, FP64,
        INTn, UINTn), or all the named inputs of an objects-layout model (the metadata's
        ``named_inputs``); output ``score`` [N], or for a multi-class or regression model
        ``probabilities``/``targets`` (as the metadata names it) [N, W], with ``data`` in row-major order.
        A multi-output model also answers each of its ``columns`` as one [N] tensor when asked by name in
        ``outputs``.

        Binary tensor data (Triton's extension, what ``tritonclient.http`` sends): the header
        ``Inference-Header-Content-Length: L`` says the body's first L bytes are this JSON request, whose
        inputs carry ``parameters.binary_data_size`` instead of ``data``; their raw little-endian bytes
        follow, in order. ``parameters.binary_data_output: true`` (or ``binary_data: true`` on a requested
        output) answers in binary the same way (``application/octet-stream``, each output with
        ``parameters.binary_data_size``). Bodies may be sent with ``Content-Encoding: gzip`` or ``deflate``
        (the body limit holds for the inflated size); ``Accept-Encoding`` compresses large answers."""
        return await svc.infer(request, user, model, version)

    @router.post("/v2/models/{model:path}/infer", response_model=S.InferResponse,
                 openapi_extra=S.body_doc(S.InferRequest))
    async def infer_latest(model: str, request: Request, user: User = user_dep):
        """OIP inference with the version tagged ``latest``."""
        return await svc.infer(request, user, model, None)

    for suffix in ("events", "raw"):
        @router.post(f"/v2/models/{{model:path}}/versions/{{version}}/{suffix}", response_model=S.EventsResponse,
                     openapi_extra=S.body_doc(S.EventsRequest), name=f"{suffix}_version")
        async def events_version(model: str, version: str, request: Request, user: User = user_dep):
            """Scores of raw events with the bundle's own preprocessing (``keep``: passes the cuts)."""
            return await svc.events(request, user, model, version)

        @router.post(f"/v2/models/{{model:path}}/{suffix}", response_model=S.EventsResponse,
                     openapi_extra=S.body_doc(S.EventsRequest), name=f"{suffix}_latest")
        async def events_latest(model: str, request: Request, user: User = user_dep):
            """Scores of raw events with the latest version."""
            return await svc.events(request, user, model, None)

    async def ready(model: str, version: str | None, user: User) -> Response:
        ready, v, why = await T.model_ready(svc, user, model, version)
        return _json({"name": model, "version": v, "ready": True}) if ready else _error(why.status, str(why))

    _triton_routes(router, svc, user_dep)

    @router.get("/v2/models/{model:path}/versions/{version}/ready", response_model=S.Ready)
    async def ready_version(model: str, version: str, user: User = user_dep):
        return await ready(model, version, user)

    @router.get("/v2/models/{model:path}/ready", response_model=S.Ready)
    async def ready_latest(model: str, user: User = user_dep):
        return await ready(model, None, user)

    @router.post("/v2/models/{model:path}/tags", response_model=S.ModelSummary,
                 openapi_extra=S.body_doc(S.TagRequest))
    async def tag(model: str, request: Request, user: User = user_dep):
        """Point a tag (e.g. ``prod``) at a version (owner only); ``version: null`` removes it."""
        req = S.parse_body(await request.body(), S.TagRequest, depth)
        version = None if req.version is None else str(req.version)
        return _json(await asyncio.to_thread(svc.store.set_tag, user.name, model, req.tag, version))

    @router.post("/v2/models/{model:path}/share", response_model=S.ModelSummary,
                 openapi_extra=S.body_doc(S.ShareRequest))
    async def share(model: str, request: Request, user: User = user_dep):
        """Let every user read (predict, metadata) this model, or stop it (owner only)."""
        body = await request.body()
        req = S.parse_body(body, S.ShareRequest, depth) if body.strip() else S.ShareRequest()
        return _json(await asyncio.to_thread(svc.store.set_shared, user.name, model, req.shared))

    def metadata(model: str, version: str | None, user: User) -> Response:
        svc.store.refresh()
        state, v = svc.store.find(user.name, model, version)
        return _json(S.model_metadata(model, state, v, svc.store.served_runtime(state, v)[1]))

    @router.get("/v2/models/{model:path}/versions/{version}", response_model=S.ModelMetadata)
    async def metadata_version(model: str, version: str, user: User = user_dep):
        return metadata(model, version, user)

    @router.get("/v2/models/{model:path}", response_model=S.ModelMetadata)
    async def metadata_latest(model: str, user: User = user_dep):
        return metadata(model, None, user)

    @router.delete("/v2/models/{model:path}/versions/{version}", response_model=S.DeleteResponse)
    async def delete_version(model: str, version: str, user: User = user_dep):
        return _json(await _delete(svc, user, model, version))

    @router.delete("/v2/models/{model:path}", response_model=S.DeleteResponse)
    async def delete_model(model: str, user: User = user_dep):
        return _json(await _delete(svc, user, model))

    return router


def _triton_routes(router: APIRouter, svc: Service, user_dep) -> None:
    """Triton's model configuration, statistics, repository and logging routes (:mod:`.triton`), added
    before the metadata routes: ``{model:path}`` is greedy, and ``GET /v2/models/{model}`` would take
    ``m/config`` or ``stats`` for a model's name."""
    depth = svc.settings.max_json_depth

    @router.get("/v2/models/stats", response_model=ST.ModelStatsResponse)
    async def stats_all(user: User = user_dep):
        """Inference statistics of every model version you can use that this server process loaded or used."""
        return _json(T.model_stats(svc, user))

    @router.get("/v2/models/{model:path}/versions/{version}/config", response_model=ST.ModelConfig)
    async def config_version(model: str, version: str, user: User = user_dep):
        """Triton's model configuration of a version."""
        return _json(T.model_config(svc, user, model, version))

    @router.get("/v2/models/{model:path}/config", response_model=ST.ModelConfig)
    async def config_latest(model: str, user: User = user_dep):
        """Triton's model configuration (``max_batch_size``, ``input``/``output`` with ``dims`` without the
        batch axis, ``dynamic_batching``...) of the latest version."""
        return _json(T.model_config(svc, user, model))

    @router.get("/v2/models/{model:path}/versions/{version}/stats", response_model=ST.ModelStatsResponse)
    async def stats_version(model: str, version: str, user: User = user_dep):
        """Inference statistics of one version (Triton's statistics extension)."""
        return _json(T.model_stats(svc, user, model, version))

    @router.get("/v2/models/{model:path}/stats", response_model=ST.ModelStatsResponse)
    async def stats_model(model: str, user: User = user_dep):
        """Inference statistics of every version of a model: requests (success, fail), queue and compute
        times in nanoseconds, rows (``inference_count``), forward passes and their sizes (``batch_stats``)."""
        return _json(T.model_stats(svc, user, model))

    @router.post("/v2/repository/index", response_model=list[ST.RepositoryEntry],
                 openapi_extra=ST.inline_body_doc(ST.RepositoryIndexRequest))
    async def repository_index(request: Request, user: User = user_dep):
        """Every version of the models you can use: READY when loaded in this server process, else
        UNAVAILABLE with the reason; ``{"ready": true}`` keeps the ready ones (the body may be empty)."""
        body = ST.parse_optional_body(await request.body(), ST.RepositoryIndexRequest, depth)
        return _json(T.repository_index(svc, user, bool(body.get("ready", False))))

    @router.post("/v2/repository/models/{model:path}/load", response_model=ST.LoadResponse,
                 openapi_extra=ST.inline_body_doc(ST.LoadRequest))
    async def load(model: str, request: Request, user: User = user_dep):
        """Load a model's tagged versions into memory (any user who may use it); the body may be empty."""
        body = ST.parse_optional_body(await request.body(), ST.LoadRequest, depth)
        return _json(await T.load_model(svc, user, model, body.get("parameters")))

    @router.post("/v2/repository/models/{model:path}/unload", response_model=ST.LoadResponse,
                 openapi_extra=ST.inline_body_doc(ST.UnloadRequest))
    async def unload(model: str, request: Request, user: User = user_dep):
        """Drop a model's versions from memory (owner only); the files stay, and the next request or a load
        request loads a version again. Until then it is not ready."""
        body = ST.parse_optional_body(await request.body(), ST.UnloadRequest, depth)
        return _json(T.unload_model(svc, user, model, body.get("parameters")))

    @router.get("/v2/logging", response_model=ST.LogSettings)
    async def get_logging(user: User = user_dep):
        """The service's log settings, in Triton's form."""
        return _json(T.log_settings(svc, user))

    @router.post("/v2/logging", response_model=ST.LogSettings,
                 openapi_extra=ST.inline_body_doc(ST.LogSettingsUpdate, required=True))
    async def set_logging(request: Request, user: User = user_dep):
        """Change the settings given (admins of the service only: 403 otherwise); returns them all."""
        body = ST.parse_optional_body(await request.body(), ST.LogSettingsUpdate, depth)
        return _json(T.log_settings(svc, user, {k: v for k, v in body.items() if v is not None}))


def _admin_router(svc: Service) -> APIRouter:
    router = APIRouter(prefix=svc.settings.prefix, tags=["service"], responses=_ERRORS)
    user_dep = Depends(svc.user)

    @router.get("/metrics", response_class=Response)
    async def metrics(user: User = user_dep):
        """Prometheus text: requests and latencies per route, batch sizes per model."""
        text = svc.metrics.render(models_loaded=svc.store.loaded_count)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.post("/echo")
    async def echo(request: Request, user: User = user_dep):
        """Returns the JSON body: the ceiling of the HTTP stack (same auth, parsing and limits)."""
        return await svc.echo(request)

    @router.get("/whoami", response_model=S.WhoAmI)
    async def whoami(user: User = user_dep):
        """Who the token says you are, and what you store against your quota (0: no limit)."""
        return _json({"name": user.name, "source": user.source, "groups": list(user.groups),
                      "usage": svc.store.usage(user.name)})

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, user: User = user_dep):
        return _json(request.app.openapi())

    return router


def routers(svc: Service) -> tuple[APIRouter, ...]:
    """The documented routers, in matching order."""
    return (_public_router(svc.settings.prefix), _tfaas_router(svc), _v2_router(svc), _admin_router(svc))
