#!/usr/bin/env python3
"""What the sidecar costs: the same load sent direct to a simulated LLM server, through a bare
stock `mitmdump` and through Sidemeter, in one run on one box.

The simulated server (`sidemeter mock-upstream --dialect openai --token-delay 0`) and every
proxy run in processes of their own; the load generator is an asyncio/aiohttp client in this
process, so its CPU never shares an event loop with what is measured.

    python bench/overhead.py                 # full run (about 4 minutes)
    python bench/overhead.py --quick         # smoke-sized run, about half a minute
    python bench/overhead.py --targets direct,mitmdump,master,sidemeter
    python bench/overhead.py --report bench/results/latest.json [--markdown]

bench/README.md says what every figure means. Linux only (figures come from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SCHEMA = 1
MODEL = "sim-model"
PROMPT = "Summarise the plot of Hamlet in one sentence."
BASELINES = ("direct", "mitmdump")  # the columns every other one is compared with
READY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)


class BenchError(Exception):
    """The run cannot go on; the message says which process or check failed and why."""


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the bench dies, so no server is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Service:
    """A server process the bench started, and the /proc figures the report reads from it."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = dict(env)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_start_kb: int | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,  # no ./sidemeter.toml or ./data of the caller's is picked up
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops its servers in order
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self, *, main_thread: bool = False) -> float:
        """User + system CPU so far of the whole process (every thread), or of its main thread
        alone (for the proxies: the event loop, whose CPU is what limits their throughput)."""
        path = f"/proc/{self.pid}/task/{self.pid}/stat" if main_thread else f"/proc/{self.pid}/stat"
        raw = Path(path).read_text()
        fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parens
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak resident set since start), in kB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (the sidecar drains its record queue here), SIGKILL as a last resort."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def wait_until(probe: Callable[[], Awaitable[bool]], service: Service, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if not service.alive:
            code = service.proc.returncode if service.proc else None
            raise BenchError(
                f"{service.name} exited (code {code}) while starting; its log:\n{service.log_tail()}"
            )
        if await probe():
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what} was not ready after {READY_TIMEOUT_S:.0f}s; "
                f"{service.name}'s log:\n{service.log_tail()}"
            )
        await asyncio.sleep(0.1)


