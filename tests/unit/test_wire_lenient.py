"""What Python servers accept and orjson refuses (NaN, Infinity, integers beyond 64 bits, lone
surrogate escapes): the parsers read it, and the include_usage edit keeps what the server reads."""

from __future__ import annotations

import json
import math

import pytest

from agent.wire.fastjson import loads_lenient
from agent.wire.request import add_include_usage, parse_request, should_inject_usage
from agent.wire.response import parse_response
from agent.wire.stream import StreamMeter

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_stream_request_with_a_non_finite_number_is_read(literal: str) -> None:
    body = f'{{"model": "m", "temperature": {literal}, "stream": true, "messages": []}}'.encode()
    info = parse_request("POST", CHAT, body)
    assert (info.error, info.model, info.stream, should_inject_usage(info)) == (None, "m", True, True)
    out = add_include_usage(body)
    assert out == b'{"stream_options":{"include_usage":true},' + body[1:]  # the rest untouched


def test_a_rewritten_body_reads_as_the_clients() -> None:
    body = (
        b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1},'
        b'"temperature":NaN,"top_p":-Infinity,"seed":123456789012345678901234567890,"s":"\\ud800"}'
    )
    out = add_include_usage(body)
    doc = json.loads(out)
    assert doc["stream_options"] == {"include_usage": True, "x": 1}
    assert math.isnan(doc["temperature"]) and doc["top_p"] == -math.inf
    assert doc["seed"] == 123456789012345678901234567890 and doc["s"] == "\ud800"
    assert b"NaN" in out and b"-Infinity" in out
    out.decode("utf-8")  # still UTF-8: the lone surrogate stays an escape


def test_nesting_too_deep_for_pythons_json_is_forwarded_unchanged() -> None:
    body = b'{"stream":true,"stream_options":{},"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert add_include_usage(body) == body


def test_responses_and_stream_events_with_nan_are_read() -> None:
    info = parse_request("POST", CHAT, b'{"model":"m","stream":true}')
    usage = b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}'
    body = b'{"model":"m","choices":[{"logprobs":{"content":[{"logprob":-Infinity}]},'
    body += b'"message":{"content":"hi"}}],' + usage + b"}"
    summary = parse_response(info, body)
    assert summary.usage is not None and summary.usage.total_tokens == 4 and summary.output_chars == 2
    meter = StreamMeter(info, strip_usage_chunk=True)
    stream = (
        b'data: {"model":"m","choices":[{"delta":{"content":"hi"},"logprob":NaN,"finish_reason":"stop"}]}\n\n'
        b'data: {"model":"m","choices":[],' + usage + b"}\n\n"
        b"data: [DONE]\n\n"
    )
    out = meter.feed(stream) + meter.finish()
    assert meter.usage is not None and meter.usage.completion_tokens == 1
    assert out == stream[: stream.index(b"data: {", 10)] + b"data: [DONE]\n\n"  # usage chunk dropped


def test_what_no_server_accepts_is_still_refused() -> None:
    for bad in (b'{"a": nan}', b"{'a': 1}", b'{"a": 1,}', b"\xef\xbb\xbf{}", b'{"a":"\xff"}'):
        with pytest.raises(ValueError):
            loads_lenient(bad)
