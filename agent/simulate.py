"""`sidemeter simulate`: concurrent mixed traffic against a running sidecar, as its users would
send it, and a summary of what the clients saw beside what the sidecar recorded.

Every request goes through the proxy port and only there: model discovery and the look-up of the
records go to the ops API, so `-n N` leaves exactly N records. Request ids start with `sim-`,
so simulated traffic can be told apart in the records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import aiohttp

from agent.records import REQUEST_ID_HEADER, Dialect

REQUEST_ID_PREFIX: Final = "sim-"
DEFAULT_MODEL: Final = "llama3.2"
DEFAULT_USERS: Final = "demo-user:demo"
USER_HEADER: Final = "X-User-Id"  # who a request is from when it carries no token (auth off)

PROMPTS: Final = (
    "Why is the sky blue? Answer briefly.",
    "Name three rivers in Europe.",
    "Write a haiku about metering.",
    "What is a sidecar container?",
    "Count to five.",
)


class Fault(StrEnum):
    """Deliberate faults, each one every LLM server and sidecar answers the same way."""

    UNKNOWN_MODEL = "unknown-model"  # the server answers 404
    BAD_TOKEN = "bad-token"  # the sidecar refuses it with 401; nothing reaches the server
    CANCEL = "cancel"  # the client hangs up after the first chunk of a stream


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of call: dialect, path, whether it can stream, and how its body is built."""

    name: str
    dialect: Dialect
    path: str
    streams: bool
    body: Callable[[str, str, bool, int], dict[str, Any]]  # (model, prompt, stream, max_tokens)


def _ollama_chat(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "stream": stream, "options": {"num_predict": n}}


def _ollama_generate(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "stream": stream, "options": {"num_predict": n}}


