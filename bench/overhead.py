#!/usr/bin/env python3
"""What the sidecar costs: the same load sent, in one run on one box against one simulated LLM
server, (a) direct, (b) through a bare embedded mitmproxy master without metering, (c) through
Sidemeter with everything on (JWT auth, metering, SQLite records) and (d) through LiteLLM's proxy.

    python bench/overhead.py                 # full run, about 10 minutes
    python bench/overhead.py --quick         # about 2 minutes (plus a one-time LiteLLM install)
    python bench/overhead.py --targets direct,master,sidemeter,mitmdump
    python bench/overhead.py --report bench/results/latest.json [--markdown]

Non-streaming load comes from `wrk` (installed with apt-get when missing and running as root),
streams from an aiohttp client in this process; the simulated server and every proxy run in
processes of their own. bench/README.md says what every figure means. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, load, report: next to this file

import aiohttp
import report
from harness import (
    BASELINES,
    BENCH_DIR,
    CLOCK_TICKS,
    DEFAULT_LITELLM_VENV,
    DEFAULT_TARGETS,
    REPO,
    TARGETS,
    Bench,
    BenchError,
    Check,
    LiteLLM,
    Service,
    Target,
    free_port,
    http_ok,
    say,
    settle,
    wait_until,
)
from load import (
    MODEL,
    REQUEST_TIMEOUT,
    StreamClient,
    StreamSamples,
    Wave,
    Wrk,
    WrkRun,
    chat_body,
    closed_loop,
    connector,
    ensure_wrk,
    raise_fd_limit,
    wave,
)

RESULTS_DIR = BENCH_DIR / "results"
SCHEMA = 2
CHAT_TOKENS = 8


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "chat": wrk, not streamed; "stream": zero token delay; "paced": 20 ms, then 5 ms
    concurrency: int
    max_tokens: int
    model: str
    think_ms: float = 0.0  # chat: idle time before each request (the servers' loops go to sleep)

    @property
    def stream(self) -> bool:
        return self.kind != "chat"


SCENARIOS = (
    Scenario("chat-c1", "chat", 1, CHAT_TOKENS, MODEL),
    Scenario("chat-c16", "chat", 16, CHAT_TOKENS, MODEL),
    Scenario("chat-c1-idle", "chat", 1, CHAT_TOKENS, MODEL, think_ms=10.0),
    Scenario("stream-c1", "stream", 1, 64, MODEL),
    Scenario("stream-c16", "stream", 16, 64, MODEL),
    Scenario("paced-c1", "paced", 1, 16, "sim-model-paced"),
    Scenario("paced-c16", "paced", 16, 16, "sim-model-paced"),
)
PHASES = ("soak", "swarm")  # after the scenarios: RSS after 100k requests; 1,000 concurrent streams
SWARM_MODEL = "sim-model-slow"
SWARM_PACE_MS = 250.0  # sim_upstream.py's pace of SWARM_MODEL


@dataclass
class Plan:
    mode: str
    warmup_s: float
    duration_s: float
    rounds: int
    paced_rounds: int  # for the paced and idle scenarios
    swarm_streams: int
    swarm_waves: int
    swarm_tokens: int
    swarm_ramp_s: float
    soak_requests: int
    soak_max_s: float
    soak_slow_max_s: float
    swarm_pace_ms: float = SWARM_PACE_MS


# The swarm runs `swarm_waves` waves through `master` and the sidecar (the RSS of a later wave
# against the first is the flatness check) and one through `direct` and the others.
FULL = Plan("full", 0.5, 2.5, 3, 2, 1000, 2, 16, 2.0, 100_000, 150.0, 40.0)
QUICK = Plan("quick", 0.3, 1.0, 1, 1, 1000, 2, 10, 1.5, 10_000, 8.0, 5.0)
MULTI_WAVE = ("master", "sidemeter", "sidemeter-noauth")
QUICK_SWARM_SKIPS = ("litellm",)  # ~30 s for 1,000 streams: over the quick run's budget


@dataclass
class Cell:
    """One target under one scenario, pooled over rounds."""

    histogram: Counter[int] = field(default_factory=Counter)  # wrk: latency in us -> count
    streams: StreamSamples = field(default_factory=StreamSamples)
    sent: int = 0
    ok: int = 0
    counted: int = 0  # answers within the measured windows: the throughput's numerator
    chunks_counted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0  # the measured windows
    proxy_cpu: float | None = None
    proxy_loop_cpu: float | None = None
    upstream_cpu: float = 0.0
    by_round: list[float] = field(default_factory=list)

    def add_cpu(self, proxy: float | None, loop: float | None, upstream: float) -> None:
        if proxy is not None:
            self.proxy_cpu = (self.proxy_cpu or 0.0) + proxy
        if loop is not None:
            self.proxy_loop_cpu = (self.proxy_loop_cpu or 0.0) + loop
        self.upstream_cpu += upstream


@dataclass
class Soak:
    requests_before: int
    requests_after: int
    seconds: float
    rss_before_kb: int
    rss_after_kb: int
    errors: Counter[str]
    trace: list[tuple[int, int]]  # (requests served, RSS kB) after each wrk run of the soak


# ----------------------------------------------------------------------------- measuring


class Runner:
    """Starts everything, drives the scenarios and phases, and collects the raw figures."""

    def __init__(
        self,
        targets: list[Target],
        scenarios: list[Scenario],
        phases: list[str],
        plan: Plan,
        litellm_venv: Path,
    ) -> None:
        self.targets = targets
        self.scenarios = scenarios
        self.phases = phases
        self.plan = plan
        self.workdir = Path(tempfile.mkdtemp(prefix="sidemeter-bench-"))
        self.bench = Bench(python=sys.executable, workdir=self.workdir, litellm_venv=litellm_venv)
        self.upstream: Service | None = None
        self.cells: dict[str, dict[str, Cell]] = {
            s.name: {t.name: Cell() for t in targets} for s in scenarios
        }
        self.waves: dict[str, list[Wave]] = {}
        self.soaks: dict[str, Soak] = {}
        self.wrk_exe = ""
        self.prepare_s = 0.0  # installing LiteLLM (first run only), issuing the token
        self._wrk: dict[tuple[str, str, int], Wrk] = {}

    def watched(self, target: Target) -> list[Service]:
        assert self.upstream is not None
        return [self.upstream] + ([target.service] if target.service else [])

    async def start(self) -> None:
        if any(not s.stream for s in self.scenarios) or "soak" in self.phases:
            self.wrk_exe = ensure_wrk()
        if "swarm" in self.phases:
            raise_fd_limit(4 * self.plan.swarm_streams + 1024)
        t0 = time.monotonic()
        for t in self.targets:
            await t.prepare(self.bench)  # installs LiteLLM on first use, issues the JWT
        self.prepare_s = time.monotonic() - t0
        port = free_port()
        argv = [self.bench.python, str(BENCH_DIR / "sim_upstream.py"), "--listen", f"127.0.0.1:{port}"]
        if self.plan.swarm_pace_ms != SWARM_PACE_MS:
            pace = self.plan.swarm_pace_ms
            argv += ["--pace", f"{SWARM_MODEL}={pace:g},{pace:g}"]
        self.upstream = Service("upstream", argv, self.workdir, self.bench.child_env())
        self.upstream.start()
        self.bench.upstream_url = f"http://127.0.0.1:{port}"
        await wait_until(
            lambda: http_ok(self.bench.upstream_url + "/health"), self.upstream, "the simulated server"
        )
        self.upstream.rss_ready_kb = self.upstream.rss_kb()
        # LiteLLM takes ~20 s to import and start: start every proxy at once.
        await asyncio.gather(*(t.start(self.bench) for t in self.targets))
        for t in self.targets:
            await self.preflight(t)
            pid = f"pid {t.service.pid}  " if t.service else ""
            say(f"{t.name:<10} {t.base_url}  {pid}{t.command_line()}")

    async def preflight(self, target: Target) -> None:
        """One request of each kind before anything is measured: fail fast, with the proxy's log."""
        log = f"; its log:\n{target.service.log_tail()}" if target.service else ""
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            url = target.base_url + "/v1/chat/completions"
            headers = {"Content-Type": "application/json", **target.headers}
            async with session.post(url, data=chat_body(MODEL, CHAT_TOKENS, False), headers=headers) as r:
                text = await r.text()
            target.tally.add(sent=1, ok=int(r.status == 200), tokens=CHAT_TOKENS if r.status == 200 else 0)
            if r.status != 200 or f'"completion_tokens":{CHAT_TOKENS}' not in text.replace(" ", ""):
                raise BenchError(f"{target.name}: test request answered {r.status}: {text[:300]}{log}")
            for model in (MODEL, "sim-model-paced"):
                samples = StreamSamples()
                await StreamClient(session, target, model, 8).once(samples)
                if samples.errors:
                    raise BenchError(
                        f"{target.name}: streaming test request failed: {next(iter(samples.errors))}{log}"
                    )

    def wrk(self, target: Target, sc: Scenario) -> Wrk:
        key = (target.name, sc.model, sc.max_tokens)
        if key not in self._wrk:
            self._wrk[key] = Wrk(
                self.wrk_exe,
                self.workdir,
                target.base_url + "/v1/chat/completions",
                target.headers,
                chat_body(sc.model, sc.max_tokens, False),
                f'"completion_tokens":{sc.max_tokens}',
            )
        return self._wrk[key]

    def _charge(self, target: Target, run: WrkRun, cell: Cell | None) -> None:
        target.tally.add(sent=run.sent, ok=run.good, tokens=run.good * CHAT_TOKENS, unanswered=run.unanswered)
        if cell is None:
            return
        cell.sent += run.sent
        cell.ok += run.good
        cell.errors.update({f"wrk {k}": v for k, v in run.errors.items()})
        if run.bad:
            cell.errors["wrong answer or HTTP status"] += run.bad

    async def measure(self, target: Target, sc: Scenario) -> float:
        """Warm up, let the servers settle, measure one round; returns requests/s of the round."""
        cell = self.cells[sc.name][target.name]
        watched = self.watched(target)
        assert self.upstream is not None
        session: aiohttp.ClientSession | None = None
        client: StreamClient | None = None
        if sc.stream:
            session = aiohttp.ClientSession(connector=connector(sc.concurrency), timeout=REQUEST_TIMEOUT)
            client = StreamClient(session, target, sc.model, sc.max_tokens)
        try:
            if self.plan.warmup_s > 0:
                if client is not None:
                    await closed_loop(client, sc.concurrency, StreamSamples(), self.plan.warmup_s)
                else:
                    run = await self.wrk(target, sc).run(sc.concurrency, self.plan.warmup_s, sc.think_ms)
                    self._charge(target, run, None)
            await settle(watched)
            svc = target.service
            proxy0 = svc.cpu_seconds() if svc else None
            loop0 = svc.cpu_seconds(main_thread=True) if svc else None
            up0 = self.upstream.cpu_seconds()
            if client is not None:
                samples = StreamSamples()
                samples.wall = self.plan.duration_s
                await closed_loop(client, sc.concurrency, samples, self.plan.duration_s)
                cell.streams.merge(samples)
                cell.sent += samples.sent
                cell.ok += len(samples.latency)
                cell.errors.update(samples.errors)
                cell.chunks_counted += samples.chunks_in_window
                wall, done = samples.wall, samples.in_window
            else:
                run = await self.wrk(target, sc).run(sc.concurrency, self.plan.duration_s, sc.think_ms)
                self._charge(target, run, cell)
                cell.histogram.update(run.histogram)
                wall, done = run.window_s, run.in_window
            await settle(watched)  # work left after the last answer (queued records) is charged here
            if svc is not None and proxy0 is not None and loop0 is not None:
                cell.add_cpu(svc.cpu_seconds() - proxy0, svc.cpu_seconds(main_thread=True) - loop0, 0.0)
            cell.upstream_cpu += self.upstream.cpu_seconds() - up0
            cell.wall += wall
            cell.counted += done
            rate = done / wall if wall else 0.0
            cell.by_round.append(round(rate, 1))
            return rate
        finally:
            if session is not None:
                await session.close()

    async def scenarios_phase(self) -> None:
        for sc in self.scenarios:
            sparse = sc.kind == "paced" or sc.think_ms > 0  # few samples per second: fewer rounds
            rounds = self.plan.paced_rounds if sparse else self.plan.rounds
            for rnd in range(rounds):
                # Alternate the order each round so drift in the box's load hits every column alike.
                order = self.targets if rnd % 2 == 0 else self.targets[::-1]
                for target in order:
                    rate = await self.measure(target, sc)
                    errs = self.cells[sc.name][target.name].errors
                    extra = f"  ERRORS so far {dict(errs)}" if errs else ""
                    say(f"{sc.name:<10} round {rnd + 1}/{rounds}  {target.name:<10} {rate:8.1f} req/s{extra}")

    async def swarm_phase(self) -> None:
        p = self.plan
        for target in self.targets:
            if p.mode == "quick" and target.name in QUICK_SWARM_SKIPS:
                say(f"swarm      {target.name}: skipped in a quick run (it takes half a minute or more)")
                continue
            waves: list[Wave] = []
            n_waves = p.swarm_waves if target.name in MULTI_WAVE else 1
            for i in range(n_waves):
                w = await wave(
                    target,
                    p.swarm_streams,
                    SWARM_MODEL,
                    p.swarm_tokens,
                    p.swarm_ramp_s,
                    self.watched(target),
                    settle,
                )
                waves.append(w)
                s = w.samples
                mem = ""
                if w.rss_before_kb is not None:
                    mem = f"  RSS {w.rss_before_kb / 1024:.1f} -> peak {(w.rss_peak_kb or 0) / 1024:.1f}"
                    mem += f" -> {(w.rss_after_kb or 0) / 1024:.1f} MB, fds peak {w.fds_peak}"
                errs = f"  ERRORS {dict(s.errors)}" if s.errors else ""
                say(
                    f"swarm      wave {i + 1}/{n_waves}  {target.name:<10} {len(s.latency)}/{s.sent} "
                    f"streams ok, {w.open_max} open at once, {w.seconds:.1f} s{mem}{errs}"
                )
            self.waves[target.name] = waves

    async def soak_phase(self) -> None:
        """Non-streaming requests at c=16 until the proxy has served `soak_requests` in all (what
        the earlier phases sent counts), or its time limit is over (`soak_slow_max_s` for the
        columns that could never get there in a run of minutes: LiteLLM); RSS before and after."""
        p = self.plan
        for target in self.targets:
            svc = target.service
            if svc is None:
                continue
            sc = Scenario("soak", "chat", 16, CHAT_TOKENS, MODEL)
            wrk = self.wrk(target, sc)
            await settle(self.watched(target))
            before_n, rss0 = target.tally.sent, svc.rss_kb()
            limit = p.soak_slow_max_s if target.slow else p.soak_max_s
            errors: Counter[str] = Counter()
            trace = [(before_n, rss0)]
            t0 = time.monotonic()
            rate = 0.0
            while target.tally.sent < p.soak_requests:
                left = limit - (time.monotonic() - t0)
                if left < 0.5:
                    break
                needed = p.soak_requests - target.tally.sent
                chunk = 5.0 if not rate else needed / rate * 1.02 + 0.2  # aim at the count, not past it
                run = await wrk.run(16, min(left, chunk, 15.0))
                self._charge(target, run, None)
                errors.update({f"wrk {k}": v for k, v in run.errors.items()})
                if run.bad:
                    errors["wrong answer or HTTP status"] += run.bad
                rate = run.rate
                trace.append((target.tally.sent, svc.rss_kb()))
                say(
                    f"soak       {target.name:<10} {target.tally.sent:>7} requests served so far "
                    f"({rate:.0f} req/s), RSS {svc.rss_kb() / 1024:.1f} MB"
                )
            seconds = time.monotonic() - t0
            await settle(self.watched(target))
            await asyncio.sleep(0.5)
            rss1 = svc.rss_kb()
            trace.append((target.tally.sent, rss1))
            self.soaks[target.name] = Soak(before_n, target.tally.sent, seconds, rss0, rss1, errors, trace)

    async def stop(self) -> None:
        for t in self.targets:
            if t.service is not None:
                with contextlib.suppress(OSError):
                    t.service.note_peak()
            await t.stop()
        if self.upstream is not None:
            await self.upstream.stop()


