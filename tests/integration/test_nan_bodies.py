"""Request bodies with NaN or Infinity, which Python servers (vLLM) accept and strict JSON parsers
refuse, through the running sidecar: metered like any other request, and forwarded so that the
server reads what the client wrote."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from aiohttp import web

from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

MODEL = "sim-model"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


class BodyRecordingLLM(SimulatedLLM):
    """The simulated server, keeping every request body as it arrived."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("openai", **kw)
        self.bodies: list[bytes] = []

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
            self.bodies.append(await request.read())
            return await handler(request)

        app.middlewares.insert(0, keep)
        return app


@pytest.fixture
async def vllm() -> AsyncIterator[BodyRecordingLLM]:
    sim = BodyRecordingLLM()
    await sim.start()
    yield sim
    await sim.stop()


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def rid() -> str:
    return uuid.uuid4().hex


async def post_json(url: str, doc: dict[str, Any], request_id: str) -> tuple[int, bytes]:
    """As a Python client sends it: aiohttp's json= is json.dumps, which writes NaN (the openai
    client and httpx refuse to: allow_nan=False)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=doc, headers={"X-Request-ID": request_id}) as resp,
    ):
        return resp.status, await resp.read()


def sse_objects(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:])
        for line in body.splitlines()
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"
    ]


async def test_stream_with_nan_temperature_is_metered(vllm: BodyRecordingLLM, start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(vllm.url)
    request_id = rid()
    doc = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "temperature": float("nan"), "stream": True}
    status, body = await post_json(side.url + "/v1/chat/completions", doc, request_id)
    chunks = sse_objects(body)
    assert status == 200 and chunks and all(ch["choices"] and ch.get("usage") is None for ch in chunks)
    sent = vllm.bodies[-1]
    assert b'"temperature": NaN' in sent  # the client's bytes, NaN as the client wrote it
    upstream = json.loads(sent)
    assert upstream["stream_options"] == {"include_usage": True} and math.isnan(upstream["temperature"])

    direct = await client(vllm.url).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    truth = [ch.usage async for ch in direct if ch.usage is not None][-1]
    rec = await side.record(request_id)
    assert (rec.model, rec.outcome, rec.usage_source) == (MODEL, "ok", "reported")
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (
        truth.prompt_tokens,
        truth.completion_tokens,
        truth.total_tokens,
    )


async def test_rewritten_body_keeps_infinity(vllm: BodyRecordingLLM, start_sidecar: Any) -> None:
    """stream_options without include_usage: the body is rewritten, Infinity stays Infinity."""
    side: RunningSidecar = await start_sidecar(vllm.url)
    request_id = rid()
    body = (
        '{"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,'
        ' "stream": true, "stream_options": {"include_usage": false}, "presence_penalty": -Infinity,'
        ' "seed": 123456789012345678901234567890}'
    )
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            side.url + "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        )
    assert resp.status_code == 200 and "usage" not in resp.text.replace('"usage":null', "")
    sent = vllm.bodies[-1]
    assert b'"presence_penalty":-Infinity' in sent and b'"seed":123456789012345678901234567890' in sent
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    rec = await side.record(request_id)
    assert (rec.model, rec.usage_source, rec.completion_tokens) == (MODEL, "reported", 4)


async def test_responses_stream_echoing_nan_is_metered(vllm: BodyRecordingLLM, start_sidecar: Any) -> None:
    """The server echoes temperature in its events: NaN in the stream the meter reads."""
    side: RunningSidecar = await start_sidecar(vllm.url)
    request_id = rid()
    doc = {
        "model": MODEL,
        "input": "Why?",
        "max_output_tokens": 5,
        "temperature": float("nan"),
        "stream": True,
    }
    status, body = await post_json(side.url + "/v1/responses", doc, request_id)
    assert status == 200 and b"NaN" in body
    done = [ev for ev in sse_objects(body) if ev["type"] == "response.completed"]
    assert done and done[0]["response"]["usage"]
    rec = await side.record(request_id)
    assert (rec.model, rec.usage_source) == (MODEL, "reported")
    assert rec.completion_tokens == done[0]["response"]["usage"]["output_tokens"]


async def test_a_server_that_refuses_nan_gets_a_record_with_the_model(start_sidecar: Any) -> None:
    """llama.cpp (nlohmann::json) and Ollama (Go) answer NaN with 400: recorded as theirs."""
    sim = SimulatedLLM("openai", flavor="llamacpp")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url)
        request_id = rid()
        doc = {"model": MODEL, "messages": MESSAGES, "temperature": float("nan"), "stream": True}
        status, body = await post_json(side.url + "/v1/chat/completions", doc, request_id)
        assert status == 400 and b"NaN" in body
        rec = await side.record(request_id)
        assert (rec.model, rec.status, rec.outcome) == (MODEL, 400, "upstream_error")
        assert rec.error and "NaN" in rec.error
    finally:
        await sim.stop()
