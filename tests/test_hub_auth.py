"""The hub's OIDC token login: real RS256 tokens from a local issuer whose JWKS is served over HTTP on
127.0.0.1, checked by OIDCTokenAuthenticator exactly as the hub runs it (authenticate, then JupyterHub's own
get_authenticated_user with its allow checks)."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("jupyterhub", reason="the hub extra is not installed")  # optional: pip install .[hub]
jwt = pytest.importorskip("jwt")

from servers import run_coroutine  # noqa: E402
from tornado import web  # noqa: E402

from mlaas4hep_lab.hub.authenticator import LOGIN_FORM, OIDCTokenAuthenticator, TokenRefused  # noqa: E402
from mlaas4hep_lab.hub.dev_issuer import DevIssuer  # noqa: E402

AUD = "mlaas4hep"


def make_auth(issuer, **kw) -> OIDCTokenAuthenticator:
    kw.setdefault("allowed_groups", {"cms"})
    return OIDCTokenAuthenticator(issuer=issuer.url, audience=AUD, **kw)


def run(coro):
    return run_coroutine(coro)


def refused(auth, token, status=403) -> str:
    with pytest.raises(web.HTTPError) as info:
        run(auth.get_authenticated_user(None, {"token": token}))
    assert info.value.status_code == status, info.value.log_message
    return info.value.log_message


def test_valid_token_logs_in_with_name_and_groups(issuer):
    auth = make_auth(issuer)
    token = issuer.token("Alice", groups=["cms", "cms/higgs"], audience=AUD)
    model = run(auth.get_authenticated_user(None, {"token": token}))
    assert model["name"] == "alice"  # JupyterHub's normalisation (lower case)
    assert model["groups"] == ["cms", "cms/higgs"]
    assert model["admin"] is None
    assert model["auth_state"]["exp"] > time.time() + 3000
    # the login form posts `token`; a client posting the default form's `password` works too
    assert run(auth.get_authenticated_user(None, {"username": "", "password": token}))["name"] == "alice"
    # what `oidc-token` users paste sometimes still has the scheme in front
    assert run(auth.get_authenticated_user(None, {"token": f"Bearer {token}\n"}))["name"] == "alice"


def test_expired_token_is_refused(issuer):
    token = issuer.token("alice", groups=["cms"], audience=AUD, lifetime=-120, issued_ago=3600)
    assert "expired" in refused(make_auth(issuer), token).lower()


def test_leeway_accepts_small_clock_skew_only(issuer):
    auth = make_auth(issuer, leeway=30)
    just_expired = issuer.token("alice", groups=["cms"], audience=AUD, lifetime=55, issued_ago=60)  # exp: 5 s ago
    assert run(auth.get_authenticated_user(None, {"token": just_expired}))["name"] == "alice"
    long_expired = issuer.token("alice", groups=["cms"], audience=AUD, lifetime=60, issued_ago=120)  # 60 s ago
    refused(auth, long_expired)


def test_token_of_another_issuer_is_refused(issuer, other_issuer):
    auth = make_auth(issuer)
    # signed by another issuer's key (its kid is not in our JWKS)
    message = refused(auth, other_issuer.token("alice", groups=["cms"], audience=AUD))
    assert "signing key" in message.lower() or "kid" in message.lower()
    # signed by our key but naming another issuer
    message = refused(auth, issuer.token("alice", groups=["cms"], audience=AUD, issuer=other_issuer.url))
    assert "issuer" in message.lower()


def test_bad_signature_is_refused(issuer, other_issuer):
    auth = make_auth(issuer)
    # another key announcing our kid: the JWKS key is found, the signature does not verify
    forged = other_issuer.token("alice", groups=["cms"], audience=AUD, issuer=issuer.url, kid=issuer.kid)
    assert "signature" in refused(auth, forged).lower()
    # a genuine token whose payload was edited (name changed) after signing
    good = issuer.token("alice", groups=["cms"], audience=AUD)
    head, payload, sig = good.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["preferred_username"] = "admin"
    edited = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert "signature" in refused(auth, f"{head}.{edited}.{sig}").lower()


def test_unsigned_and_hmac_tokens_are_refused(issuer):
    auth = make_auth(issuer)
    claims = {"iss": issuer.url, "aud": AUD, "preferred_username": "alice", "groups": ["cms"],
              "iat": int(time.time()), "exp": int(time.time()) + 600}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": issuer.kid})
    refused(auth, unsigned)
    # HMAC keyed with the public key (the classic algorithm-confusion attack)
    from cryptography.hazmat.primitives import serialization

    public_pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    refused(auth, jwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), public_pem[:32], algorithm="HS256",
                                             headers={"kid": issuer.kid}))
    refused(auth, "not-a-jwt")
    refused(auth, "")


def test_tokens_built_to_exhaust_the_json_parser_are_refused(issuer):
    """A header or payload of thousands of nested arrays (Python's json raises RecursionError on them)
    is a refused token, not a server error; so is a token of a megabyte."""
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    auth = make_auth(issuer)
    deep = b"[" * 5000 + b"]" * 5000
    header = b64(json.dumps({"alg": "RS256", "kid": issuer.kid}).encode())
    assert "nested too deep" in refused(auth, f"{b64(deep)}.{b64(b'{}')}.sig")
    assert "nested too deep" in refused(auth, f"{header}.{b64(deep)}.sig")
    assert "longer than" in refused(auth, "a" * (1 << 20))


def test_wrong_or_missing_audience_is_refused(issuer):
    auth = make_auth(issuer)
    assert "audience" in refused(auth, issuer.token("alice", groups=["cms"], audience="another-client")).lower()
    refused(auth, issuer.token("alice", groups=["cms"], audience=None))
    # a list of audiences containing ours is fine (IAM tokens may carry several)
    token = issuer.token("alice", groups=["cms"], audience=["another-client", AUD])
    assert run(auth.get_authenticated_user(None, {"token": token}))["name"] == "alice"


def test_missing_group_is_refused_with_the_reason(issuer):
    auth = make_auth(issuer, allowed_groups={"cms", "atlas"})
    message = refused(auth, issuer.token("bob", groups=["lhcb"], audience=AUD))
    assert "bob" in message and "atlas, cms" in message
    refused(auth, issuer.token("bob", groups=[], audience=AUD))
    # a valid token of a user who may not log in is not a refused token (the exchange answers 403, not 401)
    with pytest.raises(web.HTTPError) as info:
        run(auth.get_authenticated_user(None, {"token": issuer.token("bob", groups=["lhcb"], audience=AUD)}))
    assert not isinstance(info.value, TokenRefused)
    with pytest.raises(TokenRefused):
        run(auth.get_authenticated_user(None, {"token": issuer.token("bob", groups=["cms"], audience="x")}))
    # allowed_users still let a named user in, whatever the groups
    auth = make_auth(issuer, allowed_groups={"cms"}, allowed_users={"bob"})
    assert run(auth.get_authenticated_user(None, {"token": issuer.token("bob", audience=AUD)}))["name"] == "bob"


def test_claims_are_configurable(issuer):
    auth = make_auth(issuer, username_claim="sub_name", groups_claim="wlcg.groups", allowed_groups={"/cms"})
    token = issuer.token("ignored", audience=AUD, username_claim="sub_name", groups_claim="wlcg.groups")
    refused(auth, token)  # name claim ok, but the groups claim is empty
    token = issuer.token("carol", groups=["/cms"], audience=AUD, username_claim="sub_name",
                         groups_claim="wlcg.groups")
    assert run(auth.get_authenticated_user(None, {"token": token}))["name"] == "carol"
    no_name = issuer.token("carol", groups=["/cms"], audience=AUD, groups_claim="wlcg.groups")
    assert "sub_name" in refused(auth, no_name)


def test_unsafe_user_names_are_refused(issuer):
    auth = make_auth(issuer)
    for name in ("../../etc", "a/b", ".hidden", "x" * 200):
        token = issuer.token(name, groups=["cms"], audience=AUD)
        assert run(auth.get_authenticated_user(None, {"token": token})) is None, name


def test_admin_groups_make_admins(issuer):
    auth = make_auth(issuer, admin_groups={"cms/admins"})
    admin = run(auth.get_authenticated_user(None, {"token": issuer.token("dan", groups=["cms", "cms/admins"],
                                                                                   audience=AUD)}))
    assert admin["admin"] is True
    user = run(auth.get_authenticated_user(None, {"token": issuer.token("eve", groups=["cms"], audience=AUD)}))
    assert user["admin"] is None  # not False: admin_users keep their rights


def test_unreachable_issuer_is_503_not_a_refusal():
    iss = DevIssuer().start()
    token = iss.token("alice", groups=["cms"], audience=AUD)
    url = iss.url
    iss.stop()
    auth = OIDCTokenAuthenticator(issuer=url, audience=AUD, allowed_groups={"cms"})
    with pytest.raises(web.HTTPError) as info:
        run(auth.authenticate(None, {"token": token}))
    assert info.value.status_code == 503


def test_keys_are_fetched_once_then_cached(issuer):
    auth = make_auth(issuer)
    before = len(issuer.requests)
    for name in ("u1", "u2", "u3"):
        run(auth.get_authenticated_user(None, {"token": issuer.token(name, groups=["cms"], audience=AUD)}))
    fetched = issuer.requests[before:]
    assert fetched.count("/jwk") == 1 and fetched.count("/.well-known/openid-configuration") == 1


def test_login_form_has_the_token_field_and_xsrf(issuer):
    from jinja2 import Template

    auth = make_auth(issuer)
    assert auth.get_custom_html("/hub/") == LOGIN_FORM
    html = Template(LOGIN_FORM).render(authenticator=auth, authenticator_login_url="/hub/login?next=%2Fx",
                                       xsrf="XSRF123", login_error="access token refused: expired")
    assert 'name="token"' in html and 'value="XSRF123"' in html and 'name="username"' in html
    assert 'action="/hub/login?next=%2Fx"' in html and "access token refused: expired" in html
    assert auth.login_prompt in html
    # the exchange route is registered beside the login page, below the hub prefix
    assert [route for route, _ in auth.get_handlers(None)] == ["/login", "/api/oidc/token"]


def test_no_issuer_configured_is_a_clear_503():
    auth = OIDCTokenAuthenticator(allow_all=True)
    with pytest.raises(web.HTTPError) as info:
        run(auth.authenticate(None, {"token": "a.b.c"}))
    assert info.value.status_code == 503 and "MLAAS4HEP_OIDC_ISSUER" in info.value.log_message


def test_inference_service_push_scope(tmp_path):
    """Under the hub, pushing to the inference service needs the push scope (MLAAS4HEP_PUSH_SCOPE); users of
    static tokens or OIDC tokens are not hub users and are not asked for it."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from mlaas4hep_lab.auth import User
    from mlaas4hep_lab.serving import Forbidden
    from mlaas4hep_lab.serving.service import Service
    from mlaas4hep_lab.serving.settings import Settings

    svc = Service(Settings(store_dir=tmp_path, tokens={"alice": "alice-token-1"}, push_scope="custom:tfaas:push"))
    try:
        svc.check_push_scope(User("alice", "hub", scopes=("access:services!service=tfaas", "custom:tfaas:push")))
        svc.check_push_scope(User("alice", "static"))
        with pytest.raises(Forbidden, match="custom:tfaas:push"):
            svc.check_push_scope(User("carol", "hub", scopes=("access:services!service=tfaas",)))
        with pytest.raises(Forbidden):  # another user's filtered scope is not hers
            svc.check_push_scope(User("carol", "hub", scopes=("custom:tfaas:push!user=alice",)))
        svc.check_push_scope(User("carol", "hub", scopes=("custom:tfaas:push!user=carol",)))
    finally:
        svc.close()
    assert Settings(store_dir=tmp_path).push_scope == ""  # standalone default: no scope asked
