"""The official ollama client through the sidecar in front of the simulated Ollama server."""

from __future__ import annotations

import uuid

import httpx
import ollama
import pytest

from tests.support.sidecar import RunningSidecar

MODEL = "llama3.2"


def client(base: str, request_id: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=base, headers={"X-Request-ID": request_id})


def rid() -> str:
    return uuid.uuid4().hex


async def test_chat_streams_by_default(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    parts = []
    final = None
    async for part in await client(ollama_side.url, request_id).chat(
        model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True
    ):
        parts.append(part.message.content)
        final = part
    assert final is not None and final.done
    rec = await ollama_side.record(request_id)
    assert (rec.dialect, rec.operation, rec.endpoint, rec.model) == (
        "ollama",
        "chat",
        "/api/chat",
        MODEL,
    )
    assert rec.stream and rec.outcome == "ok" and rec.usage_source == "reported"
    assert rec.prompt_tokens == final.prompt_eval_count
    assert rec.completion_tokens == final.eval_count
    assert rec.total_tokens == final.prompt_eval_count + final.eval_count
    assert rec.server_duration_ms == pytest.approx(final.total_duration / 1e6)
    assert rec.ttft_ms is not None and rec.tokens_per_second is not None


async def test_raw_chat_without_stream_field_is_a_stream(ollama_side: RunningSidecar) -> None:
    """Ollama streams when `stream` is absent; the record must say so and still count."""
    request_id = rid()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        resp = await http.post(ollama_side.url + "/api/chat", json=body, headers={"X-Request-ID": request_id})
    lines = resp.content.splitlines()
    assert len(lines) > 2 and resp.headers["content-type"].startswith("application/x-ndjson")
    rec = await ollama_side.record(request_id)
    assert rec.stream and rec.usage_source == "reported" and rec.completion_tokens == len(lines) - 1


async def test_generate_non_streaming(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    resp = await client(ollama_side.url, request_id).generate(
        model=MODEL, prompt="Name three rivers.", stream=False, options={"num_predict": 11}
    )
    assert resp.done and resp.eval_count == 11
    rec = await ollama_side.record(request_id)
    assert (rec.operation, rec.stream) == ("completion", False)
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.prompt_eval_count, resp.eval_count)
    assert rec.server_duration_ms == pytest.approx(resp.total_duration / 1e6)
    assert rec.ttft_ms is None  # nothing streamed: no first token to time


async def test_generate_streaming(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    pieces = [
        p
        async for p in await client(ollama_side.url, request_id).generate(
            model=MODEL, prompt="Count.", stream=True
        )
    ]
    rec = await ollama_side.record(request_id)
    assert rec.completion_tokens == pieces[-1].eval_count == sum(1 for p in pieces if p.response)
    assert rec.usage_source == "reported"


async def test_embed_reports_prompt_tokens(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    resp = await client(ollama_side.url, request_id).embed(model=MODEL, input=["first", "second text"])
    assert len(resp.embeddings) == 2
    rec = await ollama_side.record(request_id)
    assert rec.operation == "embedding" and rec.prompt_tokens == resp.prompt_eval_count
    assert rec.usage_source == "reported"


async def test_legacy_embeddings_have_no_counts_so_are_estimated(
    ollama_side: RunningSidecar,
) -> None:
    request_id = rid()
    resp = await client(ollama_side.url, request_id).embeddings(model=MODEL, prompt="a short text to embed")
    assert resp.embedding
    rec = await ollama_side.record(request_id)
    assert rec.endpoint == "/api/embeddings" and rec.usage_source == "estimated"
    assert rec.prompt_tokens and rec.prompt_tokens > 0


async def test_openai_compatible_routes_on_ollama(ollama_side: RunningSidecar) -> None:
    import openai

    request_id = rid()
    c = openai.AsyncOpenAI(base_url=ollama_side.url + "/v1", api_key="ollama", max_retries=0)
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Request-ID": request_id},
    )
    chunks = [ch async for ch in stream]
    assert all(ch.usage is None for ch in chunks)
    rec = await ollama_side.record(request_id)
    assert rec.dialect == "openai" and rec.usage_source == "reported" and rec.completion_tokens


async def test_list_and_version_are_other(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    tags = await client(ollama_side.url, request_id).list()
    assert tags.models
    rec = await ollama_side.record(request_id)
    assert (rec.dialect, rec.operation, rec.endpoint) == ("ollama", "other", "/api/tags")


async def test_unknown_model_error_passes_through(ollama_side: RunningSidecar) -> None:
    request_id = rid()
    with pytest.raises(ollama.ResponseError) as err:
        await client(ollama_side.url, request_id).chat(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=False
        )
    assert err.value.status_code == 404 and "not found" in err.value.error
    rec = await ollama_side.record(request_id)
    assert rec.status == 404 and rec.outcome == "upstream_error" and "not found" in (rec.error or "")
    assert rec.usage_source == "none" and rec.prompt_tokens is None
