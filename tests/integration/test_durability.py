"""Nothing lost at a stop or a crash: the real `sidemeter run` in a subprocess, stopped with a
real SIGTERM, killed with a real `kill -9`, with a database made unwritable for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.sim import SimulatedLLM
from tests.support.files import db_files, immutable
from tests.support.paths import ROOT

CLI = [sys.executable, "-m", "agent.cli"]


class SidemeterProcess:
    """`sidemeter run` in a subprocess; its stderr collected line by line on a thread."""

    def __init__(self, upstream: str, tmp_path: Path, *extra: str) -> None:
        self.db_path = tmp_path / "usage.db"
        self.data_dir = tmp_path / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
        env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(
            [
                *CLI,
                "run",
                "--upstream",
                upstream,
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--db",
                f"sqlite:///{self.db_path}",
                "--auth",
                "off",
                "--data-dir",
                str(self.data_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.proxy_port, self.ops_port = self._wait_ready()
        self.url = f"http://127.0.0.1:{self.proxy_port}"

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> tuple[int, int]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("sidemeter ready"):
                parts = line.replace(",", "").split()  # "sidemeter ready: proxy :P, ops :P (pid N)"
                return int(parts[3].lstrip(":")), int(parts[5].lstrip(":"))
        self.proc.wait(30)
        self._reader.join(10)
        raise AssertionError("sidecar exited before ready:\n" + "\n".join(self.stderr_lines))

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def stored(db_path: Path) -> dict[str, tuple[str, str | None, int | None, str]]:
    """request_id -> (outcome, error, completion_tokens, usage_source) as plain sqlite3 reads it."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute(
            "SELECT request_id, outcome, error, completion_tokens, usage_source FROM usage_logs"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _content_delta(sse_line: str) -> str | None:
    """The generated text an OpenAI chat stream line carries (None for the role-only chunk)."""
    if not sse_line.startswith("data: {"):
        return None
    choices = json.loads(sse_line[6:]).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or None


async def load_until_killed(url: str, answered_before_kill: int, kill: subprocess.Popen[str]) -> set[str]:
    """Chat requests from 8 clients; once `answered_before_kill` are answered, `kill -9` the
    sidecar while the others are mid-request. Returns the ids of the requests answered in full."""
    answered: set[str] = set()
    killed = asyncio.Event()
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def client(http: httpx.AsyncClient) -> None:
        for _ in range(answered_before_kill):  # bounded: the kill ends it much sooner
            request_id = uuid.uuid4().hex
            try:
                resp = await http.post(
                    url + "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
                )
            except httpx.HTTPError:
                if killed.is_set():
                    return
                raise
            assert resp.status_code == 200, resp.text
            answered.add(request_id)
            if len(answered) >= answered_before_kill and not killed.is_set():
                kill.send_signal(signal.SIGKILL)
                killed.set()

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(8))), 120)
    assert killed.is_set()
    return answered


