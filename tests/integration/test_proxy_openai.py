"""The official openai client through the sidecar in front of the simulated vLLM-style server:
every mode works unchanged and leaves one record whose tokens equal what the server reported."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

MODEL = "sim-model"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def rid() -> str:
    return uuid.uuid4().hex


async def direct_usage(sim: SimulatedLLM, **kw: Any) -> Any:
    """Ground truth: the same request sent straight to the server, asking for usage."""
    c = client(sim.url)
    if kw.pop("_kind") == "chat":
        stream = await c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    else:
        stream = await c.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    return usage


async def test_chat_non_streaming(openai_side: RunningSidecar) -> None:
    c = client(openai_side.url)
    request_id = rid()
    raw = await c.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=9, extra_headers={"X-Request-ID": request_id}
    )
    assert raw.headers["x-request-id"] == request_id
    resp = raw.parse()
    assert resp.choices[0].message.content
    rec = await openai_side.record(request_id)
    assert (rec.dialect, rec.operation, rec.endpoint, rec.model) == (
        "openai",
        "chat",
        "/v1/chat/completions",
        MODEL,
    )
    assert rec.stream is False and rec.status == 200 and rec.outcome == "ok"
    assert rec.prompt_tokens == resp.usage.prompt_tokens
    assert rec.completion_tokens == resp.usage.completion_tokens == 9
    assert rec.total_tokens == resp.usage.total_tokens
    assert rec.usage_source == "reported"
    assert rec.latency_ms is not None and rec.latency_ms > 0
    assert rec.request_bytes > 0 and rec.response_bytes > 0
    assert rec.prompt is None  # prompt capture is off by default


async def test_chat_stream_without_usage_hides_injected_chunk(
    openai_side: RunningSidecar, sim_openai: SimulatedLLM
) -> None:
    request_id = rid()
    stream = await client(openai_side.url).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=7,
        stream=True,
        extra_headers={"X-Request-ID": request_id},
    )
    chunks = [chunk async for chunk in stream]
    # The client did not ask for usage, so it must see none: no usage-only chunk, no usage anywhere.
    assert all(ch.choices for ch in chunks)
    assert all(ch.usage is None for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text
    truth = await direct_usage(sim_openai, _kind="chat", model=MODEL, messages=MESSAGES, max_tokens=7)
    rec = await openai_side.record(request_id)
    assert rec.stream is True and rec.outcome == "ok" and rec.usage_source == "reported"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (
        truth.prompt_tokens,
        truth.completion_tokens,
        truth.total_tokens,
    )
    assert rec.ttft_ms is not None and 0 < rec.ttft_ms <= rec.latency_ms


async def test_chat_stream_with_usage_keeps_it(openai_side: RunningSidecar) -> None:
    request_id = rid()
    stream = await client(openai_side.url).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-ID": request_id},
    )
    chunks = [chunk async for chunk in stream]
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    rec = await openai_side.record(request_id)
    u = usage_chunks[0].usage
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
    )
    assert rec.usage_source == "reported"


async def test_completions_stream_and_not(openai_side: RunningSidecar, sim_openai: SimulatedLLM) -> None:
    c = client(openai_side.url)
    r1, r2 = rid(), rid()
    resp = await c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, extra_headers={"X-Request-ID": r1}
    )
    rec = await openai_side.record(r1)
    assert (rec.operation, rec.endpoint) == ("completion", "/v1/completions")
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        resp.usage.prompt_tokens,
        resp.usage.completion_tokens,
    )

    stream = await c.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        stream=True,
        extra_headers={"X-Request-ID": r2},
    )
    chunks = [ch async for ch in stream]
    assert all(ch.usage is None for ch in chunks)
    truth = await direct_usage(
        sim_openai, _kind="completion", model=MODEL, prompt="Once upon a time", max_tokens=6
    )
    rec = await openai_side.record(r2)
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        truth.prompt_tokens,
        truth.completion_tokens,
    )
    assert rec.usage_source == "reported" and rec.stream


async def test_embeddings(openai_side: RunningSidecar) -> None:
    request_id = rid()
    resp = await client(openai_side.url).embeddings.create(
        model=MODEL, input=["one text", "another text"], extra_headers={"X-Request-ID": request_id}
    )
    assert len(resp.data) == 2
    rec = await openai_side.record(request_id)
    assert rec.operation == "embedding"
    assert rec.prompt_tokens == resp.usage.prompt_tokens and rec.completion_tokens == 0
    assert rec.usage_source == "reported"


async def test_responses_api_stream_and_not(openai_side: RunningSidecar) -> None:
    c = client(openai_side.url)
    r1, r2 = rid(), rid()
    resp = await c.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=4, extra_headers={"X-Request-ID": r1}
    )
    rec = await openai_side.record(r1)
    assert rec.operation == "responses"
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        resp.usage.input_tokens,
        resp.usage.output_tokens,
    )

    stream = await c.responses.create(
        model=MODEL,
        input="Say hello.",
        max_output_tokens=4,
        stream=True,
        extra_headers={"X-Request-ID": r2},
    )
    completed = None
    async for event in stream:
        if event.type == "response.completed":
            completed = event.response
    assert completed is not None and completed.usage is not None
    rec = await openai_side.record(r2)
    assert rec.stream and rec.outcome == "ok" and rec.usage_source == "reported"
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        completed.usage.input_tokens,
        completed.usage.output_tokens,
    )
    assert rec.ttft_ms is not None


async def test_llamacpp_usage_on_finish_chunk_is_left_alone(start_sidecar: Any) -> None:
    """llama.cpp puts usage (and timings) on the finish chunk of /v1/completions streams by
    itself: the client must still receive it, and the record must use it."""
    sim = SimulatedLLM("openai", flavor="llamacpp")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url)
        body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 5, "stream": True}
        async with httpx.AsyncClient() as http:
            direct = (await http.post(sim.url + "/v1/completions", json=body)).content
            request_id = rid()
            proxied = await http.post(
                side.url + "/v1/completions", json=body, headers={"X-Request-ID": request_id}
            )
        assert b'"usage"' in direct
        # byte-for-byte what the server sends directly, ids and timestamps aside
        assert _normalise(proxied.content) == _normalise(direct)
        rec = await side.record(request_id)
        assert rec.usage_source == "reported" and rec.completion_tokens == 5
    finally:
        await sim.stop()


def _normalise(body: bytes) -> list[str]:
    import json
    import re

    out = []
    for line in body.decode().split("\n"):
        if line.startswith("data: {"):
            obj = json.loads(line[6:])
            obj.pop("id", None)
            obj.pop("created", None)
            obj.pop("timings", None)
            line = "data: " + json.dumps(obj, sort_keys=True)
        out.append(re.sub(r"\s+$", "", line))
    return out


@pytest.mark.parametrize("path", ["/v1/models", "/version", "/health"])
async def test_non_inference_paths_are_recorded_as_other(openai_side: RunningSidecar, path: str) -> None:
    request_id = rid()
    async with httpx.AsyncClient() as http:
        resp = await http.get(openai_side.url + path, headers={"X-Request-ID": request_id})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == request_id
    rec = await openai_side.record(request_id)
    assert rec.operation == "other" and rec.endpoint == path and rec.usage_source == "none"
    assert rec.prompt_tokens is None


async def test_request_id_generated_when_absent(openai_side: RunningSidecar) -> None:
    async with httpx.AsyncClient() as http:
        first = await http.get(openai_side.url + "/v1/models")
        second = await http.get(openai_side.url + "/v1/models")
    generated = [first.headers["x-request-id"], second.headers["x-request-id"]]
    # UUIDv7: time-ordered, so later requests sort after earlier ones (and the index stays cheap)
    assert [uuid.UUID(g).version for g in generated] == [7, 7]
    assert generated[0] < generated[1]
    for g in generated:
        rec = await openai_side.record(g)
        assert rec.status == 200 and rec.request_id == g
