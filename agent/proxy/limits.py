"""Limits on client connections: how long a client may take to send a request's head, how long a
keep-alive connection may wait for its next request, how large a head may be, and how many
connections may be open at once.

mitmproxy has none of these for clients: its one timeout is a ten-minute inactivity watchdog,
and its HTTP/1 reader buffers an unfinished request head without bound. Here:

- `ConnectionLimits` is the addon: it declares the options, counts the open connections and
  follows each connection's requests through the flow hooks (`requestheaders`: a request is in
  progress, no deadline; `response` or `error`: it is over, the idle deadline runs);
- `LimitedConnectionHandler` is the connection handler (the sidecar's inline-hook one) that
  gives each connection a `ConnectionClock`, turns away the connection over the limit, and
  counts the bytes of a request head while it comes in;
- `ConnectionClock` keeps one connection's deadline on one timer handle.

What a request pays: two hook calls that set a few attributes and read the loop's clock, and a
length check per chunk while its head is coming in. No task and no timer per request: each
connection has one timer handle, which fires at most once per `header_timeout` and, when it
fires before the deadline, moves itself to it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, Final

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import events

from agent.metrics import CONNECTIONS_CLOSED
from agent.proxy.dispatch import InlineHookHandler
from agent.proxy.internals import ErrorPage
from agent.records import REQUEST_ID_HEADER, Outcome, UsageRecord, new_request_id, utcnow
from agent.settings import declare_options, option_names, read_options
from agent.wire.request import classify

log = logging.getLogger("sidemeter.limits")

RefuseFlow = Callable[[http.HTTPFlow, int, str], None]
"""Answers a parsed request with (status, message) before it goes upstream, and records it."""
Submit = Callable[[UsageRecord], None]
"""Stores a finished record (the recorder's `submit`)."""

# A connection's phase.
HEAD: Final = 0  # a request head is due: header_timeout runs
BUSY: Final = 1  # a request is in progress: no deadline
IDLE: Final = 2  # keep-alive, between requests: idle_timeout runs
DRAIN: Final = 3  # its head was refused: the answer is out, what the client still sends is dropped

LINGER_S: Final = 2.0
"""How long a refused head's connection keeps reading (and dropping) what the client still sends
before it closes. Closing a socket with unread data makes the kernel reset the connection, and a
client still writing its 4 MB path would lose the error it was sent (a "lingering close")."""

FD_PER_CONNECTION: Final = 2  # the client's socket and its upstream connection
FD_MARGIN: Final = 64  # listeners, the database, journal and spill files, the ops API's clients


class ConnectionLimits:
    """The limits' options, the count of open client connections and each one's clock.

    The runtime passes how to answer: `render` writes the page for a head refused before
    mitmproxy parsed it (and for a connection over the limit), `submit` stores its record;
    `refuse` answers a parsed request whose head is over a limit."""

    def __init__(
        self,
        *,
        render: ErrorPage | None = None,
        submit: Submit | None = None,
        refuse: RefuseFlow | None = None,
    ) -> None:
        self.render = render
        self.submit = submit
        self.refuse = refuse
        self.header_timeout = 10.0
        self.idle_timeout = 90.0
        self.max_connections = 4096
        self.max_request_line = 16384
        self.max_header_size = 65536
        self._derive()
        self.open = 0  # client connections open now
        # By id(client): `Connection.__hash__` and `__eq__` are Python calls, twice per request.
        self._clocks: dict[int, ConnectionClock] = {}

    def load(self, loader: Loader) -> None:
        declare_options(loader, "limits")

    def configure(self, updated: set[str]) -> None:
        if updated & option_names("limits"):
            for name, value in read_options(ctx.options, "limits").items():
                setattr(self, name, value)
            self._derive()

    def _derive(self) -> None:
        # Read on every request: plain attributes, not properties.
        self.step = min(self.header_timeout, self.idle_timeout)  # no deadline comes before a timer fires
        self.smallest_head_limit = min(self.max_request_line, self.max_header_size)

    # -- connections ------------------------------------------------------------------

    def attach(self, handler: LimitedConnectionHandler) -> ConnectionClock | None:
        """The clock of a new connection, or None when it is one over `max_connections`."""
        if self.open >= self.max_connections:
            CONNECTIONS_CLOSED.labels("max_connections").inc()
            return None
        self.open += 1
        clock = self._clocks[id(handler.client)] = ConnectionClock(self, handler)
        return clock

    def detach(self, clock: ConnectionClock) -> None:
        self.open -= 1
        self._clocks.pop(id(clock.handler.client), None)
        clock.stop()

    def over_limit_page(self) -> bytes:
        message = (
            f"the sidecar has its maximum of {self.max_connections} client connections open "
            "(max_connections); retry later"
        )
        return self.render(None, 503, message) if self.render is not None else b""

    # -- requests -----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        clock = self._clocks.get(id(flow.client_conn))
        if clock is None:
            return
        received = clock.head_bytes
        clock.busy()
        # Most heads arrive whole in the chunk that also brings the body; only when the bytes
        # seen could hold an over-long head is it measured.
        if received > self.smallest_head_limit and self.refuse is not None:
            over = head_over_limits(flow.request, self.max_request_line, self.max_header_size)
            if over is not None:
                self.refuse(flow, *over)

    def response(self, flow: http.HTTPFlow) -> None:
        clock = self._clocks.get(id(flow.client_conn))
        if clock is not None:
            clock.idle()

    def error(self, flow: http.HTTPFlow) -> None:
        self.response(flow)


def head_over_limits(request: http.Request, max_line: int, max_head: int) -> tuple[int, str] | None:
    """(status, message) when a parsed request's line or head is over its limit, else None."""
    data = request.data
    line = len(data.method) + len(data.path) + len(data.http_version) + 4  # two spaces, CRLF
    if line > max_line:
        return 414, request_line_message(max_line)
    head = line + sum(len(k) + len(v) + 4 for k, v in data.headers.fields) + 2  # ": ", CRLF; CRLF
    if head > max_head:
        return 431, header_size_message(max_head)
    return None


def request_line_message(limit: int) -> str:
    return f"request line is longer than {limit} bytes (max_request_line); send a shorter path"


def header_size_message(limit: int) -> str:
    return f"request headers are larger than {limit} bytes (max_header_size); send fewer or shorter headers"


class ConnectionClock:
    """One client connection's phase and deadline, on one timer handle."""

    __slots__ = (
        "_timer",
        "deadline",
        "handler",
        "head",
        "head_bytes",
        "head_started",
        "limits",
        "loop",
        "phase",
    )

    def __init__(self, limits: ConnectionLimits, handler: LimitedConnectionHandler) -> None:
        self.limits = limits
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.phase = HEAD
        self.head_bytes = 0  # bytes received since the current head began
        self.head = b""  # its first bytes, for the record of a head refused unparsed
        self.head_started = time.time()
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.loop.time() + limits.header_timeout)

    # -- what happens on the connection

    def head_data(self, data: bytes) -> None:
        """The client sent `data` while no request of its is in progress."""
        if self.phase is IDLE:  # the next request on a keep-alive connection begins
            self.phase = HEAD
            self.head_bytes = 0
            self.head_started = time.time()
            self._arm(self.loop.time() + self.limits.header_timeout)
        self.head_bytes += len(data)
        if len(self.head) <= self.limits.max_request_line:  # the request line is all a record needs
            self.head = self.head + data if self.head else data  # the usual one chunk: no copy

    def busy(self) -> None:
        self.phase = BUSY
        self.head = b""

    def idle(self) -> None:
        if self.phase is not DRAIN:
            self.phase = IDLE
            self.head_bytes = 0
            self._arm(self.loop.time() + self.limits.idle_timeout)

    def head_refusal(self) -> tuple[int, str] | None:
        """(status, message) when the unfinished head is already over a limit."""
        limits = self.limits
        if self.head_bytes > limits.max_request_line and b"\n" not in self.head[: limits.max_request_line]:
            return 414, request_line_message(limits.max_request_line)
        if self.head_bytes > limits.max_header_size:
            return 431, header_size_message(limits.max_header_size)
        return None

    def drain(self) -> None:
        """The refusal is sent: drop what the client still sends, close after `LINGER_S`."""
        self.phase = DRAIN
        self.head = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._arm(self.loop.time() + LINGER_S)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the timer

    def _arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self._timer is None:
            when = min(deadline, self.loop.time() + self.limits.step)
            self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.phase is BUSY:
            return  # set again when the request ends
        now = self.loop.time()
        if self.phase is IDLE and self.handler.sending():  # a slow reader still gets its response
            self.deadline = now + self.limits.idle_timeout
        if now < self.deadline:
            self._timer = self.loop.call_at(min(self.deadline, now + self.limits.step), self._check)
            return
        if self.phase is not DRAIN:
            reason = "header_timeout" if self.phase is HEAD else "idle_timeout"
            CONNECTIONS_CLOSED.labels(reason).inc()
            self.handler.close_client(reason)
        else:
            self.handler.close_client("refused request head")


