"""GET /ops/stats and `sidemeter stats` of a running sidecar in front of the simulated server:
counts and token sums per team and model equal what the official OpenAI client was sent and
told, latency percentiles follow the delays the server was told to produce and stay within
the stated error of the exact percentiles of the stored records, bad input is a JSON 400."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from agent.auth.issue import SigningKey, issue_token
from agent.cli import main
from agent.records import utcnow
from agent.sim import SimulatedLLM
from agent.store.database import open_database
from tests.support.sidecar import RunningSidecar

SECRET = "stats-test-secret-that-is-long-enough-for-hs256"
MODELS = ("llama3", "qwen")
TEAMS = {"ann": "quant", "bob": "quant", "cy": "eval"}


class SpreadPace:
    """Time to first token drawn from a known distribution (seeded): 20 ms to 400 ms."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.produced: list[float] = []

    def first_token(self, model: str) -> float:
        delay = self.rng.uniform(0.02, 0.4)
        self.produced.append(delay * 1000)
        return delay

    def next_token(self, model: str) -> float:
        return 0.0


def token(user: str, **extra: Any) -> str:
    return issue_token(SigningKey.from_secret(SECRET), user, team=TEAMS.get(user), extra=extra or None)


OPS = {"Authorization": f"Bearer {token('ops-person', roles=['ops'])}"}


def nearest_rank(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) / 100)) - 1]


@pytest.fixture
async def paced() -> AsyncIterator[tuple[SimulatedLLM, SpreadPace]]:
    pace = SpreadPace(seed=4)
    sim = SimulatedLLM("openai", models=MODELS, pace=pace)
    await sim.start()
    yield sim, pace
    await sim.stop()


async def send_traffic(side: RunningSidecar, n: int) -> dict[tuple[str, str], list[int]]:
    """n chat completions from the three users over both models, 6 at a time; returns
    (team, model) -> [requests, prompt tokens, completion tokens] as the server reported them."""
    rng = random.Random(9)
    sent: dict[tuple[str, str], list[int]] = {}
    clients = {
        u: openai.AsyncOpenAI(base_url=side.url + "/v1", api_key=token(u), max_retries=0) for u in TEAMS
    }
    gate = asyncio.Semaphore(6)

    async def one(i: int) -> None:
        user, model = rng.choice(sorted(TEAMS)), MODELS[i % 2]
        request: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"question {i} " * (1 + i % 5)}],
            "extra_headers": {"X-Sim-Tokens": str(1 + i % 7)},
        }
        async with gate:
            if i % 3:  # streamed: the usage comes on the last chunk
                stream = await clients[user].chat.completions.create(
                    **request, stream=True, stream_options={"include_usage": True}
                )
                usage = [chunk.usage async for chunk in stream if chunk.usage is not None][-1]
            else:
                usage = (await clients[user].chat.completions.create(**request)).usage
        assert usage is not None
        tally = sent.setdefault((TEAMS[user], model), [0, 0, 0])
        tally[0] += 1
        tally[1] += usage.prompt_tokens
        tally[2] += usage.completion_tokens

    await asyncio.gather(*(one(i) for i in range(n)))
    for client in clients.values():
        await client.close()
    return sent


