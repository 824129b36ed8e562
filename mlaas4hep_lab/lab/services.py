"""The jobs and inference services as the server extension reaches them: where they are and with which
token, both from the environment of the user's server, so nobody pastes a URL or a token.

* inference service: ``MLAAS4HEP_SERVICE_URL``, else the hub's ``/services/tfaas/``;
* jobs service: ``MLAAS4HEP_JOBS_URL``, else the hub's ``/services/jobs/``;
* token: ``MLAAS4HEP_TOKEN`` (sent as Bearer), else the server's own ``JUPYTERHUB_API_TOKEN`` (``token``).

On the hub, ``jupyterhub_config`` sets both URLs to the services' loopback addresses (this code runs in the
user's server, beside the hub) and JupyterHub gives every server its token. Requests go through the
standard-library :class:`~mlaas4hep_lab.serving.client.Client`; every method here blocks (the handlers run
them in threads) and raises :class:`ServiceError` (``status`` None: nothing answered).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlaas4hep_lab.serving.client import Client, ServiceError

__all__ = ["Service", "jobs_service", "models_service", "service_url", "ServiceError", "NotConfigured",
           "models", "model_detail", "share", "tag", "delete", "test_request",
           "jobs", "job", "job_log", "cancel", "bundle", "submit", "SUBMIT_KEYS"]

_ENV = {"jobs": "MLAAS4HEP_JOBS_URL", "tfaas": "MLAAS4HEP_SERVICE_URL"}
_WHAT = {"jobs": "jobs service", "tfaas": "inference service"}


class NotConfigured(LookupError):
    """No URL for a service in this server's environment."""


def service_url(name: str, env: Mapping[str, str] | None = None) -> str:
    """The URL of the hub service ``name`` (``jobs``, ``tfaas``); "" when nothing in ``env`` says."""
    env = os.environ if env is None else env
    if env.get(_ENV[name], "").strip():
        return env[_ENV[name]].strip()
    hub = env.get("JUPYTERHUB_PUBLIC_HUB_URL") or env.get("JUPYTERHUB_PUBLIC_URL") or env.get("JUPYTERHUB_SERVICE_URL")
    if not hub:
        return ""
    parts = urllib.parse.urlsplit(hub)
    base = env.get("JUPYTERHUB_BASE_URL") or "/"
    base = base if base.endswith("/") else base + "/"
    return f"{parts.scheme}://{parts.netloc}{base}services/{name}/"


def _token(env: Mapping[str, str]) -> tuple[str, str]:
    if env.get("MLAAS4HEP_TOKEN"):
        return env["MLAAS4HEP_TOKEN"], "Bearer"
    if env.get("JUPYTERHUB_API_TOKEN"):
        return env["JUPYTERHUB_API_TOKEN"], "token"
    return "", "Bearer"


@dataclass(frozen=True)
class Service:
    """One service: ``name`` (``jobs``/``tfaas``), its URL ("" when not configured) and the token."""

    name: str
    url: str
    token: str
    scheme: str
    timeout: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def describe(self) -> dict[str, Any]:
        """What the sidebar shows (never the token)."""
        return {"configured": self.configured, "url": self.url, "token": bool(self.token),
                "hint": "" if self.configured else
                f"no {_WHAT[self.name]} configured: set {_ENV[self.name]} in the server's environment "
                "(JupyterHub sets it for you)"}

    def client(self, timeout: float | None = None) -> Client:
        if not self.configured:
            raise NotConfigured(self.describe()["hint"])
        return Client(self.url, token=self.token, scheme=self.scheme, timeout=timeout or self.timeout)

    def call(self, method: str, path: str, *, timeout: float | None = None, **kw) -> Any:
        """One request (see :meth:`Client.request`); the connection is closed afterwards."""
        with self.client(timeout) as c:
            return c.request(method, path, **kw)


def _service(name: str, env: Mapping[str, str] | None) -> Service:
    env = os.environ if env is None else env
    token, scheme = _token(env)
    return Service(name, service_url(name, env), token, scheme)


def jobs_service(env: Mapping[str, str] | None = None) -> Service:
    return _service("jobs", env)


def models_service(env: Mapping[str, str] | None = None) -> Service:
    return _service("tfaas", env)


# ------------------------------------------------------------------------------------------ inference


