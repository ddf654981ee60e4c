"""The recorder's hooks on crafted flows, driven as mitmproxy drives them (`taddons`, `tflow`),
and the whole addon chain loaded into a real `mitmdump` with `-s`, as the README shows it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mitmproxy.test import taddons

from addons.flowstate import state_of
from addons.record import Recorder
from agent.records import Outcome, UsageRecord
from agent.sim import SimulatedLLM
from agent.store.database import open_database
from agent.store.queries import get_record
from agent.store.writer import UsageStore
from tests.support.flows import fail, llm_flow, respond
from tests.support.paths import ROOT


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UsageStore]:
    s = UsageStore(f"sqlite:///{tmp_path}/usage.db")
    s.start()
    yield s
    s.close()


def stored(store: UsageStore, request_id: str) -> UsageRecord | None:
    assert store.flush(10)
    db = open_database(store.url)
    try:
        return get_record(db, request_id)
    finally:
        db.close()


async def test_each_flow_is_recorded_once_and_counted_in_flight(store: UsageStore) -> None:
    recorder = Recorder(store)
    heard: list[UsageRecord] = []
    recorder.listeners.append(heard.append)
    with taddons.context(recorder):
        first, second = llm_flow(headers={"X-Request-ID": "r-1"}), llm_flow(headers={"X-Request-ID": "r-2"})
        recorder.requestheaders(first)
        recorder.requestheaders(second)
        assert recorder.in_flight == 2 and not recorder.idle.is_set()
        respond(first, 200, {"ok": True})
        recorder.response(first)
        fail(first, "Client disconnected.")  # an error after the response must not count again
        recorder.error(first)
        assert recorder.in_flight == 1 and not recorder.idle.is_set()
        fail(second, "Server disconnected.")
        recorder.error(second)
        assert recorder.in_flight == 0 and recorder.idle.is_set()
    assert [r.request_id for r in heard] == ["r-1", "r-2"]
    rec = stored(store, "r-1")
    assert rec is not None and rec.status == 200 and rec.latency_ms is not None
    assert stored(store, "r-2") is not None


async def test_what_the_meter_did_not_fill_in_is_filled_from_the_flow(store: UsageStore) -> None:
    recorder = Recorder(store)
    with taddons.context(recorder):
        f = llm_flow(headers={"X-Request-ID": "bare"})  # no meter ran: status and latency still land
        respond(f, 204)
        recorder.response(f)
    state = state_of(f)
    assert state.recorded and not state.in_flight
    rec = stored(store, "bare")
    assert rec is not None and (rec.status, rec.outcome) == (204, Outcome.OK)
    assert rec.latency_ms is not None and rec.latency_ms >= 40


async def test_standalone_it_opens_and_closes_the_store_named_by_its_option(tmp_path: Path) -> None:
    recorder = Recorder()
    url = f"sqlite:///{tmp_path}/standalone.db"
    with taddons.context(recorder) as tctx:
        tctx.configure(recorder, sidemeter_db=url)
        recorder.running()
        assert recorder.store is not None and recorder.store.url == url
        f = llm_flow(headers={"X-Request-ID": "alone"})
        respond(f, 200)
        recorder.response(f)
        recorder.done()
    con = sqlite3.connect(tmp_path / "standalone.db")
    assert con.execute("SELECT request_id FROM usage_logs").fetchall() == [("alone",)]


def test_the_addon_loads_as_a_mitmdump_script() -> None:
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / "record.py"))
        assert [type(a).__name__ for a in script.addons] == ["Recorder"]
        assert "sidemeter_db" in tctx.options


# -- the chain under mitmdump ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mitmdump exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError("mitmdump did not start listening")


async def test_every_addon_works_under_plain_mitmdump(tmp_path: Path) -> None:
    mitmdump = Path(sys.executable).with_name("mitmdump")
    if not mitmdump.exists():
        pytest.skip(f"no mitmdump next to {sys.executable}")
    sim = SimulatedLLM("openai")
    await sim.start()
    port = _free_port()
    scripts = [
        arg
        for name in ("errors", "auth", "meter", "record")
        for arg in ("-s", str(ROOT / "addons" / f"{name}.py"))
    ]
    proc = subprocess.Popen(
        [
            str(mitmdump),
            "-q",
            "--mode",
            f"reverse:{sim.url}",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(port),
            "--set",
            f"confdir={tmp_path / 'mitmproxy'}",
            "--set",
            "connection_strategy=lazy",
            *scripts,
            "--set",
            "sidemeter_auth=off",
            "--set",
            f"sidemeter_db=sqlite:///{tmp_path}/usage.db",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")},
    )
    try:
        await asyncio.to_thread(_wait_listening, port, proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            chat = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            ok = await client.post("/v1/chat/completions", json=chat, headers={"X-Request-ID": "dump-1"})
            streamed = await client.post("/v1/chat/completions", json={**chat, "stream": True})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "dump-1"
        assert streamed.status_code == 200 and '"usage"' not in streamed.text  # injected, then removed
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        await sim.stop()
    con = sqlite3.connect(tmp_path / "usage.db")
    rows = con.execute(
        "SELECT request_id, user, outcome, completion_tokens, usage_source FROM usage_logs"
    ).fetchall()
    assert ("dump-1", "anonymous", "ok", 3, "reported") in rows
    assert (streamed.headers["x-request-id"], "anonymous", "ok", 3, "reported") in rows
