"""The pure parts of the limits: the truncation of record fields, the reading of a cut request
line, the measure of a parsed head and the open-files plan."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable

import pytest
from mitmproxy import http

from agent.proxy.limits import (
    ConnectionClock,
    ConnectionLimits,
    fit_open_files,
    head_over_limits,
    open_files_plan,
    request_line_start,
)
from agent.records import TEXT_LIMITS, TRUNCATED, UsageRecord, bound_text_fields, bounded

INF = resource.RLIM_INFINITY


@pytest.mark.parametrize("length", [1025, 2000, 10**6, 4 * 2**20 + 5])
def test_a_cut_value_is_exactly_the_limit_long_and_counts_what_it_dropped(length: int) -> None:
    value = "x" * length
    cut = bounded(value, 1024)
    assert len(cut) == 1024
    kept = cut.index("…")
    assert cut[kept:] == TRUNCATED.format(length - kept)


def test_values_within_their_limit_are_kept_as_they_are() -> None:
    assert bounded("x" * 1024, 1024) == "x" * 1024
    rec = UsageRecord(request_id="r", model="llama3.2", user="alice", endpoint="/v1/chat/completions")
    bound_text_fields(rec)
    assert (rec.model, rec.user, rec.endpoint, rec.team) == (
        "llama3.2",
        "alice",
        "/v1/chat/completions",
        None,
    )


def test_every_text_field_is_bounded() -> None:
    big = "y" * 10**6
    rec = UsageRecord(request_id=big, **{name: big for name, _ in TEXT_LIMITS if name != "request_id"})
    bound_text_fields(rec)
    for name, limit in TEXT_LIMITS:
        assert len(getattr(rec, name)) == limit, name


@pytest.mark.parametrize(
    ("head", "method", "path"),
    [
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n", "GET", "/v1/models"),
        (b"POST /api/chat?x=1 HTTP/1.1\r\n", "POST", "/api/chat?x=1"),
        (b"GET /v1/aaaaaaaa", "GET", "/v1/aaaaaaaa"),  # the line was cut before its version
        (b"GET", "GET", ""),
        (b"GET /\xff HTTP/1.1\r\n", "GET", "/\ufffd"),  # stored text is valid UTF-8
    ],
)
def test_the_start_of_a_request_line(head: bytes, method: str, path: str) -> None:
    assert request_line_start(head) == (method, path)


def test_a_parsed_head_is_measured_as_it_came_on_the_wire() -> None:
    request = http.Request.make("GET", "http://x/v1/" + "a" * 100, headers={"X-Big": "b" * 200})
    line = len("GET /v1/" + "a" * 100 + " HTTP/1.1\r\n")
    assert head_over_limits(request, line, 10_000) is None
    too_long = head_over_limits(request, line - 1, 10_000)
    assert too_long is not None and too_long[0] == 414 and f"longer than {line - 1} bytes" in too_long[1]
    over = head_over_limits(request, 10_000, line + 200)
    assert over is not None and over[0] == 431 and "max_header_size" in over[1]


def test_the_open_files_limit_is_raised_to_fit_or_the_connections_lowered() -> None:
    need = 2 * 4096 + 64
    assert open_files_plan(4096, 1024, 524288) == (need, 4096)  # systemd's default: raised
    assert open_files_plan(4096, 1048576, 1048576) == (1048576, 4096)  # a container's: enough
    assert open_files_plan(4096, 1024, INF) == (need, 4096)
    assert open_files_plan(4096, INF, INF) == (INF, 4096)
    assert open_files_plan(4096, 1024, 4096) == (4096, (4096 - 64) // 2)  # the hard limit is short


def test_start_up_raises_the_soft_limit_or_warns_and_lowers_the_connections(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits: dict[str, tuple[int, int]] = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _which, value: limits.__setitem__("now", value))
    assert fit_open_files(500) == 500 and limits["now"] == (2 * 500 + 64, 4096)  # raised, quietly
    assert not caplog.records
    limits["now"] = (1024, 4096)
    assert fit_open_files(4096) == (4096 - 64) // 2 and limits["now"] == (4096, 4096)
    assert "accepting at most 2016 client connections" in caplog.text and "ulimit -Hn" in caplog.text


class _Handler:
    """What a clock needs of its connection handler, with the write buffer in the test's hands."""

    def __init__(self) -> None:
        self.client = object()
        self.buffered = False
        self.closed: list[str] = []

    def sending(self) -> bool:
        return self.buffered

    def close_client(self, reason: str) -> None:
        self.closed.append(reason)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_idle_timeout_waits_for_a_slow_reader_to_take_its_response() -> None:
    limits = ConnectionLimits()
    limits.header_timeout, limits.idle_timeout = 0.05, 0.1
    limits._derive()
    handler = _Handler()
    clock = ConnectionClock(limits, handler)  # type: ignore[arg-type]
    clock.busy()
    clock.idle()  # the response hook ran, but its bytes are still queued for the client
    handler.buffered = True
    await asyncio.sleep(0.4)  # four idle timeouts pass while the client is still reading
    assert handler.closed == []
    handler.buffered = False  # it has read everything: now it is idle
    await _until(lambda: handler.closed == ["idle_timeout"])
    clock.stop()


async def test_a_clock_in_progress_never_fires_and_a_new_head_gets_the_header_timeout() -> None:
    limits = ConnectionLimits()
    limits.header_timeout, limits.idle_timeout = 0.05, 10.0
    limits._derive()
    handler = _Handler()
    clock = ConnectionClock(limits, handler)  # type: ignore[arg-type]
    clock.busy()
    await asyncio.sleep(0.2)
    assert handler.closed == []
    clock.idle()
    clock.head_data(b"GET / HT")  # the next request's first bytes: 0.05 s, not 10 s
    await _until(lambda: handler.closed == ["header_timeout"])
    clock.stop()
