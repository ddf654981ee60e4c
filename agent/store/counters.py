"""The shared quota counters (`quota_usage`, PostgreSQL): one statement adds a sidecar's deltas
atomically (`INSERT ... ON CONFLICT DO UPDATE SET n = n + EXCLUDED.n`) and reads back the fleet
totals of those windows and of the others it asks about, in one round trip.

Arrays (`unnest`) carry the rows, so a tick is one statement of fixed text whatever the number
of scopes. Blocks: the quota sync runs it on its own thread and connection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

import peewee

from agent.store.schema import QuotaUsage

TABLE: Final = QuotaUsage._meta.table_name
AMOUNT_COLUMNS: Final = ("requests", "input_tokens", "output_tokens", "tokens", "cost")


class WindowKey(NamedTuple):
    rule: str
    scope: str
    period: str
    window_start: int


class Push(NamedTuple):
    key: WindowKey
    window_end: int
    delta: Amounts


Amounts = tuple[int, int, int, int, float]  # requests, input, output, total tokens, cost
Totals = dict[WindowKey, Amounts]

_AMOUNTS = ", ".join(AMOUNT_COLUMNS)
_KEY = "rule, scope, period, window_start"
_ADD_AND_READ: Final = f"""
WITH pushed AS (
    INSERT INTO {TABLE} AS q ({_KEY}, window_end, {_AMOUNTS})
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],
                         %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::float8[])
    ON CONFLICT ({_KEY}) DO UPDATE SET
        {", ".join(f"{c} = q.{c} + EXCLUDED.{c}" for c in AMOUNT_COLUMNS)}
    RETURNING {_KEY}, {_AMOUNTS}
)
SELECT * FROM pushed
UNION ALL
SELECT {", ".join(f"q.{c}" for c in (*WindowKey._fields, *AMOUNT_COLUMNS))}
FROM {TABLE} q
JOIN unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS k(r, s, p, w)
  ON q.rule = k.r AND q.scope = k.s AND q.period = k.p AND q.window_start = k.w
"""


def add_and_read(db: peewee.Database, pushes: Sequence[Push], reads: Sequence[WindowKey]) -> Totals:
    """Add `pushes` to the shared counters and return the fleet totals of their windows and of
    `reads` (a window nobody has counted yet is absent). The keys must be distinct."""
    if not pushes and not reads:
        return {}
    cols: list[list[int | float | str]] = [[] for _ in range(10)]
    for p in pushes:
        for i, v in enumerate((*p.key, p.window_end, *p.delta)):
            cols[i].append(v)
    keys: list[list[int | str]] = [[] for _ in range(4)]
    for k in reads:
        for i, v in enumerate(k):
            keys[i].append(v)
    with db.atomic():
        cursor = db.execute_sql(_ADD_AND_READ, [*cols, *keys])
        rows = cursor.fetchall()
    return {WindowKey(r[0], r[1], r[2], int(r[3])): _amounts(r) for r in rows}


def _amounts(row: Sequence[object]) -> Amounts:
    return (int(row[4]), int(row[5]), int(row[6]), int(row[7]), float(row[8]))  # type: ignore[call-overload,arg-type]


def current(db: peewee.Database, starts: dict[str, int]) -> Iterator[tuple[WindowKey, Amounts]]:
    """Every counter of the windows starting at `starts` (period -> epoch seconds): what a
    fleet sidecar loads at start."""
    if not starts:
        return
    periods, firsts = list(starts), list(starts.values())
    cursor = db.execute_sql(
        f"SELECT {_KEY}, {_AMOUNTS} FROM {TABLE} q "
        "JOIN unnest(%s::text[], %s::bigint[]) AS k(p, w) ON q.period = k.p AND q.window_start = k.w",
        [periods, firsts],
    )
    for r in cursor.fetchall():
        yield WindowKey(r[0], r[1], r[2], int(r[3])), _amounts(r)


def delete_ended(db: peewee.Database, before: int) -> int:
    """Delete the counters of windows that ended before `before` (epoch seconds)."""
    return int(QuotaUsage.delete().where(QuotaUsage.window_end < before).bind(db).execute())
