"""A real Prometheus (Debian's `prometheus` package, installed by `make test`) scrapes the sidecar
with configs/prometheus/prometheus.yml and answers PromQL for output tokens per team."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from tests.support.prometheus import needs_prometheus, prometheus_config, running_prometheus
from tests.support.sidecar import RunningSidecar

SECRET = "prometheus-test-secret-that-is-long-enough"
QUERY = 'sum by (team) (sidemeter_tokens_total{type="output"})'

pytestmark = needs_prometheus


async def test_prometheus_answers_output_tokens_per_team(
    sim_ollama: SimulatedLLM, start_sidecar: Callable[..., object], tmp_path: Path
) -> None:
    side: RunningSidecar = await start_sidecar(sim_ollama.url, auth="jwt", jwt_secret=SECRET)  # type: ignore[assignment]
    key = SigningKey.from_secret(SECRET)
    traffic = [("quant", "4"), ("quant", "6"), ("finetune", "5"), ("eval", "3")]
    ids = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        for team, tokens in traffic:
            rid = str(uuid.uuid4())
            ids.append(rid)
            headers = {
                "Authorization": f"Bearer {issue_token(key, 'u-' + team, team=team)}",
                "X-Request-ID": rid,
                "X-Sim-Tokens": tokens,
            }
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            assert (await client.post("/api/chat", json=body, headers=headers)).status_code == 200
    expected: dict[str, float] = {}
    for (team, _), rid in zip(traffic, ids, strict=True):
        rec = await side.record(rid)
        expected[team] = expected.get(team, 0) + (rec.completion_tokens or 0)
    assert expected == {"quant": 10, "finetune": 5, "eval": 3}

    config = prometheus_config(f"127.0.0.1:{side.sidecar.ops_port}")
    async with running_prometheus(config, tmp_path) as prom:
        got: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and got != expected:
            prom.check_alive()
            got = {s["metric"].get("team", ""): float(s["value"][1]) for s in await prom.query(QUERY)}
            if got != expected:
                await asyncio.sleep(0.25)  # a poll interval, bounded by the deadline
        assert got == expected, f"Prometheus answered {got} for {QUERY}"
