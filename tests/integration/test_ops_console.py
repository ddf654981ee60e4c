"""`POST /ops/test` through the running sidecar: the console's request goes through the proxy
like any other, is recorded under its own id and attributed to whoever ran the test, and an
upstream failure comes back as ok=false with the status and the server's message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

SECRET = "c" * 64
MODEL = "sim-model"
PROMPT = "Why is the sky blue?"


def bearer(sub: str, team: str) -> dict[str, str]:
    tok = issue_token(SigningKey.from_secret(SECRET), sub, team=team, extra={"roles": ["ops"]})
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture(params=["openai", "ollama"])
async def dialect_sim(request: pytest.FixtureRequest) -> AsyncIterator[SimulatedLLM]:
    sim = SimulatedLLM(request.param)
    await sim.start()
    yield sim
    await sim.stop()


async def direct_text(sim: SimulatedLLM, max_tokens: int) -> str:
    """Ground truth: what the official client gets from the server itself for the same prompt."""
    messages = [{"role": "user", "content": PROMPT}]
    if sim.dialect == "ollama":
        res = await ollama.AsyncClient(host=sim.url).chat(
            model=MODEL, messages=messages, options={"num_predict": max_tokens}
        )
        return res.message.content or ""
    c = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    chat = await c.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    return chat.choices[0].message.content or ""


async def assert_documented(side: RunningSidecar, answer: dict[str, Any]) -> None:
    """The answer fits the schema /ops/openapi.json gives for it (records included)."""
    async with httpx.AsyncClient(base_url=side.ops_url) as http:
        doc = (await http.get("/ops/openapi.json")).json()
    schema = doc["paths"]["/ops/test"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(answer)


async def console(side: RunningSidecar, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=side.ops_url, timeout=60) as http:
        if isinstance(body, bytes):
            return await http.post("/ops/test", content=body, headers=headers)
        return await http.post("/ops/test", json=body, headers=headers)


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_the_test_request_is_recorded_under_its_id_for_the_caller(
    dialect_sim: SimulatedLLM, start_sidecar: Callable[..., Any], stream: bool
) -> None:
    side: RunningSidecar = await start_sidecar(dialect_sim.url, auth="jwt", jwt_secret=SECRET)
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "stream": stream,
        "max_tokens": 7,
        "dialect": dialect_sim.dialect,
    }
    res = await console(side, body, bearer("dana", "finetune"))
    assert res.status_code == 200, res.text
    answer = res.json()
    assert answer["ok"] is True and answer["status"] == 200 and answer["error"] is None
    await assert_documented(side, answer)
    assert answer["output"] == await direct_text(dialect_sim, 7) != ""
    stored = await side.record(answer["request_id"])
    assert answer["record"] == stored.to_dict()
    assert (stored.user, stored.team, stored.outcome, stored.stream) == ("dana", "finetune", "ok", stream)
    assert stored.dialect == dialect_sim.dialect and stored.operation == "chat"
    assert answer["tokens"] == {
        "prompt": stored.prompt_tokens,
        "completion": 7,
        "total": stored.total_tokens,
    }
    assert stored.completion_tokens == 7 and stored.usage_source == "reported"
    assert answer["latency_ms"] > 0
    if stream:
        assert 0 < answer["ttft_ms"] <= answer["latency_ms"]
    else:
        assert answer["ttft_ms"] is None


async def test_an_upstream_error_is_ok_false_with_its_status_and_message(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any]
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    res = await console(side, {"model": "no-such-model", "prompt": PROMPT}, bearer("erin", "eval"))
    assert res.status_code == 200, res.text
    answer = res.json()
    assert answer["ok"] is False and answer["status"] == 404 and answer["output"] == ""
    assert "no-such-model" in answer["error"]
    await assert_documented(side, answer)
    stored = await side.record(answer["request_id"])
    assert answer["record"] == stored.to_dict()
    assert (stored.outcome, stored.status, stored.user) == ("upstream_error", 404, "erin")


async def test_an_upstream_that_is_down_is_ok_false_502(start_sidecar: Callable[..., Any]) -> None:
    sim = SimulatedLLM("ollama")
    await sim.start()
    side: RunningSidecar = await start_sidecar(sim.url)  # auth off: attributed by X-User-Id
    await sim.stop()
    res = await console(side, {"model": MODEL, "prompt": PROMPT, "dialect": "ollama"}, {"X-User-Id": "frank"})
    answer = res.json()
    assert res.status_code == 200 and answer["ok"] is False and answer["status"] == 502
    assert answer["error"]
    stored = await side.record(answer["request_id"])
    assert (stored.outcome, stored.user) == ("upstream_error", "frank")


@pytest.mark.parametrize(
    ("body", "in_message"),
    [
        (b"{not json", "the body is not JSON"),
        ([1, 2], "the body must be a JSON object"),
        ({"prompt": PROMPT}, "model is required"),
        ({"model": MODEL, "prompt": ""}, "prompt is required"),
        ({"model": MODEL, "prompt": PROMPT, "stream": "yes"}, "stream must be true or false"),
        (
            {"model": MODEL, "prompt": PROMPT, "max_tokens": 0},
            "max_tokens must be a whole number from 1 to 4096",
        ),
        ({"model": MODEL, "prompt": PROMPT, "max_tokens": 2.5}, "max_tokens must be a whole number"),
        ({"model": MODEL, "prompt": PROMPT, "dialect": "grpc"}, "unknown dialect 'grpc'"),
        ({"model": MODEL, "prompt": PROMPT, "timeout_s": 0}, "timeout_s must be a number of seconds"),
        ({"model": MODEL, "prompt": PROMPT, "temperature": 1}, "unknown field(s) temperature"),
    ],
)
async def test_a_bad_body_is_400_with_what_is_wrong_and_sends_nothing(
    openai_side: RunningSidecar, body: Any, in_message: str
) -> None:
    res = await console(openai_side, body)
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["type"] == "bad_request" and in_message in error["message"], error
    if "dialect" in in_message:
        assert error["allowed"] == ["ollama", "openai"]
    assert openai_side.count == 0  # nothing reached the proxy


async def test_the_whole_test_is_bounded_by_its_timeout(start_sidecar: Callable[..., Any]) -> None:
    sim = SimulatedLLM("openai", token_delay=0.2)  # 50 tokens take 10 s; the test allows 0.5 s
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url)
        body = {"model": MODEL, "prompt": PROMPT, "stream": True, "max_tokens": 50, "timeout_s": 0.5}
        answer = (await console(side, body)).json()
        assert answer["ok"] is False and answer["error"] == "no complete answer within 0.5 s"
        stored = await side.record(answer["request_id"])
        assert stored.outcome == "client_cancelled"  # the console hung up; the record says so
        assert answer["record"] == stored.to_dict()
    finally:
        await sim.stop()
