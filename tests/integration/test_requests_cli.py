"""`sidemeter requests` as a subprocess against the database a running sidecar writes: it lists
the records of the traffic sent, newest first, filtered; `--follow` prints a record written after
it started and ends cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx

from tests.support.paths import ROOT
from tests.support.sidecar import RunningSidecar

CLI = [sys.executable, "-m", "agent.cli", "requests"]


def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
    return {**clean, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}


async def send(side: RunningSidecar, users: list[str]) -> list[str]:
    """One chat request per user (auth off: attributed by X-User-Id); their ids, oldest first."""
    ids = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
        for user in users:
            res = await http.post(
                "/v1/chat/completions",
                json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                headers={"X-User-Id": user},
            )
            assert res.status_code == 200
            ids.append(res.headers["X-Request-ID"])
    for request_id in ids:
        await side.record(request_id)
    return ids


async def run_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(tmp_path),
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_requests_lists_what_was_sent_newest_first(
    openai_side: RunningSidecar, db_url: str, tmp_path: Path
) -> None:
    ids = await send(openai_side, ["ann", "ben", "ann", "cat", "ann"])
    code, out, err = await run_cli(tmp_path, "--db", db_url, "--format", "json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["request_id"] for r in lines] == ids[::-1]
    assert [r["user"] for r in lines] == ["ann", "cat", "ann", "ben", "ann"]

    code, out, err = await run_cli(
        tmp_path, "--db", db_url, "--format", "json", "--user", "ann", "--limit", "2"
    )
    assert code == 0, err
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == [ids[4], ids[2]]

    code, out, err = await run_cli(tmp_path, "--db", db_url, "--limit", "3")
    assert code == 0, err
    rows = out.splitlines()
    assert "request id" in rows[0] and "outcome" in rows[0]
    assert [next(i for i in ids if i in row) for row in rows[1:]] == ids[:1:-1]
    assert all(" ok " in row and "sim-model" in row for row in rows[1:])


async def test_a_missing_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "--db", f"sqlite:///{tmp_path}/none.db")
    assert code == 2 and out == ""
    assert err.startswith(f"error: no usage database at {tmp_path}/none.db") and len(err.splitlines()) == 1


async def _line_with(stream: asyncio.StreamReader, text: str, timeout: float = 20.0) -> str:
    """The first line of `stream` containing `text` (lines before it are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the output ended before a line with {text!r}"
            if text in line:
                return line


async def test_follow_prints_a_record_written_after_it_started_then_stops_on_sigint(
    openai_side: RunningSidecar, db_url: str, tmp_path: Path
) -> None:
    (before,) = await send(openai_side, ["gil"])
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "--db",
        db_url,
        "--format",
        "json",
        "--follow",
        "--interval",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(tmp_path),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(await _line_with(proc.stdout, before))["user"] == "gil"  # the listing
        (after,) = await send(openai_side, ["hal"])
        followed = json.loads(await _line_with(proc.stdout, after))
        assert followed["user"] == "hal" and followed["outcome"] == "ok"
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and before.encode() not in rest  # nothing printed twice
