"""A simulated LLM server that speaks the real servers' wire formats.

`sidemeter demo`, the test-suite and the benchmarks put this in place of Ollama, vLLM or the
llama.cpp server. The official clients (``openai``, ``ollama``) talk to it unchanged, so every
shape here follows the upstream sources rather than a summary of them:

* ``dialect="ollama"`` is the Ollama server (``ollama/ollama`` ``api/types.go``,
  ``server/routes.go``, ``middleware/openai.go``, ``openai/openai.go``): ``/api/generate`` and
  ``/api/chat`` stream NDJSON by default, the final object carries ``done_reason``, the token
  counts and the nanosecond durations (zero values are left out, as Go's ``omitempty`` does);
  ``/api/embed``, the legacy ``/api/embeddings`` (no counts), ``/api/version``, ``/api/tags``,
  ``/api/ps``, ``/api/show``, ``GET /`` and Ollama's OpenAI-compatible ``/v1/*`` routes.
* ``dialect="openai"`` with ``flavor="vllm"`` is vLLM's OpenAI server
  (``vllm/entrypoints/openai``): the first chat chunk is role-only, one chunk per token, usage
  only on an extra ``"choices": []`` chunk when ``stream_options.include_usage`` is true;
  ``/tokenize``, ``/version``, ``/health``, ``/metrics``.
* ``flavor="llamacpp"`` is llama.cpp's ``tools/server`` (``server-task.cpp``): ``/v1/completions``
  streams put ``usage`` and ``timings`` on the finish chunk itself whether or not usage was
  asked for; chat streams end with an empty-delta finish chunk (plus a usage chunk if asked)
  and ``timings`` on the last chunk; native ``/completion``, ``/tokenize``, ``/props``,
  ``/health``, ``/metrics``.
* ``/v1/responses`` (every dialect) emits the Responses API events the ``openai`` client parses:
  ``response.created`` ... ``response.completed`` with ``sequence_number`` and usage.

Tokens are deterministic and self-consistent: text is split with ``\\w+|[^\\w\\s]``; a chat
prompt adds a fixed template (BOS, 4 tokens around each message, 3 for the reply header), so
counts differ from a naive count of the text, as on real servers. A generation of N tokens is
exactly N streamed pieces (a word with a leading space each) and every reported count is what
was actually sent. N is ``max_tokens`` / ``max_completion_tokens`` / ``options.num_predict`` /
``max_output_tokens`` (finish reason ``length``), else ``default_max_tokens`` (``stop``).
The vLLM and llama.cpp flavours keep a prefix cache in 16-token blocks, reported as
``prompt_tokens_details.cached_tokens`` (vLLM), ``timings.cache_n`` (llama.cpp) and
``input_tokens_details.cached_tokens`` (Responses API).

Request headers that steer a response (for tests and demos):

``X-Sim-Fault: error-500``
    answer 500 with an error body in the route's dialect.
``X-Sim-Fault: error-429``
    answer 429 (with ``Retry-After: 1``) and an error body in the route's dialect.
``X-Sim-Fault: cut``
    stream a few tokens (at most 3), then abort the TCP connection: no finish chunk, no
    ``done``, no ``[DONE]``, no chunked terminator. A non-streaming body is cut half-way
    through its announced ``Content-Length``.
``X-Sim-Fault: stall``
    send the headers and the first token, then nothing more until the client goes away (or the
    server stops, which aborts the connection).
``X-Sim-Tokens: N``
    generate N tokens instead of the default; still capped by the request's own limit.
``X-Sim-Gzip: 1``
    gzip the response body (``Content-Encoding: gzip``); streams are compressed incrementally
    with a sync flush per chunk, so each chunk is decodable on arrival.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import secrets
import signal
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

__all__ = ["DEFAULT_MODELS", "SimulatedLLM", "count_tokens", "serve"]

DIALECTS: Final = ("ollama", "openai")
FLAVORS: Final = ("vllm", "llamacpp")
DEFAULT_MODELS: Final[dict[str, tuple[str, ...]]] = {
    # "sim-model" is served in both dialects, so one name works everywhere in tests and demos.
    "ollama": ("llama3.2:latest", "sim-model:latest", "nomic-embed-text:latest"),
    "openai": ("sim-model",),
}
OLLAMA_VERSION: Final = "0.6.8"
VLLM_VERSION: Final = "0.9.2"
LLAMACPP_BUILD: Final = "b5600-sim"
MAX_MODEL_LEN: Final = 8192
EMBEDDING_DIM: Final = 16
FAULTS: Final = ("error-500", "error-429", "cut", "stall")
_CUT_AFTER_TOKENS: Final = 3
_OLLAMA_TEMPLATE: Final = (
    "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}<|user|>{{ .Prompt }}<|end|><|assistant|>"
)
_JINJA_TEMPLATE: Final = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"
)
_MAX_BODY: Final = 64 * 1024 * 1024  # real servers take long prompts; aiohttp's default is 1 MiB

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# --------------------------------------------------------------------------- tokens

_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
_BOS, _START, _SEP, _END = 1, 2, 3, 4
_ROLE_IDS: Final = {"system": 5, "developer": 5, "user": 6, "assistant": 7, "tool": 8}
_FIRST_WORD_ID: Final = 256
_VOCAB_SIZE: Final = 32000
_WORDS: Final = (
    "the", "sky", "is", "blue", "because", "light", "scatters", "in", "air", "and", "water",
    "river", "model", "token", "stream", "server", "quiet", "bright", "small", "large", "over",
    "under", "every", "morning", "evening", "story", "answer", "question", "reason", "simple",
    "clear", "moves", "grows", "falls", "rises", "through", "with", "from", "into", "near",
    "mountain", "valley", "forest", "ocean", "cloud", "signal", "number", "pattern",
)  # fmt: skip


def tokenize(text: str) -> list[str]:
    """The simulator's tokenizer: words and single punctuation marks."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Tokens in plain text, without BOS or template tokens."""
    return len(tokenize(text))


def _piece_id(piece: str) -> int:
    return _FIRST_WORD_ID + zlib.crc32(piece.encode()) % (_VOCAB_SIZE - _FIRST_WORD_ID)


def encode(text: str) -> list[int]:
    return [_piece_id(p) for p in tokenize(text)]


def render_prompt(text: str, *, add_special: bool = True) -> list[int]:
    """Token ids of a raw completion prompt: BOS plus the text."""
    return ([_BOS] if add_special else []) + encode(text)