async def stats(side: RunningSidecar, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(side.ops_url + "/ops/stats", params=params, headers=OPS)


async def test_figures_per_team_and_model_are_what_was_sent(
    paced: tuple[SimulatedLLM, SpreadPace], start_sidecar: Callable[..., Any], store_url: str
) -> None:
    sim, pace = paced
    side: RunningSidecar = await start_sidecar(sim.url, auth="jwt", jwt_secret=SECRET, db=store_url)
    since = utcnow()
    sent = await send_traffic(side, 60)
    assert await asyncio.to_thread(side.sidecar.store.flush, 10)
    until = utcnow() + timedelta(seconds=1)
    window = {"since": since.isoformat(), "until": until.isoformat()}

    r = await stats(side, **window, group_by="team,model")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["group_by"] == ["team", "model"]
    got = {(g["key"]["team"], g["key"]["model"]): g for g in body["groups"]}
    assert set(got) == set(sent)
    for key, (requests, prompt, completion) in sent.items():
        assert (got[key]["requests"], got[key]["tokens_in"], got[key]["tokens_out"]) == (
            requests,
            prompt,
            completion,
        )
        assert got[key]["errors"] == 0 and got[key]["estimated"] == 0
    counts = [g["requests"] for g in body["groups"]]
    assert counts == sorted(counts, reverse=True)
    assert body["total"]["requests"] == 60 == sum(counts)

    # Percentiles: within the stated error of the exact ones of the stored latencies, and
    # no lower than the delays the server was told to produce (a record's latency includes it).
    db = open_database(store_url)
    latencies = [r[0] for r in db.execute_sql("SELECT latency_ms FROM usage_logs WHERE operation = 'chat'")]
    ttfts = [r[0] for r in db.execute_sql("SELECT ttft_ms FROM usage_logs WHERE ttft_ms IS NOT NULL")]
    db.close()
    assert len(latencies) == 60 and len(pace.produced) == 60 and len(ttfts) >= 40
    error = body["percentile_error"]
    for q in (50, 95, 99):
        exact = nearest_rank(latencies, q)
        assert abs(body["total"]["latency_ms"][f"p{q}"] - exact) <= error * exact
        assert abs(body["total"]["ttft_ms"][f"p{q}"] - nearest_rank(ttfts, q)) <= error * nearest_rank(
            ttfts, q
        )
        assert body["total"]["latency_ms"][f"p{q}"] >= (1 - error) * nearest_rank(pace.produced, q)
    assert body["total"]["tokens_per_second"]["p50"] is not None

    # The CLI reads the same figures from the store.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["stats", "--db", side.sidecar.config.db, "--by", "team,model", "--format", "json", *_flags(window)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == body
    table = await asyncio.to_thread(
        CliRunner().invoke, main, ["stats", "--db", side.sidecar.config.db, "--by", "model", *_flags(window)]
    )
    assert table.exit_code == 0, table.output
    for model in MODELS:
        line = next(line for line in table.stdout.splitlines() if line.strip().startswith(model))
        assert f" {sum(v[0] for k, v in sent.items() if k[1] == model)} " in line


def _flags(window: dict[str, str]) -> list[str]:
    return ["--since", window["since"], "--until", window["until"]]


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"window": "fortnight"}, "24h"),
        ({"window": "400d"}, "30d"),
        ({"group_by": "tenant"}, "team"),
        ({"group_by": "team,model,user"}, "outcome"),
        ({"since": "yesterday"}, None),
    ],
)
async def test_bad_parameters_are_a_json_400_with_what_is_allowed(
    ollama_side: RunningSidecar, params: dict[str, str], allowed: str | None
) -> None:
    r = await stats(ollama_side, **params)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "bad_request" and error["message"]
    if allowed is not None:
        assert allowed in error["allowed"]


async def test_an_idle_sidecar_answers_zeros_and_null_percentiles(ollama_side: RunningSidecar) -> None:
    r = await stats(ollama_side, window="15m", group_by="model")
    assert r.status_code == 200
    body = r.json()
    assert body["window_s"] == 900 and body["groups"] == []
    assert body["total"]["requests"] == 0 and body["total"]["latency_ms"]["p99"] is None


async def test_panels_asking_the_same_question_at_once_cost_one_query(
    ollama_side: RunningSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops_api.handlers import stats as handler

    computed: list[tuple[str, ...]] = []

    def counting(*args: Any, **kw: Any) -> dict[str, Any]:
        computed.append(tuple(args[3]))
        return compute_stats(*args, **kw)

    compute_stats = handler.compute_stats
    monkeypatch.setattr(handler, "compute_stats", counting)
    answers = await asyncio.gather(
        *(stats(ollama_side, window="24h", group_by="team,model") for _ in range(8))
    )
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert computed == [("team", "model")]
    other = await stats(ollama_side, window="24h", group_by="model")
    assert other.status_code == 200 and computed == [("team", "model"), ("model",)]


async def test_a_store_that_cannot_be_read_is_a_json_503(ollama_side: RunningSidecar) -> None:
    Path(ollama_side.sidecar.config.db.split(":///", 1)[1]).unlink()  # e.g. a volume gone away
    r = await stats(ollama_side, window="1h")
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "unavailable" and "usage store" in r.json()["error"]["message"]
