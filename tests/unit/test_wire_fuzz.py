"""Hypothesis over every pure parser in agent/wire: random bytes and near-valid frames.

The parsers read what an untrusted client and a misbehaving upstream send, on the proxy's hot
path: they must never raise, must read a stream the same however it is cut into chunks, must
report only counts a store can hold, and strip mode must leave every byte that is not the
injected usage as the server wrote it. Derandomized, so a run is repeatable and CI-stable.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.records import Dialect, Operation
from agent.wire.decode import make_decoder
from agent.wire.errors import error_body, error_message
from agent.wire.request import RequestInfo, add_include_usage, classify, parse_request, should_inject_usage
from agent.wire.response import parse_response
from agent.wire.stream import StreamMeter
from agent.wire.strip import _value_end
from agent.wire.usage import MAX_COUNT, Usage, estimate_usage
from tests.support.wire_transcripts import (
    OLLAMA_CHAT_STREAM,
    RESPONSES_STREAM,
    VLLM_CHAT_STREAM,
    VLLM_COMPLETION_STREAM,
    crlf,
    snapshot,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PATHS = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/pull",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/chat/completions",
    "/completion",
    "/infill",
    "/v1/models",
]
paths = st.sampled_from(PATHS) | st.text(max_size=40).map(lambda s: "/" + s)
methods = st.sampled_from(["POST", "GET", "post", "PUT"]) | st.text(max_size=8)

# Strings as a server or client may escape them: any code point, lone surrogates included
# (Python's json reads "\ud800"; orjson refuses it).
texts = st.text(st.characters(codec=None, categories=None), max_size=20)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, -1, 2**53, 2**63, 2**64, 1e300, -0.0, 0.5])
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(texts | st.sampled_from(["usage", "model"]), inner, max_size=4)
    ),
    max_leaves=12,
)
counts = numbers | st.none() | st.sampled_from(["12", True, [], {}])


def dumps(doc: Any, ascii_only: bool = True) -> bytes:
    """JSON as Python servers write it (NaN and Infinity allowed); lone surrogates escaped."""
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as it is, truncated, with bytes flipped or inserted, invalid UTF-8, deep nesting."""
    how = draw(st.sampled_from(["as-is", "truncate", "flip", "insert", "utf8", "nest"]))
    if how == "as-is" or not data:
        return data
    at = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        at = min(at, len(data) - 1)
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "utf8":
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
    depth = draw(st.sampled_from([100, 1000, 5000]))
    return data[:at] + b"[" * depth + b"]" * draw(st.sampled_from([0, depth])) + data[at:]


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        "model": draw(texts | json_values),
        "stream": draw(st.booleans() | json_values),
    }
    if draw(st.booleans()):
        doc["stream_options"] = draw(
            st.sampled_from([{"include_usage": False}, {"x": 1}, None, 3]) | json_values
        )
    key = draw(st.sampled_from(["messages", "prompt", "input", "instructions", "system", "suffix"]))
    doc[key] = draw(
        json_values
        | st.lists(st.fixed_dictionaries({"role": texts, "content": texts | json_values}), max_size=3)
    )
    extra = draw(st.dictionaries(texts, json_values, max_size=3))
    doc.update({k: v for k, v in extra.items() if k not in doc})
    return draw(mutated(dumps(doc, draw(st.booleans()))))


bodies = st.binary(max_size=300) | request_bodies()


def assert_usage_sane(usage: Usage | None) -> None:
    """Counts a user reads and a database column holds: None or 0 <= n <= MAX_COUNT."""
    if usage is None:
        return
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"):
        n = getattr(usage, name)
        assert n is None or (type(n) is int and 0 <= n <= MAX_COUNT), (name, n)
    ms = usage.server_duration_ms
    assert ms is None or (isinstance(ms, float) and math.isfinite(ms) and ms >= 0), ms


def info(path: str, body: dict[str, Any] | None = None) -> RequestInfo:
    return parse_request("POST", path, json.dumps(body or {"model": "m"}).encode())


# --------------------------------------------------------------------------- requests


