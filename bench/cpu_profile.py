#!/usr/bin/env python3
"""Where a proxy's CPU goes: drive one column of `overhead.py` with one of its loads while py-spy
samples it, and print the CPU per request split by who was running (the sidecar's own code,
mitmproxy, the event loop and sockets), by thread, and the busiest functions and files.

    python bench/cpu_profile.py                                  # sidemeter, chat-c16, 10 s
    python bench/cpu_profile.py --target master --load chat-c16  # the floor: mitmproxy alone
    python bench/cpu_profile.py --target sidemeter --load swarm  # chunks arriving one by one

Needs py-spy (`pip install py-spy`; ptrace rights: root, or kernel.yama.ptrace_scope=0).
Writes the summary and py-spy's raw stacks to bench/results/profile-TARGET-LOAD-DATE.{txt,raw}.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, load: next to this file

import aiohttp
from harness import BENCH_DIR, TARGETS, Bench, BenchError, Service, free_port, http_ok, say, wait_until
from load import (
    MODEL,
    REQUEST_TIMEOUT,
    StreamClient,
    StreamSamples,
    Wrk,
    chat_body,
    closed_loop,
    connector,
    ensure_wrk,
    raise_fd_limit,
    wave,
)

RESULTS_DIR = BENCH_DIR / "results"
LOADS = ("chat-c1", "chat-c16", "stream-c16", "paced-c16", "swarm")
OURS = ("addons/", "agent/", "ops_api/")  # the sidecar's own code, as py-spy names the files


@dataclass
class Frame:
    function: str
    file: str


def _frames(stack: str) -> list[Frame]:
    out = []
    for part in stack.split(";"):
        name, _, where = part.rpartition(" (")
        out.append(Frame(name or part, where.rsplit(":", 1)[0] if where else ""))
    return out


# The frames a callback of the event loop runs under: start-up code (`sidemeter run`'s own
# `main`, `asyncio.run`) and the loop's dispatch. What follows the last of them is the callback.
_DISPATCH = {
    ("Runner.run", "asyncio/runners.py"),
    ("BaseEventLoop.run_until_complete", "asyncio/base_events.py"),
    ("BaseEventLoop.run_forever", "asyncio/base_events.py"),
    ("BaseEventLoop._run_once", "asyncio/base_events.py"),
    ("Handle._run", "asyncio/events.py"),
    ("run", "asyncio/runners.py"),
}


def _callback(frames: list[Frame]) -> list[Frame]:
    """The frames of the callback the loop was running, without start-up and dispatch frames."""
    last = max((i for i, f in enumerate(frames) if (f.function, f.file) in _DISPATCH), default=-1)
    return frames[last + 1 :]


# The sidecar's replacement for mitmproxy's hook dispatch and connection handler: every
# sample of a connection runs under it, so it counts with the proxy core, not as metering.
PROXY_CORE = "agent/proxy/dispatch.py"


def _ours(frame: Frame) -> bool:
    return frame.file.startswith(OURS) and frame.file != PROXY_CORE


def _component(frames: list[Frame]) -> str:
    """Who a sample of the event loop belongs to: the sidecar's code (with everything it calls),
    else the proxy core (mitmproxy's connection handling and HTTP/1 layers, and hook dispatch,
    mitmproxy's or the sidecar's), else the loop."""
    if any(_ours(f) for f in frames):
        return "sidemeter code (addons/, agent/, ops_api/) and what it calls"
    if any(f.file.startswith("mitmproxy/") or f.file == PROXY_CORE for f in frames):
        return "proxy core (mitmproxy's connections and HTTP/1 layers, hook dispatch)"
    return "event loop, sockets, other"


def summarize(raw: str, seconds: float, rate: int, cpu_ms_per_req: float | None, loop_share: float) -> str:
    """Text summary of py-spy's raw (collapsed) output, made with --threads."""
    threads: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    own_file: Counter[str] = Counter()
    ours_incl: Counter[str] = Counter()
    main = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, rest = stack.partition(";")
        name = thread.split(": ", 1)[-1]
        threads[name] += count
        if name != "MainThread":
            continue
        main += count
        frames = _frames(rest)
        callback = _callback(frames)
        comp[_component(callback)] += count
        if frames:
            leaf = frames[-1]
            own_fn[f"{leaf.function} ({leaf.file})"] += count
            own_file[leaf.file or "?"] += count
        for f in {f"{f.function} ({f.file})" for f in callback if _ours(f)}:
            ours_incl[f] += count
    total = sum(threads.values())
    lines = [
        f"{total} samples of busy threads over {seconds:g} s at {rate} Hz "
        f"(the event loop was busy in {main / (seconds * rate):.0%} of its samples)",
    ]
    if cpu_ms_per_req is not None:
        lines.append(
            f"CPU per request (all threads, measured while sampled, so a little high): "
            f"{cpu_ms_per_req:.3f} ms, {loop_share:.0%} of it on the event loop"
        )
    lines += ["", "Busy samples by thread:"]
    lines += [f"  {n / total:6.1%}  {t}" for t, n in threads.most_common()]
    if main:
        loop_ms = cpu_ms_per_req * loop_share if cpu_ms_per_req is not None else None
        lines += ["", "Event loop (MainThread), by who was running:"]
        for c, n in comp.most_common():
            per = f"  ~{loop_ms * n / main:.3f} ms/request" if loop_ms is not None else ""
            lines.append(f"  {n / main:6.1%}  {c}{per}")
        lines += ["", "Event loop, own time by function (top 25):"]
        lines += [f"  {n / main:6.1%}  {f}" for f, n in own_fn.most_common(25)]
        lines += ["", "Event loop, own time by file (top 15):"]
        lines += [f"  {n / main:6.1%}  {f}" for f, n in own_file.most_common(15)]
        if ours_incl:
            lines += ["", "The sidecar's functions, inclusive time on the event loop (top 20):"]
            lines += [f"  {n / main:6.1%}  {f}" for f, n in ours_incl.most_common(20)]
    return "\n".join(lines)


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy not found: pip install py-spy")
    return found


