"""Wire formats of the LLM servers Sidemeter meters: pure parsing over bytes.

Nothing here does I/O, logs, or keeps state outside the objects it returns, so every
function can be tested without a proxy and fed one byte at a time (STYLE.md).

Dialects (DESIGN.md, "Protocol facts"):
- ``ollama``: ``/api/*``; streams are NDJSON, one JSON object per ``\\n``-terminated line,
  the last one with ``"done": true`` and the counts (``prompt_eval_count``, ``eval_count``,
  durations in ns). Ollama's Go structs mark every count ``omitempty``: absent means 0.
- ``openai``: ``/v1/*`` (vLLM, llama.cpp server, Ollama's /v1, SGLang, TGI); streams are
  SSE (``data: {json}`` events separated by a blank line, then ``data: [DONE]``), the
  Responses API streams typed events (``event: <type>`` + ``data: {"type": ...}``) that end
  with ``response.completed`` / ``response.incomplete`` / ``response.failed`` and no [DONE].
  llama.cpp's server also answers the same routes without the ``/v1`` prefix, and its native
  ``/completion`` (and ``/infill``): a JSON body with ``tokens_evaluated`` (prompt) and
  ``tokens_predicted`` (output), or an SSE stream of such objects whose last one has
  ``"stop": true`` and the counts, with no [DONE]. Its error bodies are OpenAI-shaped, so these
  count as the ``openai`` dialect.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

try:  # ~4x faster than json.loads on stream events; every proxied event is decoded once
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is a correct fallback
    from json import loads as _loads

__all__ = [
    "RequestInfo",
    "ResponseSummary",
    "StreamMeter",
    "Usage",
    "add_include_usage",
    "classify",
    "error_body",
    "estimate_usage",
    "make_decoder",
    "parse_request",
    "parse_response",
    "should_inject_usage",
]

_OLLAMA_OPS: Final = {
    "/api/generate": "completion",
    "/api/chat": "chat",
    "/api/embed": "embedding",
    "/api/embeddings": "embedding",
}
_OPENAI_OPS: Final = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/v1/responses": "responses",
    # llama.cpp's server serves the OpenAI routes without the prefix too: left unmetered they
    # would be a way around the meter.
    "/chat/completions": "chat",
    "/completions": "completion",
    "/embeddings": "embedding",
    "/responses": "responses",
    # llama.cpp's native completion API (see _LLAMACPP_NATIVE).
    "/completion": "completion",
    "/infill": "completion",
}
# llama.cpp's own (non-OpenAI) completion endpoints: counts in tokens_evaluated /
# tokens_predicted, streams end with a "stop": true object; no stream_options.
_LLAMACPP_NATIVE: Final = frozenset({"/completion", "/infill"})
# Members llama.cpp appends to the last chunk of a chat stream (server-task.cpp,
# to_json_oaicompat_chat_stream: deltas.back()). With include_usage that last chunk is the
# usage-only chunk; without it, the finish chunk.
_LAST_CHUNK_MEMBERS: Final = (b"timings", b"__tool_call_incomplete")
# Text content parts: chat "text", Responses "input_text" (and "output_text" in history).
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
# Ollama endpoints that stream NDJSON progress unless "stream": false (api.md).
_OLLAMA_STREAMING_OTHER: Final = frozenset({"/api/pull", "/api/push", "/api/create"})

# Responses API events whose "delta" is generated output (text, reasoning, refusal, tool
# arguments): each one is a content event for TTFT and the estimate.
_RESPONSES_CONTENT_EVENTS: Final = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
    }
)
_RESPONSES_TERMINAL_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)

# A line (SSE/NDJSON) longer than this is not a plausible event: stop buffering it so a
# misbehaving upstream cannot grow the sidecar's memory without bound.
_MAX_PENDING: Final = 8 * 1024 * 1024

_JSON_ERRORS: Final = (ValueError, RecursionError)  # JSONDecodeError, UnicodeDecodeError


# --------------------------------------------------------------------------- requests


def classify(method: str, path: str) -> tuple[str, str]:
    """(dialect, operation) of a request; ``path`` may carry a ``?query``."""
    endpoint = path.split("?", 1)[0]
    if endpoint.startswith("/api/") or endpoint == "/api":
        ops, dialect = _OLLAMA_OPS, "ollama"
    else:
        ops, dialect = _OPENAI_OPS, "openai"
    if method.upper() != "POST":
        return dialect, "other"
    return dialect, ops.get(endpoint, "other")


@dataclass(slots=True)
class RequestInfo:
    """What the request says about the exchange, as far as metering needs it."""

    dialect: str
    operation: str
    endpoint: str
    model: str | None = None
    stream: bool = False
    wants_usage: bool = False
    prompt_text: str = ""
    error: str | None = None


def parse_request(method: str, path: str, body: bytes) -> RequestInfo:
    """Classify and read a request body. Never raises; a body that is not a JSON object
    sets ``error`` and leaves the path-based classification in place."""
    dialect, operation = classify(method, path)
    info = RequestInfo(dialect, operation, path.split("?", 1)[0])
    if not body or not body.strip():
        return info
    try:
        doc = _loads(body)
    except UnicodeDecodeError:
        info.error = "request body is not UTF-8 text"
        return info
    except json.JSONDecodeError as e:
        info.error = f"request body is not valid JSON: {e.msg} (line {e.lineno} column {e.colno})"
        return info
    except RecursionError:
        info.error = "request body is not valid JSON: nested too deeply"
        return info
    if not isinstance(doc, dict):
        info.error = f"request body is a JSON {_json_type(doc)}, expected an object"
        return info

    model = doc.get("model")
    info.model = model if isinstance(model, str) and model else None
    stream = doc.get("stream")
    if dialect == "ollama":
        # Go's *bool: absent or null means the endpoint's default, which is to stream.
        default = operation in ("completion", "chat") or info.endpoint in _OLLAMA_STREAMING_OTHER
        info.stream = stream if isinstance(stream, bool) else default
    else:
        info.stream = stream is True and operation != "embedding"
        opts = doc.get("stream_options")
        info.wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    info.prompt_text = _prompt_text(dialect, operation, doc)
    return info


def add_include_usage(body: bytes) -> bytes:
    """The same request with ``stream_options.include_usage = true``.

    Other ``stream_options`` keys are kept. When the key is absent it is spliced in after
    the opening brace, so the client's bytes are otherwise forwarded untouched. A body that
    is not a streaming JSON object comes back unchanged: vLLM rejects ``stream_options``
    unless ``"stream": true`` ("Stream options can only be defined when `stream=True`").
    """
    try:
        doc = _loads(body)
    except _JSON_ERRORS:
        return body
    if not isinstance(doc, dict) or doc.get("stream") is not True:
        return body
    opts = doc.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return body
    if "stream_options" not in doc:
        brace = body.find(b"{")
        if brace >= 0 and not body[:brace].strip():
            return body[: brace + 1] + b'"stream_options":{"include_usage":true},' + body[brace + 1 :]
    doc["stream_options"] = (
        {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
    )
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def should_inject_usage(info: RequestInfo) -> bool:
    """Whether the sidecar must ask for usage on the client's behalf: an OpenAI chat or
    completions stream whose client did not set ``include_usage``. llama.cpp's native
    ``/completion`` reports its counts unasked and knows no ``stream_options``."""
    return (
        info.dialect == "openai"
        and info.stream
        and info.operation in ("chat", "completion")
        and not info.wants_usage
        and info.error is None
        and info.endpoint not in _LLAMACPP_NATIVE
    )


def _json_type(v: Any) -> str:
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    return "number"


def _prompt_text(dialect: str, operation: str, doc: dict[str, Any]) -> str:
    parts: list[str] = []
    if operation == "chat":
        messages = doc.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, dict):
                    _content_text(m.get("content"), parts)
    elif operation == "completion":
        if dialect == "ollama":
            for key in ("system", "prompt", "suffix"):
                _strings(doc.get(key), parts)
        else:
            _strings(doc.get("prompt"), parts)
    elif operation == "embedding":
        # /api/embed and /v1/embeddings take "input"; legacy /api/embeddings takes "prompt".
        _strings(doc.get("input"), parts)
        if dialect == "ollama":
            _strings(doc.get("prompt"), parts)
    elif operation == "responses":
        _strings(doc.get("instructions"), parts)
        items = doc.get("input")
        if isinstance(items, str):
            parts.append(items)
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, str):
                    parts.append(item)
                elif isinstance(item, dict):
                    _content_text(item.get("content"), parts)
                    _strings(item.get("output"), parts)  # function_call_output
    return "\n".join(p for p in parts if p)


def _strings(v: Any, out: list[str]) -> None:
    """A str or a list of str (token-id lists are not text and are skipped)."""
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, list):
        out.extend(s for s in v if isinstance(s, str))


def _content_text(content: Any, out: list[str]) -> None:
    """Message content: a str, or a list of parts of which the text ones count
    (chat ``text``, Responses ``input_text`` / ``output_text``)."""
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)


# --------------------------------------------------------------------------- usage


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    server_duration_ms: float | None = None


def _int(v: Any) -> int | None:
    if type(v) is int:  # not bool
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _detail(u: dict[str, Any], keys: tuple[str, str], field: str) -> int | None:
    for key in keys:
        d = u.get(key)
        if isinstance(d, dict):
            n = _int(d.get(field))
            if n is not None:
                return n
    return None


def _openai_usage(u: dict[str, Any], embedding: bool) -> Usage:
    """Chat/completions (``prompt_tokens``...) and Responses (``input_tokens``...) shapes."""
    prompt = _int(u.get("prompt_tokens"))
    if prompt is None:
        prompt = _int(u.get("input_tokens"))
    completion = _int(u.get("completion_tokens"))
    if completion is None:
        completion = _int(u.get("output_tokens"))
    if completion is None and embedding:
        completion = 0  # embeddings report prompt and total only
    total = _int(u.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=_detail(u, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens"),
        reasoning_tokens=_detail(
            u, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens"
        ),
    )


def _ollama_usage(d: dict[str, Any]) -> Usage:
    """Counts of a done object; Ollama omits zero counts (Go ``omitempty``)."""
    prompt = _int(d.get("prompt_eval_count")) or 0
    completion = _int(d.get("eval_count")) or 0
    total_ns = _num(d.get("total_duration"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        server_duration_ms=total_ns / 1e6 if total_ns is not None else None,
    )


def _llamacpp_usage(d: dict[str, Any]) -> Usage | None:
    """Counts of a llama.cpp native ``/completion`` result: ``tokens_evaluated`` is the whole
    prompt (cached part included, as ``prompt_tokens`` on its /v1 routes), ``tokens_predicted``
    the output; ``timings.cache_n`` the prompt tokens served from the cache."""
    prompt = _int(d.get("tokens_evaluated"))
    completion = _int(d.get("tokens_predicted"))
    if prompt is None and completion is None:
        return None
    timings = d.get("timings")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=(prompt or 0) + (completion or 0),
        cached_tokens=_int(timings.get("cache_n")) if isinstance(timings, dict) else None,
        server_duration_ms=_timings_ms(timings),
    )


def _add_usage(a: Usage | None, b: Usage) -> Usage:
    """Counts of two results of one request (llama.cpp answers a list of prompts with one
    result each); their server times overlap, so the longer one stands for both."""
    if a is None:
        return b

    def plus(x: int | None, y: int | None) -> int | None:
        return None if x is None and y is None else (x or 0) + (y or 0)

    ms = [m for m in (a.server_duration_ms, b.server_duration_ms) if m is not None]
    return Usage(
        prompt_tokens=plus(a.prompt_tokens, b.prompt_tokens),
        completion_tokens=plus(a.completion_tokens, b.completion_tokens),
        total_tokens=plus(a.total_tokens, b.total_tokens),
        cached_tokens=plus(a.cached_tokens, b.cached_tokens),
        reasoning_tokens=plus(a.reasoning_tokens, b.reasoning_tokens),
        server_duration_ms=max(ms) if ms else None,
    )


def _timings_ms(t: Any) -> float | None:
    """llama.cpp's ``timings``: prompt processing plus generation, in ms."""
    if not isinstance(t, dict):
        return None
    p, g = _num(t.get("prompt_ms")), _num(t.get("predicted_ms"))
    if p is None and g is None:
        return None
    return (p or 0.0) + (g or 0.0)


