"""Every place the sidecar relies on a private part of mitmproxy (`mitmproxy>=11.0.2,<13`).

mitmproxy has no public way to do these three things, so each one reaches inside:

- read an option without `OptManager.__getattr__`'s failed lookup and deep copy
  (`OptionValue`: the manager's `_options` dict and `_Option._default`);
- answer the proxy's own failures (upstream unreachable, body over the limit) with a page of
  our own instead of mitmproxy's HTML (`install_error_pages`: wraps the private
  `_http1.Http1Server.send`, the single place both majors write those pages), and answer a
  request head or body the HTTP/1 server refuses the same way, with a flow for it, so it gets
  its record (`Http1Server.read_headers` writes its HTML page itself and, when the request line
  does not parse, makes no flow at all; `read_body` closes without a word);
- have the proxy servers build our connection handler (`use_connection_handler`: the
  module-level `mode_servers.ProxyConnectionHandler` is looked up for every new connection,
  and `ConnectionHandler.server_event` feeds each event to `self.layer`).

`REQUIREMENTS` lists what each one takes for granted; tests/unit/test_proxy_internals.py checks
every entry against the installed mitmproxy and names what changed when one no longer holds.
Nothing else in the code base may import a private mitmproxy name.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final

from mitmproxy import http, optmanager, version
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy import commands, events, mode_servers, server
from mitmproxy.proxy.layers.http import (
    RequestHeaders,
    RequestProtocolError,
    ResponseProtocolError,
    _base,
    _http1,
)

MITMPROXY_VERSION = version.VERSION

# A deep copy of one of these is the value itself.
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


# -- option reads ----------------------------------------------------------------------------


class OptionValue:
    """Reads one option of an options manager live (no cache to keep in step with updates and
    rollbacks), without the deep copy where the value is immutable anyway."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, opts: optmanager.OptManager | None, owner: type | None = None) -> Any:
        if opts is None:
            return self
        try:
            option = opts.__dict__["_options"][self.name]
        except KeyError:  # not an option of this instance: OptManager.__getattr__ says so
            raise AttributeError(self.name) from None
        value = option.value
        if value is optmanager.unset:
            value = option._default
        return value if type(value) in _IMMUTABLE else option.current()


# -- the proxy's own error pages -----------------------------------------------------------------

ErrorPage = Callable[[http.Request | None, int, str], bytes]
"""Renders the whole HTTP response for a failed request: (request or None, status, mitmproxy's
message) -> bytes on the wire."""

HeadCheck = Callable[[list[bytes]], str | None]
"""Says why a request head (its lines, request line first) must be refused, or None."""

_stock_send = _http1.Http1Server.send
_stock_read_headers = _http1.Http1Server.read_headers
_stock_read_body = _http1.Http1Server.read_body  # Http1Connection's, shared with the client side
_render: ErrorPage | None = None
_check_head: HeadCheck | None = None


def status_of(code: Any) -> int | None:
    """The HTTP status mitmproxy would answer with, or None for "send nothing".
    mitmproxy 11 passes a status (NO_RESPONSE: nothing); 12 an ErrorCode that maps to one."""
    to_status = getattr(code, "http_status_code", None)
    if to_status is not None:
        return to_status()
    return None if code == status_codes.NO_RESPONSE else int(code)


def _send(self: _http1.Http1Server, event: Any) -> Generator[commands.Command, Any, None]:
    # A plain function handing back a generator: every event the proxy writes passes here, and
    # only protocol errors need our own; the rest get mitmproxy's generator with no extra frame.
    if (
        _render is not None
        and isinstance(event, ResponseProtocolError)
        and not self.response
        and self.conn.state & ConnectionState.CAN_WRITE
        and (status := status_of(event.code)) is not None
    ):
        return _error_page(self, _render(self.request, status, event.message))
    return _stock_send(self, event)


def _error_page(server: _http1.Http1Server, page: bytes) -> Generator[commands.Command, Any, None]:
    yield commands.SendData(server.conn, page)
    yield commands.CloseConnection(server.conn)


def _read_headers(self: _http1.Http1Server, event: events.Event) -> Generator[commands.Command, Any, None]:
    if _render is None or not isinstance(event, events.DataReceived):
        return _stock_read_headers(self, event)  # type: ignore[arg-type]
    return _read_head(self, event, _render)


