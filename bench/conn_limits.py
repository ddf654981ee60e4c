#!/usr/bin/env python3
"""CPU per request of the connection limits (agent/proxy/limits.py), in-process: the sidecar's
four hooks of a plain chat request (as in `hook_path.py`) with the `ConnectionLimits` addon in
the chain and a clock on the flow's connection, against the same chain without it, in the same
run; and the limits' own work per request called directly (the clock's `head_data` for the chunk
that brings the head, then its `requestheaders` and `response` hooks), which the dispatch
figures' noise would hide.

    python -O bench/conn_limits.py            # 5 rounds of 5,000 requests per variant
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from hook_path import HOOKS, SECRET, make_flow

from agent.auth.issue import SigningKey, issue_token
from agent.config import Config
from agent.proxy.limits import ConnectionClock
from agent.runtime import Sidecar, new_event_loop


class _Handler:
    """What a clock needs of its connection handler."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def sending(self) -> bool:
        return False

    def close_client(self, reason: str) -> None:
        raise AssertionError(f"closed during the bench: {reason}")


async def measure(with_limits: bool, requests: int, workdir: Path) -> tuple[float, float]:
    """µs of event-loop thread CPU per request: (the four hooks, the limits' own calls)."""
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
        limits = sidecar.limits
        if not with_limits:
            addons.remove(limits)
        flows = [make_flow(token) for _ in range(requests + 200)]
        clocks = []
        for flow in flows:  # one keep-alive connection per flow, as a clock sees it
            clock = ConnectionClock(limits, _Handler(flow.client_conn))  # type: ignore[arg-type]
            limits._clocks[id(flow.client_conn)] = clock
            clocks.append(clock)
        for flow in flows[:200]:  # warm caches (token, index)
            for hook in HOOKS:
                await addons.handle_lifecycle(hook(flow))
        start = time.thread_time()
        for flow in flows[200:]:
            for hook in HOOKS:
                await addons.handle_lifecycle(hook(flow))
        hooks_us = (time.thread_time() - start) / requests * 1e6
        # The limits' own share, called directly: no dispatch noise around it. Per request: the
        # chunk that brings the head (after the previous response), then its two hooks.
        chunk = b"x" * 400
        start = time.thread_time()
        for flow, clock in zip(flows[200:], clocks[200:], strict=True):
            clock.head_data(chunk)
            limits.requestheaders(flow)
            limits.response(flow)
        head_us = (time.thread_time() - start) / requests * 1e6
        for clock in clocks:
            clock.stop()
        return hooks_us, head_us
    finally:
        await sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round [5000]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant, interleaved [5]")
    args = parser.parse_args()
    hooks: dict[bool, list[float]] = {False: [], True: []}
    heads: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="sidemeter-conn-limits-") as tmp,
        asyncio.Runner(loop_factory=new_event_loop) as runner,
    ):
        for rnd in range(args.rounds):
            for with_limits in (False, True):
                workdir = Path(tmp) / f"{rnd}-{with_limits}"
                hooks_us, head_us = runner.run(measure(with_limits, args.requests, workdir))
                hooks[with_limits].append(hooks_us)
                if with_limits:
                    heads.append(head_us)
    base, limited = statistics.median(hooks[False]), statistics.median(hooks[True])
    print(f"connection limits on a plain chat request, {args.requests:,} requests x {args.rounds} rounds")
    print(f"{'hook path':<28} {'us/request':>10}   rounds")
    for name, values in (("without ConnectionLimits", hooks[False]), ("with ConnectionLimits", hooks[True])):
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<28} {statistics.median(values):>10.1f}   {rounds}")
    own = statistics.median(heads)
    print(f"{'limits alone (called directly)':<28} {own:>10.2f}   {' '.join(f'{v:.2f}' for v in heads)}")
    print(f"the limits cost {own:.1f} us per request, {own / base:.1%} of the hook path ({base:.0f} us)")
    spread = max(max(v) - min(v) for v in hooks.values())
    where = "within" if abs(limited - base) <= spread else "outside"
    print(f"(hook path with minus without: {limited - base:+.1f} us, {where} its {spread:.1f} us spread)")


if __name__ == "__main__":
    main()
