"""The meter's hooks on crafted flows, driven as mitmproxy drives them (`taddons`, `tflow`)."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import pytest
from mitmproxy.test import taddons

from addons.flowstate import state_of
from addons.meter import Meter, StreamRelay
from agent.records import Operation, Outcome, UsageSource
from tests.support.flows import UPSTREAM_HOST, chat_chunk, fail, llm_flow, respond, sse, usage_chunk
from tests.support.paths import ROOT

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
STREAM = {**CHAT, "stream": True}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


@pytest.fixture
def meter() -> Meter:
    return Meter()


def through(relay: StreamRelay, body: bytes, step: int = 7) -> bytes:
    """Feed `body` to the stream callback in `step`-byte chunks, then the end; what the client gets."""
    out = b""
    for i in range(0, len(body), step):
        part = relay(body[i : i + step])
        assert part != b"", "a data chunk must never come back as b'' (mitmproxy ends the body on it)"
        out += part if isinstance(part, bytes) else b"".join(part)
    return out + b"".join([relay(b"")])  # type: ignore[list-item]


async def test_a_buffered_chat_fills_the_record(meter: Meter) -> None:
    with taddons.context(meter) as tctx:
        f = llm_flow(body=CHAT, headers={"X-Request-ID": "client-id-1"})
        respond(f, 200, COMPLETION)
        await tctx.cycle(meter, f)
    rec = state_of(f).record
    assert rec.request_id == "client-id-1"
    assert (rec.dialect, rec.operation, rec.endpoint, rec.model, rec.stream) == (
        "openai",
        Operation.CHAT,
        "/v1/chat/completions",
        "m",
        False,
    )
    assert (rec.status, rec.outcome, rec.error) == (200, Outcome.OK, None)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (7, 3, 10)
    assert rec.usage_source == UsageSource.REPORTED
    assert rec.upstream == f"http://{UPSTREAM_HOST}:8000"
    assert rec.client_ip == f.client_conn.peername[0]
    assert rec.request_bytes == len(json.dumps(CHAT)) and rec.response_bytes == len(json.dumps(COMPLETION))
    assert rec.latency_ms is not None and rec.latency_ms >= 40 and rec.ttft_ms is None
    assert rec.prompt is None  # prompt capture is off by default


async def test_the_request_id_is_kept_or_made_and_echoed_both_ways(meter: Meter) -> None:
    with taddons.context(meter) as tctx:
        sent = llm_flow(body=CHAT, headers={"X-Request-ID": "abc:1.2_3-4"})
        respond(sent, 200, COMPLETION)
        await tctx.cycle(meter, sent)
        made = llm_flow(body=CHAT)
        respond(made, 200, COMPLETION)
        await tctx.cycle(meter, made)
    assert sent.response is not None and sent.response.headers["X-Request-ID"] == "abc:1.2_3-4"
    assert "X-Request-ID-Replaced" not in sent.response.headers
    generated = state_of(made).record.request_id
    assert uuid.UUID(generated).version == 7
    assert made.request.headers["X-Request-ID"] == generated  # the upstream sees it too
    assert made.response is not None and made.response.headers["X-Request-ID"] == generated
    assert "X-Request-ID-Replaced" not in made.response.headers  # none sent: nothing replaced


@pytest.mark.parametrize("bad", ["x" * 129, "a b", "id<script>", "é", "a,b", "abc\rInjected: 1"])
async def test_an_invalid_request_id_is_replaced_and_the_response_says_so(meter: Meter, bad: str) -> None:
    with taddons.context(meter) as tctx:
        f = llm_flow(body=CHAT, headers={"X-Request-ID": bad})
        respond(f, 200, COMPLETION)
        await tctx.cycle(meter, f)
    rec = state_of(f).record
    assert uuid.UUID(rec.request_id).version == 7
    assert f.request.headers["X-Request-ID"] == rec.request_id  # the upstream never sees the bad one
    assert f.response is not None and f.response.headers["X-Request-ID"] == rec.request_id
    assert f.response.headers["X-Request-ID-Replaced"] == "1"


@pytest.mark.parametrize(
    ("mode", "kept"),
    [
        ("off", None),
        ("full", "hi there " * 3),
        ("truncated", "hi there… [truncated: 19 more characters]"),
    ],
)
async def test_prompts_are_kept_as_the_capture_mode_says(meter: Meter, mode: str, kept: str | None) -> None:
    long_chat = {"model": "m", "messages": [{"role": "user", "content": "hi there " * 3}]}
    with taddons.context(meter) as tctx:
        tctx.configure(meter, sidemeter_capture_prompts=mode, sidemeter_capture_prompts_chars=8)
        f = llm_flow(body=long_chat)
        meter.request(f)
        short = llm_flow(body=CHAT)
        meter.request(short)
    assert state_of(f).record.prompt == kept
    # A prompt that fits is kept whole, without a marker, in either capturing mode.
    assert state_of(short).record.prompt == (None if mode == "off" else "hi there")


@pytest.mark.parametrize(
    ("path", "body", "injected"),
    [
        ("/v1/chat/completions", STREAM, True),
        ("/v1/completions", {"model": "m", "prompt": "p", "stream": True}, True),
        ("/v1/chat/completions", {**STREAM, "stream_options": {"include_usage": True}}, False),
        ("/v1/chat/completions", CHAT, False),  # not streamed: usage comes in the body
        ("/api/chat", CHAT, False),  # Ollama streams its counts unasked
        ("/v1/embeddings", {"model": "m", "input": "x", "stream": True}, False),
        ("/completion", {"prompt": "p", "stream": True}, False),  # llama.cpp native: no stream_options
    ],
)
async def test_include_usage_is_injected_only_where_the_client_did_not_ask(
    meter: Meter, path: str, body: dict[str, object], injected: bool
) -> None:
    with taddons.context(meter):
        f = llm_flow(path, body, headers={"Accept-Encoding": "gzip"})
        meter.requestheaders(f)
        meter.request(f)
    sent = json.loads(f.request.content or b"")
    assert state_of(f).usage_injected is injected
    assert (sent.get("stream_options") == {"include_usage": True}) is (injected or "stream_options" in body)
    # An injected stream is edited on its way back, so it must come uncompressed.
    assert f.request.headers["Accept-Encoding"] == ("identity" if injected else "gzip")


async def test_no_injection_when_the_option_is_off_or_the_request_was_answered(meter: Meter) -> None:
    with taddons.context(meter) as tctx:
        tctx.configure(meter, sidemeter_inject_usage=False)
        off = llm_flow(body=STREAM)
        meter.request(off)
        tctx.configure(meter, sidemeter_inject_usage=True)
        answered = llm_flow(body=STREAM)
        respond(answered, 401, {"error": "no"})  # e.g. refused by auth before the meter ran
        meter.request(answered)
    for f in (off, answered):
        assert not state_of(f).usage_injected
        assert json.loads(f.request.content or b"") == STREAM


async def test_a_streamed_response_gets_the_callback_and_loses_the_added_usage_chunk(meter: Meter) -> None:
    body = sse(
        chat_chunk(""),
        chat_chunk("Hel"),
        chat_chunk("lo"),
        chat_chunk(None, "stop"),
        usage_chunk(5, 2),
        "[DONE]",
    )
    with taddons.context(meter):
        f = llm_flow(body=STREAM)
        meter.requestheaders(f)
        meter.request(f)
        respond(f, 200, b"", content_type="text/event-stream")
        meter.responseheaders(f)
        relay = f.response.stream  # type: ignore[union-attr]
        assert isinstance(relay, StreamRelay) and state_of(f).stream is relay
        received = through(relay, body)
        f.response.timestamp_end = time.time()  # type: ignore[union-attr]  # mitmproxy sets it at the end
        meter.response(f)
    assert b'"choices": []' not in received and b'"usage"' not in received  # the client never asked
    assert received == sse(
        chat_chunk(""), chat_chunk("Hel"), chat_chunk("lo"), chat_chunk(None, "stop"), "[DONE]"
    )
    rec = state_of(f).record
    assert (rec.outcome, rec.stream, rec.usage_source) == (Outcome.OK, True, UsageSource.REPORTED)
    assert (rec.prompt_tokens, rec.completion_tokens) == (5, 2)
    assert rec.response_bytes == len(received)
    assert rec.ttft_ms is not None and rec.ttft_ms <= rec.latency_ms  # type: ignore[operator]


async def test_a_client_that_asked_for_usage_gets_it_untouched(meter: Meter) -> None:
    body = sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(5, 1), "[DONE]")
    with taddons.context(meter):
        f = llm_flow(body={**STREAM, "stream_options": {"include_usage": True}})
        meter.request(f)
        respond(f, 200, b"", content_type="text/event-stream; charset=utf-8")
        meter.responseheaders(f)
        assert through(f.response.stream, body, step=3) == body  # type: ignore[arg-type, union-attr]
        meter.response(f)
    assert state_of(f).record.completion_tokens == 1


async def test_a_compressed_stream_is_relayed_as_is_and_metered_decoded(meter: Meter) -> None:
    body = gzip.compress(sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(4, 1), "[DONE]"))
    with taddons.context(meter):
        f = llm_flow(body=STREAM)
        meter.request(f)
        respond(f, 200, b"", content_type="text/event-stream")
        f.response.headers["Content-Encoding"] = "gzip"  # type: ignore[union-attr]
        meter.responseheaders(f)
        assert through(f.response.stream, body) == body  # type: ignore[arg-type, union-attr]
        meter.response(f)
    assert state_of(f).record.completion_tokens == 1


async def test_buffered_content_types_get_no_callback(meter: Meter) -> None:
    with taddons.context(meter):
        f = llm_flow(body=CHAT)
        meter.request(f)
        respond(f, 200, COMPLETION)
        meter.responseheaders(f)
    assert f.response is not None and f.response.stream is False and state_of(f).stream is None


async def test_a_stream_cut_before_its_final_event_is_an_upstream_error_with_an_estimate(
    meter: Meter,
) -> None:
    with taddons.context(meter):
        f = llm_flow(body=STREAM)
        meter.request(f)
        respond(f, 200, b"", content_type="text/event-stream")
        meter.responseheaders(f)
        through(f.response.stream, sse(chat_chunk("one two three")))  # type: ignore[arg-type, union-attr]
        meter.response(f)
    rec = state_of(f).record
    assert (rec.outcome, rec.error) == (Outcome.UPSTREAM_ERROR, "stream ended without its final event")
    assert rec.usage_source == UsageSource.ESTIMATED and rec.completion_tokens


async def test_an_upstream_error_status_is_recorded_with_its_message(meter: Meter) -> None:
    with taddons.context(meter) as tctx:
        f = llm_flow(body=CHAT)
        respond(f, 404, {"error": {"message": "model 'm' not found", "type": "invalid_request_error"}})
        await tctx.cycle(meter, f)
    rec = state_of(f).record
    assert (rec.status, rec.outcome) == (404, Outcome.UPSTREAM_ERROR) and "not found" in (rec.error or "")
    assert rec.usage_source == UsageSource.NONE


async def test_client_disconnects_mid_stream_and_after_the_final_event(meter: Meter) -> None:
    with taddons.context(meter):
        cut = llm_flow(body=STREAM)
        meter.request(cut)
        respond(cut, 200, b"", content_type="text/event-stream")
        meter.responseheaders(cut)
        cut.response.stream(sse(chat_chunk("some words")))  # type: ignore[operator, union-attr]
        fail(cut, "Client disconnected.")
        meter.error(cut)

        whole = llm_flow(body=STREAM)
        meter.request(whole)
        respond(whole, 200, b"", content_type="text/event-stream")
        meter.responseheaders(whole)
        whole.response.stream(sse(chat_chunk("hi"), chat_chunk(None, "stop"), usage_chunk(3, 1), "[DONE]"))  # type: ignore[operator, union-attr]
        fail(whole, "Client disconnected.")
        meter.error(whole)
    rec = state_of(cut).record
    assert (rec.outcome, rec.status, rec.usage_source) == (
        Outcome.CLIENT_CANCELLED,
        200,
        UsageSource.ESTIMATED,
    )
    done = state_of(whole).record
    assert (done.outcome, done.error, done.completion_tokens) == (Outcome.OK, None, 1)


@pytest.mark.parametrize(
    ("message", "outcome", "status", "error"),
    [
        ("[Errno 111] Connect call failed ('10.0.0.5', 8000)", Outcome.UPSTREAM_ERROR, 502, "Connect call"),
        (
            "[Errno -2] Name or service not known",
            Outcome.UPSTREAM_ERROR,
            502,
            f"host {UPSTREAM_HOST} does not",
        ),
        ("Server disconnected.", Outcome.UPSTREAM_ERROR, 502, "Server disconnected."),
        ("Request body exceeds mitmproxy's body_size_limit.", Outcome.REJECTED, 413, "body_size_limit"),
        ("Connection killed.", Outcome.PROXY_ERROR, None, "Connection killed."),
    ],
)
async def test_mitmproxy_errors_are_told_apart(
    meter: Meter, message: str, outcome: Outcome, status: int | None, error: str
) -> None:
    with taddons.context(meter):
        f = llm_flow(body=CHAT)
        meter.requestheaders(f)
        meter.request(f)
        fail(f, message)
        meter.error(f)
    rec = state_of(f).record
    assert (rec.outcome, rec.status) == (outcome, status)
    assert error in (rec.error or "")
    assert rec.latency_ms is not None
    if "resolve" in error:
        assert "unreachable" in (rec.error or "") and "failed to answer" not in (rec.error or "")


async def test_an_earlier_failure_of_the_sidecar_itself_is_not_overwritten(meter: Meter) -> None:
    with taddons.context(meter):
        f = llm_flow(body=CHAT)
        state_of(f).record.outcome = Outcome.PROXY_ERROR
        state_of(f).record.error = "sidecar failed in Meter.request: ValueError: boom"
        respond(f, 500, {"error": {"message": "x"}})
        meter.response(f)
    rec = state_of(f).record
    assert rec.outcome == Outcome.PROXY_ERROR and rec.error and rec.error.startswith("sidecar failed")


async def test_a_rejected_flow_keeps_its_refusal(meter: Meter) -> None:
    with taddons.context(meter):
        f = llm_flow(body=CHAT)
        rec = state_of(f).record
        rec.outcome, rec.error, rec.status = Outcome.REJECTED, "missing", 401
        meter.request(f)
        respond(f, 401, {"error": "authentication failed"})
        meter.response(f)
        fail(f, "Client disconnected.")
        meter.error(f)
    assert (rec.outcome, rec.error, rec.status) == (Outcome.REJECTED, "missing", 401)


def test_the_addon_loads_as_a_mitmdump_script() -> None:
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / "meter.py"))
        assert [type(a).__name__ for a in script.addons] == ["Meter"]
        assert "sidemeter_inject_usage" in tctx.options


@pytest.mark.parametrize(
    ("message", "outcome", "status", "error"),
    [
        (
            "HTTP/1 protocol error: peer closed connection without sending complete message body",
            Outcome.CLIENT_CANCELLED,
            None,
            "the client hung up before sending the whole request body",
        ),
        ("HTTP/1 protocol error: illegal chunk header", Outcome.REJECTED, 400, "chunked framing"),
        ("Bad HTTP request line: b'GET /x'", Outcome.REJECTED, 400, "request line"),
        (
            "Received invalid header name: b'a b' from client, refusing to prevent request smuggling",
            Outcome.REJECTED,
            400,
            "not an HTTP token",
        ),
    ],
)
async def test_a_request_that_failed_while_arriving_is_told_apart(
    meter: Meter, message: str, outcome: Outcome, status: int | None, error: str
) -> None:
    with taddons.context(meter):
        f = llm_flow("/api/chat?x=1", body=CHAT)
        f.request.timestamp_end = None  # its body never finished: no `request` hook
        meter.requestheaders(f)
        fail(f, message)
        meter.error(f)
    rec = state_of(f).record
    assert (rec.outcome, rec.status) == (outcome, status)
    assert error in (rec.error or "") and "b'" not in (rec.error or "")
    assert (rec.dialect, rec.operation, rec.endpoint) == ("ollama", Operation.CHAT, "/api/chat")


@pytest.mark.parametrize(
    ("message", "outcome", "status"),
    [
        (
            "HTTP/1 protocol error: peer closed connection without sending complete message body",
            Outcome.UPSTREAM_ERROR,
            502,
        ),
        ("Client disconnected.", Outcome.CLIENT_CANCELLED, None),
        ("Response body exceeds mitmproxy's body_size_limit.", Outcome.UPSTREAM_ERROR, 502),
    ],
)
async def test_a_buffered_answer_that_never_reached_the_client_is_not_its_upstream_status(
    meter: Meter, message: str, outcome: Outcome, status: int | None
) -> None:
    with taddons.context(meter):
        f = llm_flow(body=CHAT)
        meter.request(f)
        respond(f, 200, b"")  # the upstream's headers arrived; the body was still being buffered
        meter.responseheaders(f)
        fail(f, message)
        meter.error(f)
    rec = state_of(f).record
    assert (rec.outcome, rec.status) == (outcome, status)
