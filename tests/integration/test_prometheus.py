"""A real Prometheus (Debian's `prometheus` package, installed by `make test`) scrapes the sidecar
with configs/prometheus/prometheus.yml and answers PromQL for output tokens per team."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from tests.support.paths import ROOT
from tests.support.sidecar import RunningSidecar

SECRET = "prometheus-test-secret-that-is-long-enough"
PROMETHEUS = shutil.which("prometheus")
QUERY = 'sum by (team) (sidemeter_tokens_total{type="output"})'

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="*** prometheus is not installed (make test installs Debian's package when run as root): "
    "the real-Prometheus scrape is NOT tested ***",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(target: str) -> str:
    """configs/prometheus/prometheus.yml pointed at `target`, scraping every second."""
    text = (ROOT / "configs/prometheus/prometheus.yml").read_text()
    assert '["127.0.0.1:9090"]' in text and "scrape_interval: 15s" in text
    return text.replace('["127.0.0.1:9090"]', f'["{target}"]').replace(
        "scrape_interval: 15s", "scrape_interval: 1s"
    )


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

    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(f"127.0.0.1:{side.sidecar.ops_port}"))
    port = _free_port()
    assert PROMETHEUS is not None
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        got: dict[str, float] = {}
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:
            while time.monotonic() < deadline and got != expected:
                assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    r = await prom.get("/api/v1/query", params={"query": QUERY})
                    if r.status_code == 200:
                        result = r.json()["data"]["result"]
                        got = {s["metric"].get("team", ""): float(s["value"][1]) for s in result}
                if got != expected:
                    await asyncio.sleep(0.25)  # a poll interval, bounded by the deadline
        assert got == expected, f"Prometheus answered {got} for {QUERY}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
