#!/usr/bin/env python3
"""How long `/ops/stats?window=24h` takes as the store grows, from the records alone (before:
every record read) and with the hourly rollups (after), in the same run.

For each size it fills a fresh SQLite store (or a PostgreSQL database, `--pg URL`) with records
spread over the last 24 hours (4 teams of 6 users, 4 models, 3 endpoints, 4 % errors,
log-normal latencies), rolls up the hours that are over as the writer does, and times the
statistics in total and grouped by team,model: p50 of `--runs` runs each, through a real
aiohttp ops app on a loopback port, plus the query alone. It also checks that both ways give
the same counts and sums, and percentiles within the promised error.

    python bench/stats.py                           # 10k and 1M records
    python bench/stats.py --sizes 10000,1000000,10000000
    python bench/stats.py --pg postgresql://bench@127.0.0.1:55432/bench
    python bench/stats.py --keep /tmp/stats-bench   # fill once, time again later
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

import aiohttp
import peewee
from aiohttp import web

from agent.config import Config
from agent.records import UsageRecord, new_request_id, utcnow
from agent.store.database import migrate, open_database
from agent.store.insert import MultiRowInsert
from agent.store.readers import Readers
from agent.store.rollups import roll_up_periods
from agent.store.schema import ROLLED_TABLE, ROLLUP_TABLE, USAGE_TABLE
from agent.store.stats import PERCENTILE_ERROR, compute_stats
from agent.store.writer import UsageStore
from ops_api.app import build_app

TEAMS = ("quant", "finetune", "eval", "search")
USERS = tuple((f"{team}-{i}", team) for team in TEAMS for i in range(6))
MODELS = ("llama3:8b", "qwen2.5:7b", "mistral:7b", "nomic-embed-text")
OUTCOMES = ("ok",) * 96 + ("upstream_error", "upstream_error", "client_cancelled", "rejected")


def make_record(rng: random.Random, ts: Any) -> UsageRecord:
    user, team = rng.choice(USERS)
    model = rng.choice(MODELS)
    embedding = model == "nomic-embed-text"
    endpoint = "/v1/embeddings" if embedding else rng.choice(("/v1/chat/completions", "/api/chat"))
    outcome = rng.choice(OUTCOMES)
    prompt = rng.randint(5, 2000)
    completion = 0 if embedding else rng.randint(1, 800)
    return UsageRecord(
        request_id=new_request_id(),
        ts=ts,
        user=user,
        team=team,
        client_ip="10.0.0.7",
        upstream="http://127.0.0.1:11434",
        dialect="ollama" if endpoint.startswith("/api") else "openai",
        endpoint=endpoint,
        operation="embedding" if embedding else "chat",
        model=model,
        stream=not embedding,
        status=200 if outcome == "ok" else 502,
        outcome=outcome,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        usage_source="estimated" if rng.random() < 0.03 else "reported",
        latency_ms=rng.lognormvariate(math.log(60 if embedding else 900), 0.6),
        ttft_ms=None if embedding else rng.lognormvariate(math.log(120), 0.5),
        tokens_per_second=None if embedding else max(1.0, rng.gauss(45, 8)),
        request_bytes=400,
        response_bytes=1200,
        instance="bench-0",
        cost=None if embedding else round((prompt * 0.15 + completion * 0.6) / 1e6, 9),
    )


def fill(db: peewee.Database, n: int, seed: int = 7) -> tuple[float, float]:
    """n records over the last 24 h, oldest first, as the writer inserts them; then the
    roll-up of the hours that are over. Returns (insert s, roll-up s)."""
    rng = random.Random(seed)
    now = utcnow()
    converter = UsageStore("sqlite:///:memory:", journal=False)
    insert = MultiRowInsert(db)
    started = time.perf_counter()
    chunk = 5000
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        tss = sorted(now - timedelta(seconds=rng.uniform(0, 86400)) for _ in range(size))
        rows = converter._rows([make_record(rng, ts) for ts in tss])
        with db.atomic():
            for i in range(0, len(rows), 500):
                insert.run(db, rows[i : i + 500])
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    roll_up_periods(db, utcnow())
    return inserted, time.perf_counter() - started


def p50(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def agree(exact: dict[str, Any], rolled: dict[str, Any]) -> None:
    """Same counts and sums; percentiles within the error of the raw answer's buckets
    (both are bucketed: the reference for the exact percentiles is the tests' job)."""
    pairs = [(exact["total"], rolled["total"])]
    by_key = {tuple(g["key"].items()): g for g in exact["groups"]}
    assert len(by_key) == len(rolled["groups"]), "different groups"
    pairs += [(by_key[tuple(g["key"].items())], g) for g in rolled["groups"]]
    for a, b in pairs:
        for k in ("requests", "errors", "tokens_in", "tokens_out", "estimated", "cost", "costed"):
            assert a[k] == b[k], (k, a[k], b[k])
        for metric in ("latency_ms", "ttft_ms"):
            for p in ("p50", "p95", "p99"):
                x, y = a[metric][p], b[metric][p]
                assert (x is None) == (y is None) and (x is None or abs(x - y) <= 2 * PERCENTILE_ERROR * x)


async def time_http(url: str, db: peewee.Database, runs: int) -> dict[str, float]:
    """p50 ms of GET /ops/stats through the real ops app on a loopback port."""
    readers = Readers(url)
    view = SimpleNamespace(
        config=Config(db=url, auth="off"),
        store=SimpleNamespace(db=db, readers=readers),
        started_at=time.time(),
        verifier=None,
    )
    runner = web.AppRunner(build_app(view))  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for name, group_by in (("total", ""), ("team,model", "team,model")):
                times = []
                for _ in range(runs):
                    # A new `until` each time: the handler shares an answer among callers
                    # asking the same question within seconds, and this times the query.
                    until = utcnow()
                    params = {
                        "since": (until - timedelta(hours=24)).isoformat(),
                        "until": until.isoformat(),
                        "scope": "fleet",
                    }
                    if group_by:
                        params["group_by"] = group_by
                    t0 = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{port}/ops/stats", params=params) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                    times.append((time.perf_counter() - t0) * 1000)
                out[name] = statistics.median(times)
    finally:
        await runner.cleanup()
        readers.close()
    return out


def reset(db: peewee.Database) -> None:
    for table in (ROLLUP_TABLE, ROLLED_TABLE, USAGE_TABLE):
        db.execute_sql(f"DELETE FROM {table}")


def bench_size(url: str, n: int, runs: int, reuse: bool = False) -> dict[str, float]:
    db = open_database(url)
    migrate(db)
    # --proxy adds records to a kept store: reuse it while it holds at least n.
    if reuse and db.execute_sql(f"SELECT COUNT(*) FROM {USAGE_TABLE}").fetchone()[0] >= n:
        started = time.perf_counter()
        roll_up_periods(db, utcnow())  # the periods that ended since the last run
        inserted, rolled = float("nan"), time.perf_counter() - started
    else:
        reset(db)
        inserted, rolled = fill(db, n)
    now = utcnow()
    since = now - timedelta(hours=24)
    figures: dict[str, float] = {"insert_us": inserted / n * 1e6, "rollup_s": rolled}
    for name, group_by in (("total", ()), ("team,model", ("team", "model"))):
        raw_runs = max(1, min(runs, 3 if n >= 1_000_000 else runs))
        exact = compute_stats(db, since, now, group_by, rollups=False)
        agree(exact, compute_stats(db, since, now, group_by))
        figures[f"raw {name}"] = p50(
            lambda g=group_by: compute_stats(db, since, now, g, rollups=False), raw_runs
        )
        figures[f"rollups {name}"] = p50(lambda g=group_by: compute_stats(db, since, now, g), runs)
    http = asyncio.run(time_http(url, db, runs))
    figures.update({f"http {k}": v for k, v in http.items()})
    db.close()
    return figures


async def _ready(session: aiohttp.ClientSession, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


async def proxy_overhead(
    db_url: str, pollers: int, interval: float, requests: int, blocks: int
) -> list[tuple[str, float]]:
    """The proxy's added p50 (via the sidecar minus direct to the simulated server, requests
    alternating, concurrency 1) without and with `pollers` clients polling /ops/stats every
    `interval` s. The two conditions alternate in `blocks` blocks of `requests` requests each,
    and each condition's p50s are taken over all its blocks, so the box's drift during the run
    hits both alike. The sidecar and the server are subprocesses, as in production; the server
    answers at once (no token delay), so the proxy's share of a request is as large as it gets."""
    python = sys.executable
    up_port, port, ops_port = (free_port() for _ in range(3))
    with tempfile.TemporaryDirectory() as data:
        procs = [
            await asyncio.create_subprocess_exec(
                python, "-m", "agent.cli", "mock-upstream", "--dialect", "openai",
                "--listen", f"127.0.0.1:{up_port}", "--token-delay", "0",
            ),
            await asyncio.create_subprocess_exec(
                python, "-m", "agent.cli", "run", "--upstream", f"http://127.0.0.1:{up_port}",
                "--listen", f"127.0.0.1:{port}", "--ops-listen", f"127.0.0.1:{ops_port}", "--db", db_url,
                "--data-dir", data, "--auth", "off", "--log-level", "warning",
                stdout=asyncio.subprocess.DEVNULL,  # the access log, one line a request
            ),
        ]  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                await _ready(session, f"http://127.0.0.1:{ops_port}/readyz")
                body = {
                    "model": "sim-model",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                }

                async def timed(base: str) -> float:
                    t0 = time.perf_counter()
                    async with session.post(base + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        assert r.status == 200
                    return (time.perf_counter() - t0) * 1000

                times: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}

                async def block(n: int, polling: bool) -> None:
                    direct, proxied = times[polling]
                    for _ in range(n):
                        direct.append(await timed(f"http://127.0.0.1:{up_port}"))
                        proxied.append(await timed(f"http://127.0.0.1:{port}"))

                polls = 0

                async def poll() -> None:
                    nonlocal polls
                    url = f"http://127.0.0.1:{ops_port}/ops/stats?window=24h&group_by=team,model"
                    while True:
                        async with session.get(url) as r:
                            await r.read()
                            assert r.status == 200, r.status
                        polls += 1
                        await asyncio.sleep(interval)

                await block(50, False)  # warm-up
                times[False] = ([], [])
                for i in range(2 * blocks):
                    polling = i % 2 == 1
                    tasks = [asyncio.create_task(poll()) for _ in range(pollers if polling else 0)]
                    await block(requests, polling)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                out = []
                names = {False: "without polling", True: f"{pollers} pollers every {interval}s"}
                for polling, name in names.items():
                    direct, proxied = times[polling]
                    out.append((name, statistics.median(proxied) - statistics.median(direct)))
                out.append(("polls answered", float(polls)))
                return out
        finally:
            for proc in procs:
                proc.terminate()
                await proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="record counts [10000,1000000]")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per figure [15]")
    parser.add_argument("--pg", help="a throwaway PostgreSQL database URL instead of SQLite files")
    parser.add_argument("--keep", help="keep the SQLite files in this folder and reuse them next time")
    parser.add_argument("--proxy", action="store_true", help="also: the proxy's added p50 with stats polling")
    parser.add_argument("--pollers", type=int, default=4, help="with --proxy: clients polling /ops/stats [4]")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="with --proxy: seconds between polls [0.5]"
    )
    parser.add_argument("--requests", type=int, default=300, help="with --proxy: requests per block [300]")
    parser.add_argument(
        "--blocks", type=int, default=10, help="with --proxy: blocks per condition, alternating [10]"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"/ops/stats over 24 h of records, p50 of {args.runs} runs (raw: of 3 at >= 1M), ms:")
    header = (
        f"{'records':>10} | {'insert µs/rec':>13} | {'roll-up s':>9} | {'raw total':>9} | {'raw t,m':>8} "
        f"| {'rollups total':>13} | {'rollups t,m':>11} | {'HTTP total':>10} | {'HTTP t,m':>8}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            url = args.pg or f"sqlite:///{args.keep or tmp}/stats-{n}.db"
            f = bench_size(url, n, args.runs, reuse=bool(args.keep) and not args.pg)
            print(
                f"{n:>10,} | {f['insert_us']:>13.1f} | {f['rollup_s']:>9.1f} | {f['raw total']:>9.1f} "
                f"| {f['raw team,model']:>8.1f} | {f['rollups total']:>13.1f} "
                f"| {f['rollups team,model']:>11.1f} "
                f"| {f['http total']:>10.1f} | {f['http team,model']:>8.1f}",
                flush=True,
            )
            if args.proxy:
                figures = asyncio.run(
                    proxy_overhead(url, args.pollers, args.interval, args.requests, args.blocks)
                )
                for name, value in figures:
                    print(
                        f"{'':>10}   proxy added p50, {name}: {value:.3f}"
                        if name != "polls answered"
                        else f"{'':>10}   /ops/stats polls answered meanwhile: {value:.0f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
