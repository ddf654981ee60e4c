"""The running sidecar: mitmproxy's master in reverse mode, the ops API and the store writer,
all in one process and one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from mitmproxy import hooks, http
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.flow import Error
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpErrorHook

from addons.auth import Auth
from addons.errors import DialectErrors, refuse, render_error, sidecar_failed
from addons.meter import Meter
from addons.price import Pricer
from addons.quota import Quota
from addons.record import Recorder
from agent import __version__, metrics
from agent.auth.errors import KeyConfigError
from agent.auth.settings import AuthSettings
from agent.auth.verify import Verifier
from agent.config import Config, ConfigError, parse_size
from agent.durations import parse_duration
from agent.instance import NAMESPACE_ENV, NODE_ENV, POD_ENV, address, instance_id
from agent.logs import AccessLog
from agent.proxy.dispatch import HandlerError, HookIndex, SidecarOptions
from agent.proxy.internals import use_connection_handler
from agent.proxy.limits import ConnectionLimits, LimitedConnectionHandler, fit_open_files
from agent.quota.fleet import FleetSync, closed_periods, load_fleet
from agent.quota.history import rebuild
from agent.quota.ledger import Ledger
from agent.quota.windows import zone
from agent.store.database import StoreError, open_database, redact_url
from agent.store.registry import Announcement, Registry
from agent.store.writer import UsageStore
from agent.teamhealth import TeamHealth
from agent.upstream import UpstreamProber
from ops_api.app import build_app
from ops_api.reads import query_store

log = logging.getLogger("sidemeter")

_CUT_WAIT_S = 5.0  # after the grace period: for cut flows to be recorded and their connections to close
_PRUNE_EVERY_S = 60.0  # quota scopes of windows that ended are dropped this often
_PRUNE_SLICE = 1000  # scopes looked at per turn of the loop while pruning


class StartupError(Exception):
    """Why the sidecar cannot start, in one line that names the path, port or URL and what to do."""


class _Lifecycle:
    """Tells the runtime when mitmproxy has brought its listeners up."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def running(self) -> None:
        self.started.set()


