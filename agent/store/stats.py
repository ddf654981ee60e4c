"""Usage statistics over a time window, per group: what `/ops/stats` and `sidemeter stats`
answer.

Whole hours, then whole 5-minute periods, come from the rollups (`agent/store/rollups.py`);
the rest of the window (the minutes at its edges, periods not rolled up yet) from the records,
with the same SQL expressions, so counts and sums are exact for any window. Percentiles
(nearest rank) come from log-spaced buckets and are within `PERCENTILE_ERROR` of the exact ones.
A fleet's answer adds up every sidecar's rollups; one sidecar's (`instance`) reads its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import peewee

from agent.durations import as_utc, parse_duration
from agent.records import utcnow
from agent.store.rollups import (
    COST_SCALE,
    DIMENSIONS,
    METRICS,
    RELATIVE_ERROR,
    SPANS,
    SUMS,
    Cell,
    RollupSql,
    grouping_name,
    rolled_periods,
)
from agent.store.schema import ROLLUP_TABLE, ts_to_db

PERCENTILE_ERROR: Final = 0.01  # the bound promised to callers; the buckets give RELATIVE_ERROR
assert RELATIVE_ERROR <= PERCENTILE_ERROR
WINDOWS: Final = ("5m", "15m", "1h", "6h", "24h", "7d", "30d")  # what `allowed` suggests
DEFAULT_WINDOW: Final = "24h"
MAX_GROUP_BY: Final = 2
INSTANCE: Final = "instance"  # a group_by dimension too: the sidecar that metered the records
GROUP_BY: Final = (*DIMENSIONS, INSTANCE)
SCOPES: Final = ("local", "fleet")
DEFAULT_SCOPE: Final = "fleet"
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
    """Zero to two of GROUP_BY, comma-separated, in the caller's order."""
    if text is None or not text.strip():
        return ()
    dims = tuple(part.strip() for part in text.split(","))
    unknown = [d for d in dims if d not in GROUP_BY]
    if unknown:
        raise StatsError(f"unknown group_by dimension {unknown[0]!r}", GROUP_BY)
    if len(set(dims)) != len(dims):
        raise StatsError(f"group_by names a dimension twice: {text!r}", GROUP_BY)
    if len(dims) > MAX_GROUP_BY:
        raise StatsError(f"group_by takes at most {MAX_GROUP_BY} dimensions, got {len(dims)}", GROUP_BY)
    return dims


def parse_scope(text: str | None) -> str:
    """`local` (one sidecar's records) or `fleet` (every sidecar's in the store, the default:
    a sidecar's instance id changes with its pod or port, and local would hide what it
    wrote under the old one)."""
    scope = DEFAULT_SCOPE if text is None else text.strip()
    if scope not in SCOPES:
        raise StatsError(f"unknown scope {text!r}: use local or fleet", SCOPES)
    return scope


# -- computing ------------------------------------------------------------------------------------


def _stats(group: Cell) -> dict[str, Any]:
    requests, errors, tokens_in, tokens_out, cached, reasoning, estimated, costed, cost_e9 = group.sums
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
        "cost": cost_e9 / COST_SCALE if costed else None,
        "costed": costed,
    }
    for i, metric in enumerate(METRICS):
        qs = _PERCENTILES[metric]
        out[metric] = {f"p{q}": _rounded(v) for q, v in zip(qs, group.percentiles(i, qs), strict=True)}
    return out


