"""A real Prometheus (Debian's `prometheus` package, installed by `make test`) on a loopback port,
with throwaway storage, configured from configs/prometheus/prometheus.yml."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.paths import ROOT

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
CONFIG_DIR = ROOT / "configs" / "prometheus"

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="*** prometheus is not installed (make test installs Debian's package when run as root): "
    "the real-Prometheus scrape is NOT tested ***",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="*** promtool is not installed (Debian's prometheus package has it): "
    "the alert rules are NOT checked ***",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(sidecar: str, *, extra_jobs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """configs/prometheus/prometheus.yml scraping `sidecar` (and `extra_jobs`: job -> target)
    every second, its rule files resolved to the repository's."""
    config: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(CONFIG_DIR / f) for f in config.get("rule_files", [])]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "sidemeter"]
    job["static_configs"] = [{"targets": [sidecar]}]
    for name, target in (extra_jobs or {}).items():
        config["scrape_configs"].append({"job_name": name, "static_configs": [{"targets": [target]}]})
    return config


class RunningPrometheus:
    """A Prometheus process and a client for its HTTP API."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    def check_alive(self) -> None:
        assert self.proc.returncode is None, f"prometheus exited: {self.log.read_text()[-2000:]}"

    async def api(
        self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    ) -> Any:
        """The `data` of a successful API answer; an error answer fails the test with its message."""
        r = await self.http.get(path, params=params)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (
            f"{path} {params}: {r.status_code} {body}"
        )
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now."""
        data = await self.api("/api/v1/query", {"query": expr})
        assert data["resultType"] == "vector", f"{expr} is a {data['resultType']}, not an instant vector"
        return list(data["result"])

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get("/-/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.1)  # a poll interval, bounded by the deadline
        raise AssertionError(f"prometheus not ready after {timeout} s: {self.log.read_text()[-2000:]}")


@contextlib.asynccontextmanager
async def running_prometheus(config: Mapping[str, Any], tmp_path: Path) -> AsyncIterator[RunningPrometheus]:
    assert PROMETHEUS is not None
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    prom = RunningPrometheus(proc, f"http://127.0.0.1:{port}", log)
    try:
        await prom.wait_ready()
        yield prom
    finally:
        await prom.http.aclose()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
