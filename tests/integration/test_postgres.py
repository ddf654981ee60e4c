"""The store on a real PostgreSQL server (a throwaway one, started by the tests): the same
records, answers and guarantees as on SQLite — including a server that goes away under load,
in-process and under a real `sidemeter run`."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import peewee
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.records import UsageRecord
from agent.sim import SimulatedLLM
from agent.store.database import migrate, open_database
from agent.store.queries import export_records, get_record, iter_records, prune
from agent.store.writer import UsageStore
from tests.support.postgres import PostgresServer
from tests.support.process import SidemeterProcess
from tests.support.sidecar import RunningSidecar
from tests.unit.test_store import full_record

# Fields that differ between two runs of the same traffic: ids, clocks, ports, and the body size
# (the server's created_at timestamps vary in length).
VOLATILE = {
    *("request_id", "ts", "latency_ms", "ttft_ms", "server_duration_ms", "tokens_per_second"),
    *("upstream", "response_bytes", "instance"),  # instance: host:proxy-port, a new port each
}


def test_every_field_round_trips_and_migrate_is_idempotent(postgres_url: str, tmp_path: Path) -> None:
    store = UsageStore(postgres_url, spill_dir=tmp_path / "spill")
    store.start()
    rec = full_record()
    store.submit(rec)
    assert store.flush(10)
    store.close()
    db = open_database(postgres_url)
    try:
        got = get_record(db, rec.request_id)
        assert got is not None and got.to_dict() == rec.to_dict()
        assert migrate(db) == migrate(db)  # a second sidecar starting on the same database
    finally:
        db.close()


def test_export_and_prune_work_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    store = UsageStore(postgres_url, spill_dir=tmp_path / "spill")
    store.start()
    old = [UsageRecord(request_id=f"old-{i}") for i in range(3)]
    for r in old:
        r.ts -= timedelta(days=40)
    new = [UsageRecord(request_id=f"new-{i}", model="m", prompt_tokens=i) for i in range(4)]
    for r in old + new:
        store.submit(r)
    assert store.flush(10)
    store.close()
    db = open_database(postgres_url)
    try:
        out = io.StringIO()
        assert export_records(db, out) == 7
        assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()][:3] == [
            "old-0",
            "old-1",
            "old-2",
        ]
        assert prune(db, timedelta(days=30)) == 3
        assert sorted(r.request_id for r in iter_records(db)) == [f"new-{i}" for i in range(4)]
    finally:
        db.close()


async def _traffic(side: RunningSidecar) -> dict[str, dict[str, object]]:
    """The same mixed requests against a sidecar; its records as /ops/requests answers them."""
    ids = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
        for i in range(12):
            rid = f"pg-{i:02d}-{uuid.uuid4().hex[:8]}"
            body = {
                "model": "sim-model" if i % 4 else "missing",
                "prompt": f"hello {i}",
                "stream": i % 2 == 0,
            }
            res = await http.post(
                "/api/generate", json=body, headers={"X-Request-ID": rid, "X-User-Id": f"user{i % 3}"}
            )
            assert res.status_code in (200, 404)
            ids.append(rid)
    for rid in ids:
        await side.record(rid)
    async with httpx.AsyncClient(base_url=side.ops_url, timeout=30) as ops:
        page = (await ops.get("/ops/requests", params={"limit": 100})).json()["requests"]
        assert [r["request_id"] for r in page] == ids[::-1]  # newest first, all of them
        for user in ("user0", "user1"):
            only = (await ops.get("/ops/requests", params={"user": user})).json()["requests"]
            assert {r["user"] for r in only} == {user} and len(only) == 4
    return {str(r["request_id"])[:5]: {k: v for k, v in r.items() if k not in VOLATILE} for r in page}


async def test_a_sidecar_on_postgresql_answers_like_one_on_sqlite(
    postgres_url: str, start_sidecar: Callable[..., object], tmp_path: Path
) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.0)
    upstream = await sim.start()
    try:
        # One after the other: a process runs one sidecar (hooks and metrics are per process).
        on_sqlite: RunningSidecar = await start_sidecar(upstream)  # type: ignore[misc]
        sqlite_answers = await _traffic(on_sqlite)
        await on_sqlite.sidecar.stop()
        on_postgres: RunningSidecar = await start_sidecar(  # type: ignore[misc]
            upstream, db=postgres_url, data_dir=str(tmp_path / "pg")
        )
        pg_answers = await _traffic(on_postgres)
        for key, answer in sqlite_answers.items():  # request by request (pg-00 ... pg-11)
            assert pg_answers[key] == answer, key
    finally:
        await sim.stop()


def test_ops_reads_keep_their_connection_and_replace_one_the_server_dropped(
    postgres_url: str, tmp_path: Path
) -> None:
    store = UsageStore(postgres_url, spill_dir=tmp_path / "spill")
    store.start()
    rec = full_record()
    store.submit(rec)
    assert store.flush(10)

    def backend(db: peewee.Database) -> int:
        return int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])

    admin = open_database(postgres_url)
    try:
        first = store.readers.read(backend)
        assert store.readers.read(backend) == first  # no new server process and login per query
        admin.execute_sql("SELECT pg_terminate_backend(%s)", [first])  # e.g. idle_session_timeout
        got = store.readers.read(lambda db: get_record(db, rec.request_id))
        assert got is not None and got.request_id == rec.request_id  # no error for the caller
        assert store.readers.read(backend) != first
    finally:
        store.close()
        admin.close()


async def test_a_server_that_goes_away_under_load_loses_no_record(
    postgres_server: PostgresServer, start_sidecar: Callable[..., object]
) -> None:
    url = postgres_server.new_database()
    sim = SimulatedLLM("ollama", token_delay=0.0)
    upstream = await sim.start()
    sent: list[str] = []

    async def load(http: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            rid = f"load-{uuid.uuid4().hex}"
            res = await http.post(
                "/api/generate",
                json={"model": "sim-model", "prompt": "hi", "stream": False},
                headers={"X-Request-ID": rid},
            )
            assert res.status_code == 200  # traffic never stalls or fails while the store is down
            sent.append(rid)

    try:
        side: RunningSidecar = await start_sidecar(upstream, db=url)  # type: ignore[misc]
        async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
            await load(http, 20)
            await asyncio.to_thread(postgres_server.stop, "immediate")  # the server dies
            await asyncio.gather(*(load(http, 25) for _ in range(4)))
            deadline = asyncio.get_running_loop().time() + 30
            while side.sidecar.store.spilled_total == 0:  # after its retries the writer spills them
                assert asyncio.get_running_loop().time() < deadline, "nothing was spilled"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(postgres_server.start)  # and it comes back
            await load(http, 20)
        assert await asyncio.to_thread(side.sidecar.store.flush, 30)
        store_ids = await asyncio.to_thread(_wait_for_ids, url, set(sent))
    finally:
        await sim.stop()
    assert store_ids == set(sent)  # every answered request's record, each once


async def test_sidemeter_run_answers_through_a_postgresql_stop_and_stores_each_record_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The same outage through the real `sidemeter run` in a subprocess, the server stopped as
    an operator stops it (`pg_ctl stop -m fast`), under steady traffic from the start."""
    url = postgres_server.new_database()
    sim = SimulatedLLM("openai", token_delay=0.0)
    upstream = await sim.start()
    side = await asyncio.to_thread(SidemeterProcess, upstream, tmp_path, db=url)
    sent: list[str] = []
    stop = asyncio.Event()
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}

    async def steady_traffic() -> None:
        async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
            while not stop.is_set():
                rid = f"outage-{uuid.uuid4().hex}"
                res = await http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": rid})
                assert res.status_code == 200, res.text  # the proxy never stalls on the store
                sent.append(rid)
                await asyncio.sleep(0.01)  # pacing: a steady stream, not a flood

    async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(condition):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    def spilled() -> bool:
        health = httpx.get(f"http://127.0.0.1:{side.ops_port}/ops/health", timeout=10).json()
        return int(health["store"]["spilled"]) > 0

    traffic = asyncio.create_task(steady_traffic())
    try:
        await until(lambda: len(sent) >= 30, "no traffic before the outage")
        with postgres_server.outage("fast"):
            during = len(sent)
            await until(spilled, "nothing spilled while PostgreSQL was down")
            await until(lambda: len(sent) >= during + 50, "traffic stalled during the outage")
        after = len(sent)
        await until(lambda: len(sent) >= after + 50, "traffic stalled after the outage")
        stop.set()
        await traffic
        # Re-ingesting backs off while the server is down: the spill may take a while to go.
        stored = await asyncio.to_thread(_wait_for_ids, url, set(sent), 120.0)
        side.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(side.wait, 60) == 0, side.stderr
    finally:
        stop.set()
        if not traffic.done():
            traffic.cancel()
        side.stop()
        await sim.stop()
    assert stored == set(sent) and len(sent) >= 130  # none lost, none extra
    assert _wait_for_ids(url, set(sent), 0) == set(sent)  # and none doubled (it checks), after the stop
    assert "spilling" in side.stderr  # the outage was logged