def _error_message(err: Any) -> str:
    """``"str"`` (Ollama), ``{"message": ...}`` (OpenAI); anything else as compact JSON."""
    if isinstance(err, str):
        return err
    if isinstance(err, dict):
        msg = err.get("message")
        if isinstance(msg, str) and msg:
            return msg
    try:
        return json.dumps(err, ensure_ascii=False, separators=(",", ":"))[:500]
    except (TypeError, ValueError):
        return str(err)[:500]


def estimate_usage(info: RequestInfo, output_chars: int, content_events: int) -> Usage:
    """Rough counts when the server reports none: ~4 characters a token for the prompt;
    for the output one token per streamed content event (servers send about one token an
    event), else ~4 characters a token."""
    prompt = max(1, math.ceil(len(info.prompt_text) / 4)) if info.prompt_text else None
    if info.operation == "embedding":
        completion = 0
    elif content_events > 0:
        completion = content_events
    else:
        completion = math.ceil(output_chars / 4)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=(prompt or 0) + completion,
    )


# --------------------------------------------------------------------------- non-streamed


@dataclass(slots=True)
class ResponseSummary:
    usage: Usage | None = None
    output_chars: int = 0
    error: str | None = None
    model: str | None = None


def parse_response(info: RequestInfo, body: bytes) -> ResponseSummary:
    """Usage, output size, error and model of a non-streamed JSON body. Never raises."""
    summary = ResponseSummary()
    if not body:
        return summary
    try:
        doc = _loads(body)
    except _JSON_ERRORS:
        return summary
    if isinstance(doc, list) and info.endpoint in _LLAMACPP_NATIVE:
        # llama.cpp's /completion answers a list of prompts with a list of results.
        for item in doc:
            if isinstance(item, dict):
                part = ResponseSummary()
                _summarize_llamacpp(item, part)
                summary.model = summary.model or part.model
                summary.output_chars += part.output_chars
                if part.usage is not None:
                    summary.usage = _add_usage(summary.usage, part.usage)
        return summary
    if not isinstance(doc, dict):
        return summary
    model = doc.get("model")
    summary.model = model if isinstance(model, str) and model else None

    err = doc.get("error")
    if err:  # Responses objects carry "error": null on success
        summary.error = _error_message(err)
    elif doc.get("object") == "error":  # older vLLM: {"object": "error", "message": ...}
        summary.error = _error_message(doc)

    if info.dialect == "ollama":
        _summarize_ollama(info, doc, summary)
    elif info.endpoint in _LLAMACPP_NATIVE:
        _summarize_llamacpp(doc, summary)
    else:
        _summarize_openai(info, doc, summary)
    return summary


