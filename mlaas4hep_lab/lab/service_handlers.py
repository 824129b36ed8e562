"""REST routes that reach the jobs and inference services for the sidebar, with the token of the user's
server (:mod:`.services`); the browser never sees a service URL's token.

Jobs (``<base_url>/mlaas4hep-lab/jobs...``):

* ``GET jobs``: the user's jobs, newest first;  ``POST jobs``: submit (files, labels, model, params,
  preproc, name, push), as the jobs service's ``POST /submit``
* ``GET jobs/<id>``: status, progress, metrics;  ``DELETE jobs/<id>``: cancel, or delete a finished one
* ``GET jobs/<id>/logs?offset=N``: the log from byte N (its tail without N)
* ``GET jobs/<id>/bundle``: the bundle ``.tar.gz`` as a download

Models (``<base_url>/mlaas4hep-lab/models...``; a model is ``name`` or ``owner:name``):

* ``GET models``;  ``GET models/<m>[?version=]``: metadata;  ``DELETE models/<m>[?version=]``
* ``POST models/<m>/share`` ``{"shared": bool}``;  ``POST models/<m>/tags`` ``{"tag", "version"}``
* ``POST models/<m>/test`` ``{"rows": [[...]], "version"?}``: one inference request, outputs and time

Without a configured service these answer 503 with the environment variable to set.
"""

from __future__ import annotations

import re

import tornado.web
from jupyter_server.auth.decorator import authorized
from tornado.web import HTTPError

from mlaas4hep_lab.lab import services
from mlaas4hep_lab.lab._base import BaseHandler, api

__all__ = ["ROUTES"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")


class _Service(BaseHandler):
    auth_resource = "mlaas4hep-services"

    @property
    def jobs(self) -> services.Service:
        return services.jobs_service(self.ctx.env)

    @property
    def models(self) -> services.Service:
        return services.models_service(self.ctx.env)


class JobsHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        self.reply({"jobs": await self.blocking(services.jobs, self.jobs)})

    @tornado.web.authenticated
    @authorized
    @api
    async def post(self):
        self.reply(await self.blocking(services.submit, self.jobs, self.body()), 201)


class JobHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self, job_id: str):
        self.reply(await self.blocking(services.job, self.jobs, job_id))

    @tornado.web.authenticated
    @authorized
    @api
    async def delete(self, job_id: str):
        self.reply(await self.blocking(services.cancel, self.jobs, job_id))


class JobLogHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self, job_id: str):
        self.reply(await self.blocking(services.job_log, self.jobs, job_id, self.int_arg("offset")))


class JobBundleHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self, job_id: str):
        svc = self.jobs
        detail = await self.blocking(services.job, svc, job_id)
        data = await self.blocking(services.bundle, svc, job_id)
        name = _SAFE_NAME.sub("-", str(detail.get("name") or f"job-{job_id}")).strip("-") or "bundle"
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Content-Disposition", f'attachment; filename="{name}.tar.gz"')
        self.finish(data)


class ModelsHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        self.reply({"models": await self.blocking(services.models, self.models)})


class ModelHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self, name: str):
        version = self.get_argument("version", None) or None
        self.reply(await self.blocking(services.model_detail, self.models, name, version))

    @tornado.web.authenticated
    @authorized
    @api
    async def delete(self, name: str):
        version = self.get_argument("version", None) or None
        self.reply(await self.blocking(services.delete, self.models, name, version))


class ShareHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def post(self, name: str):
        shared = self.body().get("shared", True)
        if not isinstance(shared, bool):
            raise HTTPError(400, '"shared" must be true or false')
        self.reply(await self.blocking(services.share, self.models, name, shared))


class TagHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def post(self, name: str):
        body = self.body()
        tag, version = body.get("tag"), body.get("version")
        if not isinstance(tag, str) or not tag.strip():
            raise HTTPError(400, 'give "tag" (e.g. "prod") and "version" (null removes the tag)')
        version = None if version in (None, "") else str(version)
        self.reply(await self.blocking(services.tag, self.models, name, tag.strip(), version))


class TryModelHandler(_Service):
    @tornado.web.authenticated
    @authorized
    @api
    async def post(self, name: str):
        body = self.body()
        rows = body.get("rows")
        if isinstance(rows, list) and rows and not isinstance(rows[0], list):
            rows = [rows]   # one event given as a flat list
        version = body.get("version")
        self.reply(await self.blocking(services.test_request, self.models, name, rows,
                                       None if version in (None, "") else str(version)))


_ID = r"([A-Za-z0-9_.-]+)"
_MODEL = r"([^/]+)"
ROUTES = [
    ("jobs", JobsHandler),
    (f"jobs/{_ID}", JobHandler),
    (f"jobs/{_ID}/logs", JobLogHandler),
    (f"jobs/{_ID}/bundle", JobBundleHandler),
    ("models", ModelsHandler),
    (f"models/{_MODEL}", ModelHandler),
    (f"models/{_MODEL}/share", ShareHandler),
    (f"models/{_MODEL}/tags", TagHandler),
    (f"models/{_MODEL}/test", TryModelHandler),
]
