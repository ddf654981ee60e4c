"""What a request is: its dialect and operation from the path, and what its body asks for.

Also the one edit the sidecar makes to a request: asking for streamed usage
(``stream_options.include_usage``) on the client's behalf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from agent.records import Dialect, Operation
from agent.wire.fastjson import JSON_ERRORS, loads_lenient, loads_python

__all__ = [
    "LLAMACPP_NATIVE_ENDPOINTS",
    "RequestInfo",
    "add_include_usage",
    "classify",
    "parse_request",
    "should_inject_usage",
]

_OLLAMA_OPS: Final = {
    "/api/generate": Operation.COMPLETION,
    "/api/chat": Operation.CHAT,
    "/api/embed": Operation.EMBEDDING,
    "/api/embeddings": Operation.EMBEDDING,
}
_OPENAI_OPS: Final = {
    "/v1/chat/completions": Operation.CHAT,
    "/v1/completions": Operation.COMPLETION,
    "/v1/embeddings": Operation.EMBEDDING,
    "/v1/responses": Operation.RESPONSES,
    # llama.cpp's server serves the OpenAI routes without the prefix too: left unmetered they
    # would be a way around the meter.
    "/chat/completions": Operation.CHAT,
    "/completions": Operation.COMPLETION,
    "/embeddings": Operation.EMBEDDING,
    "/responses": Operation.RESPONSES,
    # llama.cpp's native completion API (see LLAMACPP_NATIVE_ENDPOINTS).
    "/completion": Operation.COMPLETION,
    "/infill": Operation.COMPLETION,
}

# The members read on every request as module globals: on Python 3.11 a global loads several
# times faster than an enum's class attribute.
_OLLAMA: Final = Dialect.OLLAMA
_OPENAI: Final = Dialect.OPENAI
_CHAT: Final = Operation.CHAT
_COMPLETION: Final = Operation.COMPLETION
_EMBEDDING: Final = Operation.EMBEDDING
_RESPONSES: Final = Operation.RESPONSES
_OTHER: Final = Operation.OTHER
_CHAT_OR_COMPLETION: Final = frozenset({Operation.CHAT, Operation.COMPLETION})

# llama.cpp's own (non-OpenAI) completion endpoints: counts in tokens_evaluated /
# tokens_predicted, streams end with a "stop": true object; no stream_options.
LLAMACPP_NATIVE_ENDPOINTS: Final = frozenset({"/completion", "/infill"})
# Text content parts: chat "text", Responses "input_text" (and "output_text" in history).
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
# Ollama endpoints that stream NDJSON progress unless "stream": false (api.md).
_OLLAMA_STREAMING_OTHER: Final = frozenset({"/api/pull", "/api/push", "/api/create"})


def classify(method: str, path: str) -> tuple[Dialect, Operation]:
    """(dialect, operation) of a request; ``path`` may carry a ``?query``."""
    endpoint = path.split("?", 1)[0]
    if endpoint.startswith("/api/") or endpoint == "/api":
        ops, dialect = _OLLAMA_OPS, _OLLAMA
    else:
        ops, dialect = _OPENAI_OPS, _OPENAI
    if method.upper() != "POST":
        return dialect, _OTHER
    return dialect, ops.get(endpoint, _OTHER)


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
    max_output: int | None = None  # the most output tokens the request allows, when it says


def parse_request(method: str, path: str, body: bytes) -> RequestInfo:
    """Classify and read a request body. Never raises; a body that is not a JSON object
    sets ``error`` and leaves the path-based classification in place."""
    dialect, operation = classify(method, path)
    info = RequestInfo(dialect, operation, path.split("?", 1)[0])
    if not body or not body.strip():
        return info
    try:
        doc = loads_lenient(body)  # what Python servers read, NaN included (fastjson.py)
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
    if dialect == _OLLAMA:
        # Go's *bool: absent or null means the endpoint's default, which is to stream.
        default = operation in _CHAT_OR_COMPLETION or info.endpoint in _OLLAMA_STREAMING_OTHER
        info.stream = stream if isinstance(stream, bool) else default
    else:
        info.stream = stream is True and operation != _EMBEDDING
        opts = doc.get("stream_options")
        info.wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    info.prompt_text = _prompt_text(dialect, operation, doc)
    info.max_output = _max_output(dialect, doc)
    return info


def _positive_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _max_output(dialect: str, doc: dict[str, Any]) -> int | None:
    """The output cap the request sets: Ollama's options.num_predict (negative: no cap), the
    OpenAI max_completion_tokens / max_tokens (times `n` choices), the Responses API's
    max_output_tokens, llama.cpp's n_predict."""
    if dialect == _OLLAMA:
        opts = doc.get("options")
        return _positive_int(opts.get("num_predict")) if isinstance(opts, dict) else None
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "n_predict"):
        if (cap := _positive_int(doc.get(key))) is not None:
            return cap * (_positive_int(doc.get("n")) or 1)
    return None


def add_include_usage(body: bytes) -> bytes:
    """The same request with ``stream_options.include_usage = true``.

    Other ``stream_options`` keys are kept. When the key is absent it is spliced in after
    the opening brace, so the client's bytes are otherwise forwarded untouched. A body that
    is not a streaming JSON object comes back unchanged: vLLM rejects ``stream_options``
    unless ``"stream": true`` ("Stream options can only be defined when `stream=True`").
    A body only Python servers accept (``NaN``, ``Infinity``: ``fastjson.loads_lenient``) is
    asked too, and still reads as it did: the splice leaves its bytes alone, and a rewrite
    writes ``NaN`` back as ``NaN``.
    """
    try:
        doc = loads_lenient(body)
    except JSON_ERRORS:
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
    # Rewritten whole (rare: stream_options is there without include_usage). Read again as
    # Python's json reads it, so that what orjson approximates (integers beyond 64 bits become
    # floats) goes upstream as the client wrote it.
    try:
        doc = loads_python(body)
        opts = doc.get("stream_options")
        doc["stream_options"] = (
            {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
        )
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    except JSON_ERRORS:  # json's recursion limit is below orjson's nesting limit
        return body
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): keep it an escape
        return json.dumps(doc, separators=(",", ":")).encode()


def should_inject_usage(info: RequestInfo) -> bool:
    """Whether the sidecar must ask for usage on the client's behalf: an OpenAI chat or
    completions stream whose client did not set ``include_usage``. llama.cpp's native
    ``/completion`` reports its counts unasked and knows no ``stream_options``."""
    return (
        info.dialect == _OPENAI
        and info.stream
        and info.operation in _CHAT_OR_COMPLETION
        and not info.wants_usage
        and info.error is None
        and info.endpoint not in LLAMACPP_NATIVE_ENDPOINTS
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
    if operation == _CHAT:
        messages = doc.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, dict):
                    _content_text(m.get("content"), parts)
    elif operation == _COMPLETION:
        if dialect == _OLLAMA:
            for key in ("system", "prompt", "suffix"):
                _strings(doc.get(key), parts)
        else:
            _strings(doc.get("prompt"), parts)
    elif operation == _EMBEDDING:
        # /api/embed and /v1/embeddings take "input"; legacy /api/embeddings takes "prompt".
        _strings(doc.get("input"), parts)
        if dialect == _OLLAMA:
            _strings(doc.get("prompt"), parts)
    elif operation == _RESPONSES:
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
