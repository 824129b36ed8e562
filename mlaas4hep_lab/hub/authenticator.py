"""Log in to JupyterHub with an OIDC access token (JWT), as experiments' IAMs issue them.

CMS, ATLAS and other experiments run INDIGO IAM; users get access tokens on the command line with
``oidc-agent`` (``oidc-token cms``). :class:`OIDCTokenAuthenticator` accepts such a token:

* **on the login page**: the form has one field, the token (pasted); the hub checks it and sets its login
  cookie as for any other authenticator;
* **from scripts**: ``POST /hub/api/oidc/token`` with ``Authorization: Bearer <JWT>`` answers
  ``{"token": HUB_TOKEN, "user": NAME, "expires_in": S}``. The hub token then works everywhere a hub token
  does: the hub's REST API (``Authorization: token HUB_TOKEN``) and the hub's services (``/services/tfaas/``,
  ``/services/jobs/``), with the user's roles and scopes. JupyterHub 6 looks API tokens up in its own
  database and offers authenticators no hook for other kinds of bearer tokens, so a JWT cannot be sent to
  ``/hub/api/...`` directly; the exchange is the supported way (one call, then the usual hub token).

Both paths run the same checks (:class:`mlaas4hep_lab.auth.OIDCVerifier`): signature against the issuer's
JWKS, ``iss``, ``aud`` (when configured), ``exp``/``iat``/``nbf`` with a small leeway; then the user name and
groups from configurable claims, and ``allowed_groups`` / ``admin_groups``.

Configuration (``jupyterhub_config.py``)::

    c.JupyterHub.authenticator_class = "mlaas4hep_lab.hub.authenticator.OIDCTokenAuthenticator"
    c.OIDCTokenAuthenticator.issuer = "https://cms-auth.web.cern.ch/"
    c.OIDCTokenAuthenticator.audience = "mlaas4hep"            # what the IAM client puts in `aud`
    c.OIDCTokenAuthenticator.allowed_groups = {"cms"}          # or c.Authenticator.allow_all = True
"""

from __future__ import annotations

import asyncio
import json
import time

from jupyterhub.apihandlers import APIHandler
from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LoginHandler
from tornado import web
from traitlets import Float, Integer, List, Set, Unicode, default

from mlaas4hep_lab.auth import AuthError, OIDCVerifier, valid_username

__all__ = ["OIDCTokenAuthenticator", "TokenExchangeHandler", "TokenRefused", "LOGIN_FORM"]

EXCHANGE_PATH = "/api/oidc/token"  # below the hub prefix: /hub/api/oidc/token

# Rendered by JupyterHub with Jinja and the login page's context (xsrf, login_error, authenticator_login_url,
# authenticator). The hidden `username` keeps JupyterHub's failed-login path happy (it reads that field).
LOGIN_FORM = """
<form action="{{ authenticator_login_url }}" method="post" role="form" id="m4h-token-login">
  <div class="auth-form-header"><h1>Sign in with an access token</h1></div>
  <div class="auth-form-body m-auto">
    <p>{{ authenticator.login_prompt }}</p>
    {% if login_error %}<p class="login_error" id="m4h-login-error">{{ login_error }}</p>{% endif %}
    <input type="hidden" name="_xsrf" value="{{ xsrf }}" />
    <input type="hidden" name="username" value="" />
    <label for="token_input">Access token:</label>
    <textarea id="token_input" name="token" class="form-control" rows="6" autocomplete="off"
              spellcheck="false" autocapitalize="off" required autofocus></textarea>
    <div class="feedback-container">
      <input id="login_submit" type="submit" class="btn btn-jupyter form-control" value="Sign in" />
      <div class="feedback-widget hidden"><i class="fa fa-spinner"></i></div>
    </div>
  </div>
</form>
"""


class TokenRefused(web.HTTPError):
    """The token itself is refused (bad signature, expired, wrong issuer or audience, no user name): 403 on
    the login page, 401 from the exchange. A valid token of a user who may not log in stays a plain 403."""


