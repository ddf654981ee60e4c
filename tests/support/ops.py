"""What the ops API tests share: tokens with and without the ops role, one LLM request in each
dialect, and polling the ops API until a condition holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM

SECRET = "ops-api-test-secret-long-enough-for-hs256-and-hs512-0123456789abcdef"
KINDS = {"ollama": ("ollama", "vllm"), "vllm": ("openai", "vllm"), "llamacpp": ("openai", "llamacpp")}


def token(user: str = "olga", *, team: str | None = None, **claims: Any) -> str:
    return issue_token(SigningKey.from_secret(SECRET), user, team=team, extra=claims)


def ops_token() -> str:
    return token("operator", roles=["ops"])


def simulated(kind: str, **kw: Any) -> SimulatedLLM:
    dialect, flavor = KINDS[kind]
    return SimulatedLLM(dialect, flavor=flavor, **kw)


async def generate(
    http: httpx.AsyncClient,
    side_url: str,
    dialect: str,
    bearer: str | None,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> str:
    """One chat request through the proxy; returns its request id (the record's key)."""
    request_id = uuid.uuid4().hex
    hdrs = {"X-Request-ID": request_id, **(headers or {})}
    if bearer:
        hdrs["Authorization"] = f"Bearer {bearer}"
    messages = [{"role": "user", "content": "hello"}]
    if dialect == "ollama":
        path, body = "/api/chat", {"model": "sim-model", "messages": messages, "stream": stream}
    else:
        path, body = "/v1/chat/completions", {"model": "sim-model", "messages": messages, "stream": stream}
    async with http.stream("POST", side_url + path, json=body, headers=hdrs) as res:
        await res.aread()
    return request_id


async def poll(
    fetch: Callable[[], Any], done: Callable[[Any], bool], *, timeout: float = 10.0, what: str = "condition"
) -> Any:
    """`await fetch()` until `done(result)`, or fail after `timeout` seconds with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {result!r}")
        await asyncio.sleep(0.05)


def nearest_rank_p95(values: list[float]) -> float | None:
    """The reference the tests check /ops/health against, written independently of it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-95 * len(ordered) // 100)  # ceil(0.95 n) in integers
    return ordered[rank - 1]
