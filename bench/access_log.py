#!/usr/bin/env python3
"""Event-loop CPU per request of the access log (`AccessLog.observe`: format and append; the
write happens on its own thread), for text and JSON lines, against a listener that does
nothing, in the same run.

    python -O bench/access_log.py          # 5 rounds of 20,000 records per variant
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.logs import AccessLog
from agent.records import UsageRecord, new_request_id
from bench.store_writer import record


async def measure(listener: Callable[[UsageRecord], None], batch: list[UsageRecord]) -> float:
    """Thread CPU (µs per record) of calling the listener once per record on a running loop."""
    start = time.thread_time()
    for rec in batch:
        listener(rec)
    spent = time.thread_time() - start
    await asyncio.sleep(0)
    return spent / len(batch) * 1e6


async def run(records: int, rounds: int) -> dict[str, list[float]]:
    sink = os.open(os.devnull, os.O_WRONLY)
    results: dict[str, list[float]] = {"baseline (no-op listener)": [], "text": [], "json": []}
    try:
        for _ in range(rounds):  # interleaved, so drift in the machine hits every variant alike
            batch = [record(new_request_id()) for _ in range(records)]
            results["baseline (no-op listener)"].append(await measure(lambda rec: None, batch))
            for fmt in ("text", "json"):
                log = AccessLog(fmt, fd=sink)
                results[fmt].append(await measure(log.observe, batch))
                log.close()
    finally:
        os.close(sink)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round [20,000]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant, interleaved [5]")
    args = parser.parse_args()
    results = asyncio.run(run(args.records, args.rounds))
    base = statistics.median(results["baseline (no-op listener)"])
    print(f"access log, event-loop CPU per request (median of {args.rounds} rounds of {args.records:,})")
    for name, values in results.items():
        med = statistics.median(values)
        extra = "" if name.startswith("baseline") else f"   +{med - base:.2f} µs over the baseline"
        print(f"  {name:<28} {med:6.2f} µs{extra}")


if __name__ == "__main__":
    main()