def _read_head(
    server: _http1.Http1Server, event: events.DataReceived, render: ErrorPage
) -> Generator[commands.Command, Any, None]:
    # mitmproxy's read_headers for data, but a head it or `_check_head` refuses is answered with
    # our page and still handed on as a flow (made up from what did parse) that then fails.
    head = server.buf.maybe_extract_lines()
    if not head:
        return  # the head is not complete yet
    lines = [bytes(x) for x in head]
    try:
        if _check_head is not None and (defect := _check_head(lines)) is not None:
            raise ValueError(defect)
        request = http1.read_request_head(lines)
        expected_size = http1.expected_http_body_size(request)
    except ValueError as e:
        yield from _refuse_head(server, lines, str(e), render)
        return
    server.request = request
    yield _base.ReceiveHttp(RequestHeaders(server.stream_id, request, expected_size == 0))
    server.body_reader = _http1.make_body_reader(expected_size)
    server.state = server.read_body
    yield from server.state(event)


def _refuse_head(
    server: _http1.Http1Server, lines: list[bytes], message: str, render: ErrorPage
) -> Generator[commands.Command, Any, None]:
    request = server.request = refused_request(lines)
    yield commands.SendData(server.conn, render(request, 400, message))
    yield commands.CloseConnection(server.conn)
    yield _base.ReceiveHttp(RequestHeaders(server.stream_id, request, True))
    yield _base.ReceiveHttp(RequestProtocolError(server.stream_id, message, 400))
    server.state = server.done


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(rb"HTTP/\d\.\d")
_FRAMING: Final = (b"content-length", b"transfer-encoding")


def refused_request(lines: list[bytes]) -> http.Request:
    """The request a refused head stands for, made of its well-formed parts only: the method
    and origin-form path when the request line has them, and the header fields whose name is a
    token and whose value is printable, less the framing ones (the body is never read)."""
    parts = lines[0].split(b" ") if lines else []
    method, target, version = parts if len(parts) == 3 else (b"", b"", b"")
    if not _TOKEN.fullmatch(method):
        method = b""
    if not (target.startswith(b"/") and _printable(target)):
        target = b""
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if (
            colon
            and _TOKEN.fullmatch(name)
            and name.lower() not in _FRAMING
            and _printable(value, space=True)
        ):
            fields.append((name, value))
    return http.Request(
        host="",
        port=0,
        method=method,
        scheme=b"",
        authority=b"",
        path=target,
        http_version=version if _VERSION.fullmatch(version) else b"HTTP/1.1",
        headers=http.Headers(fields),
        content=None,
        trailers=None,
        timestamp_start=time.time(),
        timestamp_end=None,
    )


def _printable(value: bytes, space: bool = False) -> bool:
    low = 0x20 if space else 0x21
    return all(low <= c <= 0x7E for c in value)


def _read_body(self: _http1.Http1Server, event: events.Event) -> Generator[commands.Command, Any, None]:
    if _render is None or not isinstance(event, events.DataReceived):
        return _stock_read_body(self, event)
    return _body_or_refusal(self, event, _render)


def _body_or_refusal(
    server: _http1.Http1Server, event: events.DataReceived, render: ErrorPage
) -> Generator[commands.Command, Any, None]:
    for command in _stock_read_body(server, event):
        # read_body closes only when h11 refused the body's framing (a bad chunk, say): the
        # client is still there, waiting for an answer it is owed.
        if (
            type(command) is commands.CloseConnection
            and not server.response
            and server.conn.state & ConnectionState.CAN_WRITE
        ):
            yield commands.SendData(server.conn, render(server.request, 400, MALFORMED_BODY))
        yield command


MALFORMED_BODY: Final = "malformed request body"
"""The message a request body's framing error is answered with."""


def install_error_pages(render: ErrorPage, check_head: HeadCheck | None = None) -> None:
    """Have the HTTP/1 server answer protocol errors with `render`'s page, then close; a request
    head that does not parse, or that `check_head` refuses, is answered 400 and still becomes a
    flow that fails (its hooks run: `requestheaders`, then `error`)."""
    global _render, _check_head
    _render, _check_head = render, check_head
    _http1.Http1Server.send = _send  # type: ignore[method-assign]
    _http1.Http1Server.read_headers = _read_headers  # type: ignore[method-assign]
    _http1.Http1Server.read_body = _read_body  # type: ignore[method-assign]


