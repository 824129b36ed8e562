"""The inference service: ``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it.

Routes (all under ``settings.prefix``, which JupyterHub sets through ``JUPYTERHUB_SERVICE_PREFIX``; all
need a token except the health checks):

* TFaaS: ``POST /upload``, ``POST /json``, ``GET /models``, ``DELETE /delete/{model}``, ``GET /params/{model}``
* Open Inference Protocol v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``GET /v2/models/{model}[/versions/{v}]``, ``.../ready``, ``POST .../infer``
* raw events with the bundle's own preprocessing: ``POST /v2/models/{model}[/versions/{v}]/events``
  (also ``.../raw`` and ``POST /raw/{model}``)
* store: ``POST /v2/models/{model}/tags``, ``POST /v2/models/{model}/share``,
  ``DELETE /v2/models/{model}[/versions/{v}]``
* ``GET /metrics`` (Prometheus), ``POST /echo``, ``GET /whoami``, ``GET /healthz``, ``GET /openapi.json``

``{model}`` is a name of one's own, or ``owner:name`` (also ``owner/name``, as two path segments or
URL-encoded) for a model another user shared. Errors are ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from mlaas4hep_lab import __version__
from mlaas4hep_lab.auth import Authenticator, AuthError, User
from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.serving import ServingError
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving.batching import Batcher, Direct
from mlaas4hep_lab.serving.metrics import LimitsMiddleware, Metrics
from mlaas4hep_lab.serving.settings import SETTINGS_ENV, Settings
from mlaas4hep_lab.serving.store import LoadedModel, ModelStore

__all__ = ["create_app", "app_from_env", "serve", "Service"]

log = logging.getLogger("mlaas4hep_lab.serving")
_JSON = "application/json"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, _JSON)


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _json({"error": message}, status, headers)


class Service:
    """What the routes share: settings, store, authenticator, metrics, inference threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auth = Authenticator.from_settings(settings)
        self.store = ModelStore(settings.store_dir, settings.runtime, settings.runtime_threads,
                                settings.max_tar_members, settings.max_tar_bytes)
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="mlaas4hep-infer")
        self.depth = settings.max_json_depth

    async def user(self, request: Request) -> User:
        try:
            return await self.auth.authenticate(request.headers.get("authorization"))
        except AuthError as err:
            raise ServingError(str(err), err.status) from None

    async def model(self, user: User, ref: str, version: str | int | None = None) -> LoadedModel:
        """The loaded model ``user`` means by ``ref`` (loading it in a thread the first time)."""
        store = self.store
        store.refresh()
        state, v = store.find(user.name, ref, None if version is None else str(version))
        model = store.loaded(state["owner"], state["name"], v)
        if model is None:
            model = await asyncio.to_thread(store.load, state["owner"], state["name"], v)
        if model.batcher is None:
            model.batcher = self._batcher(model)
        return model

    def _batcher(self, model: LoadedModel):
        s = self.settings
        label = model.ref
        # only a tiny model may run on the event loop: a one-row pass must cost less than a thread hop
        inline = s.inline_rows if model.runtime.row_seconds < 1e-4 else 0

        def on_batch(rows: int, requests: int) -> None:
            self.metrics.observe_batch(label, rows, requests)

        if not s.batching:
            return Direct(model.runtime.predict, self.executor, inline, on_batch)
        return Batcher(model.runtime.predict, max_batch=s.max_batch, max_delay_ms=s.max_delay_ms,
                       queue_size=s.queue_size, executor=self.executor, inline_rows=inline,
                       on_batch=on_batch)

    async def score(self, model: LoadedModel, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0, np.float32)
        try:
            return await model.batcher.submit(X)
        except ServingError as err:
            if err.status == 503:
                self.metrics.rejected[model.ref] += 1
            raise

    # -- the hot routes' work, shared by the fast Starlette routes and their documented FastAPI twins
    async def predict_json(self, request: Request, user: User) -> Response:
        req = S.parse_body(await request.body(), S.JsonRequest, self.depth)
        model = await self.model(user, req.model, req.version)
        return _json(await self.score(model, S.json_matrix(req, model)))

    async def infer(self, request: Request, user: User, ref: str, version: str | None) -> Response:
        req = S.parse_body(await request.body(), S.InferRequest, self.depth)
        model = await self.model(user, ref, version)
        scores = await self.score(model, S.infer_matrix(req, model))
        out = {"model_name": ref, "model_version": model.version,
               "outputs": [{"name": "score", "shape": [len(scores)], "datatype": "FP32", "data": scores}]}
        if req.id is not None:
            out["id"] = req.id
        return _json(out)

    async def events(self, request: Request, user: User, ref: str, version: str | None) -> Response:
        req = S.parse_body(await request.body(), S.EventsRequest, self.depth)
        model = await self.model(user, ref, version if version is not None else req.version)
        events = req.events
        size = len(events) if isinstance(events, list) else sum(len(v) for v in events.values())
        if size > 4096:  # big batches are preprocessed off the event loop
            X, keep = await asyncio.to_thread(S.events_matrix, events, model)
        else:
            X, keep = S.events_matrix(events, model)
        scores = await self.score(model, X)
        out = {"model_name": ref, "model_version": model.version, "scores": scores, "keep": keep}
        if req.id is not None:
            out["id"] = req.id
        return _json(out)

    async def echo(self, request: Request) -> Response:
        return _json(S.load_json(await request.body(), self.depth))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Route(Route):
    """A Starlette route that records itself in the scope (as FastAPI's do) for the metrics' labels."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _fast_routes(svc: Service) -> list[Route]:
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's FastAPI app over ``settings.store_dir`` (see the module docstring for the routes)."""
    settings = settings or Settings.from_env()
    svc = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.preload:
            await asyncio.to_thread(svc.store.preload)
        if getattr(app.state, "owns_process", False):  # set by serve(): not when embedded (tests, hub)
            # what is loaded by now lives as long as the server: keep it out of GC passes, and collect
            # less often (hundreds of requests in flight allocate fast; a GC pass costs them all latency)
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
        try:
            yield
        finally:
            svc.close()
            await svc.auth.aclose()

    # the routers' routes go straight into the app: FastAPI resolves included routers on every request
    routers = (_public_router(settings.prefix), _tfaas_router(svc), _v2_router(svc), _admin_router(svc))
    app = FastAPI(title="mlaas4hep-lab inference service", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  # our own /metrics; OpenTelemetry's per-request checks would cost ~10 us a request
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  routes=_fast_routes(svc) + [route for router in routers for route in router.routes])
    app.state.service = svc
    _error_handlers(app)
    app.add_middleware(LimitsMiddleware, metrics=svc.metrics, body_cap=settings.max_body_bytes,
                       upload_cap=settings.max_upload_bytes)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description="TFaaS and Open Inference Protocol v2 routes over a model store")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in S.BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        return _error(exc.status, str(exc))

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError):
        return _error(exc.status, str(exc))

    @app.exception_handler(MLaaSError)
    async def engine_error(request: Request, exc: MLaaSError):
        return _error(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:3]]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the service keeps running")


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

    @router.post("/json", response_model=list[float], openapi_extra=S.body_doc(S.JsonRequest))
    async def predict_json(request: Request, user: User = user_dep):
        """Scores of model inputs given by feature name (TFaaS): ``values`` is one event or a list of
        events, ``keys`` names their features in any order; returns a list of floats, one per event."""
        return await svc.predict_json(request, user)

    @router.post("/upload", status_code=201, response_model=S.UploadResponse)
    async def upload(request: Request, name: str | None = None, version: str | None = None,
                     shared: bool | None = None, user: User = user_dep):
        """Upload a bundle: the tarball as the body (``application/gzip``, query ``name``, ``version``,
        ``shared``) or a multipart form with the tarball in a file field ``bundle`` (or ``file``,
        ``model``) and optional fields ``name``, ``version``, ``shared``. The original TFaaS form with a
        bare ONNX file in ``model`` (plus ``params`` JSON with ``features``, ``labels``) works too.
        The model is loaded and tested before it replaces the served version (201)."""
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
        svc.store.refresh()
        return _json(await asyncio.to_thread(svc.store.delete, user.name, model))

    @router.get("/params/{model:path}")
    async def params(model: str, version: str | None = None, user: User = user_dep):
        """The manifest, params, preproc and specs of a model version (default: latest)."""
        svc.store.refresh()
        state, v = svc.store.find(user.name, model, version)
        return _json(await asyncio.to_thread(_bundle_files, svc, state, v))

    @router.post("/raw/{model:path}", response_model=S.EventsResponse,
                 openapi_extra=S.body_doc(S.EventsRequest))
    async def raw(model: str, request: Request, user: User = user_dep):
        """Scores of raw events, with the bundle's own cuts, new branches and normalisation."""
        return await svc.events(request, user, model, None)

    return router


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
    upload = await S.read_upload(request, svc.store.root / ".staging", name, version, shared)
    try:
        if upload.bare:  # the original TFaaS form with a bare model file (ONNX here)
            return await asyncio.to_thread(svc.store.ingest_onnx, user.name, upload.path, upload.name,
                                           upload.version, upload.shared, upload.params, upload.labels)
        return await asyncio.to_thread(svc.store.ingest, user.name, upload.path, upload.name, upload.version,
                                       upload.shared)
    finally:
        os.unlink(upload.path)