def _summarize_ollama(info: RequestInfo, doc: dict[str, Any], s: ResponseSummary) -> None:
    if info.operation == "embedding":
        # /api/embed reports prompt_eval_count; legacy /api/embeddings and old servers
        # report nothing, so only a present count is usage.
        n = _int(doc.get("prompt_eval_count"))
        if n is not None:
            ms = _num(doc.get("total_duration"))
            s.usage = Usage(n, 0, n, server_duration_ms=ms / 1e6 if ms is not None else None)
        return
    chars = _ollama_output_chars(doc)
    s.output_chars = chars
    if doc.get("done") is True or "eval_count" in doc or "prompt_eval_count" in doc:
        s.usage = _ollama_usage(doc)


def _summarize_llamacpp(doc: dict[str, Any], s: ResponseSummary) -> None:
    model = doc.get("model")
    if isinstance(model, str) and model:
        s.model = model
    s.output_chars = _str_len(doc.get("content"))
    s.usage = _llamacpp_usage(doc)


def _summarize_openai(info: RequestInfo, doc: dict[str, Any], s: ResponseSummary) -> None:
    u = doc.get("usage")
    if isinstance(u, dict):
        s.usage = _openai_usage(u, info.operation == "embedding")
        ms = _timings_ms(doc.get("timings"))
        if ms is not None:
            s.usage.server_duration_ms = ms
    if info.operation == "responses" or doc.get("object") == "response":
        output = doc.get("output")
        if isinstance(output, list):
            s.output_chars = sum(_responses_item_chars(i) for i in output if isinstance(i, dict))
        return
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return
    chars = 0
    for c in choices:
        if not isinstance(c, dict):
            continue
        text = c.get("text")
        if isinstance(text, str):
            chars += len(text)
        msg = c.get("message")
        if isinstance(msg, dict):
            chars += _openai_delta_chars(msg)
    s.output_chars = chars


