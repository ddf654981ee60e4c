"""`sidemeter run` writes one access line per request on stdout, in the format asked for, with
the figures of the stored record; `--access-log off` writes none."""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from pathlib import Path

import httpx

from agent.sim import SimulatedLLM
from tests.support.process import SidemeterProcess


async def _send(url: str, n: int) -> list[str]:
    ids = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i in range(n):
            rid = f"acc-{uuid.uuid4().hex}"
            model = "sim-model" if i % 3 else "no-such-model"
            body = {"model": model, "prompt": "hi", "stream": i % 2 == 0}
            await http.post(
                "/api/generate", json=body, headers={"X-Request-ID": rid, "X-User-Id": f"u{i % 2}"}
            )
            ids.append(rid)
    return ids


def _stored(db: Path) -> dict[str, dict[str, object]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return {r["request_id"]: dict(r) for r in con.execute("SELECT * FROM usage_logs")}
    finally:
        con.close()


async def test_json_access_lines_match_the_records(tmp_path: Path) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.001)
    await sim.start()
    side = SidemeterProcess(sim.url, tmp_path, "--log-format", "json")
    try:
        ids = await _send(side.url, 9)
        side.proc.send_signal(signal.SIGTERM)
        assert side.wait() == 0
    finally:
        side.stop()
        await sim.stop()
    lines = [json.loads(line) for line in side.stdout_lines]
    assert sorted(line["request_id"] for line in lines) == sorted(ids)  # one line per request
    records = _stored(side.db_path)
    for line in lines:
        rec = records[line["request_id"]]
        assert (line["user"], line["model"], line["endpoint"], line["status"], line["outcome"]) == (
            rec["user"],
            rec["model"],
            rec["endpoint"],
            rec["status"],
            rec["outcome"],
        )
        assert (line["tokens_in"], line["tokens_out"]) == (rec["prompt_tokens"], rec["completion_tokens"])
        assert line["latency_ms"] == rec["latency_ms"] and line["ttft_ms"] == rec["ttft_ms"]
    assert {line["status"] for line in lines} == {200, 404}
    # The sidecar's own log lines on stderr are JSON too.
    assert side.stderr_lines and all(json.loads(line)["log.level"] for line in side.stderr_lines)


async def test_access_log_off_writes_no_lines(tmp_path: Path) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.001)
    await sim.start()
    side = SidemeterProcess(sim.url, tmp_path, "--access-log", "off")
    try:
        await _send(side.url, 3)
        side.proc.send_signal(signal.SIGTERM)
        assert side.wait() == 0
    finally:
        side.stop()
        await sim.stop()
    assert len(_stored(side.db_path)) == 3
    assert side.stdout_lines == []
