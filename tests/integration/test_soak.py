"""The fault-injection soak: the real `sidemeter run` (JWT auth, journal on) in front of the
simulated Ollama server, concurrent mixed traffic from the official openai and ollama clients
with upstream 5xx, upstream cuts, client cancels and a database that fails and recovers, then
a SIGTERM while streams are in flight. Every request sent has exactly one record, and each
record says what its client saw."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from tests.support.process import SidemeterProcess, db_files, immutable

pytestmark = pytest.mark.timeout(180)

SECRET = "soak-test-secret-of-at-least-32-bytes!"
USER, TEAM = "soak-user", "soak-team"
MODEL = "sim-model"
PROMPT = "Tell me about the sea."
MESSAGES = [{"role": "user", "content": PROMPT}]
TOKENS = 8  # X-Sim-Tokens of every request that is answered whole
GRACE_S = 2


@dataclass
class Sent:
    """One request as its client saw it."""

    request_id: str
    kind: str
    outcome: str  # what the record must say, from what the client saw
    status: int | None = None  # the status the client received (None: no response head)
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens the client was shown
    pieces: int = 0  # content pieces the client received
    tokens: int = TOKENS  # X-Sim-Tokens: what the simulated server generates
    shown_usage: bool = True  # False: an OpenAI stream whose client did not ask for usage
    notes: list[str] = field(default_factory=list)


class Traffic:
    """The clients. Each call sends one request with a fresh X-Request-ID and appends a `Sent`."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.sent: list[Sent] = []

    def _headers(self, request_id: str, fault: str | None = None, tokens: int = TOKENS) -> dict[str, str]:
        headers = {"X-Request-ID": request_id, "X-Sim-Tokens": str(tokens)}
        if fault:
            headers["X-Sim-Fault"] = fault
        return headers

    def _openai(self) -> openai.AsyncOpenAI:
        # No retries: a retry would send the same X-Request-ID twice.
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.token, max_retries=0, timeout=60)

    def _ollama(self, headers: dict[str, str]) -> ollama.AsyncClient:
        return ollama.AsyncClient(
            host=self.url, headers={**headers, "Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def _new(self, kind: str, outcome: str, tokens: int = TOKENS) -> Sent:
        sent = Sent(uuid.uuid4().hex, kind, outcome, tokens=tokens)
        self.sent.append(sent)
        return sent

    # -- answered whole

    async def openai_chat(self) -> None:
        s = self._new("openai_chat", "ok")
        async with self._openai() as client:
            resp = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, extra_headers=self._headers(s.request_id)
            )
        s.status = resp.status_code
        usage = resp.parse().usage
        assert usage is not None
        s.usage = (usage.prompt_tokens, usage.completion_tokens)

    async def openai_stream(self, include_usage: bool = False, tokens: int = TOKENS) -> Sent:
        s = self._new("openai_stream_usage" if include_usage else "openai_stream", "ok", tokens)
        s.shown_usage = include_usage
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
        async with self._openai() as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_headers=self._headers(s.request_id, tokens=tokens),
                **extra,
            )
            s.status = stream.response.status_code
            finished = False
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        s.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            s.pieces += 1
                        finished = finished or choice.finish_reason is not None
            except (httpx.HTTPError, openai.APIError) as exc:
                s.outcome, finished = "proxy_error", False  # cut by the SIGTERM in step 3
                s.notes.append(repr(exc))
            if not finished and s.outcome == "ok":
                s.outcome = "proxy_error"
        return s

    async def openai_completion(self) -> None:
        s = self._new("openai_completion", "ok")
        async with self._openai() as client:
            resp = await client.completions.with_raw_response.create(
                model=MODEL, prompt=PROMPT, extra_headers=self._headers(s.request_id)
            )
        s.status = resp.status_code
        usage = resp.parse().usage
        assert usage is not None
        s.usage = (usage.prompt_tokens, usage.completion_tokens)

    async def openai_completion_stream(self) -> None:
        """Ollama's /v1/completions puts an all-zero usage on every chunk once the sidecar asks
        for usage: the client, which did not, must see none of it."""
        s = self._new("openai_completion_stream", "ok")
        s.shown_usage = False
        async with self._openai() as client:
            stream = await client.completions.create(
                model=MODEL, prompt=PROMPT, stream=True, extra_headers=self._headers(s.request_id)
            )
            s.status = stream.response.status_code
            finished = False
            async for chunk in stream:
                if chunk.usage is not None:
                    s.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    s.pieces += 1 if choice.text else 0
                    finished = finished or choice.finish_reason is not None
            assert finished

    async def ollama_generate_stream(self) -> None:
        s = self._new("ollama_generate_stream", "ok")
        async with self._ollama(self._headers(s.request_id)) as client:
            async for part in await client.generate(model=MODEL, prompt=PROMPT, stream=True):
                s.status = 200
                s.pieces += 1 if part.response else 0
                if part.done:
                    s.usage = (part.prompt_eval_count or 0, part.eval_count or 0)
            assert s.usage is not None

    async def ollama_chat(self) -> None:
        s = self._new("ollama_chat", "ok")
        async with self._ollama(self._headers(s.request_id)) as client:
            resp = await client.chat(model=MODEL, messages=MESSAGES)
        s.status = 200
        s.usage = (resp.prompt_eval_count or 0, resp.eval_count or 0)

    async def ollama_stream(self, tokens: int = TOKENS) -> Sent:
        s = self._new("ollama_stream", "ok", tokens)
        async with self._ollama(self._headers(s.request_id, tokens=tokens)) as client:
            done = False
            try:
                async for part in await client.chat(model=MODEL, messages=MESSAGES, stream=True):
                    s.status = 200
                    if part.message.content:
                        s.pieces += 1
                    if part.done:
                        done = True
                        s.usage = (part.prompt_eval_count or 0, part.eval_count or 0)
            except (httpx.HTTPError, ollama.ResponseError) as exc:
                s.notes.append(repr(exc))
            if not done:
                s.outcome = "proxy_error"  # cut by the SIGTERM in step 3
        return s

    # -- upstream errors and cuts

    async def openai_500(self) -> None:
        s = self._new("openai_500", "upstream_error")
        async with self._openai() as client:
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, extra_headers=self._headers(s.request_id, "error-500")
                )
        s.status = info.value.status_code

    async def ollama_500(self) -> None:
        s = self._new("ollama_500", "upstream_error")
        async with self._ollama(self._headers(s.request_id, "error-500")) as client:
            with pytest.raises(ollama.ResponseError) as info:
                await client.chat(model=MODEL, messages=MESSAGES)
        s.status = info.value.status_code

    async def openai_cut_stream(self) -> None:
        s = self._new("openai_cut_stream", "upstream_error")
        async with self._openai() as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers=self._headers(s.request_id, "cut")
            )
            s.status = stream.response.status_code
            with pytest.raises((httpx.HTTPError, openai.APIError)):
                async for chunk in stream:
                    s.pieces += sum(1 for c in chunk.choices if c.delta.content)

    async def ollama_cut_stream(self) -> None:
        s = self._new("ollama_cut_stream", "upstream_error")
        async with self._ollama(self._headers(s.request_id, "cut")) as client:
            with pytest.raises((httpx.HTTPError, ollama.ResponseError)):
                async for part in await client.chat(model=MODEL, messages=MESSAGES, stream=True):
                    s.status = 200
                    s.pieces += 1 if part.message.content else 0

    async def cut_body(self) -> None:
        """A non-streamed answer the upstream cuts half-way: the client must not get a 200."""
        s = self._new("cut_body", "upstream_error")
        async with httpx.AsyncClient(timeout=60) as http:
            resp = await http.post(
                self.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES},
                headers={**self._headers(s.request_id, "cut"), "Authorization": f"Bearer {self.token}"},
            )
        s.status = resp.status_code
        assert resp.status_code >= 500 and "error" in resp.json(), resp.text

    # -- clients that go away, clients that are refused

    async def openai_cancel(self) -> None:
        s = self._new("openai_cancel", "client_cancelled")
        async with self._openai() as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_headers=self._headers(s.request_id, "stall"),
            )
            s.status = stream.response.status_code
            async for chunk in stream:
                s.pieces += sum(1 for c in chunk.choices if c.delta.content)
                if s.pieces:
                    break  # the user closes the tab after the first words
            await stream.close()

    async def ollama_cancel(self) -> None:
        s = self._new("ollama_cancel", "client_cancelled")
        async with self._ollama(self._headers(s.request_id, "stall")) as client:
            parts = await client.chat(model=MODEL, messages=MESSAGES, stream=True)
            async for part in parts:
                s.status = 200
                if part.message.content:
                    s.pieces += 1
                    break
            await parts.aclose()  # type: ignore[attr-defined]

    async def unauthenticated(self) -> None:
        s = self._new("unauthenticated", "rejected")
        async with httpx.AsyncClient(timeout=60) as http:
            resp = await http.post(
                self.url + "/api/chat",
                json={"model": MODEL, "messages": MESSAGES},
                headers={**self._headers(s.request_id), "Authorization": "Bearer not-a-token"},
            )
        s.status = resp.status_code
        assert resp.status_code == 401 and "error" in resp.json()


