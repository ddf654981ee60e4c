"""Meter LLM traffic: classify each request, time it, and read token usage from the response.

The usage record travels on the flow (`flow.metadata[RECORD]`) and is filled in as the
exchange happens; `addons/record.py` hands it to the store when the flow ends.
Load standalone with `mitmdump --mode reverse:http://127.0.0.1:11434 -s addons/meter.py -s addons/record.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons import headers as hdr
from agent.records import UsageRecord, new_request_id
from agent.settings import declare_options, option_names, read_options
from agent.wire import (
    RequestInfo,
    StreamMeter,
    Usage,
    add_include_usage,
    estimate_usage,
    make_decoder,
    parse_request,
    parse_response,
    should_inject_usage,
)

RECORD = "sidemeter.record"
INFO = "sidemeter.info"
STREAM = "sidemeter.stream"
INJECTED = "sidemeter.injected"  # we asked for usage: the stream needs the added chunk removed
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
CLIENT_DISCONNECTED = "Client disconnected."
STREAM_CONTENT_TYPES = ("text/event-stream", "application/x-ndjson")
INFERENCE = ("chat", "completion", "embedding", "responses")


def record_of(flow: http.HTTPFlow) -> UsageRecord:
    """The flow's usage record, created on first use so any addon may touch it first."""
    rec = flow.metadata.get(RECORD)
    if rec is None:
        rec = _new_record(flow, hdr.get(flow.request.headers, REQUEST_ID_KEY))
    return rec


def _new_record(flow: http.HTTPFlow, sent_id: str | None) -> UsageRecord:
    rec = UsageRecord(request_id=sent_id[:128] if sent_id else new_request_id())
    flow.metadata[RECORD] = rec
    return rec


