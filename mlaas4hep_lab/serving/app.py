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
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlaas4hep_lab import __version__
from mlaas4hep_lab.auth import AuthError
from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.serving import ServingError
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving.metrics import LimitsMiddleware
from mlaas4hep_lab.serving.routes import fast_routes, routers
from mlaas4hep_lab.serving.service import Service
from mlaas4hep_lab.serving.service import error_response as _error
from mlaas4hep_lab.serving.settings import SETTINGS_ENV, Settings

__all__ = ["create_app", "app_from_env", "serve", "install_error_handlers", "openapi_schema", "Service"]

log = logging.getLogger("mlaas4hep_lab.serving")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's FastAPI app over ``settings.store_dir`` (see the module docstring for the routes)."""
    settings = settings or Settings.from_env()
    svc = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.preload:
            await asyncio.to_thread(svc.store.preload)
        if getattr(app.state, "owns_process", False):  # set by serve(): not when embedded (tests, hub)
            svc.own_process_gc()
        grpc_server = None
        if settings.grpc_port:  # the gRPC service on this event loop, over the same Service (store, batching)
            from mlaas4hep_lab.serving.grpc import server as grpc_service

            grpc_server = await grpc_service.start(svc)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grpc_service.GRACE_SECONDS)
            svc.close()
            await svc.auth.aclose()

    # the routers' routes go straight into the app: FastAPI resolves included routers on every request
    routes = fast_routes(svc) + [route for router in routers(svc) for route in router.routes]
    app = FastAPI(title="mlaas4hep-lab inference service", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  # our own /metrics; OpenTelemetry's per-request checks would cost ~10 us a request
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  routes=routes)
    app.state.service = svc
    install_error_handlers(app)
    app.add_middleware(LimitsMiddleware, body_cap=settings.max_body_bytes, upload_cap=settings.max_upload_bytes,
                       metrics=svc.metrics)
    app.openapi = lambda: openapi_schema(app, "TFaaS and Open Inference Protocol v2 routes over a model store")
    return app


def openapi_schema(app: FastAPI, description: str, body_models=S.BODY_MODELS) -> dict[str, Any]:
    """The app's OpenAPI schema (built once), with the request bodies the fast routes parse themselves
    (``body_models``, pydantic models) and bearer security; the jobs service uses it too."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=description)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in body_models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure as ``{"error": message}`` with its status (the jobs service uses it too)."""
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
