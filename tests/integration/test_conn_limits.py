"""Slow, idle and surplus client connections, through the running sidecar on real sockets: a
client that never finishes its headers is closed after header_timeout, an idle keep-alive
connection after idle_timeout, a slow stream in progress never; past max_connections a new
connection gets a 503 and is closed while the open ones keep working."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from agent.metrics import CONNECTIONS_CLOSED
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

MODEL = "sim-model"
HEADER_TIMEOUT = 8.0
SLOWLORIS = 300
PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nX-Slow: "
MODELS = b"GET /v1/models HTTP/1.1\r\nHost: sidecar\r\n\r\n"


def closed_total(reason: str) -> float:
    return CONNECTIONS_CLOSED.labels(reason)._value.get()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        await asyncio.sleep(0.02)


async def closed_at(reader: asyncio.StreamReader) -> float:
    """Read until the sidecar closes the connection; the monotonic time it did."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return time.monotonic()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection and read its whole response: (status, body)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"
    )
    return int(lines[0].split()[1]), await reader.readexactly(length)


@pytest.fixture
async def sim_paced() -> AsyncIterator[SimulatedLLM]:
    sim = SimulatedLLM("openai", token_delay=0.05)
    await sim.start()
    yield sim
    await sim.stop()


async def test_slowloris_connections_are_closed_after_header_timeout_while_a_client_is_served(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    # Long enough that a busy 2-core box accepts them all and serves the client well within it.
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, header_timeout=HEADER_TIMEOUT, idle_timeout=60.0
    )
    client = openai.AsyncOpenAI(base_url=f"{side.url}/v1", api_key="unused", max_retries=0)
    await client.models.list()  # the client's first use is not what is measured
    before = closed_total("header_timeout")
    conns = []
    for _ in range(SLOWLORIS):
        reader, writer = await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port)
        writer.write(PARTIAL_HEAD)  # and never the rest
        conns.append((time.monotonic(), reader, writer))
    closing = [asyncio.create_task(closed_at(reader)) for _, reader, _ in conns]
    await until(
        lambda: side.sidecar.limits.open >= SLOWLORIS, 10, "the slow connections were not all accepted"
    )

    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert side.sidecar.limits.open == SLOWLORIS + 1  # served while every slow client was still held
    rec = await side.record(side.last_request_id())
    assert (rec.status, rec.outcome, rec.completion_tokens) == (200, "ok", reply.usage.completion_tokens)

    done, _ = await asyncio.wait(closing, timeout=HEADER_TIMEOUT + 15)
    assert len(done) == SLOWLORIS, "slow clients still open 15 s after their header timeout"
    for (opened, _, writer), task in zip(conns, closing, strict=True):
        assert task.result() - opened >= HEADER_TIMEOUT - 0.05  # not before their header_timeout
        writer.close()
    assert closed_total("header_timeout") - before == SLOWLORIS
    await client.close()
    await until(lambda: side.sidecar.limits.open == 0, 10, "closed connections were not all released")
    assert side.count == 2  # a head that never finished is no request: no record


async def test_an_idle_keepalive_connection_is_closed_but_a_slow_stream_is_not_cut(
    sim_paced: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_paced.url, header_timeout=0.5, idle_timeout=1.0)
    idle_before, head_before = closed_total("idle_timeout"), closed_total("header_timeout")

    reader, writer = await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port)
    status, body = await exchange(reader, writer, MODELS)
    assert status == 200 and json.loads(body)["data"]
    answered = time.monotonic()
    idle = asyncio.create_task(closed_at(reader))

    # 60 tokens at 50 ms each: the stream runs three times idle_timeout, six times header_timeout.
    client = openai.AsyncOpenAI(base_url=f"{side.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=60, stream=True
    )
    started = time.monotonic()
    deltas = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 60 and time.monotonic() - started > 2 * 1.0
    rec = await side.record(side.last_request_id())
    assert (rec.outcome, rec.completion_tokens, rec.stream) == ("ok", 60, True)

    assert idle.done(), "the idle keep-alive connection was still open after the stream"
    assert idle.result() - answered >= 1.0 - 0.05  # its idle_timeout, not the shorter header_timeout
    writer.close()
    assert closed_total("idle_timeout") - idle_before >= 1

    # A keep-alive client that starts its next request and never finishes the head is closed by
    # header_timeout, counted from that first byte.
    reader, writer = await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port)
    status, _ = await exchange(reader, writer, MODELS)
    assert status == 200
    writer.write(PARTIAL_HEAD)
    first_byte = time.monotonic()
    closed = await asyncio.wait_for(closed_at(reader), 10)
    assert closed - first_byte >= 0.5 - 0.05
    writer.close()
    assert closed_total("header_timeout") - head_before == 1


async def test_one_connection_over_max_connections_is_refused_while_the_open_ones_work(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, max_connections=5, idle_timeout=30.0)
    before = closed_total("max_connections")
    open_ones = [await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port) for _ in range(5)]
    for reader, writer in open_ones:
        assert (await exchange(reader, writer, MODELS))[0] == 200
    assert side.sidecar.limits.open == 5

    reader, writer = await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port)
    refused = await asyncio.wait_for(reader.read(), 10)  # answered before it sends anything, then closed
    writer.close()
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    error = json.loads(body)["error"]
    assert "max_connections" in error["message"] and error["code"] == 503
    assert closed_total("max_connections") - before == 1

    for reader, writer in open_ones:  # the open ones were not disturbed
        assert (await exchange(reader, writer, MODELS))[0] == 200
        writer.close()
    await until(lambda: side.sidecar.limits.open == 0, 10, "the closed connections were not released")

    again = [await asyncio.open_connection("127.0.0.1", side.sidecar.proxy_port) for _ in range(5)]
    for reader, writer in again:
        assert (await exchange(reader, writer, MODELS))[0] == 200
        writer.close()
    assert closed_total("max_connections") - before == 1