# ----------------------------------------------------------------------------- figures


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def hist_percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The same, over a histogram {value: count}."""
    items = sorted(hist.items())
    if not items:
        return None
    cum, total = [], 0
    for _, c in items:
        total += c
        cum.append(total)

    def at(rank: int) -> float:  # value of the rank-th sample (0-based)
        return float(items[bisect.bisect_right(cum, rank)][0])

    pos = (total - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, total - 1)
    return at(lo) + (at(hi) - at(lo)) * (pos - lo)


def _round(x: float | None, scale: float = 1.0, digits: int = 3) -> float | None:
    return None if x is None else round(x * scale, digits)


def _ms(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    out = {f"p{q}": _round(percentile(v, q), 1000) for q in (50, 90, 99)}
    out["mean"] = _round(sum(v) / len(v), 1000) if v else None
    out["max"] = _round(v[-1], 1000) if v else None
    return out


def _hist_ms(hist: Mapping[int, int]) -> dict[str, float | None]:
    n = sum(hist.values())
    out = {f"p{q}": _round(hist_percentile(hist, q), 0.001) for q in (50, 90, 99)}
    out["mean"] = _round(sum(v * c for v, c in hist.items()) / n, 0.001) if n else None
    out["max"] = _round(max(hist), 0.001) if hist else None
    return out


def _per(x: float | None, n: int) -> float | None:
    return _round(x / n, 1000) if x is not None and n else None


def summarize(cell: Cell, sc: Scenario) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": cell.sent,
        "ok": cell.ok,
        "errors": dict(cell.errors),
        "seconds": _round(cell.wall),
        "requests_per_s": _round(cell.counted / cell.wall if cell.wall else None, 1, 1),
        "requests_per_s_by_round": cell.by_round,
        "proxy_cpu_ms_per_request": _per(cell.proxy_cpu, cell.sent),
        "proxy_loop_cpu_ms_per_request": _per(cell.proxy_loop_cpu, cell.sent),
        "upstream_cpu_ms_per_request": _per(cell.upstream_cpu, cell.sent),
    }
    if sc.stream:
        s = cell.streams
        out["latency_ms"] = _ms(s.latency)
        out["ttft_ms"] = _ms(s.ttft)
        out["chunk_gap_ms"] = _ms(s.gaps)
        out["chunks_per_s"] = _round(cell.chunks_counted / cell.wall if cell.wall else None, 1, 1)
    else:
        out["latency_ms"] = _hist_ms(cell.histogram)
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def compare(cells: dict[str, dict[str, Any]]) -> None:
    """Add to every cell: the differences to `direct` (added latency, TTFT, gaps), and the ratios
    of throughput, latency and added latency to each baseline (direct and master)."""
    direct = cells.get("direct")
    metrics = [
        ("latency_ms", "p50"),
        ("latency_ms", "p99"),
        ("ttft_ms", "p50"),
        ("ttft_ms", "p99"),
        ("chunk_gap_ms", "p50"),
        ("chunk_gap_ms", "p99"),
    ]
    for cell in cells.values():
        added: dict[str, float | None] = {}
        if direct is not None:
            for group, q in metrics:
                if group in cell:
                    key = f"{q}_ms" if group == "latency_ms" else f"{group.removesuffix('_ms')}_{q}_ms"
                    added[key] = _diff(cell[group][q], direct[group][q])
        cell["added_vs_direct"] = added
    for cell in cells.values():
        ratios: dict[str, dict[str, float | None]] = {}
        for base in BASELINES:
            b = cells.get(base)
            if b is None:
                continue
            r = {
                "requests_per_s": _ratio(cell["requests_per_s"], b["requests_per_s"]),
                "latency_p50": _ratio(cell["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                "latency_p99": _ratio(cell["latency_ms"]["p99"], b["latency_ms"]["p99"]),
            }
            if "chunks_per_s" in cell:
                r["chunks_per_s"] = _ratio(cell["chunks_per_s"], b["chunks_per_s"])
                r["ttft_p50"] = _ratio(cell["ttft_ms"]["p50"], b["ttft_ms"]["p50"])
            if base != "direct":  # added latency is 0 for direct: only a ratio to the others means much
                for k, v in cell["added_vs_direct"].items():
                    r[f"added_{k}"] = _ratio(v, b["added_vs_direct"].get(k))
            ratios[base] = r
        cell["ratios"] = ratios


def summarize_wave(w: Wave) -> dict[str, Any]:
    s = w.samples
    out: dict[str, Any] = {
        "streams": w.streams,
        "ok": len(s.latency),
        "errors": dict(s.errors),
        "open_at_once": w.open_max,
        "seconds": _round(w.seconds),
        "chunks_per_s": _round(s.chunks / w.seconds if w.seconds else None, 1, 1),
        "latency_ms": _ms(s.latency),
        "ttft_ms": _ms(s.ttft),
        "chunk_gap_ms": _ms(s.gaps),
        "rss_before_kb": w.rss_before_kb,
        "rss_peak_kb": w.rss_peak_kb,
        "rss_after_kb": w.rss_after_kb,
        "open_files_before": w.fds_before,
        "open_files_peak": w.fds_peak,
        "cpu_s": {"proxy": w.proxy_cpu_s, "upstream": w.upstream_cpu_s, "client": w.client_cpu_s},
    }
    if w.rss_before_kb is not None and w.rss_peak_kb is not None and w.streams:
        out["peak_kb_per_stream"] = round((w.rss_peak_kb - w.rss_before_kb) / w.streams, 1)
    if w.proxy_cpu_s is not None and s.chunks:
        out["proxy_cpu_us_per_chunk"] = round(w.proxy_cpu_s / s.chunks * 1e6, 1)
    return out


def swarm_report(runner: Runner) -> dict[str, Any]:
    p = runner.plan
    out: dict[str, Any] = {
        "streams": p.swarm_streams,
        "waves": p.swarm_waves,
        "max_tokens": p.swarm_tokens,
        "model": SWARM_MODEL,
        "token_delay_ms": p.swarm_pace_ms,
        "ramp_s": p.swarm_ramp_s,
        "targets": {name: [summarize_wave(w) for w in waves] for name, waves in runner.waves.items()},
    }

    # Each wave against the same wave of a baseline, or its last one (direct runs one wave only).
    def base_wave(name: str, i: int) -> dict[str, Any] | None:
        waves = out["targets"].get(name) or []
        return waves[min(i, len(waves) - 1)] if waves else None

    for waves in out["targets"].values():
        for i, w in enumerate(waves):
            d = base_wave("direct", i)
            if d is not None:
                w["added_vs_direct"] = {
                    "gap_p50_ms": _diff(w["chunk_gap_ms"]["p50"], d["chunk_gap_ms"]["p50"]),
                    "gap_p99_ms": _diff(w["chunk_gap_ms"]["p99"], d["chunk_gap_ms"]["p99"]),
                    "ttft_p50_ms": _diff(w["ttft_ms"]["p50"], d["ttft_ms"]["p50"]),
                }
            w["chunks_per_s_ratio"] = {
                base: _ratio(w["chunks_per_s"], b["chunks_per_s"])
                for base in BASELINES
                if (b := base_wave(base, i)) is not None
            }
    return out


def _rss_at_half(soak: Soak) -> int | None:
    """RSS when the soak had served half of its requests: after - half is the growth over its
    second half (zero when memory has levelled off)."""
    half = (soak.requests_before + soak.requests_after) / 2
    return next((kb for n, kb in soak.trace if n >= half and n < soak.requests_after), None)


def memory_report(runner: Runner) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t_name, svc in [("upstream", runner.upstream)] + [(t.name, t.service) for t in runner.targets]:
        if svc is None:
            continue
        soak = runner.soaks.get(t_name)
        entry: dict[str, Any] = {
            "pid": svc.pid,
            "rss_ready_kb": svc.rss_ready_kb,
            "rss_peak_kb": svc.peak_seen_kb or None,
            "requests_served": next((t.tally.sent for t in runner.targets if t.name == t_name), None),
        }
        if soak is not None:
            entry["soak"] = {
                "requests_before": soak.requests_before,
                "requests_after": soak.requests_after,
                "seconds": round(soak.seconds, 1),
                "rss_before_kb": soak.rss_before_kb,
                "rss_after_kb": soak.rss_after_kb,
                "rss_half_kb": _rss_at_half(soak),
                "errors": dict(soak.errors),
                "trace": [{"requests": n, "rss_kb": kb} for n, kb in soak.trace],
            }
        out[t_name] = entry
    base = out.get("master")
    for name, entry in out.items():
        if base is None or name == "upstream":
            continue
        entry["ratio_to_master"] = {
            "rss_peak": _ratio(entry["rss_peak_kb"], base["rss_peak_kb"]),
            "rss_after_soak": _ratio(
                (entry.get("soak") or {}).get("rss_after_kb"), (base.get("soak") or {}).get("rss_after_kb")
            ),
        }
    return out


# ----------------------------------------------------------------------------- machine


def _first_line(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip()


def _wrk_version(exe: str) -> str | None:
    if not exe:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5, check=False)
        first = (out.stdout or out.stderr).split()
        return first[1] if len(first) > 1 else None
    return None


def machine_facts(runner: Runner) -> dict[str, Any]:
    mem = _first_line("/proc/meminfo", "MemTotal")
    status = _git("status", "--porcelain")
    # What was measured when the tree was dirty: the changed files of the code on the request path.
    changed = _git("status", "--porcelain", "--", "agent", "addons", "ops_api", "setup.cfg")
    litellm = next((t for t in runner.targets if isinstance(t, LiteLLM)), None)
    return {
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": _version("mitmproxy"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "litellm": litellm.version if litellm else None,
        "wrk": _wrk_version(runner.wrk_exe),
        "sidemeter": _version("sidemeter"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "git_changed_code": [line[3:] for line in changed.splitlines()] if changed else [],
    }


def _box_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def _own_cpu() -> float:
    """CPU of this process and of every child it waited for (wrk runs, token issuing)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


