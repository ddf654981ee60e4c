"""`sidemeter smoke-test`: is a deployed sidecar working end to end? One step at a time, each
printed with ✓ or ✗ and what failed; the first failure ends the run.

Safe against production: a handful of tiny requests (8 tokens at most), as the user
`sidemeter-smoke` with request ids starting `smoke-`, so they can be told apart in the records."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from agent import simulate as sim

SMOKE_USER: Final = "sidemeter-smoke"
SMOKE_TEAM: Final = "smoke-test"
REQUEST_ID_PREFIX: Final = "smoke-"
MAX_TOKENS: Final = 8
REQUESTS_METRIC: Final = "sidemeter_requests_total"


class StepFailed(Exception):
    """What a step found wrong, in one line."""


@dataclass(slots=True)
class Deployment:
    """Where the sidecar is, and how the smoke test talks to it."""

    target: str
    ops: str
    token: str | None  # the user's token; None with auth off
    ops_token: str | None
    model: str | None = None
    timeout: float = 30.0
    sent: list[sim.Result] = field(default_factory=list)
    metric_before: float = 0.0


Step = tuple[str, Callable[[aiohttp.ClientSession, Deployment], Awaitable[str]]]


async def _get_json(session: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(url, headers=headers) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise StepFailed(f"cannot reach {url} ({type(e).__name__}: {e})") from None


def _message(body: Any) -> str:
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return str(body["error"].get("message"))
    return str(body)[:200]


async def ops_health(session: aiohttp.ClientSession, d: Deployment) -> str:
    status, body = await _get_json(session, f"{d.ops}/ops/health")
    if status != 200 or not isinstance(body, Mapping):
        raise StepFailed(f"/ops/health answered {status}: {_message(body)}")
    if body.get("status") == "down":
        raise StepFailed(f"/ops/health says down: {body}")
    upstream = body.get("upstream") or {}
    return f"status {body.get('status')}, upstream reachable: {upstream.get('reachable')}"


async def readiness(session: aiohttp.ClientSession, d: Deployment) -> str:
    status, body = await _get_json(session, f"{d.ops}/readyz")
    if status != 200:
        problems = body.get("problems") if isinstance(body, Mapping) else body
        raise StepFailed(f"/readyz answered {status}: {problems}")
    return "ready"


async def pick_model(session: aiohttp.ClientSession, d: Deployment) -> str:
    if d.model:
        return f"{d.model} (given)"
    d.model = await sim.discover_model(d.ops, d.ops_token)
    if not d.model:
        raise StepFailed("the ops API (/ops/services) lists no model; pass --model")
    return f"{d.model} (from /ops/services)"


async def _metric_total(session: aiohttp.ClientSession, d: Deployment) -> float:
    try:
        async with session.get(f"{d.ops}/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise StepFailed(f"cannot read {d.ops}/metrics ({e})") from None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(REQUESTS_METRIC + "{") or line.startswith(REQUESTS_METRIC + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def metrics_baseline(session: aiohttp.ClientSession, d: Deployment) -> str:
    d.metric_before = await _metric_total(session, d)
    return f"{REQUESTS_METRIC} = {d.metric_before:g}"


def _call(kind: str, stream: bool, model: str) -> sim.Call:
    k = sim.KINDS[kind]
    return sim.Call(
        index=0,
        request_id=f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}",
        user=sim.User(SMOKE_USER, SMOKE_TEAM),
        kind=k,
        stream=stream,
        fault=None,
        body=k.body(model, "Say OK.", stream, MAX_TOKENS),
    )


async def bad_token_refused(session: aiohttp.ClientSession, d: Deployment) -> str:
    if d.token is None:
        return "skipped: auth is off in this config"
    call = dataclasses.replace(
        _call("openai-chat", False, d.model or sim.DEFAULT_MODEL), fault=sim.Fault.BAD_TOKEN
    )
    result = await sim.send(session, d.target, call, None, timeout=d.timeout)
    d.sent.append(result)
    if result.status != 401:
        raise StepFailed(f"a bad token got HTTP {result.status} {result.error or ''}, not 401")
    return "401"


def request_step(kind: str, stream: bool) -> Step:
    label = f"{kind.split('-')[0]} {'streamed' if stream else 'whole'} request"

    async def step(session: aiohttp.ClientSession, d: Deployment) -> str:
        assert d.model is not None
        result = await sim.send(session, d.target, _call(kind, stream, d.model), d.token, timeout=d.timeout)
        d.sent.append(result)
        if not result.ok:
            raise StepFailed(f"HTTP {result.status}: {result.error or 'no answer'}")
        if not result.completion_tokens:
            raise StepFailed(f"HTTP {result.status} but the answer reports no completion tokens")
        return (
            f"HTTP {result.status}, {result.prompt_tokens} in / {result.completion_tokens} out, "
            f"{result.latency_ms:.0f} ms, id {result.call.request_id}"
        )

    return label, step


async def records_stored(session: aiohttp.ClientSession, d: Deployment) -> str:
    ids = [r.call.request_id for r in d.sent]
    records, problem = await sim.fetch_records(d.ops, ids, d.ops_token, wait=10.0)
    if problem:
        raise StepFailed(problem)
    missing = [rid for rid in ids if rid not in records]
    if missing:
        raise StepFailed(f"{len(missing)} of {len(ids)} request(s) have no record, e.g. {missing[0]}")
    for r in d.sent:
        rec = records[r.call.request_id]
        if r.call.fault is sim.Fault.BAD_TOKEN:
            if rec.get("outcome") != "rejected" or rec.get("status") != 401:
                raise StepFailed(
                    f"the bad-token request is recorded as {rec.get('status')} {rec.get('outcome')}"
                )
            continue
        if rec.get("user") != SMOKE_USER:  # from the token's sub, or X-User-Id with auth off
            raise StepFailed(
                f"{r.call.request_id} is recorded for user {rec.get('user')!r}, not {SMOKE_USER!r}"
            )
        got = (rec.get("prompt_tokens"), rec.get("completion_tokens"))
        if got != (r.prompt_tokens, r.completion_tokens):
            raise StepFailed(
                f"{r.call.request_id} is recorded with {got[0]} in / {got[1]} out; the client got "
                f"{r.prompt_tokens} in / {r.completion_tokens} out"
            )
    return f"{len(ids)} record(s) under their ids, user {SMOKE_USER}, tokens as the clients got them"


async def metrics_counted(session: aiohttp.ClientSession, d: Deployment) -> str:
    after = await _metric_total(session, d)
    if after - d.metric_before < len(d.sent):
        raise StepFailed(
            f"{REQUESTS_METRIC} grew by {after - d.metric_before:g}, fewer than the {len(d.sent)} sent"
        )
    return f"{REQUESTS_METRIC} grew by {after - d.metric_before:g} (>= {len(d.sent)} sent)"


STEPS: Final[tuple[Step, ...]] = (
    ("ops health (/ops/health)", ops_health),
    ("readiness (/readyz)", readiness),
    ("model", pick_model),
    ("metrics before (/metrics)", metrics_baseline),
    ("a bad token is refused", bad_token_refused),
    request_step("ollama-chat", False),
    request_step("ollama-chat", True),
    request_step("openai-chat", False),
    request_step("openai-chat", True),
    ("records stored (/ops/requests/{id})", records_stored),
    ("requests counted (/metrics)", metrics_counted),
)


async def run_steps(d: Deployment, report: Callable[[bool, str, str], None]) -> str | None:
    """Run the steps in order, reporting each (passed, name, detail); the name of the first
    failed step, or None when every step passed."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=d.timeout)) as session:
        for name, step in STEPS:
            t0 = time.perf_counter()
            try:
                detail = await step(session, d)
            except StepFailed as e:
                report(False, name, str(e))
                return name
            report(True, name, f"{detail} ({(time.perf_counter() - t0) * 1000:.0f} ms)")
    return None
