"""Hourly rollups of the usage records, so `/ops/stats` over a day of a million records reads a
few thousand rows instead of every record.

For every grouping of zero to two dimensions (`GROUPINGS`: the total, each dimension, each
pair) and every hour, `usage_rollups` holds the exact counts and sums of that hour's records per
group, and `usage_histograms` how many of them fell in each log-spaced bucket of latency, time
to first token and tokens/s. Buckets grow by `GAMMA` (2 %); a bucket's representative value
is within `RELATIVE_ERROR` (< 1 %) of every value in it, so a percentile read from the buckets
is within 1 % of the exact one (nearest rank).

The writer thread rolls up each hour once, ROLL_DELAY after it ends, with SQL the database runs
over that hour's records (`roll_up_hours`; `usage_rollup_hours` lists the hours done), so the
writer's per-batch work stays one INSERT. A record written later for an hour already rolled up
(a long request, a re-ingested spill file) is added in the transaction that inserts it
(`Rollups.add_late`), so the rollups always agree with the records. `db prune` recomputes the
hour it cuts through (`forget_before`); the v2 -> v3 migration rolls up the hours stored so far.
The same expressions answer the partial hours at a window's edges from the records themselves
(`agent/store/stats.py`), so a window is exact to the microsecond.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import peewee

from agent.durations import as_utc
from agent.records import Outcome, UsageSource, utcnow
from agent.store.schema import (
    ROLLED_HOURS_TABLE,
    ROLLUP_TABLES,
    USAGE_TABLE,
    UsageHistogram,
    UsageRollup,
    ts_to_db,
)

DIMENSIONS: Final = ("model", "user", "team", "endpoint", "operation", "outcome")
GROUPINGS: Final[tuple[tuple[str, ...], ...]] = tuple(
    combo for size in range(3) for combo in itertools.combinations(DIMENSIONS, size)
)
METRICS: Final = ("latency_ms", "ttft_ms", "tokens_per_second")
SUMS: Final = (
    "requests",
    "errors",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "reasoning_tokens",
    "estimated",
)

GAMMA: Final = 1.02
LN_GAMMA: Final = math.log(GAMMA)
RELATIVE_ERROR: Final = (GAMMA - 1) / (GAMMA + 1)  # 0.0099: the representative is 2ab/(a+b)
ZERO_BUCKET: Final = -(2**31)  # values <= 0 (and NaN): represented by 0.0
_HUGE: Final = 1e15  # values above land in one last bucket, so no cast overflows in SQL
_HUGE_BUCKET: Final = math.floor(math.log(_HUGE) / LN_GAMMA)
HOUR: Final = timedelta(hours=1)
# An hour is rolled up this long after it ends, so requests that started in it and finished
# just after are in its rollup rather than added one batch at a time.
ROLL_DELAY: Final = timedelta(minutes=5)
# Records older than the hour that began this long ago may belong to a rolled-up hour (less
# than ROLL_DELAY: room for clocks of a fleet's sidecars that differ).
LATE_MARGIN: Final = timedelta(minutes=4)


def grouping_name(dims: Sequence[str]) -> str:
    """The stored name of a grouping: its dimensions in `DIMENSIONS` order, comma-separated."""
    return ",".join(d for d in DIMENSIONS if d in dims)


def bucket_of(value: float) -> int:
    """The bucket the SQL below puts `value` in."""
    if not value > 0:
        return ZERO_BUCKET
    if value >= _HUGE:
        return _HUGE_BUCKET
    return math.floor(math.log(value) / LN_GAMMA)


def bucket_value(bucket: int) -> float:
    """The value that stands for the bucket [GAMMA**b, GAMMA**(b+1)): within RELATIVE_ERROR
    of both ends."""
    if bucket == ZERO_BUCKET:
        return 0.0
    low = GAMMA**bucket
    return 2 * low * GAMMA / (1 + GAMMA)


def floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def ceil_hour(ts: datetime) -> datetime:
    start = floor_hour(ts)
    return start if start == ts else start + HOUR


class RollupSql:
    """The rollup statements in one database's dialect (SQLite or PostgreSQL)."""

    def __init__(self, db: peewee.Database) -> None:
        self.sqlite = isinstance(db, peewee.SqliteDatabase)
        self.param = db.param
        self._q0, self._q1 = db.quote[0], db.quote[1]

    def q(self, name: str) -> str:
        return f"{self._q0}{name}{self._q1}"

    def _bucket(self, column: str) -> str:
        c = self.q(column)
        return (
            f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} >= {_HUGE!r} THEN {_HUGE_BUCKET} "
            f"WHEN {c} > 0 THEN CAST(floor(ln({c}) / {LN_GAMMA!r}) AS INTEGER) ELSE {ZERO_BUCKET} END"
        )

    @property
    def hour(self) -> str:
        """The start of a record's hour, in the form the rollups store it."""
        ts = self.q("ts")
        return f"substr({ts}, 1, 13) || ':00:00.000000'" if self.sqlite else f"date_trunc('hour', {ts})"

    def records(self, where: str) -> str:
        """`WITH b AS (...)`: the records matching `where`, one row each, with their hour, their
        dimensions ("" for none), what each adds to the sums, and their buckets."""
        q = self.q
        hour = self.hour
        dims = ", ".join(f"COALESCE({q(d)}, '') AS d_{d}" for d in DIMENSIONS)
        buckets = ", ".join(f"{self._bucket(m)} AS b{i}" for i, m in enumerate(METRICS))
        return (
            f"WITH b AS MATERIALIZED (SELECT {hour} AS h, {dims}, "
            f"CASE WHEN {q('outcome')} <> '{Outcome.OK.value}' THEN 1 ELSE 0 END AS err, "
            f"COALESCE({q('prompt_tokens')}, 0) AS t_in, COALESCE({q('completion_tokens')}, 0) AS t_out, "
            f"COALESCE({q('cached_tokens')}, 0) AS t_cached, "
            f"COALESCE({q('reasoning_tokens')}, 0) AS t_reasoning, "
            f"CASE WHEN {q('usage_source')} = '{UsageSource.ESTIMATED.value}' THEN 1 ELSE 0 END AS est, "
            f"{buckets} FROM {q(USAGE_TABLE)} WHERE {where})"
        )

    @staticmethod
    def keys(dims: Sequence[str]) -> tuple[str, str]:
        """The select expressions of k1 and k2 for a grouping, over `b`."""
        ordered = [f"d_{d}" for d in DIMENSIONS if d in dims]
        ordered += ["''"] * (2 - len(ordered))
        return ordered[0], ordered[1]

    @staticmethod
    def sums() -> str:
        return "COUNT(*), SUM(err), SUM(t_in), SUM(t_out), SUM(t_cached), SUM(t_reasoning), SUM(est)"

    def group_by(self, dims: Sequence[str], *extra: str) -> str:
        columns = ["h", *(f"d_{d}" for d in DIMENSIONS if d in dims), *extra]
        return "GROUP BY " + ", ".join(columns)

    def upsert_rollups(self, where: str) -> str:
        selects = []
        for dims in GROUPINGS:
            k1, k2 = self.keys(dims)
            selects.append(
                f"SELECT '{grouping_name(dims)}' AS g, h, {k1} AS k1, {k2} AS k2, {self.sums()} "
                f"FROM b {self.group_by(dims)}"
            )
        table = self.q(UsageRollup._meta.table_name)
        columns = ", ".join(self.q(c) for c in ("dims", "hour", "k1", "k2", *SUMS))
        updates = ", ".join(f"{self.q(c)} = {table}.{self.q(c)} + excluded.{self.q(c)}" for c in SUMS)
        # `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
        return (
            f"{self.records(where)} INSERT INTO {table} ({columns}) "
            f"SELECT * FROM ({' UNION ALL '.join(selects)}) AS u WHERE true "
            f"ON CONFLICT (dims, hour, k1, k2) DO UPDATE SET {updates}"
        )

    def upsert_histograms(self, where: str) -> str:
        selects = []
        for dims in GROUPINGS:
            k1, k2 = self.keys(dims)
            for i in range(len(METRICS)):
                selects.append(
                    f"SELECT '{grouping_name(dims)}' AS g, h, {k1} AS k1, {k2} AS k2, {i} AS m, "
                    f"b{i} AS bucket, COUNT(*) AS n FROM b WHERE b{i} IS NOT NULL "
                    f"{self.group_by(dims, f'b{i}')}"
                )
        table = self.q(UsageHistogram._meta.table_name)
        columns = ", ".join(self.q(c) for c in ("dims", "hour", "k1", "k2", "metric", "bucket", "n"))
        return (
            f"{self.records(where)} INSERT INTO {table} ({columns}) "
            f"SELECT * FROM ({' UNION ALL '.join(selects)}) AS u WHERE true "
            f"ON CONFLICT (dims, hour, k1, k2, metric, bucket) DO UPDATE SET n = {table}.n + excluded.n"
        )


