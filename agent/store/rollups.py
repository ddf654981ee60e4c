"""Rollups of the usage records per 5 minutes and per hour, so `/ops/stats` over a day of a
million records reads about a thousand rows instead of every record.

For every grouping of zero to two dimensions (`GROUPINGS`: the total, each dimension, each
pair), every period and every sidecar (`instance`: a fleet's stats add them up, one sidecar's
read its own), `usage_rollups` holds the exact counts and sums of the period's records per
group (the cost as an integer count of billionths, so sums are exact in any order), and how
many of them fell in each log-spaced bucket of latency, time to first token and tokens/s.
Buckets grow by `GAMMA` (2 %); a bucket's representative value is within `RELATIVE_ERROR`
(< 1 %) of every value in it, so a percentile read from the buckets is within 1 % of the exact
one (nearest rank).

The writer thread rolls up each period once, ROLL_DELAY after it ends (`Rollups.roll_up_due`;
`usage_rolled_periods` lists the periods done): the database aggregates the period's records
per full set of dimensions and bucket, and Python folds that into the 22 groupings. So the
writer's per-batch work stays one INSERT. A record written later for a period already rolled
up (a long request, a re-ingested spill file) is folded in by the transaction that inserts it
(`Rollups.add_late`), so the rollups always agree with the records. `db prune` recomputes the
periods it cuts through (`forget_before`). After the v2 -> v3 migration the writer rolls up
the stored records a few periods at a time (and again after 3 -> 4, which makes the rollup
tables anew); until then a window reads them directly.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import peewee

from agent.durations import as_utc
from agent.records import Outcome, UsageSource, utcnow
from agent.store.schema import ROLLED_TABLE, ROLLUP_TABLE, USAGE_TABLE, ts_to_db

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
    "costed",  # records that had a cost
    "cost_e9",  # the sum of their costs, in billionths (rounded per record)
)
COST_SCALE: Final = 1_000_000_000
_COST_LIMIT: Final = 1e9  # a cost beyond this (or NaN) is left out: the sum must fit 64 bits
SPANS: Final = (3600, 300)  # seconds, longest first: a window takes whole hours, then 5 minutes

GAMMA: Final = 1.02
LN_GAMMA: Final = math.log(GAMMA)
RELATIVE_ERROR: Final = (GAMMA - 1) / (GAMMA + 1)  # 0.0099: the representative is 2ab/(a+b)
ZERO_BUCKET: Final = -40_000  # values <= 0 (and NaN), represented by 0.0; 5e-324 is bucket -37,640
_HUGE: Final = 1e15  # values above land in one last bucket, so no cast overflows in SQL
_HUGE_BUCKET: Final = math.floor(math.log(_HUGE) / LN_GAMMA)
# A stored histogram is a list of ints, one per bucket, in order: (bucket - ZERO_BUCKET) << _SHIFT |
# count, so ordering the ints orders the buckets (orjson reads them as ints, < 2**57).
_SHIFT: Final = 40
_COUNT_MASK: Final = (1 << _SHIFT) - 1

# A period is rolled up this long after it ends, so most requests that started in it and
# finished just after are in its rollup rather than folded in one by one.
ROLL_DELAY: Final = timedelta(minutes=2)
# Records older than the 5-minute period that began this long ago may belong to a rolled-up
# period (less than ROLL_DELAY: room for the clocks of a fleet's sidecars to differ).
LATE_MARGIN: Final = timedelta(minutes=1)
ROLLS_PER_TURN: Final = 4  # periods the writer rolls up between two batches
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOCK_KEY: Final = 0x5D3E7E5  # PostgreSQL advisory lock: rolling up vs. writing late records


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
    return 2 * GAMMA**bucket * GAMMA / (1 + GAMMA)


def floor_to(ts: datetime, span_s: int) -> datetime:
    seconds = (as_utc(ts) - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=seconds - seconds % span_s)


def ceil_to(ts: datetime, span_s: int) -> datetime:
    start = floor_to(ts, span_s)
    return start if start == ts else start + timedelta(seconds=span_s)


def as_datetime(value: object) -> datetime:
    """A timestamp as the driver returns it (text from SQLite, datetime from PostgreSQL)."""
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value)))


# -- SQL ----------------------------------------------------------------------------------------


class RollupSql:
    """The statements over the records, in one database's dialect (SQLite or PostgreSQL)."""

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

    def period(self, span_s: int) -> str:
        """The start of a record's period, as the rollups store it."""
        ts = self.q("ts")
        if self.sqlite:
            if span_s == 3600:
                return f"substr({ts}, 1, 13) || ':00:00.000000'"
            epoch = f"CAST(strftime('%s', {ts}) AS INTEGER)"
            return f"strftime('%Y-%m-%d %H:%M:00.000000', {epoch} / {span_s} * {span_s}, 'unixepoch')"
        return f"to_timestamp(floor(extract(epoch FROM {ts}) / {span_s}) * {span_s}) AT TIME ZONE 'UTC'"

    def where_ts(self, ranges: int) -> str:
        """Records in `ranges` [since, until) ranges (two parameters each)."""
        ts, p = self.q("ts"), self.param
        return " OR ".join([f"({ts} >= {p} AND {ts} < {p})"] * ranges)

    def records(self, where: str) -> str:
        """`WITH b AS (...)`: the records matching `where`, one row each, with their instance
        and dimensions ("" for none), what each adds to the sums, and their buckets."""
        q = self.q
        dims = ", ".join(f"COALESCE({q(d)}, '') AS d_{d}" for d in ("instance", *DIMENSIONS))
        cost, costed = q("cost"), f"ABS({q('cost')}) < {_COST_LIMIT!r}"
        buckets = ", ".join(f"{self._bucket(m)} AS b{i}" for i, m in enumerate(METRICS))
        return (
            f"WITH b AS MATERIALIZED (SELECT {dims}, "
            f"CASE WHEN {q('outcome')} <> '{Outcome.OK.value}' THEN 1 ELSE 0 END AS err, "
            f"COALESCE({q('prompt_tokens')}, 0) AS t_in, COALESCE({q('completion_tokens')}, 0) AS t_out, "
            f"COALESCE({q('cached_tokens')}, 0) AS t_cached, "
            f"COALESCE({q('reasoning_tokens')}, 0) AS t_reasoning, "
            f"CASE WHEN {q('usage_source')} = '{UsageSource.ESTIMATED.value}' THEN 1 ELSE 0 END AS est, "
            f"CASE WHEN {costed} THEN 1 ELSE 0 END AS costed, "
            f"CASE WHEN {costed} THEN CAST(ROUND({cost} * {COST_SCALE}) AS BIGINT) ELSE 0 END AS cost_e9, "
            f"{buckets} FROM {q(USAGE_TABLE)} WHERE {where})"
        )

    def aggregate(self, where: str, dims: Sequence[str], *, per_instance: bool = False) -> str:
        """One statement: per group of `dims` (in DIMENSIONS order; the instance first with
        `per_instance`), a row of sums (m = -1) and a row per metric and bucket (m = metric,
        n = count)."""
        keys = ["d_instance"] * per_instance + [f"d_{d}" for d in DIMENSIONS if d in dims]
        select_keys = "".join(f"{k}, " for k in keys)
        group = f"GROUP BY {', '.join(keys)}" if keys else ""
        sums = (
            "COUNT(*), SUM(err), SUM(t_in), SUM(t_out), SUM(t_cached), SUM(t_reasoning), SUM(est), "
            "SUM(costed), SUM(cost_e9)"
        )
        parts = [f"SELECT {select_keys}-1 AS m, 0 AS bucket, {sums} FROM b {group}"]
        for i in range(len(METRICS)):
            zeros = ", ".join(["0"] * (len(SUMS) - 1))
            parts.append(
                f"SELECT {select_keys}{i}, b{i}, COUNT(*), {zeros} FROM b WHERE b{i} IS NOT NULL "
                f"GROUP BY {', '.join([*keys, f'b{i}'])}"
            )
        return f"{self.records(where)} {' UNION ALL '.join(parts)}"