@FUZZ
@given(methods, paths, bodies)
@example("POST", "/v1/chat/completions", b'{"model":"m","stream":true,"temperature":NaN}')
@example("POST", "/api/chat", b"[" * 100_000)
@example("POST", "/v1/completions", b'{"prompt":"\\ud800","stream":true,"stream_options":{}}')
def test_parse_request_never_raises_and_types_hold(method: str, path: str, body: bytes) -> None:
    got = parse_request(method, path, body)
    assert (got.dialect, got.operation) == classify(method, path)
    assert got.model is None or (isinstance(got.model, str) and got.model)
    assert type(got.stream) is bool and type(got.wants_usage) is bool
    assert isinstance(got.prompt_text, str)
    assert got.error is None or isinstance(got.error, str)
    assert type(should_inject_usage(got)) is bool
    assert_usage_sane(estimate_usage(got, 0, 0))


def _python_doc(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON documents; NaN equals NaN here."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@FUZZ
@given(bodies)
@example(b'{"model":"m","stream":true,"n":123456789012345678901234567890}')
@example(b' {"stream":true,"stream_options":{"x":NaN},"p":"\\udfff"}')
def test_add_include_usage_changes_only_include_usage(body: bytes) -> None:
    out = add_include_usage(body)
    assert isinstance(out, bytes)
    assert add_include_usage(out) == out  # asking twice asks once
    if out == body:
        return
    before, after = _python_doc(body), _python_doc(out)
    opts = after.pop("stream_options")
    assert opts["include_usage"] is True
    old_opts = before.pop("stream_options", None)
    if isinstance(old_opts, dict):  # its other keys kept (compared as JSON: NaN != NaN)
        assert _same(opts, {**old_opts, "include_usage": True})
    assert _same(after, before)
    parsed = parse_request("POST", "/v1/chat/completions", out)
    assert parsed.wants_usage and parsed.error is None


# --------------------------------------------------------------------------- responses


@st.composite
def response_bodies(draw: st.DrawFn) -> bytes:
    usage = {
        k: draw(counts)
        for k in draw(
            st.sets(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "input_tokens"]))
        )
    }
    shape = draw(st.sampled_from(["openai", "ollama", "llamacpp", "list", "error", "any"]))
    doc: Any
    if shape == "openai":
        doc = {
            "model": draw(texts),
            "choices": draw(json_values | st.just([{"message": {"content": "hi"}, "finish_reason": "stop"}])),
            "usage": draw(st.just(usage) | json_values),
            "timings": {"prompt_ms": draw(counts), "predicted_ms": draw(counts)},
        }
    elif shape == "ollama":
        doc = {
            "done": draw(st.booleans() | json_values),
            "prompt_eval_count": draw(counts),
            "eval_count": draw(counts),
            "total_duration": draw(counts),
            "response": draw(texts | json_values),
            "message": {"content": draw(texts), "tool_calls": draw(json_values)},
        }
    elif shape in ("llamacpp", "list"):
        one = {
            "content": draw(texts),
            "tokens_evaluated": draw(counts),
            "tokens_predicted": draw(counts),
            "timings": {"cache_n": draw(counts), "prompt_ms": draw(counts)},
        }
        doc = one if shape == "llamacpp" else [one] * draw(st.integers(0, 40))
    elif shape == "error":
        doc = {"error": draw(json_values), "object": draw(st.sampled_from(["error", None]))}
    else:
        doc = draw(json_values)
    return draw(mutated(dumps(doc)))


@FUZZ
@given(paths, st.binary(max_size=300) | response_bodies())
@example("/completion", b'[{"tokens_evaluated":9007199254740992,"tokens_predicted":1e300}]')
@example("/v1/chat/completions", b'{"usage":{"prompt_tokens":-5,"completion_tokens":1e308}}')
@example("/api/generate", b'{"done":true,"eval_count":3,"total_duration":Infinity}')
def test_parse_response_never_raises_and_counts_are_storable(path: str, body: bytes) -> None:
    for request in (info(path), info(path, {"model": "m", "stream": True})):
        got = parse_response(request, body)
        assert_usage_sane(got.usage)
        assert type(got.output_chars) is int and got.output_chars >= 0
        assert got.error is None or isinstance(got.error, str)
        assert got.model is None or isinstance(got.model, str)


# --------------------------------------------------------------------------- streams


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included: mitmproxy may hand one over)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return pieces


def feed_all(request: RequestInfo, pieces: list[bytes], strip: bool) -> tuple[StreamMeter, bytes]:
    meter = StreamMeter(request, strip_usage_chunk=strip)
    out = []
    for piece in pieces:
        forwarded = meter.feed(piece)
        if not strip:
            assert forwarded is piece  # relayed as it came
        out.append(forwarded)
    out.append(meter.finish())
    assert meter.finish() == b""  # a second finish holds nothing back
    return meter, b"".join(out)