# ----------------------------------------------------------------------------- the run


async def run(runner: Runner) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    t_start = time.monotonic()
    checks: list[Check] = []
    background: dict[str, float] = {}
    try:
        await runner.start()
        say(f"all servers ready after {time.monotonic() - t_start:.0f} s")
        box0, own0 = _box_cpu(), _own_cpu()
        cpu0 = {s.name: s.cpu_seconds() for s in _services(runner)}
        t_measure = time.monotonic()
        await runner.scenarios_phase()
        if "soak" in runner.phases:
            await runner.soak_phase()
        if "swarm" in runner.phases:
            await runner.swarm_phase()
        # What the rest of the machine did meanwhile: busy CPU minus this run's own processes.
        box1, elapsed = _box_cpu(), time.monotonic() - t_measure
        ours = _own_cpu() - own0 + sum(s.cpu_seconds() - cpu0.get(s.name, 0.0) for s in _services(runner))
        background = {
            "other_processes_cores": round(max(box1[0] - box0[0] - ours, 0.0) / elapsed, 2),
            "steal_cores": round((box1[1] - box0[1]) / elapsed, 2),
        }
    except BenchError as e:
        raise BenchError(f"{e}\n(every process's log is kept in {runner.workdir})") from None
    finally:
        await runner.stop()
    for target in runner.targets:
        checks += target.checks()
        t = target.tally
        complete = t.ok + t.unanswered == t.sent
        checks.append(
            Check(
                f"{target.name}: every answer complete and correct",
                complete,
                f"{t.ok} of {t.sent} requests (warm-ups included) answered 200 with the expected tokens"
                + (f"; {t.unanswered} left in flight when a wrk run ended" if t.unanswered else "")
                + ("" if complete else "; see the errors columns and the progress lines"),
            )
        )
    scenarios: dict[str, Any] = {}
    for sc in runner.scenarios:
        cells = {t.name: summarize(runner.cells[sc.name][t.name], sc) for t in runner.targets}
        compare(cells)
        scenarios[sc.name] = {
            "kind": sc.kind,
            "stream": sc.stream,
            "concurrency": sc.concurrency,
            "max_tokens": sc.max_tokens,
            "model": sc.model,
            "think_ms": sc.think_ms,
            "load": "wrk" if not sc.stream else "aiohttp",
            "targets": cells,
        }
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "run_seconds": round(time.monotonic() - t_start - runner.prepare_s, 1),
        "prepare_seconds": round(runner.prepare_s, 1),
        "mode": runner.plan.mode,
        "machine": machine_facts(runner),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "background_cpu": background,
        "plan": vars(runner.plan),
        "upstream": {
            "command": " ".join(runner.upstream.argv) if runner.upstream else "",
            "what": "SimulatedLLM('openai', flavor='vllm') in its own process; token pace by model: "
            "sim-model none, sim-model-paced 20 ms then 5 ms, sim-model-slow "
            f"{runner.plan.swarm_pace_ms:g} ms",
        },
        "targets": [
            {"name": t.name, "description": t.description, "command": t.command_line()}
            for t in runner.targets
        ],
        "scenarios": scenarios,
        "memory_kb": memory_report(runner),
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
    }
    if runner.waves:
        result["swarm"] = swarm_report(runner)
    result["targets_met"] = report.evaluate(result)
    shutil.rmtree(runner.workdir, ignore_errors=True)
    return result


