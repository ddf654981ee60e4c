"""Background retention (auto_prune): old records and their rollups go, a bounded batch at a
time, while new records keep being written; on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import peewee
import pytest

from agent.records import UsageRecord
from agent.store.database import migrate, open_database
from agent.store.queries import count_records, iter_records
from agent.store.retention import prune_batch
from agent.store.rollups import as_datetime, floor_to, roll_up_periods
from agent.store.schema import ROLLUP_TABLE
from agent.store.stats import compute_stats
from agent.store.writer import UsageStore

KEEP = timedelta(hours=6)  # short: the rollups walk every 5 minutes since the oldest record


# `store_url` (tests/conftest.py): each test runs on SQLite and on PostgreSQL.


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write(url: str, records: list[UsageRecord]) -> None:
    store = UsageStore(url, journal=False, spill_dir=None)
    store.start()
    try:
        for record in records:
            store.submit(record)
        assert store.flush(30)
    finally:
        store.close()


def aged(prefix: str, n: int, start: datetime, step: timedelta) -> list[UsageRecord]:
    return [
        UsageRecord(
            request_id=f"{prefix}-{i}", ts=start + i * step, team="ml", prompt_tokens=i, latency_ms=1.0 + i
        )
        for i in range(n)
    ]


@pytest.fixture
def db(store_url: str) -> Iterator[peewee.Database]:
    database = open_database(store_url)
    migrate(database)
    yield database
    database.close()


def rollup_periods(db: peewee.Database) -> list[datetime]:
    rows = db.execute_sql(f'SELECT DISTINCT period FROM "{ROLLUP_TABLE}" ORDER BY period').fetchall()
    return [as_datetime(p) for (p,) in rows]


def test_the_writer_prunes_old_records_in_batches_and_keeps_writing(
    store_url: str, db: peewee.Database
) -> None:
    now = datetime.now(UTC)
    old = aged("old", 3000, now - timedelta(hours=7), timedelta(seconds=1))  # 7 h to 6 h 10 min ago
    recent = aged("recent", 200, now - timedelta(hours=3), timedelta(seconds=30))
    write(store_url, old + recent)
    roll_up_periods(db, now)  # the old periods' rollups exist, as a long-running store has them
    assert rollup_periods(db)[0] < now - KEEP

    store = UsageStore(store_url, journal=False, prune_after=KEEP, prune_batch=250)
    store.start()
    try:
        # New records arrive while the pruner catches up (12 turns): every one is stored.
        live = [UsageRecord(request_id=f"live-{i}", team="ml", prompt_tokens=1) for i in range(300)]
        for record in live:
            store.submit(record)
        assert store.flush(30)
        assert store.pruner is not None
        wait_for(lambda: count_records(db, before=now - KEEP) == 0, "the old records to be deleted")
        assert store.pruner.pruned_total == len(old)
    finally:
        store.close()

    assert count_records(db) == len(recent) + len(live)
    periods = rollup_periods(db)
    assert periods and periods[0] >= now - KEEP - timedelta(hours=1)  # no rollup of a pruned period
    # The rollups agree with what is left: the stats over the retention count exactly that.
    stats = compute_stats(db, since=now - KEEP, until=now + timedelta(minutes=1), group_by=())
    assert stats["total"]["requests"] == len(recent) + len(live)
    assert stats["total"]["tokens_in"] == sum(r.prompt_tokens or 0 for r in recent + live)


def turns(db: peewee.Database, cutoff: datetime, limit: int) -> list[int]:
    deleted_per_turn = []
    for _ in range(20):
        deleted, upto = prune_batch(db, cutoff, limit)
        if upto is None:
            return deleted_per_turn
        deleted_per_turn.append(deleted)
    raise AssertionError("pruning never ended")


@pytest.mark.parametrize(("limit", "expected"), [(3, [4, 4, 4, 4]), (6, [4, 4, 4, 4]), (9, [8, 8])])
def test_a_turn_deletes_whole_periods_up_to_its_bound_at_least_one(
    store_url: str, db: peewee.Database, limit: int, expected: list[int]
) -> None:
    # Four 5-minute periods of four records each, all past the retention, and one record in
    # the period the cutoff falls in (kept: a record goes within 5 minutes of passing it).
    cutoff = datetime.now(UTC) - KEEP
    edge = floor_to(cutoff, 300)
    records = [
        UsageRecord(
            request_id=f"p{period}-{i}", ts=edge - timedelta(minutes=5 * period) + timedelta(seconds=i)
        )
        for period in (1, 2, 3, 4)
        for i in range(4)
    ]
    records.append(UsageRecord(request_id="at-the-edge", ts=edge))
    write(store_url, records)
    roll_up_periods(db, datetime.now(UTC))
    assert turns(db, cutoff, limit) == expected
    assert [r.request_id for r in iter_records(db)] == ["at-the-edge"]
    # The rollups of pruned periods are gone, and so is the hour rollup of the hour they
    # touched; what is left answers the stats exactly.
    assert all(period >= edge for period in rollup_periods(db))
    stats = compute_stats(db, since=edge - timedelta(hours=2), until=datetime.now(UTC))
    assert stats["total"]["requests"] == 1


def test_nothing_within_the_retention_is_touched(store_url: str, db: peewee.Database) -> None:
    now = datetime.now(UTC)
    write(store_url, aged("kept", 50, now - KEEP + timedelta(hours=1), timedelta(minutes=1)))
    assert prune_batch(db, now - KEEP, 1000) == (0, None)
    assert count_records(db) == 50
