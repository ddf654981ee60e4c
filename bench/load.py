"""The load of `bench/overhead.py`: `wrk` for non-streaming requests (fixed concurrency, closed
loop, exact latency histogram from a Lua `done()`), an aiohttp client for streams (TTFT,
inter-chunk gaps, chunks/s), and the 1,000-concurrent-streams wave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import BenchError, Service, Target, say

MODEL = "sim-model"
PROMPT = "Summarise the plot of Hamlet in one sentence."
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)


def chat_body(model: str, max_tokens: int, stream: bool) -> bytes:
    messages = [{"role": "user", "content": PROMPT}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    return json.dumps(body, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """The `wrk` binary; installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(
            "wrk is not installed: run `sudo apt-get install -y wrk` (Debian/Ubuntu; elsewhere build "
            "https://github.com/wg/wrk) and run the bench again"
        )
    say("wrk is missing: apt-get install -y wrk ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet: dict[str, Any] = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    done = subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], **quiet, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet, check=False)
    found = shutil.which("wrk")
    if not found:
        raise BenchError(f"apt-get install -y wrk failed: {done.stderr.decode(errors='replace')[-500:]}")
    return found


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# The Lua script of every wrk run. wrk's -d takes whole seconds and stops with requests in flight
# (the proxy then never sees some of them: an exact record count would be impossible), so the
# script keeps the time itself: after `seconds` (its argument) delay() holds every connection,
# the requests in flight are answered, and the last response stops wrk (tgkill SIGINT to its main
# thread, which otherwise sleeps out -d). Requests are counted in request(), except the first
# call, which wrk makes before the run to check the request parses. response() checks every
# answer: status 200 and the expected completion_tokens. done() prints the counts, the measured
# window, and the exact latency histogram (microseconds: write of the request to its complete
# answer, the think time before a request left out) as one JSON line.
WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
int getpid(void);
long syscall(long number, ...);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

wrk.method = "POST"
wrk.body = @BODY@
@HEADERS@
local req, expect = nil, @EXPECT@
local verified, stop_at, inflight = false, 0, 0
sent, good, bad, in_window, window_s = 0, 0, 0, 0, 0

local think = 0
function init(args)
  req = wrk.format()
  stop_at = now() + tonumber(args[1])
  think = tonumber(args[2] or "0")  -- ms of idle time before each request (a sparse client)
end

function delay()
  if now() >= stop_at then return 3600000 end  -- the measured time is over: send nothing more
  return think
end

function request()
  if not verified then verified = true; return req end
  if sent == 0 then window_s = stop_at - now() end
  sent = sent + 1
  inflight = inflight + 1
  return req
end

function response(status, headers, body)
  inflight = inflight - 1
  if status == 200 and string.find(body, expect, 1, true) then good = good + 1 else bad = bad + 1 end
  local t = now()
  if t <= stop_at then in_window = in_window + 1 end
  if inflight == 0 and t >= stop_at then
    wrk.thread:stop()
    local pid = ffi.cast("long", ffi.C.getpid())
    ffi.C.syscall(234, pid, pid, ffi.cast("long", 2))  -- tgkill(pid, pid, SIGINT): end wrk's sleep
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local t = threads[1]
  local hist = {}
  for i = 1, #latency do
    local v, c = latency(i)
    hist[#hist + 1] = string.format("[%d,%d]", v, c)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"sent":%d,"good":%d,"bad":%d,"in_window":%d,"window_s":%.6f,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":[%s]}\\n',
    t:get("sent"), t:get("good"), t:get("bad"), t:get("in_window"), t:get("window_s"),
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, table.concat(hist, ",")))
end
"""


@dataclass
class WrkRun:
    sent: int
    good: int  # answered 200 with the expected completion_tokens
    bad: int  # answered otherwise
    in_window: int  # answers that arrived within the measured window
    window_s: float  # first request sent -> end of the measured window
    seconds: float  # the whole run, the requests in flight at the end of the window included
    errors: dict[str, int]  # wrk's socket errors and timeouts
    histogram: Counter[int]  # latency in microseconds -> count, every answer

    @property
    def unanswered(self) -> int:
        return max(self.sent - self.good - self.bad, 0)

    @property
    def rate(self) -> float:
        """Answers per second within the window (closed loop: the drain at the end left out)."""
        return self.in_window / self.window_s if self.window_s > 0 else 0.0


class Wrk:
    """One Lua script per (target, request): `run(connections, seconds)` returns a WrkRun."""

    def __init__(
        self, exe: str, workdir: Path, url: str, headers: Mapping[str, str], body: bytes, expect: str
    ) -> None:
        header_lines = "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
            for k, v in {"Content-Type": "application/json", **headers}.items()
        )
        script = (
            WRK_SCRIPT.replace("@BODY@", _lua_string(body.decode()))
            .replace("@HEADERS@", header_lines)
            .replace("@EXPECT@", _lua_string(expect))
        )
        fd, path = tempfile.mkstemp(prefix="wrk-", suffix=".lua", dir=workdir)
        with os.fdopen(fd, "w") as f:
            f.write(script)
        self.exe = exe
        self.script = path
        self.url = url

    def argv(self, connections: int, seconds: float, think_ms: float = 0.0) -> list[str]:
        return [
            self.exe,
            "-t1",  # one thread drives >30k req/s here: plenty, and leaves the cores to the servers
            f"-c{connections}",
            f"-d{math.ceil(seconds) + 60}s",  # a backstop only: the script ends the run
            "--timeout",
            "60s",
            "-s",
            self.script,
            self.url,
            "--",
            f"{seconds:.3f}",
            f"{think_ms:g}",
        ]

    async def run(self, connections: int, seconds: float, think_ms: float = 0.0) -> WrkRun:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(connections, seconds, think_ms),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=Path(self.script).parent,
        )
        out, err = await proc.communicate()
        text = out.decode(errors="replace")
        line = next((x for x in text.splitlines() if x.startswith("WRK-RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(
                f"wrk failed ({proc.returncode}): {err.decode(errors='replace')[-800:]}{text[-800:]}"
            )
        data = json.loads(line.removeprefix("WRK-RESULT "))
        hist: Counter[int] = Counter()
        for value, count in data["latency_us"]:
            hist[int(value)] += int(count)
        return WrkRun(
            sent=data["sent"],
            good=data["good"],
            bad=data["bad"],
            in_window=data["in_window"],
            window_s=data["window_s"],
            seconds=data["duration_us"] / 1e6,
            errors={k: v for k, v in data["errors"].items() if v},
            histogram=hist,
        )


# ----------------------------------------------------------------------------- streams


@dataclass
class StreamSamples:
    """Streams of one target under one scenario, pooled over rounds. Times in seconds."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    by_round: list[float] = field(default_factory=list)  # streams/s of each round: the noise
    # A closed loop's throughput counts what completed within its measured window only, so the
    # streams still running at its end (a drain at lower concurrency) do not dilute it.
    deadline: float | None = None
    in_window: int = 0
    chunks_in_window: int = 0

    def merge(self, other: StreamSamples) -> None:
        self.latency += other.latency
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.chunks += other.chunks
        self.sent += other.sent
        self.errors.update(other.errors)
        self.wall += other.wall
        self.in_window += other.in_window
        self.chunks_in_window += other.chunks_in_window
        if other.wall:
            self.by_round.append(round(other.in_window / other.wall, 1))