async def tcp_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_ok(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, s.get(url) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def settle(services: Iterable[Service], max_wait: float = 3.0) -> None:
    """Wait until the servers stop burning CPU (queued records written, buffers flushed), so the
    work a measurement caused is charged to it and not to the next one."""
    services = [s for s in services if s.alive]
    deadline = time.monotonic() + max_wait
    last = [s.cpu_seconds() for s in services]
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = [s.cpu_seconds() for s in services]
        if all(b - a < 0.005 for a, b in zip(last, now, strict=True)):
            return
        last = now


# ----------------------------------------------------------------------------- targets


@dataclass
class Bench:
    """What every target needs to start: the interpreter, a scratch directory, the upstream."""

    python: str
    workdir: Path
    upstream_url: str = ""

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env


@dataclass
class Tally:
    """Every request the bench sent to a target, and what the successful ones carried."""

    sent: int = 0
    ok: int = 0
    completion_tokens: int = 0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(eq=False)
class Target:
    """One column of the report: where the load goes and the process (if any) that serves it.

    To add a column, subclass `ProcessTarget` (a `command()`, maybe a `ready()` and `checks()`)
    and list an instance in `TARGETS`; `headers` are sent with every request (a bearer token)."""

    name: str
    description: str
    headers: dict[str, str] = field(default_factory=dict)
    base_url: str = field(default="", init=False)
    service: Service | None = field(default=None, init=False)
    tally: Tally = field(default_factory=Tally, init=False)
    exit_code: int | None = field(default=None, init=False)

    async def start(self, bench: Bench) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.service is not None:
            self.exit_code = await self.service.stop()

    def command_line(self) -> str:
        return " ".join(self.service.argv) if self.service else ""

    def checks(self) -> list[Check]:
        """Correctness checks that need the target stopped (e.g. its store drained)."""
        return []


@dataclass(eq=False)
class Direct(Target):
    async def start(self, bench: Bench) -> None:
        self.base_url = bench.upstream_url


@dataclass(eq=False)
class ProcessTarget(Target):
    """A proxy in a process of its own, listening on a loopback port the bench picks."""

    def command(self, bench: Bench, port: int) -> list[str]:
        raise NotImplementedError

    async def ready(self, port: int) -> bool:
        return await tcp_open(port)

    async def start(self, bench: Bench) -> None:
        port = free_port()
        self.service = Service(self.name, self.command(bench, port), bench.workdir, bench.child_env())
        self.service.start()
        self.base_url = f"http://127.0.0.1:{port}"
        await wait_until(lambda: self.ready(port), self.service, f"{self.name} on :{port}")
        self.service.rss_start_kb = self.service.memory_kb().get("VmRSS")


def _mitmdump() -> str:
    local = Path(sys.executable).parent / "mitmdump"
    found = str(local) if local.exists() else shutil.which("mitmdump")
    if not found:
        raise BenchError(f"mitmdump not found next to {sys.executable} or on PATH; pip install mitmproxy")
    return found


@dataclass(eq=False)
class Mitmdump(ProcessTarget):
    def command(self, bench: Bench, port: int) -> list[str]:
        confdir = bench.workdir / f"{self.name}-confdir"
        return [
            _mitmdump(),
            "-q",
            "--mode",
            f"reverse:{bench.upstream_url}@{port}",
            "--listen-host",
            "127.0.0.1",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"confdir={confdir}",
        ]


@dataclass(eq=False)
class BareMaster(ProcessTarget):
    def command(self, bench: Bench, port: int) -> list[str]:
        script = REPO / "bench" / "bare_master.py"
        confdir = bench.workdir / f"{self.name}-confdir"
        return [
            bench.python,
            str(script),
            "--upstream",
            bench.upstream_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--confdir",
            str(confdir),
        ]


@dataclass(eq=False)
class Sidemeter(ProcessTarget):
    extra_args: list[str] = field(default_factory=lambda: ["--auth", "off"])
    db_path: Path = field(default=Path(), init=False)
    ops_port: int = field(default=0, init=False)

    def command(self, bench: Bench, port: int) -> list[str]:
        data_dir = bench.workdir / self.name
        self.db_path = data_dir / "usage.db"
        self.ops_port = free_port()
        return [
            bench.python,
            "-m",
            "agent.cli",
            "run",
            "--upstream",
            bench.upstream_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--ops-listen",
            f"127.0.0.1:{self.ops_port}",
            "--db",
            f"sqlite:///{self.db_path}",
            "--data-dir",
            str(data_dir),
            "--grace-period",
            "5",
            "--log-level",
            "warning",
            *self.extra_args,
        ]

    async def ready(self, port: int) -> bool:
        return await http_ok(f"http://127.0.0.1:{self.ops_port}/readyz")

    def checks(self) -> list[Check]:
        t = self.tally
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
                rows, ok, reported, tokens = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(outcome = 'ok'), 0),"
                    " COALESCE(SUM(usage_source = 'reported'), 0), COALESCE(SUM(completion_tokens), 0)"
                    " FROM usage_logs"
                ).fetchone()
        except sqlite3.Error as e:
            return [Check(f"{self.name} records", False, f"cannot read {self.db_path}: {e}")]
        spill = self.db_path.parent / "spill"
        spilled = sum(1 for _ in spill.glob("*")) if spill.is_dir() else 0
        passed = (
            rows == t.sent and ok == t.ok and reported == t.ok and tokens == t.completion_tokens
        ) and self.exit_code == 0
        detail = (
            f"{t.sent} requests sent through it, {rows} rows in usage_logs "
            f"({ok} ok, {reported} with reported usage; {t.ok} answered ok); "
            f"completion tokens {tokens} recorded / {t.completion_tokens} received; "
            f"exit code {self.exit_code} after SIGTERM; spill files left: {spilled}"
        )
        return [Check(f"{self.name}: one usage record per request", passed, detail)]