def _responses_item_chars(item: dict[str, Any]) -> int:
    chars = 0
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list):
            for p in parts:
                if isinstance(p, dict):
                    text = p.get("text")
                    if isinstance(text, str):
                        chars += len(text)
    args = item.get("arguments")
    if isinstance(args, str):
        chars += len(args)
    return chars


# --------------------------------------------------------------------------- streamed


def _str_len(v: Any) -> int:
    return len(v) if isinstance(v, str) else 0


def _openai_delta_chars(d: dict[str, Any]) -> int:
    """Generated characters of a chat ``delta`` / ``message``: content, reasoning (vLLM
    ``reasoning_content``, newer ``reasoning``), refusal and tool-call arguments."""
    n = (
        _str_len(d.get("content"))
        + _str_len(d.get("reasoning_content"))
        + _str_len(d.get("reasoning"))
        + _str_len(d.get("refusal"))
    )
    calls = d.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                fn = call.get("function")
                if isinstance(fn, dict):
                    n += _str_len(fn.get("name")) + _str_len(fn.get("arguments"))
    return n


def _ollama_output_chars(d: dict[str, Any]) -> int:
    """Generated characters of one Ollama object: generate ``response``/``thinking`` or
    chat ``message.content``/``message.thinking``/``message.tool_calls``."""
    n = _str_len(d.get("response")) + _str_len(d.get("thinking"))
    msg = d.get("message")
    if isinstance(msg, dict):
        n += _str_len(msg.get("content")) + _str_len(msg.get("thinking"))
        calls = msg.get("tool_calls")
        if isinstance(calls, list) and calls:
            # Ollama sends whole tool calls (arguments as an object), rarely: size them as JSON.
            try:
                n += len(json.dumps(calls, ensure_ascii=False, separators=(",", ":")))
            except (TypeError, ValueError):
                n += 1
    return n


