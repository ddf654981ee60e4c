"""Cost against the running sidecar, with the official openai and ollama clients in front of the
simulated servers: every record's cost is what the price table says of its recorded tokens or
server time, `sidemeter_cost_total` adds up to the store's sum, and a budget in currency refuses
at its boundary and keeps what was spent across a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.auth.issue import SigningKey, issue_token
from agent.prices import Price
from agent.quota.rules import rules_from_tables
from agent.records import UsageRecord
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

SECRET = "c" * 64
OPS = {
    "Authorization": "Bearer " + issue_token(SigningKey.from_secret(SECRET), "op", extra={"roles": ["ops"]})
}
# Token prices for "sim-model", GPU time for the llama models; "free-model" has no price.
SIM = Price("sim-model", input_per_million=2.5, output_per_million=10.0, cached_input_per_million=1.25)
LLAMA = Price("llama3*", gpu_hour=36.0)  # 0.01 a second of server time
PRICES = (SIM, LLAMA)
PROMPT = [{"role": "user", "content": "Tell me everything about the colour of the sky at dusk. " * 8}]


def token_cost(rec: UsageRecord) -> float:
    """SIM's price of a record, from its recorded tokens: uncached input, cached input, output."""
    p, cached, out = rec.prompt_tokens or 0, rec.cached_tokens or 0, rec.completion_tokens or 0
    return ((p - cached) * 2.5 + cached * 1.25 + out * 10.0) / 1e6


def gpu_cost(rec: UsageRecord) -> float:
    """LLAMA's price of a record: server seconds (reported, else the latency) at 36 an hour."""
    ms = rec.server_duration_ms if rec.server_duration_ms is not None else rec.latency_ms
    assert ms is not None
    return ms * 36.0 / 3_600_000


def oai(side: RunningSidecar, user: str | None = None, token: str | None = None) -> openai.AsyncOpenAI:
    headers = {"X-User-Id": user} if user else {}
    return openai.AsyncOpenAI(
        base_url=side.url + "/v1", api_key=token or "unused", max_retries=0, default_headers=headers
    )


def bearer(user: str, team: str) -> str:
    return issue_token(SigningKey.from_secret(SECRET), user, team=team)


async def test_openai_records_cost_their_tokens_at_the_table_s_prices(
    start_sidecar: Callable[..., Any],
) -> None:
    sim = SimulatedLLM("openai", models=["sim-model", "free-model"])
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url, prices=PRICES, currency="USD")
        client = oai(side, "ana")
        ids = []
        for n in range(4):  # the same long prompt again: the server reports cached tokens
            if n % 2:
                stream = await client.chat.completions.create(
                    model="sim-model", messages=PROMPT, max_tokens=12, stream=True
                )
                async for _ in stream:
                    pass
                ids.append(side.last_request_id())
            else:
                raw = await client.chat.completions.with_raw_response.create(
                    model="sim-model", messages=PROMPT, max_tokens=12
                )
                ids.append(raw.headers["X-Request-ID"])
        raw = await client.embeddings.with_raw_response.create(model="sim-model", input="price me")
        ids.append(raw.headers["X-Request-ID"])
        records = [await side.record(rid) for rid in ids]
        assert any(r.cached_tokens for r in records), "the cached-token rate went untested"
        for r in records:
            assert r.outcome == "ok" and r.prompt_tokens
            assert r.cost == token_cost(r), r
        free = await client.chat.completions.with_raw_response.create(model="free-model", messages=PROMPT)
        rec = await side.record(free.headers["X-Request-ID"])
        assert rec.outcome == "ok" and rec.completion_tokens and rec.cost is None  # no price for it
    finally:
        await sim.stop()


