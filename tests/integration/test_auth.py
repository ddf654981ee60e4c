"""Identity at the door, through the running sidecar: bearer JWTs are verified before anything
reaches the LLM server, callers are attributed on their usage records, refusals are 401s in the
client's dialect with a record and a metric of their own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import ollama
import openai
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons.auth import Auth
from addons.flowstate import record_of
from agent.auth.errors import REASONS
from agent.metrics import REGISTRY
from agent.sim import SimulatedLLM
from agent.upstream import USER_AGENT as PROBER_AGENT
from tests.support.sidecar import RunningSidecar

MODEL = "sim-model"
AUDIENCE = "sidemeter"
ISSUER = "https://idp.example.test"
SECRET = "s" * 64  # long enough for HS512


# --------------------------------------------------------------------------- material


class RecordingLLM(SimulatedLLM):
    """The simulated server, noting every request the proxy relays to it (path, Authorization
    values); the sidecar's own upstream probes are left out."""

    def __init__(self, dialect: str) -> None:
        super().__init__(dialect)
        self.seen: list[tuple[str, list[str]]] = []

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def note(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.headers.get("User-Agent") != PROBER_AGENT:
                self.seen.append((request.path, request.headers.getall("Authorization", [])))
            return await handler(request)

        app.middlewares.insert(0, note)
        return app


@dataclass(frozen=True)
class KeyPair:
    private: Any
    alg: str

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwk(self, kid: str) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        return {**json.loads(algo.to_jwk(self.private.public_key())), "kid": kid, "use": "sig"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers or None)


@pytest.fixture(scope="session")
def keys() -> dict[str, KeyPair]:
    """A real signing key set, generated for this run."""
    return {
        "rsa": KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "rsa_other": KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "ec": KeyPair(ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "ed": KeyPair(ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    }


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "alice", "team": "ml", "iat": now, "exp": now + 300, "aud": AUDIENCE, "iss": ISSUER}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], body: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS built by hand, for tokens no honest library would produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'')}"


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("sidemeter_auth_failures_total", {"reason": reason}) or 0.0


def rid() -> str:
    return uuid.uuid4().hex


def request_for(dialect: str) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": "hi"}]
    if dialect == "ollama":
        return "/api/chat", {"model": MODEL, "messages": messages, "stream": False}
    return "/v1/chat/completions", {"model": MODEL, "messages": messages}


async def post(side: RunningSidecar, dialect: str, token: str | None, **headers: str) -> httpx.Response:
    path, body = request_for(dialect)
    hdrs = dict(headers)
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token}")
    async with httpx.AsyncClient() as http:
        return await http.post(side.url + path, json=body, headers=hdrs)