def _rounded(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def _number(x: float) -> float | int:
    return int(x) if x == int(x) else x


def _iso(ts: datetime) -> str:
    return as_utc(ts).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Reader:
    """The groups of one answer. A group's key is (instance or "", k1, k2): the instance only
    when grouping by it, so a fleet's sidecars add up in one group otherwise."""

    def __init__(self, db: peewee.Database, group_by: Sequence[str], instance: str | None) -> None:
        self.db = db
        self.sql = RollupSql(db)
        self.canonical = tuple(d for d in DIMENSIONS if d in group_by)
        self.by_instance = INSTANCE in group_by
        self.instance = instance  # None: every instance
        self.groups: dict[tuple[str, str, str], Cell] = {}
        self.raw_total = Cell()  # what add_records added, over all groups

    def group(self, instance: str, k1: str, k2: str) -> Cell:
        key = (instance if self.by_instance else "", k1, k2)
        found = self.groups.get(key)
        if found is None:
            found = self.groups[key] = Cell()
        return found

    def add_periods(self, span_s: int, periods: Sequence[datetime]) -> None:
        """Rolled-up periods, from the rollups."""
        q, p = self.sql.q, self.sql.param
        columns = ", ".join(q(c) for c in ("instance", "k1", "k2", *SUMS, *METRICS))
        width = len(SUMS)
        query = (
            f"SELECT {columns} FROM {q(ROLLUP_TABLE)} "
            f"WHERE span_s = {p} AND dims = {p} AND period >= {p} AND period <= {p}"
        )
        scope: list[object] = []
        if self.instance is not None:
            query += f" AND instance = {p}"
            scope.append(self.instance)
        for first, last in _runs(periods, timedelta(seconds=span_s)):
            params = [span_s, grouping_name(self.canonical), ts_to_db(first), ts_to_db(last), *scope]
            for instance, k1, k2, *values in self.db.execute_sql(query, params):
                cell = self.group(instance, k1, k2)
                cell.add_sums(values[:width])
                for metric, text in enumerate(values[width:]):
                    cell.add_encoded(metric, text)

    def add_records(self, ranges: Sequence[tuple[datetime, datetime]]) -> None:
        """The records in these ranges (the window's partial periods), with the rollups' own
        expressions."""
        params: list[object] = [ts_to_db(ts) for span in ranges for ts in span]
        where = f"({self.sql.where_ts(len(ranges))})"
        if self.instance is not None:
            # A record without an instance is "" in the rollups.
            column = self.sql.q("instance")
            if self.instance:
                where += f" AND {column} = {self.sql.param}"
                params.append(self.instance)
            else:
                where += f" AND ({column} IS NULL OR {column} = '')"
        sql = self.sql.aggregate(where, self.canonical, per_instance=self.by_instance)
        n = len(self.canonical) + self.by_instance
        for row in self.db.execute_sql(sql, params):
            keys = [*row[:n], "", "", ""] if self.by_instance else ["", *row[:n], "", ""]
            cell = self.group(keys[0], keys[1], keys[2])
            metric = row[n]
            for target in (cell, self.raw_total):
                if metric < 0:
                    target.add_sums(row[n + 2 :])
                else:
                    target.add_bucket(metric, row[n + 1], int(row[n + 2]))


def _runs(periods: Sequence[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Consecutive periods as (first, last) pairs."""
    runs: list[tuple[datetime, datetime]] = []
    for period in periods:
        if runs and runs[-1][1] + step == period:
            runs[-1] = (runs[-1][0], period)
        else:
            runs.append((period, period))
    return runs


@contextlib.contextmanager
def _snapshot(db: peewee.Database) -> Iterator[None]:
    """One consistent view for all the queries (an hour may be rolled up meanwhile)."""
    with db.atomic():
        if not isinstance(db, peewee.SqliteDatabase):  # SQLite's read transactions are snapshots
            db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _plan(
    db: peewee.Database, since: datetime, until: datetime
) -> tuple[list[tuple[int, list[datetime]]], list[tuple[datetime, datetime]]]:
    """Which rolled-up periods cover the window (whole hours first, then 5 minutes in the
    gaps), and the ranges left to read from the records."""
    gaps = [(since, until)]
    covered: list[tuple[int, list[datetime]]] = []
    for span_s in SPANS:
        step = timedelta(seconds=span_s)
        taken: list[datetime] = []
        rest: list[tuple[datetime, datetime]] = []
        for start, end in gaps:
            periods = rolled_periods(db, span_s, start, end)
            taken += periods
            cursor = start
            for period in periods:
                if cursor < period:
                    rest.append((cursor, period))
                cursor = period + step
            if cursor < end:
                rest.append((cursor, end))
        covered.append((span_s, taken))
        gaps = rest
    return covered, gaps


def compute_stats(
    db: peewee.Database,
    since: datetime,
    until: datetime,
    group_by: Sequence[str] = (),
    *,
    instance: str | None = None,
    snapshot: bool = True,
    rollups: bool = True,
) -> dict[str, Any]:
    """Requests, errors, tokens, cost and latency, TTFT and tokens/s percentiles of the records
    with `since <= ts < until` (of one sidecar, `instance`; of all when None; "" names the
    records without one), in total and per group of `group_by` (0-2 of GROUP_BY; a value
    that is missing or empty is reported as null). Groups are sorted by requests, most first.
    `snapshot=False` for a connection shared with the writer (`:memory:`), which must not
    open a transaction of its own. `rollups=False` reads every record (the reference the
    tests and the bench compare with)."""
    since, until = as_utc(since), as_utc(until)
    reader = _Reader(db, group_by, instance)
    # The total of a grouped answer reads the rollups' own total rather than merging every
    # group's buckets: a few rows instead of all of them.
    totals = _Reader(db, (), instance)
    with _snapshot(db) if snapshot else contextlib.nullcontext():
        covered, raw = _plan(db, since, until) if rollups else ([], [(since, until)])
        for span_s, periods in covered:
            reader.add_periods(span_s, periods)
            if group_by:
                totals.add_periods(span_s, periods)
        if raw:
            reader.add_records(raw)
    if group_by:
        total = totals.group("", "", "")
        total.merge(reader.raw_total)
    else:
        total = reader.group("", "", "")

    groups = []
    position = {d: i for i, d in enumerate(reader.canonical)}
    for (inst, k1, k2), group in reader.groups.items():
        if not group.sums[0]:
            continue
        values = (k1, k2)
        key = {d: ((inst if d == INSTANCE else values[position[d]]) or None) for d in group_by}
        groups.append({"key": key, **_stats(group)})
    groups.sort(key=lambda g: (-g["requests"], [str(v) for v in g["key"].values()]))
    return {
        "since": _iso(since),
        "until": _iso(until),
        "window_s": _number((until - since).total_seconds()),
        "group_by": list(group_by),
        "scope": "fleet" if instance is None else "local",
        "instance": instance,
        "percentiles": "approximate",
        "percentile_error": PERCENTILE_ERROR,
        "total": _stats(total),
        "groups": groups if group_by else [],
    }