async def test_ollama_records_cost_their_server_time_at_the_gpu_hour_price(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    side: RunningSidecar = await start_sidecar(sim_ollama.url, prices=PRICES, currency="USD")
    ids = []
    for stream in (False, True):
        rid = uuid.uuid4().hex
        client = ollama.AsyncClient(host=side.url, headers={"X-Request-ID": rid, "X-User-Id": "bo"})
        if stream:
            async for _ in await client.chat(model="llama3.2", messages=PROMPT, stream=True):
                pass
        else:
            await client.generate(model="llama3.2", prompt="Why is the sky blue?", options={"num_predict": 6})
        ids.append(rid)
    # Ollama's OpenAI-compatible /v1 reports no durations: the latency is the server time.
    raw = await oai(side, "bo").chat.completions.with_raw_response.create(model="llama3.2", messages=PROMPT)
    ids.append(raw.headers["X-Request-ID"])
    records = [await side.record(rid) for rid in ids]
    assert [r.server_duration_ms is not None for r in records] == [True, True, False]
    for r in records:
        assert r.outcome == "ok" and r.cost == gpu_cost(r) and r.cost > 0, r


async def test_cost_total_is_the_store_s_sum_after_a_burst(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_ollama.url, prices=PRICES, currency="USD", auth="jwt", jwt_secret=SECRET
    )
    async with httpx.AsyncClient() as http:
        text = (await http.get(side.ops_url + "/metrics")).text
    assert "# TYPE sidemeter_cost_total counter" in text  # from start, before any request
    assert "# HELP sidemeter_cost_total What requests cost by the [[prices]] table, in USD" in text
    assert 'sidemeter_cost_currency_info{currency="USD"} 1.0' in text
    teams = ("ml", "search", "ops")
    ids: list[str] = []

    async def one(n: int) -> None:
        rid = f"burst-{n}-{uuid.uuid4().hex[:8]}"
        ids.append(rid)
        token = bearer(f"user{n % 5}", teams[n % 3])
        if n % 2:
            await oai(side, token=token).chat.completions.create(
                model="sim-model", messages=PROMPT, max_tokens=8, extra_headers={"X-Request-ID": rid}
            )
        else:
            client = ollama.AsyncClient(
                host=side.url, headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid}
            )
            await client.chat(model="llama3.2", messages=PROMPT, options={"num_predict": 8})

    await asyncio.gather(*(one(n) for n in range(48)))
    for rid in ids:
        await side.record(rid)
    async with httpx.AsyncClient() as http:
        text = (await http.get(side.ops_url + "/metrics")).text
    scraped = {
        (s.labels["team"], s.labels["model"]): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "sidemeter_cost"
        for s in fam.samples
        if s.name == "sidemeter_cost_total"
    }
    db = sqlite3.connect(side.sidecar.config.db.split(":///", 1)[1])
    stored = {
        (team, model): total
        for team, model, total in db.execute(
            "SELECT team, model, SUM(cost) FROM usage_logs WHERE cost IS NOT NULL GROUP BY team, model"
        )
    }
    db.close()
    assert len(stored) == 6 and set(scraped) == set(stored)  # 3 teams x 2 models
    for key, total in stored.items():
        assert total > 0
        assert scraped[key] == pytest.approx(total, rel=1e-12), key  # the same floats, summed apart