def rows_per_request(db_path: Path) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    try:
        return dict(con.execute("SELECT request_id, COUNT(*) FROM usage_logs GROUP BY request_id").fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("database", ["healthy", "read-only"])
async def test_kill_9_under_load_loses_no_answered_record(
    tmp_path: Path, processes: list[SidemeterProcess], database: str
) -> None:
    sim = SimulatedLLM("openai")
    await sim.start()
    try:
        side = SidemeterProcess(sim.url, tmp_path)
        processes.append(side)
        with contextlib.ExitStack() as unwritable:
            if database == "read-only":
                unwritable.enter_context(immutable(db_files(side.db_path)))
            answered = await load_until_killed(side.url, 600, side.proc)
            assert side.wait(30) == -signal.SIGKILL
        # The next start replays the journal the killed process left behind.
        again = SidemeterProcess(sim.url, tmp_path)
        processes.append(again)
        again.proc.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0, again.stderr
    finally:
        await sim.stop()
    rows = rows_per_request(side.db_path)
    lost = answered - rows.keys()
    assert not lost, f"{len(lost)} of {len(answered)} answered requests have no record"
    assert all(n == 1 for n in rows.values()), "a replayed record was stored twice"
    assert "replaying" in again.stderr and "Traceback" not in again.stderr


@pytest.fixture
def processes() -> Iterator[list[SidemeterProcess]]:
    started: list[SidemeterProcess] = []
    yield started
    for p in started:
        p.stop()


async def test_sigterm_records_streams_it_cuts_after_the_grace_period(
    tmp_path: Path, processes: list[SidemeterProcess]
) -> None:
    sim = SimulatedLLM("openai", token_delay=0.02)
    await sim.start()
    try:
        side = SidemeterProcess(sim.url, tmp_path, "--grace-period", "1")
        processes.append(side)
        ids = [uuid.uuid4().hex for _ in range(5)]
        received = dict.fromkeys(ids, 0)
        started = asyncio.Event()

        async def stream(client: httpx.AsyncClient, request_id: str) -> None:
            body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            headers = {"X-Request-ID": request_id, "X-Sim-Tokens": "2000"}  # ~40 s: outlives the grace
            try:
                async with client.stream(
                    "POST", side.url + "/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    async for line in resp.aiter_lines():
                        if _content_delta(line):
                            received[request_id] += 1
                            if all(received.values()):
                                started.set()
            except httpx.HTTPError:
                pass  # cut by the stop: what this test is about

        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(stream(client, rid)) for rid in ids]
            await asyncio.wait_for(started.wait(), 20)
            side.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(side.wait, 60)
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        await sim.stop()
    records = stored(side.db_path)
    assert code == 0, side.stderr
    for rid in ids:
        assert rid in records, f"no record for the cut stream {rid}:\n{side.stderr}"
        outcome, error, tokens, source = records[rid]
        assert outcome == "proxy_error"
        assert error is not None and "shutdown" in error and "grace period" in error
        assert source == "estimated" and tokens is not None and tokens >= received[rid] > 0
    assert "Traceback" not in side.stderr and "CancelledError" not in side.stderr, side.stderr
    last = side.stderr_lines[-1]
    assert "stopped:" in last and "5 record(s) written" in last and "0 spilled" in last, side.stderr


async def test_sigterm_with_nowhere_to_write_exits_non_zero_and_prints_the_records(
    tmp_path: Path, processes: list[SidemeterProcess]
) -> None:
    sim = SimulatedLLM("openai")
    await sim.start()
    try:
        side = SidemeterProcess(sim.url, tmp_path)
        processes.append(side)
        spill = side.data_dir / "spill"
        with immutable(db_files(side.db_path)):
            for path in spill.iterdir():
                path.unlink()
            spill.rmdir()
            spill.write_text("not a directory any more\n")  # the spill directory, replaced by a file
            ids = [uuid.uuid4().hex for _ in range(5)]
            body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            async with httpx.AsyncClient(timeout=30) as http:
                for request_id in ids:
                    resp = await http.post(
                        side.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
                    )
                    assert resp.status_code == 200
            side.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(side.wait, 90)
    finally:
        await sim.stop()
    assert code != 0, side.stderr
    printed = [json.loads(line) for line in side.stderr_lines if line.startswith("{")]
    assert {r["request_id"] for r in printed} == set(ids)
    assert "Traceback" not in side.stderr
    last = side.stderr_lines[-1]
    assert "stopped:" in last and "5 lost" in last, side.stderr
    # The documented recovery: those lines, dropped into the spill directory, are stored at the next start.
    spill.unlink()
    spill.mkdir()
    (spill / "usage-spill-recovered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in printed))
    again = SidemeterProcess(sim.url, tmp_path)
    processes.append(again)
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait(60) == 0, again.stderr
    assert set(ids) <= stored(side.db_path).keys()
