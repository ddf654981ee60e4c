"""Deleting records older than the retention in the background, a bounded batch at a time.

The writer thread runs `Pruner.prune_due` between two batches of records, like the rollups:
each turn deletes about `batch` of the oldest records past the cutoff in one short
transaction, together with their rollups (whole 5-minute periods, so nothing is
recomputed: see `prune_batch`), so a store that is months behind catches up over many turns while
new records keep being written between them. Once nothing is past the cutoff, the next check
is `interval` seconds later.

Several sidecars sharing a PostgreSQL store may all prune: the deletes are idempotent, and a
transaction-scoped advisory lock lets one of them prune at a time (the others skip the turn).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Final

import peewee

from agent.metrics import STORE_PRUNED
from agent.records import utcnow
from agent.store import rollups
from agent.store.database import describe, first_line
from agent.store.rollups import RollupSql, as_datetime
from agent.store.schema import ROLLED_TABLE, ROLLUP_TABLE, USAGE_TABLE, ts_to_db

log = logging.getLogger(__name__)

DEFAULT_BATCH: Final = 2000  # rows per transaction: a few ms on SQLite, well under a records batch
DEFAULT_INTERVAL_S: Final = 60.0  # between checks once caught up
_LOCK_KEY: Final = 0x5D3E7E6  # PostgreSQL advisory lock: one pruner of a fleet at a time


def prune_batch(db: peewee.Database, cutoff: datetime, limit: int) -> tuple[int, datetime | None]:
    """In the caller's transaction: delete the oldest whole 5-minute periods of records that
    ended by `cutoff`, about `limit` records' worth (at least one period), and their rollups.
    Returns how many records were deleted and where the deleted periods end (None when no
    record was past the cutoff).

    Whole periods, so no rollup has to be recomputed: the 5-minute rollups of deleted periods
    go, and so does the hour rollup of every hour they touch, which `/ops/stats` then reads
    from the 5-minute rollups left in it. A record is deleted within 5 minutes of passing the
    retention."""
    sql = RollupSql(db)
    q, p = sql.q, sql.param
    table, ts = q(USAGE_TABLE), q("ts")
    span = min(rollups.SPANS)
    edge = rollups.floor_to(cutoff, span)
    oldest = db.execute_sql(f"SELECT MIN({ts}) FROM {table} WHERE {ts} < {p}", [ts_to_db(edge)]).fetchone()
    if not oldest or oldest[0] is None:
        return 0, None
    first_end = rollups.floor_to(as_datetime(oldest[0]), span) + timedelta(seconds=span)
    # The period of the limit-th oldest record: everything before it goes this turn.
    nth = db.execute_sql(
        f"SELECT {ts} FROM {table} WHERE {ts} < {p} ORDER BY {ts} LIMIT 1 OFFSET {p}",
        [ts_to_db(edge), limit - 1],
    ).fetchone()
    upto = edge if nth is None else max(first_end, rollups.floor_to(as_datetime(nth[0]), span))
    upto = min(upto, edge)
    when = ts_to_db(upto)
    deleted = db.execute_sql(f"DELETE FROM {table} WHERE {ts} < {p}", [when]).rowcount
    for name in (ROLLUP_TABLE, ROLLED_TABLE):
        db.execute_sql(f"DELETE FROM {q(name)} WHERE {q('period')} < {p}", [when])
    return int(deleted), upto


def _try_lock(db: peewee.Database) -> bool:
    if isinstance(db, peewee.SqliteDatabase):
        return True  # one writer per file at a time anyway
    return bool(db.execute_sql(f"SELECT pg_try_advisory_xact_lock({_LOCK_KEY})").fetchone()[0])


class Pruner:
    """The writer's side of retention: when a turn is due, delete one bounded batch."""

    def __init__(
        self,
        keep: timedelta,
        *,
        batch: int = DEFAULT_BATCH,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if batch < 1 or keep <= timedelta(0):
            raise ValueError("retention must be positive and batch >= 1")
        self.keep = keep
        self.batch = batch
        self.interval = interval
        self.next_at = 0.0  # time.monotonic() of the next turn
        self.pruned_total = 0
        self._catching_up = 0  # deleted since the last time nothing was past the cutoff

    def prune_due(self, db: peewee.Database) -> int:
        """Delete one batch if a turn is due; returns how many records it deleted. Raises
        what the database raises (the writer logs it and retries after `interval`)."""
        if time.monotonic() < self.next_at:
            return 0
        cutoff = utcnow() - self.keep
        with db.atomic():
            if not _try_lock(db):
                self.next_at = time.monotonic() + self.interval  # another sidecar prunes
                return 0
            deleted, upto = prune_batch(db, cutoff, self.batch)
        if deleted:
            self.pruned_total += deleted
            self._catching_up += deleted
            STORE_PRUNED.inc(deleted)
        if upto is not None and upto < rollups.floor_to(cutoff, min(rollups.SPANS)):
            self.next_at = 0.0  # more past the cutoff: next turn, after the next records batch
            if self._catching_up and self._catching_up % (self.batch * 50) < deleted:
                log.info("retention: %d old records deleted so far, still catching up", self._catching_up)
        else:
            if self._catching_up:
                log.info(
                    "retention: %d records older than %s deleted from %s",
                    self._catching_up,
                    ts_to_db(cutoff),
                    describe(db),
                )
            self._catching_up = 0
            self.next_at = time.monotonic() + self.interval
        return deleted

    def failed(self, exc: BaseException) -> None:
        self.next_at = time.monotonic() + self.interval
        log.warning("retention: pruning failed (%s); retrying in %.0f s", first_line(exc), self.interval)