async def profile(target_name: str, load: str, seconds: float, rate: int, out_dir: Path) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="sidemeter-profile-"))
    bench = Bench(python=sys.executable, workdir=workdir)
    port = free_port()
    upstream = Service(
        "upstream",
        [bench.python, str(BENCH_DIR / "sim_upstream.py"), "--listen", f"127.0.0.1:{port}"],
        workdir,
        bench.child_env(),
    )
    target = TARGETS[target_name]()
    raise_fd_limit(5000)
    upstream.start()
    bench.upstream_url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: http_ok(bench.upstream_url + "/health"), upstream, "the simulated server")
        await target.prepare(bench)
        await target.start(bench)
        svc = target.service
        if svc is None:
            raise BenchError(f"{target_name} has no process to profile")
        say(f"profiling {target_name} (pid {svc.pid}) under {load} for {seconds:g} s")
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        raw_path = out_dir / f"profile-{target_name}-{load}-{stamp}.raw"
        done = 0
        warmup = 1.0
        spy = [_py_spy(), "record", "--pid", str(svc.pid), "--rate", str(rate), "--duration", f"{seconds:g}"]
        spy += ["--format", "raw", "--threads", "-o", str(raw_path)]

        async def sample() -> tuple[float, float, float]:
            await asyncio.sleep(warmup)
            cpu0, loop0 = svc.cpu_seconds(), svc.cpu_seconds(main_thread=True)
            proc = await asyncio.create_subprocess_exec(
                *spy, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            t0 = time.monotonic()
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise BenchError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            return svc.cpu_seconds() - cpu0, svc.cpu_seconds(main_thread=True) - loop0, time.monotonic() - t0

        span = warmup + seconds + 1.0
        sampler = asyncio.create_task(sample())
        if load.startswith("chat"):
            c = 1 if load == "chat-c1" else 16
            wrk = Wrk(
                ensure_wrk(),
                workdir,
                target.base_url + "/v1/chat/completions",
                target.headers,
                chat_body(MODEL, 8, False),
                '"completion_tokens":8',
            )
            run = await wrk.run(c, span)
            done, total_s = run.in_window, run.window_s
        elif load == "swarm":
            w = await wave(
                target, 1000, "sim-model-slow", max(4, int(span / 0.25)), 2.0, [upstream], _no_settle
            )
            done, total_s = len(w.samples.latency), w.seconds
        else:
            model, tokens = (MODEL, 64) if load == "stream-c16" else ("sim-model-paced", 16)
            async with aiohttp.ClientSession(connector=connector(16), timeout=REQUEST_TIMEOUT) as session:
                samples = StreamSamples()
                await closed_loop(StreamClient(session, target, model, tokens), 16, samples, span)
            done, total_s = samples.in_window, span
        cpu, loop_cpu, sampled_s = await sampler
        per_req = cpu / (done * sampled_s / total_s) * 1000 if done and total_s else None
        raw = raw_path.read_text()
        head = f"Profile of {target_name} ({target.description}) under {load}, {stamp}\n"
        text = head + summarize(raw, seconds, rate, per_req, loop_cpu / cpu if cpu else 0.0)
        summary_path = raw_path.with_suffix(".txt")
        summary_path.write_text(text + "\n")
        print(text)
        return summary_path
    finally:
        await target.stop()
        await upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _no_settle(_services: Sequence[Service]) -> None:
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="sidemeter", choices=[n for n in TARGETS if n != "direct"])
    p.add_argument("--load", default="chat-c16", choices=LOADS)
    p.add_argument("--seconds", type=float, default=10.0, help="how long py-spy samples [10]")
    p.add_argument("--rate", type=int, default=200, help="samples per second [200]")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = asyncio.run(profile(args.target, args.load, args.seconds, args.rate, args.results_dir))
    except BenchError as e:
        print(f"profile failed: {e}", file=sys.stderr)
        return 1
    print(f"\nwrote {path} and the raw stacks next to it (flamegraph.pl or speedscope read them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