def check_tally(meter: StreamMeter) -> None:
    assert type(meter.content_events) is int and meter.content_events >= 0
    assert type(meter.output_chars) is int and meter.output_chars >= 0
    assert type(meter.done) is bool
    assert meter.error is None or isinstance(meter.error, str)
    assert meter.model is None or isinstance(meter.model, str)
    assert meter.finish_reason is None or isinstance(meter.finish_reason, str)
    assert_usage_sane(meter.usage)


def events(data: bytes) -> list[bytes]:
    """SSE events as the meter frames them: lines up to a blank one (``\\n`` or ``\\r\\n``)."""
    out, current = [], []
    for line in data.split(b"\n"):
        current.append(line)
        if line in (b"", b"\r"):
            out.append(b"\n".join(current))
            current = []
    if current != [b""]:
        out.append(b"\n".join(current))
    return out


# What strip mode may touch: the usage the sidecar asked for, and the members llama.cpp moves
# between the finish chunk and the usage-only chunk.
_STRIPPABLE = (b"usage", b"timings", b"__tool_call_incomplete")


def untouchable(data: bytes) -> list[bytes]:
    """The events strip mode must forward byte for byte: not those with strippable members, nor
    one right before an event carrying llama.cpp's last-chunk members (they may move onto it)."""
    evs = events(data)
    moves_onto = {
        i - 1 for i, e in enumerate(evs) if i and any(k in e for k in (b"timings", b"__tool_call_incomplete"))
    }
    return [e for i, e in enumerate(evs) if not any(k in e for k in _STRIPPABLE) and i not in moves_onto]


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    rest = iter(whole)
    return all(any(p == w for w in rest) for p in part)


def check_stream(path: str, data: bytes, pieces: list[bytes]) -> None:
    request = info(path, {"model": "m", "stream": True})
    for strip in (False, True):
        whole, whole_out = feed_all(request, [data], strip)
        chunked, chunked_out = feed_all(request, pieces, strip)
        assert snapshot(chunked) == snapshot(whole)
        assert chunked_out == whole_out
        check_tally(chunked)
        if not strip:
            assert whole_out == data
        else:
            assert is_subsequence(untouchable(data), events(whole_out))
            assert len(events(whole_out)) <= len(events(data))
            if not any(k in data for k in _STRIPPABLE):
                assert whole_out == data


stream_paths = st.sampled_from(
    ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/responses", "/completion"]
)


@FUZZ
@given(stream_paths, st.data())
def test_stream_of_random_bytes(path: str, data: st.DataObject) -> None:
    raw = data.draw(
        st.binary(max_size=400)
        | st.lists(
            st.sampled_from(
                [
                    b"data: ",
                    b"data:",
                    b"event: error",
                    b"error:",
                    b"[DONE]",
                    b"{",
                    b"}",
                    b'"usage":',
                    b"\n",
                    b"\r\n",
                    b"\n\n",
                    b": c",
                    b'{"choices":[]',
                    b",",
                    b"null",
                    b"NaN",
                    b"\xff",
                ]
            ),
            max_size=40,
        ).map(b"".join)
    )
    check_stream(path, raw, data.draw(chunkings(raw)))


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


