"""`POST /ops/test`: the test console. It sends one real request through the proxy's own
listening port, so it is authenticated, metered and recorded like any other, and answers
what came back with the stored record.

An answer from the LLM server, error or not, is a 200 with `ok` saying how it went (the
console shows the failure); only a bad body (400) or a proxy that does not listen (503) are
errors of this endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import peewee
from aiohttp import web

from agent.records import REQUEST_ID_HEADER, Dialect, UsageRecord, new_request_id
from agent.store.database import StoreError
from agent.store.queries import get_record
from agent.store.writer import UsageStore
from agent.wire.request import parse_request
from agent.wire.response import parse_response
from agent.wire.stream import StreamMeter
from agent.wire.usage import Usage
from ops_api.errors import OpsError
from ops_api.openapi import error_responses, json_content
from ops_api.reads import query_store
from ops_api.schemas import RECORD_REF
from ops_api.view import SIDECAR

routes = web.RouteTableDef()

MAX_TOKENS_LIMIT: Final = 4096
DEFAULT_MAX_TOKENS: Final = 64
DEFAULT_TIMEOUT_S: Final = 60.0
MAX_TIMEOUT_S: Final = 600.0
RECORD_WAIT_S: Final = 5.0  # the record is submitted when the flow ends, written a moment later
_RECORD_POLL_S: Final = 0.02
_PATHS: Final = {Dialect.OPENAI: "/v1/chat/completions", Dialect.OLLAMA: "/api/chat"}
_FORWARDED: Final = ("Authorization", "X-User-Id")  # the caller's identity, as the proxy reads it


@dataclass(frozen=True, slots=True)
class TestRequest:
    model: str
    prompt: str
    stream: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS
    dialect: str = Dialect.OPENAI
    timeout_s: float = DEFAULT_TIMEOUT_S


_FIELDS: Final = ("model", "prompt", "stream", "max_tokens", "dialect", "timeout_s")
_DIALECTS: Final = [str(d) for d in Dialect]


def parse_test_request(body: Any) -> TestRequest:
    """The request body, checked; OpsError 400 naming the first thing that is wrong."""
    if not isinstance(body, dict):
        raise OpsError(400, 'the body must be a JSON object like {"model": "llama3", "prompt": "hi"}')
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise OpsError(400, f"unknown field(s) {', '.join(unknown)}", allowed=_FIELDS)
    for name in ("model", "prompt"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise OpsError(400, f"{name} is required and must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpsError(400, f"stream must be true or false, got {stream!r}")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise OpsError(
            400, f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}"
        )
    dialect = body.get("dialect", Dialect.OPENAI)
    if dialect not in _DIALECTS:
        raise OpsError(400, f"unknown dialect {dialect!r}", allowed=_DIALECTS)
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise OpsError(400, f"timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}")
    return TestRequest(body["model"], body["prompt"], stream, max_tokens, str(dialect), float(timeout))


def request_body(test: TestRequest) -> dict[str, Any]:
    """The chat request in the test's dialect."""
    messages = [{"role": "user", "content": test.prompt}]
    if test.dialect == Dialect.OLLAMA:
        return {
            "model": test.model,
            "messages": messages,
            "stream": test.stream,
            "options": {"num_predict": test.max_tokens},
        }
    body: dict[str, Any] = {
        "model": test.model,
        "messages": messages,
        "stream": test.stream,
        "max_tokens": test.max_tokens,
    }
    if test.stream:
        body["stream_options"] = {"include_usage": True}  # the console shows the counts
    return body


def _message_text(obj: Any, dialect: str) -> str:
    """The generated text of one chat response object or stream chunk."""
    if not isinstance(obj, dict):
        return ""
    if dialect == Dialect.OLLAMA:
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else ""
    text = []
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict):
            part = choice.get("delta") or choice.get("message")
            content = part.get("content") if isinstance(part, dict) else None
            if isinstance(content, str):
                text.append(content)
    return "".join(text)


def output_text(body: bytes, dialect: str, stream: bool) -> str:
    """The text a chat answer generated: from the body, or from each SSE `data:` line or
    NDJSON line of a stream."""
    if not stream:
        lines = [body]
    elif dialect == Dialect.OLLAMA:
        lines = body.splitlines()
    else:
        lines = [line[5:] for line in body.splitlines() if line.startswith(b"data:")]
    text = []
    for line in lines:
        with contextlib.suppress(ValueError):
            text.append(_message_text(json.loads(line), dialect))
    return "".join(text)


@dataclass(slots=True)
class Exchange:
    """What the console saw of its request."""

    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    usage: Usage | None = None
    error: str | None = None