async def test_a_budget_refuses_at_its_boundary_and_a_restart_keeps_the_spend(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    """Sent one after another, requests are admitted while the spend is below the budget and
    refused once it has reached it; the headers count currency; a restart rebuilds the spend."""
    budget = 0.001
    kw: dict[str, Any] = {
        "prices": PRICES,
        "currency": "USD",
        "quotas": rules_from_tables([{"user": "cleo", "cost_per_day": budget, "cost_per_month": 10}]),
    }
    side: RunningSidecar = await start_sidecar(sim_openai.url, **kw)
    client = oai(side, "cleo")
    spent, admitted, remaining, costs = 0.0, 0, [], []
    for _ in range(40):
        rid = uuid.uuid4().hex
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="sim-model", messages=PROMPT, max_tokens=5, extra_headers={"X-Request-ID": rid}
            )
        except openai.RateLimitError as e:
            assert spent >= budget  # refused only once the spend has reached the budget
            resp = e.response
            assert resp.headers["RateLimit-Limit"] == "0.001" and resp.headers["RateLimit-Remaining"] == "0"
            assert int(resp.headers["Retry-After"]) >= 1
            assert "cost_per_day = 0.001 USD of user:cleo" in resp.json()["error"]["message"]
            rec = await side.record(rid)
            assert (rec.outcome, rec.status, rec.cost) == ("rejected", 429, 0.0)
            assert rec.error == "quota_exceeded: rule user:cleo (user:cleo) cost_per_day 0.001"
            break
        assert spent < budget  # admitted only while below
        assert raw.headers["RateLimit-Limit"] == "0.001"  # the day's budget is the tightest limit
        remaining.append(float(raw.headers["RateLimit-Remaining"]))
        rec = await side.record(rid)
        assert rec.cost == token_cost(rec) > 0
        spent += rec.cost
        costs.append(rec.cost)
        admitted += 1
    else:
        pytest.fail("never refused")
    assert admitted >= 3
    # Each admitted response's remaining is the budget less the spend so far and its own
    # reservation: consecutive ones differ by the cost of the request in between.
    pairs = list(zip(remaining, remaining[1:], costs, strict=False))
    assert remaining[0] < budget and all(b <= a for a, b, _ in pairs)
    for before, after, cost in pairs:
        if after > 0:  # not yet clamped at 0 by the next request's own reservation
            assert before - after == pytest.approx(cost, abs=2e-6)  # the headers have 6 decimals

    await side.sidecar.stop()
    again: RunningSidecar = await start_sidecar(sim_openai.url, **kw)
    with pytest.raises(openai.RateLimitError):
        await oai(again, "cleo").chat.completions.create(model="sim-model", messages=PROMPT, max_tokens=5)
    async with httpx.AsyncClient() as http:
        ops = (await http.get(again.ops_url + "/ops/quotas", params={"user": "cleo"})).json()
    (scope,) = ops["scopes"]
    used = {lim["name"]: (lim["used"], lim["reserved"]) for lim in scope["limits"]}
    assert used == {"cost_per_day": (round(spent, 9), 0.0), "cost_per_month": (round(spent, 9), 0.0)}


async def test_a_team_budget_on_gpu_time_with_the_ollama_client(start_sidecar: Callable[..., Any]) -> None:
    """GPU-hour pricing: a request holds quota_default_reservation_seconds of the server while
    it runs and is reconciled with the server time Ollama reports."""
    sim = SimulatedLLM("ollama", token_delay=0.01)
    await sim.start()
    try:
        budget = 0.002  # about three requests of ~60 ms at 0.01 a second
        side: RunningSidecar = await start_sidecar(
            sim.url,
            prices=PRICES,
            currency="USD",
            auth="jwt",
            jwt_secret=SECRET,
            quota_default_reservation_seconds=5.0,
            quotas=rules_from_tables([{"team": "gpu", "cost_per_day": budget}]),
        )
        spent, admitted = 0.0, 0
        for n in range(60):
            rid = uuid.uuid4().hex
            client = ollama.AsyncClient(
                host=side.url,
                headers={"Authorization": f"Bearer {bearer(f'm{n % 2}', 'gpu')}", "X-Request-ID": rid},
            )
            try:
                await client.chat(model="llama3.2", messages=PROMPT, options={"num_predict": 6})
            except ollama.ResponseError as e:
                assert e.status_code == 429 and spent >= budget
                assert "cost_per_day = 0.002 USD of team:gpu" in str(e)
                break
            assert spent < budget
            rec = await side.record(rid)
            assert rec.server_duration_ms and rec.cost == gpu_cost(rec)
            spent += rec.cost
            admitted += 1
        else:
            pytest.fail("never refused")
        assert admitted >= 2
        async with httpx.AsyncClient() as http:
            ops = (await http.get(side.ops_url + "/ops/quotas", headers=OPS, params={"team": "gpu"})).json()
        ((lim,),) = [s["limits"] for s in ops["scopes"]]
        assert (lim["used"], lim["reserved"], lim["remaining"]) == (round(spent, 9), 0.0, 0.0)
    finally:
        await sim.stop()