def remove_error_pages() -> None:
    """mitmproxy's own error pages again."""
    global _render, _check_head
    _render = _check_head = None
    _http1.Http1Server.send = _stock_send  # type: ignore[method-assign]
    _http1.Http1Server.read_headers = _stock_read_headers  # type: ignore[method-assign]
    if "read_body" in vars(_http1.Http1Server):
        del _http1.Http1Server.read_body  # inherited from Http1Connection again


# -- the connection handler ------------------------------------------------------------------------

_stock_handler = mode_servers.ProxyConnectionHandler
_handler_users = 0


def use_connection_handler(handler: type[mode_servers.ProxyConnectionHandler]) -> Callable[[], None]:
    """Have mitmproxy's servers in this process build `handler`s for new connections; returns
    the function that undoes it (counted, so sidecars may overlap in one process)."""
    global _handler_users
    _handler_users += 1
    mode_servers.ProxyConnectionHandler = handler  # type: ignore[misc]  # looked up per connection
    released = False

    def release() -> None:
        global _handler_users
        nonlocal released
        if released:
            return
        released = True
        _handler_users -= 1
        if not _handler_users:
            mode_servers.ProxyConnectionHandler = _stock_handler  # type: ignore[misc]

    return release


def stock_connection_handler() -> type[mode_servers.ProxyConnectionHandler]:
    return _stock_handler


# -- what the above takes for granted --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """One thing about mitmproxy's internals this module relies on."""

    name: str
    what: str  # what must hold, in words
    holds: Callable[[], bool]
    used_by: str

    def failure(self) -> str | None:
        """None when it holds; else the message naming the mitmproxy version and what changed."""
        try:
            ok = self.holds()
        except Exception as e:  # an attribute gone, a signature changed: that is the news
            ok, why = False, f" ({type(e).__name__}: {e})"
        else:
            why = ""
        if ok:
            return None
        return (
            f"mitmproxy {MITMPROXY_VERSION} changed: {self.what} no longer holds{why}; "
            f"{self.used_by} relies on it (agent/proxy/internals.py). Pin mitmproxy to a version "
            "where it holds, or adapt that code."
        )


def _options_dict_holds() -> bool:
    opts = optmanager.OptManager()
    opts.add_option("probe", int, 1, "probe")
    option = opts.__dict__["_options"]["probe"]
    read = OptionValue("probe").__get__
    at_default = option.value is optmanager.unset and option._default == 1 and read(opts) == 1
    opts.update(probe=2)
    return at_default and option.value == 2 and read(opts) == opts.probe == 2


def _option_value_after_update_holds() -> bool:
    opts = optmanager.OptManager()
    opts.add_option("probe", list, [], "probe")
    opts.update(probe=["x"])
    option = opts.__dict__["_options"]["probe"]
    copy = OptionValue("probe").__get__(opts)
    return option.value == ["x"] and copy == ["x"] and copy is not option.value


def _http1_send_holds() -> bool:
    from mitmproxy.options import Options
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import tflow

    params = list(inspect.signature(_stock_send).parameters)
    server_side = _http1.Http1Server(Context(tflow.tclient_conn(), Options()))
    return (
        params == ["self", "event"]
        and inspect.isgeneratorfunction(_stock_send)
        and server_side.request is None
        and server_side.response is None
        and server_side.conn.state is not None
    )


def _fed(
    read: Callable[..., Any], data: bytes, prepare: Callable[[Any], None] | None = None
) -> tuple[Any, list[str]]:
    """A fresh HTTP/1 server side that has received `data`, and what `read` made of it: the
    names of the commands, or of the HTTP events they carry up."""
    from mitmproxy.options import Options
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import tflow

    server_side = _http1.Http1Server(Context(tflow.tclient_conn(), Options()))
    if prepare is not None:
        prepare(server_side)
    server_side.buf += data
    out = list(read(server_side, events.DataReceived(server_side.conn, data)))
    return server_side, [type(getattr(c, "event", c)).__name__ for c in out]


def _http1_read_headers_holds() -> bool:
    data = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    stock, stock_out = _fed(_stock_read_headers, data)
    ours, our_out = _fed(lambda s, e: _read_head(s, e, lambda *a: b""), data)
    return (
        list(inspect.signature(_stock_read_headers).parameters) == ["self", "event"]
        and inspect.isgeneratorfunction(_stock_read_headers)
        and stock_out == our_out == ["RequestHeaders", "RequestData", "RequestEndOfMessage"]
        and ours.request.path == stock.request.path == "/v1/x"
        and ours.state.__name__ == stock.state.__name__ == "wait"
        and isinstance(ours.body_reader, type(stock.body_reader))
    )