# -- the aggregate of some records, per grouping ------------------------------------------------


class Cell:
    """The sums and the buckets of one group. A histogram is kept as the sorted runs it was
    merged from (each stored rollup's list, see _SHIFT) plus loose keys (from the records):
    merging is list.append, and a percentile a binary search over the bucket index that
    counts each run's samples up to a bucket with bisect. No sort of every merged key: a
    day's grouped answer merges ~30 runs of ~300 buckets per cell and metric."""

    __slots__ = ("loose", "runs", "sums")

    def __init__(self) -> None:
        self.sums = [0] * len(SUMS)
        self.runs: list[list[list[int]]] = [[] for _ in METRICS]  # each sorted, a bucket once
        self.loose: list[list[int]] = [[] for _ in METRICS]  # any order, buckets may repeat

    def add_sums(self, values: Sequence[Any]) -> None:
        sums = self.sums
        for i, v in enumerate(values):
            sums[i] += int(v or 0)  # PostgreSQL's SUM of BIGINT is a Decimal

    def add_bucket(self, metric: int, bucket: int, n: int) -> None:
        self.loose[metric].append((bucket - ZERO_BUCKET) << _SHIFT | n)

    def add_encoded(self, metric: int, text: str | None) -> None:
        if text:
            self.runs[metric].append(orjson.loads(text))  # written sorted by `encoded`

    def merge(self, other: Cell) -> None:
        self.add_sums(other.sums)
        for metric in range(len(METRICS)):
            self.runs[metric] += other.runs[metric]
            self.loose[metric] += other.loose[metric]

    def percentiles(self, metric: int, qs: Sequence[float]) -> list[float | None]:
        """Nearest rank: the value of the ceil(q% * n)-th smallest sample, from its bucket."""
        return [
            None if key is None else bucket_value(key + ZERO_BUCKET)
            for key in histogram_ranks(self._sorted_runs(metric), qs)
        ]

    def _sorted_runs(self, metric: int) -> list[list[int]]:
        loose = self.loose[metric]
        return [*self.runs[metric], sorted(loose)] if loose else self.runs[metric]

    def encoded(self, metric: int) -> str:
        """JSON list of the histogram's ints, each bucket once, in order."""
        merged: dict[int, int] = {}
        for run in self._sorted_runs(metric):
            for key in run:
                bucket = key >> _SHIFT
                merged[bucket] = merged.get(bucket, 0) + (key & _COUNT_MASK)
        return orjson.dumps([b << _SHIFT | n for b, n in sorted(merged.items())]).decode()