@pytest.fixture(params=["openai", "ollama"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[RecordingLLM]:
    sim = RecordingLLM(request.param)
    await sim.start()
    yield sim
    await sim.stop()


async def rsa_sidecar(
    start_sidecar: Any, upstream: RecordingLLM, tmp_path: Path, **kw: Any
) -> RunningSidecar:
    return await start_sidecar(  # type: ignore[no-any-return]
        upstream.url,
        auth="jwt",
        jwt_public_key=kw.pop("public_key"),
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
        **kw,
    )


def assert_refused(resp: httpx.Response, dialect: str, request_id: str) -> str:
    """A 401 an OAuth client and an LLM client can both read; returns the description."""
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert challenge.endswith('"') and challenge.count('"') == 4
    assert resp.headers["X-Request-ID"] == request_id
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    if dialect == "openai":
        err = body["error"]
        assert set(err) >= {"message", "type", "code"}
        assert err["type"] == "authentication_error" and err["code"] == 401
        return str(err["message"])
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# --------------------------------------------------------------------------- refusals


def _refusal_cases(k: dict[str, KeyPair], attacker_url: str) -> dict[str, tuple[str | None, str]]:
    """case -> (Authorization header value or None, expected reason); `attacker_url` serves
    what a token may point the sidecar at."""
    sql_kid = "x' UNION SELECT 'k"
    rsa_key, other = k["rsa"], k["rsa_other"]
    now = int(time.time())
    valid = rsa_key.sign(claims())
    head, _, sig = valid.split(".")
    tampered_body = b64(json.dumps(claims(sub="mallory")).encode())
    public_pem = rsa_key.public_pem
    return {
        "missing": (None, "missing"),
        "empty_bearer": ("Bearer", "missing"),
        "malformed": ("Bearer not-a-jwt", "malformed"),
        "malformed_segments": ("Bearer aaa.bbb.ccc", "malformed"),
        "basic_scheme": ("Basic YWxpY2U6c2VjcmV0", "malformed"),
        "alg_none": (f"Bearer {craft({'alg': 'none', 'typ': 'JWT'}, claims(), None)}", "algorithm"),
        "alg_None_mixed_case": (f"Bearer {craft({'alg': 'None'}, claims(), None)}", "algorithm"),
        "expired": (f"Bearer {rsa_key.sign(claims(iat=now - 7200, exp=now - 3600))}", "expired"),
        "not_yet_valid_nbf": (
            f"Bearer {rsa_key.sign(claims(nbf=now + 3600, exp=now + 7200))}",
            "not_yet_valid",
        ),
        "not_yet_valid_iat": (
            f"Bearer {rsa_key.sign(claims(iat=now + 3600, exp=now + 7200))}",
            "not_yet_valid",
        ),
        "wrong_signature": (f"Bearer {other.sign(claims())}", "bad_signature"),
        "tampered": (f"Bearer {head}.{tampered_body}.{sig}", "bad_signature"),
        "wrong_audience": (f"Bearer {rsa_key.sign(claims(aud='someone-else'))}", "bad_audience"),
        "no_audience": (f"Bearer {rsa_key.sign(claims(aud=None))}", "bad_audience"),
        "wrong_issuer": (f"Bearer {rsa_key.sign(claims(iss='https://evil.example'))}", "bad_issuer"),
        # HS256 "signed" with the RSA public key as the HMAC secret: the classic confusion attack.
        "key_confusion": (
            "Bearer "
            + craft(
                {"alg": "HS256", "typ": "JWT"},
                claims(),
                lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
            ),
            "algorithm",
        ),
        "other_key_type": (f"Bearer {k['ec'].sign(claims())}", "algorithm"),
        "oversized": (f"Bearer {rsa_key.sign(claims(pad='x' * 9000))}", "too_large"),
        # A kid that names a file (the empty /dev/null as the HMAC secret) or smuggles SQL.
        "kid_path_injection": (
            "Bearer "
            + craft(
                {"alg": "HS256", "kid": "../../../../../../dev/null"},
                claims(),
                lambda data: hmac.new(b"", data, hashlib.sha256).digest(),
            ),
            "algorithm",
        ),
        "kid_sql_injection": (f"Bearer {other.sign(claims(), kid=sql_kid)}", "bad_signature"),
        # The attacker's own key, embedded in the header or offered at a URL (here the LLM
        # server's, which must see no request at all): never trusted.
        "embedded_jwk": (f"Bearer {other.sign(claims(), jwk=other.jwk('attacker'))}", "bad_signature"),
        "jku": (
            f"Bearer {other.sign(claims(), jku=attacker_url + '/.well-known/jwks.json', kid='attacker')}",
            "bad_signature",
        ),
        "x5u": (f"Bearer {other.sign(claims(), x5u=attacker_url + '/cert.pem')}", "bad_signature"),
        # Correctly signed, but its times are not NumericDates.
        "exp_numeric_string": (f"Bearer {rsa_key.sign(claims(exp=str(now + 300)))}", "bad_time_claim"),
        "exp_never": (f"Bearer {rsa_key.sign(claims(exp=1e300))}", "bad_time_claim"),
        "exp_boolean": (f"Bearer {rsa_key.sign(claims(exp=True))}", "bad_time_claim"),
        "nbf_numeric_string": (f"Bearer {rsa_key.sign(claims(nbf=str(now - 60)))}", "bad_time_claim"),
        "iat_numeric_string": (f"Bearer {rsa_key.sign(claims(iat=str(now)))}", "bad_time_claim"),
        "no_exp": (f"Bearer {rsa_key.sign(claims(exp=None))}", "malformed"),
        "no_sub": (f"Bearer {rsa_key.sign(claims(sub=None))}", "malformed"),
        "two_headers": (None, "malformed"),  # sent below as two Authorization headers
    }


CASES = [
    "missing",
    "empty_bearer",
    "malformed",
    "malformed_segments",
    "basic_scheme",
    "alg_none",
    "alg_None_mixed_case",
    "expired",
    "not_yet_valid_nbf",
    "not_yet_valid_iat",
    "wrong_signature",
    "tampered",
    "wrong_audience",
    "no_audience",
    "wrong_issuer",
    "key_confusion",
    "other_key_type",
    "kid_path_injection",
    "kid_sql_injection",
    "embedded_jwk",
    "jku",
    "x5u",
    "exp_numeric_string",
    "exp_never",
    "exp_boolean",
    "nbf_numeric_string",
    "iat_numeric_string",
    "oversized",
    "no_exp",
    "no_sub",
    "two_headers",
]


@pytest.mark.parametrize("case", CASES)
async def test_refused_with_401_in_the_clients_dialect_and_never_upstream(
    case: str,
    upstream: RecordingLLM,
    start_sidecar: Any,
    keys: dict[str, KeyPair],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    side = await rsa_sidecar(
        start_sidecar, upstream, tmp_path, public_key=write(tmp_path, "rsa.pem", keys["rsa"].public_pem)
    )
    header, reason = _refusal_cases(keys, upstream.url)[case]
    before = failures(reason)
    request_id = rid()
    path, body = request_for(upstream.dialect)
    raw_headers: list[tuple[str, str]] = [("X-Request-ID", request_id)]
    if case == "two_headers":
        good = keys["rsa"].sign(claims())
        raw_headers += [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")]
    elif header is not None:
        raw_headers.append(("Authorization", header))
    async with httpx.AsyncClient() as http:
        resp = await http.post(side.url + path, json=body, headers=httpx.Headers(raw_headers))

    description = assert_refused(resp, upstream.dialect, request_id)
    assert upstream.seen == [], "a refused request reached the LLM server"
    rec = await side.record(request_id)
    assert (rec.outcome, rec.status, rec.error) == ("rejected", 401, reason)
    assert rec.user is None and rec.team is None
    assert rec.dialect == upstream.dialect and rec.endpoint == path
    assert failures(reason) == before + 1
    # The token never shows up anywhere the operator or the client can read it back.
    token = (header or "").removeprefix("Bearer ").removeprefix("Basic ").strip()
    if len(token) > 12:
        assert token not in json.dumps(rec.to_dict(), default=str)
        assert token not in caplog.text
        assert token not in description and token not in resp.headers["WWW-Authenticate"]


async def test_a_valid_token_passes_and_is_attributed(
    upstream: RecordingLLM, start_sidecar: Any, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    side = await rsa_sidecar(
        start_sidecar, upstream, tmp_path, public_key=write(tmp_path, "rsa.pem", keys["rsa"].public_pem)
    )
    before = {r: failures(r) for r in ("missing", "bad_signature")}
    token = keys["rsa"].sign(claims(sub="bob", team="search"))
    request_id = rid()
    if upstream.dialect == "openai":
        client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key=token, max_retries=0)
        out = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            extra_headers={"X-Request-ID": request_id},
        )
        completion_tokens = out.usage.completion_tokens if out.usage else None
    else:
        oclient = ollama.AsyncClient(
            host=side.url, headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
        )
        resp = await oclient.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=False)
        completion_tokens = resp.eval_count
    rec = await side.record(request_id)
    assert (rec.user, rec.team, rec.outcome, rec.status) == ("bob", "search", "ok", 200)
    assert rec.completion_tokens == completion_tokens and rec.usage_source == "reported"
    # The client's credentials stop at the sidecar.
    assert upstream.seen and all(auth == [] for _, auth in upstream.seen)
    assert {r: failures(r) for r in before} == before


async def test_max_lifetime_refuses_long_lived_tokens(sim_openai: SimulatedLLM, start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, auth="jwt", jwt_secret=SECRET, jwt_max_lifetime="1h"
    )
    now = int(time.time())
    before = failures("lifetime_too_long")
    for lifetime, iat in ((7200, now), (365 * 86400, None)):  # exp - iat; exp - now without iat
        token = jwt.encode(claims(iat=iat, exp=now + lifetime, aud=None, iss=None), SECRET, "HS256")
        client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key=token, max_retries=0)
        request_id = rid()
        with pytest.raises(openai.AuthenticationError) as err:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Request-ID": request_id},
            )
        assert "jwt_max_lifetime" in str(err.value)
        rec = await side.record(request_id)
        assert (rec.outcome, rec.status, rec.error, rec.user) == ("rejected", 401, "lifetime_too_long", None)
    assert failures("lifetime_too_long") == before + 2
    token = jwt.encode(claims(iat=now, exp=now + 1800, aud=None, iss=None), SECRET, "HS256")
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key=token, max_retries=0)
    request_id = rid()
    await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Request-ID": request_id}
    )
    rec = await side.record(request_id)
    assert (rec.outcome, rec.user) == ("ok", "alice")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_shared_secret_accepts_every_hs_algorithm(
    alg: str, sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    token = jwt.encode(claims(aud=None, iss=None, team="ml"), SECRET, algorithm=alg)
    request_id = rid()
    resp = await post(side, "openai", token, **{"X-Request-ID": request_id})
    assert resp.status_code == 200, resp.text
    rec = await side.record(request_id)
    assert (rec.user, rec.team) == ("alice", "ml")


async def test_short_secret_refuses_the_longer_hash(sim_openai: SimulatedLLM, start_sidecar: Any) -> None:
    secret = "k" * 32
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=secret)
    ok = await post(side, "openai", jwt.encode(claims(aud=None, iss=None), secret, algorithm="HS256"))
    assert ok.status_code == 200
    request_id = rid()
    token = jwt.encode(claims(aud=None, iss=None), secret, algorithm="HS512")
    resp = await post(side, "openai", token, **{"X-Request-ID": request_id})
    assert "at least 64 bytes" in assert_refused(resp, "openai", request_id)
    assert (await side.record(request_id)).error == "algorithm"


