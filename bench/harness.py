"""Processes and columns of `bench/overhead.py`: the simulated server, the proxies in front of it
(bare mitmproxy master, stock mitmdump, Sidemeter with everything on, LiteLLM), how each one is
started, probed, read from /proc and stopped, and the correctness checks that need it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
DEFAULT_LITELLM_VENV = BENCH_DIR / ".venv-litellm"
READY_TIMEOUT_S = 30.0
LITELLM_READY_TIMEOUT_S = 180.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """The run cannot go on; the message says which process or check failed and why."""


_T0 = time.monotonic()


def say(line: str) -> None:
    """A progress line on stderr, with the seconds since the bench started."""
    print(f"[{time.monotonic() - _T0:5.0f}s] {line}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the bench dies, so no server is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process on the machine, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            raw = Path(entry.path, "stat").read_text()
            ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _stat_cpu(path: str) -> float:
    raw = Path(path).read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parens
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class Service:
    """A server process the bench started (with any children it forks: LiteLLM's uvicorn may),
    and the /proc figures the report reads from it."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = dict(env)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_ready_kb: int | None = None
        self.peak_seen_kb = 0  # VmHWM over the whole run, kept across `reset_peak`
        self._pids: list[int] = []
        self._pids_at = 0.0

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,  # never the caller's cwd (./sidemeter.toml, ./data, a stray /tmp/attr.py)
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

    def pids(self) -> list[int]:
        """The process and its descendants (re-read at most every 2 s: /proc scans cost)."""
        now = time.monotonic()
        if now - self._pids_at > 2.0:
            tree, out, todo = _children(), [], [self.pid]
            while todo:
                pid = todo.pop()
                out.append(pid)
                todo += tree.get(pid, [])
            self._pids, self._pids_at = out, now
        return self._pids

    def cpu_seconds(self, *, main_thread: bool = False) -> float:
        """User + system CPU so far of the process tree (every thread), or of the main thread of
        the main process alone (for the proxies: the event loop, whose CPU limits throughput)."""
        if main_thread:
            return _stat_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                total += _stat_cpu(f"/proc/{pid}/stat")
        return total

    def rss_kb(self) -> int:
        """Resident set of the process tree now, in kB (from /proc/PID/statm: cheap to read)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        return total

    def peak_kb(self) -> int:
        """VmHWM (peak resident set since start or since `reset_peak`) summed over the tree, kB."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total

    def note_peak(self) -> int:
        """The peak resident set over the whole run so far, kB."""
        with contextlib.suppress(OSError):
            self.peak_seen_kb = max(self.peak_seen_kb, self.peak_kb())
        return self.peak_seen_kb

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0), so the next
        reading is the peak of what follows; the run's peak so far is kept in `peak_seen_kb`."""
        self.note_peak()
        try:
            for pid in self.pids():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def open_fds(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
        return total

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (the sidecar drains its record queue here), SIGKILL as a last resort; then
        whatever the process left behind in its session goes too."""
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
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
        return self.proc.returncode


async def wait_until(
    probe: Callable[[], Awaitable[bool]], service: Service, what: str, timeout: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
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
                f"{what} was not ready after {timeout:.0f}s; {service.name}'s log:\n{service.log_tail()}"
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


async def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
            s.get(url, headers=headers) as r,
        ):
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
    litellm_venv: Path = DEFAULT_LITELLM_VENV

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDEMETER_", "LITELLM_"))}
        env.pop("PYTHONOPTIMIZE", None)  # each target says for itself how it runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env


@dataclass
class Tally:
    """Every request the bench sent to a target, and what the successful ones carried.
    `unanswered`: sent, but the client left before the answer was complete (wrk stops with its
    requests in flight); the proxy may record those as ok or as cancelled."""

    sent: int = 0
    ok: int = 0
    completion_tokens: int = 0
    unanswered: int = 0

    def add(self, *, sent: int, ok: int, tokens: int, unanswered: int = 0) -> None:
        self.sent += sent
        self.ok += ok
        self.completion_tokens += tokens
        self.unanswered += unanswered


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(eq=False)
class Target:
    """One column of the report: where the load goes and the process (if any) that serves it.

    To add a column, subclass `ProcessTarget` (a `command()`, maybe a `ready()` and `checks()`)
    and list a factory in `TARGETS`; `headers` are sent with every request (a bearer token)."""

    name: str
    description: str
    headers: dict[str, str] = field(default_factory=dict)
    slow: bool = False  # tens of requests per second: the soak gets a shorter time limit
    base_url: str = field(default="", init=False)
    service: Service | None = field(default=None, init=False)
    tally: Tally = field(default_factory=Tally, init=False)
    exit_code: int | None = field(default=None, init=False)

    async def prepare(self, bench: Bench) -> None:
        """Work before the timed part of the run (installing, issuing a token)."""

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

    ready_timeout: float = field(default=READY_TIMEOUT_S, init=False)

    def command(self, bench: Bench, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, bench: Bench) -> dict[str, str]:
        return bench.child_env()

    async def ready(self, port: int) -> bool:
        return await tcp_open(port)

    async def start(self, bench: Bench) -> None:
        port = free_port()
        self.service = Service(self.name, self.command(bench, port), bench.workdir, self.env(bench))
        self.service.start()
        self.base_url = f"http://127.0.0.1:{port}"
        await wait_until(
            lambda: self.ready(port), self.service, f"{self.name} on :{port}", self.ready_timeout
        )
        self.service.rss_ready_kb = self.service.rss_kb()


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
    """(b): `bench/bare_master.py` under `python -O` like the sidecar (SIDEMETER_OPTIMIZE=0 in the
    bench's environment runs both without it), on the sidecar's event loop."""

    def command(self, bench: Bench, port: int) -> list[str]:
        optimize = ["-O"] if os.environ.get("SIDEMETER_OPTIMIZE", "1") != "0" else []
        return [
            bench.python,
            *optimize,
            str(BENCH_DIR / "bare_master.py"),
            "--upstream",
            bench.upstream_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--confdir",
            str(bench.workdir / f"{self.name}-confdir"),
        ]

    def env(self, bench: Bench) -> dict[str, str]:
        env = bench.child_env()
        if "SIDEMETER_OPTIMIZE" in os.environ:
            env["SIDEMETER_OPTIMIZE"] = os.environ["SIDEMETER_OPTIMIZE"]
        return env


@dataclass(eq=False)
class Sidemeter(ProcessTarget):
    """(c): `sidemeter run` with everything on: JWT auth (a token from `sidemeter token issue` on
    every request), metering, and one SQLite record per request."""

    auth: bool = True
    db_path: Path = field(default=Path(), init=False)
    ops_port: int = field(default=0, init=False)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), init=False)
    user: str = "bench-user"
    team: str = "bench-team"
    quotas: bool = False  # a [[quotas]] rule for the bench's team, with limits it never reaches
    quota_series: str | None = field(default=None, init=False)  # its /metrics line, read before stop

    def env(self, bench: Bench) -> dict[str, str]:
        env = bench.child_env()
        if "SIDEMETER_OPTIMIZE" in os.environ:
            env["SIDEMETER_OPTIMIZE"] = os.environ["SIDEMETER_OPTIMIZE"]
        if self.auth:
            env["SIDEMETER_JWT_SECRET"] = self.secret
        return env

    async def prepare(self, bench: Bench) -> None:
        if not self.auth:
            return
        argv = [bench.python, "-m", "agent.cli", "token", "issue", "--sub", self.user, "--team", self.team]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "--ttl",
            "12h",
            cwd=bench.workdir,
            env=self.env(bench),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        lines = out.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise BenchError(f"sidemeter token issue failed ({proc.returncode}): {err.decode().strip()}")
        self.headers["Authorization"] = f"Bearer {lines[-1].strip()}"

    def command(self, bench: Bench, port: int) -> list[str]:
        data_dir = bench.workdir / self.name
        self.db_path = data_dir / "usage.db"
        self.ops_port = free_port()
        config: list[str] = []
        if self.quotas:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "sidemeter.toml"
            path.write_text(
                f'[[quotas]]\nteam = "{self.team}"\nrequests_per_minute = 1000000000\n'
                "tokens_per_minute = 1000000000000\ntokens_per_day = 1000000000000\n"
            )
            config = ["--config", str(path)]
        return [
            bench.python,
            "-m",
            "agent.cli",
            "run",
            *config,
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
            "--auth",
            "jwt" if self.auth else "off",
        ]

    async def ready(self, port: int) -> bool:
        return await http_ok(f"http://127.0.0.1:{self.ops_port}/readyz")

    async def stop(self) -> None:
        if self.quotas and self.service is not None:  # did the rule meet the load?
            self.quota_series = await _quota_series(self.ops_port, f"team:{self.team}")
        await super().stop()

    def checks(self) -> list[Check]:
        checks = self._record_checks()
        if self.quotas:
            line = self.quota_series
            used = line is not None and float(line.rsplit(" ", 1)[1]) < 1.0
            detail = line or "no sidemeter_quota_remaining_ratio series of the team's scope in /metrics"
            checks.append(Check(f"{self.name}: the quota rule counted the load", used, detail))
        return checks

    def _record_checks(self) -> list[Check]:
        t = self.tally
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
                outcomes = Counter(
                    dict(db.execute("SELECT outcome, COUNT(*) FROM usage_logs GROUP BY outcome").fetchall())
                )
                reported, tokens, attributed = db.execute(
                    "SELECT COALESCE(SUM(usage_source = 'reported'), 0), COALESCE(SUM(completion_tokens), 0),"
                    " COALESCE(SUM(user = ? AND team = ?), 0) FROM usage_logs WHERE outcome = 'ok'",
                    (self.user, self.team) if self.auth else ("anonymous", None),
                ).fetchone()
        except sqlite3.Error as e:
            return [Check(f"{self.name} records", False, f"cannot read {self.db_path}: {e}")]
        rows, ok = sum(outcomes.values()), outcomes.get("ok", 0)
        spill = self.db_path.parent / "spill"
        spilled = sum(1 for _ in spill.glob("*")) if spill.is_dir() else 0
        # Requests wrk left in flight when it stopped may be recorded as ok or as cancelled.
        cut = rows - ok
        passed = (
            rows == t.sent
            and t.ok <= ok <= t.ok + t.unanswered
            and cut <= t.unanswered
            and set(outcomes) <= {"ok", "client_cancelled"}
            and reported == ok
            and (attributed == ok or not self.auth)
            and t.completion_tokens <= tokens <= t.completion_tokens + (ok - t.ok) * 64
            and self.exit_code == 0
        )
        detail = (
            f"{t.sent} requests sent through it ({t.ok} answered completely, {t.unanswered} left in flight "
            f"when a wrk run ended), {rows} rows in usage_logs: {dict(outcomes)}; {reported} ok rows with "
            f"reported usage"
            + (f", {attributed} attributed to {self.user}/{self.team} from the JWT" if self.auth else "")
            + f"; completion tokens {tokens} recorded / {t.completion_tokens} received by complete answers; "
            f"exit code {self.exit_code} after SIGTERM; spill files left: {spilled}"
        )
        return [Check(f"{self.name}: one usage record per request", passed, detail)]


async def _quota_series(ops_port: int, scope: str) -> str | None:
    """The `sidemeter_quota_remaining_ratio` line of `scope` in the sidecar's /metrics."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.get(f"http://127.0.0.1:{ops_port}/metrics") as r,
        ):
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    want = f'scope="{scope}"'
    return next(
        (ln for ln in text.splitlines() if ln.startswith("sidemeter_quota_remaining_ratio{") and want in ln),
        None,
    )


# LiteLLM ------------------------------------------------------------------------------


def ensure_litellm(venv: Path) -> Path:
    """The `litellm` executable of `venv`, installing `litellm[proxy]` there first if needed."""
    exe = venv / "bin" / "litellm"
    marker = venv / ".bench-installed"
    if exe.exists() and (marker.exists() or venv != DEFAULT_LITELLM_VENV):
        return exe
    say(f"installing litellm[proxy] into {venv} (once; takes 1-2 minutes) ...")
    t0 = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([base, "-m", "venv", str(venv)], check=True, cwd=BENCH_DIR)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
            cwd=BENCH_DIR,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise BenchError(
            f"could not install litellm[proxy] into {venv}: {e}; install it yourself "
            f"(python -m venv {venv}; {venv}/bin/pip install 'litellm[proxy]') or leave litellm out "
            "of --targets"
        ) from None
    marker.write_text("litellm[proxy]\n")
    say(f"installed litellm in {time.monotonic() - t0:.0f} s")
    return exe


def litellm_version(venv: Path) -> str | None:
    for dist in (venv / "lib").glob("python3*/site-packages/litellm-*.dist-info"):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None


@dataclass(eq=False)
class LiteLLM(ProcessTarget):
    """(d): LiteLLM's proxy (one uvicorn worker) with an `openai/` model per simulated model,
    `api_base` at the simulated server; clients send its master key as the bearer token."""

    models: tuple[str, ...] = ("sim-model", "sim-model-paced", "sim-model-slow")
    master_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8), init=False)
    exe: Path = field(default=Path(), init=False)
    version: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.slow = True
        self.ready_timeout = LITELLM_READY_TIMEOUT_S
        self.headers["Authorization"] = f"Bearer {self.master_key}"

    async def prepare(self, bench: Bench) -> None:
        self.exe = await asyncio.to_thread(ensure_litellm, bench.litellm_venv)
        self.version = litellm_version(bench.litellm_venv)

    def env(self, bench: Bench) -> dict[str, str]:
        env = {k: v for k, v in bench.child_env().items() if k != "PYTHONPATH"}
        env |= {"LITELLM_MASTER_KEY": self.master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        return env

    def command(self, bench: Bench, port: int) -> list[str]:
        config = bench.workdir / f"{self.name}.yaml"
        lines = ["model_list:"]
        for model in self.models:
            lines += [
                f"  - model_name: {model}",
                "    litellm_params:",
                f"      model: openai/{model}",
                f"      api_base: {bench.upstream_url}/v1",
                "      api_key: unused",
            ]
        config.write_text("\n".join(lines) + "\n")
        return [
            str(self.exe),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]

    async def ready(self, port: int) -> bool:
        return await http_ok(f"http://127.0.0.1:{port}/health/liveliness")


# Every column the bench knows. (b) is `master`; mitmdump is the optional stock-mitmproxy column.
TARGETS: dict[str, Callable[[], Target]] = {
    "direct": lambda: Direct("direct", "(a) the simulated server itself, no proxy"),
    "master": lambda: BareMaster(
        "master",
        "(b) bench/bare_master.py: the sidecar's embedded mitmproxy Master and stock addons, "
        "streams SSE, no auth, no metering, no records",
    ),
    "sidemeter": lambda: Sidemeter(
        "sidemeter", "(c) sidemeter run --auth jwt: bearer JWT on every request, metering, SQLite records"
    ),
    "litellm": lambda: LiteLLM(
        "litellm", "(d) LiteLLM proxy, 1 worker, openai/ models with api_base at the simulated server"
    ),
    "mitmdump": lambda: Mitmdump(
        "mitmdump", "stock mitmdump, reverse mode, no addons (-q, connection_strategy=lazy)"
    ),
    "sidemeter-quotas": lambda: Sidemeter(
        "sidemeter-quotas",
        "sidemeter run --auth jwt with a [[quotas]] rule matching the caller's team (a requests and "
        "two token limits, never reached): admission, RateLimit-* headers, reconciliation",
        quotas=True,
    ),
    "sidemeter-noauth": lambda: Sidemeter(
        "sidemeter-noauth", "sidemeter run --auth off: metering and SQLite records, no JWT check", auth=False
    ),
}
DEFAULT_TARGETS = ("direct", "master", "sidemeter", "litellm")
BASELINES = ("direct", "master")  # the columns every other one is compared with