class _StreamState:
    """Everything the per-chunk callback touches, kept small: this runs for every chunk."""

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
        self.capture_prompts = False

    def load(self, loader: Loader) -> None:
        declare_options(loader, "meter")  # sidemeter_inject_usage, sidemeter_capture_prompts

    def configure(self, updated: set[str]) -> None:
        if updated & option_names("meter"):
            values = read_options(ctx.options, "meter")
            self.inject_usage = values["inject_usage"]
            self.capture_prompts = values["capture_prompts"]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        sent_id = hdr.get(headers, REQUEST_ID_KEY)
        rec = flow.metadata.get(RECORD) or _new_record(flow, sent_id)
        if sent_id != rec.request_id:
            hdr.put(headers, REQUEST_ID_HEADER, rec.request_id)
        rec.ts = _utc(flow.request.timestamp_start)
        rec.client_ip = flow.client_conn.peername[0] if flow.client_conn.peername else None
        rec.upstream = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}"

    def request(self, flow: http.HTTPFlow) -> None:
        rec = record_of(flow)
        body = flow.request.raw_content or b""
        rec.request_bytes = len(body)
        if hdr.get(flow.request.headers, b"content-encoding"):
            body = flow.request.get_content(strict=False) or b""
        info = parse_request(flow.request.method, flow.request.path, body)
        flow.metadata[INFO] = info
        rec.dialect, rec.operation, rec.endpoint = info.dialect, info.operation, info.endpoint
        rec.model, rec.stream = info.model, info.stream
        if self.capture_prompts and info.prompt_text:
            rec.prompt = info.prompt_text
        if flow.response is not None:  # answered already (e.g. rejected by auth): nothing goes upstream
            return
        if self.inject_usage and should_inject_usage(info):
            flow.request.content = add_include_usage(body)
            # The stream gets edited on its way through, which needs it uncompressed.
            hdr.put(flow.request.headers, "accept-encoding", "identity")
            flow.metadata[INJECTED] = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        rec = record_of(flow)
        headers = flow.response.headers
        hdr.put(headers, REQUEST_ID_HEADER, rec.request_id)
        info: RequestInfo | None = flow.metadata.get(INFO)
        ctype = hdr.get(headers, b"content-type") or ""
        if info is None or not ctype.startswith(STREAM_CONTENT_TYPES):
            return  # buffered; counted in `response`
        encoding = hdr.get(headers, b"content-encoding")
        strip = INJECTED in flow.metadata and not encoding
        state = _StreamState(StreamMeter(info, strip_usage_chunk=strip), make_decoder(encoding))
        flow.metadata[STREAM] = state
        flow.response.stream = state

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        rec = record_of(flow)
        resp = flow.response
        rec.status = resp.status_code
        if rec.outcome == "rejected":  # set by an earlier addon that answered the request itself
            rec.response_bytes = len(resp.raw_content or b"")
            return
        info: RequestInfo | None = flow.metadata.get(INFO)
        state = flow.metadata.get(STREAM)
        now = resp.timestamp_end or time.time()
        if isinstance(state, _StreamState):
            meter = state.meter
            rec.response_bytes = state.sent_bytes
            self._timing(rec, flow, state.first_content_at, now)
            if meter.error or resp.status_code >= 400:
                rec.outcome, rec.error = "upstream_error", meter.error or f"HTTP {resp.status_code}"
            elif not meter.done and info is not None and info.operation in INFERENCE:
                rec.outcome, rec.error = "upstream_error", "stream ended without its final event"
            self._usage(rec, info, meter.usage, meter.output_chars, meter.content_events)
            return
        rec.response_bytes = len(resp.raw_content or b"")
        self._timing(rec, flow, None, now)
        if info is None:
            return
        summary = parse_response(info, resp.get_content(strict=False) or b"")
        if resp.status_code >= 400:
            rec.outcome = "upstream_error"
            rec.error = summary.error or f"HTTP {resp.status_code}"
            return
        self._usage(rec, info, summary.usage, summary.output_chars, 0)

    def error(self, flow: http.HTTPFlow) -> None:
        rec = record_of(flow)
        if rec.outcome == "rejected":
            return
        msg = flow.error.msg if flow.error else "unknown error"
        info: RequestInfo | None = flow.metadata.get(INFO)
        state = flow.metadata.get(STREAM)
        now = time.time()
        rec.error = msg
        if msg == CLIENT_DISCONNECTED and _finished_stream(flow, state):
            # The client hung up after the stream's final event went out: openai-python closes
            # the connection at "data: [DONE]" without reading the end of the body. It got the
            # whole answer, and the server had done all the work.
            rec.outcome, rec.error = "ok", None
        elif msg == CLIENT_DISCONNECTED:
            rec.outcome = "client_cancelled"
        elif "body_size_limit" in msg:
            rec.outcome, rec.status = "rejected", 413
        else:
            rec.outcome = "upstream_error"
        if flow.response is not None:
            rec.status = flow.response.status_code
        elif rec.outcome == "upstream_error":
            rec.status = 502  # what mitmproxy answers; addons/errors.py renders the body
        if isinstance(state, _StreamState):
            rec.response_bytes = state.sent_bytes
            self._timing(rec, flow, state.first_content_at, now)
            meter = state.meter
            self._usage(rec, info, meter.usage, meter.output_chars, meter.content_events)
        else:
            self._timing(rec, flow, None, now)

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
            rec.usage_source = "reported"
        elif rec.outcome == "ok" or content_events or output_chars:
            # Generation happened but the server told us nothing (cancelled, cut, or a server
            # without usage): estimate rather than record zero.
            usage = estimate_usage(info, output_chars, content_events)
            rec.usage_source = "estimated"
        else:
            return
        rec.prompt_tokens = usage.prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.total_tokens = usage.total_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.reasoning_tokens = usage.reasoning_tokens
        rec.server_duration_ms = usage.server_duration_ms
        rec.tokens_per_second = _rate(rec)


def _finished_stream(flow: http.HTTPFlow, state: object) -> bool:
    """A successful stream whose terminal event ([DONE], ``done: true``, ``response.completed``)
    has been relayed."""
    return (
        isinstance(state, _StreamState)
        and state.meter.done
        and state.meter.error is None
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