def _ollama_embed(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    return {"model": model, "input": [prompt]}


def _openai_stream_options(stream: bool) -> dict[str, Any]:
    # Asked for, so the client sees the counts it is compared with.
    return {"stream": True, "stream_options": {"include_usage": True}} if stream else {}


def _openai_chat(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "max_tokens": n, **_openai_stream_options(stream)}


def _openai_completion(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": n, **_openai_stream_options(stream)}


def _openai_embedding(model: str, prompt: str, stream: bool, n: int) -> dict[str, Any]:
    return {"model": model, "input": prompt}


KINDS: Final[Mapping[str, Kind]] = {
    k.name: k
    for k in (
        Kind("ollama-chat", Dialect.OLLAMA, "/api/chat", True, _ollama_chat),
        Kind("ollama-generate", Dialect.OLLAMA, "/api/generate", True, _ollama_generate),
        Kind("ollama-embed", Dialect.OLLAMA, "/api/embed", False, _ollama_embed),
        Kind("openai-chat", Dialect.OPENAI, "/v1/chat/completions", True, _openai_chat),
        Kind("openai-completion", Dialect.OPENAI, "/v1/completions", True, _openai_completion),
        Kind("openai-embedding", Dialect.OPENAI, "/v1/embeddings", False, _openai_embedding),
    )
}
DEFAULT_MIX: Final = ("ollama-chat", "ollama-generate", "openai-chat", "openai-completion")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    team: str | None = None


def parse_users(text: str) -> list[User]:
    """`alice:ml,bob:search,carol` -> users with their teams (a team is optional)."""
    users = []
    for item in text.split(","):
        name, _, team = item.strip().partition(":")
        if not name:
            raise ValueError(f"--users {text!r}: an empty user name; use NAME[:TEAM],... e.g. alice:ml,bob")
        users.append(User(name, team or None))
    if len({u.name for u in users}) != len(users):
        raise ValueError(f"--users {text!r}: a user is listed twice")
    return users


def parse_mix(text: str) -> list[Kind]:
    """`ollama-chat,openai-chat` (or `all`) -> the kinds of call to send, in turn."""
    if text.strip() == "all":
        return list(KINDS.values())
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise ValueError(f"--mix {text!r}: use 'all' or a comma list of {', '.join(KINDS)}")
    return [KINDS[n] for n in names]


@dataclass(frozen=True, slots=True)
class Call:
    """One planned request."""

    index: int
    request_id: str
    user: User
    kind: Kind
    stream: bool
    fault: Fault | None
    body: dict[str, Any]


def plan_calls(
    n: int,
    users: Sequence[User],
    mix: Sequence[Kind],
    *,
    model: str,
    stream_ratio: float = 0.5,
    fault_ratio: float = 0.0,
    max_tokens: int = 32,
    seed: int | None = None,
) -> list[Call]:
    """Exactly `n` calls: users and kinds in turn, streaming and faults drawn with the given
    shares (a seed makes the plan repeatable)."""
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        kind = mix[i % len(mix)]
        stream = kind.streams and rng.random() < stream_ratio
        fault = None
        if rng.random() < fault_ratio:
            choices = [Fault.UNKNOWN_MODEL, Fault.BAD_TOKEN] + ([Fault.CANCEL] if stream else [])
            fault = rng.choice(choices)
        call_model = f"no-such-model-{uuid.uuid4().hex[:6]}" if fault is Fault.UNKNOWN_MODEL else model
        prompt = PROMPTS[i % len(PROMPTS)]
        calls.append(
            Call(
                index=i,
                request_id=f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}",
                user=users[i % len(users)],
                kind=kind,
                stream=stream,
                fault=fault,
                body=kind.body(call_model, prompt, stream, max_tokens),
            )
        )
    return calls


@dataclass(slots=True)
class Result:
    """What the client saw."""

    call: Call
    status: int | None = None  # None: no HTTP answer (connection failed) or cancelled before it
    ok: bool = False  # a 2xx answer that arrived whole
    cancelled: bool = False
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def usage_from_json(dialect: Dialect, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The (prompt, completion) counts a response object or final stream chunk reports."""
    if dialect is Dialect.OLLAMA:
        prompt, completion = obj.get("prompt_eval_count"), obj.get("eval_count")
    else:
        usage = obj.get("usage") or {}
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def stream_objects(dialect: Dialect, text: str) -> Iterable[Mapping[str, Any]]:
    """The JSON objects of a whole streamed body: SSE `data:` events or NDJSON lines."""
    for line in text.splitlines():
        line = line.strip()
        if dialect is Dialect.OPENAI:
            if not line.startswith("data:"):
                continue
            line = line[5:].strip()
            if line == "[DONE]":
                continue
        if not line:
            continue
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                yield obj


async def send(
    session: aiohttp.ClientSession, target: str, call: Call, token: str | None, *, timeout: float = 120.0
) -> Result:
    result = Result(call)
    headers = {REQUEST_ID_HEADER: call.request_id}
    if call.fault is Fault.BAD_TOKEN:
        headers["Authorization"] = "Bearer not-a-valid-token"
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    else:
        headers[USER_HEADER] = call.user.name
    t0 = time.perf_counter()
    try:
        async with session.post(
            target + call.kind.path,
            json=call.body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            result.status = resp.status
            chunks = []
            async for chunk in resp.content.iter_any():
                if result.ttft_ms is None:
                    result.ttft_ms = (time.perf_counter() - t0) * 1000
                if call.fault is Fault.CANCEL:
                    result.cancelled = True
                    resp.close()  # hang up mid-stream, as an impatient client does
                    break
                chunks.append(chunk)
            result.latency_ms = (time.perf_counter() - t0) * 1000
            if result.cancelled:
                return result
            text = b"".join(chunks).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError) as e:
        result.latency_ms = (time.perf_counter() - t0) * 1000
        result.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return result
    result.ok = 200 <= resp.status < 300
    if not call.stream:
        result.ttft_ms = None  # a whole answer has no first token to time
    objects = list(stream_objects(call.kind.dialect, text)) if call.stream else _one_object(text)
    for obj in objects:
        prompt, completion = usage_from_json(call.kind.dialect, obj)
        if prompt is not None or completion is not None:
            result.prompt_tokens, result.completion_tokens = prompt, completion
        if not result.ok and result.error is None and isinstance(obj.get("error"), (str, dict)):
            err = obj["error"]
            result.error = err.get("message", str(err)) if isinstance(err, dict) else err
    return result


def _one_object(text: str) -> list[Mapping[str, Any]]:
    try:
        obj = json.loads(text)
    except ValueError:
        return []
    return [obj] if isinstance(obj, dict) else []


async def run_calls(
    target: str,
    calls: Sequence[Call],
    tokens: Mapping[str, str] | None,
    *,
    concurrency: int = 5,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Send every call, `concurrency` at a time; results in the calls' order."""
    queue: asyncio.Queue[Call] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    results: dict[int, Result] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                call = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            token = tokens.get(call.user.name) if tokens is not None else None
            result = await send(session, target, call, token)
            results[call.index] = result
            if on_result is not None:
                on_result(result)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(max(1, min(concurrency, len(calls))))))
    return [results[c.index] for c in calls]