def histogram_ranks(runs: Sequence[Sequence[int]], qs: Sequence[float]) -> list[int | None]:
    """The bucket (key >> _SHIFT) holding the nearest-rank q-th percentile of the histogram
    that is the sum of `runs` (lists of keys, each sorted; a bucket may repeat), for each q;
    None for an empty histogram. Per q, a binary search over the bucket index: the samples at
    or below a bucket are, per run, the cumulative count before the first key past it."""
    indexed = []
    total = 0
    low = high = -1
    for run in runs:
        if not run:
            continue
        cumulative = list(itertools.accumulate(map(_COUNT_MASK.__and__, run)))
        indexed.append((run, cumulative))
        total += cumulative[-1]
        first, last = run[0] >> _SHIFT, run[-1] >> _SHIFT
        low = first if low < 0 or first < low else low
        high = max(high, last)
    if not total:
        return [None] * len(qs)
    out: list[int | None] = []
    for q in qs:
        rank = max(1, math.ceil(q * total / 100))
        lo, hi = low, high  # the answer lies in [lo, hi]: every sample is at or below high
        while lo < hi:
            mid = (lo + hi) // 2
            bound = (mid + 1) << _SHIFT
            at_or_below = 0
            for run, cumulative in indexed:
                i = bisect.bisect_left(run, bound)
                if i:
                    at_or_below += cumulative[i - 1]
            if at_or_below >= rank:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