class LimitedConnectionHandler(InlineHookHandler):
    """The sidecar's connection handler, under the `ConnectionLimits` addon's limits (without
    that addon loaded it is plain `InlineHookHandler`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock: ConnectionClock | None = None

    async def handle_client(self) -> None:
        limits: ConnectionLimits | None = self.master.addons.get("connectionlimits")
        if limits is None:
            await super().handle_client()
            return
        clock = limits.attach(self)
        if clock is None:  # one over the limit: answered and closed before anything is read
            writer = self.transports.pop(self.client).writer
            assert writer is not None
            writer.write(limits.over_limit_page())
            writer.close()
            return
        self.clock = clock
        try:
            await super().handle_client()
        finally:
            self.clock = None
            limits.detach(clock)

    async def server_event(self, event: events.Event) -> None:
        clock = self.clock
        if (
            clock is None
            or clock.phase is BUSY
            or type(event) is not events.DataReceived
            or event.connection is not self.client
        ):
            await super().server_event(event)
            return
        if clock.phase is DRAIN:
            return
        clock.head_data(event.data)
        await super().server_event(event)
        if clock.phase is HEAD and clock.head_bytes > clock.limits.smallest_head_limit:
            refusal = clock.head_refusal()
            if refusal is not None and self.client.state & ConnectionState.CAN_WRITE:
                self._refuse_head(clock, *refusal)

    def _refuse_head(self, clock: ConnectionClock, status: int, message: str) -> None:
        """Answer an unfinished head that is over a limit, record it, and drain the connection."""
        limits = clock.limits
        method, path = request_line_start(clock.head)
        rec = refused_head_record(method, path, status, message, clock.head_started)
        rec.client_ip = self.client.peername[0] if self.client.peername else None
        io = self.transports.get(self.client)
        if io is not None and io.writer is not None and limits.render is not None:
            request = http.Request(
                "", 0, method.encode(), b"http", b"", path.encode(), b"HTTP/1.1",
                http.Headers([(REQUEST_ID_HEADER.encode(), rec.request_id.encode())]),
                b"", None, clock.head_started, None,
            )  # fmt: skip
            io.writer.write(limits.render(request, status, message))
            if io.writer.can_write_eof():
                io.writer.write_eof()  # the client reads the answer; what it still sends is dropped
        clock.drain()
        if limits.submit is not None:
            limits.submit(rec)

    def sending(self) -> bool:
        """Whether bytes for the client are still waiting in the socket's write buffer."""
        io = self.transports.get(self.client)
        transport = getattr(io.writer, "transport", None) if io is not None else None
        return transport is not None and transport.get_write_buffer_size() > 0

    def close_client(self, reason: str) -> None:
        """Close the client's connection as mitmproxy's own inactivity timeout does."""
        io = self.transports.get(self.client)
        if io is not None and io.handler is not None:
            self.log(f"closing connection: {reason}", logging.DEBUG)
            io.handler.cancel(reason)