# -- the summary ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


@dataclass(slots=True)
class Figures:
    """One column of the summary: what the clients saw, or what the sidecar recorded."""

    sent: int = 0
    ok: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        errors = ", ".join(f"{s}: {n}" for s, n in sorted(self.by_status.items())) or "-"
        return [
            ("requests", str(self.sent)),
            ("ok", str(self.ok)),
            ("errors by status", errors),
            ("cancelled by the client", str(self.cancelled)),
            ("tokens in", str(self.prompt_tokens)),
            ("tokens out", str(self.completion_tokens)),
            ("latency p50 ms", ms(percentile(self.latency_ms, 50))),
            ("latency p95 ms", ms(percentile(self.latency_ms, 95))),
            ("TTFT p50 ms", ms(percentile(self.ttft_ms, 50))),
            ("TTFT p95 ms", ms(percentile(self.ttft_ms, 95))),
        ]


def client_figures(results: Iterable[Result]) -> Figures:
    f = Figures()
    for r in results:
        f.sent += 1
        if r.cancelled:
            f.cancelled += 1
        elif r.ok:
            f.ok += 1
        else:
            f.by_status[str(r.status) if r.status is not None else "no answer"] += 1
        f.prompt_tokens += r.prompt_tokens or 0
        f.completion_tokens += r.completion_tokens or 0
        if r.latency_ms is not None and not r.cancelled:
            f.latency_ms.append(r.latency_ms)
        if r.ttft_ms is not None and not r.cancelled:
            f.ttft_ms.append(r.ttft_ms)
    return f


def recorded_figures(records: Iterable[Mapping[str, Any]]) -> Figures:
    """The same figures from the sidecar's records (as /ops/requests/{id} answers them)."""
    f = Figures()
    for rec in records:
        f.sent += 1
        if rec.get("outcome") == "client_cancelled":
            f.cancelled += 1
        elif rec.get("outcome") == "ok":
            f.ok += 1
        else:
            f.by_status[str(rec.get("status"))] += 1
        f.prompt_tokens += rec.get("prompt_tokens") or 0
        f.completion_tokens += rec.get("completion_tokens") or 0
        if rec.get("outcome") != "client_cancelled":
            if rec.get("latency_ms") is not None:
                f.latency_ms.append(float(rec["latency_ms"]))
            if rec.get("ttft_ms") is not None and rec.get("stream"):
                f.ttft_ms.append(float(rec["ttft_ms"]))
    return f


async def fetch_records(
    ops: str, request_ids: Sequence[str], token: str | None, *, wait: float = 5.0, concurrency: int = 8
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The sidecar's records of `request_ids` from the ops API, waiting up to `wait` seconds for
    the last to be written. Returns the records found and, when the ops API could not answer,
    why (records are then missing, never made up)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    found: dict[str, dict[str, Any]] = {}
    problem: str | None = None
    deadline = time.monotonic() + wait
    sem = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, rid: str) -> None:
        nonlocal problem
        async with sem, session.get(f"{ops}/ops/requests/{rid}", headers=headers) as resp:
            if resp.status == 200:
                found[rid] = await resp.json()
            elif resp.status != 404:
                body = await resp.text()
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    body = json.loads(body)["error"]["message"]
                problem = f"the ops API answered {resp.status}: {body}"

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                missing = [rid for rid in request_ids if rid not in found]
                await asyncio.gather(*(one(session, rid) for rid in missing))
                if problem or len(found) == len(request_ids) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)  # the writer batches: records land within its linger
    except (aiohttp.ClientError, TimeoutError) as e:
        problem = f"cannot reach the ops API at {ops} ({type(e).__name__}: {e})"
    return found, problem


async def discover_model(ops: str, token: str | None) -> str | None:
    """A model the upstream serves, from the ops API's services (never through the proxy)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{ops}/ops/services", headers=headers) as resp,
        ):
            if resp.status != 200:
                return None
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    for service in body.get("services", []):
        if service.get("type") == "upstream":
            models = [m for m in (service.get("loaded_models") or service.get("models") or []) if m]
            chat = [m for m in models if "embed" not in m]
            if chat:
                return str(chat[0])
    return None