Key = tuple[str, str, str, str]  # grouping name, instance, k1, k2


def fold(rows: Iterable[Sequence[Any]]) -> dict[Key, Cell]:
    """Rows of `RollupSql.aggregate` per instance over all of DIMENSIONS, folded into every
    grouping."""
    cells: dict[Key, Cell] = {}
    projections = []
    for dims in GROUPINGS:
        positions = [DIMENSIONS.index(d) for d in dims] + [None] * (2 - len(dims))
        projections.append((grouping_name(dims), positions))
    width = 1 + len(DIMENSIONS)
    for row in rows:
        instance, values, metric, bucket = row[0], row[1:width], row[width], row[width + 1]
        for name, (a, b) in projections:
            key = (name, instance, "" if a is None else values[a], "" if b is None else values[b])
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = Cell()
            if metric < 0:
                cell.add_sums(row[width + 2 :])
            else:
                cell.add_bucket(metric, bucket, int(row[width + 2]))
    return cells


# -- writing ------------------------------------------------------------------------------------

_KEYS: Final = ("dims", "instance", "k1", "k2")
_COLUMNS: Final = ("span_s", "period", *_KEYS, *SUMS, *METRICS)
_ROWS_PER_INSERT: Final = 999 // len(_COLUMNS)  # within the oldest SQLite's parameter limit


def _lock(db: peewee.Database, *, exclusive: bool) -> None:
    """PostgreSQL (the sidecars of a fleet write concurrently): a period is rolled up while no
    transaction that may add late records to it is open, and the other way round."""
    if not isinstance(db, peewee.SqliteDatabase):
        kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        db.execute_sql(f"SELECT {kind}({_LOCK_KEY})")


def _write(
    db: peewee.Database, span_s: int, period: datetime, cells: dict[Key, Cell], *, merge: bool
) -> None:
    """Insert the cells as rows of (span_s, period); with `merge`, add them to rows there."""
    sql = RollupSql(db)
    table, p = sql.q(ROLLUP_TABLE), sql.param
    when = ts_to_db(period)
    if merge:
        # One read of the period's rows and one DELETE of those that matched, by their row
        # address, not a round trip per group (a re-ingested spill file touches thousands).
        row_id = "rowid" if sql.sqlite else "ctid"
        columns = ", ".join([row_id, *(sql.q(c) for c in (*_KEYS, *SUMS, *METRICS))])
        found: list[Any] = []
        for row in db.execute_sql(
            f"SELECT {columns} FROM {table} WHERE span_s = {p} AND period = {p}", [span_s, when]
        ).fetchall():
            cell = cells.get((row[1], row[2], row[3], row[4]))
            if cell is None:
                continue
            cell.add_sums(row[5 : 5 + len(SUMS)])
            for metric, text in enumerate(row[5 + len(SUMS) :]):
                cell.add_encoded(metric, text)
            found.append(row[0])
        if sql.sqlite:
            for start in range(0, len(found), 999):
                chunk = found[start : start + 999]
                db.execute_sql(f"DELETE FROM {table} WHERE rowid IN ({', '.join([p] * len(chunk))})", chunk)
        elif found:
            db.execute_sql(f"DELETE FROM {table} WHERE ctid = ANY({p}::tid[])", [found])
    rows = [
        [span_s, when, *key, *cell.sums, *(cell.encoded(m) for m in range(len(METRICS)))]
        for key, cell in cells.items()
    ]
    # Multi-row VALUES: PostgreSQL's driver runs executemany as one round trip per row.
    columns = ", ".join(sql.q(c) for c in _COLUMNS)
    group = "(" + ", ".join([p] * len(_COLUMNS)) + ")"
    cursor = db.cursor()
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        values = ", ".join([group] * len(chunk))
        cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", [v for row in chunk for v in row])


