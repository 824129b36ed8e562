"""The jobs service (the MLaaS4HEP server): ``create_app(settings)`` builds the FastAPI app; ``serve(settings)``
runs it.

Routes (all under ``settings.prefix``, which JupyterHub sets through ``JUPYTERHUB_SERVICE_PREFIX``; all
need a token except ``/health``; errors are ``{"error": "..."}`` with a 4xx status):

* ``POST /submit`` (JSON, see :class:`~mlaas4hep_lab.jobs.schemas.SubmitRequest`) -> 201 ``{"id", ...}``
* ``GET /jobs`` (yours; ``?all=true`` for admins, ``?status=running``)
* ``GET /jobs/{id}``: status, progress, phase, latest metrics, error, push result
* ``GET /jobs/{id}/logs``: the log's tail, or ``?offset=N`` onwards (``next_offset`` for the next call)
* ``GET /jobs/{id}/bundle``: the bundle ``.tar.gz`` of a succeeded job
* ``DELETE /jobs/{id}``: cancel a queued or running job; delete a finished one
* ``GET /health`` (no token), ``GET /whoami``, ``GET /openapi.json``

Jobs belong to their submitter: another user's job answers 404, as one that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response

from mlaas4hep_lab import __version__
from mlaas4hep_lab.auth import Authenticator, User
from mlaas4hep_lab.jobs import schemas as S
from mlaas4hep_lab.jobs.service import JobService
from mlaas4hep_lab.jobs.settings import Settings
from mlaas4hep_lab.jobs.submission import check_submission
from mlaas4hep_lab.serving import Conflict
from mlaas4hep_lab.serving.app import install_error_handlers, openapi_schema
from mlaas4hep_lab.serving.metrics import LimitsMiddleware
from mlaas4hep_lab.serving.schemas import body_doc, parse_body
from mlaas4hep_lab.serving.service import json_response

__all__ = ["create_app", "serve"]

log = logging.getLogger("mlaas4hep_lab.jobs")
# 503: a service that cannot isolate jobs refuses them (jobs/isolation.py)
_ERRORS = {code: {"model": S.ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)}
TAIL_BYTES = 64 * 1024
MAX_LOG_READ = 1 << 20


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's FastAPI app over ``settings.state_dir`` (see the module docstring for the routes)."""
    settings = settings or Settings.from_env()
    svc = JobService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(svc.tick)   # re-attach to, finish or resume the jobs of a previous run
        task = asyncio.create_task(_monitor(svc))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await svc.auth.aclose()
            svc.close()

    app = FastAPI(title="mlaas4hep-lab jobs service", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    for router in (_public_router(svc), _jobs_router(svc)):
        app.include_router(router)
    install_error_handlers(app)
    # bodies are capped while they are read (a 200 MiB POST /submit is stopped at the cap, not buffered)
    app.add_middleware(LimitsMiddleware, body_cap=settings.max_body_bytes)
    app.openapi = lambda: openapi_schema(
        app, "Training jobs (the MLaaS4HEP server): submit, follow, fetch, cancel", S.BODY_MODELS)
    return app


async def _monitor(svc: JobService) -> None:
    while True:
        await asyncio.sleep(svc.settings.poll_interval)
        try:
            await asyncio.to_thread(svc.tick)
        except Exception:  # the monitor must outlive one bad pass
            log.exception("jobs monitor pass failed")


def _public_router(svc: JobService) -> APIRouter:
    router = APIRouter(prefix=svc.settings.prefix, tags=["health"])

    @router.get("/health", response_model=S.Health)
    async def health():
        return json_response({"live": True, **await asyncio.to_thread(svc.counts), "isolation": svc.isolation.mode})

    return router


def _jobs_router(svc: JobService) -> APIRouter:
    s = svc.settings
    router = APIRouter(prefix=s.prefix, tags=["jobs"], responses=_ERRORS)
    user_dep = Depends(svc.user)

    @router.post("/submit", status_code=201, response_model=S.SubmitResponse, openapi_extra=body_doc(S.SubmitRequest))
    async def submit(request: Request, user: User = user_dep):
        """Queue a training job: files, labels, model (template name or model.py source), params, preproc;
        optionally ``push`` the bundle to the inference service when it succeeds (with your token)."""
        svc.check_submit_scope(user)
        body = await request.body()   # capped at max_body_bytes while read (LimitsMiddleware)
        req = parse_body(body, S.SubmitRequest, s.max_json_depth)
        sub = await asyncio.to_thread(check_submission, req, s.data_roots, s.max_files, s.allowed_hosts)
        token = Authenticator.token_from_header(request.headers.get("authorization"))
        push = req.push.model_dump() if req.push else None
        job = await asyncio.to_thread(svc.submit, user, sub, req.name, push, token)
        await asyncio.to_thread(svc.tick)  # start it now when a slot is free
        return json_response({"id": job.id, "status": (svc.db.get(job.id) or job).status,
                              "url": f"{s.prefix}/jobs/{job.id}", "warnings": sub.warnings}, 201)

    @router.get("/jobs", response_model=list[S.JobSummary])
    async def jobs(all: bool = False, status: str | None = None, user: User = user_dep):  # noqa: A002
        """Your jobs, oldest first (``all=true``: everyone's, for admins); ``status`` filters."""
        owner = None if all and svc.is_admin(user) else user.name
        wanted = tuple(x.strip() for x in status.split(",")) if status else None
        rows = await asyncio.to_thread(svc.db.list, owner, wanted)
        return json_response([job.summary() for job in rows])

    @router.get("/jobs/{job_id}", response_model=S.JobDetail)
    async def job(job_id: str, user: User = user_dep):
        """Status, progress (0-1), phase, the latest metrics, the error of a failed job, the push result."""
        return json_response(svc.owned(user, job_id).public())

    @router.get("/jobs/{job_id}/logs", response_model=S.LogChunk)
    async def logs(job_id: str, offset: int | None = Query(None, ge=0),
                   limit: int = Query(TAIL_BYTES, ge=1, le=MAX_LOG_READ), user: User = user_dep):
        """The job's log: its last 64 KiB, or from byte ``offset`` on (at most ``limit`` bytes)."""
        path = svc.log_path(svc.owned(user, job_id))   # in the service's state, not in the job's folder
        return json_response(await asyncio.to_thread(_read_log, path, offset, limit))

    @router.get("/jobs/{job_id}/bundle", response_class=Response,
                responses={200: {"content": {"application/gzip": {}}, "description": "the bundle tarball"}})
    async def bundle(job_id: str, user: User = user_dep):
        """The model bundle (``.tar.gz``) of a succeeded job; load it with ``mlaas4hep_lab.bundle.Bundle``."""
        job = svc.owned(user, job_id)
        if job.status != "succeeded" or not job.bundle or not os.path.isfile(job.bundle):
            raise Conflict(f"job {job_id} is {job.status}: a bundle is there once it has succeeded")
        return FileResponse(job.bundle, media_type="application/gzip",
                            filename=f"{job.name or 'job-' + job.id}.tar.gz")

    @router.delete("/jobs/{job_id}", response_model=S.DeleteResponse)
    async def delete(job_id: str, user: User = user_dep):
        """Cancel a queued or running job (its whole process group is killed), or delete a finished one
        with its files."""
        job = svc.owned(user, job_id)
        if job.active:
            job = await asyncio.to_thread(svc.cancel, job)
            return json_response({"id": job.id, "status": job.status, "deleted": False})
        await asyncio.to_thread(svc.delete, job)
        return json_response({"id": job.id, "status": job.status, "deleted": True})

    @router.get("/whoami")
    async def whoami(user: User = user_dep):
        return json_response({"name": user.name, "source": user.source, "groups": list(user.groups),
                              "admin": svc.is_admin(user), "can_submit": _can_submit(svc, user)})

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, user: User = user_dep):
        return json_response(request.app.openapi())

    return router


def _can_submit(svc: JobService, user: User) -> bool:
    try:
        svc.check_submit_scope(user)
        return True
    except Exception:  # noqa: BLE001 - the answer is the boolean
        return False


def _read_log(path: Path, offset: int | None, limit: int) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"text": "", "offset": 0, "next_offset": 0, "size": 0}
    start = max(0, size - TAIL_BYTES) if offset is None else min(offset, size)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(limit)
    return {"text": data.decode("utf-8", "replace"), "offset": start, "next_offset": start + len(data), "size": size}


def serve(settings: Settings) -> None:
    """Run the service with uvicorn (blocking). One process: the jobs table has one writer."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                timeout_graceful_shutdown=5)
