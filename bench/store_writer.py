#!/usr/bin/env python3
"""CPU per record of the store's writer thread, with random request ids (UUIDv4: what
mitmproxy's flow ids are, and what many clients send as X-Request-ID) against the sidecar's
generated time-ordered ones (UUIDv7), in the same run, as the table grows.

Records go through `UsageStore`'s own conversion, multi-row INSERT and hourly rollups
(`agent/store/rollups.py`) into a real SQLite file (WAL, as `sidemeter run` opens it), in
batches of 100 as the writer takes them under load. `--no-rollups` times the INSERT alone.

    python bench/store_writer.py                 # 200,000 records per variant
    python bench/store_writer.py --records 1000000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.records import Operation, UsageRecord, UsageSource, new_request_id
from agent.store.writer import UsageStore

BATCH = 100


_COUNTER = itertools.count()


def record(request_id: str) -> UsageRecord:
    n = next(_COUNTER)  # a few teams, models and users, as the rollups see them in practice
    return UsageRecord(
        request_id=request_id,
        user=f"bench-user-{n % 20}",
        team=f"bench-team-{n % 20 // 5}",
        client_ip="127.0.0.1",
        upstream="http://127.0.0.1:8000",
        endpoint="/v1/chat/completions",
        operation=Operation.CHAT,
        model=f"bench-model-{n % 3}",
        status=200,
        prompt_tokens=12,
        completion_tokens=8,
        total_tokens=20,
        usage_source=UsageSource.REPORTED,
        latency_ms=800.0 + n % 997,
        ttft_ms=40.0 + n % 101,
        tokens_per_second=30.0 + n % 13,
        request_bytes=180,
        response_bytes=420,
    )


def run(
    records: int, make_id: Callable[[], str], checkpoints: list[int], rollups: bool = True
) -> list[float]:
    """Writer CPU (µs per record) for each span between checkpoints."""
    with tempfile.TemporaryDirectory() as tmp:
        store = UsageStore(f"sqlite:///{tmp}/usage.db")
        store.start()  # opens and migrates; the inserts below run on this thread
        db, insert = store.db, store._insert
        assert insert is not None
        spans: list[float] = []
        cpu, done, start = 0.0, 0, 0
        for at in checkpoints:
            while done < at:
                rows = store._rows([record(make_id()) for _ in range(BATCH)])
                t0 = time.thread_time()
                if rollups:
                    store._insert_rows(rows)  # the writer's own transaction: INSERT + rollups
                else:
                    with db.atomic():
                        insert.run(db, rows)
                cpu += time.thread_time() - t0
                done += BATCH
            spans.append(cpu / (done - start) * 1e6)
            cpu, start = 0.0, done
            print(f"  {make_id.__name__:>14}: {done:>9,} rows, {spans[-1]:6.1f} µs/record", flush=True)
        store.close()
    return spans


def random_uuid4() -> str:
    return str(uuid.uuid4())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per variant [200,000]")
    parser.add_argument("--no-rollups", action="store_true", help="time the INSERT without the rollups")
    args = parser.parse_args()
    n = max(BATCH, args.records // BATCH * BATCH)
    checkpoints = sorted({n // 4 // BATCH * BATCH or BATCH, n // 2 // BATCH * BATCH or BATCH, n})
    print(f"INSERT CPU of the store writer, {n:,} records per variant, batches of {BATCH}:")
    random_ids = run(n, random_uuid4, checkpoints, not args.no_rollups)
    ordered = run(n, new_request_id, checkpoints, not args.no_rollups)
    print(f"\n{'rows in the table':>20} | {'UUIDv4 µs/rec':>14} | {'UUIDv7 µs/rec':>14} | v7 / v4")
    low = 0
    for at, r, o in zip(checkpoints, random_ids, ordered, strict=True):
        print(f"{f'{low:,}-{at:,}':>20} | {r:14.1f} | {o:14.1f} | {o / r:.2f}x")
        low = at


if __name__ == "__main__":
    main()
