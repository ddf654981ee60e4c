"""Usage statistics over a time window, per group: what `/ops/stats` and `sidemeter stats`
answer.

Whole hours come from the rollups (`agent/store/rollups.py`), the partial hours at the window's
edges from the records, with the same SQL expressions, so counts and sums are exact for any
window. Percentiles (nearest rank) come from the rollups' log-spaced buckets and are within
`PERCENTILE_ERROR` of the exact ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import peewee

from agent.durations import as_utc, parse_duration
from agent.records import utcnow
from agent.store.rollups import (
    DIMENSIONS,
    HOUR,
    METRICS,
    RELATIVE_ERROR,
    RollupSql,
    bucket_value,
    ceil_hour,
    floor_hour,
    grouping_name,
    rolled_hours,
)
from agent.store.schema import UsageHistogram, UsageRollup, ts_to_db

PERCENTILE_ERROR: Final = 0.01  # the bound promised to callers; the buckets give RELATIVE_ERROR
assert RELATIVE_ERROR <= PERCENTILE_ERROR
WINDOWS: Final = ("5m", "15m", "1h", "6h", "24h", "7d", "30d")  # what `allowed` suggests
DEFAULT_WINDOW: Final = "24h"
MAX_GROUP_BY: Final = 2
_PERCENTILES: Final = {"latency_ms": (50, 95, 99), "ttft_ms": (50, 95, 99), "tokens_per_second": (50,)}


class StatsError(ValueError):
    """A window or grouping that cannot be answered; `allowed` lists what can."""

    def __init__(self, message: str, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.allowed = list(allowed)


@dataclasses.dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()


def _allowed_windows(retention: timedelta) -> list[str]:
    return [w for w in WINDOWS if parse_duration(w) <= retention]


def parse_window(text: str, retention: timedelta) -> timedelta:
    """`15m`, `24h`, `7d`, ... (any positive duration up to the retention)."""
    try:
        length = parse_duration(text)
    except ValueError:
        raise StatsError(
            f"unknown window {text!r}: use a duration like 15m, 24h or 7d", _allowed_windows(retention)
        ) from None
    if length <= timedelta(0):
        raise StatsError(
            f"window {text!r} is empty: use a duration like 15m, 24h or 7d", _allowed_windows(retention)
        )
    _check_retention(length, retention)
    return length


def _check_retention(length: timedelta, retention: timedelta) -> None:
    if length > retention:
        raise StatsError(
            f"a window of {_human(length)} is longer than the retention of {_human(retention)}: "
            "records older than that are not kept",
            _allowed_windows(retention),
        )


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_time(text: str, name: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise StatsError(
            f"{name} {text!r} is not an ISO-8601 time: use e.g. 2026-01-31T12:00:00Z", ["ISO-8601"]
        ) from None


def resolve_window(
    *,
    window: str | None,
    since: str | None,
    until: str | None,
    retention: timedelta,
    now: datetime | None = None,
) -> Window:
    """The window a request names: `window` back from now (24h when nothing is given), or
    `since` (and `until`, default now) as ISO-8601 times."""
    now = as_utc(now or utcnow())
    if window is not None and (since is not None or until is not None):
        raise StatsError("give either window or since/until, not both", ["window", "since", "until"])
    if since is None and until is not None:
        raise StatsError("until needs since", ["since"])
    if since is None:
        return Window(now - parse_window(window or DEFAULT_WINDOW, retention), now)
    start = parse_time(since, "since")
    end = parse_time(until, "until") if until is not None else now
    if end <= start:
        raise StatsError(f"until ({end.isoformat()}) must be later than since ({start.isoformat()})", [])
    _check_retention(end - start, retention)
    return Window(start, end)


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """Zero to two of DIMENSIONS, comma-separated, in the caller's order."""
    if text is None or not text.strip():
        return ()
    dims = tuple(part.strip() for part in text.split(","))
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise StatsError(f"unknown group_by dimension {unknown[0]!r}", DIMENSIONS)
    if len(set(dims)) != len(dims):
        raise StatsError(f"group_by names a dimension twice: {text!r}", DIMENSIONS)
    if len(dims) > MAX_GROUP_BY:
        raise StatsError(f"group_by takes at most {MAX_GROUP_BY} dimensions, got {len(dims)}", DIMENSIONS)
    return dims