def _http1_read_body_holds() -> bool:
    def chunked(server_side: Any) -> None:
        server_side.request = refused_request([b"POST / HTTP/1.1"])
        server_side.body_reader = _http1.make_body_reader(None)
        server_side.state = server_side.read_body

    _, out = _fed(_stock_read_body, b"zz\r\n", chunked)
    return (
        _stock_read_body is _http1.Http1Connection.read_body
        and inspect.isgeneratorfunction(_stock_read_body)
        and out == ["CloseConnection", "RequestProtocolError"]
    )


def _protocol_error_holds() -> bool:
    event = ResponseProtocolError(1, "probe", status_codes.BAD_GATEWAY)
    return event.message == "probe" and status_of(event.code) == 502


def _connection_handler_holds() -> bool:
    handler = mode_servers.ProxyConnectionHandler
    return (
        issubclass(handler, server.ConnectionHandler)
        and inspect.iscoroutinefunction(handler.server_event)
        and "self.layer.handle_event(event)" in inspect.getsource(server.ConnectionHandler.server_event)
        and "ProxyConnectionHandler(" in inspect.getsource(mode_servers)
    )


def _client_io_holds() -> bool:
    live = inspect.getsource(server.LiveConnectionHandler.__init__)
    reading = inspect.getsource(server.ConnectionHandler.handle_connection)
    return (
        "self.transports[client] = ConnectionIO(" in live
        and inspect.iscoroutinefunction(server.ConnectionHandler.handle_client)
        and "self.server_event(events.DataReceived(connection, data))" in reading
        and "except asyncio.CancelledError" in reading
    )


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        "options-dict",
        "OptManager keeps each option as an `_Option` in `opts.__dict__['_options']`, with `.value` "
        "(`optmanager.unset` at the default), `._default` and `.current()`",
        _options_dict_holds,
        "OptionValue (SidecarOptions' fast option reads)",
    ),
    Requirement(
        "options-current-copies",
        "an updated option keeps its value in `_Option.value` and `.current()` hands out a copy",
        _option_value_after_update_holds,
        "OptionValue (SidecarOptions' fast option reads)",
    ),
    Requirement(
        "http1-send",
        "`mitmproxy.proxy.layers.http._http1.Http1Server.send(self, event)` is a generator method "
        "with `.request`, `.response` and `.conn` on the server",
        _http1_send_holds,
        "install_error_pages (addons/errors.py's JSON error pages)",
    ),
    Requirement(
        "http1-read-headers",
        "`Http1Server.read_headers(self, event)` is a generator that takes the head from "
        "`self.buf.maybe_extract_lines()`, parses it with `http1.read_request_head` and "
        "`expected_http_body_size`, hands `_base.ReceiveHttp(RequestHeaders)` up, and reads the body "
        "with `_http1.make_body_reader(size)` in `self.read_body`",
        _http1_read_headers_holds,
        "install_error_pages (addons/errors.py: refused request heads answered as JSON, with a record)",
    ),
    Requirement(
        "http1-read-body",
        "`Http1Server.read_body` is `Http1Connection.read_body`, a generator that answers a body h11 "
        "refuses with `CloseConnection` and then `RequestProtocolError`",
        _http1_read_body_holds,
        "install_error_pages (addons/errors.py: a malformed request body answered as JSON)",
    ),
    Requirement(
        "protocol-error-event",
        "`mitmproxy.proxy.layers.http.ResponseProtocolError(stream_id, message, code)` has "
        "`.message` and a `.code` that maps to an HTTP status",
        _protocol_error_holds,
        "install_error_pages (addons/errors.py's JSON error pages)",
    ),
    Requirement(
        "connection-handler",
        "`mode_servers.ProxyConnectionHandler` is a `server.ConnectionHandler` looked up by name for "
        "each new connection, whose async `server_event` feeds events to `self.layer.handle_event`",
        _connection_handler_holds,
        "use_connection_handler (agent/proxy/dispatch.py's InlineHookHandler)",
    ),
    Requirement(
        "connection-handler-client-io",
        "a connection handler holds the client's reader and writer in `transports[client]` from its "
        "construction, before the async `handle_client` runs; every read from a connection reaches "
        "`server_event` as `events.DataReceived(connection, data)`; cancelling the reading task "
        "closes the connection",
        _client_io_holds,
        "use_connection_handler (agent/proxy/limits.py's LimitedConnectionHandler)",
    ),
)