def _v2_router(svc: Service) -> APIRouter:
    router = APIRouter(prefix=svc.settings.prefix, tags=["v2"], responses=_ERRORS)
    user_dep = Depends(svc.user)
    depth = svc.settings.max_json_depth

    @router.get("/v2", response_model=S.ServerMetadata)
    async def server(user: User = user_dep):
        return _json({"name": "mlaas4hep-lab", "version": __version__,
                      "extensions": ["tfaas", "raw_events", "model_tags", "model_sharing", "dynamic_batching"]})

    # versioned routes first: {model:path} is greedy
    @router.post("/v2/models/{model:path}/versions/{version}/infer", response_model=S.InferResponse,
                 openapi_extra=S.body_doc(S.InferRequest))
    async def infer_version(model: str, version: str, request: Request, user: User = user_dep):
        """OIP inference: one input ``features`` (FP32/FP64, shape [N, F]); output ``score`` [N]."""
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
        svc.store.refresh()
        state, v = svc.store.find(user.name, model, version)
        try:
            await svc.model(user, model, v)
        except ServingError as err:
            return _error(503, f"model {model!r} version {v} cannot be loaded: {err}")
        return _json({"name": model, "version": v, "ready": True})

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
        svc.store.refresh()
        return _json(await asyncio.to_thread(svc.store.delete, user.name, model, version))

    @router.delete("/v2/models/{model:path}", response_model=S.DeleteResponse)
    async def delete_model(model: str, user: User = user_dep):
        svc.store.refresh()
        return _json(await asyncio.to_thread(svc.store.delete, user.name, model))

    return router


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
        return _json({"name": user.name, "source": user.source, "groups": list(user.groups)})

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, user: User = user_dep):
        return _json(request.app.openapi())

    return router


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings from ``MLAAS4HEP_SERVE_SETTINGS`` (JSON)."""
    raw = os.environ.get(SETTINGS_ENV)
    app = create_app(Settings.from_json(raw) if raw else Settings.from_env())
    app.state.owns_process = True
    return app


def serve(settings: Settings) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    options = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
               "access_log": False, "timeout_graceful_shutdown": 5}
    try:
        import uvloop  # noqa: F401
        options["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401
        options["http"] = "httptools"
    except ImportError:
        pass
    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("mlaas4hep_lab.serving.app:app_from_env", factory=True, workers=settings.workers, **options)
    else:
        app = create_app(settings)
        app.state.owns_process = True
        uvicorn.run(app, **options)