def request_line_start(head: bytes) -> tuple[str, str]:
    """(method, path) of a head's first bytes; the path is what came of it when the line is cut."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    method, _, rest = line.partition(b" ")
    path, _, version = rest.rpartition(b" ")
    if not version.startswith(b"HTTP/"):
        path = rest
    return method.decode("ascii", "replace"), path.decode("utf-8", "replace")


def refused_head_record(method: str, path: str, status: int, message: str, started: float) -> UsageRecord:
    """The record of a request refused before its head was complete."""
    dialect, operation = classify(method, path)
    return UsageRecord(
        request_id=new_request_id(),
        ts=utcnow(),
        dialect=dialect,
        endpoint=path.split("?", 1)[0],
        operation=operation,
        status=status,
        outcome=Outcome.REJECTED,
        error=message,
        latency_ms=round((time.time() - started) * 1000, 3),
    )


# -- open files ----------------------------------------------------------------------------------


def open_files_plan(max_connections: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft limit to set, connections that fit in it) for `max_connections` under the
    process's RLIMIT_NOFILE (`soft`, `hard`; RLIM_INFINITY for no limit)."""
    need = FD_PER_CONNECTION * max_connections + FD_MARGIN
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft, max_connections
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    fits = max(1, (target - FD_MARGIN) // FD_PER_CONNECTION)
    return target, min(max_connections, fits)


def fit_open_files(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit so `max_connections` fit; returns the
    connection limit that fits (lower than asked, with a warning, when the hard limit is short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target, fits = open_files_plan(max_connections, soft, hard)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            fits = min(fits, max(1, (soft - FD_MARGIN) // FD_PER_CONNECTION))
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, e)
    if fits < max_connections:
        log.warning(
            "max_connections %d needs %d open files, but the hard limit (ulimit -Hn) is %d: accepting "
            "at most %d client connections; raise the hard limit or lower max_connections",
            max_connections,
            FD_PER_CONNECTION * max_connections + FD_MARGIN,
            hard,
            fits,
        )
    return fits
