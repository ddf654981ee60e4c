#!/usr/bin/env python3
"""Event-loop CPU per record of `UsageStore.submit`, with the journal and without it, in the
same run: what the crash-safety of README's Durability section costs each request.

    python -O bench/journal.py             # 5 rounds of 20,000 records per variant
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.records import new_request_id
from agent.store.writer import UsageStore
from bench.store_writer import record


def measure(journal: bool, records: int, workdir: Path) -> float:
    """Thread CPU of submit() (µs per record); the writer thread commits meanwhile."""
    store = UsageStore(f"sqlite:///{workdir}/usage.db", queue_size=records + 1, journal=journal)
    store.start()
    batch = [record(new_request_id()) for _ in range(records)]
    start = time.thread_time()
    for rec in batch:
        store.submit(rec)
    spent = time.thread_time() - start
    store.close()
    return spent / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round [20,000]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant, interleaved [5]")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"without journal": [], "with journal": []}
    with tempfile.TemporaryDirectory(prefix="sidemeter-journal-") as tmp:
        for rnd in range(args.rounds):
            for i, name in enumerate(results):
                workdir = Path(tmp) / f"{rnd}-{i}"
                workdir.mkdir()
                results[name].append(measure(name == "with journal", args.records, workdir))
    print(f"UsageStore.submit on the event loop, {args.records:,} records x {args.rounds} rounds")
    print(f"{'variant':<16} {'us/record':>9}   rounds")
    for name, values in results.items():
        print(f"{name:<16} {statistics.median(values):>9.2f}   " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
