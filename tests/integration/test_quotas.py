"""Quotas against the running sidecar, with the official openai and ollama clients: refusals
exactly at the boundary in both dialects, the RateLimit-* headers, records that say why, counts
that survive a restart, and concurrent load within the documented overshoot."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest

from agent.auth.issue import SigningKey, issue_token
from agent.quota.rules import rules_from_tables
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

OPENAI_MODEL = "sim-model"
OLLAMA_MODEL = "llama3.2"
PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]
SECRET = "q" * 64
# The ops API wants a token with the ops role when auth is on.
OPS = {
    "Authorization": "Bearer "
    + issue_token(SigningKey.from_secret(SECRET), "operator", extra={"roles": ["ops"]})
}


async def fresh_minute(margin: float = 20.0) -> None:
    """Wait until at least `margin` seconds are left in the current UTC minute, so a test of a
    per-minute limit does not straddle two windows."""
    deadline = time.monotonic() + 61
    while 60 - time.time() % 60 < margin:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


def oai(side: RunningSidecar, user: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=side.url + "/v1", api_key="unused", max_retries=0, default_headers={"X-User-Id": user}
    )


async def start_with(
    start_sidecar: Callable[..., Any], sim: SimulatedLLM, *tables: dict[str, Any], **kw: Any
) -> RunningSidecar:
    return await start_sidecar(sim.url, quotas=rules_from_tables(tables), **kw)  # type: ignore[no-any-return]


async def test_openai_requests_refused_at_the_limit_with_headers_and_a_record(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    side = await start_with(start_sidecar, sim_openai, {"user": "alice", "requests_per_minute": 3})
    await fresh_minute()
    client = oai(side, "alice")
    for remaining in (2, 1, 0):
        raw = await client.chat.completions.with_raw_response.create(
            model=OPENAI_MODEL, messages=PROMPT, max_tokens=5
        )
        assert raw.status_code == 200
        assert raw.headers["RateLimit-Limit"] == "3"
        assert raw.headers["RateLimit-Remaining"] == str(remaining)
        assert 1 <= int(raw.headers["RateLimit-Reset"]) <= 60
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(
            model=OPENAI_MODEL, messages=PROMPT, extra_headers={"X-Request-ID": request_id}
        )
    resp = refused.value.response
    assert resp.status_code == 429
    body = resp.json()["error"]
    assert "requests_per_minute = 3" in body["message"] and body["code"] == 429
    assert resp.headers["RateLimit-Remaining"] == "0" and resp.headers["RateLimit-Limit"] == "3"
    assert resp.headers["Retry-After"] == resp.headers["RateLimit-Reset"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    rec = await side.record(request_id)
    assert (rec.outcome, rec.status, rec.user) == ("rejected", 429, "alice")
    assert rec.error == "quota_exceeded: rule user:alice (user:alice) requests_per_minute 3"
    assert rec.prompt_tokens is None and rec.completion_tokens is None
    # another user has no rule: not limited, and no headers
    other = await oai(side, "bob").chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=PROMPT
    )
    assert other.status_code == 200 and "RateLimit-Limit" not in other.headers


async def test_ollama_tokens_refused_exactly_once_counted_usage_reaches_the_limit(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    """A team shares one quota (callers identified by their JWT's team claim); sent one after
    another, each request is admitted while the counted usage is below the limit and refused
    once it has reached it."""
    limit = 120
    side = await start_with(
        start_sidecar, sim_ollama, {"team": "ml", "tokens_per_day": limit}, auth="jwt", jwt_secret=SECRET
    )
    key = SigningKey.from_secret(SECRET)
    counted = admitted = 0
    for n in range(40):
        request_id = uuid.uuid4().hex
        token = issue_token(key, f"member{n % 3}", team="ml")
        client = ollama.AsyncClient(
            host=side.url, headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
        )
        try:
            if n % 2:
                await client.chat(
                    model=OLLAMA_MODEL, messages=PROMPT, options={"num_predict": 8}, stream=False
                )
            else:  # a stream is refused before its first byte, too
                async for _ in await client.chat(
                    model=OLLAMA_MODEL, messages=PROMPT, options={"num_predict": 8}, stream=True
                ):
                    pass
        except ollama.ResponseError as e:
            assert e.status_code == 429
            assert counted >= limit  # refused only once the counted usage has reached the limit
            rec = await side.record(request_id)
            assert (rec.outcome, rec.status, rec.dialect, rec.team) == ("rejected", 429, "ollama", "ml")
            assert rec.error == "quota_exceeded: rule team:ml (team:ml) tokens_per_day 120"
            break
        assert counted < limit  # admitted only while it was below
        rec = await side.record(request_id)
        assert rec.outcome == "ok" and rec.total_tokens
        counted += rec.total_tokens
        admitted += 1
    else:
        pytest.fail("never refused")
    assert admitted >= 2
    token = issue_token(key, "someone", team="ml")
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            side.url + "/api/generate",
            json={"model": OLLAMA_MODEL, "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 429 and set(resp.json()) == {"error"}  # Ollama's error shape
        assert "tokens_per_day = 120" in resp.json()["error"]
        assert resp.headers["RateLimit-Limit"] == "120" and resp.headers["RateLimit-Remaining"] == "0"
        assert int(resp.headers["Retry-After"]) == int(resp.headers["RateLimit-Reset"]) >= 1
        ops = (await http.get(side.ops_url + "/ops/quotas", headers=OPS, params={"team": "ml"})).json()
    (scope,) = ops["scopes"]
    (lim,) = scope["limits"]
    assert (scope["rule"], scope["scope"]) == ("team:ml", "team:ml")
    assert (lim["name"], lim["used"], lim["limit"], lim["remaining"], lim["reserved"]) == (
        "tokens_per_day",
        counted,
        limit,
        0,
        0,
    )


async def test_a_refused_request_never_reaches_the_server(start_sidecar: Callable[..., Any]) -> None:
    """In front of nothing at all: the admitted request fails upstream (502), the refused one
    is answered by the sidecar itself."""
    await fresh_minute()
    side = await start_sidecar("http://127.0.0.1:9", quotas=rules_from_tables([{"requests_per_minute": 1}]))
    client = oai(side, "dave")
    with pytest.raises(openai.InternalServerError) as first:
        await client.chat.completions.create(model=OPENAI_MODEL, messages=PROMPT)
    assert first.value.status_code == 502
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=OPENAI_MODEL, messages=PROMPT)
    # the everyone rule gives each user a quota of their own
    with pytest.raises(openai.InternalServerError):
        await oai(side, "erin").chat.completions.create(model=OPENAI_MODEL, messages=PROMPT)


async def test_a_restart_keeps_the_counts(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    rule = {"user": "frank", "tokens_per_day": 60, "tokens_per_month": 100_000}
    side = await start_with(start_sidecar, sim_openai, rule)
    client = oai(side, "frank")
    used = 0
    while True:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=OPENAI_MODEL, messages=PROMPT, max_tokens=10
            )
        except openai.RateLimitError:
            break
        rec = await side.record(raw.headers["X-Request-ID"])
        used += rec.total_tokens or 0
    assert used >= 60
    await side.sidecar.stop()
    again = await start_with(start_sidecar, sim_openai, rule)
    with pytest.raises(openai.RateLimitError) as refused:
        await oai(again, "frank").chat.completions.create(model=OPENAI_MODEL, messages=PROMPT, max_tokens=10)
    assert "tokens_per_day = 60" in refused.value.response.json()["error"]["message"]
    async with httpx.AsyncClient() as http:
        ops = (await http.get(again.ops_url + "/ops/quotas", headers=OPS, params={"user": "frank"})).json()
    (scope,) = ops["scopes"]
    assert {lim["name"]: lim["used"] for lim in scope["limits"]} == {
        "tokens_per_day": used,
        "tokens_per_month": used,
    }


async def test_concurrent_requests_of_one_user_stay_within_the_documented_overshoot(
    start_sidecar: Callable[..., Any],
) -> None:
    """50 streams at once from one user, each allowed 20 output tokens, against a limit of 200
    output tokens a minute: at most limit + one request's max_tokens are generated."""
    limit, max_tokens = 200, 20
    sim = SimulatedLLM("openai", token_delay=0.01)
    await sim.start()
    try:
        side = await start_with(start_sidecar, sim, {"user": "gina", "output_tokens_per_minute": limit})
        await fresh_minute(margin=30)
        client = oai(side, "gina")

        async def one() -> int | None:
            try:
                stream = await client.chat.completions.create(
                    model=OPENAI_MODEL,
                    messages=PROMPT,
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            except openai.RateLimitError:
                return None
            out = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    out = chunk.usage.completion_tokens
            return out

        results = await asyncio.gather(*(one() for _ in range(50)))
    finally:
        await sim.stop()
    admitted = [r for r in results if r is not None]
    generated = sum(admitted)
    assert generated < limit + max_tokens
    assert len(admitted) >= limit // max_tokens  # the limit was used, not refused wholesale
    assert None in results
    async with httpx.AsyncClient() as http:
        (scope,) = (
            await http.get(side.ops_url + "/ops/quotas", headers=OPS, params={"user": "gina"})
        ).json()["scopes"]
    (lim,) = scope["limits"]
    assert (lim["used"], lim["reserved"]) == (generated, 0)  # every reservation reconciled


async def test_quota_gauge_is_listed_from_start_and_follows_usage(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    plain = await start_sidecar(sim_openai.url)
    async with httpx.AsyncClient() as http:
        text = (await http.get(plain.ops_url + "/metrics")).text
        assert "# TYPE sidemeter_quota_remaining_ratio gauge" in text
        assert "sidemeter_quota_remaining_ratio{" not in text  # no rules: no series
        await plain.sidecar.stop()
        side = await start_with(start_sidecar, sim_openai, {"user": "hal", "requests_per_minute": 4})
        await fresh_minute()
        await oai(side, "hal").chat.completions.create(model=OPENAI_MODEL, messages=PROMPT)
        text = (await http.get(side.ops_url + "/metrics")).text
        both = await http.get(side.ops_url + "/ops/quotas", headers=OPS, params={"user": "hal", "team": "x"})
    assert 'sidemeter_quota_remaining_ratio{rule="user:hal",scope="user:hal"} 0.75' in text
    assert both.status_code == 400 and both.json()["error"]["message"] == "give user or team, not both"