MIX = (
    "openai_chat",
    "openai_stream",
    "openai_stream_usage",
    "openai_completion",
    "openai_completion_stream",
    "ollama_chat",
    "ollama_stream",
    "ollama_generate_stream",
    "openai_500",
    "ollama_500",
    "openai_cut_stream",
    "ollama_cut_stream",
    "cut_body",
    "openai_cancel",
    "ollama_cancel",
    "unauthenticated",
)


def call(traffic: Traffic, kind: str) -> Awaitable[object]:
    if kind == "openai_stream_usage":
        return traffic.openai_stream(include_usage=True)
    method: Callable[[], Awaitable[object]] = getattr(traffic, kind)
    return method()


async def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def records(db_path: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM usage_logs")]
    finally:
        con.close()


def spill_files(side: SidemeterProcess) -> list[Path]:
    return sorted((side.data_dir / "spill").glob("usage-spill-*"))


def journal_files(side: SidemeterProcess) -> list[Path]:
    return sorted((side.data_dir / "spill").glob("usage-journal-*"))


async def ready(ops_url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(ops_url + "/readyz")).status_code == 200


async def test_soak_one_correct_record_per_request(tmp_path: Path, processes: list[SidemeterProcess]) -> None:
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(SECRET)
    token = issue_token(SigningKey.from_secret(SECRET), USER, team=TEAM, ttl=3600)
    # Ollama's server answers /api/* and its OpenAI-compatible /v1/*: both dialects, one upstream.
    sim = SimulatedLLM("ollama", token_delay=0.01)
    await sim.start()
    try:
        side = SidemeterProcess(
            sim.url,
            tmp_path,
            "--grace-period",
            str(GRACE_S),
            auth=("--auth", "jwt", "--jwt-secret-file", str(secret_file)),
        )
        processes.append(side)
        ops_url = f"http://127.0.0.1:{side.ops_port}"
        traffic = Traffic(side.url, token)

        # 1. Mixed traffic from 6 concurrent clients, with the database failing for a while.
        rng = random.Random(10)
        plans = [rng.sample(MIX, len(MIX)) for _ in range(6)]
        answered = 0

        async def client(plan: list[str]) -> None:
            nonlocal answered
            for kind in plan:
                await call(traffic, kind)
                answered += 1

        async def outage() -> None:
            await poll(lambda: answered >= 12, 60, "traffic before the outage")
            assert journal_files(side), "no journal: every record is appended to one before it is queued"
            with immutable(db_files(side.db_path)):
                # Held until the store has noticed and traffic went on meanwhile.
                start = answered
                await poll(lambda: "spilling" in side.stderr, 30, "a batch spilled while the database fails")
                await poll(
                    lambda: answered >= start + 12 or answered == len(MIX) * 6, 60, "traffic in the outage"
                )
                assert not await ready(ops_url)  # /readyz tells the outage

        await asyncio.wait_for(asyncio.gather(outage(), *(client(p) for p in plans)), 120)

        # 2. The database is back: the spilled records are re-ingested by the running sidecar.
        async def recovered() -> bool:
            return await ready(ops_url) and not spill_files(side)

        deadline = asyncio.get_running_loop().time() + 30
        while not await recovered():
            assert asyncio.get_running_loop().time() < deadline, "spill files were not re-ingested"
            await asyncio.sleep(0.1)

        # 3. SIGTERM with streams in flight: long ones outlive the grace period, short ones do not.
        before = len(traffic.sent)
        long = [asyncio.create_task(traffic.openai_stream(tokens=5000)) for _ in range(2)]
        long += [asyncio.create_task(traffic.ollama_stream(tokens=5000)) for _ in range(2)]
        short = [
            asyncio.create_task(traffic.openai_stream(tokens=20)),
            asyncio.create_task(traffic.ollama_stream(tokens=20)),
        ]

        def started() -> bool:
            streams = traffic.sent[before:]
            return len(streams) == 6 and all(s.pieces for s in streams)

        await poll(started, 30, "the streams to start")
        side.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(side.wait, 60)
        streams = await asyncio.wait_for(asyncio.gather(*long, *short), 30)
    finally:
        await sim.stop()

    assert code == 0, side.stderr
    assert "Traceback" not in side.stderr, side.stderr
    assert [s.outcome for s in streams[:4]] == ["proxy_error"] * 4, [s.notes for s in streams]
    assert [s.outcome for s in streams[4:]] == ["ok"] * 2, [s.notes for s in streams]
    last = side.stderr_lines[-1]
    assert "stopped:" in last and "0 spilled" in last and "0 lost" in last, side.stderr
    assert not spill_files(side) and not journal_files(side)  # all stored: a clean stop leaves nothing

    rows = records(side.db_path)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    sent = {s.request_id: s for s in traffic.sent}
    assert len(sent) == len(MIX) * 6 + 6
    assert by_id.keys() == sent.keys(), (
        f"missing {sorted(sent.keys() - by_id.keys())}, unexpected {sorted(by_id.keys() - sent.keys())}"
    )
    assert all(len(v) == 1 for v in by_id.values()), "a request was recorded twice"

    # The prompt counts the clients were shown, per endpoint: one prompt, one count.
    shown_prompt: dict[str, set[int]] = {}
    for rid, s in sent.items():
        if s.usage is not None:
            shown_prompt.setdefault(by_id[rid][0]["endpoint"], set()).add(s.usage[0])
    assert all(len(v) == 1 for v in shown_prompt.values()), shown_prompt
    known_mismatches: list[str] = []
    for rid, s in sent.items():
        rec = by_id[rid][0]
        where = f"{s.kind} {rid}: {rec}"
        assert rec["outcome"] == s.outcome, where
        if s.outcome != "rejected":
            assert (rec["user"], rec["team"]) == (USER, TEAM), where
        if s.outcome == "proxy_error":
            assert rec["error"] and "shutdown" in rec["error"], where
        if s.status is not None and rec["status"] != s.status:
            if s.kind == "cut_body":  # the client got 502; the record says 200
                known_mismatches.append(where)
            else:
                raise AssertionError(f"status {rec['status']} recorded, {s.status} received: {where}")
        if rec["outcome"] == "ok":
            assert rec["usage_source"] == "reported", where
            assert rec["completion_tokens"] == s.tokens, where
            if s.shown_usage:
                assert s.usage is not None and (rec["prompt_tokens"], rec["completion_tokens"]) == s.usage, (
                    where
                )
            else:  # the sidecar asked for usage on the client's behalf, and kept it from the client
                assert s.usage is None, f"the client was shown usage it did not ask for: {where}"
                assert {rec["prompt_tokens"]} == shown_prompt[rec["endpoint"]], where
            assert rec["total_tokens"] == rec["prompt_tokens"] + rec["completion_tokens"], where
        elif s.pieces:  # cut or cancelled mid-stream: estimated from what was streamed
            assert rec["usage_source"] == "estimated", where
            assert rec["completion_tokens"] is not None and rec["completion_tokens"] >= s.pieces, where
    assert any(s.kind == "cut_body" for s in sent.values())
    if known_mismatches:
        pytest.xfail(
            "finding 5 of issue #10 (being fixed in parallel): a non-streamed answer the upstream "
            "cuts is answered 502 but recorded as 200:\n" + "\n".join(known_mismatches[:3])
        )