_LOCK_KEY: Final = 0x5D3E7E5  # PostgreSQL advisory lock: rolling an hour vs. writing late records


def _lock(db: peewee.Database, *, exclusive: bool) -> None:
    """PostgreSQL (sidecars of a fleet write concurrently): an hour is rolled up while no
    transaction that may add late records to it is open, and the other way round."""
    if not isinstance(db, peewee.SqliteDatabase):
        kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        db.execute_sql(f"SELECT {kind}({_LOCK_KEY})")


class Rollups:
    """The writer's side: rolls up each hour once it is over (`roll_up_due`), and adds records
    written later to an hour already rolled up (`add_late`)."""

    def __init__(self, db: peewee.Database) -> None:
        self.sql = RollupSql(db)
        p = db.param
        q = self.sql.q
        rolled = f"{self.sql.hour} IN (SELECT hour FROM {q(ROLLED_HOURS_TABLE)})"
        # SQLite has one writer at a time, so a transaction's new ids form one range; on
        # PostgreSQL other sidecars insert concurrently, so the ids are named one by one.
        ids = f"id BETWEEN {p} AND {p}" if self.sql.sqlite else f"id = ANY({p})"
        self._late = f"{ids} AND {rolled}"
        self.next_roll_at = 0.0  # time.time() of the next hour's end + ROLL_DELAY

    def begin_write(self, db: peewee.Database) -> None:
        """First thing in a transaction that inserts records."""
        _lock(db, exclusive=False)

    def add_late(self, db: peewee.Database, ids: Sequence[int], oldest_ts: str) -> None:
        """In the inserting transaction: the new records that belong to hours rolled up
        already. Only records older than the current hour minus LATE_MARGIN can (an hour is
        rolled up ROLL_DELAY after its end), so most batches skip the statements."""
        if not ids or oldest_ts >= ts_to_db(floor_hour(utcnow() - LATE_MARGIN)):
            return
        params: list[object] = [min(ids), max(ids)] if self.sql.sqlite else [list(ids)]
        cursor = db.cursor()
        cursor.execute(self.sql.upsert_rollups(self._late), params)
        cursor.execute(self.sql.upsert_histograms(self._late), params)

    def roll_up_due(self, db: peewee.Database) -> int:
        """Roll up every hour that ended ROLL_DELAY ago and is not rolled up yet, one
        transaction each; returns how many hours were rolled up."""
        done = roll_up_hours(db, utcnow())
        self.next_roll_at = (floor_hour(utcnow()) + HOUR + ROLL_DELAY).timestamp()
        return done


