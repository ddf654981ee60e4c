"""Quota windows: fixed calendar windows, so a count is a plain sum over records whose start
falls inside one, and every caller of a scope sees the same reset time.

- minute: the UTC clock minute (hh:mm:00 to hh:mm+1:00);
- day: local midnight to midnight in `quota_timezone`;
- month: the first of the month, local midnight, to the first of the next.

Fixed windows are exact and cheap (two floats per window), at a known price: a client can spend
a minute's limit in the last second of one minute and again in the first of the next.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.quota.rules import DAY, MINUTE, MONTH


def zone(name: str) -> ZoneInfo:
    """The time zone `name` (an IANA name such as UTC or Europe/Berlin); ValueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)") from None


def bounds(period: str, now: float, tz: ZoneInfo) -> tuple[float, float]:
    """(start, end) in epoch seconds of the `period` window holding `now`."""
    if period == MINUTE:
        start = now - now % 60
        return start, start + 60
    local = datetime.fromtimestamp(now, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == DAY:
        first, nxt = midnight, midnight + timedelta(days=1)  # wall-clock arithmetic: the next midnight
    elif period == MONTH:
        first = midnight.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown quota window {period!r}")
    # Re-attaching the zone keeps the wall-clock midnight across a daylight-saving change.
    return first.replace(tzinfo=tz).timestamp(), nxt.replace(tzinfo=tz).timestamp()
