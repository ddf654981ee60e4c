"""What one streamed event says, per dialect: each reader adds it to the stream's tally and
returns its ``Verdict`` for strip mode (see ``strip.py``).

Readers get the event's decoded JSON object and its SSE ``event:`` name (b"" when none).
Only OpenAI chat/completions chunks can be anything but ``KEEP``: the other streams are never
stripped (the sidecar asks for usage only on chat/completions streams).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from agent.wire.errors import error_message
from agent.wire.strip import CUT, CUT_HOLD, DROP, HOLD, KEEP, Verdict, placeholder_usage
from agent.wire.usage import (
    Usage,
    add_usage,
    llamacpp_usage,
    ollama_output_chars,
    ollama_usage,
    openai_delta_chars,
    openai_usage,
    timings_ms,
)

__all__ = [
    "EventReader",
    "StreamTally",
    "read_llamacpp_object",
    "read_ollama_object",
    "read_openai_chunk",
    "read_responses_event",
]

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


class StreamTally:
    """What a stream has shown so far: ``content_events`` (events carrying generated text,
    reasoning or tool-call arguments: the first one is the TTFT mark), ``output_chars``,
    ``usage`` (None until the server reports it), ``done`` (terminal marker seen), ``error``,
    ``finish_reason`` and ``model``."""

    __slots__ = (
        "content_events",
        "done",
        "error",
        "finish_reason",
        "model",
        "output_chars",
        "pending_ms",
        "usage",
    )

    def __init__(self) -> None:
        self.content_events = 0
        self.output_chars = 0
        self.usage: Usage | None = None
        self.done = False
        self.error: str | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.pending_ms: float | None = None  # llama.cpp timings seen before any usage


EventReader = Callable[[StreamTally, dict[str, Any], bytes], Verdict]


def read_openai_chunk(t: StreamTally, obj: dict[str, Any], ev_name: bytes) -> Verdict:
    """An OpenAI chat/completions chunk."""
    err = obj.get("error")
    if err or ev_name == b"error" or obj.get("object") == "error":  # last: older vLLM
        t.error = error_message(err or obj)
        return KEEP
    model = obj.get("model")
    if isinstance(model, str) and model:
        t.model = model
    choices = obj.get("choices")
    has_choices = isinstance(choices, list) and len(choices) > 0
    usage = obj.get("usage")  # OpenAI sends "usage": null on the other chunks
    verdict = KEEP
    if isinstance(usage, dict):
        if has_choices and placeholder_usage(usage):
            # Ollama's /v1/completions with include_usage: zeros on every chunk, the counts
            # come on the usage-only chunk. Not usage, and not the client's.
            usage = None
            verdict = CUT
        else:
            if isinstance(choices, list) and not choices:
                verdict = DROP  # the usage-only chunk
            t.usage = openai_usage(usage, embedding=False)
            if t.pending_ms is not None:
                t.usage.server_duration_ms = t.pending_ms
    timings = obj.get("timings")
    ms = timings_ms(timings)
    if ms is not None:
        t.pending_ms = ms
        if t.usage is not None:
            t.usage.server_duration_ms = ms
    if not has_choices:
        return verdict
    chars = 0
    finished = False
    for c in choices:
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        if isinstance(delta, dict):
            chars += openai_delta_chars(delta)
        else:
            msg = c.get("message")  # a non-streamed body fed to the meter
            if isinstance(msg, dict):
                chars += openai_delta_chars(msg)
        text = c.get("text")
        if isinstance(text, str):
            chars += len(text)
        reason = c.get("finish_reason")
        if isinstance(reason, str) and reason:
            t.finish_reason = reason
            finished = True
    if chars:
        t.content_events += 1
        t.output_chars += chars
    if finished and timings is None and not isinstance(usage, dict):
        # A finish chunk without the members llama.cpp puts on the last chunk: they may come
        # on the usage-only chunk next.
        return CUT_HOLD if verdict == CUT else HOLD
    return verdict


def read_llamacpp_object(t: StreamTally, obj: dict[str, Any], ev_name: bytes) -> Verdict:
    """A llama.cpp native ``/completion`` stream object: ``content`` pieces, then a
    ``"stop": true`` object with the counts (one per prompt when given several)."""
    err = obj.get("error")
    if err or ev_name == b"error":
        t.error = error_message(err or obj)
        return KEEP
    content = obj.get("content")
    if isinstance(content, str) and content:
        t.content_events += 1
        t.output_chars += len(content)
    if obj.get("stop") is True:
        t.done = True
        model = obj.get("model")
        if isinstance(model, str) and model:
            t.model = model
        reason = obj.get("stop_type")
        if isinstance(reason, str) and reason:
            t.finish_reason = reason
        usage = llamacpp_usage(obj)
        if usage is not None:
            t.usage = add_usage(t.usage, usage)
    return KEEP


def read_responses_event(t: StreamTally, obj: dict[str, Any], ev_name: bytes) -> Verdict:
    """A Responses API event: typed by its ``type`` (or, failing that, its SSE event name)."""
    etype = obj.get("type")
    if not isinstance(etype, str):
        etype = "error" if obj.get("error") else ev_name.decode("utf-8", "replace")
    if etype in _RESPONSES_CONTENT_EVENTS:
        delta = obj.get("delta")
        if isinstance(delta, str) and delta:
            t.content_events += 1
            t.output_chars += len(delta)
    elif etype in _RESPONSES_TERMINAL_EVENTS:
        t.done = True
        resp = obj.get("response")
        if isinstance(resp, dict):
            _read_response_object(t, resp)
            if t.usage is not None:
                ms = timings_ms(obj.get("timings"))  # llama.cpp: beside "response"
                if ms is not None:
                    t.usage.server_duration_ms = ms
        if etype == "response.failed" and t.error is None:
            t.error = "response failed"
    elif etype == "response.created":
        resp = obj.get("response")
        if isinstance(resp, dict):
            model = resp.get("model")
            if isinstance(model, str) and model:
                t.model = model
    elif etype == "error" or ev_name == b"error":
        err = obj.get("error")
        t.error = error_message(err if err else obj)
    return KEEP


def _read_response_object(t: StreamTally, resp: dict[str, Any]) -> None:
    """The ``response`` of a terminal event: status, usage, error."""
    model = resp.get("model")
    if isinstance(model, str) and model:
        t.model = model
    status = resp.get("status")
    if isinstance(status, str) and status:
        t.finish_reason = status
    u = resp.get("usage")
    if isinstance(u, dict):
        t.usage = openai_usage(u, embedding=False)
    err = resp.get("error")
    if err:
        t.error = error_message(err)


def read_ollama_object(t: StreamTally, obj: dict[str, Any], ev_name: bytes) -> Verdict:
    """One NDJSON line of an Ollama stream; the last has ``"done": true`` and the counts."""
    err = obj.get("error")
    if err:
        t.error = error_message(err)
        return KEEP
    model = obj.get("model")
    if isinstance(model, str) and model:
        t.model = model
    chars = ollama_output_chars(obj)
    if chars:
        t.content_events += 1
        t.output_chars += chars
    if obj.get("done") is True:
        t.done = True
        reason = obj.get("done_reason")
        if isinstance(reason, str) and reason:
            t.finish_reason = reason
        t.usage = ollama_usage(obj)
    return KEEP
