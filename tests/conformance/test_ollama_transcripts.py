"""Ollama conformance without an Ollama server: wire transcripts replayed through the sidecar.

No Ollama server can be installed here, so ``tests/fixtures/ollama/*.json`` keeps what Ollama
sends, built from its documented responses (``docs/api.md``) and the Go types and writers
that produce them (``api/types.go``, ``openai/openai.go``, ``middleware/openai.go``): field
order, ``omitempty``, escaping, chunk boundaries that ignore line and event boundaries. A
scripted upstream answers each request with its transcript, and like Ollama it answers a
request carrying ``stream_options.include_usage`` with the transcript's
``response_if_include_usage`` when it has one.

Each transcript says what the client must receive (exactly the bytes Ollama sends for the
client's own request), whether the sidecar adds ``include_usage`` on its way up, and what the
usage record must say.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from aiohttp import web

from agent.upstream import USER_AGENT as PROBER_AGENT
from tests.support.paths import FIXTURES
from tests.support.sidecar import RunningSidecar

TRANSCRIPTS = sorted((FIXTURES / "ollama").glob("*.json"))
STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "ollama" / f"{name}.json").read_text())


def asks_for_usage(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    opts = doc.get("stream_options") if isinstance(doc, dict) else None
    return isinstance(opts, dict) and opts.get("include_usage") is True


def answer_to(transcript: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The response Ollama sends for this request body."""
    alt = transcript.get("response_if_include_usage")
    return alt if alt is not None and asks_for_usage(body) else transcript["response"]


def wire(response: dict[str, Any]) -> bytes:
    return "".join(response["chunks"]).encode()


class ScriptedOllama:
    """An HTTP server that answers every request with one transcript, chunk by chunk."""

    def __init__(self, transcript: dict[str, Any]) -> None:
        self.transcript = transcript
        self.received: list[tuple[str, str, bytes]] = []
        # Set: the end of a streamed body waits for it (a server slow to close its stream).
        self.hold: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("User-Agent") == PROBER_AGENT:
            return web.Response(status=404)  # the sidecar's own upstream probes are not the traffic
        self.received.append((request.method, request.path_qs, body))
        answer = answer_to(self.transcript, body)
        headers = dict(answer["headers"])
        chunks = [c.encode() for c in answer["chunks"]]
        if not headers.get("Content-Type", "").startswith(STREAM_TYPES):
            return web.Response(status=answer["status"], body=b"".join(chunks), headers=headers)
        resp = web.StreamResponse(status=answer["status"], headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)  # one HTTP chunk each, as the transcript cuts them
        if self.hold is not None:
            await self.hold.wait()
        with contextlib.suppress(ConnectionResetError):  # the sidecar has gone: its client left
            await resp.write_eof()
        return resp


Replay = Callable[[dict[str, Any]], Awaitable[tuple[ScriptedOllama, RunningSidecar]]]


@pytest.fixture
async def replay(
    start_sidecar: Callable[..., Awaitable[RunningSidecar]],
) -> AsyncIterator[Replay]:
    started: list[ScriptedOllama] = []

    async def start(transcript: dict[str, Any]) -> tuple[ScriptedOllama, RunningSidecar]:
        upstream = ScriptedOllama(transcript)
        await upstream.start()
        started.append(upstream)
        return upstream, await start_sidecar(upstream.url)

    yield start
    for upstream in started:
        await upstream.stop()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
async def test_transcript(path: Path, replay: Replay) -> None:
    t = json.loads(path.read_text())
    upstream, side = await replay(t)
    req = t["request"]
    body = json.dumps(req["body"], separators=(",", ":")).encode()
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient() as http:
        resp = await http.request(
            req["method"],
            side.url + req["path"],
            content=body,
            headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        )
    rec = await side.record(request_id)

    # The client gets exactly what Ollama sends for its request.
    expected = answer_to(t, body)
    assert resp.status_code == expected["status"]
    assert resp.content == wire(expected)
    assert resp.headers["content-type"] == dict(expected["headers"])["Content-Type"]
    assert resp.headers["x-request-id"] == request_id

    # What went up: the client's bytes, plus include_usage where the sidecar needs it.
    assert len(upstream.received) == 1
    method, path_qs, forwarded = upstream.received[0]
    assert (method, path_qs) == (req["method"], req["path"])
    if t["sidecar_asks_for_usage"]:
        assert json.loads(forwarded) == {**req["body"], "stream_options": {"include_usage": True}}
    else:
        assert forwarded == body

    # The record.
    for key, value in t["record"].items():
        assert getattr(rec, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    assert rec.request_id == request_id and rec.endpoint == req["path"]
    assert rec.request_bytes == len(body) and rec.response_bytes == len(resp.content)
    assert rec.model == req["body"].get("model")


def test_the_corpus_covers_what_the_sidecar_must_handle() -> None:
    """Generate and chat, streamed and not, done_reason, embed, errors, the /v1 quirks."""
    ts = {p.stem: json.loads(p.read_text()) for p in TRANSCRIPTS}
    paths = {(t["request"]["path"], t["record"]["stream"]) for t in ts.values()}
    for needed in [
        ("/api/generate", True),
        ("/api/generate", False),
        ("/api/chat", True),
        ("/api/chat", False),
        ("/api/embed", False),
        ("/v1/chat/completions", True),
        ("/v1/completions", True),
    ]:
        assert needed in paths
    reasons = {
        json.loads(line)["done_reason"]
        for t in ts.values()
        if t["request"]["path"].startswith("/api/")
        for line in wire(t["response"]).decode().splitlines()
        if line.startswith("{") and '"done_reason"' in line
    }
    assert {"stop", "length", "load"} <= reasons
    assert {t["record"]["outcome"] for t in ts.values()} == {"ok", "upstream_error"}
    assert any(t["response"]["status"] == 404 for t in ts.values())


# --------------------------------------------------------------------------- official clients


async def test_ollama_client_generate_stream(replay: Replay) -> None:
    _, side = await replay(load("generate_stream"))
    request_id = uuid.uuid4().hex
    client = ollama.AsyncClient(host=side.url, headers={"X-Request-ID": request_id})
    parts = [
        p async for p in await client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=True)
    ]
    assert "".join(p.response for p in parts) == "The sky is blue <because> of Rayleigh & Mie."
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    rec = await side.record(request_id)
    assert (rec.prompt_tokens, rec.completion_tokens) == (final.prompt_eval_count, final.eval_count)
    assert rec.ttft_ms is not None and rec.usage_source == "reported"


