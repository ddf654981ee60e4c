#!/usr/bin/env python3
"""How fast a flood of refused requests can grow the usage store: `sidemeter run --auth jwt` in a
process of its own, and clients without a token sending requests whose every stored text field
is at its bound (a path past the endpoint bound, a model name past its bound, a long
X-Request-ID), each answered 401 and recorded. Prints refused requests per second, database bytes
per record and what that makes per second and per hour.

    python bench/refused_flood.py               # 10 s, 16 connections
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from harness import Bench, Sidemeter, say

from agent.records import TEXT_LIMITS

LIMIT = dict(TEXT_LIMITS)
PATH = "/v1/chat/completions/" + "p" * LIMIT["endpoint"]  # cut to the bound: the most it stores
BODY = b'{"model": "' + b"m" * (LIMIT["model"] + 100) + b'", "messages": []}'


def stored(db: Path) -> tuple[int, int]:
    """(rows, bytes of the database file once its write-ahead log is folded in)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = conn.execute("SELECT COUNT(*) FROM usage_logs").fetchone()[0]
    return rows, db.stat().st_size


async def flood(url: str, seconds: float, connections: int) -> int:
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal sent
        n = 0
        while time.monotonic() < deadline:
            rid = f"{i:03d}-{n:09d}-" + "r" * LIMIT["request_id"]
            async with session.post(url + PATH, data=BODY, headers={"X-Request-ID": rid}) as r:
                await r.read()
                assert r.status == 401, r.status
            n += 1
            sent += 1

    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(client(i, session) for i in range(connections)))
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the flood [10]")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients [16]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidemeter-flood-") as tmp:
        bench = Bench(python=sys.executable, workdir=Path(tmp), upstream_url="http://127.0.0.1:9")
        target = Sidemeter("sidemeter", "sidemeter run --auth jwt")
        await target.prepare(bench)  # a secret is configured; the flood sends no token
        await target.start(bench)
        try:
            async with aiohttp.ClientSession() as s, s.get(target.base_url + "/v1/models") as r:
                assert r.status == 401  # the table exists before the measure
            await asyncio.sleep(1.0)  # the writer's linger: the first record is in
            rows0, bytes0 = stored(target.db_path)
            say(f"flooding {target.base_url} for {args.seconds:g} s with {args.connections} connections")
            start = time.monotonic()
            sent = await flood(target.base_url, args.seconds, args.connections)
            elapsed = time.monotonic() - start
        finally:
            await target.stop()
        rows, size = stored(target.db_path)
    grown, records = size - bytes0, rows - rows0
    rate = sent / elapsed
    per = grown / records
    print(
        f"refused-request flood: {args.connections} connections, {elapsed:.1f} s, "
        f"{sent:,} requests, {records:,} records"
    )
    print(f"{rate:,.0f} refused requests/s, {per:,.0f} database bytes per record")
    print(
        f"the store grows {rate * per / 2**20:.2f} MiB/s, "
        f"{rate * per * 3600 / 2**30:.1f} GiB/hour at this rate"
    )


if __name__ == "__main__":
    asyncio.run(main())