async def send(url: str, test: TestRequest, headers: dict[str, str]) -> Exchange:
    """Send the test request and read the whole answer within the test's timeout."""
    payload = json.dumps(request_body(test)).encode()
    info = parse_request("POST", _PATHS[Dialect(test.dialect)], payload)
    seen = Exchange()
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    timeout = aiohttp.ClientTimeout(total=test.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as session,
            session.post(url + info.endpoint, data=payload, headers=headers) as resp,
        ):
            seen.status = resp.status
            meter = StreamMeter(info) if test.stream and resp.status < 400 else None
            async for chunk in resp.content.iter_any():
                seen.body += chunk
                if meter is not None:
                    had_content = meter.content_events
                    meter.feed(chunk)
                    if not had_content and meter.content_events:
                        seen.ttft_ms = elapsed_ms()
            seen.latency_ms = elapsed_ms()
            if meter is not None:
                meter.finish()
                seen.usage, seen.error = meter.usage, meter.error
                if seen.error is None and not meter.done:
                    seen.error = "the stream ended without its final event"
            else:
                summary = parse_response(info, bytes(seen.body))
                seen.usage, seen.error = summary.usage, summary.error
    except TimeoutError:
        seen.error = f"no complete answer within {test.timeout_s:g} s"
    except aiohttp.ClientError as e:
        seen.error = f"the proxy connection failed: {str(e) or type(e).__name__}"
    if seen.status is not None and seen.status >= 400 and seen.error is None:
        # Not a JSON error body (parse_response reads those): its text, or the status.
        seen.error = bytes(seen.body).decode("utf-8", "replace").strip()[:500] or f"HTTP {seen.status}"
    return seen


def _record_when_stored(store: UsageStore, request_id: str, wait_s: float) -> UsageRecord | None:
    """The stored record of `request_id`, polled until it is written or `wait_s` is over: the
    proxy submits it when the flow ends, which for a stream can follow the last byte the
    console read. Runs in a worker thread."""
    deadline = time.monotonic() + wait_s

    def lookup(db: peewee.Database) -> UsageRecord | None:
        return get_record(db, request_id)

    while True:
        store.flush(max(0.0, deadline - time.monotonic()))
        try:
            record = query_store(store, lookup)
        except StoreError:
            return None  # the answer still shows what came back; /ops/health says why
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(_RECORD_POLL_S)


def _proxy_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _tokens(record: UsageRecord | None, usage: Usage | None) -> dict[str, int | None]:
    """The metered counts (the record's), else what the answer reported."""
    source: Any = record if record is not None and record.total_tokens is not None else usage
    if source is None:
        return {"prompt": None, "completion": None, "total": None}
    return {
        "prompt": source.prompt_tokens,
        "completion": source.completion_tokens,
        "total": source.total_tokens,
    }


@routes.post("/ops/test")
async def test_console(request: web.Request) -> web.Response:
    """Send a test prediction through the proxy and answer what came back, with its record."""
    try:
        body = await request.json()
    except ValueError:
        raise OpsError(400, 'the body is not JSON: send {"model": ..., "prompt": ...}') from None
    test = parse_test_request(body)
    side = request.app[SIDECAR]
    if not side.proxy_listening or side.proxy_port is None:
        raise OpsError(503, "the proxy is not listening, so a test request cannot go through it")
    request_id = new_request_id()
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
    headers.update({k: request.headers[k] for k in _FORWARDED if k in request.headers})
    url = _proxy_url(side.config.listen_address[0], side.proxy_port)
    seen = await send(url, test, headers)
    record = await asyncio.to_thread(_record_when_stored, side.store, request_id, RECORD_WAIT_S)
    ok = seen.error is None and seen.status is not None and seen.status < 400
    return web.json_response(
        {
            "request_id": request_id,
            "status": seen.status,
            "ok": ok,
            "output": output_text(bytes(seen.body), test.dialect, test.stream) if ok else "",
            "latency_ms": seen.latency_ms,
            "ttft_ms": seen.ttft_ms,
            "tokens": _tokens(record, seen.usage),
            "record": None if record is None else record.to_dict(),
            "error": seen.error,
        }
    )


_TEST_BODY: Final = {
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "prompt": {"type": "string", "minLength": 1},
        "stream": {"type": "boolean", "default": False},
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TOKENS_LIMIT,
            "default": DEFAULT_MAX_TOKENS,
        },
        "dialect": {"type": "string", "enum": _DIALECTS, "default": "openai"},
        "timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TIMEOUT_S,
            "default": DEFAULT_TIMEOUT_S,
            "description": "Bound on the whole test: sending, the answer and reading it",
        },
    },
}
_COUNT: Final = {"type": ["integer", "null"]}
_MS: Final = {"type": ["number", "null"]}
_TEST_RESULT: Final = {
    "type": "object",
    "required": [
        "request_id",
        "status",
        "ok",
        "output",
        "latency_ms",
        "ttft_ms",
        "tokens",
        "record",
        "error",
    ],
    "properties": {
        "request_id": {"type": "string", "description": "The X-Request-ID the test was sent under"},
        "status": {
            "type": ["integer", "null"],
            "description": "HTTP status of the answer; null when none came",
        },
        "ok": {"type": "boolean"},
        "output": {"type": "string", "description": "The generated text (empty unless ok)"},
        "latency_ms": _MS,
        "ttft_ms": {**_MS, "description": "Time to the first generated text; null unless streamed"},
        "tokens": {
            "type": "object",
            "required": ["prompt", "completion", "total"],
            "properties": {"prompt": _COUNT, "completion": _COUNT, "total": _COUNT},
        },
        "record": {"oneOf": [RECORD_REF, {"type": "null"}]},
        "error": {"type": ["string", "null"]},
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/test": {
            "post": {
                "summary": "Send a test prediction through the proxy and trace it",
                "operationId": "testConsole",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _TEST_BODY}},
                },
                "responses": {
                    "200": json_content(_TEST_RESULT, "What came back (ok=false for an upstream error)"),
                    **error_responses(400, 401, 403, 503),
                },
            }
        }
    }
}