class StreamMeter:
    """Incremental parser of one streamed response body.

    ``feed`` every upstream chunk (already decoded, see ``make_decoder``) and ``finish`` at
    the end of the body. Chunk boundaries need not align with lines or events: the meter
    keeps the unterminated tail in a buffer and scans each byte once.

    With ``strip_usage_chunk`` (OpenAI chat/completions streams whose usage the sidecar
    asked for on the client's behalf) ``feed`` returns only complete SSE events, undoing
    what the added ``include_usage`` changed, so the client gets what the server sends a
    request without it:

    - the usage-only event (``"choices": []`` with a ``usage`` object) is dropped;
    - members llama.cpp appends to the last chunk of a chat stream (``timings``) ride on that
      usage-only chunk when usage was asked for, and on the finish chunk otherwise: they are
      moved back onto the finish chunk, which is held until the next event shows whether
      anything has to move (it follows at once);
    - the all-zero ``usage`` Ollama's ``/v1/completions`` puts on every chunk when usage was
      asked for is cut out of those chunks.

    Otherwise ``feed`` returns the chunk object itself and parses on the side.

    Read after (or during) the stream: ``content_events`` (events carrying generated text,
    reasoning or tool-call arguments: the first one is the TTFT mark), ``output_chars``,
    ``usage`` (None until the server reports it), ``done`` (terminal marker seen),
    ``error``, ``finish_reason`` and ``model``.
    """

    __slots__ = (
        "_buf",
        "_ev_cut",
        "_ev_finish",
        "_ev_keep",
        "_ev_name",
        "_ev_start",
        "_ev_strip",
        "_finished",
        "_held",
        "_kind",
        "_pending_ms",
        "_pos",
        "_search",
        "_strip",
        "content_events",
        "done",
        "error",
        "finish_reason",
        "model",
        "output_chars",
        "usage",
    )

    def __init__(self, info: RequestInfo, strip_usage_chunk: bool = False) -> None:
        if info.dialect == "ollama":
            self._kind = "ndjson"
        elif info.operation == "responses":
            self._kind = "responses"
        elif info.endpoint in _LLAMACPP_NATIVE:
            self._kind = "llamacpp"
        else:
            self._kind = "sse"
        # Only chat/completions streams can carry the usage-only chunk that include_usage adds.
        self._strip = strip_usage_chunk and self._kind == "sse"
        self._buf = bytearray()
        self._pos = 0  # start of the next unparsed line in _buf
        self._search = 0  # where to resume looking for "\n" (never re-scan a partial line)
        self._ev_start = 0  # strip mode: start of the current, not yet forwarded event
        self._ev_strip = False  # current event holds a usage-only chunk
        self._ev_keep = False  # current event holds anything else
        self._ev_cut = False  # strip mode: current event carries a placeholder usage to cut
        self._ev_finish = False  # strip mode: current event is a finish chunk to hold
        self._held: bytes | None = None  # strip mode: a finish event held back (see class doc)
        self._ev_name = b""  # SSE "event:" field of the current event
        self._pending_ms: float | None = None  # llama.cpp timings seen before any usage
        self._finished = False
        self.content_events = 0
        self.output_chars = 0
        self.usage: Usage | None = None
        self.done = False
        self.error: str | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None

    # -- public

    def feed(self, chunk: bytes) -> bytes:
        if self._finished or not chunk:
            return chunk  # nothing to hold back any more: forward as is
        self._buf += chunk
        if not self._strip:
            self._scan()
            self._compact()
            return chunk
        out = self._scan()
        if len(self._buf) - self._ev_start > _MAX_PENDING:
            # An "event" this large is not SSE: stop holding bytes back, forward everything.
            if self._held is not None:
                out.append(self._held)
                self._held = None
            out.append(bytes(self._buf[self._ev_start :]))
            self._strip = False
            self._compact()
        return b"".join(out)

    def finish(self) -> bytes:
        """Parse an unterminated last line; return what strip mode still holds, as is."""
        if self._finished:
            return b""
        self._finished = True
        buf = self._buf
        if self._pos < len(buf):
            end = len(buf)
            if buf[end - 1] == 13:  # "\r"
                end -= 1
            self._line(self._pos, end)
        held = b""
        if self._strip:
            held = bytes(buf[self._ev_start :])
            if self._held is not None:
                held = self._held + held
                self._held = None
        buf.clear()
        self._pos = self._search = self._ev_start = 0
        return held

    # -- scanning

    def _scan(self) -> list[bytes]:
        """Handle every complete line in the buffer; in strip mode return the bytes of the
        complete events to forward (the buffer then starts at the current event)."""
        buf = self._buf
        pos = self._pos
        strip = self._strip
        out: list[bytes] = []
        run = self._ev_start  # strip mode: start of the run of bytes to forward
        find = buf.find
        while True:
            nl = find(b"\n", self._search)
            if nl < 0:
                self._search = len(buf)
                break
            end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            if end == pos:
                if strip:  # blank line: the event ends here
                    if self._ev_strip or self._ev_cut or self._ev_finish or self._held is not None:
                        run = self._end_event(out, run, nl + 1)
                    self._ev_strip = self._ev_keep = self._ev_cut = self._ev_finish = False
                    self._ev_start = nl + 1
                self._ev_name = b""
            else:
                self._line(pos, end)
            pos = self._search = nl + 1
        self._pos = pos
        if strip:
            if run < self._ev_start:
                out.append(bytes(buf[run : self._ev_start]))
            # Keep only the current, incomplete event.
            del buf[: self._ev_start]
            self._pos -= self._ev_start
            self._search -= self._ev_start
            self._ev_start = 0
        return out

    def _end_event(self, out: list[bytes], run: int, stop: int) -> int:
        """Strip mode: the event ``buf[_ev_start:stop]`` is complete and needs more than
        forwarding as is. Appends what goes out before it to ``out``; returns the new start of
        the run of bytes to forward. While an event is held, ``run`` is the current event's
        start: nothing after the held event went out before it."""
        buf = self._buf
        start = self._ev_start
        held = self._held
        if self._ev_strip and not self._ev_keep:  # the usage-only event: drop it
            if held is not None:
                out.append(_move_last_chunk_members(held, bytes(buf[start:stop])))
                self._held = None
            elif run < start:
                out.append(bytes(buf[run:start]))
            return stop
        if held is not None:
            if not (self._ev_keep or self._ev_cut or self._ev_finish):
                self._held = held + bytes(buf[start:stop])  # a comment or blank: keep order
                return stop
            out.append(held)
            self._held = None
        elif run < start:
            out.append(bytes(buf[run:start]))
        event = _cut_placeholder_usage(bytes(buf[start:stop])) if self._ev_cut else None
        if self._ev_finish:
            self._held = event if event is not None else bytes(buf[start:stop])
            return stop
        if event is not None:
            out.append(event)
            return stop
        return start

    def _compact(self) -> None:
        """Non-strip mode: drop parsed lines; bound an endless unterminated line."""
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._search -= self._pos
            self._pos = 0
        if len(buf) > _MAX_PENDING:
            buf.clear()
            self._search = 0

    def _line(self, start: int, end: int) -> None:
        """One non-blank line ``buf[start:end]`` (without its line terminator)."""
        buf = self._buf
        if self._kind == "ndjson":
            self._on_json(buf[start:end], b"")
            return
        if buf.startswith(b"data:", start, end):
            start += 6 if end > start + 5 and buf[start + 5] == 32 else 5
            if buf.startswith(b"[DONE]", start, end):
                self.done = True
                self._ev_keep = True
                return
            self._on_json(buf[start:end], self._ev_name)
        elif buf.startswith(b"event:", start, end):
            self._ev_name = bytes(buf[start + 6 : end]).strip()
        elif buf.startswith(b"error:", start, end):
            # Older llama.cpp servers sent stream errors as an "error:" field.
            self._on_json(buf[start + 6 : end], b"error")
        elif buf[start] == 123:  # "{"
            # No SSE field starts with "{": a plain JSON body (typically an error answered to
            # a streaming request) reaching the meter. Read it rather than miss the error.
            self._on_json(buf[start:end], b"")
        # Other fields (id:, retry:) and ":" comments carry nothing to meter; only data
        # lines decide whether strip mode drops an event.

    def _on_json(self, payload: bytearray, ev_name: bytes) -> None:
        try:
            obj = _loads(payload)
        except _JSON_ERRORS:
            self._ev_keep = True  # forwarded untouched, counted as nothing
            return
        if not isinstance(obj, dict):
            self._ev_keep = True
            return
        kind = self._kind
        if kind == "sse":
            self._on_chunk(obj, ev_name)
        elif kind == "responses":
            self._on_responses_event(obj, ev_name)
        elif kind == "llamacpp":
            self._on_llamacpp(obj, ev_name)
        else:
            self._on_ollama(obj)

    # -- per-dialect payloads

    def _on_chunk(self, obj: dict[str, Any], ev_name: bytes) -> None:
        """An OpenAI chat/completions chunk."""
        err = obj.get("error")
        if err or ev_name == b"error" or obj.get("object") == "error":  # last: older vLLM
            self.error = _error_message(err or obj)
            self._ev_keep = True
            return
        model = obj.get("model")
        if isinstance(model, str) and model:
            self.model = model
        choices = obj.get("choices")
        has_choices = isinstance(choices, list) and len(choices) > 0
        usage = obj.get("usage")  # OpenAI sends "usage": null on the other chunks
        if isinstance(usage, dict) and isinstance(choices, list) and not choices:
            self._ev_strip = True
        else:
            self._ev_keep = True
        if isinstance(usage, dict):
            if has_choices and _placeholder_usage(usage):
                # Ollama's /v1/completions with include_usage: zeros on every chunk, the
                # counts come on the usage-only chunk. Not usage, and not the client's.
                usage = None
                self._ev_cut = self._strip
            else:
                self.usage = _openai_usage(usage, embedding=False)
                if self._pending_ms is not None:
                    self.usage.server_duration_ms = self._pending_ms
        timings = obj.get("timings")
        ms = _timings_ms(timings)
        if ms is not None:
            self._pending_ms = ms
            if self.usage is not None:
                self.usage.server_duration_ms = ms
        if not has_choices:
            return
        chars = 0
        finished = False
        for c in choices:
            if not isinstance(c, dict):
                continue
            delta = c.get("delta")
            if isinstance(delta, dict):
                chars += _openai_delta_chars(delta)
            else:
                msg = c.get("message")  # a non-streamed body fed to the meter
                if isinstance(msg, dict):
                    chars += _openai_delta_chars(msg)
            text = c.get("text")
            if isinstance(text, str):
                chars += len(text)
            reason = c.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
                finished = True
        if chars:
            self.content_events += 1
            self.output_chars += chars
        if finished and self._strip and timings is None and not isinstance(usage, dict):
            self._ev_finish = True

    def _on_llamacpp(self, obj: dict[str, Any], ev_name: bytes) -> None:
        """A llama.cpp native ``/completion`` stream object: ``content`` pieces, then a
        ``"stop": true`` object with the counts (one per prompt when given several)."""
        err = obj.get("error")
        if err or ev_name == b"error":
            self.error = _error_message(err or obj)
            return
        content = obj.get("content")
        if isinstance(content, str) and content:
            self.content_events += 1
            self.output_chars += len(content)
        if obj.get("stop") is True:
            self.done = True
            model = obj.get("model")
            if isinstance(model, str) and model:
                self.model = model
            reason = obj.get("stop_type")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
            usage = _llamacpp_usage(obj)
            if usage is not None:
                self.usage = _add_usage(self.usage, usage)

    def _on_responses_event(self, obj: dict[str, Any], ev_name: bytes) -> None:
        etype = obj.get("type")
        if not isinstance(etype, str):
            etype = "error" if obj.get("error") else ev_name.decode("utf-8", "replace")
        if etype in _RESPONSES_CONTENT_EVENTS:
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self.content_events += 1
                self.output_chars += len(delta)
        elif etype in _RESPONSES_TERMINAL_EVENTS:
            self.done = True
            resp = obj.get("response")
            if isinstance(resp, dict):
                self._on_response_object(resp)
                if self.usage is not None:
                    ms = _timings_ms(obj.get("timings"))  # llama.cpp: beside "response"
                    if ms is not None:
                        self.usage.server_duration_ms = ms
            if etype == "response.failed" and self.error is None:
                self.error = "response failed"
        elif etype == "response.created":
            resp = obj.get("response")
            if isinstance(resp, dict):
                model = resp.get("model")
                if isinstance(model, str) and model:
                    self.model = model
        elif etype == "error" or ev_name == b"error":
            err = obj.get("error")
            self.error = _error_message(err if err else obj)

    def _on_response_object(self, resp: dict[str, Any]) -> None:
        """The ``response`` of a terminal event: status, usage, error."""
        model = resp.get("model")
        if isinstance(model, str) and model:
            self.model = model
        status = resp.get("status")
        if isinstance(status, str) and status:
            self.finish_reason = status
        u = resp.get("usage")
        if isinstance(u, dict):
            self.usage = _openai_usage(u, embedding=False)
        err = resp.get("error")
        if err:
            self.error = _error_message(err)

    def _on_ollama(self, obj: dict[str, Any]) -> None:
        err = obj.get("error")
        if err:
            self.error = _error_message(err)
            return
        model = obj.get("model")
        if isinstance(model, str) and model:
            self.model = model
        chars = _ollama_output_chars(obj)
        if chars:
            self.content_events += 1
            self.output_chars += chars
        if obj.get("done") is True:
            self.done = True
            reason = obj.get("done_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
            self.usage = _ollama_usage(obj)


# Strip mode edits, only on the events that need one (the finish chunk; Ollama's chunks with
# a placeholder usage): byte surgery that leaves every other byte as the server wrote it (its
# JSON serializer's spacing, escaping, key order), checked by parsing the result.


def _placeholder_usage(u: dict[str, Any]) -> bool:
    """No count in it: Ollama's ``"usage": {"prompt_tokens": 0, ...}`` on content chunks."""
    return not any(u.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))