def _roll_up(db: peewee.Database, span_s: int, period: datetime) -> bool:
    """Roll up one period in the caller's transaction, unless another process did."""
    sql = RollupSql(db)
    _lock(db, exclusive=True)
    marked = db.execute_sql(
        f"INSERT INTO {sql.q(ROLLED_TABLE)} (span_s, period) VALUES ({sql.param}, {sql.param}) "
        "ON CONFLICT DO NOTHING",
        [span_s, ts_to_db(period)],
    )
    if marked.rowcount == 0:
        return False
    end = period + timedelta(seconds=span_s)
    parts = [s for s in SPANS if s < span_s and span_s % s == 0]
    if parts and len(rolled_periods(db, parts[0], period, end)) == span_s // parts[0]:
        cells = _merged(db, parts[0], period, end)  # an hour: its twelve 5-minute rollups
    else:
        rows = db.execute_sql(
            sql.aggregate(sql.where_ts(1), DIMENSIONS, per_instance=True), [ts_to_db(period), ts_to_db(end)]
        )
        cells = fold(rows)
    _write(db, span_s, period, cells, merge=False)
    return True


def _merged(db: peewee.Database, span_s: int, since: datetime, until: datetime) -> dict[Key, Cell]:
    """The rollups of span_s periods in [since, until), merged per group: cheaper than
    folding the records again, and the same figures (late records go into both spans)."""
    sql = RollupSql(db)
    p = sql.param
    columns = ", ".join(sql.q(c) for c in (*_KEYS, *SUMS, *METRICS))
    cells: dict[Key, Cell] = {}
    width = len(SUMS)
    for dims, instance, k1, k2, *values in db.execute_sql(
        f"SELECT {columns} FROM {sql.q(ROLLUP_TABLE)} WHERE span_s = {p} AND period >= {p} AND period < {p}",
        [span_s, ts_to_db(since), ts_to_db(until)],
    ):
        key = (dims, instance, k1, k2)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.add_sums(values[:width])
        for metric, text in enumerate(values[width:]):
            cell.add_encoded(metric, text)
    return cells


def roll_up_periods(db: peewee.Database, now: datetime, limit: int | None = None) -> int:
    """Roll up, for each span, the periods after the last rolled-up one (or from the oldest
    record) that ended ROLL_DELAY before `now`, each in its own transaction, at most `limit`
    of them; returns how many."""
    sql = RollupSql(db)
    q, p = sql.q, sql.param
    done = 0
    for span_s in sorted(SPANS):  # 5 minutes first: an hour is made of its twelve
        last = db.execute_sql(
            f"SELECT MAX(period) FROM {q(ROLLED_TABLE)} WHERE span_s = {p}", [span_s]
        ).fetchone()[0]
        if last is not None:
            start = as_datetime(last) + timedelta(seconds=span_s)
        else:
            oldest = db.execute_sql(f"SELECT MIN({q('ts')}) FROM {q(USAGE_TABLE)}").fetchone()[0]
            if oldest is None:
                continue
            start = floor_to(as_datetime(oldest), span_s)
        end = floor_to(as_utc(now) - ROLL_DELAY, span_s)  # periods before this one are due
        step = timedelta(seconds=span_s)
        period = start
        while period + step <= end:
            if limit is not None and done >= limit:
                return done
            with db.atomic():
                done += _roll_up(db, span_s, period)
            period += step
    return done


def rolled_periods(db: peewee.Database, span_s: int, since: datetime, until: datetime) -> list[datetime]:
    """The rolled-up periods of `span_s` that lie within [since, until), in order."""
    sql = RollupSql(db)
    p = sql.param
    last_start = until - timedelta(seconds=span_s)
    if last_start < since:
        return []
    rows = db.execute_sql(
        f"SELECT period FROM {sql.q(ROLLED_TABLE)} WHERE span_s = {p} AND period >= {p} AND period <= {p} "
        "ORDER BY period",
        [span_s, ts_to_db(since), ts_to_db(last_start)],
    )
    return [as_datetime(period) for (period,) in rows]