def _roll_up_hour(db: peewee.Database, hour: datetime) -> bool:
    """Roll up one hour in the caller's transaction, unless another process did."""
    sql = RollupSql(db)
    _lock(db, exclusive=True)
    marked = db.execute_sql(
        f"INSERT INTO {sql.q(ROLLED_HOURS_TABLE)} (hour) VALUES ({sql.param}) ON CONFLICT DO NOTHING",
        [ts_to_db(hour)],
    )
    if marked.rowcount == 0:
        return False
    _add_range(db, sql, hour, hour + HOUR)
    return True


def _add_range(db: peewee.Database, sql: RollupSql, since: datetime, until: datetime) -> None:
    p = sql.param
    where = f"{sql.q('ts')} >= {p} AND {sql.q('ts')} < {p}"
    params = [ts_to_db(since), ts_to_db(until)]
    cursor = db.cursor()
    cursor.execute(sql.upsert_rollups(where), params)
    cursor.execute(sql.upsert_histograms(where), params)


def roll_up_hours(db: peewee.Database, now: datetime) -> int:
    """Roll up the hours after the last rolled-up one (or from the oldest record) that ended
    ROLL_DELAY before `now`, each in its own transaction; returns how many were rolled up."""
    sql = RollupSql(db)
    q = sql.q
    last = db.execute_sql(f"SELECT MAX(hour) FROM {q(ROLLED_HOURS_TABLE)}").fetchone()[0]
    if last is not None:
        start = _as_datetime(last) + HOUR
    else:
        oldest = db.execute_sql(f"SELECT MIN({q('ts')}) FROM {q(USAGE_TABLE)}").fetchone()[0]
        if oldest is None:
            return 0
        start = floor_hour(_as_datetime(oldest))
    end = floor_hour(now - ROLL_DELAY)  # hours before this one have ended ROLL_DELAY ago
    done = 0
    hour = start
    while hour + HOUR <= end:
        with db.atomic():
            done += _roll_up_hour(db, hour)
        hour += HOUR
    return done


def _as_datetime(value: object) -> datetime:
    """A timestamp as the driver returns it (text from SQLite, datetime from PostgreSQL)."""
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value)))


def rolled_hours(db: peewee.Database, since: datetime, until: datetime) -> list[datetime]:
    """The rolled-up hours that start in [since, until), in order."""
    sql = RollupSql(db)
    p = sql.param
    rows = db.execute_sql(
        f"SELECT hour FROM {sql.q(ROLLED_HOURS_TABLE)} WHERE hour >= {p} AND hour < {p} ORDER BY hour",
        [ts_to_db(since), ts_to_db(until)],
    )
    return [_as_datetime(hour) for (hour,) in rows]


def _delete(db: peewee.Database, condition: str, params: Sequence[object], tables: Sequence[str]) -> None:
    sql = RollupSql(db)
    for table in tables:
        db.execute_sql(f"DELETE FROM {sql.q(table)} WHERE {condition}", list(params))


def forget_before(db: peewee.Database, before: datetime | None) -> None:
    """In the transaction that deleted the records older than `before` (all, when None):
    drop their hours from the rollups, and recompute the hour `before` cuts through from the
    records that are left."""
    everything = (*ROLLUP_TABLES, ROLLED_HOURS_TABLE)
    if before is None:
        _delete(db, "1 = 1", (), everything)
        return
    before = as_utc(before)
    start = floor_hour(before)
    _delete(db, f"hour < {db.param}", (ts_to_db(start),), everything)
    if start != before and rolled_hours(db, start, start + HOUR):
        _lock(db, exclusive=True)
        _delete(db, f"hour = {db.param}", (ts_to_db(start),), ROLLUP_TABLES)
        _add_range(db, RollupSql(db), start, start + HOUR)