def _ref(name: str) -> str:
    """A model reference as one path segment (``owner:name``)."""
    return urllib.parse.quote(name.replace("/", ":", 1), safe=":")


def models(svc: Service) -> list[dict[str, Any]]:
    """The models the user can see (own and shared), each with its tags and versions."""
    answer = svc.call("GET", "/models")
    if isinstance(answer, dict):
        answer = answer.get("models", [])
    return [m for m in answer or [] if isinstance(m, dict)]


def model_detail(svc: Service, name: str, version: str | None = None) -> dict[str, Any]:
    """The model's metadata (inputs, outputs, features) as the Open Inference Protocol gives it."""
    path = f"/v2/models/{_ref(name)}" + (f"/versions/{urllib.parse.quote(version)}" if version else "")
    return svc.call("GET", path)


def share(svc: Service, name: str, shared: bool) -> dict[str, Any]:
    return svc.call("POST", f"/v2/models/{_ref(name)}/share", json_body={"shared": bool(shared)})


def tag(svc: Service, name: str, tag_name: str, version: str | None) -> dict[str, Any]:
    return svc.call("POST", f"/v2/models/{_ref(name)}/tags", json_body={"tag": tag_name, "version": version})


def delete(svc: Service, name: str, version: str | None = None) -> dict[str, Any]:
    path = f"/v2/models/{_ref(name)}" + (f"/versions/{urllib.parse.quote(version)}" if version else "")
    return svc.call("DELETE", path)


def test_request(svc: Service, name: str, rows: list[list[float]], version: str | None = None) -> dict[str, Any]:
    """Score ``rows`` (feature values in the model's feature order) with the Open Inference Protocol
    ``infer`` route; the outputs and the round trip in milliseconds."""
    if not rows or not all(isinstance(r, list) and r for r in rows):
        raise ValueError("give the input as rows of numbers, e.g. [[0.1, 2.0, ...]]")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError("every row needs the same number of values")
    try:
        data = [float(v) for r in rows for v in r]
    except (TypeError, ValueError):
        raise ValueError("every value must be a number") from None
    body = {"inputs": [{"name": "features", "shape": [len(rows), width], "datatype": "FP32", "data": data}]}
    path = f"/v2/models/{_ref(name)}" + (f"/versions/{urllib.parse.quote(version)}" if version else "") + "/infer"
    start = time.perf_counter()
    answer = svc.call("POST", path, json_body=body)
    ms = (time.perf_counter() - start) * 1e3
    return {"outputs": answer.get("outputs", []) if isinstance(answer, dict) else answer,
            "model_version": answer.get("model_version") if isinstance(answer, dict) else None,
            "ms": round(ms, 2)}


# ---------------------------------------------------------------------------------------------- jobs


def _job(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def jobs(svc: Service) -> list[dict[str, Any]]:
    """The user's jobs, newest first."""
    rows = svc.call("GET", "/jobs") or []
    return sorted((r for r in rows if isinstance(r, dict)), key=lambda r: r.get("created") or 0, reverse=True)


def job(svc: Service, job_id: str) -> dict[str, Any]:
    return svc.call("GET", f"/jobs/{_job(job_id)}")


def job_log(svc: Service, job_id: str, offset: int | None) -> dict[str, Any]:
    return svc.call("GET", f"/jobs/{_job(job_id)}/logs", query={"offset": offset})


def cancel(svc: Service, job_id: str) -> dict[str, Any]:
    return svc.call("DELETE", f"/jobs/{_job(job_id)}")


def bundle(svc: Service, job_id: str) -> bytes:
    return svc.call("GET", f"/jobs/{_job(job_id)}/bundle", raw=True, timeout=300)


SUBMIT_KEYS = ("files", "labels", "model", "params", "preproc", "name", "push")


def submit(svc: Service, submission: Mapping[str, Any]) -> dict[str, Any]:
    """Queue a training job (the body of ``POST /submit``: files, labels, model, params, preproc, name,
    push); unknown keys are refused here, as the service would."""
    extra = sorted(set(submission) - set(SUBMIT_KEYS))
    if extra:
        raise ValueError(f"unknown submission keys {extra}; allowed: {', '.join(SUBMIT_KEYS)}")
    body = {k: v for k, v in submission.items() if v is not None}
    return svc.call("POST", "/submit", json_body=body, timeout=120)