class Rollups:
    """The writer's side: rolls up the periods that are over, and folds records written
    later into the periods rolled up already."""

    def __init__(self, db: peewee.Database) -> None:
        self.sql = RollupSql(db)
        self.next_roll_at = 0.0  # time.time() of the next period's end + ROLL_DELAY

    def begin_write(self, db: peewee.Database) -> None:
        """First thing in a transaction that inserts records."""
        _lock(db, exclusive=False)

    def add_late(self, db: peewee.Database, ids: Sequence[int], oldest_ts: str) -> None:
        """In the inserting transaction: fold the new records that belong to rolled-up
        periods into them. Only records older than the 5-minute period LATE_MARGIN ago can
        (a period is rolled up ROLL_DELAY after its end), so most batches return at once."""
        if not ids or oldest_ts >= ts_to_db(floor_to(utcnow() - LATE_MARGIN, min(SPANS))):
            return
        sql, p = self.sql, self.sql.param
        ids_where = f"id BETWEEN {p} AND {p}" if sql.sqlite else f"id = ANY({p})"
        params: list[object] = [min(ids), max(ids)] if sql.sqlite else [list(ids)]
        for span_s in SPANS:
            period = sql.period(span_s)
            rows = db.execute_sql(
                f"SELECT DISTINCT {period} FROM {sql.q(USAGE_TABLE)} WHERE {ids_where} AND {period} IN "
                f"(SELECT period FROM {sql.q(ROLLED_TABLE)} WHERE span_s = {span_s})",
                params,
            ).fetchall()
            for (start,) in rows:
                start_dt = as_datetime(start)
                where = f"{ids_where} AND {sql.where_ts(1)}"
                end = start_dt + timedelta(seconds=span_s)
                aggregate = sql.aggregate(where, DIMENSIONS, per_instance=True)
                cells = fold(db.execute_sql(aggregate, [*params, ts_to_db(start_dt), ts_to_db(end)]))
                _write(db, span_s, start_dt, cells, merge=True)

    def roll_up_due(self, db: peewee.Database) -> int:
        """Roll up periods that ended ROLL_DELAY ago and are not rolled up yet, a few at a
        time: a store upgraded with months of records catches up between batches instead of
        holding the writer for minutes."""
        done = roll_up_periods(db, utcnow(), limit=ROLLS_PER_TURN)
        if done >= ROLLS_PER_TURN:
            self.next_roll_at = 0.0  # more are due: next turn
        else:
            span = timedelta(seconds=min(SPANS))
            self.next_roll_at = (floor_to(utcnow(), min(SPANS)) + span + ROLL_DELAY).timestamp()
        return done


def _delete(db: peewee.Database, table: str, condition: str, params: Sequence[object]) -> None:
    db.execute_sql(f"DELETE FROM {RollupSql(db).q(table)} WHERE {condition}", list(params))


def forget_before(db: peewee.Database, before: datetime | None) -> None:
    """In the transaction that deleted the records older than `before` (all, when None):
    drop their periods from the rollups, and recompute the periods `before` cuts through
    from the records that are left."""
    if before is None:
        _delete(db, ROLLUP_TABLE, "1 = 1", ())
        _delete(db, ROLLED_TABLE, "1 = 1", ())
        return
    before = as_utc(before)
    p = db.param
    for span_s in sorted(SPANS):  # 5 minutes first: an hour may be made of them
        start = floor_to(before, span_s)
        for table in (ROLLUP_TABLE, ROLLED_TABLE):
            _delete(db, table, f"span_s = {p} AND period < {p}", (span_s, ts_to_db(start)))
        if start != before and rolled_periods(db, span_s, start, start + timedelta(seconds=span_s)):
            _lock(db, exclusive=True)
            _delete(db, ROLLUP_TABLE, f"span_s = {p} AND period = {p}", (span_s, ts_to_db(start)))
            _delete(db, ROLLED_TABLE, f"span_s = {p} AND period = {p}", (span_s, ts_to_db(start)))
            _roll_up(db, span_s, start)
