"""Durations and points in time as people type them on the command line (`--ttl 15m`,
`--since 24h`, `--older-than 30d`), and the one rule for naive datetimes: they are UTC."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Final

from agent.records import utcnow

_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART: Final = re.compile(r"(\d+)([smhdw])")


def as_utc(ts: datetime) -> datetime:
    """Naive datetimes are UTC (a usage record's `ts` is UTC); aware ones are converted."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def parse_duration(value: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d`, `2w`, or combined like `1h30m`."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"invalid duration {value!r}: use a whole number and a unit (s, m, h, d, w), "
            "e.g. 90s, 15m, 24h, 30d, 2w or 1h30m"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long") from None


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """A relative age (`24h`, `7d`, ... before `now`) or an ISO-8601 time (naive = UTC),
    returned as an aware UTC datetime."""
    with contextlib.suppress(ValueError, OverflowError):
        return as_utc(now or utcnow()) - parse_duration(value)
    try:
        return as_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}: use an age like 30m, 24h, 7d, 2w or an ISO-8601 time "
            "like 2026-01-31T12:00:00Z"
        ) from None
