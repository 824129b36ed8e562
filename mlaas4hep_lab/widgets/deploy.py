"""Deploy tab: push the trained bundle to the inference service, list models, score events remotely.

A thin view over :mod:`mlaas4hep_lab.widgets.remote`. In a JupyterHub single-user server the URL and the
token come from the environment (the hub's ``/services/tfaas/`` and ``JUPYTERHUB_API_TOKEN``).
"""

from __future__ import annotations

import html
import json

import ipywidgets as w

from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.widgets import remote
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["DeployPanel"]


def _error(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"error: {html.escape(str(text))}"


class DeployPanel:
    """The Deploy tab. ``push()``, ``refresh()`` and ``score()`` are what the buttons call."""

    def __init__(self, state: LabState):
        self.state = state
        token, _ = remote.default_credentials()
        self.url = w.Text(value=state.service_url or remote.default_service_url(), description="Service",
                          placeholder="http://127.0.0.1:8083", layout=w.Layout(width="520px"))
        self.token = w.Password(value=state.token if state.token is not None else token, description="Token")
        self.name = w.Text(description="Model name", placeholder="default: the bundle's name")
        self.push_button = w.Button(description="Push", button_style="primary", icon="upload")
        self.status = w.HTML("no bundle yet: train a model first")
        self.refresh_button = w.Button(description="List models", icon="refresh")
        self.models = w.HTML("")
        self.score_button = w.Button(description="Score events", icon="check")
        self.scores = w.HTML("")
        for widget, cls in ((self.url, "m4h-deploy-url"), (self.token, "m4h-deploy-token"),
                            (self.name, "m4h-deploy-name"), (self.push_button, "m4h-deploy-push"),
                            (self.status, "m4h-deploy-status"), (self.refresh_button, "m4h-deploy-refresh"),
                            (self.models, "m4h-deploy-models"), (self.score_button, "m4h-deploy-score"),
                            (self.scores, "m4h-deploy-scores")):
            widget.add_class(cls)
        self.pushed: dict | None = None   # the service's answer to the last push
        self.push_button.on_click(lambda _: self.push())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.score_button.on_click(lambda _: self.score())
        state.on("bundle", self._on_bundle)
        self.widget = w.VBox([self.url, self.token, w.HBox([self.name, self.push_button]), self.status,
                              w.HBox([self.refresh_button]), self.models,
                              w.HBox([self.score_button]), self.scores])
        self.widget.add_class("m4h-deploy")

    def _on_bundle(self) -> None:
        if self.state.bundle is None:
            return
        manifest = json.loads((self.state.bundle / "manifest.json").read_text())
        if not self.name.value:
            self.name.value = manifest.get("name", "")
        self.status.value = f"bundle ready: <code>{html.escape(str(self.state.bundle))}</code>"

    # -- actions --------------------------------------------------------------------------------------
    def push(self) -> dict | None:
        """Upload the last bundle; the status starts with "pushed" or "error:"."""
        self.status.value = "pushing..."
        try:
            answer = remote.push(self.state, self.url.value, self.token.value, self.name.value.strip() or None)
        except (MLaaSError, OSError, KeyError, ValueError) as err:
            self.status.value = _error(err)
            return None
        self.pushed = answer
        ref = answer.get("ref") or answer.get("name")
        self.status.value = (f"pushed {html.escape(str(ref))} version {html.escape(str(answer.get('version')))}"
                             f" ({answer.get('n_features', '?')} features)")
        self.refresh()
        return answer

    def refresh(self) -> list[dict] | None:
        """List the models and versions the token's user can see."""
        try:
            models = remote.list_models(self.url.value, self.token.value)
        except (MLaaSError, OSError, KeyError, ValueError) as err:
            self.models.value = _error(err)
            return None
        self.models.value = remote.models_html(models)
        return models

    def score(self, n: int = 6) -> list[remote.ScoreRow] | None:
        """Score ``n`` sampled events remotely (raw events) and in the notebook, side by side."""
        model = (self.pushed or {}).get("ref") or self.name.value.strip()
        version = (self.pushed or {}).get("version")
        try:
            rows = remote.score(self.state, self.url.value, self.token.value, model, n, version)
        except (MLaaSError, OSError, KeyError, ValueError) as err:
            self.scores.value = _error(err)
            return None
        worst = max((r.diff for r in rows), default=0.0)
        self.scores.value = remote.scores_html(rows) + f"<div>largest |remote - notebook|: {worst:.2e}</div>"
        return rows