# -- computing ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Group:
    sums: list[int] = dataclasses.field(default_factory=lambda: [0] * 7)
    histograms: list[dict[int, int]] = dataclasses.field(default_factory=lambda: [{} for _ in METRICS])

    def add_sums(self, values: Sequence[Any]) -> None:
        for i, v in enumerate(values):
            self.sums[i] += int(v or 0)  # PostgreSQL's SUM of BIGINT is a Decimal

    def add_bucket(self, metric: int, bucket: int, n: Any) -> None:
        hist = self.histograms[metric]
        hist[bucket] = hist.get(bucket, 0) + int(n)


def _percentile(hist: dict[int, int], q: int) -> float | None:
    """Nearest rank: the value of the ceil(q% * n)-th smallest sample, from its bucket."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total / 100))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return float(f"{bucket_value(bucket):.6g}")
    raise AssertionError("unreachable")


def _stats(group: _Group) -> dict[str, Any]:
    requests, errors, tokens_in, tokens_out, cached, reasoning, estimated = group.sums
    out: dict[str, Any] = {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "estimated": estimated,
        "estimated_share": estimated / requests if requests else 0.0,
    }
    for i, metric in enumerate(METRICS):
        out[metric] = {f"p{q}": _percentile(group.histograms[i], q) for q in _PERCENTILES[metric]}
    return out


def _number(x: float) -> float | int:
    return int(x) if x == int(x) else x


def _iso(ts: datetime) -> str:
    return as_utc(ts).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Reader:
    def __init__(self, db: peewee.Database, group_by: Sequence[str]) -> None:
        self.db = db
        self.sql = RollupSql(db)
        self.canonical = tuple(d for d in DIMENSIONS if d in group_by)
        self.groups: dict[tuple[str, str], _Group] = {}

    def group(self, k1: str, k2: str) -> _Group:
        key = (k1, k2)
        found = self.groups.get(key)
        if found is None:
            found = self.groups[key] = _Group()
        return found

    def add_hours(self, start: datetime, end: datetime) -> None:
        """Whole hours [start, end) from the rollups."""
        q, p = self.sql.q, self.sql.param
        where = f"dims = {p} AND hour >= {p} AND hour < {p}"
        params = [grouping_name(self.canonical), ts_to_db(start), ts_to_db(end)]
        sums = ", ".join(
            f"SUM({q(c)})"
            for c in (
                "requests",
                "errors",
                "tokens_in",
                "tokens_out",
                "cached_tokens",
                "reasoning_tokens",
                "estimated",
            )
        )
        rollups = q(UsageRollup._meta.table_name)
        for k1, k2, *values in self.db.execute_sql(
            f"SELECT k1, k2, {sums} FROM {rollups} WHERE {where} GROUP BY k1, k2", params
        ):
            self.group(k1, k2).add_sums(values)
        histograms = q(UsageHistogram._meta.table_name)
        for k1, k2, metric, bucket, n in self.db.execute_sql(
            f"SELECT k1, k2, metric, bucket, SUM(n) FROM {histograms} WHERE {where} "
            "GROUP BY k1, k2, metric, bucket",
            params,
        ):
            self.group(k1, k2).add_bucket(metric, bucket, n)

    def add_records(self, ranges: Sequence[tuple[datetime, datetime]]) -> None:
        """The records in these ranges (the window's partial hours), with the rollups' own
        expressions."""
        q, p = self.sql.q, self.sql.param
        where = " OR ".join(f"({q('ts')} >= {p} AND {q('ts')} < {p})" for _ in ranges)
        params = [ts_to_db(ts) for span in ranges for ts in span]
        cte = self.sql.records(where)
        k1, k2 = self.sql.keys(self.canonical)
        keys = [f"d_{d}" for d in self.canonical]
        group_by = ("GROUP BY " + ", ".join(keys)) if keys else ""
        for row in self.db.execute_sql(
            f"{cte} SELECT {k1}, {k2}, {self.sql.sums()} FROM b {group_by}", params
        ):
            self.group(row[0], row[1]).add_sums(row[2:])
        selects = [
            f"SELECT {k1} AS k1, {k2} AS k2, {i} AS m, b{i} AS bucket, COUNT(*) AS n FROM b "
            f"WHERE b{i} IS NOT NULL GROUP BY {', '.join([*keys, f'b{i}'])}"
            for i in range(len(METRICS))
        ]
        for k1_value, k2_value, metric, bucket, n in self.db.execute_sql(
            f"{cte} {' UNION ALL '.join(selects)}", params
        ):
            self.group(k1_value, k2_value).add_bucket(metric, bucket, n)


@contextlib.contextmanager
def _snapshot(db: peewee.Database) -> Iterator[None]:
    """One consistent view for all the queries (an hour may be rolled up meanwhile)."""
    with db.atomic():
        if not isinstance(db, peewee.SqliteDatabase):  # SQLite's read transactions are snapshots
            db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _uncovered(
    since: datetime, until: datetime, hours: Sequence[datetime]
) -> list[tuple[datetime, datetime]]:
    """[since, until) without the given whole hours, as ranges."""
    ranges: list[tuple[datetime, datetime]] = []
    start = since
    for hour in hours:
        if start < hour:
            ranges.append((start, hour))
        start = hour + HOUR
    if start < until:
        ranges.append((start, until))
    return ranges


def compute_stats(
    db: peewee.Database,
    since: datetime,
    until: datetime,
    group_by: Sequence[str] = (),
    *,
    snapshot: bool = True,
) -> dict[str, Any]:
    """Requests, errors, tokens and latency, TTFT and tokens/s percentiles of the records with
    `since <= ts < until`, in total and per group of `group_by` (0-2 of DIMENSIONS; a value
    that is missing or empty is reported as null). Groups are sorted by requests, most first.
    `snapshot=False` for a connection shared with the writer (`:memory:`), which must not
    open a transaction of its own."""
    since, until = as_utc(since), as_utc(until)
    reader = _Reader(db, group_by)
    with _snapshot(db) if snapshot else contextlib.nullcontext():
        first, last = ceil_hour(since), floor_hour(until)
        rolled = rolled_hours(db, first, last) if first < last else []
        if rolled:
            reader.add_hours(first, last)  # only rolled-up hours have rollup rows
        raw = _uncovered(since, until, rolled)
        if raw:
            reader.add_records(raw)

    total = _Group()
    groups = []
    position = {d: i for i, d in enumerate(reader.canonical)}
    for (k1, k2), group in reader.groups.items():
        if not group.sums[0]:
            continue
        total.add_sums(group.sums)
        for metric, hist in enumerate(group.histograms):
            for bucket, n in hist.items():
                total.add_bucket(metric, bucket, n)
        values = (k1, k2)
        key = {d: (values[position[d]] or None) for d in group_by}
        groups.append({"key": key, **_stats(group)})
    groups.sort(key=lambda g: (-g["requests"], [str(v) for v in g["key"].values()]))
    return {
        "since": _iso(since),
        "until": _iso(until),
        "window_s": _number((until - since).total_seconds()),
        "group_by": list(group_by),
        "percentiles": "approximate",
        "percentile_error": PERCENTILE_ERROR,
        "total": _stats(total),
        "groups": groups if group_by else [],
    }
