"""`/ops/health` and `/readyz` against the running sidecar in front of each simulated server kind:
per-team figures checked against the traffic sent and its stored records, the thresholds, and
an upstream that goes away and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from agent.sim import SimulatedLLM
from tests.support.files import db_files, immutable
from tests.support.ops import SECRET, generate, nearest_rank_p95, poll, simulated, token
from tests.support.sidecar import RunningSidecar

TOKEN_DELAY = 0.02  # seconds per token the simulated server takes
SLOW_TOKENS = 20  # eval's answers: >= 20 x 20 ms = 400 ms each


@pytest.fixture(params=["ollama", "vllm", "llamacpp"])
async def kind_sim(request: pytest.FixtureRequest) -> Any:
    sim = simulated(request.param, token_delay=TOKEN_DELAY)
    await sim.start()
    yield request.param, sim
    await sim.stop()


async def test_health_per_team_matches_the_traffic(
    kind_sim: tuple[str, SimulatedLLM], start_sidecar: Any
) -> None:
    _, sim = kind_sim
    side: RunningSidecar = await start_sidecar(
        sim.url, auth="jwt", jwt_secret=SECRET, health_latency_p95_degraded=0.3, health_min_requests=5
    )
    quant, finetune, ev = token("qa", team="quant"), token("fi", team="finetune"), token("ev", team="eval")
    one = {"X-Sim-Tokens": "1"}
    async with httpx.AsyncClient(timeout=30) as http:
        sent: dict[str, list[str]] = {
            "quant": [await generate(http, side.url, sim.dialect, quant, headers=one) for _ in range(8)],
            "finetune": [await generate(http, side.url, sim.dialect, finetune, headers=one) for _ in range(6)]
            + [
                await generate(http, side.url, sim.dialect, finetune, headers={"X-Sim-Fault": "error-500"})
                for _ in range(2)
            ],
        }
        slow = {"X-Sim-Tokens": str(SLOW_TOKENS)}
        sent["eval"] = list(
            await asyncio.gather(
                *(generate(http, side.url, sim.dialect, ev, stream=True, headers=slow) for _ in range(6))
            )
        )
        # One request below min_requests: shown, not judged.
        sent["solo"] = [await generate(http, side.url, sim.dialect, token("so", team="solo"), headers=one)]
        res = await http.get(side.ops_url + "/ops/health")  # open: no token
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "degraded"
    assert body["window_s"] == 300 and body["upstream"]["reachable"] is True
    store = body["store"]
    assert store["queue_depth"] >= 0  # records may still be on their way to the writer thread
    assert store | {"queue_depth": 0} == {
        "kind": "sqlite",
        "writing": True,
        "queue_depth": 0,
        "spilled": 0,
        "last_error": None,
    }
    assert body["thresholds"]["latency_p95_degraded_ms"] == 300.0
    teams = {t["team"]: t for t in body["teams"]}
    assert set(teams) == set(sent)
    for team, ids in sent.items():
        records = [await side.record(i) for i in ids]
        got = teams[team]
        assert got["requests"] == len(ids)
        assert got["errors"] == sum(r.outcome != "ok" for r in records)
        assert got["error_rate"] == pytest.approx(got["errors"] / len(ids), abs=1e-4)
        assert got["latency_p95_ms"] == nearest_rank_p95(
            [r.latency_ms for r in records if r.latency_ms is not None]
        )
        assert got["ttft_p95_ms"] == nearest_rank_p95([r.ttft_ms for r in records if r.ttft_ms is not None])
    assert teams["quant"]["status"] == "ok" and teams["quant"]["reasons"] == []
    assert teams["finetune"]["errors"] == 2
    assert teams["finetune"]["status"] == "degraded"
    assert teams["finetune"]["reasons"] == ["error rate 25% >= 5%"]
    # The latency the simulated server was told to produce, as the sidecar measured it: at least
    # the gaps between its tokens (the loop's timers may fire a few µs early on the last one).
    assert teams["eval"]["latency_p95_ms"] >= (SLOW_TOKENS - 1) * TOKEN_DELAY * 1000
    assert teams["eval"]["ttft_p95_ms"] is not None
    assert teams["eval"]["status"] == "degraded"
    assert teams["eval"]["reasons"][0].startswith("p95 latency ")
    assert teams["solo"] == teams["solo"] | {"status": "ok", "judged": False, "requests": 1}
    assert "team finetune is degraded" in body["reasons"] and "team eval is degraded" in body["reasons"]


async def test_a_team_past_the_down_threshold_is_down_but_the_sidecar_only_degraded(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    bad = token("b", team="quant")
    async with httpx.AsyncClient(timeout=30) as http:
        for fault in ("error-500", "error-429", "error-500", "error-500", ""):
            await generate(http, side.url, "openai", bad, headers={"X-Sim-Fault": fault} if fault else {})
        res = await http.get(side.ops_url + "/ops/health")
    assert res.status_code == 200  # a team's trouble degrades the sidecar; only its own failures make it down
    body = res.json()
    (team,) = body["teams"]
    assert team["requests"] == 5 and team["errors"] == 4 and team["error_rate"] == 0.8
    assert team["status"] == "down" and team["reasons"] == ["error rate 80% >= 50%"]
    assert body["status"] == "degraded"


async def _wait_health(http: httpx.AsyncClient, side: RunningSidecar, status: int) -> httpx.Response:
    return await poll(
        lambda: http.get(side.ops_url + "/ops/health"),
        lambda r: r.status_code == status,
        what=f"/ops/health {status}",
    )


@pytest.mark.parametrize("requires_upstream", [True, False])
async def test_upstream_down_makes_health_503_and_readyz_follows_the_setting(
    start_sidecar: Any, requires_upstream: bool
) -> None:
    sim = SimulatedLLM("ollama")
    url = await sim.start()
    port = int(url.rsplit(":", 1)[1])
    side: RunningSidecar = await start_sidecar(
        url, probe_interval=0.1, ready_requires_upstream=requires_upstream
    )
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(side.ops_url + "/readyz")).status_code == 200
            await sim.stop()
            down = await _wait_health(http, side, 503)
            body = down.json()
            assert body["status"] == "down" and body["upstream"]["reachable"] is False
            assert body["upstream"]["last_error"] and body["upstream"]["latency_ms"] is None
            assert any(r.startswith(f"upstream {url} is unreachable") for r in body["reasons"])
            ready = await http.get(side.ops_url + "/readyz")
            metrics = (await http.get(side.ops_url + "/metrics")).text
            assert "\nsidemeter_upstream_up 0.0\n" in metrics
            if requires_upstream:
                assert ready.status_code == 503
                assert any("upstream" in p and "unreachable" in p for p in ready.json()["problems"])
            else:
                assert ready.status_code == 200, ready.json()
            await sim.start(port=port)  # the model server is back
            up = await _wait_health(http, side, 200)
            assert up.json()["upstream"]["reachable"] is True
            assert (await http.get(side.ops_url + "/readyz")).status_code == 200
            assert "\nsidemeter_upstream_up 1.0\n" in (await http.get(side.ops_url + "/metrics")).text
    finally:
        await sim.stop()


async def test_an_upstream_that_is_down_at_start_is_reported(start_sidecar: Any) -> None:
    sim = SimulatedLLM("openai")
    url = await sim.start()
    await sim.stop()  # nothing listens on that port any more
    side: RunningSidecar = await start_sidecar(url)
    async with httpx.AsyncClient() as http:
        health = await http.get(side.ops_url + "/ops/health")
        ready = await http.get(side.ops_url + "/readyz")
    assert health.status_code == 503 and health.json()["upstream"]["reachable"] is False
    assert health.json()["upstream"]["last_checked"] is not None
    assert ready.status_code == 503


async def test_a_store_that_cannot_write_makes_health_down(
    sim_openai: SimulatedLLM, start_sidecar: Any, tmp_path: Path
) -> None:
    db_path = tmp_path / "usage.db"
    side: RunningSidecar = await start_sidecar(sim_openai.url)
    async with httpx.AsyncClient(timeout=30) as http:
        await generate(http, side.url, "openai", None)
        assert await asyncio.to_thread(side.sidecar.store.flush, 10)  # the WAL exists now
        with immutable(db_files(db_path)):
            await generate(http, side.url, "openai", None)
            down = await _wait_health(http, side, 503)
        body = down.json()
        assert body["status"] == "down" and body["store"]["writing"] is False
        assert body["store"]["last_error"] and "failed" in body["store"]["last_error"]
        assert any(r.startswith("usage store is not writing") for r in body["reasons"])
        # Writable again: the record is stored (by a retry, or from its spill file) and health is back.
        assert await asyncio.to_thread(side.sidecar.store.flush, 30)
        ok = await _wait_health(http, side, 200)
        assert ok.json()["store"]["writing"] is True


async def test_an_upstream_that_accepts_but_never_answers_is_unreachable(start_sidecar: Any) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        side: RunningSidecar = await start_sidecar(url, probe_timeout=0.2)
        async with httpx.AsyncClient() as http:
            res = await http.get(side.ops_url + "/ops/health")
        assert res.status_code == 503
        upstream = res.json()["upstream"]
        assert (
            upstream["reachable"] is False
            and upstream["last_error"] == "GET /api/version: no answer within 0.2s"
        )
    finally:
        release.set()
        await runner.cleanup()