class StreamClient:
    """Sends one streaming chat request to one target and checks what comes back: HTTP 200,
    exactly `max_tokens` content chunks, `[DONE]`, and no usage-only chunk (`"choices": []`),
    which the client did not ask for."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, model: str, max_tokens: int) -> None:
        self.session = session
        self.target = target
        self.max_tokens = max_tokens
        self.url = target.base_url + "/v1/chat/completions"
        self.body = chat_body(model, max_tokens, True)
        self.headers = {"Content-Type": "application/json", **target.headers}
        self.open_now = 0
        self.open_max = 0

    async def once(self, samples: StreamSamples) -> None:
        samples.sent += 1
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                self.open_now += 1
                self.open_max = max(self.open_max, self.open_now)
                try:
                    problem, tokens = await self._read(resp, t0, samples)
                finally:
                    self.open_now -= 1
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            problem, tokens = type(exc).__name__, 0
        end = time.perf_counter()
        tally = self.target.tally
        if problem:
            samples.errors[problem] += 1
            tally.add(sent=1, ok=0, tokens=0)
            return
        samples.latency.append(end - t0)
        if samples.deadline is None or end <= samples.deadline:
            samples.in_window += 1
            samples.chunks_in_window += tokens
        tally.add(sent=1, ok=1, tokens=tokens)

    async def _read(
        self, resp: aiohttp.ClientResponse, t0: float, samples: StreamSamples
    ) -> tuple[str | None, int]:
        if resp.status != 200:
            await resp.read()
            return f"HTTP {resp.status}", 0
        first = last = 0.0
        count = 0
        done = False
        gaps: list[float] = []
        buf = b""
        # One wake-up per read rather than per line: the client's CPU per chunk is what limits how
        # many chunks per second a 2-core box can measure at all.
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            buf += data
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            events, buf = buf[:end], buf[end + 2 :]
            for line in events.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                choices = json.loads(payload).get("choices")
                if not choices:
                    return "usage chunk reached a client that did not ask for it", 0
                if (choices[0].get("delta") or {}).get("content"):
                    if count:
                        gaps.append(now - last)
                    else:
                        first = now
                    last = now
                    count += 1
        if not done:
            return "stream ended without [DONE]", 0
        if count != self.max_tokens:
            return f"{count} content chunks, expected {self.max_tokens}", 0
        samples.ttft.append(first - t0)
        samples.gaps += gaps
        samples.chunks += count
        return None, count


async def closed_loop(client: StreamClient, concurrency: int, samples: StreamSamples, seconds: float) -> None:
    """`concurrency` workers, each sending its next request as soon as the last one is done,
    for `seconds` (then the streams in flight are read to their end)."""
    deadline = time.perf_counter() + seconds
    samples.deadline = deadline

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await client.once(samples)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by the servers it starts) to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise BenchError(
            f"RLIMIT_NOFILE is {soft} and cannot be raised to {needed} (hard limit {hard}): "
            f"run `ulimit -n {needed}` first or pass a smaller --swarm-streams"
        )
    return soft


# ----------------------------------------------------------------------------- 1,000 streams


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Wave:
    """One wave of `streams` concurrent streams through one target, and the proxy's memory."""

    streams: int
    samples: StreamSamples
    open_max: int
    seconds: float
    rss_before_kb: int | None = None
    rss_peak_kb: int | None = None  # max of VmHWM (reset before the wave) and the sampled RSS
    rss_after_kb: int | None = None
    fds_before: int | None = None
    fds_peak: int | None = None
    proxy_cpu_s: float | None = None
    upstream_cpu_s: float | None = None
    client_cpu_s: float | None = None


