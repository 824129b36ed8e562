"""The inference service (TFaaS, ours): a model store on disk served over HTTP.

Modules: :mod:`~mlaas4hep_lab.serving.settings` (Settings), :mod:`~mlaas4hep_lab.serving.store` (versions,
tags, sharing, activation), :mod:`~mlaas4hep_lab.serving.archive` (upload checks: tar members, sizes),
:mod:`~mlaas4hep_lab.serving.runtime` (ONNX Runtime, TF SavedModel), :mod:`~mlaas4hep_lab.serving.batching`
(dynamic batching), :mod:`~mlaas4hep_lab.serving.schemas` (request and response models),
:mod:`~mlaas4hep_lab.serving.service` (what routes share), :mod:`~mlaas4hep_lab.serving.routes` (the routes),
:mod:`~mlaas4hep_lab.serving.metrics` (Prometheus text, limits middleware), :mod:`~mlaas4hep_lab.serving.app`
(``create_app(settings)``, error handlers, ``serve``), :mod:`~mlaas4hep_lab.serving.client` (Client).

Importing this package loads no web framework: ``create_app`` is imported on first use.
The errors below carry the HTTP status the service answers with.
"""

from __future__ import annotations

from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.extras import lazy_attributes

__all__ = ["ServingError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "TooLarge",
           "Unavailable", "create_app", "Settings"]


class ServingError(MLaaSError):
    """An error the service reports to the client as ``{"error": message}`` with ``status``."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ServingError, ValueError):
    status = 400


class Unauthorized(ServingError, PermissionError):
    status = 401


class Forbidden(ServingError, PermissionError):
    status = 403


class NotFound(ServingError, KeyError):
    status = 404


class Conflict(ServingError):
    status = 409


class TooLarge(ServingError, ValueError):
    status = 413


class Unavailable(ServingError):
    status = 503


_LAZY = {"create_app": "mlaas4hep_lab.serving.app", "Settings": "mlaas4hep_lab.serving.settings"}


__getattr__ = lazy_attributes(__name__, _LAZY)