class Sidecar:
    """Starts, runs and gracefully stops the proxy, the ops API and the store writer."""

    def __init__(self, config: Config, *, store: UsageStore | None = None) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.store = store or UsageStore(
            config.db,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            spill_dir=self.data_dir / "spill",
            journal=config.journal,
            prune_after=parse_duration(config.retention) if config.auto_prune else None,
        )
        self.recorder = Recorder(self.store)
        self.prices = config.price_table  # None without [[prices]]: records then cost None
        self.metrics = metrics.RequestMetrics(
            max_teams=config.metrics_max_teams,
            max_models=config.metrics_max_models,
            user_label=config.metrics_user_label,
            max_users=config.metrics_max_users,
            in_flight=lambda: self.recorder.in_flight,
            store=self.store,
            currency=self.prices.currency if self.prices is not None else None,
        )
        self.recorder.listeners.append(self.metrics.observe)
        self.access_log: AccessLog | None = None  # made at start: it runs a writing thread
        self.limits = ConnectionLimits(render=render_error, submit=self.recorder.submit, refuse=refuse)
        self.team_health = TeamHealth(max_teams=config.metrics_max_teams)
        self.recorder.listeners.append(self.team_health.observe)
        self.upstream = UpstreamProber(
            config.upstream,
            interval=config.probe_interval,
            timeout=config.probe_timeout,
            api_key=config.upstream_api_key,
        )
        self.auth_settings = AuthSettings.from_config(config)
        self.quotas = Ledger(config.quotas, zone(config.quota_timezone))  # counters rebuilt at start
        # With PostgreSQL the store may be shared by a fleet: the counters are too.
        self.quota_sync: FleetSync | None = None
        if self.quotas and config.db.startswith(("postgres:", "postgresql:")):
            self.quota_sync = FleetSync(
                self.quotas,
                config.db,
                interval=config.quota_sync_interval,
                stale_after=config.quota_stale_after,
                closed=closed_periods(config.quota_store_down_rates, config.quota_store_down_budgets),
            )
        self._prune_task: asyncio.Task[None] | None = None
        self.verifier: Verifier | None = None  # loaded in preflight when auth is on
        self.started_at = time.time()
        self.registry = Registry(
            self.announcement,
            interval=config.heartbeat_interval,
            forget_after=_seconds(config.instance_retention),
        )
        self.master: Master | None = None
        self._release_hooks: Callable[[], None] | None = None
        self._master_task: asyncio.Task[None] | None = None
        self._ops_runner: web.AppRunner | None = None
        self._draining = False
        self._stop_requested = asyncio.Event()
        self.proxy_port: int | None = None
        self.ops_port: int | None = None
        self.cut_total = 0  # requests in flight when the grace period ended

    # -- state the ops API reads ---------------------------------------------------

    @property
    def proxy_listening(self) -> bool:
        return self.master is not None and self.proxy_port is not None and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    def announcement(self) -> Announcement:
        """This sidecar's row in the fleet registry (read on the heartbeat thread)."""
        cfg = self.config
        return Announcement(
            instance=instance_id(cfg.instance_id, self.proxy_port),
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            upstream=cfg.upstream,
            upstream_status=self.upstream.status,  # replaced whole by each probe
            auth="off" if cfg.auth == "off" else "jwt",
            listen=address(cfg.listen_address[0], self.proxy_port),
            ops_listen=address(cfg.ops_address[0], self.ops_port),
            pod=os.environ.get(POD_ENV) or None,
            namespace=os.environ.get(NAMESPACE_ENV) or None,
            node=os.environ.get(NODE_ENV) or None,
        )

    # -- start -----------------------------------------------------------------------

    def preflight(self) -> None:
        """Fail early, with one line, on the first thing that would otherwise fail half-started."""
        self.config.validate()
        check_data_dir(self.data_dir)
        for key, (host, port) in (
            ("--listen", self.config.listen_address),
            ("--ops-listen", self.config.ops_address),
        ):
            _check_port_free(key, host, port)
        check_distinct_ports(self.config)
        if self.verifier is None:
            self.verifier = load_verifier(self.auth_settings)

    async def start(self) -> None:
        self.preflight()
        try:
            await asyncio.to_thread(self.store.start)
        except StoreError as e:
            raise StartupError(str(e)) from None
        if self.quotas:
            # One query, off the loop: a restart resets nobody's window. A fleet's counters
            # are the shared ones (every sidecar adds its own there), a lone sidecar's the records.
            load = rebuild if self.quota_sync is None else load_fleet
            loaded_at = time.time()
            try:
                await asyncio.to_thread(query_store, self.store, lambda db: load(self.quotas, db))
            except StoreError as e:
                await asyncio.to_thread(self.store.close)
                raise StartupError(f"quota counters could not be rebuilt: {e}") from None
            if self.quota_sync is not None:
                self.quota_sync.started(loaded_at)
                self.quota_sync.start()
            self._prune_task = asyncio.create_task(self._prune_quotas(), name="quota-prune")
        if self.config.access_log == "on":
            self.access_log = AccessLog(self.config.log_format)
            self.recorder.listeners.append(self.access_log.observe)
        try:
            if self.verifier is not None:
                await self.verifier.start()  # warm the JWKS cache; an IdP that is down is only logged
            metrics.activate(self.metrics)  # /metrics shows this sidecar's series
            await self.upstream.start()  # after activate: a probe names the provider of the series
            metrics.QUOTA_GAUGES.ledger = self.quotas
            await self._start_proxy()
            await self._start_ops()
            # After both listeners: the row names their ports. Registered before the ready
            # line, then renewed on the registry's thread; a failure is only logged.
            await asyncio.to_thread(self.registry.start, self.store.db)
        except BaseException:
            await self._teardown()
            raise
        # mitmproxy and its dependencies leave ~100k long-lived objects; under load every full
        # collection walked them all and stopped the loop for 60-100 ms (the p99 spikes in
        # bench/). Freezing what exists after start-up takes them out of every later collection.
        gc.collect()
        gc.freeze()
        log.info(
            "sidemeter proxy on %s -> %s, ops API on %s, usage store %s, auth %s",
            _fmt(self.config.listen_address[0], self.proxy_port),
            self.config.upstream,
            _fmt(self.config.ops_address[0], self.ops_port),
            redact_url(self.config.db),
            self.auth_settings.describe(),
        )

    async def _prune_quotas(self) -> None:
        """Drop the quota scopes whose windows have all ended, once a minute, a slice at a time
        so the loop is never held for long: memory stays bounded by the active scopes."""
        while True:
            await asyncio.sleep(_PRUNE_EVERY_S)
            keys = list(self.quotas.scopes)
            for i in range(0, len(keys), _PRUNE_SLICE):
                self.quotas.prune(keys[i : i + _PRUNE_SLICE], time.time())
                await asyncio.sleep(0)

    async def _start_proxy(self) -> None:
        cfg = self.config
        opts = SidecarOptions()
        master = Master(opts)
        # Auth right after the error pages and the limits, before Meter: it reads Authorization
        # before anything strips it, and a flow answered with 401 (or a refused head's 414/431)
        # never goes upstream (Meter sees flow.response).
        # The pricer after the meter (it prices the final counts), before the quota and the
        # recorder; only with prices (a hook without them would cost every request for nothing).
        # Quota after the meter (it reads the parsed request), before the recorder (it reconciles
        # with the meter's final counts and the cost); a 429 it answers never goes upstream.
        quota = Quota(
            self.quotas,
            cfg.quota_default_reservation,
            self.prices,
            cfg.quota_default_reservation_seconds,
            max(1, math.ceil(cfg.quota_stale_after)),
        )
        pricer = (Pricer(self.prices),) if self.prices is not None else ()
        ours = (
            DialectErrors(),
            self.limits,
            Auth(self.auth_settings, self.verifier),
            Meter(),
            *pricer,
            quota,
            self.recorder,
        )
        index = HookIndex(master)  # before any addon: the stock manager looks handlers up per event
        index.on_error = _when_ours_fails(ours)
        master.addons = index
        if self._release_hooks is None:  # before the servers accept a connection
            self._release_hooks = use_connection_handler(LimitedConnectionHandler)
        lifecycle = _Lifecycle()
        # Only what a plain-HTTP reverse proxy needs: every loaded addon costs every hook.
        stock: list[object] = [core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer()]
        if cfg.upstream.startswith("https:"):
            stock.append(tlsconfig.TlsConfig())
        master.addons.add(*stock, *ours, lifecycle)
        host, port = cfg.listen_address
        # Addon options exist only once the addons are loaded, so they are set now.
        opts.update(
            mode=[f"reverse:{cfg.upstream}@{host}:{port}" if host else f"reverse:{cfg.upstream}@{port}"],
            connection_strategy="lazy",
            confdir=str(self.data_dir / "mitmproxy"),
            body_size_limit=str(parse_size(cfg.body_size_limit, "body_size_limit")),
            sidemeter_capture_prompts=cfg.capture_prompts,
            sidemeter_capture_prompts_chars=cfg.capture_prompts_chars,
            sidemeter_header_timeout=cfg.header_timeout,
            sidemeter_idle_timeout=cfg.idle_timeout,
            sidemeter_max_connections=fit_open_files(cfg.max_connections),
            sidemeter_max_request_line=cfg.max_request_line,
            sidemeter_max_header_size=cfg.max_header_size,
        )
        self.master = master
        self._master_task = asyncio.create_task(master.run(), name="mitmproxy")
        started = asyncio.create_task(lifecycle.started.wait())
        await asyncio.wait({started, self._master_task}, return_when=asyncio.FIRST_COMPLETED)
        ps = master.addons.get("proxyserver")
        servers = list(ps.servers) if ps else []
        failed = [s for s in servers if not s.is_running]
        if not started.done() or failed or not servers:
            started.cancel()
            why = failed[0].last_exception if failed else "the proxy stopped while starting"
            raise StartupError(f"proxy could not listen on {cfg.listen}: {why}")
        addrs = servers[0].listen_addrs
        self.proxy_port = addrs[0][1] if addrs else port
        self.recorder.instance = instance_id(self.config.instance_id, self.proxy_port)

    async def _start_ops(self) -> None:
        host, port = self.config.ops_address
        self._ops_runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._ops_runner.setup()
        site = web.TCPSite(self._ops_runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise StartupError(
                f"ops API could not listen on {self.config.ops_listen}: {e.strerror}; pass --ops-listen"
            ) from None
        server = site._server  # aiohttp exposes the bound port only here (port 0 = ephemeral)
        sockets = getattr(server, "sockets", None) or []
        self.ops_port = sockets[0].getsockname()[1] if sockets else port

    # -- run and stop ------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        assert self._master_task is not None
        stop = asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({stop, self._master_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, record what
        it cuts, drain the store. Ends with the one summary line."""
        if self._draining:
            return
        self._draining = True
        if self.master is not None and self._master_task and not self._master_task.done():
            self.master.options.update(server=False)  # closes the listeners, keeps open flows
            pending = self.recorder.in_flight
            if pending:
                log.info(
                    "waiting up to %ss for %d in-flight request(s)",
                    self.config.grace_period,
                    pending,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.recorder.idle.wait(), self.config.grace_period)
            await self._cut_connections()
        await self._teardown()

    async def _cut_connections(self) -> None:
        """Close every connection still open (streams past the grace period, idle keep-alive
        clients), each flow in flight recorded as a proxy_error with what it streamed. Closing
        them here, rather than leaving them to `master.shutdown()`, runs their `error` hooks and
        lets their tasks end, so no record is lost and no cancelled task is left behind."""
        assert self.master is not None
        reason = f"cut by shutdown after the {self.config.grace_period:g} s grace period"
        if cut := self.recorder.cut(reason):
            log.warning("grace period over: cutting %d request(s)", cut)
            self.cut_total += cut
        ps = self.master.addons.get("proxyserver")
        handlers = list(ps.connections.values()) if ps is not None else []
        for handler in handlers:
            io = handler.transports.get(handler.client)
            if io is not None and io.handler is not None:
                io.handler.cancel(reason)  # mitmproxy sees the client go: the flow's error hook fires
        deadline = time.monotonic() + _CUT_WAIT_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.recorder.idle.wait(), _CUT_WAIT_S)
        for flow in self.recorder.live_flows():  # no error hook came: record it ourselves
            if flow.error is None:
                flow.error = Error(reason)
            await self.master.addons.handle_lifecycle(HttpErrorHook(flow))
        while ps is not None and ps.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the handlers close their upstream side and end

    async def _teardown(self) -> None:
        gc.unfreeze()  # objects of a stopped sidecar (tests and the demo start several) may go
        if self.master is not None and self._master_task is not None:
            self.master.shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._master_task
        if self._release_hooks is not None:
            self._release_hooks()
            self._release_hooks = None
        if self._ops_runner is not None:
            await self._ops_runner.cleanup()
            self._ops_runner = None
        await self.upstream.stop()
        if self.verifier is not None:
            await self.verifier.aclose()
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
            self._prune_task = None
        if self.quota_sync is not None:
            await asyncio.to_thread(self.quota_sync.stop)  # the last push of this run's usage
        await asyncio.to_thread(self.registry.stop)  # marks the row stopped: a clean shutdown
        await asyncio.to_thread(self.store.close)
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)  # before the summary line, which comes last
            self.recorder.listeners.remove(self.access_log.observe)
            self.access_log = None
        metrics.deactivate(self.metrics)
        if metrics.QUOTA_GAUGES.ledger is self.quotas:
            metrics.QUOTA_GAUGES.ledger = None
        log.log(logging.ERROR if self.store.lost_total else logging.INFO, "%s", self.summary())

    def summary(self) -> str:
        """The stop's last line: where every record of this run went. A record spilled while
        the database failed and re-ingested once it recovered counts as written only."""
        store = self.store
        text = (
            f"stopped: {store.written_total} record(s) written, {store.spill_waiting()} spilled to "
            f"{store.spill_dir} for the next start, {store.lost_total} lost"
        )
        if store.lost_total:
            text += " (printed to stderr as JSON lines: see Durability in the README to re-ingest them)"
        if self.cut_total:
            text += f"; {self.cut_total} request(s) cut by the grace period"
        return text


def _when_ours_fails(ours: tuple[object, ...]) -> HandlerError:
    """What HookIndex calls when a handler raised: for a flow hook of one of `ours`, the flow
    is the sidecar's own failure (another addon's crash is only logged, as mitmproxy does)."""

    def on_error(handler: Any, event: hooks.Hook, exc: Exception) -> None:
        addon = getattr(handler, "__self__", None)
        if not any(addon is mine for mine in ours):
            return
        args = event.args()
        if args and isinstance(args[0], http.HTTPFlow):
            sidecar_failed(args[0], event.name, type(addon).__name__, exc)

    return on_error


# -- checks before start: `Sidecar.preflight` stops at the first, `sidemeter config validate` lists all


def check_data_dir(path: Path, *, create: bool = True) -> None:
    """StartupError unless `path` is a writable directory, made when missing (`create=False`:
    only check that it could be made)."""
    file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if file == path:
        raise StartupError(
            f"data directory {path} is a file, not a directory; move the file away or pass --data-dir"
        )
    if file is not None:
        raise StartupError(
            f"data directory {path} cannot be created: {file} is a file, not a directory; "
            "pass another --data-dir"
        )
    where = path if create or path.exists() else next(p for p in path.parents if p.exists())
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where):
            pass
    except OSError as e:
        raise StartupError(
            f"data directory {path} is not writable ({e.strerror}); fix the permissions of {where} "
            "or pass --data-dir"
        ) from None


def check_distinct_ports(config: Config) -> None:
    if config.listen_address[1] and config.listen_address == config.ops_address:
        raise StartupError(f"--listen and --ops-listen are both {config.listen}; give them different ports")


def load_verifier(settings: AuthSettings) -> Verifier | None:
    """Secure by default: with auth on, a key must be configured and loadable, or no start."""
    if not settings.enabled:
        return None
    try:
        return Verifier.from_settings(settings)
    except KeyConfigError as e:
        raise StartupError(str(e)) from None


def check_database(url: str) -> None:
    """The store opens (driver installed, server reachable, SQLite file readable). A SQLite
    file that does not exist yet is not created: its directory is checked instead."""
    if url.startswith("sqlite:") and not url.endswith(":memory:"):
        path = Path(url.split(":///", 1)[-1].split("?", 1)[0]).expanduser()
        if not path.exists():
            check_data_dir(path.parent, create=False)
            return
    try:
        open_database(url).close()
    except StoreError as e:
        raise StartupError(str(e)) from None


def preflight_problems(config: Config) -> list[str]:
    """Every problem that would stop `run` short of binding its ports, one line each."""
    problems = list(config.problems())
    checks: list[Callable[[], object]] = [
        lambda: check_data_dir(Path(config.data_dir), create=False),
        lambda: check_distinct_ports(config),
        lambda: load_verifier(AuthSettings.from_config(config)),
        lambda: check_database(config.db),
    ]
    for check in checks:
        try:
            check()
        except (StartupError, ConfigError) as e:
            problems.extend(getattr(e, "problems", (str(e),)))
    return list(dict.fromkeys(problems))  # a key conflict is found by the config and the verifier


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): a few percent less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _check_port_free(flag: str, host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is in use ({flag} {host}:{port}); "
                    f"stop what uses it or pass {flag}"
                ) from None
            raise StartupError(f"cannot listen on {host}:{port} ({flag}): {e.strerror}") from None


def _seconds(duration: str) -> float:
    try:
        return parse_duration(duration).total_seconds()
    except ValueError:  # preflight refuses the config before the registry runs
        return 0.0


def _fmt(host: str, port: int | None) -> str:
    return f"{host}:{port}"


async def serve(config: Config) -> int:
    """`sidemeter run`: start, serve until SIGTERM/SIGINT, stop gracefully. Returns the exit
    status: 1 when records could be neither written nor spilled (they went to stderr)."""
    sidecar = Sidecar(config)
    await sidecar.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_stop)
    if config.auth == "off":
        log.warning(
            "AUTHENTICATION IS OFF (--auth off): every client is served, and attributed by its "
            "X-User-Id header or as 'anonymous'; configure a JWT key to verify callers"
        )
    print(
        f"sidemeter ready: proxy :{sidecar.proxy_port}, ops :{sidecar.ops_port} (pid {os.getpid()})",
        flush=True,
    )
    await sidecar.run_until_stopped()
    return 1 if sidecar.store.lost_total else 0
