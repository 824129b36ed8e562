"""The Deploy panel's logic: where the inference service is, push a bundle, list models, score events.

Defaults inside a JupyterHub single-user server need no copy-paste: the URL is ``MLAAS4HEP_SERVICE_URL``
when set, else the hub's ``/services/tfaas/`` (the hub's public URL when the hub announces one, else the
origin of ``JUPYTERHUB_SERVICE_URL``), and the token is ``MLAAS4HEP_TOKEN`` or the server's own
``JUPYTERHUB_API_TOKEN`` (:func:`mlaas4hep_lab.serving.client.default_token`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.serving.client import Client, default_token
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["default_service_url", "default_credentials", "ScoreRow", "push", "list_models", "models_html",
           "score", "scores_html", "SERVICE_NAME"]

SERVICE_NAME = "tfaas"


def default_service_url(env: Mapping[str, str] | None = None) -> str:
    """The inference service's URL from the environment ("" when nothing says where it is): as the JupyterLab
    extension finds it (:func:`mlaas4hep_lab.lab.services.service_url`)."""
    from mlaas4hep_lab.lab.services import service_url

    return service_url(SERVICE_NAME, env)


def default_credentials(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(token, scheme)`` for the service: MLAAS4HEP_TOKEN (Bearer), else JUPYTERHUB_API_TOKEN (token)."""
    if env is None:
        token, scheme = default_token()
    elif env.get("MLAAS4HEP_TOKEN"):
        token, scheme = env["MLAAS4HEP_TOKEN"], "Bearer"
    elif env.get("JUPYTERHUB_API_TOKEN"):
        token, scheme = env["JUPYTERHUB_API_TOKEN"], "token"
    else:
        token, scheme = None, "Bearer"
    return token or "", scheme


def client(url: str, token: str, timeout: float = 60.0) -> Client:
    """A client of ``url``; a JupyterHub token is sent as ``token TOKEN``, others as ``Bearer``."""
    if not url.strip():
        raise ConfigError("give the inference service URL (e.g. http://127.0.0.1:8083)", key="service_url")
    scheme = "token" if token and token == os.environ.get("JUPYTERHUB_API_TOKEN") else "Bearer"
    return Client(url.strip(), token=token or "", scheme=scheme, timeout=timeout)


def push(state: LabState, url: str, token: str, name: str | None = None) -> dict[str, Any]:
    """Upload the state's last bundle; the service's answer (name, owner, version, ...)."""
    if state.bundle is None:
        raise ConfigError("no bundle yet: train a model in the Training tab first", key="bundle")
    with client(url, token) as c:
        return c.upload(state.bundle, name=name or None)


def _models(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, dict):
        answer = answer.get("models", [])
    return [m for m in answer if isinstance(m, dict)]


def list_models(url: str, token: str) -> list[dict[str, Any]]:
    """The models the token's user can see (own and shared)."""
    with client(url, token) as c:
        return _models(c.models())


def models_html(models: list[dict[str, Any]]) -> str:
    if not models:
        return "<i>no models</i>"
    head = "<tr><th>model</th><th>owner</th><th>versions</th><th>latest</th><th>backend</th></tr>"
    body = "".join(
        f"<tr><td>{_esc(m.get('name', ''))}</td><td>{_esc(m.get('owner', ''))}</td>"
        f"<td>{_esc(', '.join(map(str, m.get('versions', []))))}</td><td>{_esc(m.get('latest', ''))}</td>"
        f"<td>{_esc(m.get('backend', '') or '')}</td></tr>" for m in models)
    return f"<table class='m4h-models'>{head}{body}</table>"


@dataclass
class ScoreRow:
    """One scored event: the service's and the notebook's outputs, a float (binary) or one per column
    (the class probabilities or regression targets of a multi-class or regression model)."""

    file: str
    entry: int
    remote: float | tuple[float, ...]
    notebook: float | tuple[float, ...]
    passes: bool

    @property
    def diff(self) -> float:
        return float(np.max(np.abs(np.subtract(self.remote, self.notebook))))


def _row_values(values) -> float | tuple[float, ...]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(values[0]) if values.size == 1 else tuple(float(v) for v in values)


def score_events(state: LabState, n: int) -> tuple[ak.Array, list[tuple[str, int]]]:
    """The first events of the sample, spread over the files: (events, [(file, entry)])."""
    per_file = max(1, -(-n // len(state.files)))
    parts, where = [], []
    for path, events in zip(state.files, state.sample):
        k = min(per_file, len(events))
        parts.append(events[:k])
        where += [(path, i) for i in range(k)]
    events = ak.concatenate(parts) if len(parts) > 1 else parts[0]
    return events[:n], where[:n]


def score(state: LabState, url: str, token: str, model: str, n: int = 6, version: str | None = None
          ) -> list[ScoreRow]:
    """Score ``n`` sampled raw events with the service (raw-events route: the bundle's own preprocessing
    runs on the server) and with the notebook's bundle; one row per event."""
    if state.bundle is None:
        raise ConfigError("no bundle yet: train a model in the Training tab first", key="bundle")
    from mlaas4hep_lab.bundle import Bundle

    bundle = Bundle.load(state.bundle)
    try:
        events, where = score_events(state, n)
        events = events[[b for b in bundle.input_branches() if b in events.fields]]
        local, keep = bundle.predict_arrays(events)
    finally:
        bundle.close()
    with client(url, token) as c:
        remote = c.predict_events(model, {f: events[f] for f in events.fields}, version=version)
    remote = np.asarray(remote, dtype=np.float64)
    width, local_width = int(np.prod(remote.shape[1:])), int(np.prod(np.shape(local)[1:]))
    if width != local_width:   # e.g. a binary model of that name, scored beside this Lab's multi-class one
        raise ConfigError(f"the service answered {width} output(s) per event, the notebook's bundle "
                          f"{local_width}: is {model!r} the model pushed from this Lab?", key="model")
    return [ScoreRow(Path(f).name, e, _row_values(r), _row_values(s), bool(k))
            for (f, e), r, s, k in zip(where, remote, local, keep)]


def scores_html(rows: list[ScoreRow]) -> str:
    head = "<tr><th>file</th><th>entry</th><th>remote</th><th>notebook</th><th>|diff|</th><th>passes cuts</th></tr>"
    body = "".join(
        f"<tr><td>{_esc(r.file)}</td><td>{r.entry}</td><td>{_values_text(r.remote)}</td>"
        f"<td>{_values_text(r.notebook)}</td><td>{r.diff:.2e}</td><td>{'yes' if r.passes else 'no'}</td></tr>"
        for r in rows)
    return f"<table class='m4h-scores'>{head}{body}</table>"


def _values_text(values: float | tuple[float, ...]) -> str:
    return f"{values:.6f}" if isinstance(values, float) else ", ".join(f"{v:.6g}" for v in values)


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