class OIDCTokenAuthenticator(Authenticator):
    """JupyterHub authenticator for OIDC access tokens (see the module docstring)."""

    issuer = Unicode(
        "", config=True,
        help="The issuer the tokens must carry in `iss` (e.g. https://cms-auth.web.cern.ch/). Required.")
    audience = Unicode(
        "", config=True,
        help="The audience the tokens must carry in `aud`. Empty accepts any audience: set it in production "
             "so that tokens issued to other clients of the IAM are refused.")
    jwks_url = Unicode(
        "", config=True,
        help="Where the signing keys are. Empty: `jwks_uri` of {issuer}/.well-known/openid-configuration.")
    username_claim = Unicode("preferred_username", config=True, help="Claim that names the user.")
    groups_claim = Unicode("groups", config=True, help="Claim listing the user's groups (IAM: `groups`; "
                                                       "WLCG profile: `wlcg.groups`).")
    allowed_groups = Set(Unicode(), config=True,
                         help="Users in any of these groups may log in (beside allowed_users and allow_all)."
                         ).tag(allow_config=True)
    admin_groups = Set(Unicode(), config=True, help="Users in any of these groups are hub admins.")
    algorithms = List(Unicode(), ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"], config=True,
                      help="Signature algorithms accepted (never `none`, never HMAC: the key is public).")
    leeway = Float(30.0, config=True, help="Seconds of clock skew accepted on exp, nbf and iat.")
    exchange_max_lifetime = Integer(
        12 * 3600, config=True,
        help="Longest life, in seconds, of a hub token made by the exchange; it never outlives the JWT.")
    exchange_scopes = List(
        Unicode(), config=True,
        help="Scopes of hub tokens made by the exchange; empty: the user's own (the 'token' role).")
    login_prompt = Unicode(
        "Paste an access token of your experiment's IAM, e.g. the output of <code>oidc-token ACCOUNT</code>.",
        config=True, help="Text (HTML) above the token field of the login page.")

    @default("manage_groups")
    def _manage_groups(self):
        return True  # the token's groups become hub groups, so roles can be granted by group

    @default("custom_html")
    def _custom_html(self):
        return LOGIN_FORM

    @default("login_service")
    def _login_service(self):
        return "access token"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._verifier: OIDCVerifier | None = None

    @property
    def verifier(self) -> OIDCVerifier:
        """The token checker (built on first use, so the issuer need not be up when the hub starts)."""
        if self._verifier is None:
            if not self.issuer and not self.jwks_url:
                raise web.HTTPError(503, "the hub has no OIDC issuer configured (MLAAS4HEP_OIDC_ISSUER)")
            self._verifier = OIDCVerifier(self.issuer or None, self.audience or None, self.jwks_url or None,
                                          self.username_claim, self.groups_claim, tuple(self.algorithms),
                                          self.leeway)
        return self._verifier

    async def verify(self, token: str) -> tuple[dict, float]:
        """(auth model, expiry) of a JWT; raises ``web.HTTPError`` (403 refused, 503 issuer unreachable)."""
        token = (token or "").strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            raise TokenRefused(403, "no access token given")
        try:
            user, exp = await asyncio.to_thread(self.verifier.verify, token)
        except AuthError as err:
            self.log.warning("OIDC token refused: %s", err)
            if err.status == 503:
                raise web.HTTPError(503, f"cannot check the access token: {err}") from None
            raise TokenRefused(403, f"access token refused: {err}") from None
        groups = sorted(set(user.groups))
        model = {"name": user.name, "groups": groups,
                 "auth_state": {"access_token": token, "exp": exp, "groups": groups,
                                "claims": {k: v for k, v in user.claims.items() if k != "jti"}}}
        if self.admin_groups and set(groups) & self.admin_groups:
            model["admin"] = True  # never False: admin_users keep their rights
        return model, exp

    async def authenticate(self, handler, data):
        """The login form's ``token`` field (or ``password``, for clients that post the default form)."""
        data = data or {}
        model, _exp = await self.verify(data.get("token") or data.get("password") or "")
        return model

    async def refresh_user(self, user, handler=None):
        """False (log in again) once the access token the session was opened with has expired. Needs the
        auth state (``enable_auth_state``, which needs ``JUPYTERHUB_CRYPT_KEY``); without it a session lasts
        as long as the hub's cookie."""
        state = await user.get_auth_state()
        exp = float((state or {}).get("exp") or 0)
        if exp and time.time() > exp + self.leeway:
            self.log.info("the access token of %s expired %.0f s ago: login required", user.name,
                          time.time() - exp)
            return False
        return True

    def validate_username(self, username):
        # the name becomes a home folder and a folder of the model store: no slashes, no leading dot
        return valid_username(username) and super().validate_username(username)

    def check_allowed(self, username, authentication=None):
        if super().check_allowed(username, authentication):
            return True
        groups = set((authentication or {}).get("groups") or ())
        if self.allowed_groups and groups & self.allowed_groups:
            return True
        wanted = ", ".join(sorted(self.allowed_groups)) or "(none configured)"
        raise web.HTTPError(403, f"user {username} is in none of the groups allowed on this hub: {wanted}")

    def get_handlers(self, app):
        return [("/login", LoginHandler), (EXCHANGE_PATH, TokenExchangeHandler)]


class TokenExchangeHandler(APIHandler):
    """``POST /hub/api/oidc/token`` with ``Authorization: Bearer <JWT>``: a hub API token for its user."""

    def write_error(self, status_code, **kwargs):
        if status_code == 401:  # send_error cleared the headers set before the raise
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
        super().write_error(status_code, **kwargs)

    def check_xsrf_cookie(self):
        # the request carries its credential in a header, never in a cookie: nothing a foreign site could ride
        return None

    async def post(self):
        scheme, _, jwt = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not jwt.strip():
            raise web.HTTPError(401, "send the access token as 'Authorization: Bearer <JWT>'")
        authenticator = self.authenticator
        if not isinstance(authenticator, OIDCTokenAuthenticator):
            raise web.HTTPError(404)
        try:
            authenticated = await authenticator.get_authenticated_user(self, {"token": jwt.strip()})
        except TokenRefused as err:  # 401: the client should get a new token (not: ask for access)
            raise web.HTTPError(401, err.log_message) from None
        if authenticated is None:
            raise web.HTTPError(403, "this user may not use the hub")
        exp = float(authenticated.get("auth_state", {}).get("exp") or 0)
        user = await self.auth_to_user(authenticated)
        lifetime = int(min(authenticator.exchange_max_lifetime, exp - time.time()))
        if lifetime < 1:
            raise web.HTTPError(401, "the access token expires now: get a fresh one")
        token = user.new_api_token(note="OIDC token exchange", expires_in=lifetime,
                                   scopes=list(authenticator.exchange_scopes) or None)
        self.log.info("Issued a hub token to %s for %d s (OIDC token exchange)", user.name, lifetime)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"token": token, "token_type": "token", "user": user.name,
                                "expires_in": lifetime, "groups": authenticated.get("groups", [])}))