def _value_end(data: bytes, i: int) -> int:
    """Index just past the JSON value that starts at ``data[i]``; -1 if it does not end."""
    n = len(data)
    if i >= n:
        return -1
    first = data[i]
    if first not in (123, 91, 34):  # a number, true, false or null: up to a delimiter
        while i < n and data[i] not in b",}] \t\r\n":
            i += 1
        return i
    depth = 0
    in_str = False
    while i < n:
        c = data[i]
        if in_str:
            if c == 92:  # backslash: skip the escaped character
                i += 1
            elif c == 34:
                in_str = False
                if depth == 0:
                    return i + 1  # a string value
        elif c == 34:
            in_str = True
        elif c == 123 or c == 91:
            depth += 1
        elif c == 125 or c == 93:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _member(event: bytes, key: bytes) -> tuple[int, int] | None:
    """Span of the last ``,"key":value`` member of an event, comma included. It is never
    inside a JSON string: there a quote is escaped, so ``,"key":`` cannot occur."""
    at = event.rfind(b',"' + key + b'":')
    if at < 0:
        return None
    end = _value_end(event, at + len(key) + 4)
    return None if end < 0 else (at, end)


def _data_object(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's (first) data line, or None."""
    at = event.find(b"data:")
    if at < 0:
        return None
    end = event.find(b"\n", at)
    try:
        obj = _loads(event[at + 5 : end if end >= 0 else len(event)])
    except _JSON_ERRORS:
        return None
    return obj if isinstance(obj, dict) else None


def _cut_placeholder_usage(event: bytes) -> bytes:
    """The event without its placeholder ``"usage"`` member; unchanged if that fails."""
    span = _member(event, b"usage")
    if span is None:
        return event
    cut = event[: span[0]] + event[span[1] :]
    obj = _data_object(cut)
    return cut if obj is not None and "usage" not in obj else event


def _move_last_chunk_members(finish: bytes, usage_event: bytes) -> bytes:
    """The held finish event with the members llama.cpp appended to the dropped usage-only
    event put back at its end, where the server puts them when usage was not asked for.
    Unchanged when there is nothing to move or the edit would not parse."""
    found = [(span, key) for key in _LAST_CHUNK_MEMBERS if (span := _member(usage_event, key))]
    if not found:
        return finish  # the common case (vLLM, Ollama, OpenAI)
    found.sort()  # in the order the server wrote them
    close = finish.rfind(b"}")
    if close < 0:
        return finish
    moved = finish[:close] + b"".join(usage_event[a:b] for (a, b), _ in found) + finish[close:]
    obj = _data_object(moved)
    if obj is None or any(key.decode() not in obj for _, key in found):
        return finish
    return moved


# --------------------------------------------------------------------------- bodies


def make_decoder(content_encoding: str | None) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a ``Content-Encoding`` (gzip, deflate, br, zstd, or a
    comma-separated chain of them), or None for identity/absent or an encoding it does not
    know (the body is then parsed as is, which finds nothing).

    The decoder never raises: after corrupt input it returns b"" for the rest of the body,
    so metering degrades to estimates while the bytes are still relayed untouched."""
    if not content_encoding:
        return None
    steps: list[Callable[[bytes], bytes]] = []
    for token in content_encoding.lower().split(","):
        name = token.strip()
        if name in ("", "identity"):
            continue
        step = _decoder_step(name)
        if step is None:
            return None
        steps.append(step)
    if not steps:
        return None
    steps.reverse()  # encodings are listed in the order they were applied
    broken = False

    def decode(data: bytes) -> bytes:
        nonlocal broken
        if broken:
            return b""
        try:
            for step in steps:
                data = step(data)
        except Exception:  # zlib.error, brotli.error, zstd.ZstdError: corrupt stream
            broken = True
            return b""
        return data

    return decode


def _decoder_step(name: str) -> Callable[[bytes], bytes] | None:
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress
    if name == "deflate":
        return _deflate_decoder()
    if name == "br":
        import brotli  # mitmproxy dependency; imported only when a body needs it

        return brotli.Decompressor().process
    if name == "zstd":
        return _zstd_step()
    return None


def _zstd_step() -> Callable[[bytes], bytes] | None:
    """A zstd decompressor from whichever module this mitmproxy brought: Python 3.14's
    `compression.zstd` or its backport (mitmproxy 12.2+), else `zstandard` (earlier ones)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        except ImportError:
            zstd = None
    if zstd is not None:
        return zstd.ZstdDecompressor().decompress
    try:
        import zstandard
    except ImportError:  # then zstd bodies are relayed unread, like an unknown encoding
        return None
    return zstandard.ZstdDecompressor().decompressobj().decompress


def _deflate_decoder() -> Callable[[bytes], bytes]:
    """HTTP "deflate" is meant to be zlib-wrapped, but some servers send raw deflate: look
    at the first two bytes (a zlib header is CM=8 and a multiple of 31) before choosing."""
    head = bytearray()
    decompress: Callable[[bytes], bytes] | None = None

    def decode(data: bytes) -> bytes:
        nonlocal decompress
        if decompress is None:
            head.extend(data)
            if len(head) < 2:
                return b""
            zlib_wrapped = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
            decompress = zlib.decompressobj(wbits).decompress
            data = bytes(head)
        return decompress(data)

    return decode


def error_body(dialect: str, status: int, message: str, err_type: str = "upstream_error") -> bytes:
    """An error body in the client's dialect: ``{"error": "..."}`` for Ollama (what its
    clients read), the OpenAI error object otherwise (``code`` is the HTTP status, as vLLM
    and llama.cpp send it)."""
    if dialect == "ollama":
        doc: dict[str, Any] = {"error": message}
    else:
        doc = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return json.dumps(doc, ensure_ascii=False).encode()
