"""A fleet of two: two `sidemeter run` processes in front of two simulated servers, writing to one
real PostgreSQL store. Each one's /ops/services lists both with their upstreams, the shared
store's records carry the instance that metered them, and a SIGTERM shows as `stopped`
(a SIGKILL as `stale`) in the other's view."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from agent.sim import SimulatedLLM
from agent.store.database import open_database
from tests.support.ops import poll
from tests.support.process import SidemeterProcess

HEARTBEAT_S = 0.5
FLEET_ENV = {"SIDEMETER_HEARTBEAT_INTERVAL": str(HEARTBEAT_S)}


async def start(sim: SimulatedLLM, tmp_path: Path, name: str, db: str) -> SidemeterProcess:
    home = tmp_path / name
    home.mkdir()
    # Off the loop: the simulated servers answer the sidecar's probes while it starts.
    return await asyncio.to_thread(
        SidemeterProcess, sim.url, home, "--instance-id", name, db=db, env=FLEET_ENV
    )


async def services(side: SidemeterProcess) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        res = await http.get(f"http://127.0.0.1:{side.ops_port}/ops/services")
    assert res.status_code == 200, res.text
    return res.json()["services"]


async def ops_stats(side: SidemeterProcess, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        res = await http.get(f"http://127.0.0.1:{side.ops_port}/ops/stats", params={"window": "1h", **params})
    assert res.status_code == 200, res.text
    return res.json()


def sidecars(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in entries if e["type"] == "sidecar"}


def upstreams(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Upstream entries by the sidecar that fronts them."""
    return {e["sidecar"]: e for e in entries if e["type"] == "upstream"}


def counts_per_instance(url: str) -> dict[str | None, int]:
    db = open_database(url)
    try:
        rows = db.execute_sql("SELECT instance, COUNT(*) FROM usage_logs GROUP BY instance").fetchall()
    finally:
        db.close()
    return {instance: int(n) for instance, n in rows}


async def openai_traffic(side: SidemeterProcess, n: int) -> None:
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        for i in range(n):
            answer = await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": f"hello {i}"}],
                max_tokens=8,
                extra_headers={"X-Request-ID": f"a-{uuid.uuid4().hex}"},
            )
            assert answer.choices[0].message.content


async def ollama_traffic(side: SidemeterProcess, n: int) -> None:
    client = ollama.AsyncClient(host=side.url)
    for i in range(n):
        answer = await client.generate(model="sim-model", prompt=f"hi {i}", options={"num_predict": 8})
        assert answer.response


async def test_two_sidecars_on_one_postgresql_store_list_and_meter_as_a_fleet(
    postgres_url: str, tmp_path: Path
) -> None:
    sim_a, sim_b = SimulatedLLM("openai", flavor="vllm"), SimulatedLLM("ollama")
    await sim_a.start()
    await sim_b.start()
    running: list[SidemeterProcess] = []
    try:
        a = await start(sim_a, tmp_path, "side-a", postgres_url)
        running.append(a)
        b = await start(sim_b, tmp_path, "side-b", postgres_url)
        running.append(b)
        await asyncio.gather(openai_traffic(a, 5), ollama_traffic(b, 3))

        for side, me in ((a, "side-a"), (b, "side-b")):
            view = await poll(
                lambda side=side: services(side),
                lambda s: (
                    {(e["id"], e["state"]) for e in sidecars(s).values()}
                    == {("side-a", "live"), ("side-b", "live")}
                    and all(u["kind"] != "unknown" for u in upstreams(s).values())
                ),
                timeout=20,
                what=f"both sidecars live, with probed upstreams, in {me}'s view",
            )
            listed = sidecars(view)
            assert next(e["id"] for e in view if e["type"] == "sidecar") == me  # ours first
            assert {i: e["self"] for i, e in listed.items()} == {i: i == me for i in ("side-a", "side-b")}
            assert listed["side-a"]["upstream"] == sim_a.url and listed["side-b"]["upstream"] == sim_b.url
            assert listed["side-a"]["ops_listen"] == f"127.0.0.1:{a.ops_port}"
            assert listed["side-b"]["listen"] == f"127.0.0.1:{b.proxy_port}"
            assert all(e["store"] == "postgresql" and e["stopped"] is None for e in listed.values())
            assert listed[me]["heartbeat_error"] is None and listed[me]["conflict"] is None
            fronted = upstreams(view)
            assert (fronted["side-a"]["url"], fronted["side-a"]["kind"]) == (sim_a.url, "vllm")
            assert (fronted["side-b"]["url"], fronted["side-b"]["kind"]) == (sim_b.url, "ollama")
            assert fronted["side-b"]["models"] == sim_b.models and fronted["side-b"]["reachable"] is True

        # Each request's record carries the sidecar that metered it (the writers flush within
        # a quarter second; polled, not slept).
        deadline = asyncio.get_running_loop().time() + 20
        sent = {"side-a": 5, "side-b": 3}
        while (counts := await asyncio.to_thread(counts_per_instance, postgres_url)) != sent:
            assert asyncio.get_running_loop().time() < deadline, f"records per instance: {counts}"
            await asyncio.sleep(0.1)

        # /ops/stats: each sidecar's own records with scope=local, the shared store's with
        # scope=fleet (the default on PostgreSQL), and the fleet split by instance.
        for side, me in ((a, "side-a"), (b, "side-b")):
            local = await ops_stats(side, scope="local")
            assert (local["scope"], local["instance"]) == ("local", me)
            assert local["total"]["requests"] == sent[me]
            fleet = await ops_stats(side)
            assert fleet["scope"] == "fleet" and fleet["total"]["requests"] == sum(sent.values())
            per_instance = await ops_stats(side, group_by="instance")
            assert {g["key"]["instance"]: g["requests"] for g in per_instance["groups"]} == sent

        b.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(b.wait, 60) == 0, b.stderr
        view = await poll(
            lambda: services(a),
            lambda s: sidecars(s)["side-b"]["state"] == "stopped",
            timeout=20,
            what="side-b stopped in side-a's view",
        )
        gone = sidecars(view)["side-b"]
        assert gone["stopped"] is not None and gone["stopped"] == gone["last_seen"]
        assert sidecars(view)["side-a"]["state"] == "live"
    finally:
        for side in running:
            side.stop()
        await sim_a.stop()
        await sim_b.stop()


async def test_a_killed_sidecar_goes_stale_in_the_others_view(postgres_url: str, tmp_path: Path) -> None:
    sim = SimulatedLLM("ollama")
    await sim.start()
    running: list[SidemeterProcess] = []
    try:
        a = await start(sim, tmp_path, "side-a", postgres_url)
        running.append(a)
        b = await start(sim, tmp_path, "side-b", postgres_url)
        running.append(b)
        await poll(
            lambda: services(a),
            lambda s: sidecars(s).get("side-b", {}).get("state") == "live",
            timeout=20,
            what="side-b live",
        )
        b.proc.send_signal(signal.SIGKILL)  # no clean shutdown: its row is never marked stopped
        assert await asyncio.to_thread(b.wait, 30) == -signal.SIGKILL
        view = await poll(
            lambda: services(a),
            lambda s: sidecars(s)["side-b"]["state"] == "stale",
            timeout=20,
            what="side-b stale after three missed heartbeats",
        )
        assert sidecars(view)["side-b"]["stopped"] is None
    finally:
        for side in running:
            side.stop()
        await sim.stop()


pytestmark = pytest.mark.timeout(300)
