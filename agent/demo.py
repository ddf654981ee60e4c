"""`sidemeter demo`: a simulated Ollama server, the sidecar in front of it, a burst of mixed
traffic through it, and the usage table those requests left in the store.

Authentication is on, as in production: the demo signs with a secret it keeps in its data
directory (made on first run), and each demo user calls with their own short-lived token, so
the table shows who made every request; `sidemeter token issue` and `simulate` can mint more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.auth.issue import SigningKey, issue_token
from agent.config import Config
from agent.records import REQUEST_ID_HEADER, Dialect, UsageRecord
from agent.runtime import Sidecar, StartupError
from agent.sim import SimulatedLLM
from agent.store.queries import get_record

MODEL = "llama3.2"
TEAMS = {"alice": "ml", "bob": "search", "carol": "ml"}


@dataclass(frozen=True, slots=True)
class DemoCall:
    label: str
    path: str
    body: dict[str, Any]
    user: str | None  # None: sent without a token, to show a refusal


def demo_calls(n: int) -> list[DemoCall]:
    """A mix of both dialects, streamed and not, chat/completion/embedding/responses."""
    chat = [{"role": "user", "content": "Why is the sky blue? Answer briefly."}]
    base = [
        DemoCall("ollama chat stream", "/api/chat", {"model": MODEL, "messages": chat}, "alice"),
        DemoCall(
            "ollama generate",
            "/api/generate",
            {"model": MODEL, "prompt": "Name three rivers.", "stream": False},
            "bob",
        ),
        DemoCall(
            "openai chat stream",
            "/v1/chat/completions",
            {"model": MODEL, "messages": chat, "stream": True, "max_tokens": 24},
            "carol",
        ),
        DemoCall(
            "openai chat",
            "/v1/chat/completions",
            {"model": MODEL, "messages": chat, "max_tokens": 12},
            "alice",
        ),
        DemoCall("ollama embed", "/api/embed", {"model": MODEL, "input": ["sidecar", "metering"]}, "bob"),
        DemoCall(
            "openai completion stream+usage",
            "/v1/completions",
            {
                "model": MODEL,
                "prompt": "Once upon a time",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            "carol",
        ),
        DemoCall(
            "ollama generate stream",
            "/api/generate",
            {"model": MODEL, "prompt": "Count to five.", "options": {"num_predict": 20}},
            "alice",
        ),
        DemoCall("openai embeddings", "/v1/embeddings", {"model": MODEL, "input": "hello world"}, "bob"),
        DemoCall(
            "openai responses",
            "/v1/responses",
            {"model": MODEL, "input": "Say hi.", "max_output_tokens": 8},
            "carol",
        ),
        DemoCall(
            "unknown model (404)",
            "/api/chat",
            {"model": "no-such-model", "messages": chat, "stream": False},
            "bob",
        ),
        DemoCall("no token (401)", "/v1/chat/completions", {"model": MODEL, "messages": chat}, None),
    ]
    return [base[i % len(base)] for i in range(n)]


async def send(
    session: aiohttp.ClientSession, url: str, call: DemoCall, tokens: dict[str, str]
) -> tuple[str, int, float]:
    rid = uuid.uuid4().hex
    t0 = time.perf_counter()
    headers = {REQUEST_ID_HEADER: rid}
    if call.user is not None:
        headers["Authorization"] = f"Bearer {tokens[call.user]}"
    async with session.post(url + call.path, json=call.body, headers=headers) as resp:
        async for _ in resp.content.iter_any():  # read the stream as a client would
            pass
        return rid, resp.status, (time.perf_counter() - t0) * 1000


COLUMNS: Sequence[tuple[str, str]] = (
    ("user", "user"),
    ("team", "team"),
    ("dialect", "dialect"),
    ("endpoint", "endpoint"),
    ("stream", "stream"),
    ("status", "status"),
    ("outcome", "outcome"),
    ("prompt_tokens", "in"),
    ("completion_tokens", "out"),
    ("usage_source", "source"),
    ("ttft_ms", "ttft ms"),
    ("latency_ms", "latency ms"),
    ("tokens_per_second", "tok/s"),
)


def format_table(records: Iterable[UsageRecord], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    rows = [[_cell(getattr(r, key)) for key, _ in columns] for r in records]
    heads = [h for _, h in columns]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(heads), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


DEMO_SECRET = "demo-secret"


def demo_secret(data_dir: Path) -> Path:
    """The demo's signing secret, kept in its data directory (mode 0600) so tokens minted for it
    (`SIDEMETER_JWT_SECRET_FILE=data/demo-secret sidemeter token issue ...`, `make generate-jwt`)
    stay valid across demo runs. Made on first use."""
    path = data_dir / DEMO_SECRET
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
    return path


async def _start_sidecar(cfg: Config) -> Sidecar:
    try:
        sidecar = Sidecar(cfg)
        await sidecar.start()
        return sidecar
    except StartupError as e:
        if "in use" not in str(e):
            raise
        print(f"note: {e}; using free ports instead", file=sys.stderr)
        sidecar = Sidecar(cfg.replace(listen="127.0.0.1:0", ops_listen="127.0.0.1:0"))
        await sidecar.start()
        return sidecar


async def run_demo(
    *,
    listen: str,
    ops_listen: str,
    db: str,
    count: int,
    exit_after: bool,
    data_dir: str = "data",
    sidemeter: str = "sidemeter",
    sidemeter_note: str | None = None,
) -> None:
    """`sidemeter` is how the printed commands start (a path when it is not on PATH), and
    `sidemeter_note` the line that says why."""
    sim = SimulatedLLM(Dialect.OLLAMA, token_delay=0.01)
    upstream = await sim.start()
    secret_file = demo_secret(Path(data_dir))
    cfg = Config(
        upstream=upstream,
        listen=listen,
        ops_listen=ops_listen,
        db=db,
        data_dir=data_dir,
        auth="jwt",
        jwt_secret_file=str(secret_file),
        access_log="off",  # the demo prints its own table of the records
    ).validate()
    signing = SigningKey.from_secret(secret_file.read_text().strip())
    tokens = {user: issue_token(signing, user, team=team, ttl=3600) for user, team in TEAMS.items()}
    sidecar = await _start_sidecar(cfg)
    proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
    ops = f"http://127.0.0.1:{sidecar.ops_port}"
    print(f"simulated Ollama server at {upstream}; sidecar at {proxy}; sending {count} requests")
    try:
        calls = demo_calls(count)
        ids: list[str] = []
        async with aiohttp.ClientSession() as session:
            for i, call in enumerate(calls, 1):
                rid, status, ms = await send(session, proxy, call, tokens)
                ids.append(rid)
                print(f"  [{i:>2}/{len(calls)}] {call.label:<32} HTTP {status}  {ms:7.1f} ms")
        await asyncio.to_thread(sidecar.store.flush)
        from agent.store.database import open_database

        database = open_database(db)
        records = [r for r in (get_record(database, rid) for rid in ids) if r is not None]
        database.close()
        print()
        print(format_table(records))
        print()
        print(f"{len(records)} usage record(s) in {db} (table usage_logs)")
        example = json.dumps({"model": MODEL, "prompt": "hi", "stream": False})
        for user, team in TEAMS.items():
            print(f"  token of {user} (team {team}, 1h): {tokens[user]}")
        print(f"  a token (1h):    TOKEN={tokens['alice']}")
        print(
            f"  more tokens:     SIDEMETER_JWT_SECRET_FILE={secret_file} "
            f"{sidemeter} token issue --sub NAME --team TEAM"
        )
        print(
            f"  send your own:   curl {proxy}/api/generate -H \"Authorization: Bearer $TOKEN\" -d '{example}'"
        )
        print(f"  OpenAI clients:  base_url={proxy}/v1, api_key=$TOKEN")
        print(f"  health:          {ops}/healthz   {ops}/readyz   metrics: {ops}/metrics")
        print(f"  export:          {sidemeter} usage export --db {db}")
        if sidemeter_note:
            print(f"                   ({sidemeter_note})")
        if not exit_after:
            print("running; Ctrl-C to stop")
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, sidecar.request_stop)
            await sidecar.run_until_stopped()
    finally:
        with contextlib.suppress(Exception):
            await sidecar.stop()
        await sim.stop()
