"""The auth addon's hooks on crafted flows, driven as mitmproxy drives them (`taddons`, `tflow`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.flowstate import state_of
from agent.auth.issue import SigningKey, issue_token
from agent.auth.settings import AuthSettings
from agent.auth.verify import Verifier
from agent.metrics import REGISTRY
from agent.records import Outcome
from tests.support.flows import llm_flow
from tests.support.paths import ROOT

SECRET = "addon-test-secret-" + "x" * 46
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def token(sub: str = "alice", team: str | None = "ml", **kw: object) -> str:
    return issue_token(SigningKey.from_secret(SECRET), sub, team=team, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def jwt_auth() -> AsyncIterator[Auth]:
    settings = AuthSettings(auth="jwt", jwt_secret=SECRET)
    addon = Auth(settings, Verifier.from_settings(settings))
    yield addon
    await addon.done()


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("sidemeter_auth_failures_total", {"reason": reason}) or 0.0


async def call(addon: Auth, f: http.HTTPFlow) -> http.HTTPFlow:
    with taddons.context(addon):
        await addon.request(f)
    return f


async def test_a_valid_token_attributes_the_flow_and_stays_with_the_sidecar(jwt_auth: Auth) -> None:
    f = await call(jwt_auth, llm_flow(body=CHAT, headers={"Authorization": f"Bearer {token()}"}))
    assert f.response is None  # goes on upstream
    rec = state_of(f).record
    assert (rec.user, rec.team, rec.outcome) == ("alice", "ml", Outcome.OK)
    assert "Authorization" not in f.request.headers  # the client's credentials are not forwarded


@pytest.mark.parametrize(
    ("path", "message_of"),
    [
        ("/v1/chat/completions", lambda doc: doc["error"]["message"]),
        ("/api/chat", lambda doc: doc["error"]),
    ],
)
async def test_a_missing_token_is_refused_in_the_clients_dialect(
    jwt_auth: Auth, path: str, message_of: object
) -> None:
    before = failures("missing")
    f = await call(jwt_auth, llm_flow(path, CHAT, headers={"X-Request-ID": "rid-401"}))
    assert f.response is not None and f.response.status_code == 401
    doc = json.loads(f.response.content or b"")
    assert message_of(doc).startswith("authentication failed: no bearer token")  # type: ignore[operator]
    if path.startswith("/v1"):
        assert (doc["error"]["type"], doc["error"]["code"]) == ("authentication_error", 401)
    assert f.response.headers["Content-Type"] == "application/json"
    assert f.response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert f.response.headers["X-Request-ID"] == "rid-401"
    rec = state_of(f).record
    assert (rec.outcome, rec.error, rec.status, rec.request_id) == (
        Outcome.REJECTED,
        "missing",
        401,
        "rid-401",
    )
    assert failures("missing") == before + 1


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Basic dXNlcjpwdw==", "malformed"),
        ("Bearer not.a.jwt", "malformed"),
        ("Bearer " + issue_token(SigningKey.from_secret("other-" + "y" * 58), "mallory"), "bad_signature"),
        ("Bearer " + token(ttl=-120), "expired"),
    ],
)
async def test_bad_tokens_are_refused_with_their_reason(
    jwt_auth: Auth, authorization: str, reason: str
) -> None:
    f = await call(jwt_auth, llm_flow(body=CHAT, headers={"Authorization": authorization}))
    assert f.response is not None and f.response.status_code == 401
    rec = state_of(f).record
    assert (rec.outcome, rec.error, rec.user) == (Outcome.REJECTED, reason, None)
    # The refusal carries the id the record has, generated when the client sent none.
    assert f.response.headers["X-Request-ID"] == rec.request_id


async def test_an_answered_flow_is_left_alone(jwt_auth: Auth) -> None:
    f = llm_flow(body=CHAT)
    f.response = http.Response.make(429, b"{}")
    await call(jwt_auth, f)
    assert f.response.status_code == 429 and state_of(f).record.outcome == Outcome.OK


async def test_auth_off_takes_the_user_header_at_its_word_within_reason() -> None:
    addon = Auth(AuthSettings(auth="off"))
    named = await call(
        addon, llm_flow(body=CHAT, headers={"X-User-Id": " erin ", "Authorization": "Bearer x"})
    )
    anon = await call(addon, llm_flow(body=CHAT))
    long = await call(addon, llm_flow(body=CHAT, headers={"X-User-Id": "u" * 1000}))
    assert state_of(named).record.user == "erin" and "Authorization" not in named.request.headers
    assert state_of(anon).record.user == "anonymous"
    assert state_of(long).record.user == "u" * 256
    assert all(f.response is None for f in (named, anon, long))


async def test_upstream_credentials_replace_or_join_the_clients() -> None:
    keyed = Auth(AuthSettings(auth="off", upstream_api_key="vllm-key"))
    f = await call(keyed, llm_flow(body=CHAT, headers={"Authorization": "Bearer client"}))
    assert f.request.headers.get_all("Authorization") == ["Bearer vllm-key"]
    forwarding = Auth(AuthSettings(auth="off", forward_authorization=True))
    g = await call(forwarding, llm_flow(body=CHAT, headers={"Authorization": "Bearer client"}))
    assert g.request.headers["Authorization"] == "Bearer client"


async def test_no_settings_no_opinion() -> None:
    f = await call(Auth(), llm_flow(body=CHAT))  # under mitmdump before configure ran
    assert f.response is None and state_of(f).record.user is None


def test_the_addon_loads_as_a_mitmdump_script() -> None:
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / "auth.py"))
        assert [type(a).__name__ for a in script.addons] == ["Auth"]
        assert {"sidemeter_auth", "sidemeter_jwt_secret", "sidemeter_jwks_url"} <= set(tctx.options.keys())