def _services(runner: Runner) -> list[Service]:
    return [s for s in [runner.upstream, *(t.service for t in runner.targets)] if s is not None]


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure the latency, throughput and memory Sidemeter adds over a direct connection, "
        "over a bare mitmproxy master and next to LiteLLM, against a simulated LLM server. "
        "See bench/README.md.",
    )
    p.add_argument("--quick", action="store_true", help="short cells, one round, a 10k-request soak: ~2 min")
    p.add_argument("--duration", type=float, help="seconds measured per target, scenario and round [3]")
    p.add_argument("--warmup", type=float, help="seconds of the same load before each measurement [0.5]")
    p.add_argument("--rounds", type=int, help="rounds per scenario (paced scenarios: 2 in full mode) [3]")
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} [%(default)s]",
    )
    p.add_argument(
        "--scenarios",
        default=",".join([*(s.name for s in SCENARIOS), *PHASES]),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--swarm-streams", type=int, help="concurrent streams in the swarm phase [1000]")
    p.add_argument("--swarm-pace-ms", type=float, help="token delay of the swarm's streams, ms [50]")
    p.add_argument(
        "--soak-requests",
        type=int,
        help="requests a proxy must have served before the 'RSS after' reading [100000; quick 10000]",
    )
    p.add_argument(
        "--soak-max-seconds",
        type=float,
        help="time limit of the soak per proxy [150, LiteLLM 40; quick 8, 5]",
    )
    p.add_argument(
        "--litellm-venv",
        type=Path,
        default=DEFAULT_LITELLM_VENV,
        help="virtualenv with litellm[proxy]; the default one is created on first use [bench/.venv-litellm]",
    )
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes [bench/results]"
    )
    p.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    p.add_argument("--report", type=Path, help="print the tables of a saved JSON result and exit")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    return p.parse_args(argv)