def render_chat(messages: Sequence[tuple[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat prompt after the (simulated) chat template: real servers count these
    template tokens too, which is why a proxy must read counts from the server."""
    ids = [_BOS]
    for role, content in messages:
        ids += [_START, _ROLE_IDS.get(role, 6), _SEP, *encode(content), _END]
    if add_generation_prompt:
        ids += [_START, _ROLE_IDS["assistant"], _SEP]
    return ids


def _generate_pieces(seed_text: str, n: int) -> list[str]:
    # Deterministic in the prompt; each piece is one word, so each is exactly one token.
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    return [" " + rng.choice(_WORDS) for _ in range(n)]


def embed_vector(text: str) -> list[float]:
    """A deterministic unit vector for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [int.from_bytes(digest[2 * i : 2 * i + 2], "big") - 32767.5 for i in range(EMBEDDING_DIM)]
    norm = sum(v * v for v in raw) ** 0.5
    return [v / norm for v in raw]


class _PrefixCache:
    """Prompt prefixes the simulated KV cache holds, in 16-token blocks like vLLM's."""

    BLOCK: Final = 16

    def __init__(self, capacity: int = 8192) -> None:
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def match_and_store(self, scope: str, ids: Sequence[int]) -> int:
        h = hashlib.blake2b(scope.encode(), digest_size=16)
        keys: list[bytes] = []
        for start in range(0, len(ids) - self.BLOCK + 1, self.BLOCK):
            h.update(struct.pack(f"<{self.BLOCK}I", *ids[start : start + self.BLOCK]))
            keys.append(h.digest())
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            hits += 1
        # The last prompt token is always recomputed, so a full hit drops the last block.
        cached = min(hits * self.BLOCK, (max(len(ids) - 1, 0) // self.BLOCK) * self.BLOCK)
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return cached


# --------------------------------------------------------------------------- helpers


class SimError(Exception):
    """An error answer; rendered in the dialect of the route it happened on."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Plan:
    """One generation: what the prompt costs and what will be sent."""

    model: str
    prompt_ids: list[int]
    pieces: list[str]
    finish_reason: str  # "stop" | "length"
    cached_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(slots=True)
class _Clock:
    """perf_counter_ns marks: request arrival, start of generation, first token, last token."""

    start: int = field(default_factory=time.perf_counter_ns)
    prefill: int = 0
    first: int = 0
    end: int = 0


def _running_usage(plan: _Plan, completion: int | None = None) -> dict[str, int]:
    """vLLM's continuous_usage_stats counts: what has been generated so far."""
    done = plan.completion_tokens if completion is None else completion
    return {
        "prompt_tokens": plan.prompt_tokens,
        "total_tokens": plan.prompt_tokens + done,
        "completion_tokens": done,
    }


def _now() -> int:
    return time.perf_counter_ns()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + _dumps(obj) + b"\n\n"


_SSE_DONE: Final = b"data: [DONE]\n\n"


def _rfc3339_nano(ns: int | None = None) -> str:
    """Go's time.RFC3339Nano in UTC: nanoseconds with trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _fault(request: web.Request) -> str:
    return request.headers.get("X-Sim-Fault", "").strip().lower()


def _wants_gzip(request: web.Request) -> bool:
    return request.headers.get("X-Sim-Gzip", "").strip().lower() in ("1", "true", "yes")


def _text_of(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "") if isinstance(part, dict) else str(part) for part in content
        )
    raise SimError(400, f"message content must be a string or a list of parts, got {type(content).__name__}")


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise SimError(400, f"{name} must be an integer, got {value!r}", param=name)
    if value < 1:
        raise SimError(400, f"{name} must be at least 1, got {int(value)}.", param=name)
    return int(value)


async def _abort(request: web.Request) -> None:
    """Drop the TCP connection mid-response, after what was written has left the process
    (transport.abort() discards the send buffer)."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(200):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)
    transport.abort()


class _Wire:
    """A streamed response body: written and flushed chunk by chunk, optionally gzip'ed."""

    def __init__(self, request: web.Request, content_type: str) -> None:
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": content_type})
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if _wants_gzip(request) else None
        if self._gzip is not None:
            self.response.headers["Content-Encoding"] = "gzip"

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, data: bytes) -> None:
        if self._gzip is not None:
            data = self._gzip.compress(data) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        await self.response.write(data)

    async def close(self) -> None:
        if self._gzip is not None:
            await self.response.write(self._gzip.flush(zlib.Z_FINISH))
        await self.response.write_eof()


# --------------------------------------------------------------------------- error shapes

_VLLM_ERROR_TYPES: Final = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
_LLAMACPP_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
_FAULT_MESSAGES: Final = {
    ("ollama", 500): "llama runner process has terminated: exit status 2",
    ("ollama", 429): "server busy, please try again.  maximum pending requests exceeded",
    ("ollama-v1", 500): "llama runner process has terminated: exit status 2",
    ("ollama-v1", 429): "server busy, please try again.  maximum pending requests exceeded",
}


def _error_payload(style: str, status: int, message: str, param: str | None) -> dict[str, Any]:
    if style == "ollama":  # gin.H{"error": err.Error()}
        return {"error": message}
    if style == "ollama-v1":  # openai.NewError in Ollama's openai package
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return {"error": {"message": message, "type": etype, "param": None, "code": None}}
    if style == "llamacpp":  # format_error_response in llama.cpp's server
        etype = _LLAMACPP_ERROR_TYPES.get(status, "server_error")
        return {"error": {"code": status, "message": message, "type": etype}}
    etype = _VLLM_ERROR_TYPES.get(status, "InternalServerError")  # vLLM's ErrorResponse
    return {"error": {"message": message, "type": etype, "param": param, "code": status}}


# --------------------------------------------------------------------------- the server


class SimulatedLLM:
    """A simulated Ollama, vLLM or llama.cpp server on a loopback (or any) port."""

    def __init__(
        self,
        dialect: str = "openai",
        *,
        flavor: str = "vllm",
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        default_max_tokens: int = 16,
        models: Sequence[str] | None = None,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
        if token_delay < 0 or first_token_delay < 0 or default_max_tokens < 0:
            raise ValueError("token_delay, first_token_delay and default_max_tokens must not be negative")
        self.dialect = dialect
        self.flavor = flavor
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.default_max_tokens = default_max_tokens
        names = list(models) if models else list(DEFAULT_MODELS[dialect])
        if dialect == "ollama":  # Ollama names always carry a tag
            names = [n if ":" in n else f"{n}:latest" for n in names]
        self.models: list[str] = names
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._cache = _PrefixCache()
        self._loaded: dict[str, float] = {}  # Ollama model -> expiry (time.time), for /api/ps
        self._prompt_total: dict[str, int] = {}
        self._generated_total: dict[str, int] = {}
        self._started_at = time.time()

    # ----------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        """A fresh aiohttp application serving this simulator's routes."""
        app = web.Application(middlewares=[self._middleware], client_max_size=_MAX_BODY)
        add_get, add_post = app.router.add_get, app.router.add_post
        if self.dialect == "ollama":
            add_get("/", self._ollama_root)
            add_get("/api/version", self._ollama_version)
            add_get("/api/tags", self._ollama_tags)
            add_get("/api/ps", self._ollama_ps)
            add_post("/api/show", self._ollama_show)
            add_post("/api/generate", self._ollama_generate)
            add_post("/api/chat", self._ollama_chat)
            add_post("/api/embed", self._ollama_embed)
            add_post("/api/embeddings", self._ollama_embeddings)
            add_get("/v1/models/{model:.+}", self._ollama_v1_model)
            style = "ollama-v1"
        else:
            style = self.flavor
            add_post("/tokenize", self._tokenize)
            add_get("/health", self._health)
            add_get("/metrics", self._metrics)
            if self.flavor == "llamacpp":
                add_post("/completion", self._llamacpp_completion)
                add_get("/props", self._llamacpp_props)
            else:
                add_get("/version", self._vllm_version)
        add_post("/v1/chat/completions", self._bind(self._oai_chat, style))
        add_post("/v1/completions", self._bind(self._oai_completions, style))
        add_post("/v1/embeddings", self._bind(self._oai_embeddings, style))
        add_post("/v1/responses", self._bind(self._oai_responses, style))
        add_get("/v1/models", self._bind(self._oai_models, style))
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) and return the base URL."""
        if self._runner is not None:
            return self.url
        self._stopping = asyncio.Event()  # bound to the loop that serves
        # handler_cancellation: a client that leaves stops its generation, as on a real server.
        runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; stalled responses are aborted, running ones get a short grace period."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ----------------------------------------------------------------- plumbing

    def _bind(self, fn: Callable[[web.Request, str], Awaitable[web.StreamResponse]], style: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await fn(request, style)

        return handler

    def _style_for(self, path: str) -> str:
        if self.dialect == "ollama":
            return "ollama-v1" if path.startswith("/v1/") else "ollama"
        return self.flavor

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        style = self._style_for(request.path)
        fault = _fault(request)
        try:
            if fault and fault not in FAULTS:
                raise SimError(400, f"unknown X-Sim-Fault {fault!r}; use one of {', '.join(FAULTS)}")
            if fault in ("error-500", "error-429"):
                await request.read()
                status = 500 if fault == "error-500" else 429
                default = "Internal server error" if status == 500 else "Too many requests"
                raise SimError(status, _FAULT_MESSAGES.get((style, status), default))
            return await handler(request)
        except SimError as exc:
            payload = _dumps(_error_payload(style, exc.status, exc.message, exc.param))
            headers = {"Retry-After": "1"} if exc.status == 429 else None
            ctype = "application/json; charset=utf-8" if style != "vllm" else "application/json"
            return await self._send_body(request, payload, ctype, status=exc.status, headers=headers)
        except web.HTTPException as exc:
            if exc.status not in (404, 405):
                raise
            return await self._route_not_found(request, style, exc.status)

    async def _route_not_found(self, request: web.Request, style: str, status: int) -> web.StreamResponse:
        # What each real server answers for a path it does not serve.
        if style.startswith("ollama"):
            return await self._send_body(request, b"404 page not found", "text/plain", status=404)
        if style == "llamacpp":
            payload = _error_payload("llamacpp", 404, "File Not Found", None)
            return await self._send_body(
                request, _dumps(payload), "application/json; charset=utf-8", status=404
            )
        detail = "Not Found" if status == 404 else "Method Not Allowed"
        return await self._send_body(request, _dumps({"detail": detail}), "application/json", status=status)

    async def _send_body(
        self,
        request: web.Request,
        body: bytes,
        content_type: str,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """A whole (non-streamed) body; `cut` and `stall` apply to successful answers."""
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if _wants_gzip(request):
            body = gzip.compress(body)
            all_headers["Content-Encoding"] = "gzip"
        fault = _fault(request)
        if status < 400 and fault in ("cut", "stall"):
            resp = web.StreamResponse(status=status, headers=all_headers)
            if fault == "cut":
                resp.content_length = len(body)
            await resp.prepare(request)
            if fault == "stall":
                await self._stall(request)
            else:
                await resp.write(body[: len(body) // 2])
                await _abort(request)
            return resp
        return web.Response(status=status, body=body, headers=all_headers)

    async def _send_json(self, request: web.Request, obj: Any, *, ollama: bool = False) -> web.StreamResponse:
        ctype = "application/json; charset=utf-8" if ollama else "application/json"
        return await self._send_body(request, _dumps(obj), ctype)

    async def _json_body(self, request: web.Request, style: str) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            raise SimError(
                400,
                "missing request body" if style.startswith("ollama") else "request body is empty",
            )
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if style == "ollama":
                raise SimError(400, f"invalid character in JSON body: {exc}") from None
            raise SimError(400, f"JSON decode error: {exc}") from None
        if not isinstance(body, dict):
            raise SimError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    async def _stall(self, request: web.Request) -> None:
        # Hold the connection, sending nothing, until the client leaves or the server stops.
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)
        await _abort(request)  # stopping: never let a stalled answer look complete

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _sim_tokens(self, request: web.Request) -> int | None:
        raw = request.headers.get("X-Sim-Tokens")
        if raw is None:
            return None
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if n < 0:
            raise SimError(400, f"X-Sim-Tokens must be a non-negative integer, got {raw!r}")
        return n

    def _plan(
        self,
        request: web.Request,
        model: str,
        prompt_ids: list[int],
        seed: str,
        limit: int | None,
        *,
        cache: bool = False,
    ) -> _Plan:
        natural = self._sim_tokens(request)
        if natural is None:
            natural = limit if limit is not None else self.default_max_tokens
        n = natural if limit is None else min(natural, limit)
        finish = "length" if limit is not None and n >= limit else "stop"
        cached = self._cache.match_and_store(model, prompt_ids) if cache else 0
        return _Plan(model, prompt_ids, _generate_pieces(seed, n), finish, cached)

    def _account(self, model: str, prompt_tokens: int, generated_tokens: int = 0) -> None:
        """Totals for /metrics."""
        self._prompt_total[model] = self._prompt_total.get(model, 0) + prompt_tokens
        self._generated_total[model] = self._generated_total.get(model, 0) + generated_tokens

    async def _generate_quietly(self, plan: _Plan, clock: _Clock) -> None:
        """Spend the time a real server would, for a non-streamed answer."""
        clock.prefill = _now()
        await self._pause(self.first_token_delay)
        clock.first = _now()
        await self._pause(self.token_delay * max(plan.completion_tokens - 1, 0))
        clock.end = _now()
        self._account(plan.model, plan.prompt_tokens, plan.completion_tokens)

    async def _stream(
        self,
        request: web.Request,
        plan: _Plan,
        clock: _Clock,
        content_type: str,
        *,
        head: Sequence[bytes],
        frame: Callable[[int, str], bytes],
        tail: Callable[[], Sequence[bytes]],
    ) -> web.StreamResponse:
        """Send `head`, one `frame` per token as it is produced, then `tail()` (which may read
        the clock). `cut` and `stall` are applied here so every stream shape gets them."""
        fault = _fault(request)
        wire = _Wire(request, content_type)
        n = plan.completion_tokens
        cut_after = min(_CUT_AFTER_TOKENS, max(n - 1, 1)) if fault == "cut" and n else 0
        try:
            await wire.open()
            for chunk in head:
                await wire.send(chunk)
            clock.prefill = _now()
            if fault == "cut" and n == 0:
                await _abort(request)
                return wire.response
            for i, piece in enumerate(plan.pieces):
                await self._pause(self.first_token_delay if i == 0 else self.token_delay)
                if i == 0:
                    clock.first = _now()
                await wire.send(frame(i, piece))
                if fault == "stall":
                    await self._stall(request)
                    return wire.response
                if fault == "cut" and i + 1 == cut_after:
                    await _abort(request)
                    return wire.response
            if n == 0:
                await self._pause(self.first_token_delay)
                clock.first = _now()
                if fault == "stall":
                    await self._stall(request)
                    return wire.response
            clock.end = _now()
            self._account(plan.model, plan.prompt_tokens, plan.completion_tokens)
            for chunk in tail():
                await wire.send(chunk)
            await wire.close()
        except ConnectionResetError:
            pass  # the client left mid-stream: nobody is listening for the rest
        return wire.response

    # ----------------------------------------------------------------- models

    def _ollama_model(self, name: Any) -> str:
        if not name or not isinstance(name, str):
            raise SimError(400, "model is required")
        for candidate in (name, f"{name}:latest"):
            if candidate in self.models:
                return candidate
        raise SimError(404, f"model {json.dumps(name, ensure_ascii=False)} not found, try pulling it first")

    def _oai_model(self, name: Any, style: str) -> str:
        """The model name to echo back; raises the server's not-found error."""
        if style == "ollama-v1":
            self._ollama_model(name)
            return str(name)
        if name is None:
            return self.models[0]  # vLLM and llama.cpp fall back to the served model
        if isinstance(name, str) and name in self.models:
            return name
        if style == "llamacpp":
            raise SimError(404, f"model '{name}' not found")
        raise SimError(404, f"The model `{name}` does not exist.", param="model")

    def _mark_loaded(self, model: str) -> None:
        self._loaded[model] = time.time() + 300  # Ollama's default keep_alive: 5m

    @staticmethod
    def _family(model: str) -> str:
        base = model.split(":")[0].split("/")[-1]
        return re.sub(r"[^a-z]+.*$", "", base.lower()) or "llama"

    def _model_details(self, model: str) -> dict[str, Any]:
        family = "bert" if "embed" in model else self._family(model)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "137M" if "embed" in model else "3.2B",
            "quantization_level": "F16" if "embed" in model else "Q4_K_M",
        }

    def _model_size(self, model: str) -> int:
        return 274_302_450 if "embed" in model else 2_019_393_189 + zlib.crc32(model.encode()) % 1000

    # ----------------------------------------------------------------- Ollama native

    async def _ollama_root(self, request: web.Request) -> web.StreamResponse:
        return await self._send_body(request, b"Ollama is running", "text/plain; charset=utf-8")

    async def _ollama_version(self, request: web.Request) -> web.StreamResponse:
        return await self._send_json(request, {"version": OLLAMA_VERSION}, ollama=True)

    async def _ollama_tags(self, request: web.Request) -> web.StreamResponse:
        modified = _rfc3339_nano(int(self._started_at * 1e9))
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": modified,
                "size": self._model_size(m),
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": self._model_details(m),
            }
            for m in self.models
        ]
        return await self._send_json(request, {"models": models}, ollama=True)

    async def _ollama_ps(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        models = [
            {
                "name": m,
                "model": m,
                "size": self._model_size(m),
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": self._model_details(m),
                "expires_at": _rfc3339_nano(int(expiry * 1e9)),
                "size_vram": self._model_size(m),
            }
            for m, expiry in self._loaded.items()
            if expiry > now
        ]
        return await self._send_json(request, {"models": models}, ollama=True)

    async def _ollama_show(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request, "ollama")
        name = body.get("model") or body.get("name")
        if not name:
            raise SimError(400, "model is required")
        try:
            model = self._ollama_model(name)
        except SimError:
            raise SimError(404, f"model '{name}' not found") from None
        embedding = "embed" in model
        template = _OLLAMA_TEMPLATE
        details = self._model_details(model)
        family = details["family"]
        show = {
            "modelfile": (
                f'# Modelfile generated by "ollama show"\nFROM {model}\nTEMPLATE """{template}"""\n'
            ),
            "parameters": 'stop                           "<|end|>"',
            "template": template,
            "details": details,
            "model_info": {
                "general.architecture": family,
                "general.parameter_count": 137_000_000 if embedding else 3_212_749_888,
                f"{family}.context_length": MAX_MODEL_LEN,
                f"{family}.embedding_length": EMBEDDING_DIM,
            },
            "capabilities": ["embedding"] if embedding else ["completion"],
            "modified_at": _rfc3339_nano(int(self._started_at * 1e9)),
        }
        return await self._send_json(request, show, ollama=True)

    @staticmethod
    def _num_predict(body: dict[str, Any]) -> int | None:
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise SimError(400, "options must be an object")
        value = options.get("num_predict")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SimError(400, 'option "num_predict" must be of type integer')
        return int(value) if value > 0 else None  # -1 (infinite) and 0 mean "no limit" in Ollama

    def _ollama_metrics(self, plan: _Plan, clock: _Clock) -> dict[str, int]:
        load = max(clock.prefill - clock.start, 1)
        prompt_eval = max(clock.first - clock.prefill, 1)
        eval_ns = max(clock.end - clock.first, 1) if plan.completion_tokens else 0
        metrics = {
            "total_duration": load + prompt_eval + eval_ns,
            "load_duration": load,
            "prompt_eval_count": plan.prompt_tokens,
            "prompt_eval_duration": prompt_eval,
            "eval_count": plan.completion_tokens,
            "eval_duration": eval_ns,
        }
        return {k: v for k, v in metrics.items() if v}  # Go's omitempty drops zeros

    async def _ollama_load_answer(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        # An empty prompt only loads (or, with keep_alive 0, unloads) the model: one JSON object.
        model = self._ollama_model(body.get("model"))
        unload = body.get("keep_alive") in (0, "0", "0s", "0m")
        if unload:
            self._loaded.pop(model, None)
        else:
            self._mark_loaded(model)
        answer: dict[str, Any] = {"model": body["model"], "created_at": _rfc3339_nano()}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
            answer |= {"done_reason": "unload" if unload else "load", "done": True}
        else:
            answer |= {"response": "", "done": True, "done_reason": "unload" if unload else "load"}
        return await self._send_json(request, answer, ollama=True)

    async def _ollama_generate(self, request: web.Request) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, "ollama")
        model = self._ollama_model(body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise SimError(400, "prompt must be a string")
        if not prompt and not body.get("images"):
            return await self._ollama_load_answer(request, body, chat=False)
        raw = bool(body.get("raw"))
        system = body.get("system") or ""
        if raw:
            prompt_ids = render_prompt(prompt)
        else:
            prompt_ids = render_chat(([("system", str(system))] if system else []) + [("user", prompt)])
            context = body.get("context")
            if isinstance(context, list) and all(isinstance(t, int) for t in context):
                prompt_ids = list(context) + prompt_ids  # the conversation so far counts again
        plan = self._plan(request, model, prompt_ids, prompt, self._num_predict(body))
        self._mark_loaded(model)
        name = body["model"]

        def final(response: str) -> dict[str, Any]:
            done: dict[str, Any] = {
                "model": name,
                "created_at": _rfc3339_nano(),
                "response": response,
                "done": True,
                "done_reason": plan.finish_reason,
            }
            if not raw:  # raw mode returns no context
                done["context"] = plan.prompt_ids + [_piece_id(p.strip()) for p in plan.pieces]
            return done | self._ollama_metrics(plan, clock)

        if body.get("stream") is False:
            await self._generate_quietly(plan, clock)
            return await self._send_json(request, final(plan.text), ollama=True)

        def frame(_: int, piece: str) -> bytes:
            return (
                _dumps({"model": name, "created_at": _rfc3339_nano(), "response": piece, "done": False})
                + b"\n"
            )

        return await self._stream(
            request, plan, clock, "application/x-ndjson",
            head=(), frame=frame, tail=lambda: [_dumps(final("")) + b"\n"],
        )  # fmt: skip

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, "ollama")
        model = self._ollama_model(body.get("model"))
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SimError(400, "messages must be a list of message objects")
        if not messages:
            return await self._ollama_load_answer(request, body, chat=True)
        turns = [(str(m.get("role") or "user").lower(), _text_of(m.get("content"))) for m in messages]
        plan = self._plan(
            request,
            model,
            render_chat(turns),
            "\n".join(c for _, c in turns),
            self._num_predict(body),
        )
        self._mark_loaded(model)
        name = body["model"]

        def final(content: str) -> dict[str, Any]:
            return {
                "model": name,
                "created_at": _rfc3339_nano(),
                "message": {"role": "assistant", "content": content},
                "done_reason": plan.finish_reason,
                "done": True,
            } | self._ollama_metrics(plan, clock)

        if body.get("stream") is False:
            await self._generate_quietly(plan, clock)
            return await self._send_json(request, final(plan.text), ollama=True)

        def frame(_: int, piece: str) -> bytes:
            message = {"role": "assistant", "content": piece}
            return (
                _dumps(
                    {
                        "model": name,
                        "created_at": _rfc3339_nano(),
                        "message": message,
                        "done": False,
                    }
                )
                + b"\n"
            )

        return await self._stream(
            request, plan, clock, "application/x-ndjson",
            head=(), frame=frame, tail=lambda: [_dumps(final("")) + b"\n"],
        )  # fmt: skip

    async def _ollama_embed(self, request: web.Request) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, "ollama")
        model = self._ollama_model(body.get("model"))
        raw_input = body.get("input")
        if raw_input is None:
            texts: list[str] = []
        elif isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
            texts = list(raw_input)
        else:
            raise SimError(400, "invalid input type")
        self._mark_loaded(model)
        prompt_tokens = sum(len(render_prompt(t)) for t in texts)
        await self._pause(self.first_token_delay)
        clock.end = _now()
        answer: dict[str, Any] = {
            "model": body["model"],
            "embeddings": [embed_vector(t) for t in texts],
        }
        total = max(clock.end - clock.start, 1)
        answer |= {"total_duration": total, "load_duration": max(total // 10, 1)}
        if prompt_tokens:
            answer["prompt_eval_count"] = prompt_tokens
        self._account(model, prompt_tokens)
        return await self._send_json(request, answer, ollama=True)

    async def _ollama_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request, "ollama")
        model = self._ollama_model(body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise SimError(400, "prompt must be a string")
        self._mark_loaded(model)
        await self._pause(self.first_token_delay)
        # The legacy endpoint reports no token counts at all: proxies must estimate them.
        return await self._send_json(
            request, {"embedding": embed_vector(prompt) if prompt else []}, ollama=True
        )

    async def _ollama_v1_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        try:
            self._ollama_model(name)
        except SimError as exc:
            raise SimError(404, f"model '{name}' not found") from exc
        return await self._send_json(request, self._oai_model_card(name, "ollama-v1"))

    # ----------------------------------------------------------------- OpenAI-compatible

    def _oai_model_card(self, model: str, style: str) -> dict[str, Any]:
        created = int(self._started_at)
        if style == "ollama-v1":
            owner = model.split("/")[0] if "/" in model else "library"
            return {"id": model, "object": "model", "created": created, "owned_by": owner}
        if style == "llamacpp":
            meta = {
                "vocab_type": 2,
                "n_vocab": _VOCAB_SIZE,
                "n_ctx_train": MAX_MODEL_LEN,
                "n_embd": EMBEDDING_DIM,
            }
            return {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "llamacpp",
                "meta": meta,
            }
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "permission": [permission],
        }

    async def _oai_models(self, request: web.Request, style: str) -> web.StreamResponse:
        return await self._send_json(
            request,
            {"object": "list", "data": [self._oai_model_card(m, style) for m in self.models]},
        )

    @staticmethod
    def _completion_id(style: str, prefix: str) -> str:
        if style == "ollama-v1":
            return f"{prefix}-{secrets.randbelow(999)}"
        if style == "llamacpp":
            return f"{prefix}-" + secrets.token_hex(16)
        return f"{prefix}-{uuid.uuid4().hex}"

    def _oai_limit(self, body: dict[str, Any], style: str, *names: str) -> int | None:
        for name in names:
            if body.get(name) is not None:
                if style == "ollama-v1":  # becomes num_predict: zero or less means "no limit"
                    value = body[name]
                    return int(value) if isinstance(value, int | float) and value > 0 else None
                return _positive_int(body[name], name)
        return None

    @staticmethod
    def _usage_flags(body: dict[str, Any], style: str, stream: bool) -> tuple[bool, bool]:
        """(include_usage, continuous_usage_stats) as each server reads stream_options."""
        options = body.get("stream_options")
        if options is None:
            return False, False
        if not isinstance(options, dict):
            raise SimError(400, "stream_options must be an object", param="stream_options")
        if style == "vllm":
            if not stream:
                if options:
                    raise SimError(
                        400,
                        "Stream options can only be defined when `stream=True`.",
                        param="stream_options",
                    )
                return False, False
            include = bool(options.get("include_usage", True))  # vLLM's StreamOptions default
            return include, include and bool(options.get("continuous_usage_stats"))
        return stream and options.get("include_usage") is True, False

    def _usage(self, plan: _Plan, style: str, completion: int | None = None) -> dict[str, Any]:
        completion = plan.completion_tokens if completion is None else completion
        total = plan.prompt_tokens + completion
        if style == "llamacpp":
            return {
                "completion_tokens": completion,
                "prompt_tokens": plan.prompt_tokens,
                "total_tokens": total,
            }
        if style == "ollama-v1":
            return {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": total,
            }
        usage: dict[str, Any] = {"prompt_tokens": plan.prompt_tokens, "total_tokens": total}
        usage["completion_tokens"] = completion
        # As if vLLM ran with --enable-prompt-tokens-details, so cached tokens can be metered.
        usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
        return usage

    @staticmethod
    def _timings(plan: _Plan, clock: _Clock) -> dict[str, Any]:
        prompt_n = plan.prompt_tokens - plan.cached_tokens
        prompt_ms = max(clock.first - clock.prefill, 1_000) / 1e6
        predicted_n = plan.completion_tokens
        predicted_ms = max(clock.end - clock.first, 1_000) / 1e6
        return {
            "cache_n": plan.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(prompt_n, 1),
            "prompt_per_second": 1e3 / prompt_ms * prompt_n,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(predicted_n, 1),
            "predicted_per_second": 1e3 / predicted_ms * predicted_n,
        }

    async def _oai_chat(self, request: web.Request, style: str) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, style)
        model = self._oai_model(body.get("model"), style)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SimError(400, "messages: Field required (a list of message objects)", param="messages")
        if not messages and style == "ollama-v1":
            raise SimError(400, "[] is too short - 'messages'")
        stream = body.get("stream") is True
        include_usage, continuous = self._usage_flags(body, style, stream)
        limit = self._oai_limit(body, style, "max_completion_tokens", "max_tokens")
        turns = [(str(m.get("role") or "user"), _text_of(m.get("content"))) for m in messages]
        plan = self._plan(
            request,
            model,
            render_chat(turns),
            "\n".join(c for _, c in turns),
            limit,
            cache=style != "ollama-v1",
        )
        cid, created = self._completion_id(style, "chatcmpl"), int(time.time())
        if style == "ollama-v1":
            base: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
            base["system_fingerprint"] = "fp_ollama"
        elif style == "llamacpp":
            base = {
                "created": created,
                "id": cid,
                "model": model,
                "system_fingerprint": LLAMACPP_BUILD,
            }
            base["object"] = "chat.completion.chunk"
        else:
            base = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }

        if not stream:
            await self._generate_quietly(plan, clock)
            return await self._send_json(request, self._chat_completion(plan, clock, style, base))

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
            if style == "llamacpp":  # nlohmann's ordered_json: choices first
                return {"choices": [choice] if choice else [], **base, **extra}
            return {**base, "choices": [choice] if choice else [], **extra}

        n = plan.completion_tokens
        head: list[bytes] = []
        if style == "vllm":
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            extra = {"usage": _running_usage(plan, 0)} if continuous else {}
            head.append(_sse(chunk(role, **extra)))
        elif style == "llamacpp":
            role = {
                "finish_reason": None,
                "index": 0,
                "delta": {"role": "assistant", "content": None},
            }
            head.append(_sse(chunk(role)))

        def frame(i: int, piece: str) -> bytes:
            if style == "ollama-v1":
                delta = {"role": "assistant", "content": piece}
                return _sse(chunk({"index": 0, "delta": delta, "finish_reason": None}))
            if style == "llamacpp":
                return _sse(chunk({"finish_reason": None, "index": 0, "delta": {"content": piece}}))
            # vLLM: the step that hits max_tokens carries the last token and the finish reason.
            last = i == n - 1 and plan.finish_reason == "length"
            choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "logprobs": None}
            choice |= {"finish_reason": "length", "stop_reason": None} if last else {"finish_reason": None}
            extra = {"usage": _running_usage(plan, i + 1)} if continuous else {}
            return _sse(chunk(choice, **extra))

        def tail() -> list[bytes]:
            out: list[bytes] = []
            reason = plan.finish_reason
            if style == "ollama-v1":
                out.append(
                    _sse(
                        chunk(
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": reason,
                            }
                        )
                    )
                )
                if include_usage:
                    out.append(_sse(chunk(None, usage=self._usage(plan, style))))
            elif style == "llamacpp":
                final = [chunk({"finish_reason": reason, "index": 0, "delta": {}})]
                if include_usage:
                    final.append(chunk(None, usage=self._usage(plan, style)))
                final[-1]["timings"] = self._timings(plan, clock)  # on the last chunk, as llama.cpp does
                out += [_sse(c) for c in final]
            else:
                if not (n and reason == "length"):  # EOS: an empty-content finish chunk
                    choice = {"index": 0, "delta": {"content": ""}, "logprobs": None}
                    extra = {"usage": _running_usage(plan)} if continuous else {}
                    out.append(_sse(chunk(choice | {"finish_reason": reason, "stop_reason": None}, **extra)))
                if include_usage:
                    out.append(_sse(chunk(None, usage=self._usage(plan, style))))
            return [*out, _SSE_DONE]

        return await self._stream(
            request,
            plan,
            clock,
            "text/event-stream; charset=utf-8",
            head=head,
            frame=frame,
            tail=tail,
        )

    def _chat_completion(
        self, plan: _Plan, clock: _Clock, style: str, base: dict[str, Any]
    ) -> dict[str, Any]:
        head = {**base, "object": "chat.completion"}
        if style == "ollama-v1":
            message = {"role": "assistant", "content": plan.text}
            choice = {"index": 0, "message": message, "finish_reason": plan.finish_reason}
            return {**head, "choices": [choice], "usage": self._usage(plan, style)}
        if style == "llamacpp":
            choice = {
                "finish_reason": plan.finish_reason,
                "index": 0,
                "message": {"role": "assistant", "content": plan.text},
            }
            return {
                "choices": [choice],
                **head,
                "usage": self._usage(plan, style),
                "timings": self._timings(plan, clock),
            }
        message = {
            "role": "assistant",
            "content": plan.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
        }
        message |= {"function_call": None, "tool_calls": [], "reasoning_content": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
        choice["stop_reason"] = None
        return {
            **head,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self._usage(plan, style),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    @staticmethod
    def _completion_prompt(body: dict[str, Any]) -> tuple[list[int], str]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return render_prompt(prompt), prompt
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            return list(prompt), " ".join(map(str, prompt))  # token ids are used as given
        raise SimError(400, "prompt: a string, or one list of token ids, is required", param="prompt")

    async def _oai_completions(self, request: web.Request, style: str) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, style)
        model = self._oai_model(body.get("model"), style)
        prompt_ids, seed = self._completion_prompt(body)
        stream = body.get("stream") is True
        include_usage, continuous = self._usage_flags(body, style, stream)
        limit = self._oai_limit(body, style, "max_tokens")
        plan = self._plan(request, model, prompt_ids, seed, limit, cache=style != "ollama-v1")
        cid, created = self._completion_id(style, "cmpl"), int(time.time())
        reason = plan.finish_reason
        n = plan.completion_tokens

        def llamacpp_final(text: str) -> dict[str, Any]:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
            return {
                "choices": [choice],
                "created": created,
                "model": model,
                "system_fingerprint": LLAMACPP_BUILD,
                "object": "text_completion",
                "usage": self._usage(plan, style),
                "id": cid,
                "timings": self._timings(plan, clock),
            }

        def ollama_chunk(
            text: str, finish: str | None, usage: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            choices = [] if usage else [{"text": text, "index": 0, "finish_reason": finish}]
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "choices": choices,
            }
            obj |= {"model": model, "system_fingerprint": "fp_ollama"}
            if usage is not None:
                obj["usage"] = usage
            elif include_usage:  # Ollama sets an all-zero usage on every chunk once usage is asked for
                obj["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            return obj

        def vllm_chunk(text: str, finish: str | None, tokens: int) -> dict[str, Any]:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
            }
            obj["choices"] = [choice]
            if continuous:
                obj["usage"] = _running_usage(plan, tokens)
            return obj

        if not stream:
            await self._generate_quietly(plan, clock)
            if style == "llamacpp":
                return await self._send_json(request, llamacpp_final(plan.text))
            if style == "ollama-v1":
                obj = ollama_chunk(plan.text, reason) | {"usage": self._usage(plan, style)}
                return await self._send_json(request, obj)
            choice = {
                "index": 0,
                "text": plan.text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
            }
            choice["prompt_logprobs"] = None
            obj = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            obj |= {
                "service_tier": None,
                "system_fingerprint": None,
                "usage": self._usage(plan, style),
            }
            return await self._send_json(request, obj | {"kv_transfer_params": None})

        def frame(i: int, piece: str) -> bytes:
            if style == "llamacpp":
                choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
                obj = {"choices": [choice], "created": created, "model": model}
                return _sse(
                    obj | {"system_fingerprint": LLAMACPP_BUILD, "object": "text_completion", "id": cid}
                )
            if style == "ollama-v1":
                return _sse(ollama_chunk(piece, None))
            last = i == n - 1 and reason == "length"
            return _sse(vllm_chunk(piece, "length" if last else None, i + 1))

        def tail() -> list[bytes]:
            if style == "llamacpp":  # usage and timings ride on the finish chunk, asked for or not
                return [_sse(llamacpp_final("")), _SSE_DONE]
            if style == "ollama-v1":
                out = [_sse(ollama_chunk("", reason))]
                if include_usage:
                    out.append(_sse(ollama_chunk("", None, usage=self._usage(plan, style))))
                return [*out, _SSE_DONE]
            out = [] if n and reason == "length" else [_sse(vllm_chunk("", reason, n))]
            if include_usage:
                usage_chunk = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                }
                out.append(_sse(usage_chunk | {"choices": [], "usage": self._usage(plan, style)}))
            return [*out, _SSE_DONE]

        return await self._stream(
            request,
            plan,
            clock,
            "text/event-stream; charset=utf-8",
            head=(),
            frame=frame,
            tail=tail,
        )

    async def _oai_embeddings(self, request: web.Request, style: str) -> web.StreamResponse:
        body = await self._json_body(request, style)
        model = self._oai_model(body.get("model"), style)
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            items: list[Any] = [raw_input]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(t, int) for t in raw_input):
            items = [raw_input]  # one prompt given as token ids
        elif isinstance(raw_input, list) and raw_input:
            items = list(raw_input)
        else:
            raise SimError(400, "input: a string or a non-empty list is required", param="input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise SimError(
                400,
                f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
            )
        prompt_tokens = 0
        data = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                prompt_tokens += len(render_prompt(item))
                vector = embed_vector(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                prompt_tokens += len(item)
                vector = embed_vector(" ".join(map(str, item)))
            else:
                raise SimError(400, "input items must be strings or lists of token ids", param="input")
            value: Any = vector
            if fmt == "base64":  # little-endian float32, which the openai client asks for by default
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"index": index, "object": "embedding", "embedding": value})
        await self._pause(self.first_token_delay)
        self._account(model, prompt_tokens)
        if style == "llamacpp":
            rows = [{"embedding": d["embedding"], "index": d["index"], "object": "embedding"} for d in data]
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
            return await self._send_json(
                request, {"model": model, "object": "list", "usage": usage, "data": rows}
            )
        if style == "ollama-v1":
            rows = [{"object": "embedding", "embedding": d["embedding"], "index": d["index"]} for d in data]
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
            return await self._send_json(
                request, {"object": "list", "data": rows, "model": model, "usage": usage}
            )
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
        }
        answer = {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
        }
        answer |= {"data": data, "usage": usage | {"prompt_tokens_details": None}}
        return await self._send_json(request, answer)

    # ----------------------------------------------------------------- Responses API

    @staticmethod
    def _responses_turns(body: dict[str, Any]) -> list[tuple[str, str]]:
        turns: list[tuple[str, str]] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            turns.append(("system", instructions))
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            return [*turns, ("user", raw_input)]
        if not isinstance(raw_input, list):
            raise SimError(400, "input: Field required (a string or a list of input items)", param="input")
        for item in raw_input:
            if not isinstance(item, dict):
                raise SimError(400, "input items must be objects", param="input")
            if "role" in item:
                turns.append((str(item["role"]), _text_of(item.get("content"))))
            elif item.get("type") == "function_call_output":
                turns.append(("tool", str(item.get("output") or "")))
            elif item.get("type") == "function_call":
                turns.append(("assistant", str(item.get("arguments") or "")))
        return turns

    async def _oai_responses(self, request: web.Request, style: str) -> web.StreamResponse:
        clock = _Clock()
        body = await self._json_body(request, style)
        model = self._oai_model(body.get("model"), style)
        turns = self._responses_turns(body)
        limit = self._oai_limit(body, style, "max_output_tokens")
        plan = self._plan(
            request,
            model,
            render_chat(turns),
            "\n".join(c for _, c in turns),
            limit,
            cache=style != "ollama-v1",
        )
        resp_id, msg_id, created = (
            f"resp_{uuid.uuid4().hex}",
            f"msg_{uuid.uuid4().hex}",
            int(time.time()),
        )

        def response(
            status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
        ) -> dict[str, Any]:
            incomplete = status == "incomplete"
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "background": False,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "metadata": body.get("metadata") or {},
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": None,
                "service_tier": "auto",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage,
                "user": None,
            }

        def usage() -> dict[str, Any]:
            return {
                "input_tokens": plan.prompt_tokens,
                "input_tokens_details": {"cached_tokens": plan.cached_tokens},
                "output_tokens": plan.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            }

        def text_part(text: str) -> dict[str, Any]:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def message(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": content,
            }

        final_status = "incomplete" if plan.finish_reason == "length" else "completed"
        if body.get("stream") is not True:
            await self._generate_quietly(plan, clock)
            output = [message("completed", [text_part(plan.text)])]
            return await self._send_json(request, response(final_status, output, usage()))

        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            payload = {"type": kind, "sequence_number": seq, **fields}
            seq += 1
            return _sse(payload, event=kind)

        where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        head = [
            event("response.created", response=response("in_progress", [], None)),
            event("response.in_progress", response=response("in_progress", [], None)),
            event("response.output_item.added", output_index=0, item=message("in_progress", [])),
            event("response.content_part.added", **where, part=text_part("")),
        ]

        def frame(_: int, piece: str) -> bytes:
            return event("response.output_text.delta", **where, delta=piece, logprobs=[])

        def tail() -> list[bytes]:
            done_item = message("completed", [text_part(plan.text)])
            return [
                event("response.output_text.done", **where, text=plan.text, logprobs=[]),
                event("response.content_part.done", **where, part=text_part(plan.text)),
                event("response.output_item.done", output_index=0, item=done_item),
                event("response.completed", response=response(final_status, [done_item], usage())),
            ]

        return await self._stream(
            request,
            plan,
            clock,
            "text/event-stream; charset=utf-8",
            head=head,
            frame=frame,
            tail=tail,
        )

    # ----------------------------------------------------------------- vLLM / llama.cpp extras

    async def _vllm_version(self, request: web.Request) -> web.StreamResponse:
        return await self._send_json(request, {"version": VLLM_VERSION})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        if self.flavor == "llamacpp":
            return await self._send_json(request, {"status": "ok"})
        return await self._send_body(request, b"", "application/json")  # vLLM: 200, empty body

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        style = self.flavor
        body = await self._json_body(request, style)
        if style == "llamacpp":
            content = body.get("content")
            if not isinstance(content, str):
                raise SimError(400, '"content" must be provided')
            return await self._send_json(
                request,
                {"tokens": render_prompt(content, add_special=body.get("add_special") is True)},
            )
        self._oai_model(body.get("model"), style)
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise SimError(400, "messages must be a list of message objects", param="messages")
            turns = [(str(m.get("role") or "user"), _text_of(m.get("content"))) for m in messages]
            ids = render_chat(
                turns, add_generation_prompt=body.get("add_generation_prompt", True) is not False
            )
        elif isinstance(body.get("prompt"), str):
            ids = render_prompt(body["prompt"], add_special=body.get("add_special_tokens", True) is not False)
        else:
            raise SimError(400, "prompt or messages is required", param="prompt")
        answer = {
            "count": len(ids),
            "max_model_len": MAX_MODEL_LEN,
            "tokens": ids,
            "token_strs": None,
        }
        return await self._send_json(request, answer)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        lines: list[str] = []
        if self.flavor == "llamacpp":
            prompt, generated = (
                sum(self._prompt_total.values()),
                sum(self._generated_total.values()),
            )
            for name, kind, value in (
                ("prompt_tokens_total", "counter", prompt),
                ("tokens_predicted_total", "counter", generated),
                ("n_decode_total", "counter", generated),
                ("requests_processing", "gauge", 0),
                ("requests_deferred", "gauge", 0),
            ):
                lines += [f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {value}"]
        else:
            for name, totals in (
                ("prompt_tokens_total", self._prompt_total),
                ("generation_tokens_total", self._generated_total),
            ):
                lines.append(f"# TYPE vllm:{name} counter")
                lines += [f'vllm:{name}{{model_name="{m}"}} {totals.get(m, 0)}.0' for m in self.models]
            lines += ["# TYPE vllm:num_requests_running gauge"]
            lines += [f'vllm:num_requests_running{{model_name="{m}"}} 0.0' for m in self.models]
        body = ("\n".join(lines) + "\n").encode()
        return await self._send_body(request, body, "text/plain; version=0.0.4; charset=utf-8")

    async def _llamacpp_props(self, request: web.Request) -> web.StreamResponse:
        model = self.models[0]
        props = {
            "default_generation_settings": {
                "id": 0,
                "n_ctx": MAX_MODEL_LEN,
                "params": {"n_predict": -1},
            },
            "total_slots": 1,
            "model_path": f"/models/{model}.gguf",
            "chat_template": _JINJA_TEMPLATE,
            "modalities": {"vision": False, "audio": False},
            "build_info": LLAMACPP_BUILD,
        }
        return await self._send_json(request, props)

    async def _llamacpp_completion(self, request: web.Request) -> web.StreamResponse:
        """llama.cpp's native /completion: `tokens_predicted` / `tokens_evaluated`, no [DONE]."""
        clock = _Clock()
        body = await self._json_body(request, "llamacpp")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise SimError(400, '"prompt" must be a string')
        model = self._oai_model(body.get("model"), "llamacpp")
        n_predict = body.get("n_predict")
        limit = (
            int(n_predict)
            if isinstance(n_predict, int | float) and not isinstance(n_predict, bool) and n_predict > 0
            else None
        )
        plan = self._plan(request, model, render_prompt(prompt), prompt, limit, cache=True)

        def final(content: str) -> dict[str, Any]:
            return {
                "index": 0,
                "content": content,
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": model,
                "tokens_predicted": plan.completion_tokens,
                "tokens_evaluated": plan.prompt_tokens,
                "generation_settings": {
                    "n_predict": limit or -1,
                    "stream": body.get("stream") is True,
                },
                "prompt": prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": "limit" if plan.finish_reason == "length" else "eos",
                "stopping_word": "",
                "tokens_cached": plan.prompt_tokens + plan.completion_tokens,
                "timings": self._timings(plan, clock),
            }

        if body.get("stream") is not True:
            await self._generate_quietly(plan, clock)
            return await self._send_json(request, final(plan.text))

        def frame(i: int, piece: str) -> bytes:
            return _sse({
                "index": 0, "content": piece, "tokens": [], "stop": False, "id_slot": -1,
                "tokens_predicted": i + 1, "tokens_evaluated": plan.prompt_tokens,
            })  # fmt: skip

        return await self._stream(
            request,
            plan,
            clock,
            "text/event-stream",
            head=(),
            frame=frame,
            tail=lambda: [_sse(final(""))],
        )


def serve(dialect: str, host: str, port: int, *, flavor: str = "vllm", token_delay: float = 0.0) -> None:
    """Run a simulated server until Ctrl-C or SIGTERM (for `sidemeter mock-upstream`)."""

    async def main() -> None:
        sim = SimulatedLLM(dialect, flavor=flavor, token_delay=token_delay)
        try:
            url = await sim.start(host, port)
        except OSError as exc:  # port in use, address not available: one line, not a traceback
            raise SystemExit(
                f"mock-upstream: cannot listen on {host}:{port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}; "
                "pick another --listen HOST:PORT"
            ) from None
        label = "Ollama" if dialect == "ollama" else ("llama.cpp" if flavor == "llamacpp" else "vLLM")
        print(f"simulated {label} server listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows has no add_signal_handler
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
