"""The record says what the client got, protocol errors are answered in JSON, and no header
value is injected anywhere: raw bytes on a socket to the running sidecar, the bytes that come
back, and the record stored for each."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.records import UsageRecord
from agent.sim import SimulatedLLM
from agent.upstream import USER_AGENT as PROBER_AGENT
from tests.support.sidecar import RunningSidecar

SECRET = "answers-test-secret-0123456789abcdef"
CHAT = json.dumps({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Answer:
    """One HTTP/1 response as it came off the socket."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.decode().partition(":") for x in lines)
        }

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    def message(self) -> str:
        assert self.headers["content-type"] == "application/json"
        error = json.loads(self.body)["error"]
        return error if isinstance(error, str) else error["message"]


async def exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send `raw` and read until the sidecar closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def port_of(side: RunningSidecar) -> int:
    return side.sidecar.proxy_port


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class RecordingUpstream:
    """An upstream that keeps every byte clients' requests bring it (not the sidecar's own
    upstream probes) and answers each request with a small 200."""

    def __init__(self) -> None:
        self.received = b""
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = b""
        while data := await reader.read(65536):
            seen += data
            if f"User-Agent: {PROBER_AGENT}".encode() not in seen:  # the sidecar's own probes aside
                self.received += data
            if b"\r\n\r\n" in data:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def recording() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def jwt_side(sim_openai: SimulatedLLM, start_sidecar: Any) -> RunningSidecar:
    return await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)  # type: ignore[no-any-return]


# -- finding 6: protocol errors get the JSON error and exactly one record ---------------------------

REFUSED = [
    pytest.param(b"GARBAGE\r\n\r\n", "", "request line", id="garbage-request-line"),
    pytest.param(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization Bearer sk-secret-42\r\n\r\n",
        "/v1/chat/completions",
        "no colon",
        id="header-without-colon",
    ),
    pytest.param(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "/v1/chat/completions",
        "Transfer-Encoding",
        id="transfer-encoding-xchunked",
    ),
    pytest.param(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "/api/chat",
        "Content-Length",
        id="two-content-lengths",
    ),
    pytest.param(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "/v1/chat/completions",
        "both Transfer-Encoding and Content-Length",
        id="content-length-and-transfer-encoding",
    ),
    pytest.param(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "/v1/chat/completions",
        "Content-Length",
        id="negative-content-length",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "", "CONNECT", id="connect"
    ),
    pytest.param(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        "/v1/chat/completions",
        "chunked framing",
        id="malformed-chunked-body",
    ),
]


@pytest.mark.parametrize(("raw", "endpoint", "said"), REFUSED)
async def test_a_request_the_http_layer_refuses_gets_a_json_400_and_one_record(
    openai_side: RunningSidecar, raw: bytes, endpoint: str, said: str
) -> None:
    before = openai_side.count
    answer = Answer(await exchange(port_of(openai_side), raw))
    assert answer.status == 400
    assert said in answer.message()
    if endpoint.startswith("/api/"):  # Ollama's shape: {"error": "..."}
        assert isinstance(json.loads(answer.body)["error"], str)
    else:
        assert json.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert b"<html>" not in answer.raw and b"mitmproxy" not in answer.raw
    assert b"sk-secret-42" not in answer.raw and b"xchunked" not in answer.raw  # nothing is echoed
    rec = await openai_side.record(answer.request_id)
    assert (rec.status, rec.outcome, rec.endpoint) == (400, "rejected", endpoint)
    assert rec.error and said in rec.error and "sk-secret" not in rec.error and "xchunked" not in rec.error
    assert rec.usage_source == "none" and rec.latency_ms is not None
    assert openai_side.count == before + 1  # exactly one record


async def test_the_connection_before_a_refused_pipelined_request_is_answered_and_both_are_recorded(
    openai_side: RunningSidecar,
) -> None:
    good = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: first-ok\r\n\r\n"
    bad = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: second-bad\r\nX-A: a\x00b\r\n\r\n"
    raw = await exchange(port_of(openai_side), good + bad)
    first, _, rest = raw.partition(b"HTTP/1.1 400")
    assert first.startswith(b"HTTP/1.1 200") and rest
    second = Answer(b"HTTP/1.1 400" + rest)
    assert second.request_id == "second-bad" and "NUL" in second.message()
    assert (await openai_side.record("first-ok")).outcome == "ok"
    rec = await openai_side.record("second-bad")
    assert (rec.status, rec.outcome, rec.endpoint) == (400, "rejected", "/v1/models")


# -- finding 5: status and outcome are what the client got ----------------------------------------------


async def test_a_non_streamed_answer_cut_mid_body_is_a_502_in_the_record_too(
    openai_side: RunningSidecar,
) -> None:
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: cut-body\r\nX-Sim-Fault: cut\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
    )
    answer = Answer(await exchange(port_of(openai_side), raw))
    assert answer.status == 502 and answer.request_id == "cut-body"
    assert answer.message() == "the LLM server behind the sidecar broke off its answer"
    assert b"sim-model" not in answer.body  # none of the half body reached the client
    rec = await openai_side.record("cut-body")
    assert (rec.status, rec.outcome) == (502, "upstream_error")
    assert rec.error and "complete message body" in rec.error


