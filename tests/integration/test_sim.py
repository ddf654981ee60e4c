"""The simulated LLM server, driven by the official clients and checked byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from agent.sim import SimulatedLLM, count_tokens
from tests.support.paths import ROOT

MODEL = "sim-model"
OLLAMA_MODEL = "llama3.2"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")

MakeSim = Callable[..., Awaitable[SimulatedLLM]]
OpenAIFor = Callable[[SimulatedLLM], openai.AsyncOpenAI]
OllamaFor = Callable[[SimulatedLLM], ollama.AsyncClient]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    started: list[SimulatedLLM] = []

    async def make(dialect: str = "openai", **kw: Any) -> SimulatedLLM:
        sim = SimulatedLLM(dialect, **kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def vllm(make_sim: MakeSim) -> SimulatedLLM:
    return await make_sim("openai")


@pytest.fixture
async def llamacpp(make_sim: MakeSim) -> SimulatedLLM:
    return await make_sim("openai", flavor="llamacpp")


@pytest.fixture
async def olla(make_sim: MakeSim) -> SimulatedLLM:
    return await make_sim("ollama")


@pytest.fixture
async def oai() -> AsyncIterator[OpenAIFor]:
    """The official openai client for a simulator; closed at teardown."""
    clients: list[openai.AsyncOpenAI] = []

    def make(sim: SimulatedLLM) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def olc() -> AsyncIterator[OllamaFor]:
    """The official ollama client for a simulator; closed at teardown."""
    clients: list[ollama.AsyncClient] = []

    def make(sim: SimulatedLLM) -> ollama.AsyncClient:
        clients.append(ollama.AsyncClient(host=sim.url))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def sse_blocks(body: bytes) -> list[str]:
    """SSE events exactly as framed: every one ends in a blank line, nothing else in between."""
    text = body.decode()
    assert text.endswith("\n\n"), text[-80:]
    return text[:-2].split("\n\n")


def sse_json(body: bytes) -> list[dict[str, Any]]:
    blocks = sse_blocks(body)
    assert blocks[-1] == "data: [DONE]"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: {") and "\n" not in block, block
        out.append(json.loads(block[len("data: ") :]))
    return out


async def post_raw(sim: SimulatedLLM, path: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(sim.url + path, json=body, headers=headers)


# ------------------------------------------------------------------ OpenAI dialect (vLLM)


async def test_chat_non_streaming_usage_is_what_was_generated(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    resp = await oai(vllm).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert resp.usage is not None and resp.usage.completion_tokens == 7
    assert count_tokens(choice.message.content or "") == 7
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 7
    # The template counts too: more than the words, and exactly what /tokenize says.
    words = sum(count_tokens(m["content"]) for m in MESSAGES)
    assert resp.usage.prompt_tokens > words
    tok = (await post_raw(vllm, "/tokenize", {"model": MODEL, "messages": MESSAGES})).json()
    assert set(tok) >= {"count", "max_model_len", "tokens"}
    assert tok["count"] == len(tok["tokens"]) == resp.usage.prompt_tokens


async def test_chat_stream_without_include_usage_has_no_usage(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    stream = await oai(vllm).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [ch async for ch in stream]
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == "" and first.finish_reason is None
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    pieces = [ch.choices[0].delta.content for ch in chunks[1:] if ch.choices[0].delta.content]
    assert len(pieces) == 16  # default_max_tokens, no limit asked: a natural stop
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_include_usage_adds_one_usage_chunk(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(vllm)
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [ch async for ch in stream]
    with_usage = [ch for ch in chunks if ch.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    pieces = [ch.choices[0].delta.content for ch in chunks[:-1] if ch.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(pieces) == 9
    assert [ch.choices[0].finish_reason for ch in chunks[:-1]].count("length") == 1
    plain = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=9)
    assert plain.usage is not None and usage.prompt_tokens == plain.usage.prompt_tokens
    assert "".join(pieces) == plain.choices[0].message.content  # deterministic in the prompt


async def test_completions_stream_and_not(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(vllm)
    plain = await c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert plain.usage is not None and plain.usage.completion_tokens == 6
    assert plain.usage.prompt_tokens == count_tokens("Once upon a time") + 1  # BOS
    stream = await c.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [ch async for ch in stream]
    texts = [ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].text]
    assert "".join(texts) == plain.choices[0].text and len(texts) == 6
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    stream = await c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True)
    assert all([ch.usage is None async for ch in stream])


async def test_embeddings_base64_and_float(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    texts = ["one text", "another, longer text"]
    resp = await oai(vllm).embeddings.create(model=MODEL, input=texts)  # the client asks for base64
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert len(d.embedding) == 16 and math.isclose(sum(v * v for v in d.embedding), 1.0, rel_tol=1e-5)
    assert resp.usage.prompt_tokens == sum(count_tokens(t) + 1 for t in texts)
    floats = (await post_raw(vllm, "/v1/embeddings", {"model": MODEL, "input": texts[0]})).json()
    assert floats["data"][0]["embedding"] == pytest.approx(resp.data[0].embedding, rel=1e-6)


async def test_responses_non_streaming(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(vllm)
    resp = await c.responses.create(
        model=MODEL, input="Say hello.", instructions="Be kind.", max_output_tokens=5
    )
    assert count_tokens(resp.output_text) == 5
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    u = resp.usage
    assert u is not None and (u.output_tokens, u.total_tokens) == (5, u.input_tokens + 5)
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    natural = await c.responses.create(model=MODEL, input="Say hello.", extra_headers={"X-Sim-Tokens": "3"})
    assert natural.status == "completed" and natural.usage is not None and natural.usage.output_tokens == 3


async def test_responses_streaming_events(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(vllm)
    stream = await c.responses.create(model=MODEL, input="Say hello.", max_output_tokens=4, stream=True)
    events = [ev async for ev in stream]
    kinds = [ev.type for ev in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    deltas = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
    done = events[-1].response
    assert done.usage is not None and done.usage.output_tokens == 4 and done.output_text == deltas
    async with c.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=4) as helper:
        final = await helper.get_final_response()
    assert final.output_text == deltas  # the client's own accumulator agrees
    raw = await post_raw(vllm, "/v1/responses", {"model": MODEL, "input": "x", "stream": True})
    for block in sse_blocks(raw.content):
        event, data = block.split("\n")
        assert event.startswith("event: ") and json.loads(data[len("data: ") :])["type"] == event[7:]


async def test_openai_error_shapes(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await oai(vllm).chat.completions.create(model="no-such-model", messages=MESSAGES)
    body = err.value.response.json()
    assert body == {
        "error": {
            "message": "The model `no-such-model` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    async with httpx.AsyncClient() as http:
        bad = await http.post(
            vllm.url + "/v1/chat/completions", content=b'{"model": "sim-model", "messages": ['
        )
    assert bad.status_code == 400 and set(bad.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    missing = await post_raw(vllm, "/v1/chat/completions", {"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    options = await post_raw(
        vllm,
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "stream_options": {"include_usage": True}},
    )
    assert options.status_code == 400  # vLLM: stream_options only with stream=true
    zero = await post_raw(vllm, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert zero.status_code == 400 and zero.json()["error"]["code"] == 400
    nowhere = await post_raw(vllm, "/v1/nowhere", {})
    assert nowhere.status_code == 404 and nowhere.json() == {"detail": "Not Found"}


async def test_sse_framing_is_exact(vllm: SimulatedLLM) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 3}
    resp = await post_raw(vllm, "/v1/chat/completions", body | {"stream_options": {"include_usage": True}})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.content.endswith(b"}\n\ndata: [DONE]\n\n")
    chunks = sse_json(resp.content)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == [
        p["choices"][0]["delta"]["content"] for p in chunks[1:4]
    ]
    assert chunks[3]["choices"][0]["finish_reason"] == "length"  # vLLM: last token carries it
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 3
    assert all("usage" not in c for c in chunks[:4])


async def test_vllm_info_routes(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(vllm.url + "/health")).status_code == 200
        assert (await http.get(vllm.url + "/version")).json()["version"]
        models = (await http.get(vllm.url + "/v1/models")).json()
        await oai(vllm).completions.create(model=MODEL, prompt="count me", max_tokens=2)
        metrics = (await http.get(vllm.url + "/metrics")).text
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["owned_by"] == "vllm" and models["data"][0]["max_model_len"] > 0
    assert 'vllm:generation_tokens_total{model_name="sim-model"} 2.0' in metrics


async def test_prefix_cache_reports_cached_tokens(vllm: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(vllm)
    long = [{"role": "user", "content": " ".join(f"word{i}" for i in range(40))}]
    first = await c.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    second = await c.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    assert first.usage is not None and second.usage is not None
    assert (
        first.usage.prompt_tokens_details is not None and first.usage.prompt_tokens_details.cached_tokens == 0
    )
    cached = second.usage.prompt_tokens_details.cached_tokens if second.usage.prompt_tokens_details else None
    assert cached is not None and cached % 16 == 0 and 0 < cached < second.usage.prompt_tokens
    assert second.usage.prompt_tokens == first.usage.prompt_tokens


async def test_x_sim_tokens_and_determinism(vllm: SimulatedLLM, make_sim: MakeSim, oai: OpenAIFor) -> None:
    c = oai(vllm)
    fewer = await c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, extra_headers={"X-Sim-Tokens": "3"}
    )
    assert fewer.usage is not None and fewer.usage.completion_tokens == 3
    assert fewer.choices[0].finish_reason == "stop"
    capped = await c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers={"X-Sim-Tokens": "50"}
    )
    assert capped.usage is not None and capped.usage.completion_tokens == 5
    assert capped.choices[0].finish_reason == "length"
    bad = await post_raw(
        vllm,
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES},
        **{"X-Sim-Tokens": "-1"},
    )
    assert bad.status_code == 400
    other = await make_sim("openai")
    same = await oai(other).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert same.choices[0].message.content == capped.choices[0].message.content
    different = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Something else entirely"}], max_tokens=5
    )
    assert different.choices[0].message.content != same.choices[0].message.content


# ------------------------------------------------------------------ llama.cpp flavour


async def test_llamacpp_completions_stream_puts_usage_on_finish_chunk(
    llamacpp: SimulatedLLM, oai: OpenAIFor
) -> None:
    for extra in ({}, {"stream_options": {"include_usage": True}}):
        body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 5, "stream": True, **extra}
        chunks = sse_json((await post_raw(llamacpp, "/v1/completions", body)).content)
        assert all(ch["choices"] for ch in chunks)  # never a choices-[] usage chunk
        final = chunks[-1]
        assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["text"] == ""
        assert final["usage"]["completion_tokens"] == len(chunks) - 1 == 5
        assert final["timings"]["predicted_n"] == 5 and final["timings"]["prompt_n"] >= 0
        assert final["usage"]["prompt_tokens"] == count_tokens("Hello there") + 1
        assert all("usage" not in ch and "timings" not in ch for ch in chunks[:-1])
    stream = await oai(llamacpp).completions.create(
        model=MODEL, prompt="Hello there", max_tokens=5, stream=True
    )
    chunks_seen = [ch async for ch in stream]
    assert chunks_seen[-1].usage is not None and chunks_seen[-1].usage.completion_tokens == 5


async def test_llamacpp_chat_stream_shape(llamacpp: SimulatedLLM, oai: OpenAIFor) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    chunks = sse_json((await post_raw(llamacpp, "/v1/chat/completions", body)).content)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert [len(ch["choices"][0]["delta"]["content"]) > 0 for ch in chunks[1:5]] == [True] * 4
    assert chunks[-1]["choices"][0] == {"finish_reason": "length", "index": 0, "delta": {}}
    assert "timings" in chunks[-1] and "usage" not in chunks[-1]
    with_usage = sse_json(
        (
            await post_raw(
                llamacpp, "/v1/chat/completions", body | {"stream_options": {"include_usage": True}}
            )
        ).content
    )
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["completion_tokens"] == 4
    assert "timings" in with_usage[-1] and "timings" not in with_usage[-2]  # timings ride on the last chunk
    stream = await oai(llamacpp).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
    assert count_tokens(text) == 4
    plain = await oai(llamacpp).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert plain.usage is not None and plain.usage.completion_tokens == 4
    assert plain.model_extra is not None and plain.model_extra["timings"]["predicted_n"] == 4


async def test_llamacpp_native_routes(llamacpp: SimulatedLLM) -> None:
    done = (await post_raw(llamacpp, "/completion", {"prompt": "Hi there", "n_predict": 3})).json()
    assert (done["tokens_predicted"], done["tokens_evaluated"], done["stop"]) == (3, 3, True)
    assert done["stop_type"] == "limit" and count_tokens(done["content"]) == 3
    streamed = await post_raw(llamacpp, "/completion", {"prompt": "Hi there", "n_predict": 3, "stream": True})
    blocks = sse_blocks(streamed.content)
    assert "[DONE]" not in streamed.text and json.loads(blocks[-1][6:])["stop"] is True
    assert (await post_raw(llamacpp, "/tokenize", {"content": "a b"})).json() == {
        "tokens": (await post_raw(llamacpp, "/tokenize", {"content": "a b", "add_special": True})).json()[
            "tokens"
        ][1:]
    }
    async with httpx.AsyncClient() as http:
        assert (await http.get(llamacpp.url + "/health")).json() == {"status": "ok"}
        assert (await http.get(llamacpp.url + "/props")).json()["total_slots"] == 1
        assert "llamacpp:tokens_predicted_total 6" in (await http.get(llamacpp.url + "/metrics")).text
    missing = await post_raw(llamacpp, "/v1/chat/completions", {"model": "nope", "messages": MESSAGES})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------ Ollama dialect


async def test_ollama_generate_stream_and_not(olla: SimulatedLLM, olc: OllamaFor) -> None:
    c = olc(olla)
    parts = [
        p
        async for p in await c.generate(
            model=OLLAMA_MODEL, prompt="Why?", options={"num_predict": 5}, stream=True
        )
    ]
    final = parts[-1]
    assert final.done and final.done_reason == "length"
    assert final.eval_count == sum(1 for p in parts if p.response) == len(parts) - 1 == 5
    assert final.context is not None and len(final.context) == (final.prompt_eval_count or 0) + 5
    assert all(RFC3339_NANO.match(p.created_at or "") for p in parts)
    whole = await c.generate(model=OLLAMA_MODEL, prompt="Why?", stream=False, options={"num_predict": 5})
    assert whole.response == "".join(p.response for p in parts) and whole.eval_count == 5
    natural = await c.generate(model=OLLAMA_MODEL, prompt="Why?", stream=False)
    assert natural.done_reason == "stop" and natural.eval_count == 16


async def test_ollama_chat_stream_and_not(olla: SimulatedLLM, olc: OllamaFor) -> None:
    c = olc(olla)
    parts = [p async for p in await c.chat(model=OLLAMA_MODEL, messages=MESSAGES, stream=True)]
    final = parts[-1]
    assert final.done and final.done_reason == "stop" and final.message.content == ""
    assert final.eval_count == sum(1 for p in parts if p.message.content) == 16
    whole = await c.chat(model=OLLAMA_MODEL, messages=MESSAGES, options={"num_predict": 3})
    assert (
        whole.done_reason == "length" and count_tokens(whole.message.content or "") == whole.eval_count == 3
    )
    assert (
        whole.prompt_eval_count == final.prompt_eval_count > sum(count_tokens(m["content"]) for m in MESSAGES)
    )


async def test_ollama_ndjson_framing_and_final_metrics(make_sim: MakeSim) -> None:
    sim = await make_sim("ollama", first_token_delay=0.02, token_delay=0.01)
    resp = await post_raw(
        sim,
        "/api/chat",
        {"model": OLLAMA_MODEL, "messages": MESSAGES, "options": {"num_predict": 4}},
    )
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.content.endswith(b"}\n")
    lines = [json.loads(line) for line in resp.content.decode().split("\n")[:-1]]
    assert [line["done"] for line in lines] == [False] * 4 + [True]
    final = lines[-1]
    assert list(final)[:5] == ["model", "created_at", "message", "done_reason", "done"]
    durations = ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"]
    assert all(
        isinstance(final[k], int) and final[k] > 0 for k in [*durations, "prompt_eval_count", "eval_count"]
    )
    assert (
        final["total_duration"]
        == final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    )
    assert final["prompt_eval_duration"] >= 20_000_000 and final["eval_duration"] >= 30_000_000  # nanoseconds


async def test_ollama_embeddings(olla: SimulatedLLM, olc: OllamaFor) -> None:
    c = olc(olla)
    resp = await c.embed(model=OLLAMA_MODEL, input=["first", "second text"])
    assert len(resp.embeddings) == 2 and all(len(e) == 16 for e in resp.embeddings)
    assert resp.prompt_eval_count == (1 + 1) + (2 + 1) and (resp.total_duration or 0) > 0
    legacy = await post_raw(olla, "/api/embeddings", {"model": OLLAMA_MODEL, "prompt": "first"})
    assert list(legacy.json()) == ["embedding"]  # no counts at all on the legacy route
    assert legacy.json()["embedding"] == pytest.approx(resp.embeddings[0])
    assert (await c.embeddings(model=OLLAMA_MODEL, prompt="first")).embedding


async def test_ollama_info_routes(olla: SimulatedLLM, olc: OllamaFor) -> None:
    c = olc(olla)
    async with httpx.AsyncClient() as http:
        root = await http.get(olla.url + "/")
        assert root.text == "Ollama is running" and (await http.head(olla.url + "/")).status_code == 200
        assert (await http.get(olla.url + "/api/version")).json()["version"]
        assert (await http.get(olla.url + "/nowhere")).text == "404 page not found"
    assert "llama3.2:latest" in [m.model for m in (await c.list()).models]
    assert (await c.ps()).models == []
    await c.generate(model=OLLAMA_MODEL, prompt="load me", stream=False)
    assert [m.model for m in (await c.ps()).models] == ["llama3.2:latest"]
    shown = await c.show(OLLAMA_MODEL)
    assert shown.details is not None and shown.details.format == "gguf" and shown.template
    load = await post_raw(olla, "/api/generate", {"model": OLLAMA_MODEL})
    assert load.json()["done_reason"] == "load" and load.headers["content-type"].startswith(
        "application/json"
    )


async def test_ollama_errors(olla: SimulatedLLM, olc: OllamaFor) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await olc(olla).chat(model="no-such-model", messages=MESSAGES, stream=False)
    assert err.value.status_code == 404
    assert err.value.error == 'model "no-such-model" not found, try pulling it first'
    async with httpx.AsyncClient() as http:
        bad = await http.post(olla.url + "/api/generate", content=b'{"model": ')
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    assert (await post_raw(olla, "/api/chat", {"messages": MESSAGES})).json() == {
        "error": "model is required"
    }


async def test_ollama_openai_compatible_routes(olla: SimulatedLLM, oai: OpenAIFor) -> None:
    c = oai(olla)
    stream = await c.chat.completions.create(
        model=OLLAMA_MODEL,
        messages=MESSAGES,
        stream=True,
        max_tokens=4,
        stream_options={"include_usage": True},
    )
    chunks = [ch async for ch in stream]
    assert all(ch.choices[0].delta.role == "assistant" for ch in chunks[:-1])  # Ollama repeats the role
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].system_fingerprint == "fp_ollama"
    plain = [
        ch async for ch in await c.chat.completions.create(model=OLLAMA_MODEL, messages=MESSAGES, stream=True)
    ]
    assert all(ch.usage is None for ch in plain)
    # Ollama's quirk: once usage is asked for, every completions chunk carries an all-zero usage.
    body = {"model": OLLAMA_MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True}
    quirky = sse_json(
        (await post_raw(olla, "/v1/completions", body | {"stream_options": {"include_usage": True}})).content
    )
    assert [ch["usage"]["total_tokens"] == 0 for ch in quirky] == [True, True, True, False]
    assert quirky[-1]["choices"] == [] and quirky[-1]["usage"]["completion_tokens"] == 2
    models = await c.models.list()
    assert "llama3.2:latest" in [m.id for m in models.data]
    with pytest.raises(openai.NotFoundError) as err:
        await c.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.response.json()["error"] == {
        "message": 'model "no-such-model" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    resp = await c.responses.create(model=OLLAMA_MODEL, input="hi", max_output_tokens=3)
    assert resp.usage is not None and resp.usage.output_tokens == 3
    emb = await c.embeddings.create(model=OLLAMA_MODEL, input="hi")
    assert len(emb.data[0].embedding) == 16 and emb.usage.prompt_tokens == 2


# ------------------------------------------------------------------ faults, gzip, pacing


@pytest.mark.parametrize(
    ("dialect", "path", "body", "shape"),
    [
        ("openai", "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}, "openai"),
        ("ollama", "/api/chat", {"model": OLLAMA_MODEL, "messages": MESSAGES}, "ollama"),
        ("ollama", "/v1/chat/completions", {"model": OLLAMA_MODEL, "messages": MESSAGES}, "openai"),
    ],
)
async def test_error_faults(
    make_sim: MakeSim, dialect: str, path: str, body: dict[str, Any], shape: str
) -> None:
    sim = await make_sim(dialect)
    for fault, status in (("error-500", 500), ("error-429", 429)):
        resp = await post_raw(sim, path, body, **{"X-Sim-Fault": fault})
        assert resp.status_code == status
        err = resp.json()["error"]
        assert isinstance(err, str) if shape == "ollama" else {"message", "type", "param", "code"} <= set(err)
    assert resp.headers["retry-after"] == "1"
    assert (await post_raw(sim, path, body, **{"X-Sim-Fault": "bogus"})).status_code == 400


@pytest.mark.parametrize(
    ("dialect", "path", "body", "end_marker"),
    [
        (
            "openai",
            "/v1/chat/completions",
            {"model": MODEL, "messages": MESSAGES, "stream": True},
            b"[DONE]",
        ),
        ("ollama", "/api/chat", {"model": OLLAMA_MODEL, "messages": MESSAGES}, b'"done":true'),
        ("ollama", "/api/generate", {"model": OLLAMA_MODEL, "prompt": "hi"}, b'"done":true'),
    ],
)
async def test_cut_fault_breaks_the_stream(
    make_sim: MakeSim, dialect: str, path: str, body: dict[str, Any], end_marker: bytes
) -> None:
    sim = await make_sim(dialect)
    received = b""
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("POST", sim.url + path, json=body, headers={"X-Sim-Fault": "cut"}) as resp:
                async for chunk in resp.aiter_bytes():
                    received += chunk
    assert received and end_marker not in received
    assert received.count(b'"content":" ') + received.count(b'"response":" ') == 3  # a few tokens made it


async def test_cut_fault_on_a_whole_body(vllm: SimulatedLLM) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="expected"):
        await post_raw(
            vllm,
            "/v1/chat/completions",
            {"model": MODEL, "messages": MESSAGES},
            **{"X-Sim-Fault": "cut"},
        )


async def test_stall_fault_sends_first_token_then_nothing(make_sim: MakeSim) -> None:
    sim = await make_sim("ollama")
    body = {"model": OLLAMA_MODEL, "messages": MESSAGES}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", sim.url + "/api/chat", json=body, headers={"X-Sim-Fault": "stall"}) as resp,
    ):
        lines = resp.aiter_lines()
        first = json.loads(await asyncio.wait_for(anext(lines), 2))
        assert first["done"] is False and first["message"]["content"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(lines), 0.3)
    # A stalled answer still open when the server stops is aborted, not left hanging.
    openai_sim = await make_sim("openai")
    async with httpx.AsyncClient() as http:
        stream_body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        async with http.stream(
            "POST",
            openai_sim.url + "/v1/chat/completions",
            json=stream_body,
            headers={"X-Sim-Fault": "stall"},
        ) as resp:
            chunks = resp.aiter_bytes()
            assert b'"role":"assistant"' in await asyncio.wait_for(anext(chunks), 2)
            t0 = time.perf_counter()
            await openai_sim.stop()
            assert time.perf_counter() - t0 < 1.5
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in chunks:
                    pass


async def test_gzip_stream_is_compressed_incrementally(make_sim: MakeSim) -> None:
    sim = await make_sim("openai", token_delay=0.05)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 5}
    decoder = zlib.decompressobj(31)
    pieces: list[bytes] = []
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", sim.url + "/v1/chat/completions", json=body, headers={"X-Sim-Gzip": "1"}) as resp,
    ):
        assert resp.headers["content-encoding"] == "gzip"
        async for raw in resp.aiter_raw():
            pieces.append(decoder.decompress(raw))
    # Each wire chunk decodes on arrival to whole events (sync flush), long before the end.
    assert len(pieces) >= 5 and pieces[0].startswith(b"data: {") and pieces[0].endswith(b"\n\n")
    assert decoder.eof and b"".join(pieces).endswith(b"data: [DONE]\n\n")
    async with httpx.AsyncClient() as http:
        whole = await http.get(sim.url + "/v1/models", headers={"X-Sim-Gzip": "1"})
    assert whole.headers["content-encoding"] == "gzip" and whole.json()["data"]  # httpx decoded it


async def test_token_delay_paces_the_stream(make_sim: MakeSim) -> None:
    sim = await make_sim("openai", token_delay=0.05, first_token_delay=0.2)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 8}
    role_at: float | None = None
    token_at: list[float] = []
    async with httpx.AsyncClient() as http:
        t0 = time.perf_counter()
        async with http.stream("POST", sim.url + "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("role"):
                    role_at = time.perf_counter() - t0
                elif delta.get("content"):
                    token_at.append(time.perf_counter() - t0)
    assert role_at is not None and len(token_at) == 8
    assert token_at[0] - role_at >= 0.18  # first_token_delay sits between the role chunk and the first token
    assert token_at[-1] - token_at[0] >= 0.3  # 7 gaps of 50 ms: delivered as produced, not at the end


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, args: str) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """`serve(args)` in a child process, and the line it announced itself with."""
    root = ROOT
    code = f"from agent.sim import serve; serve({args})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        yield proc, await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    async with serving(tmp_path, "'ollama', '127.0.0.1', 0") as (proc, line):
        url = re.search(r"http://\S+", line)
        assert url is not None, line
        async with httpx.AsyncClient() as http:
            assert (await http.get(url.group(0) + "/api/version")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0


# ------------------------------------------------------------------ the seams of agent.sim


class RecordingPace:
    """A pace per model that notes every question the simulator asks it."""

    def __init__(self, first: dict[str, float]) -> None:
        self.first = first
        self.asked: list[tuple[str, str]] = []

    def first_token(self, model: str) -> float:
        self.asked.append(("first", model))
        return self.first.get(model, 0.0)

    def next_token(self, model: str) -> float:
        self.asked.append(("next", model))
        return 0.0


async def test_a_pace_object_paces_each_model_it_is_asked_about(make_sim: MakeSim) -> None:
    pace = RecordingPace({"slow": 0.2})
    sim = await make_sim("openai", models=["fast", "slow"], pace=pace, token_delay=5.0)
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 4}
    t0 = time.perf_counter()
    slow = await post_raw(sim, "/v1/chat/completions", body | {"model": "slow"})
    slow_s = time.perf_counter() - t0
    assert slow.status_code == 200 and slow_s >= 0.18  # the pace, not token_delay, rules
    assert pace.asked == [("first", "slow"), *[("next", "slow")] * 3]
    pace.asked.clear()
    whole = await post_raw(sim, "/v1/completions", {"model": "fast", "prompt": "hi", "max_tokens": 3})
    assert whole.json()["usage"]["completion_tokens"] == 3
    assert pace.asked == [("first", "fast"), ("next", "fast"), ("next", "fast")]
    pace.asked.clear()
    await post_raw(sim, "/v1/embeddings", {"input": "x"})  # no model named: the first served one
    assert pace.asked == [("first", "fast")]


@pytest.mark.parametrize(
    ("dialect", "flavor", "label", "paths"),
    [
        ("ollama", "vllm", "Ollama", {"/v1/chat/completions": "OllamaOpenAI", "/api/chat": "OllamaNative"}),
        ("ollama", "llamacpp", "Ollama", {"/v1/models": "OllamaOpenAI", "/nowhere": "OllamaNative"}),
        ("openai", "vllm", "vLLM", {"/v1/chat/completions": "Vllm", "/api/chat": "Vllm"}),
        ("openai", "llamacpp", "llama.cpp", {"/completion": "LlamaCpp", "/v1/completions": "LlamaCpp"}),
    ],
)
def test_each_dialect_and_flavor_is_one_server_object(
    dialect: str, flavor: str, label: str, paths: dict[str, str]
) -> None:
    sim = SimulatedLLM(dialect, flavor=flavor)
    assert sim.label == label
    assert {path: type(sim.api_for(path)).__name__ for path in paths} == paths
    assert all(api.runner is sim.runner for api in sim.apis)  # one model, cache and totals per server


def test_constructor_checks_are_unchanged() -> None:
    with pytest.raises(ValueError, match="dialect must be one of ollama, openai, got 'tgi'"):
        SimulatedLLM("tgi")
    with pytest.raises(ValueError, match="flavor must be one of vllm, llamacpp, got 'sglang'"):
        SimulatedLLM("openai", flavor="sglang")
    with pytest.raises(ValueError, match="must not be negative"):
        SimulatedLLM("openai", token_delay=-1)
    assert SimulatedLLM("ollama", models=["a", "b:7b"]).models == ["a:latest", "b:7b"]
    assert SimulatedLLM("openai", models=["a"]).models == ["a"]


@pytest.mark.parametrize(
    ("dialect", "flavor", "label"), [("openai", "vllm", "vLLM"), ("openai", "llamacpp", "llama.cpp")]
)
async def test_serve_announces_the_server(tmp_path: Path, dialect: str, flavor: str, label: str) -> None:
    async with serving(tmp_path, f"{dialect!r}, '127.0.0.1', 0, flavor={flavor!r}") as (proc, line):
        assert re.fullmatch(
            rf"simulated {re.escape(label)} server listening on http://127\.0\.0\.1:\d+\n", line
        )
        proc.send_signal(signal.SIGTERM)  # at once: the handler is in place before the line
        assert await asyncio.to_thread(proc.wait, 20) == 0
