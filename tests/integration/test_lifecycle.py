"""Start, stop and the `sidemeter` command line, run as a user would run them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from agent.sim import SimulatedLLM
from agent.store.database import open_database
from agent.store.queries import get_record
from tests.support.paths import ROOT
from tests.support.sidecar import RunningSidecar

CLI = [sys.executable, "-m", "agent.cli"]


async def test_graceful_stop_lets_a_stream_finish_and_keeps_its_record(paced_side: RunningSidecar) -> None:
    side = paced_side
    request_id = uuid.uuid4().hex
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 12,
    }
    lines: list[str] = []
    stopping: asyncio.Task[None] | None = None
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            side.url + "/v1/chat/completions",
            json=body,
            headers={"X-Request-ID": request_id},
        ) as resp,
    ):
        async for line in resp.aiter_lines():
            lines.append(line)
            if stopping is None and '"content"' in line:
                stopping = asyncio.create_task(side.sidecar.stop())  # SIGTERM's path
                await asyncio.sleep(0)
                # no new connections while draining
                with pytest.raises(httpx.ConnectError):
                    await http.get(side.url + "/v1/models")
    assert lines[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in lines
    assert stopping is not None
    await stopping
    db = open_database(side.sidecar.config.db)
    rec = get_record(db, request_id)
    db.close()
    assert rec is not None and rec.outcome == "ok" and rec.completion_tokens == 12


def _wait_ready(proc: subprocess.Popen[str]) -> tuple[int, int]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("sidemeter ready"):
            # "sidemeter ready: proxy :PORT, ops :PORT (pid N)"
            parts = line.replace(",", "").split()
            return int(parts[3].lstrip(":")), int(parts[5].lstrip(":"))
    raise AssertionError(
        f"sidecar exited before ready: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
    )


async def test_cli_run_serves_and_sigterm_drains(tmp_path: Path) -> None:
    sim = SimulatedLLM("ollama")
    await sim.start()
    db = f"sqlite:///{tmp_path}/usage.db"
    proc = subprocess.Popen(
        [
            *CLI,
            "run",
            "--upstream",
            sim.url,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--db",
            db,
            "--auth",
            "off",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        proxy_port, ops_port = await asyncio.to_thread(_wait_ready, proc)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{ops_port}/healthz")).json()["status"] == "ok"
            assert (await http.get(f"http://127.0.0.1:{ops_port}/readyz")).status_code == 200
            resp = await http.post(
                f"http://127.0.0.1:{proxy_port}/api/generate",
                json={"model": "llama3.2", "prompt": "hello", "stream": False},
            )
        request_id = resp.headers["x-request-id"]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        await sim.stop()
    # Drained on exit: the row is there for plain sqlite3 users, under the documented table name.
    con = sqlite3.connect(tmp_path / "usage.db")
    row = con.execute("SELECT request_id, outcome, completion_tokens FROM usage_logs").fetchone()
    assert row[0] == request_id and row[1] == "ok" and row[2] == resp.json()["eval_count"]
    out = subprocess.run([*CLI, "usage", "export", "--db", db], capture_output=True, text=True, check=True)
    exported = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["request_id"] for r in exported] == [request_id]
    csv_out = subprocess.run(
        [*CLI, "usage", "export", "--db", db, "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert csv_out.stdout.splitlines()[0].startswith("request_id,ts,user")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_run_refuses_without_a_key_unless_auth_off(tmp_path: Path) -> None:
    res = _run(
        "run",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--db",
        f"sqlite:///{tmp_path}/u.db",
        cwd=tmp_path,
    )
    assert res.returncode != 0 and "--auth off" in res.stderr
    assert "no JWT key is configured" in res.stderr and "SIDEMETER_JWT_SECRET" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_run_names_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _run(
            "run",
            "--auth",
            "off",
            "--listen",
            f"127.0.0.1:{port}",
            "--ops-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "d"),
            "--db",
            f"sqlite:///{tmp_path}/u.db",
            cwd=tmp_path,
        )
    assert res.returncode != 0
    assert f"port {port}" in res.stderr and "--listen" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_run_names_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = _run(
        "run",
        "--auth",
        "off",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(blocker / "data"),
        "--db",
        f"sqlite:///{tmp_path}/u.db",
        cwd=tmp_path,
    )
    assert res.returncode != 0 and str(blocker / "data") in res.stderr


def test_bad_config_value_is_named(tmp_path: Path) -> None:
    (tmp_path / "sidemeter.toml").write_text('upstream = "ftp://nope"\n')
    res = _run("config", "validate", cwd=tmp_path)
    assert res.returncode != 0 and "upstream" in res.stderr and "ftp://nope" in res.stderr


def test_config_set_get_and_env_override(tmp_path: Path) -> None:
    assert _run("config", "set", "upstream", "http://127.0.0.1:8000", cwd=tmp_path).returncode == 0
    assert _run("config", "get", "upstream", cwd=tmp_path).stdout.strip() == "http://127.0.0.1:8000"
    env_res = subprocess.run(
        [*CLI, "config", "get", "upstream"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "SIDEMETER_UPSTREAM": "http://10.0.0.1:11434",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert env_res.stdout.strip() == "http://10.0.0.1:11434"
    bad = _run("config", "set", "grace_period", "soon", cwd=tmp_path)
    assert bad.returncode != 0 and "grace_period" in bad.stderr
    assert "grace_period" not in (tmp_path / "sidemeter.toml").read_text()


def test_demo_prints_the_usage_table(tmp_path: Path) -> None:
    res = _run(
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite:///{tmp_path}/demo.db",
        "--exit",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("user "))
    rows = lines[header + 2 : header + 14]
    assert len(rows) == 12
    assert any(" ollama " in r and "reported" in r for r in rows)
    assert any(" openai " in r and "reported" in r for r in rows)
    assert any("upstream_error" in r for r in rows)
    assert "12 usage record(s)" in res.stdout