async def test_a_stream_cut_after_its_headers_keeps_the_200_the_client_got(
    openai_side: RunningSidecar,
) -> None:
    body = json.dumps({**json.loads(CHAT), "stream": True}).encode()
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: cut-stream\r\nX-Sim-Fault: cut\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    got = await exchange(port_of(openai_side), raw)
    assert got.startswith(b"HTTP/1.1 200") and b"data: " in got
    assert not got.endswith(b"0\r\n\r\n")  # no chunked terminator: the client can tell it was cut
    rec = await openai_side.record("cut-stream")
    assert (rec.status, rec.outcome) == (200, "upstream_error")
    assert rec.usage_source == "estimated"


async def test_a_client_that_hangs_up_mid_body_is_client_cancelled(openai_side: RunningSidecar) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(openai_side))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: hung-up\r\n"
        b'Content-Length: 500\r\n\r\n{"model": "sim-'
    )
    await writer.drain()
    await wait_for(lambda: openai_side.sidecar.recorder.in_flight == 1)
    writer.close()
    rec = await openai_side.record("hung-up")
    assert (rec.outcome, rec.status) == ("client_cancelled", None)  # it got no answer at all
    assert rec.endpoint == "/v1/chat/completions" and rec.operation == "chat"
    assert rec.error == "the client hung up before sending the whole request body"


async def test_a_client_that_leaves_before_a_buffered_answer_got_no_status(
    openai_side: RunningSidecar,
) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(openai_side))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: left-early\r\nX-Sim-Fault: stall\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
    )
    await writer.drain()
    # The upstream has sent its 200 headers; the proxy holds them until the body is whole.
    await wait_for(lambda: any(f.response is not None for f in openai_side.sidecar.recorder.live_flows()))
    writer.close()
    rec = await openai_side.record("left-early")
    assert (rec.outcome, rec.status) == ("client_cancelled", None)


# -- finding 7: header and log injection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"X-Request-ID: abc\rInjected: 1", "bare CR"),
        (b"X-Trace: a\x00b", "NUL"),
        (b"X-Trace: a\r\n  Injected: folded", "folded"),
    ],
    ids=["bare-cr-in-request-id", "nul", "obsolete-line-folding"],
)
async def test_bare_cr_nul_and_folded_headers_are_refused_before_they_go_anywhere(
    recording: RecordingUpstream, start_sidecar: Any, line: bytes, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    side: RunningSidecar = await start_sidecar(recording.url)
    caplog.set_level(logging.DEBUG)
    raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + line + b"\r\nContent-Length: 2\r\n\r\n{}"
    answer = Answer(await exchange(port_of(side), raw))
    assert answer.status == 400 and said in answer.message()
    head = answer.raw.partition(b"\r\n\r\n")[0]
    assert b"Injected" not in answer.raw and b"\r" not in head.replace(b"\r\n", b"")
    assert uuid.UUID(answer.request_id).version == 7  # generated: the client's id was not kept
    rec = await side.record(answer.request_id)
    assert (rec.status, rec.outcome, rec.endpoint) == (400, "rejected", "/v1/chat/completions")
    assert recording.received == b""  # nothing went upstream
    assert not [r for r in caplog.records if "\r" in r.getMessage() or "\x00" in r.getMessage()]


@pytest.mark.parametrize("bad", [b"a b<c>", b"x" * 129, b"id;rm -rf", "caf\u00e9".encode()])
async def test_an_invalid_request_id_is_replaced_everywhere_and_the_client_is_told(
    jwt_side: RunningSidecar, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: " + bad + b"\r\n\r\n"
    answer = Answer(await exchange(port_of(jwt_side), raw))
    assert answer.status == 401  # the sidecar's own answer
    assert uuid.UUID(answer.request_id).version == 7 and answer.headers["x-request-id-replaced"] == "1"
    assert bad not in answer.raw
    rec = await jwt_side.record(answer.request_id)
    assert rec.outcome == "rejected" and rec.request_id == answer.request_id
    assert not [r for r in caplog.records if bad.decode() in r.getMessage()]


async def test_a_valid_request_id_reaches_the_upstream_and_comes_back(
    recording: RecordingUpstream, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(recording.url)
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: job-7:step.2_a-b\r\n\r\n"
    answer = Answer(await exchange(port_of(side), raw))
    assert answer.status == 200 and answer.request_id == "job-7:step.2_a-b"
    assert "x-request-id-replaced" not in answer.headers
    assert b"X-Request-ID: job-7:step.2_a-b\r\n" in recording.received
    rec: UsageRecord = await side.record("job-7:step.2_a-b")
    assert rec.outcome == "ok"


async def test_a_replaced_id_is_the_one_the_upstream_sees(
    recording: RecordingUpstream, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(recording.url)
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: <bad id>\r\n\r\n"
    answer = Answer(await exchange(port_of(side), raw))
    assert answer.status == 200 and answer.headers["x-request-id-replaced"] == "1"
    assert b"<bad id>" not in recording.received
    assert f"X-Request-ID: {answer.request_id}\r\n".encode() in recording.received
    assert (await side.record(answer.request_id)).status == 200