# Every column the bench knows. Later: LiteLLM (a ProcessTarget running `litellm --config`),
# sidemeter with JWT auth (Sidemeter(extra_args=[...], headers={"Authorization": ...})).
TARGETS: dict[str, Callable[[], Target]] = {
    "direct": lambda: Direct("direct", "the simulated server itself, no proxy"),
    "mitmdump": lambda: Mitmdump(
        "mitmdump", "stock mitmdump, reverse mode, no addons (-q, connection_strategy=lazy)"
    ),
    "master": lambda: BareMaster(
        "master", "embedded mitmproxy Master, sidecar's stock addons, streams SSE, no metering"
    ),
    "sidemeter": lambda: Sidemeter("sidemeter", "sidemeter run --auth off (SQLite store)"),
}
DEFAULT_TARGETS = ("direct", "mitmdump", "sidemeter")


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    max_tokens: int

    @property
    def title(self) -> str:
        kind = "streaming chat" if self.stream else "chat"
        return f"{kind}, max_tokens {self.max_tokens}"

    def body(self) -> bytes:
        messages = [{"role": "user", "content": PROMPT}]
        body = {"model": MODEL, "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream}
        return json.dumps(body).encode()


SCENARIOS = (
    Scenario("chat-c1", False, 1, 8),
    Scenario("chat-c16", False, 16, 8),
    Scenario("chat-c64", False, 64, 8),
    Scenario("stream-c1", True, 1, 64),
    Scenario("stream-c16", True, 16, 64),
)


@dataclass
class Plan:
    warmup_s: float
    duration_s: float
    requests: int | None  # a fixed count per measurement instead of a fixed duration
    rounds: int


@dataclass
class Samples:
    """One target under one scenario, pooled over rounds. Times in seconds."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    proxy_cpu: float | None = None
    proxy_loop_cpu: float | None = None
    upstream_cpu: float = 0.0
    client_cpu: float = 0.0
    rounds_per_s: list[float] = field(default_factory=list)  # throughput of each round: the noise

    def merge(self, other: Samples) -> None:
        self.latency += other.latency
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.chunks += other.chunks
        self.completed += other.completed
        self.errors.update(other.errors)
        self.wall += other.wall
        if other.proxy_cpu is not None:
            self.proxy_cpu = (self.proxy_cpu or 0.0) + other.proxy_cpu
        if other.proxy_loop_cpu is not None:
            self.proxy_loop_cpu = (self.proxy_loop_cpu or 0.0) + other.proxy_loop_cpu
        self.upstream_cpu += other.upstream_cpu
        self.client_cpu += other.client_cpu
        if other.wall:
            self.rounds_per_s.append(len(other.latency) / other.wall)


class Client:
    """Sends one scenario's request to one target and checks what comes back."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, scenario: Scenario) -> None:
        self.session = session
        self.target = target
        self.scenario = scenario
        self.url = target.base_url + "/v1/chat/completions"
        self.body = scenario.body()
        self.headers = {"Content-Type": "application/json", **target.headers}

    async def once(self, samples: Samples) -> None:
        tally = self.target.tally
        tally.sent += 1
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                if self.scenario.stream:
                    problem, tokens = await self._stream(resp, t0, samples)
                else:
                    problem, tokens = await self._whole(resp)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            problem, tokens = type(exc).__name__, 0
        end = time.perf_counter()
        samples.completed += 1
        if problem:
            samples.errors[problem] += 1
            return
        samples.latency.append(end - t0)
        tally.ok += 1
        tally.completion_tokens += tokens

    async def _whole(self, resp: aiohttp.ClientResponse) -> tuple[str | None, int]:
        data = await resp.read()
        if resp.status != 200:
            return f"HTTP {resp.status}", 0
        got = (json.loads(data).get("usage") or {}).get("completion_tokens")
        if got != self.scenario.max_tokens:
            return f"usage.completion_tokens {got}, expected {self.scenario.max_tokens}", 0
        return None, got

    async def _stream(
        self, resp: aiohttp.ClientResponse, t0: float, samples: Samples
    ) -> tuple[str | None, int]:
        if resp.status != 200:
            await resp.read()
            return f"HTTP {resp.status}", 0
        first = last = 0.0
        count = 0
        done = False
        gaps: list[float] = []
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                continue
            choices = json.loads(data).get("choices")
            if not choices:  # a usage-only chunk the client did not ask for
                return "usage chunk reached a client that did not ask for it", 0
            if (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                if count:
                    gaps.append(now - last)
                else:
                    first = now
                last = now
                count += 1
        if not done:
            return "stream ended without [DONE]", 0
        if count != self.scenario.max_tokens:
            return f"{count} content chunks, expected {self.scenario.max_tokens}", 0
        samples.ttft.append(first - t0)
        samples.gaps += gaps
        samples.chunks += count
        return None, count


async def closed_loop(
    client: Client, concurrency: int, samples: Samples, seconds: float, count: int | None
) -> None:
    """`concurrency` workers, each sending its next request as soon as the last one is done."""
    deadline = time.perf_counter() + seconds
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while True:
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            elif time.perf_counter() >= deadline:
                return
            await client.once(samples)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure(target: Target, scenario: Scenario, upstream: Service, plan: Plan) -> Samples:
    """Warm up, let the servers settle, then measure; one keep-alive pool for both."""
    watched = [upstream] + ([target.service] if target.service else [])
    connector = aiohttp.TCPConnector(limit=scenario.concurrency, limit_per_host=scenario.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        client = Client(session, target, scenario)
        if plan.warmup_s > 0:
            await closed_loop(client, scenario.concurrency, Samples(), plan.warmup_s, None)
        await settle(watched)
        proxy0 = target.service.cpu_seconds() if target.service else None
        loop0 = target.service.cpu_seconds(main_thread=True) if target.service else None
        upstream0, client0 = upstream.cpu_seconds(), _client_cpu()
        samples = Samples()
        t0 = time.perf_counter()
        await closed_loop(client, scenario.concurrency, samples, plan.duration_s, plan.requests)
        samples.wall = time.perf_counter() - t0
        samples.client_cpu = _client_cpu() - client0
        await settle(watched)  # work left after the last answer (queued records) is charged here
        if target.service is not None and proxy0 is not None and loop0 is not None:
            samples.proxy_cpu = target.service.cpu_seconds() - proxy0
            samples.proxy_loop_cpu = target.service.cpu_seconds(main_thread=True) - loop0
        samples.upstream_cpu = upstream.cpu_seconds() - upstream0
    return samples


async def preflight(target: Target) -> None:
    """One request of each kind before anything is measured: fail fast, with the proxy's log."""
    for scenario in (Scenario("preflight", False, 1, 8), Scenario("preflight", True, 1, 8)):
        samples = Samples()
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            await Client(session, target, scenario).once(samples)
        if samples.errors:
            problem = next(iter(samples.errors))
            log = f"; its log:\n{target.service.log_tail()}" if target.service else ""
            kind = "streaming" if scenario.stream else "non-streaming"
            raise BenchError(f"{target.name} ({target.base_url}): {kind} test request failed: {problem}{log}")


# ----------------------------------------------------------------------------- figures


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ms(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    out = {f"p{q}": _round(percentile(v, q), 1000) for q in (50, 90, 99)}
    out["mean"] = _round(sum(v) / len(v), 1000) if v else None
    out["max"] = _round(v[-1], 1000) if v else None
    return out


def _round(x: float | None, scale: float = 1.0, digits: int = 3) -> float | None:
    return None if x is None else round(x * scale, digits)


def _per_request(cpu: float | None, n: int) -> float | None:
    return _round(cpu / n, 1000) if cpu is not None and n else None


def summarize(s: Samples, scenario: Scenario) -> dict[str, Any]:
    ok = len(s.latency)
    out: dict[str, Any] = {
        "requests": s.completed,
        "ok": ok,
        "errors": dict(s.errors),
        "seconds": _round(s.wall),
        "requests_per_s": _round(ok / s.wall if s.wall else None, 1, 1),
        "requests_per_s_by_round": [round(x, 1) for x in s.rounds_per_s],
        "latency_ms": _ms(s.latency),
        "proxy_cpu_ms_per_request": _per_request(s.proxy_cpu, s.completed),
        "proxy_loop_cpu_ms_per_request": _per_request(s.proxy_loop_cpu, s.completed),
        "upstream_cpu_ms_per_request": _per_request(s.upstream_cpu, s.completed),
        "client_cpu_ms_per_request": _per_request(s.client_cpu, s.completed),
    }
    if scenario.stream:
        out["ttft_ms"] = _ms(s.ttft)
        out["chunk_gap_ms"] = _ms(s.gaps)
        out["chunks_per_s"] = _round(s.chunks / s.wall if s.wall else None, 1, 1)
    return out


def compare(cells: dict[str, dict[str, Any]]) -> None:
    """Add, to every cell, the differences to `direct` and the throughput ratios to each baseline."""
    direct = cells.get("direct")
    for cell in cells.values():
        if direct is not None:
            added = {
                "p50_ms": _diff(cell["latency_ms"]["p50"], direct["latency_ms"]["p50"]),
                "p99_ms": _diff(cell["latency_ms"]["p99"], direct["latency_ms"]["p99"]),
            }
            if "ttft_ms" in cell:
                added["ttft_p50_ms"] = _diff(cell["ttft_ms"]["p50"], direct["ttft_ms"]["p50"])
                added["ttft_p99_ms"] = _diff(cell["ttft_ms"]["p99"], direct["ttft_ms"]["p99"])
            cell["added_vs_direct"] = added
        cell["throughput_ratio"] = {
            base: _ratio(cell["requests_per_s"], cells[base]["requests_per_s"])
            for base in BASELINES
            if base in cells
        }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


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


def machine_facts() -> dict[str, Any]:
    mem = _first_line("/proc/meminfo", "MemTotal")
    status = _git("status", "--porcelain")
    # What was measured when the tree was dirty: the changed files of the code on the request path.
    changed = _git("status", "--porcelain", "--", "agent", "addons", "ops_api")
    return {
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": _version("mitmproxy"),
        "aiohttp": _version("aiohttp"),
        "sidemeter": _version("sidemeter"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "git_changed_code": [line[3:] for line in changed.splitlines()] if changed else [],
    }


# ----------------------------------------------------------------------------- the run


async def run(targets: list[Target], scenarios: Sequence[Scenario], plan: Plan) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="sidemeter-bench-"))
    bench = Bench(python=sys.executable, workdir=workdir)
    upstream_port = free_port()
    upstream = Service(
        "upstream",
        [
            bench.python,
            "-m",
            "agent.cli",
            "mock-upstream",
            "--dialect",
            "openai",
            "--listen",
            f"127.0.0.1:{upstream_port}",
            "--token-delay",
            "0",
        ],
        workdir,
        bench.child_env(),
    )
    bench.upstream_url = f"http://127.0.0.1:{upstream_port}"
    pooled: dict[str, dict[str, Samples]] = {s.name: {t.name: Samples() for t in targets} for s in scenarios}
    memory: dict[str, dict[str, int | None]] = {}
    checks: list[Check] = []
    t_start = time.monotonic()
    box0, client0 = _box_cpu(), _client_cpu()
    background: dict[str, float] = {}
    try:
        upstream.start()
        await wait_until(lambda: http_ok(bench.upstream_url + "/health"), upstream, "the simulated server")
        upstream.rss_start_kb = upstream.memory_kb().get("VmRSS")
        for target in targets:
            await target.start(bench)
            await preflight(target)
            pid = f"pid {target.service.pid}  " if target.service else ""
            _say(f"{target.name:<10} {target.base_url}  {pid}{target.command_line()}")
        for scenario in scenarios:
            for rnd in range(plan.rounds):
                # Alternate the order each round so drift in the box's load hits every column alike.
                order = targets if rnd % 2 == 0 else targets[::-1]
                for target in order:
                    s = await measure(target, scenario, upstream, plan)
                    pooled[scenario.name][target.name].merge(s)
                    errs = f"  ERRORS {dict(s.errors)}" if s.errors else ""
                    _say(
                        f"{scenario.name:<10} round {rnd + 1}/{plan.rounds}  {target.name:<10} "
                        f"{len(s.latency) / s.wall:8.1f} req/s{errs}"
                    )
        services = [upstream] + [t.service for t in targets if t.service]
        for svc in services:
            memory[svc.name] = {"pid": svc.pid, "rss_start_kb": svc.rss_start_kb, **_memory(svc)}
        # What the rest of the machine did meanwhile: busy CPU minus this run's own processes.
        box1, elapsed = _box_cpu(), time.monotonic() - t_start
        ours = _client_cpu() - client0 + sum(svc.cpu_seconds() for svc in services)
        background = {
            "other_processes_cores": round(max(box1[0] - box0[0] - ours, 0.0) / elapsed, 2),
            "steal_cores": round((box1[1] - box0[1]) / elapsed, 2),
        }
    except BenchError as e:
        raise BenchError(f"{e}\n(every process's log is kept in {workdir})") from None
    finally:
        for target in targets:
            await target.stop()
        await upstream.stop()
    for target in targets:
        checks += target.checks()
        t = target.tally
        checks.append(
            Check(
                f"{target.name}: every answer complete and correct",
                t.ok == t.sent,
                f"{t.ok} of {t.sent} requests (warm-up included) answered 200 with the expected tokens"
                + ("" if t.ok == t.sent else "; see the errors column and the progress lines"),
            )
        )
    results: dict[str, Any] = {}
    for scenario in scenarios:
        cells = {t.name: summarize(pooled[scenario.name][t.name], scenario) for t in targets}
        compare(cells)
        results[scenario.name] = {
            "stream": scenario.stream,
            "concurrency": scenario.concurrency,
            "max_tokens": scenario.max_tokens,
            "targets": cells,
        }
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "run_seconds": round(time.monotonic() - t_start, 1),
        "machine": machine_facts(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "background_cpu": background,
        "plan": {
            "warmup_s": plan.warmup_s,
            "duration_s": None if plan.requests else plan.duration_s,
            "requests": plan.requests,
            "rounds": plan.rounds,
        },
        "upstream": {
            "command": " ".join(upstream.argv),
            "what": "SimulatedLLM('openai', flavor='vllm', token_delay=0) in its own process",
        },
        "client": "aiohttp in the bench process: closed loop, one keep-alive pool of `concurrency` "
        "connections per measurement",
        "targets": [
            {"name": t.name, "description": t.description, "command": t.command_line()} for t in targets
        ],
        "memory_kb": memory,
        "scenarios": results,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
    }


def _box_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS, steal / _CLOCK_TICKS


def _memory(svc: Service) -> dict[str, int | None]:
    m = svc.memory_kb()
    return {"rss_end_kb": m.get("VmRSS"), "rss_peak_kb": m.get("VmHWM")}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- report


def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def _signed(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _cpu(cell: dict[str, Any]) -> str:
    total, loop = cell["proxy_cpu_ms_per_request"], cell.get("proxy_loop_cpu_ms_per_request")
    return _f(total) + ("" if loop is None else f" ({loop:.2f})")


def _errors(cell: dict[str, Any]) -> str:
    return str(sum(cell["errors"].values()))


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report; rendered as text or markdown."""
    names = [t["name"] for t in report["targets"]]
    out: list[tuple[str, list[str], list[list[str]]]] = []
    ratio_cols = [f"vs {b}" for b in BASELINES if b in names]
    for stream in (False, True):
        group = {k: v for k, v in report["scenarios"].items() if v["stream"] == stream}
        if not group:
            continue
        first = next(iter(group.values()))
        if not stream:
            title = f"Non-streaming chat completions (max_tokens {first['max_tokens']})"
            header = ["target", "c", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", *ratio_cols]
        else:
            title = f"Streaming chat completions (max_tokens {first['max_tokens']}, token_delay 0)"
            header = ["target", "c", "streams/s", "chunks/s", "p50 ms", "p99 ms", "TTFT p50", "+TTFT p50"]
            header += ["TTFT p99", "gap p50", "gap p99", *ratio_cols]
        header += ["proxy CPU ms/req (loop)", "errors"]
        rows: list[list[str]] = []
        for sc in group.values():
            for name in names:
                cell = sc["targets"][name]
                lat, added = cell["latency_ms"], cell.get("added_vs_direct", {})
                ratios = [_f(cell["throughput_ratio"].get(b), 2, "x") for b in BASELINES if b in names]
                row = [name, str(sc["concurrency"]), _f(cell["requests_per_s"], 0)]
                if not stream:
                    row += [_f(lat["p50"]), _f(lat["p99"]), _signed(added.get("p50_ms"))]
                    row += [_signed(added.get("p99_ms")), *ratios]
                else:
                    ttft, gap = cell["ttft_ms"], cell["chunk_gap_ms"]
                    row += [_f(cell["chunks_per_s"], 0), _f(lat["p50"]), _f(lat["p99"]), _f(ttft["p50"])]
                    row += [_signed(added.get("ttft_p50_ms")), _f(ttft["p99"]), _f(gap["p50"], 3)]
                    row += [_f(gap["p99"], 3), *ratios]
                row += [_cpu(cell), _errors(cell)]
                rows.append(row)
        out.append((title, header, rows))
    mem_rows = [
        [
            name,
            _f(_mb(m.get("rss_start_kb")), 1),
            _f(_mb(m.get("rss_peak_kb")), 1),
            _f(_mb(m.get("rss_end_kb")), 1),
        ]
        for name, m in report["memory_kb"].items()
    ]
    out.append(
        ("Memory (MB, from /proc/PID/status)", ["process", "RSS ready", "peak (VmHWM)", "RSS end"], mem_rows)
    )
    return out


def _background(report: dict[str, Any]) -> str:
    bg = report.get("background_cpu") or {}
    if "other_processes_cores" not in bg:
        return "not measured"
    return f"{bg['other_processes_cores']:.2f} cores busy on average, steal {bg['steal_cores']:.2f}"


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def render(report: dict[str, Any], *, markdown: bool = False) -> str:
    m, plan, load = report["machine"], report["plan"], report["load_average_1m"]
    per_cell = f"{plan['requests']} requests" if plan["requests"] else f"{plan['duration_s']:g} s"
    dirty = " (uncommitted changes)" if m.get("git_dirty") else ""
    item = "- " if markdown else ""  # one line each, also in markdown
    lines = [
        f"{item}Sidemeter overhead, {report['date']}: {plan['rounds']} round(s) x {per_cell} per cell, "
        f"{plan['warmup_s']:g} s warm-up each; the run took {report['run_seconds']:.0f} s",
        f"{item}machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']}, mitmproxy {m['mitmproxy']}, aiohttp {m['aiohttp']}; "
        f"sidemeter {m['sidemeter']} @ {m['git_commit']}{dirty}",
        f"{item}other work on the machine during the run: {_background(report)}; "
        f"load average (1 min): {load['before']} before, {load['after']} after",
        "",
    ]
    for title, header, rows in tables(report):
        lines += [f"**{title}**", ""] if markdown else [title]
        lines += _markdown(header, rows) if markdown else _aligned(header, rows)
        lines.append("")
    notes = [
        "+p50/+p99/+TTFT: that percentile minus direct's at the same concurrency. vs X: requests/s "
        "divided by X's. gap: time between content chunks as the client reads them (ms). proxy CPU: "
        "user+system CPU of the proxy process per request, all threads (the sidecar's store writer "
        "included); (loop): its main thread, the event loop, alone."
    ]
    if any(t["name"] == "mitmdump" for t in report["targets"]) and any(
        s["stream"] for s in report["scenarios"].values()
    ):
        notes.append(
            "Stock mitmdump buffers a response until it is complete (no addon sets flow.response.stream): "
            "its TTFT is the whole stream."
        )
    lines += [item + n for n in notes]
    lines.append("")
    for c in report["checks"]:
        lines.append(f"{item}{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure the latency, throughput and memory Sidemeter adds over a direct connection "
        "and over stock mitmdump, against a simulated LLM server. See bench/README.md.",
    )
    p.add_argument("--quick", action="store_true", help="1 round of 1.2 s per cell: finishes in ~30 s")
    p.add_argument("--duration", type=float, help="seconds measured per target, scenario and round [4]")
    p.add_argument("--requests", type=int, help="measure a fixed number of requests instead of --duration")
    p.add_argument("--warmup", type=float, help="seconds of the same load before each measurement [1]")
    p.add_argument("--rounds", type=int, help="rounds, each target measured once per scenario per round [3]")
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} [%(default)s]",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes [bench/results]"
    )
    p.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    p.add_argument("--report", type=Path, help="print the table of a saved JSON result and exit")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    return p.parse_args(argv)


def _pick(names: str, known: Mapping[str, Any], what: str) -> list[str]:
    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in picked if n not in known]
    if unknown or not picked:
        raise SystemExit(
            f"--{what}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return picked


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(render(json.loads(args.report.read_text()), markdown=args.markdown))
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench/overhead.py reads /proc: run it on Linux")
    quick = args.quick
    plan = Plan(
        warmup_s=args.warmup if args.warmup is not None else (0.3 if quick else 1.0),
        duration_s=args.duration if args.duration is not None else (1.2 if quick else 4.0),
        requests=args.requests,
        rounds=args.rounds if args.rounds is not None else (1 if quick else 3),
    )
    targets = [TARGETS[n]() for n in _pick(args.targets, TARGETS, "targets")]
    by_name = {s.name: s for s in SCENARIOS}
    scenarios = [by_name[n] for n in _pick(args.scenarios, by_name, "scenarios")]
    try:
        report = asyncio.run(run(targets, scenarios, plan))
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    report["mode"] = "quick" if quick else "full"
    print(render(report, markdown=args.markdown))
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = report["date"].replace(":", "").replace("+0000", "Z")
        path = args.results_dir / f"overhead-{stamp}{'-quick' if quick else ''}.json"
        text = json.dumps(report, indent=2) + "\n"
        path.write_text(text)
        (args.results_dir / "latest.json").write_text(text)
        print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} and latest.json")
    return 0 if all(c["passed"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