def _pick(names: str, known: Sequence[str], what: str) -> list[str]:
    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in picked if n not in known]
    if unknown or not picked:
        raise SystemExit(
            f"--{what}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return picked


def make_plan(args: argparse.Namespace) -> Plan:
    base = QUICK if args.quick else FULL
    plan = Plan(**vars(base))
    if args.duration is not None:
        plan.duration_s = args.duration
    if args.warmup is not None:
        plan.warmup_s = args.warmup
    if args.rounds is not None:
        plan.rounds = plan.paced_rounds = args.rounds
    if args.swarm_streams is not None:
        plan.swarm_streams = args.swarm_streams
    if args.swarm_pace_ms is not None:
        plan.swarm_pace_ms = args.swarm_pace_ms
    if args.soak_requests is not None:
        plan.soak_requests = args.soak_requests
    if args.soak_max_seconds is not None:
        plan.soak_max_s = plan.soak_slow_max_s = args.soak_max_seconds
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report.render(json.loads(args.report.read_text()), markdown=args.markdown))
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench/overhead.py reads /proc: run it on Linux")
    plan = make_plan(args)
    target_names = _pick(args.targets, list(TARGETS), "targets")
    known = [*(s.name for s in SCENARIOS), *PHASES]
    picked = _pick(args.scenarios, known, "scenarios")
    scenarios = [s for s in SCENARIOS if s.name in picked]
    phases = [p for p in PHASES if p in picked]
    runner = Runner([TARGETS[n]() for n in target_names], scenarios, phases, plan, args.litellm_venv)
    try:
        result = asyncio.run(run(runner))
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    print(report.render(result, markdown=args.markdown))
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = result["date"].replace(":", "").replace("+0000", "Z")
        path = args.results_dir / f"overhead-{stamp}{'-quick' if plan.mode == 'quick' else ''}.json"
        text = json.dumps(result, indent=2) + "\n"
        path.write_text(text)
        (args.results_dir / "latest.json").write_text(text)
        print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} and latest.json")
    return 0 if all(c["passed"] for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
