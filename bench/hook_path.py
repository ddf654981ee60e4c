#!/usr/bin/env python3
"""CPU per request of the sidecar's hook path, in-process: the four hooks of a plain chat
request (requestheaders, request, responseheaders, response) dispatched through the sidecar's
own addons (JWT auth, metering, records into a real SQLite store), once with mitmproxy's stock
AddonManager and once with `agent.proxy.dispatch.HookIndex`, in the same run.

No sockets, so the figures hold still from run to run (unlike `overhead.py`'s end-to-end
cells on a shared box): they show what dispatch costs and what the handlers themselves cost.

    python -O bench/hook_path.py            # 5 rounds of 5,000 requests per variant
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from mitmproxy import http
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import tflow

import agent.runtime
from agent.auth.issue import SigningKey, issue_token
from agent.config import Config
from agent.proxy.dispatch import HookIndex
from agent.runtime import Sidecar, new_event_loop

SECRET = "bench-hook-path-secret-0123456789abcdef"
REQUEST = (
    b'{"model":"sim-model","messages":[{"role":"user","content":"Say hello to the benchmark"}],'
    b'"max_tokens":8}'
)
RESPONSE = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"sim-model","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"one two three four five six seven '
    b'eight"},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":8,'
    b'"total_tokens":20}}'
)
HOOKS = (HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook)


def make_flow(token: str) -> http.HTTPFlow:
    """A finished request/response pair as mitmproxy hands it to the hooks (as wrk sends it)."""
    flow = tflow.tflow(resp=True)
    flow.request.method = "POST"
    flow.request.path = "/v1/chat/completions"
    flow.request.headers = http.Headers(
        host="127.0.0.1:8000",
        accept="*/*",
        content_type="application/json",
        content_length=str(len(REQUEST)),
        authorization=f"Bearer {token}",
    )
    flow.request.raw_content = REQUEST
    flow.request.timestamp_start = time.time()
    assert flow.response is not None
    flow.response.status_code = 200
    flow.response.headers = http.Headers(content_type="application/json", content_length=str(len(RESPONSE)))
    flow.response.raw_content = RESPONSE
    flow.response.timestamp_end = time.time()
    return flow


async def measure(manager: Callable[..., AddonManager], requests: int, workdir: Path) -> float:
    """Microseconds of event-loop thread CPU per request for the four hooks."""
    agent.runtime.HookIndex = manager  # type: ignore[assignment]  # what the sidecar installs
    config = Config(
        upstream="http://127.0.0.1:9",
        listen="127.0.0.1:0",
        ops_listen="127.0.0.1:0",
        db=f"sqlite:///{workdir}/usage.db",
        data_dir=str(workdir),
        auth="jwt",
        jwt_secret=SECRET,
    ).validate()
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        token = issue_token(SigningKey.from_secret(SECRET), "bench-user", team="bench-team")
        addons = sidecar.master.addons  # type: ignore[union-attr]
        flows = [make_flow(token) for _ in range(requests + 200)]
        for flow in flows[:200]:  # warm caches (token, index)
            for hook in HOOKS:
                await addons.handle_lifecycle(hook(flow))
        start = time.thread_time()
        for flow in flows[200:]:
            for hook in HOOKS:
                await addons.handle_lifecycle(hook(flow))
        return (time.thread_time() - start) / requests * 1e6
    finally:
        await sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round [5000]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant, interleaved [5]")
    args = parser.parse_args()
    variants: dict[str, Callable[..., AddonManager]] = {
        "stock AddonManager": AddonManager,
        "HookIndex": HookIndex,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    with (
        tempfile.TemporaryDirectory(prefix="sidemeter-hook-path-") as tmp,
        asyncio.Runner(loop_factory=new_event_loop) as runner,
    ):
        for rnd in range(args.rounds):
            for i, (name, manager) in enumerate(variants.items()):
                workdir = Path(tmp) / f"{rnd}-{i}"
                results[name].append(runner.run(measure(manager, args.requests, workdir)))
    base = statistics.median(results["stock AddonManager"])
    print(f"hook path of a plain chat request, {args.requests:,} requests x {args.rounds} rounds")
    print(f"{'dispatch':<20} {'us/request':>10} {'x stock':>8}   rounds")
    for name, values in results.items():
        med = statistics.median(values)
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<20} {med:>10.1f} {med / base:>7.2f}x   {rounds}")


if __name__ == "__main__":
    main()