def _wait_for_ids(url: str, want: set[str], timeout: float = 60.0) -> set[str]:
    """The request ids stored once the writer has re-ingested its spill files (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        db = open_database(url)
        try:
            rows = [r.request_id for r in iter_records(db)]
        finally:
            db.close()
        assert len(rows) == len(set(rows)), "a record was stored twice"
        if set(rows) >= want or time.monotonic() > deadline:
            return set(rows)
        time.sleep(0.2)


def test_run_stops_at_start_with_one_line_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--auth", "off", "--listen", "127.0.0.1:0",
         "--ops-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
         "--db", "postgresql://nobody:secret@127.0.0.1:1/usage"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: cannot connect to postgresql://nobody:***@127.0.0.1:1/usage"
    )
    assert "secret" not in res.stderr


pytestmark = pytest.mark.timeout(300)


async def test_stats_of_one_sidecar_or_the_whole_fleet_on_a_shared_store(
    postgres_url: str, start_sidecar: Callable[..., object], tmp_path: Path
) -> None:
    """A running sidecar ("edge-1") and another one's records ("edge-2", written through a
    second UsageStore, with costs) on one PostgreSQL: scope=local answers edge-1's own
    requests, fleet (the default) both, and the cost sums are the records' to the last digit."""
    sim = SimulatedLLM("ollama", token_delay=0.0)
    upstream = await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(  # type: ignore[misc]
            upstream, db=postgres_url, data_dir=str(tmp_path / "pg"), instance_id="edge-1"
        )
        since = datetime.now(UTC) - timedelta(minutes=1)
        ids = []
        async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
            for i in range(9):
                rid = f"edge1-{i}-{uuid.uuid4().hex[:6]}"
                res = await http.post(
                    "/api/generate",
                    json={"model": "sim-model", "prompt": f"hi {i}", "stream": False},
                    headers={"X-Request-ID": rid, "X-User-Id": "ann"},
                )
                assert res.status_code == 200
                ids.append(rid)
        for rid in ids:
            await side.record(rid)
        other = UsageStore(postgres_url, spill_dir=tmp_path / "spill-2")
        other.start()
        costs = [0.000123456, 1.5, 0.25, 0.000000001, 17.0, None, 0.1, 0.2]
        for i, cost in enumerate(costs):
            other.submit(UsageRecord(request_id=f"edge2-{i}", instance="edge-2", model="m2", cost=cost))
        assert await asyncio.to_thread(other.flush, 10)
        other.close()
        until = datetime.now(UTC) + timedelta(seconds=5)
        window = {"since": since.isoformat(), "until": until.isoformat()}

        async with httpx.AsyncClient(base_url=side.ops_url, timeout=30) as ops:
            local = (await ops.get("/ops/stats", params={**window, "scope": "local"})).json()
            fleet = (await ops.get("/ops/stats", params={**window, "scope": "fleet"})).json()
            default = (await ops.get("/ops/stats", params=window)).json()
            per = (await ops.get("/ops/stats", params={**window, "group_by": "instance"})).json()
            bad = await ops.get("/ops/stats", params={**window, "scope": "mine"})
        assert (local["scope"], local["instance"], local["total"]["requests"]) == ("local", "edge-1", 9)
        assert local["total"]["cost"] is None and local["total"]["costed"] == 0  # no price table
        assert (fleet["scope"], fleet["instance"], fleet["total"]["requests"]) == ("fleet", None, 17)
        assert default["total"] == fleet["total"]
        # 0.1 + 0.2 alone is 0.30000000000000004 in floats: the sums are exact to 1e-9.
        assert fleet["total"]["cost"] == 19.050123457 and fleet["total"]["costed"] == 7
        assert {g["key"]["instance"]: (g["requests"], g["cost"]) for g in per["groups"]} == {
            "edge-1": (9, None),
            "edge-2": (8, 19.050123457),
        }
        assert bad.status_code == 400 and bad.json()["error"]["allowed"] == ["local", "fleet"]

        flags = ["--db", postgres_url, "--since", window["since"], "--until", window["until"]]
        runner = CliRunner()
        cli = await asyncio.to_thread(
            runner.invoke, main, ["stats", *flags, "--instance", "edge-2", "--format", "json"]
        )
        assert cli.exit_code == 0, cli.output
        body = json.loads(cli.stdout)
        assert (body["scope"], body["instance"], body["total"]["requests"]) == ("local", "edge-2", 8)
        assert body["total"]["cost"] == 19.050123457
        csv_out = await asyncio.to_thread(
            runner.invoke, main, ["stats", *flags, "--by", "instance", "--format", "csv"]
        )
        assert csv_out.exit_code == 0, csv_out.output
        rows = {line.split(",")[0]: line.split(",") for line in csv_out.stdout.splitlines()[1:]}
        header = csv_out.stdout.splitlines()[0].split(",")
        assert rows["edge-2"][header.index("cost")] == "19.050123457"
        assert rows["edge-1"][header.index("cost")] == ""
        no_name = await asyncio.to_thread(runner.invoke, main, ["stats", *flags, "--scope", "local"])
        assert no_name.exit_code == 2 and "--instance NAME" in no_name.output
    finally:
        await sim.stop()