async def wave(
    target: Target,
    streams: int,
    model: str,
    max_tokens: int,
    ramp_s: float,
    settle_services: Sequence[Service],
    settle: Callable[[Sequence[Service]], Any],
) -> Wave:
    """Open `streams` streams within `ramp_s` seconds (spread evenly, so listen backlogs never
    overflow) and read them all to the end, while sampling the proxy's RSS and open files."""
    svc = target.service
    before = peak_fds = fds0 = None
    if svc is not None:
        await settle(settle_services)
        svc.reset_peak()
        before, fds0 = svc.rss_kb(), svc.open_fds()
    peak = before or 0
    peak_fds = fds0 or 0
    samples = StreamSamples()
    stop = asyncio.Event()
    upstream = settle_services[0]
    cpu0 = (svc.cpu_seconds() if svc else 0.0, upstream.cpu_seconds(), _own_cpu())

    async def sample_memory() -> None:
        nonlocal peak, peak_fds
        while svc is not None and not stop.is_set():
            with contextlib.suppress(OSError):
                peak = max(peak, svc.rss_kb())
                peak_fds = max(peak_fds, svc.open_fds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async with aiohttp.ClientSession(connector=connector(streams), timeout=REQUEST_TIMEOUT) as session:
        client = StreamClient(session, target, model, max_tokens)
        sampler = asyncio.create_task(sample_memory())

        async def one(i: int) -> None:
            await asyncio.sleep(ramp_s * i / streams)
            await client.once(samples)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(streams)))
        samples.wall = time.perf_counter() - t0
        cpu1 = (svc.cpu_seconds() if svc else 0.0, upstream.cpu_seconds(), _own_cpu())
        stop.set()
        await sampler
    result = Wave(streams, samples, client.open_max, samples.wall)
    result.proxy_cpu_s = round(cpu1[0] - cpu0[0], 3) if svc else None
    result.upstream_cpu_s = round(cpu1[1] - cpu0[1], 3)
    result.client_cpu_s = round(cpu1[2] - cpu0[2], 3)
    if svc is not None:
        result.rss_before_kb, result.fds_before = before, fds0
        result.rss_peak_kb = max(peak, svc.peak_kb())
        result.fds_peak = peak_fds
        await settle(settle_services)
        await asyncio.sleep(0.5)  # closed connections' buffers go back to the allocator
        result.rss_after_kb = svc.rss_kb()
    return result