async def test_secret_file_and_rs_token_confusion(
    sim_openai: SimulatedLLM, start_sidecar: Any, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """With a shared secret configured, an RS256 token is refused by algorithm, not tried."""
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, auth="jwt", jwt_secret_file=write(tmp_path, "secret", SECRET + "\n")
    )
    assert (
        await post(side, "openai", jwt.encode(claims(aud=None, iss=None), SECRET, "HS256"))
    ).status_code == 200
    request_id = rid()
    resp = await post(
        side, "openai", keys["rsa"].sign(claims(aud=None, iss=None)), **{"X-Request-ID": request_id}
    )
    assert_refused(resp, "openai", request_id)
    assert (await side.record(request_id)).error == "algorithm"


@pytest.mark.parametrize("name", ["ec", "ed"])
async def test_ec_and_ed25519_public_keys(
    name: str, sim_ollama: SimulatedLLM, start_sidecar: Any, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    pair = keys[name]
    side: RunningSidecar = await start_sidecar(
        sim_ollama.url, auth="jwt", jwt_public_key=write(tmp_path, f"{name}.pem", pair.public_pem)
    )
    request_id = rid()
    resp = await post(side, "ollama", pair.sign(claims(aud=None, iss=None)), **{"X-Request-ID": request_id})
    assert resp.status_code == 200, resp.text
    assert (await side.record(request_id)).user == "alice"
    # An RSA-signed token is not for this key: refused by algorithm before any verification.
    request_id = rid()
    resp = await post(
        side, "ollama", keys["rsa"].sign(claims(aud=None, iss=None)), **{"X-Request-ID": request_id}
    )
    assert_refused(resp, "ollama", request_id)
    assert (await side.record(request_id)).error == "algorithm"


# --------------------------------------------------------------------------- JWKS


class JwksServer:
    """An identity provider's JWKS endpoint on loopback; `keys` can be rotated between requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/.well-known/jwks.json"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()


async def test_jwks_rotation_is_picked_up_and_unknown_kids_cannot_hammer_the_idp(
    jwks_server: JwksServer, sim_openai: SimulatedLLM, start_sidecar: Any, keys: dict[str, KeyPair]
) -> None:
    jwks_server.keys = [keys["rsa"].jwk("k1"), {"kty": "oct", "k": b64(b"x" * 32), "kid": "sym"}]
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, auth="jwt", jwks_url=jwks_server.url, jwt_audience=AUDIENCE
    )
    assert jwks_server.hits == 1  # fetched while starting
    ok = await post(side, "openai", keys["rsa"].sign(claims(iss=None), kid="k1"))
    assert ok.status_code == 200, ok.text
    assert jwks_server.hits == 1  # served from the cache

    # The IdP rotates to a new EC key; the first token signed with it triggers a refetch.
    jwks_server.keys = [keys["ec"].jwk("k2")]
    request_id = rid()
    resp = await post(
        side,
        "openai",
        keys["ec"].sign(claims(sub="dana", team="ops", iss=None), kid="k2"),
        **{"X-Request-ID": request_id},
    )
    assert resp.status_code == 200, resp.text
    assert jwks_server.hits == 2
    rec = await side.record(request_id)
    assert (rec.user, rec.team) == ("dana", "ops")

    # The retired key is gone, and made-up kids are refused without another fetch.
    for kid in ("k1", "garbage-1", "garbage-2", "garbage-3"):
        request_id = rid()
        resp = await post(
            side, "openai", keys["rsa"].sign(claims(iss=None), kid=kid), **{"X-Request-ID": request_id}
        )
        assert_refused(resp, "openai", request_id)
        assert (await side.record(request_id)).error == "unknown_key"
    assert jwks_server.hits == 2
    # An oct (symmetric) key in a JWKS is never used: an HS256 token with its kid is refused.
    request_id = rid()
    jwks_server.keys.append({"kty": "oct", "k": b64(b"x" * 32), "kid": "sym"})
    hs = jwt.encode(claims(iss=None), b"x" * 32, algorithm="HS256", headers={"kid": "sym"})
    assert_refused(await post(side, "openai", hs, **{"X-Request-ID": request_id}), "openai", request_id)
    assert (await side.record(request_id)).error == "unknown_key"


async def test_jwks_file(
    sim_ollama: SimulatedLLM, start_sidecar: Any, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    second_ed = KeyPair(ed25519.Ed25519PrivateKey.generate(), "EdDSA")
    jwks = {"keys": [keys["ed"].jwk("ed-1"), second_ed.jwk("ed-2"), keys["rsa"].jwk("rsa-1")]}
    side: RunningSidecar = await start_sidecar(
        sim_ollama.url, auth="jwt", jwks_file=write(tmp_path, "jwks.json", json.dumps(jwks))
    )
    for pair, kid in ((keys["ed"], "ed-1"), (second_ed, "ed-2"), (keys["rsa"], "rsa-1"), (keys["rsa"], None)):
        request_id = rid()
        token = pair.sign(claims(aud=None, iss=None), **({"kid": kid} if kid else {}))
        resp = await post(side, "ollama", token, **{"X-Request-ID": request_id})
        assert resp.status_code == 200, (kid, resp.text)  # no kid: fine while one key fits the alg
    # No kid and two EdDSA keys: which one is meant is not guessed.
    request_id = rid()
    resp = await post(
        side, "ollama", keys["ed"].sign(claims(aud=None, iss=None)), **{"X-Request-ID": request_id}
    )
    assert_refused(resp, "ollama", request_id)
    assert (await side.record(request_id)).error == "unknown_key"


async def test_jwks_unavailable_is_a_401_with_its_own_reason(
    sim_openai: SimulatedLLM, start_sidecar: Any, keys: dict[str, KeyPair]
) -> None:
    server = JwksServer()
    url = await server.start()
    await server.stop()  # nothing listens there any more
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwks_url=url)
    request_id = rid()
    resp = await post(
        side, "openai", keys["rsa"].sign(claims(aud=None, iss=None), kid="k1"), **{"X-Request-ID": request_id}
    )
    assert_refused(resp, "openai", request_id)
    assert (await side.record(request_id)).error == "jwks_unavailable"


# --------------------------------------------------------------------------- headers and modes


async def test_user_header_must_match_the_subject_when_required(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, auth="jwt", jwt_secret=SECRET, require_user_match=True
    )
    token = jwt.encode(claims(aud=None, iss=None), SECRET, "HS256")
    assert (await post(side, "openai", token, **{"X-User-Id": "alice"})).status_code == 200
    assert (await post(side, "openai", token)).status_code == 200  # not sent: nothing to compare
    request_id = rid()
    resp = await post(side, "openai", token, **{"X-User-Id": "bob", "X-Request-ID": request_id})
    assert_refused(resp, "openai", request_id)
    assert (await side.record(request_id)).error == "user_mismatch"


async def test_upstream_api_key_replaces_the_clients_token(start_sidecar: Any) -> None:
    sim = RecordingLLM("openai")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(
            sim.url, auth="jwt", jwt_secret=SECRET, upstream_api_key="vllm-key-123"
        )
        token = jwt.encode(claims(aud=None, iss=None), SECRET, "HS256")
        assert (await post(side, "openai", token)).status_code == 200
        assert sim.seen[-1][1] == ["Bearer vllm-key-123"]
    finally:
        await sim.stop()


async def test_forward_authorization_passes_the_clients_header(start_sidecar: Any) -> None:
    sim = RecordingLLM("openai")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(
            sim.url, auth="jwt", jwt_secret=SECRET, forward_authorization=True
        )
        token = jwt.encode(claims(aud=None, iss=None), SECRET, "HS256")
        assert (await post(side, "openai", token)).status_code == 200
        assert sim.seen[-1][1] == [f"Bearer {token}"]
    finally:
        await sim.stop()


async def test_auth_off_attributes_by_header_or_anonymous(start_sidecar: Any) -> None:
    sim = RecordingLLM("ollama")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url, auth="off")
        named, anon = rid(), rid()
        await post(side, "ollama", None, **{"X-User-Id": "erin", "X-Request-ID": named})
        await post(side, "ollama", "anything", **{"X-Request-ID": anon})
        assert (await side.record(named)).user == "erin"
        assert (await side.record(anon)).user == "anonymous"
        assert [auth for _, auth in sim.seen] == [[], []]  # Authorization is not forwarded either
    finally:
        await sim.stop()


async def test_metrics_expose_auth_failures_by_reason(sim_openai: SimulatedLLM, start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    await post(side, "openai", None)
    async with httpx.AsyncClient() as http:
        resp = await http.get(side.ops_url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    lines = resp.text.splitlines()
    assert "# TYPE sidemeter_auth_failures_total counter" in lines
    for reason in REASONS:  # every one from the start, at 0 until it happens
        assert any(line.startswith(f'sidemeter_auth_failures_total{{reason="{reason}"}}') for line in lines)
    missing = next(
        line for line in lines if line.startswith('sidemeter_auth_failures_total{reason="missing"}')
    )
    assert float(missing.split()[-1]) >= 1


# --------------------------------------------------------------------------- standalone addon


async def test_addon_under_plain_mitmproxy_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mitmdump -s addons/auth.py`: the verifier is built from the sidemeter_* options (the
    secret from SIDEMETER_JWT_SECRET), and refusals are answered on the flow."""
    monkeypatch.setenv("SIDEMETER_JWT_SECRET", SECRET)
    addon = Auth()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, sidemeter_team_claim="org.team", sidemeter_upstream_api_key="up-key")
        good = tflow.tflow()
        token = jwt.encode(claims(aud=None, iss=None, team=None, org={"team": "infra"}), SECRET, "HS256")
        good.request.headers["Authorization"] = f"Bearer {token}"
        await addon.request(good)
        assert good.response is None
        assert (record_of(good).user, record_of(good).team) == ("alice", "infra")
        assert good.request.headers["Authorization"] == "Bearer up-key"

        bad = tflow.tflow()
        bad.request.path = "/api/chat"
        await addon.request(bad)
        assert bad.response is not None and bad.response.status_code == 401
        assert json.loads(bad.response.content or b"")["error"].startswith("authentication failed")
        assert (record_of(bad).outcome, record_of(bad).error) == ("rejected", "missing")

        monkeypatch.delenv("SIDEMETER_JWT_SECRET")  # no key at all: refuse to run, naming the way out
        with pytest.raises(exceptions.OptionsError, match="sidemeter_auth=off"):
            tctx.configure(addon, sidemeter_team_claim="team")
        await addon.done()
