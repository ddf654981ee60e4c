"""Client-controlled text cannot fill the store: through the running sidecar, a 4 MB path, a
20 MB model name, a huge team claim or header give records whose text fields are within their
bounds and say what was cut; a head over the limits gets a JSON 414/431 and a record; a flood of
refused requests grows the database by a bounded amount per request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from agent.records import TEXT_LIMITS, UsageRecord
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar

SECRET = "s" * 64
MODEL = "sim-model"
LIMIT = dict(TEXT_LIMITS)
MARKER = re.compile(r"…\[truncated (\d+) chars\]$")
BIG_HEADS = {"max_request_line": 8 * 2**20, "max_header_size": 9 * 2**20}  # let 4 MB lines through


def token(**extra: Any) -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 600, **extra}
    return jwt.encode(claims, SECRET, "HS256")


def assert_cut(value: str | None, field: str, original: int) -> None:
    """`value` is exactly `field`'s bound long, and its marker counts what it dropped of `original`."""
    assert value is not None
    match = MARKER.search(value)
    assert match, f"{field} {value[:40]!r}... has no truncation marker"
    assert len(value) == LIMIT[field]
    assert len(value) - len(match.group(0)) + int(match.group(1)) == original


def assert_bounded(rec: UsageRecord) -> None:
    for field, limit in TEXT_LIMITS:
        value = getattr(rec, field)
        assert value is None or len(value) <= limit, field


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Write `request` (however large) while reading the answer, as a client that sends its whole
    request before it looks would; (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # it stopped reading after its answer: fine
            await writer.drain()

    sending = asyncio.create_task(send())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 20)
    await sending
    writer.close()
    return int(lines[0].split()[1]), headers, body


async def test_a_4mb_path_gets_a_json_414_and_a_bounded_record(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    path = "/v1/" + "a" * (4 * 2**20)
    request = f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode()
    status, headers, body = await raw_exchange(side.sidecar.proxy_port, request)
    assert status == 414
    error = json.loads(body)["error"]  # the OpenAI dialect: the path starts with /v1
    assert "max_request_line" in error["message"] and error["code"] == 414
    rec = await side.record(headers["x-request-id"])
    assert (rec.status, rec.outcome, rec.dialect) == (414, "rejected", "openai")
    assert "16384" in (rec.error or "")
    # What the sidecar read of the line before it refused, cut to the field's bound.
    assert rec.endpoint.startswith("/v1/aaaa") and MARKER.search(rec.endpoint)
    assert len(rec.endpoint) == LIMIT["endpoint"]
    assert_bounded(rec)
    assert side.count == 1


@pytest.mark.parametrize("with_token", [False, True], ids=["no token", "valid token"])
async def test_a_4mb_path_and_a_20mb_model_are_stored_cut_when_the_limits_let_them_through(
    sim_openai: SimulatedLLM, start_sidecar: Any, with_token: bool
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET, **BIG_HEADS)
    team = "t" * 5000  # a claim the caller's IdP signed, as long as a token may carry
    auth = {"Authorization": f"Bearer {token(team=team)}"} if with_token else {}
    path = "/v1/" + "p" * (4 * 2**20)  # longer than any HTTP client library sends: written by hand
    lines = [f"GET {path} HTTP/1.1", "Host: sidecar", *(f"{k}: {v}" for k, v in auth.items())]
    status, headers, _ = await raw_exchange(
        side.sidecar.proxy_port, ("\r\n".join(lines) + "\r\n\r\n").encode()
    )
    rec = await side.record(headers["x-request-id"])
    assert status == rec.status and status >= 400  # no such endpoint; without a token, 401
    assert rec.status == 401 or with_token
    assert_cut(rec.endpoint, "endpoint", len(path))
    assert_bounded(rec)

    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        model = "m" * (20 * 2**20)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        r = await client.post("/v1/chat/completions", json=body, headers=auth)
        rec = await side.record(r.headers["x-request-id"])
    assert_cut(rec.model, "model", len(model))
    assert_bounded(rec)
    if with_token:  # it reached the server, which names the model it does not have in its error
        assert (r.status_code, rec.status, rec.outcome, rec.user) == (404, 404, "upstream_error", "alice")
        assert model[:1000] in r.json()["error"]["message"]
        assert rec.error is not None and MARKER.search(rec.error) and len(rec.error) == LIMIT["error"]
        assert_cut(rec.team, "team", len(team))
    else:
        assert (r.status_code, rec.status, rec.outcome, rec.error) == (401, 401, "rejected", "missing")


async def test_an_over_long_header_gets_a_json_431_and_a_record(
    sim_ollama: SimulatedLLM, start_sidecar: Any
) -> None:
    side: RunningSidecar = await start_sidecar(sim_ollama.url)
    port = side.sidecar.proxy_port
    big = "x" * 100_000

    # Whole but too large: mitmproxy parses it, the sidecar answers before anything goes upstream.
    head = f"POST /api/generate HTTP/1.1\r\nHost: sidecar\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\n{{}}"
    status, headers, body = await raw_exchange(port, head.encode())
    assert status == 431
    assert "max_header_size" in json.loads(body)["error"]  # the Ollama dialect: a plain string
    rec = await side.record(headers["x-request-id"])
    assert (rec.status, rec.outcome, rec.dialect, rec.endpoint) == (
        431,
        "rejected",
        "ollama",
        "/api/generate",
    )

    # Never finished: a header line that goes on and on is refused once it passes the limit.
    endless = f"POST /api/chat HTTP/1.1\r\nHost: sidecar\r\nX-Big: {big}{big}"
    status, headers, body = await raw_exchange(port, endless.encode())
    assert status == 431 and "max_header_size" in json.loads(body)["error"]
    rec = await side.record(headers["x-request-id"])
    assert (rec.status, rec.outcome, rec.dialect, rec.endpoint) == (431, "rejected", "ollama", "/api/chat")
    assert rec.client_ip == "127.0.0.1"
    assert side.count == 2


def database_bytes(db_url: str) -> int:
    """The SQLite file's size once its write-ahead log is folded into it."""
    path = Path(db_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


async def test_a_flood_of_refused_requests_grows_the_database_by_a_bounded_amount(
    sim_openai: SimulatedLLM, start_sidecar: Any, db_url: str
) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET)
    n = 40
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as client:
        await client.get("/v1/models")  # the table and its indexes exist before the measure
        await side.record(side.last_request_id())
        before = database_bytes(db_url)
        # Every field at or over its bound: a path near max_request_line, a 1 MB model, long ids.
        path = "/v1/chat/completions/" + "p" * 16_000
        body = {"model": "m" * 2**20, "messages": [{"role": "user", "content": "hi"}]}
        for i in range(n):
            headers = {"X-Request-ID": f"{i:04d}" + "r" * 500, "Authorization": "Bearer " + "x" * 9000}
            r = await client.post(path, json=body, headers=headers)
            assert r.status_code == 401
    await side.record(r.headers["x-request-id"])
    grown = database_bytes(db_url) - before
    # Each record holds at most its text bounds, and four of them again in their indexes.
    most = sum(
        LIMIT[f]
        for f in ("request_id", "user", "team", "client_ip", "upstream", "endpoint", "model", "error")
    )
    indexed = sum(LIMIT[f] for f in ("request_id", "user", "team", "model"))
    assert side.count == n + 1
    assert grown <= n * (most + indexed) * 1.5, f"{grown / n:.0f} bytes per refused record"