@st.composite
def openai_events(draw: st.DrawFn) -> bytes:
    usage = {k: draw(counts) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    kind = draw(
        st.sampled_from(
            [
                "content",
                "finish",
                "usage-only",
                "placeholder",
                "llama-usage",
                "error",
                "comment",
                "done",
                "any",
            ]
        )
    )
    if kind == "content":
        return sse(
            {"model": draw(texts), "choices": [{"index": 0, "delta": {"content": draw(texts | json_values)}}]}
        )
    if kind == "finish":
        return sse({"choices": [{"index": 0, "delta": {}, "finish_reason": draw(texts | json_values)}]})
    if kind == "usage-only":
        return sse({"choices": [], "usage": draw(st.just(usage) | json_values)})
    if kind == "placeholder":
        return sse(
            {
                "choices": [{"text": "a", "index": 0}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )
    if kind == "llama-usage":
        return sse(
            {
                "choices": [],
                "usage": usage,
                "timings": {"prompt_ms": draw(counts), "predicted_ms": 1.0},
                "__tool_call_incomplete": draw(json_values),
            }
        )
    if kind == "error":
        return (
            sse({"error": draw(json_values)})
            if draw(st.booleans())
            else b"event: error\n" + sse(draw(json_values))
        )
    if kind == "comment":
        return b": ping\n\n"
    if kind == "done":
        return b"data: [DONE]\n\n"
    return sse(draw(json_values))


@st.composite
def ndjson_objects(draw: st.DrawFn) -> bytes:
    obj = {
        "model": draw(texts),
        "message": {"content": draw(texts | json_values)},
        "response": draw(texts),
        "done": draw(st.booleans() | json_values),
        "prompt_eval_count": draw(counts),
        "eval_count": draw(counts),
        "total_duration": draw(counts),
    }
    return dumps(draw(st.just(obj) | json_values)) + b"\n"


@st.composite
def responses_events(draw: st.DrawFn) -> bytes:
    etype = draw(
        st.sampled_from(
            [
                "response.created",
                "response.output_text.delta",
                "response.completed",
                "response.failed",
                "error",
            ]
        )
        | texts
    )
    obj = {
        "type": draw(st.just(etype) | json_values),
        "delta": draw(texts | json_values),
        "response": {
            "model": draw(texts),
            "status": draw(texts | json_values),
            "usage": {"input_tokens": draw(counts), "output_tokens": draw(counts)},
            "error": draw(json_values),
        },
    }
    return f"event: {etype}\n".encode("utf-8", "surrogatepass") + sse(obj)


@st.composite
def near_valid_streams(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(stream_paths)
    if path.startswith("/api/"):
        make = ndjson_objects()
    elif path == "/v1/responses":
        make = responses_events()
    else:
        make = openai_events()
    data = b"".join(draw(st.lists(make, max_size=8)))
    if draw(st.booleans()):
        data = crlf(data)
    return path, draw(mutated(data))


@FUZZ
@given(near_valid_streams(), st.data())
def test_stream_of_near_valid_events(stream: tuple[str, bytes], data: st.DataObject) -> None:
    path, raw = stream
    check_stream(path, raw, data.draw(chunkings(raw)))


RECORDED = {
    "/api/chat": OLLAMA_CHAT_STREAM,
    "/v1/chat/completions": VLLM_CHAT_STREAM,
    "/v1/completions": VLLM_COMPLETION_STREAM,
    "/v1/responses": RESPONSES_STREAM,
}


@FUZZ
@given(st.sampled_from(sorted(RECORDED)), st.data())
def test_recorded_streams_in_arbitrary_chunks(path: str, data: st.DataObject) -> None:
    raw = RECORDED[path]
    raw = crlf(raw) if data.draw(st.booleans()) else raw
    check_stream(path, raw, data.draw(chunkings(raw)))


@FUZZ
@given(st.data())
def test_strip_drops_exactly_the_usage_only_events(data: st.DataObject) -> None:
    # A stream of content, finish, comment and usage-only events: strip mode's output is the
    # stream without its usage-only events, byte for byte, however it is chunked.
    kinds = data.draw(st.lists(st.sampled_from(["content", "finish", "usage", "comment"]), max_size=10))
    parts = []
    for kind in kinds:
        if kind == "content":
            parts.append(sse({"choices": [{"index": 0, "delta": {"content": data.draw(texts)}}], "id": "x"}))
        elif kind == "finish":
            parts.append(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        elif kind == "usage":
            n = data.draw(st.integers(0, 10**6))
            parts.append(
                sse(
                    {
                        "choices": [],
                        "usage": {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1},
                    }
                )
            )
        else:
            parts.append(b": keep-alive\n\n")
    parts.append(b"data: [DONE]\n\n")
    raw = b"".join(parts)
    expected = b"".join(p for k, p in zip(kinds, parts, strict=False) if k != "usage") + parts[-1]
    request = info("/v1/chat/completions", {"model": "m", "stream": True})
    _, out = feed_all(request, data.draw(chunkings(raw)), strip=True)
    assert out == expected


@FUZZ
@given(json_values, st.sampled_from([b"", b",", b"}", b"]", b',"k":1}']), st.binary(max_size=40))
def test_value_span_is_the_whole_value(value: Any, after: bytes, garbage: bytes) -> None:
    # Strip mode cuts and moves members by these spans: a span one byte off corrupts the stream.
    data = dumps(value)
    assert _value_end(data + after, 0) == len(data)
    for i in range(min(len(garbage), 8)):
        end = _value_end(garbage, i)
        assert end == -1 or i <= end <= len(garbage)


# --------------------------------------------------------------------------- decode


encodings = st.sampled_from(
    ["gzip", "x-gzip", "deflate", "br", "zstd", "identity", "gzip, br", "bogus", "", " GZIP "]
)


@FUZZ
@given(encodings, st.binary(max_size=300), st.data())
def test_decoder_never_raises_on_garbage(encoding: str, raw: bytes, data: st.DataObject) -> None:
    decode = make_decoder(encoding)
    if decode is None:
        return
    for piece in data.draw(chunkings(raw)):
        assert isinstance(decode(piece), bytes)


def _compress(encoding: str, plain: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(plain)
    if encoding == "deflate":
        return zlib.compress(plain)
    if encoding == "deflate-raw":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(plain) + c.flush()
    import brotli

    return brotli.compress(plain)


@FUZZ
@given(st.sampled_from(["gzip", "deflate", "deflate-raw", "br"]), st.binary(max_size=2000), st.data())
def test_decoder_reads_any_chunking_back_to_the_original(
    encoding: str, plain: bytes, data: st.DataObject
) -> None:
    decode = make_decoder("deflate" if encoding == "deflate-raw" else encoding)
    assert decode is not None
    pieces = data.draw(chunkings(_compress(encoding, plain)))
    assert b"".join(decode(p) for p in pieces) == plain


# --------------------------------------------------------------------------- errors


@FUZZ
@given(json_values)
def test_error_message_is_text(err: Any) -> None:
    assert isinstance(error_message(err), str)


@FUZZ
@given(st.sampled_from([Dialect.OLLAMA, Dialect.OPENAI]), st.integers(100, 599), texts)
@example(Dialect.OPENAI, 502, "upstream said \ud800")
def test_error_body_is_json_for_any_message(dialect: str, status: int, message: str) -> None:
    body = error_body(dialect, status, message)
    doc = json.loads(body)  # valid UTF-8 JSON, whatever the message held
    got = doc["error"] if dialect == Dialect.OLLAMA else doc["error"]["message"]
    assert got == message


@pytest.mark.parametrize("operation", list(Operation))
def test_estimate_is_never_negative(operation: Operation) -> None:
    for text, chars, events_ in (("", 0, 0), ("x" * 9, 10**6, 0), ("é", 3, 5)):
        request = RequestInfo(Dialect.OPENAI, operation, "/v1/x", prompt_text=text)
        assert_usage_sane(estimate_usage(request, chars, events_))


# --------------------------------------------------------------------------- what the fuzzing found


def test_a_count_out_of_range_is_no_count() -> None:
    # Found by the fuzzer: -5 and 1e300 were read as counts (1e300 as a 300-digit int, which no
    # 64-bit column holds), Infinity as a duration, and 1e308 + 1e308 ms summed to inf.
    body = (
        b'{"model":"m","usage":{"prompt_tokens":-5,"completion_tokens":1e300,"total_tokens":7},'
        b'"timings":{"prompt_ms":1e308,"predicted_ms":1e308}}'
    )
    got = parse_response(info("/v1/chat/completions"), body)
    assert got.usage == Usage(None, None, 7)
    got = parse_response(info("/api/generate"), b'{"done":true,"eval_count":3,"total_duration":Infinity}')
    assert got.usage == Usage(0, 3, 3)
    got = parse_response(info("/completion"), b'[{"tokens_evaluated":9007199254740991,"tokens_predicted":1}]')
    assert got.usage is not None and got.usage.prompt_tokens == MAX_COUNT and got.usage.total_tokens is None


def test_an_error_body_keeps_a_lone_surrogate_escaped() -> None:
    # Found by the fuzzer: an upstream's "\ud800" (Python's json reads it) made error_body raise.
    assert error_body(Dialect.OLLAMA, 502, "bad \ud800") == b'{"error": "bad \\ud800"}'


def test_llama_cpp_members_move_onto_a_finish_chunk_the_fuzzer_found() -> None:
    """A finish chunk with an odd finish_reason still takes back the members llama.cpp put on
    the usage-only chunk (found by the fuzzer: the check above once called that an error)."""
    raw = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":""}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"0"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":null},'
        b'"timings":{"prompt_ms":0,"predicted_ms":1.0},"__tool_call_incomplete":null}\n\n'
    )
    check_stream("/v1/chat/completions", raw, [raw])
    _, out = feed_all(info("/v1/chat/completions", {"model": "m", "stream": True}), [raw], True)
    assert b'"finish_reason":"0"}],"timings":{"prompt_ms":0,"predicted_ms":1.0},' in out
    assert b'"usage"' not in out
