"""What a non-streamed response body says: usage, output size, error and model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agent.records import Dialect, Operation
from agent.wire.errors import error_message
from agent.wire.fastjson import JSON_ERRORS, loads_lenient
from agent.wire.request import LLAMACPP_NATIVE_ENDPOINTS, RequestInfo
from agent.wire.usage import (
    Usage,
    add_usage,
    json_int,
    json_number,
    llamacpp_usage,
    ollama_output_chars,
    ollama_usage,
    openai_delta_chars,
    openai_usage,
    responses_item_chars,
    str_len,
    timings_ms,
)

__all__ = ["ResponseSummary", "parse_response"]

# Read on every response, as globals (cheaper to load than enum class attributes on 3.11).
_OLLAMA: Final = Dialect.OLLAMA
_EMBEDDING: Final = Operation.EMBEDDING
_RESPONSES: Final = Operation.RESPONSES


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
        doc = loads_lenient(body)  # a Python server may write NaN (logprobs, echoed options)
    except JSON_ERRORS:
        return summary
    if isinstance(doc, list) and info.endpoint in LLAMACPP_NATIVE_ENDPOINTS:
        # llama.cpp's /completion answers a list of prompts with a list of results.
        for item in doc:
            if isinstance(item, dict):
                part = ResponseSummary()
                _summarize_llamacpp(item, part)
                summary.model = summary.model or part.model
                summary.output_chars += part.output_chars
                if part.usage is not None:
                    summary.usage = add_usage(summary.usage, part.usage)
        return summary
    if not isinstance(doc, dict):
        return summary
    model = doc.get("model")
    summary.model = model if isinstance(model, str) and model else None

    err = doc.get("error")
    if err:  # Responses objects carry "error": null on success
        summary.error = error_message(err)
    elif doc.get("object") == "error":  # older vLLM: {"object": "error", "message": ...}
        summary.error = error_message(doc)

    if info.dialect == _OLLAMA:
        _summarize_ollama(info, doc, summary)
    elif info.endpoint in LLAMACPP_NATIVE_ENDPOINTS:
        _summarize_llamacpp(doc, summary)
    else:
        _summarize_openai(info, doc, summary)
    return summary


def _summarize_ollama(info: RequestInfo, doc: dict[str, Any], s: ResponseSummary) -> None:
    if info.operation == _EMBEDDING:
        # /api/embed reports prompt_eval_count; legacy /api/embeddings and old servers
        # report nothing, so only a present count is usage.
        n = json_int(doc.get("prompt_eval_count"))
        if n is not None:
            ms = json_number(doc.get("total_duration"))
            s.usage = Usage(n, 0, n, server_duration_ms=ms / 1e6 if ms is not None else None)
        return
    chars = ollama_output_chars(doc)
    s.output_chars = chars
    if doc.get("done") is True or "eval_count" in doc or "prompt_eval_count" in doc:
        s.usage = ollama_usage(doc)


def _summarize_llamacpp(doc: dict[str, Any], s: ResponseSummary) -> None:
    model = doc.get("model")
    if isinstance(model, str) and model:
        s.model = model
    s.output_chars = str_len(doc.get("content"))
    s.usage = llamacpp_usage(doc)


def _summarize_openai(info: RequestInfo, doc: dict[str, Any], s: ResponseSummary) -> None:
    u = doc.get("usage")
    if isinstance(u, dict):
        s.usage = openai_usage(u, info.operation == _EMBEDDING)
        ms = timings_ms(doc.get("timings"))
        if ms is not None:
            s.usage.server_duration_ms = ms
    if info.operation == _RESPONSES or doc.get("object") == "response":
        output = doc.get("output")
        if isinstance(output, list):
            s.output_chars = sum(responses_item_chars(i) for i in output if isinstance(i, dict))
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
            chars += openai_delta_chars(msg)
    s.output_chars = chars
