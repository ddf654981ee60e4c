"""The pure parts of the limits: the truncation of record fields, the reading of a cut request
line, the measure of a parsed head and the open-files plan."""

from __future__ import annotations

import resource

import pytest
from mitmproxy import http

from agent.proxy.limits import head_over_limits, open_files_plan, request_line_start
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
