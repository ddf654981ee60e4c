"""Token usage: the counts each dialect reports, and the estimate when a server reports none.

The estimate works from the generated characters, so their counting per dialect lives here
too (``*_chars``): a streamed delta, an Ollama object, a Responses output item.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agent.records import Operation
from agent.wire.request import RequestInfo

__all__ = [
    "MAX_COUNT",
    "Usage",
    "add_usage",
    "estimate_usage",
    "json_int",
    "json_number",
    "llamacpp_usage",
    "ollama_output_chars",
    "ollama_usage",
    "openai_delta_chars",
    "openai_usage",
    "responses_item_chars",
    "str_len",
    "timings_ms",
]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    server_duration_ms: float | None = None


# The largest count read as one: JSON's exact integer range. A negative or larger "count"
# (-5, 1e300) is no count at all, and would not fit a database's 64-bit integer column.
MAX_COUNT = 2**53 - 1


def json_int(v: Any) -> int | None:
    """A JSON count: an int, or a float with an integer value, in 0..MAX_COUNT; never a bool."""
    if type(v) is int:  # not bool
        return v if 0 <= v <= MAX_COUNT else None
    if isinstance(v, float) and v.is_integer() and 0 <= v <= MAX_COUNT:
        return int(v)
    return None


def json_number(v: Any) -> float | None:
    """A JSON duration: a finite number >= 0 (not NaN, Infinity, 1e400 or a bool)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        try:
            f = float(v)
        except OverflowError:  # an int beyond float range
            return None
        if 0 <= f < math.inf:  # False for NaN
            return f
    return None


def count_sum(a: int | None, b: int | None) -> int | None:
    """Two counts added; None when both are, or when the sum is past MAX_COUNT."""
    if a is None and b is None:
        return None
    total = (a or 0) + (b or 0)
    return total if total <= MAX_COUNT else None


def _detail(u: dict[str, Any], keys: tuple[str, str], field: str) -> int | None:
    for key in keys:
        d = u.get(key)
        if isinstance(d, dict):
            n = json_int(d.get(field))
            if n is not None:
                return n
    return None


def openai_usage(u: dict[str, Any], embedding: bool) -> Usage:
    """Chat/completions (``prompt_tokens``...) and Responses (``input_tokens``...) shapes."""
    prompt = json_int(u.get("prompt_tokens"))
    if prompt is None:
        prompt = json_int(u.get("input_tokens"))
    completion = json_int(u.get("completion_tokens"))
    if completion is None:
        completion = json_int(u.get("output_tokens"))
    if completion is None and embedding:
        completion = 0  # embeddings report prompt and total only
    total = json_int(u.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = count_sum(prompt, completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=_detail(u, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens"),
        reasoning_tokens=_detail(
            u, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens"
        ),
    )


def ollama_usage(d: dict[str, Any]) -> Usage:
    """Counts of a done object; Ollama omits zero counts (Go ``omitempty``)."""
    prompt = json_int(d.get("prompt_eval_count")) or 0
    completion = json_int(d.get("eval_count")) or 0
    total_ns = json_number(d.get("total_duration"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=count_sum(prompt, completion),
        server_duration_ms=total_ns / 1e6 if total_ns is not None else None,
    )


def llamacpp_usage(d: dict[str, Any]) -> Usage | None:
    """Counts of a llama.cpp native ``/completion`` result: ``tokens_evaluated`` is the whole
    prompt (cached part included, as ``prompt_tokens`` on its /v1 routes), ``tokens_predicted``
    the output; ``timings.cache_n`` the prompt tokens served from the cache."""
    prompt = json_int(d.get("tokens_evaluated"))
    completion = json_int(d.get("tokens_predicted"))
    if prompt is None and completion is None:
        return None
    timings = d.get("timings")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=count_sum(prompt, completion),
        cached_tokens=json_int(timings.get("cache_n")) if isinstance(timings, dict) else None,
        server_duration_ms=timings_ms(timings),
    )


def add_usage(a: Usage | None, b: Usage) -> Usage:
    """Counts of two results of one request (llama.cpp answers a list of prompts with one
    result each); their server times overlap, so the longer one stands for both."""
    if a is None:
        return b
    plus = count_sum
    ms = [m for m in (a.server_duration_ms, b.server_duration_ms) if m is not None]
    return Usage(
        prompt_tokens=plus(a.prompt_tokens, b.prompt_tokens),
        completion_tokens=plus(a.completion_tokens, b.completion_tokens),
        total_tokens=plus(a.total_tokens, b.total_tokens),
        cached_tokens=plus(a.cached_tokens, b.cached_tokens),
        reasoning_tokens=plus(a.reasoning_tokens, b.reasoning_tokens),
        server_duration_ms=max(ms) if ms else None,
    )


def timings_ms(t: Any) -> float | None:
    """llama.cpp's ``timings``: prompt processing plus generation, in ms."""
    if not isinstance(t, dict):
        return None
    p, g = json_number(t.get("prompt_ms")), json_number(t.get("predicted_ms"))
    if p is None and g is None:
        return None
    ms = (p or 0.0) + (g or 0.0)
    return ms if ms < math.inf else None  # 1e308 + 1e308


def estimate_usage(info: RequestInfo, output_chars: int, content_events: int) -> Usage:
    """Rough counts when the server reports none: ~4 characters a token for the prompt;
    for the output one token per streamed content event (servers send about one token an
    event), else ~4 characters a token."""
    prompt = max(1, math.ceil(len(info.prompt_text) / 4)) if info.prompt_text else None
    if info.operation == Operation.EMBEDDING:
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


# -- generated characters, what the estimate counts


def str_len(v: Any) -> int:
    return len(v) if isinstance(v, str) else 0


def openai_delta_chars(d: dict[str, Any]) -> int:
    """Generated characters of a chat ``delta`` / ``message``: content, reasoning (vLLM
    ``reasoning_content``, newer ``reasoning``), refusal and tool-call arguments."""
    n = (
        str_len(d.get("content"))
        + str_len(d.get("reasoning_content"))
        + str_len(d.get("reasoning"))
        + str_len(d.get("refusal"))
    )
    calls = d.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                fn = call.get("function")
                if isinstance(fn, dict):
                    n += str_len(fn.get("name")) + str_len(fn.get("arguments"))
    return n


def ollama_output_chars(d: dict[str, Any]) -> int:
    """Generated characters of one Ollama object: generate ``response``/``thinking`` or
    chat ``message.content``/``message.thinking``/``message.tool_calls``."""
    n = str_len(d.get("response")) + str_len(d.get("thinking"))
    msg = d.get("message")
    if isinstance(msg, dict):
        n += str_len(msg.get("content")) + str_len(msg.get("thinking"))
        calls = msg.get("tool_calls")
        if isinstance(calls, list) and calls:
            # Ollama sends whole tool calls (arguments as an object), rarely: size them as JSON.
            try:
                n += len(json.dumps(calls, ensure_ascii=False, separators=(",", ":")))
            except (TypeError, ValueError):
                n += 1
    return n


def responses_item_chars(item: dict[str, Any]) -> int:
    """Generated characters of a Responses ``output`` item: text and summary parts, and
    function-call arguments."""
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
