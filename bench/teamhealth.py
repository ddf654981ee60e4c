#!/usr/bin/env python3
"""What the 5-minute team window costs: `TeamHealth.observe` (a Recorder listener, once per
request) against an empty listener measured in the same run, and what one `/ops/health` takes
with the window full (every team at its sample bound): `collect` on the event loop, then
`summarize` (the sorting, in a thread).

    python -O bench/teamhealth.py      # µs per request, best of 5 rounds of 50,000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.records import UsageRecord
from agent.teamhealth import TeamHealth, summarize
from bench.metrics_listener import ROUNDS, N, per_request, records


def empty(rec: UsageRecord) -> None:
    pass


def snapshot_ms(teams: int, samples: int) -> tuple[float, float]:
    health = TeamHealth(max_teams=teams, max_samples=samples)
    for i in range(teams * samples):
        rec = UsageRecord(request_id=str(i), team=f"team-{i % teams}", dialect="openai")
        rec.latency_ms, rec.ttft_ms = float(i % 997), float(i % 89)
        health.observe(rec)
    loop = thread = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        raw = health.collect()
        t1 = time.perf_counter()
        summarize(raw)
        loop, thread = min(loop, t1 - t), min(thread, time.perf_counter() - t1)
    return loop * 1000, thread * 1000


def main() -> None:
    recs = records()
    base = per_request(empty, recs)
    ours = per_request(TeamHealth().observe, recs)
    print(f"empty listener:        {base:6.2f} µs per request ({ROUNDS} rounds of {N:,})")
    print(f"TeamHealth.observe:    {ours:6.2f} µs per request ({ours - base:+.2f} µs over the empty one)")
    full = TeamHealth()
    for teams in (full.max_teams, 5):
        loop, thread = snapshot_ms(teams, full.max_samples)
        print(
            f"/ops/health, {teams} teams x {full.max_samples} samples: collect {loop:6.2f} ms on the loop, "
            f"summarize {thread:6.2f} ms in a thread"
        )


if __name__ == "__main__":
    main()
