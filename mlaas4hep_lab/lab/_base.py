"""What every route of the server extension shares: the context (root folder, run index, worker threads)
and one way to answer, with errors turned into JSON replies with the right status.

Errors (``{"message": ...}``, as jupyter_server's own API answers them): a refused path keeps its status
(400, 403, 404); a missing branch or job is 404; bad input (``ValueError``, the engine's errors) is 400;
a service that is not configured is 503; a service's own refusal keeps its 4xx status; a service that does
not answer, or answers 5xx, is 502.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado.web import HTTPError

from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.lab.paths import PathRefused, Root
from mlaas4hep_lab.lab.runs import RunIndex
from mlaas4hep_lab.lab.services import NotConfigured, ServiceError

__all__ = ["LabContext", "BaseHandler", "api", "SETTINGS_KEY"]

SETTINGS_KEY = "mlaas4hep_lab"
MAX_BODY = 4 * 1024 * 1024


@dataclass
class LabContext:
    """State the handlers share, kept in the tornado application's settings."""

    root: Root
    runs: RunIndex
    server_app: Any = None
    env: Any = field(default_factory=lambda: os.environ)
    # ROOT reading and service calls block: two threads, so one slow request does not stall the server
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="mlaas4hep-lab"))


def api(method):
    """Run a handler method and turn the package's exceptions into HTTP errors."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except HTTPError:
            raise
        except PathRefused as err:
            raise HTTPError(err.status, str(err)) from None
        except NotConfigured as err:
            raise HTTPError(503, str(err)) from None
        except ServiceError as err:
            status = err.status if err.status and 400 <= err.status < 500 else 502
            raise HTTPError(status, err.error or str(err)) from None
        except PermissionError as err:
            raise HTTPError(403, str(err)) from None
        except LookupError as err:
            raise HTTPError(404, err.args[0] if err.args else str(err)) from None
        except (ValueError, MLaaSError, OSError) as err:
            raise HTTPError(400, str(err)) from None

    return wrapper


class BaseHandler(APIHandler):
    """JSON in, JSON out; blocking work in the extension's threads."""

    @property
    def ctx(self) -> LabContext:
        return self.settings[SETTINGS_KEY]

    async def blocking(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.executor, functools.partial(fn, *args, **kwargs))

    def body(self) -> dict[str, Any]:
        """The request's JSON object (400 when it is not one)."""
        raw = self.request.body or b"{}"
        if len(raw) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise HTTPError(400, f"the body is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return data

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        value = self.get_argument(name, None)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise HTTPError(400, f"{name} must be an integer, not {value!r}") from None

    def reply(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, default=str))
