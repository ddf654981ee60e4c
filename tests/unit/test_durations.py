"""Durations and times as the CLI reads them (`--ttl`, `--since`, `--older-than`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.durations import as_utc, parse_duration, parse_since


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        (" 7d ", timedelta(days=7)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "-5m", "5 m", "1.5h", "3y", "24H", "soon"])
def test_parse_duration_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 15m, 24h"):
        parse_duration(text)


def test_parse_duration_and_since_reject_absurd_lengths() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999999w")
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_since("999999w", now=NOW)  # before year 1


NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
        ("30m", datetime(2026, 1, 2, 11, 30, tzinfo=UTC)),
        ("7d", datetime(2025, 12, 26, 12, 0, tzinfo=UTC)),
        ("2w", datetime(2025, 12, 19, 12, 0, tzinfo=UTC)),
        ("90s", datetime(2026, 1, 2, 11, 58, 30, tzinfo=UTC)),
        ("2026-01-31T12:00:00", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),  # naive = UTC
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),
        ("2026-01-31T14:00:00+02:00", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected and got.tzinfo is UTC


def test_parse_since_defaults_to_now_and_rejects_garbage() -> None:
    before = datetime.now(UTC)
    got = parse_since("1h")
    assert before - timedelta(hours=1) <= got <= datetime.now(UTC) - timedelta(hours=1)
    for bad in ("yesterday", "24", "2026-13-01", ""):
        with pytest.raises(ValueError, match="ISO-8601"):
            parse_since(bad, now=NOW)


def test_as_utc_reads_naive_as_utc_and_converts_aware() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    assert as_utc(naive) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    east = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    got = as_utc(east)
    assert got == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) and got.tzinfo is UTC
