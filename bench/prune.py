#!/usr/bin/env python3
"""What background retention (auto_prune) costs the writer: how long one pruning turn holds
the writer thread, next to how long one batch of records takes to write, in the same run.

It fills a fresh SQLite store (or a PostgreSQL database, `--pg URL`) with `--old` records past
the retention (spread over hours, rolled up as the writer does) and `--recent` within it, then
runs the pruner's turns back to back until nothing is past the cutoff, timing each; and times
writing batches of 500 records into the same store for comparison. A writer alternates the
two, so the worst wait a new record sees while the store catches up is about one turn plus
one batch.

    python bench/prune.py                       # 200k old records, SQLite
    python bench/prune.py --old 1000000 --batch 5000
    python bench/prune.py --pg postgresql://bench@127.0.0.1:55432/bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.records import UsageRecord
from agent.store.database import migrate, open_database
from agent.store.insert import MultiRowInsert
from agent.store.queries import count_records
from agent.store.retention import DEFAULT_BATCH, Pruner
from agent.store.rollups import Rollups, roll_up_periods
from agent.store.schema import CONVERTERS_TO_DB, record_values

KEEP = timedelta(hours=12)


def rows(records: list[UsageRecord]) -> list[list[object]]:
    return [[f(v) for f, v in zip(CONVERTERS_TO_DB, record_values(r), strict=True)] for r in records]


def fill(url: str, old: int, recent: int) -> None:
    db = open_database(url)
    migrate(db)
    insert = MultiRowInsert(db)
    now = datetime.now(UTC)
    start = now - KEEP - timedelta(hours=6)  # old records: 6 hours, ending at the cutoff
    step = timedelta(hours=6) / max(old, 1)

    def record(i: int, ts: datetime) -> UsageRecord:
        return UsageRecord(
            request_id=f"b-{i}",
            ts=ts,
            user=f"u{i % 24}",
            team=f"t{i % 4}",
            model=f"m{i % 4}",
            prompt_tokens=20 + i % 50,
            completion_tokens=100 + i % 200,
            latency_ms=50.0 + i % 900,
        )

    for first in range(0, old, 5000):
        with db.atomic():
            insert.run(db, rows([record(i, start + i * step) for i in range(first, min(old, first + 5000))]))
    with db.atomic():
        insert.run(db, rows([record(old + i, now - timedelta(minutes=i % 600)) for i in range(recent)]))
    print(f"filled: {old:,} old and {recent:,} recent records; rolling up ...", flush=True)
    roll_up_periods(db, now)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", type=int, default=200_000, help="records past the retention")
    parser.add_argument("--recent", type=int, default=20_000, help="records within it")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="records per pruning turn")
    parser.add_argument("--pg", help="a PostgreSQL URL (an empty database) instead of SQLite")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.pg or f"sqlite:///{tmp}/prune.db"
        fill(url, args.old, args.recent)
        db = open_database(url)
        pruner = Pruner(KEEP, batch=args.batch, interval=3600)
        turns: list[float] = []
        while True:
            started = time.perf_counter()
            deleted = pruner.prune_due(db)
            turns.append(time.perf_counter() - started)
            if pruner.next_at:  # caught up: the next check is an interval away
                break
            if len(turns) % 20 == 0:
                print(f"  {pruner.pruned_total:,} of {args.old:,} deleted ...", flush=True)
            assert deleted > 0
        left = count_records(db)

        insert, rollups = MultiRowInsert(db), Rollups(db)
        writes: list[float] = []
        for n in range(50):
            batch = rows(
                [UsageRecord(request_id=f"w-{n}-{i}", team="t0", prompt_tokens=5) for i in range(500)]
            )
            started = time.perf_counter()
            with db.atomic():
                rollups.begin_write(db)
                insert.run(db, batch)
            writes.append(time.perf_counter() - started)
        db.close()

    def ms(values: list[float], q: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"

    kind = "PostgreSQL" if args.pg else "SQLite"
    print(
        f"\n{kind}: {pruner.pruned_total:,} records pruned in {len(turns)} turns of <= {args.batch:,}, "
        f"{sum(turns):.1f} s in all; {left:,} left (expected {args.recent:,})"
    )
    print(
        f"  one pruning turn:          p50 {ms(turns, 0.5)} ms, p95 {ms(turns, 0.95)} ms, "
        f"max {max(turns) * 1000:.1f} ms"
    )
    print(
        f"  one batch of 500 records:  p50 {ms(writes, 0.5)} ms, p95 {ms(writes, 0.95)} ms "
        f"(mean {statistics.mean(writes) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