async def test_ollama_client_chat_and_embed(replay: Replay) -> None:
    _, side = await replay(load("chat_tools"))
    request_id = uuid.uuid4().hex
    client = ollama.AsyncClient(host=side.url, headers={"X-Request-ID": request_id})
    resp = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "What is the weather today in Paris?"}]
    )
    assert resp.message.tool_calls and resp.message.tool_calls[0].function.name == "get_current_weather"
    rec = await side.record(request_id)
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.prompt_eval_count, resp.eval_count)

    _, side = await replay(load("embed"))
    request_id = uuid.uuid4().hex
    client = ollama.AsyncClient(host=side.url, headers={"X-Request-ID": request_id})
    embedded = await client.embed(model="all-minilm", input="Why is the sky blue?")
    assert len(embedded.embeddings[0]) == 10
    rec = await side.record(request_id)
    assert (rec.prompt_tokens, rec.usage_source) == (embedded.prompt_eval_count, "reported")


async def test_ollama_client_sees_the_error(replay: Replay) -> None:
    _, side = await replay(load("error_model_not_found"))
    client = ollama.AsyncClient(host=side.url)
    with pytest.raises(ollama.ResponseError) as failed:
        await client.chat(model="llama3.3", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert failed.value.status_code == 404
    assert failed.value.error == 'model "llama3.3" not found, try pulling it first'


async def test_openai_client_on_ollamas_completions_sees_no_usage(replay: Replay) -> None:
    # The quirk through the official client: had the sidecar's include_usage leaked, every
    # chunk would carry a usage the client never asked for.
    upstream, side = await replay(load("v1_completions_stream"))
    request_id = uuid.uuid4().hex
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.completions.create(
        model="llama3.2",
        prompt="Why is the sky blue?",
        max_tokens=4,
        stream=True,
        extra_headers={"X-Request-ID": request_id},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == "The sky is blue."
    assert all(c.choices and c.usage is None for c in chunks)
    assert asks_for_usage(upstream.received[0][2])  # the sidecar did ask for usage
    rec = await side.record(request_id)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.usage_source) == (26, 4, "reported")


async def test_openai_client_closing_at_done_is_not_a_cancellation(replay: Replay) -> None:
    # openai-python stops reading at "data: [DONE]" and closes the connection, before the end
    # of the chunked body. When that reaches the sidecar first (here: always, the server ends
    # its body only afterwards), the flow ends with "Client disconnected.": the record must
    # still say ok, for the client got everything. Seen as a flaky record against llama.cpp.
    upstream, side = await replay(load("v1_chat_stream"))
    upstream.hold = asyncio.Event()
    request_id = uuid.uuid4().hex
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        stream=True,
        extra_headers={"X-Request-ID": request_id},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    rec = await side.record(request_id)  # the flow ended while the server still holds its body
    upstream.hold.set()
    assert text == "The sky is blue."
    assert (rec.outcome, rec.error, rec.status) == ("ok", None, 200)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.usage_source) == (26, 4, "reported")


async def test_client_leaving_before_the_end_is_a_cancellation(replay: Replay) -> None:
    # The other side of the rule above: a stream cut before its final event is cancelled.
    t = load("generate_stream")
    t["response"]["chunks"] = t["response"]["chunks"][:2]  # the done object never comes
    upstream, side = await replay(t)
    upstream.hold = asyncio.Event()
    request_id = uuid.uuid4().hex
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            side.url + "/api/generate",
            json=t["request"]["body"],
            headers={"X-Request-ID": request_id},
        ) as resp,
    ):
        async for line in resp.aiter_lines():
            assert json.loads(line)["response"] == "The"
            break  # hang up after the first line
    rec = await side.record(request_id)
    upstream.hold.set()
    assert (rec.outcome, rec.error) == ("client_cancelled", "Client disconnected.")
    assert rec.usage_source == "estimated"
