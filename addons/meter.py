"""Meter LLM traffic: classify each request, time it, and read token usage from the response.

The usage record travels on the flow (addons/flowstate.py) and is filled in as the exchange
happens; `addons/record.py` hands it to the store when the flow ends.
Load standalone with `mitmdump --mode reverse:http://127.0.0.1:11434 -s addons/meter.py -s addons/record.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons import headers as hdr
from addons.errors import PEER_CLOSED, refusal, unresolved_host
from addons.flowstate import KEY, REQUEST_ID_KEY, start, state_of
from agent.proxy.internals import MALFORMED_BODY
from agent.records import (
    REQUEST_ID_HEADER,
    REQUEST_ID_REPLACED_HEADER,
    Operation,
    Outcome,
    UsageRecord,
    UsageSource,
)
from agent.settings import declare_options, option_names, read_options
from agent.wire.decode import make_decoder
from agent.wire.request import RequestInfo, add_include_usage, classify, parse_request, should_inject_usage
from agent.wire.response import parse_response
from agent.wire.stream import StreamMeter
from agent.wire.usage import Usage, estimate_usage

CLIENT_DISCONNECTED: Final = "Client disconnected."
KILLED: Final = "Connection killed."  # mitmproxy's flow.Error.KILLED_MESSAGE: the proxy ended the flow
PROTOCOL_ERROR: Final = "HTTP/1 protocol error"  # h11 refused a body's framing (or saw it end early)
HUNG_UP_MID_BODY: Final = "the client hung up before sending the whole request body"
STREAM_CONTENT_TYPES: Final = ("text/event-stream", "application/x-ndjson")
INFERENCE: Final = frozenset({Operation.CHAT, Operation.COMPLETION, Operation.EMBEDDING, Operation.RESPONSES})


def captured_prompt(text: str, mode: str, chars: int) -> str:
    """The prompt as `mode` keeps it: whole (`full`), or its first `chars` characters and a
    marker saying how much was cut (`truncated`), so a cut prompt never passes for a whole one."""
    if mode == "full" or len(text) <= chars:
        return text
    return f"{text[:chars]}… [truncated: {len(text) - chars} more characters]"


class StreamRelay:
    """The streamed response's per-chunk callback (`flow.response.stream`): relays each chunk,
    metering it on the side. Everything it touches is kept small: this runs for every chunk."""

    __slots__ = ("decode", "first_content_at", "meter", "sent_bytes")

    def __init__(self, meter: StreamMeter, decode: Callable[[bytes], bytes] | None) -> None:
        self.meter = meter
        self.decode = decode
        self.first_content_at: float | None = None
        self.sent_bytes = 0

    def __call__(self, chunk: bytes) -> bytes | Iterable[bytes]:
        meter = self.meter
        if not chunk:  # end of stream: release whatever the meter still holds
            rest = meter.finish()
            if self.decode is not None:
                return b""  # compressed bodies are never held back (stripping is off for them)
            self.sent_bytes += len(rest)
            return rest
        seen = meter.content_events
        if self.decode is not None:
            meter.feed(self.decode(chunk))  # read the decoded text, relay the original bytes
            out = chunk
        else:
            out = meter.feed(chunk)
        if not seen and meter.content_events:
            self.first_content_at = time.time()
        if not out:
            return ()  # b"" would end the client's body early (mitmproxy writes it as the terminator)
        self.sent_bytes += len(out)
        return out


class Meter:
    """Classify, time and count tokens for Ollama and OpenAI-compatible requests."""

    def __init__(self) -> None:
        self.inject_usage = True
        self.capture_prompts = "off"
        self.capture_prompts_chars = 1000

    def load(self, loader: Loader) -> None:
        declare_options(loader, "meter")  # sidemeter_inject_usage, sidemeter_capture_prompts(_chars)

    def configure(self, updated: set[str]) -> None:
        if updated & option_names("meter"):
            values = read_options(ctx.options, "meter")
            self.inject_usage = values["inject_usage"]
            self.capture_prompts = values["capture_prompts"]
            self.capture_prompts_chars = values["capture_prompts_chars"]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        sent_id = hdr.get(headers, REQUEST_ID_KEY)
        rec = (flow.metadata.get(KEY) or start(flow, sent_id)).record
        if sent_id != rec.request_id:
            hdr.put(headers, REQUEST_ID_HEADER, rec.request_id)
        rec.ts = _utc(flow.request.timestamp_start)
        rec.client_ip = flow.client_conn.peername[0] if flow.client_conn.peername else None
        rec.upstream = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}"

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        rec = state.record
        body = flow.request.raw_content or b""
        rec.request_bytes = len(body)
        if hdr.get(flow.request.headers, b"content-encoding"):
            body = flow.request.get_content(strict=False) or b""
        info = state.info = parse_request(flow.request.method, flow.request.path, body)
        rec.dialect, rec.operation, rec.endpoint = info.dialect, info.operation, info.endpoint
        rec.model, rec.stream = info.model, info.stream
        if self.capture_prompts != "off" and info.prompt_text:
            rec.prompt = captured_prompt(info.prompt_text, self.capture_prompts, self.capture_prompts_chars)
        if flow.response is not None:  # answered already (e.g. rejected by auth): nothing goes upstream
            return
        if self.inject_usage and should_inject_usage(info):
            flow.request.content = add_include_usage(body)
            # The stream gets edited on its way through, which needs it uncompressed.
            hdr.put(flow.request.headers, "accept-encoding", "identity")
            state.usage_injected = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        state = state_of(flow)
        headers = flow.response.headers
        hdr.put(headers, REQUEST_ID_HEADER, state.record.request_id)
        if state.id_replaced:
            hdr.put(headers, REQUEST_ID_REPLACED_HEADER, "1")
        info = state.info
        ctype = hdr.get(headers, b"content-type") or ""
        if info is None or not ctype.startswith(STREAM_CONTENT_TYPES):
            return  # buffered; counted in `response`
        encoding = hdr.get(headers, b"content-encoding")
        strip = state.usage_injected and not encoding
        relay = StreamRelay(StreamMeter(info, strip_usage_chunk=strip), make_decoder(encoding))
        state.stream = flow.response.stream = relay

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        state = state_of(flow)
        rec = state.record
        resp = flow.response
        rec.status = resp.status_code
        if rec.outcome == Outcome.REJECTED:  # set by an earlier addon that answered the request itself
            rec.response_bytes = len(resp.raw_content or b"")
            return
        info = state.info
        relay = state.stream
        now = resp.timestamp_end or time.time()
        if relay is not None:
            meter = relay.meter
            rec.response_bytes = relay.sent_bytes
            self._timing(rec, flow, relay.first_content_at, now)
            if meter.error or resp.status_code >= 400:
                _fail(rec, Outcome.UPSTREAM_ERROR, meter.error or f"HTTP {resp.status_code}")
            elif not meter.done and info is not None and info.operation in INFERENCE:
                _fail(rec, Outcome.UPSTREAM_ERROR, "stream ended without its final event")
            self._usage(rec, info, meter.usage, meter.output_chars, meter.content_events)
            return
        rec.response_bytes = len(resp.raw_content or b"")
        self._timing(rec, flow, None, now)
        if info is None:
            return
        summary = parse_response(info, resp.get_content(strict=False) or b"")
        if resp.status_code >= 400:
            _fail(rec, Outcome.UPSTREAM_ERROR, summary.error or f"HTTP {resp.status_code}")
            return
        self._usage(rec, info, summary.usage, summary.output_chars, 0)

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        rec = state.record
        if rec.outcome == Outcome.REJECTED:
            return
        request = flow.request
        if (
            not rec.endpoint and request.path
        ):  # failed before its body was in: the path still says what it was
            rec.dialect, rec.operation = classify(request.method, request.path)
            rec.endpoint = request.path.split("?", 1)[0]
        msg = flow.error.msg if flow.error else "unknown error"
        relay = state.stream
        incoming = request.timestamp_end is None  # failed while the request was still arriving
        if msg == CLIENT_DISCONNECTED and _finished_stream(flow, relay):
            # The client hung up after the stream's final event went out: openai-python closes
            # the connection at "data: [DONE]" without reading the end of the body. It got the
            # whole answer, and the server had done all the work.
            if rec.outcome != Outcome.PROXY_ERROR:
                rec.outcome, rec.error = Outcome.OK, None
        elif msg == CLIENT_DISCONNECTED:
            _fail(rec, Outcome.CLIENT_CANCELLED, msg)
        elif incoming and PEER_CLOSED in msg:
            _fail(rec, Outcome.CLIENT_CANCELLED, HUNG_UP_MID_BODY)
        elif "body_size_limit" in msg and msg.startswith("Request"):
            _fail(rec, Outcome.REJECTED, msg)
            rec.status = 413
        elif incoming and (why := refusal(MALFORMED_BODY if msg.startswith(PROTOCOL_ERROR) else msg)):
            _fail(rec, Outcome.REJECTED, f"malformed request: {why}")  # answered 400 (addons/errors.py)
            rec.status = 400
        elif msg == KILLED:  # ended by the sidecar (an addon, or a stop past its grace period)
            _fail(rec, Outcome.PROXY_ERROR, msg)
        else:
            _fail(rec, Outcome.UPSTREAM_ERROR, unresolved_host(msg, request.host) or msg)
        rec.status = _status_sent(flow, rec)
        if relay is not None:
            rec.response_bytes = relay.sent_bytes
            self._timing(rec, flow, relay.first_content_at, time.time())
            meter = relay.meter
            self._usage(rec, state.info, meter.usage, meter.output_chars, meter.content_events)
        else:
            self._timing(rec, flow, None, time.time())

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _timing(rec: UsageRecord, flow: http.HTTPFlow, first: float | None, end: float) -> None:
        start = flow.request.timestamp_start
        rec.latency_ms = round((end - start) * 1000, 3)
        if first is not None:
            rec.ttft_ms = round((first - start) * 1000, 3)

    @staticmethod
    def _usage(
        rec: UsageRecord,
        info: RequestInfo | None,
        usage: Usage | None,
        output_chars: int,
        content_events: int,
    ) -> None:
        if info is None or info.operation not in INFERENCE:
            return
        if usage is not None:
            rec.usage_source = UsageSource.REPORTED
        elif rec.outcome == Outcome.OK or content_events or output_chars:
            # Generation happened but the server told us nothing (cancelled, cut, or a server
            # without usage): estimate rather than record zero.
            usage = estimate_usage(info, output_chars, content_events)
            rec.usage_source = UsageSource.ESTIMATED
        else:
            return
        rec.prompt_tokens = usage.prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.total_tokens = usage.total_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.reasoning_tokens = usage.reasoning_tokens
        rec.server_duration_ms = usage.server_duration_ms
        rec.tokens_per_second = _rate(rec)


def _fail(rec: UsageRecord, outcome: Outcome, error: str) -> None:
    """Set the record's outcome and error, unless the sidecar itself already failed the flow:
    that is the cause worth recording, whatever followed from it."""
    if rec.outcome != Outcome.PROXY_ERROR:
        rec.outcome, rec.error = outcome, error


def _status_sent(flow: http.HTTPFlow, rec: UsageRecord) -> int | None:
    """The status the client of a failed flow received: the response's, once its headers went
    out (a streamed response, cut later); else the proxy's own answer, or None for none at all."""
    resp = flow.response
    if resp is not None and resp.stream:
        return resp.status_code
    if rec.outcome == Outcome.UPSTREAM_ERROR:
        return 502  # mitmproxy answers it; addons/errors.py renders the body
    if rec.outcome == Outcome.REJECTED:
        return rec.status
    return None  # the client hung up first, or the sidecar ended the flow without a word


def _finished_stream(flow: http.HTTPFlow, relay: StreamRelay | None) -> bool:
    """A successful stream whose terminal event ([DONE], ``done: true``, ``response.completed``)
    has been relayed."""
    return (
        relay is not None
        and relay.meter.done
        and relay.meter.error is None
        and flow.response is not None
        and flow.response.status_code < 400
    )


def _rate(rec: UsageRecord) -> float | None:
    """Output tokens per second of generation as seen here: first token to end for streams."""
    if not rec.completion_tokens or rec.latency_ms is None:
        return None
    if rec.ttft_ms is None:  # not streamed: the whole request produced the tokens
        span_ms, tokens = rec.latency_ms, rec.completion_tokens
    else:  # streamed: the first token marks the start of generation
        span_ms, tokens = rec.latency_ms - rec.ttft_ms, rec.completion_tokens - 1
    if span_ms <= 0 or tokens <= 0:
        return None
    return round(tokens * 1000 / span_ms, 3)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


addons = [Meter()]
