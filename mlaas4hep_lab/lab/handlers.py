"""REST routes of the server extension, below ``<base_url>/mlaas4hep-lab/``; every one needs the server's
own authentication (a login cookie or ``Authorization: token ...``), as the contents API does.

Files and runs (paths are API paths, relative to the server's root folder):

* ``GET  status``: the package version, the services (configured or not), whether Voila is there
* ``GET  inspect?path=a/sig.root``: trees, branches, skipped leaves, labels (see :mod:`.inspect`)
* ``GET  histogram?path=&tree=&branch=[&bins=]``: binned counts, one series per known label
* ``POST new-lab`` ``{"paths": [...]}``: writes ``lab-<name>.ipynb`` beside the data; ``{"path", "ready"}``
* ``GET  dashboard``: the dashboard notebook's path and its Voila URL (404 when there is none)
* ``GET  runs``: every run below the root, newest first (see :mod:`.runs`)
* ``GET  runs/curves?run=a&run=b``: learning curves and ROC curves of those runs

The services (jobs, models) are in :mod:`.service_handlers`.
"""

from __future__ import annotations

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async, url_path_join
from tornado.web import HTTPError

from mlaas4hep_lab import __version__
from mlaas4hep_lab.lab import API, inspect, notebooks, services
from mlaas4hep_lab.lab._base import SETTINGS_KEY, BaseHandler, LabContext, api
from mlaas4hep_lab.lab.paths import Root
from mlaas4hep_lab.lab.runs import RunIndex, read_curves

__all__ = ["setup_handlers", "ROUTES"]

MAX_COMPARED = 12


class _Files(BaseHandler):
    auth_resource = "contents"


class StatusHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        app = self.ctx.server_app
        enabled = getattr(app, "jpserver_extensions", {}) or {}
        voila = any(v for k, v in enabled.items() if k.split(".")[0] == "voila")
        self.reply({"version": __version__, "voila": voila,
                    "jobs": services.jobs_service(self.ctx.env).describe(),
                    "models": services.models_service(self.ctx.env).describe()})


class InspectHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        path = self.ctx.root.resolve(self.get_argument("path", None), kind="file", what="file")
        if path.suffix.lower() != ".root":
            raise HTTPError(400, f"{path.name} is not a .root file")
        info = await self.blocking(inspect.describe_file, path, self.ctx.root.path)
        self.reply({"path": self.ctx.root.api_path(path), "name": path.name, **info})


class HistogramHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        path = self.ctx.root.resolve(self.get_argument("path", None), kind="file", what="file")
        tree, branch = self.get_argument("tree", None), self.get_argument("branch", None)
        if not tree or not branch:
            raise HTTPError(400, "give tree= and branch=")
        bins = self.int_arg("bins")
        self.reply(await self.blocking(inspect.histogram, path, tree, branch, self.ctx.root.path, bins))


class NewLabHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def post(self):
        body = self.body()
        given = body.get("paths")
        if isinstance(given, str):
            given = [given]
        if not isinstance(given, list) or not given or not all(isinstance(p, str) for p in given):
            raise HTTPError(400, 'give {"paths": [...]}: a files.txt, a folder, or .root files')
        root = self.ctx.root
        # "" is the root folder itself (the file browser's top level)
        paths = [root.path if p.strip() in ("", "/") else root.resolve(p) for p in given]
        plan = await self.blocking(notebooks.plan_lab, paths, root.path)
        target = notebooks.notebook_name(plan.folder, plan.stem)
        api_path = root.api_path(target)
        cm = self.contents_manager
        await ensure_async(cm.save({"type": "notebook", "format": "json",
                                    "content": notebooks.notebook_json(plan)}, api_path))
        self.reply({"path": api_path, "ready": plan.ready, "note": plan.note, "code": plan.code}, 201)


class DashboardHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        found = await self.blocking(notebooks.find_dashboard, self.ctx.root.path)
        if found is None:
            raise HTTPError(404, "no dashboard.ipynb below your folder (the hub copies it into notebooks/; "
                                 "in a checkout of mlaas4hep-lab it is notebooks/dashboard.ipynb)")
        path = self.ctx.root.api_path(found)
        self.reply({"path": path, "voila": url_path_join(self.base_url, "voila/render", path)})


class RunsHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        rows, complete = await self.blocking(self.ctx.runs.runs)
        self.reply({"runs": rows, "complete": complete})


class CurvesHandler(_Files):
    @tornado.web.authenticated
    @authorized
    @api
    async def get(self):
        ids = self.get_arguments("run")
        if not ids:
            raise HTTPError(400, "give one or more run= (a run's id from the runs list)")
        if len(ids) > MAX_COMPARED:
            raise HTTPError(400, f"compare at most {MAX_COMPARED} runs at once")
        out = []
        for run_id in ids:
            folder = self.ctx.root.resolve(run_id, kind="dir", what="run")
            if not (folder / "metrics.json").is_file() and not (folder / "metrics.jsonl").is_file():
                raise HTTPError(404, f"{run_id!r} is not a run folder (no metrics.json or metrics.jsonl)")
            out.append({"id": run_id, **await self.blocking(read_curves, folder)})
        self.reply({"runs": out})


ROUTES = [
    ("status", StatusHandler),
    ("inspect", InspectHandler),
    ("histogram", HistogramHandler),
    ("new-lab", NewLabHandler),
    ("dashboard", DashboardHandler),
    ("runs", RunsHandler),
    ("runs/curves", CurvesHandler),
]


def setup_handlers(server_app) -> LabContext:
    """Register the routes on the server's tornado application; the shared context is returned."""
    from mlaas4hep_lab.lab.service_handlers import ROUTES as SERVICE_ROUTES

    cm = server_app.contents_manager
    root = Root(server_app.root_dir, allow_hidden=bool(getattr(cm, "allow_hidden", False)))
    ctx = LabContext(root=root, runs=RunIndex(root.path), server_app=server_app)
    web_app = server_app.web_app
    web_app.settings[SETTINGS_KEY] = ctx
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base, API, pattern), handler)
                                 for pattern, handler in [*ROUTES, *SERVICE_ROUTES]])
    return ctx
