"""Every place the sidecar relies on a private part of mitmproxy (`mitmproxy>=11.0.2,<13`).

mitmproxy has no public way to do these three things, so each one reaches inside:

- read an option without `OptManager.__getattr__`'s failed lookup and deep copy
  (`OptionValue`: the manager's `_options` dict and `_Option._default`);
- answer the proxy's own failures (upstream unreachable, body over the limit) with a page of
  our own instead of mitmproxy's HTML (`install_error_pages`: wraps the private
  `_http1.Http1Server.send`, the single place both majors write those pages);
- have the proxy servers build our connection handler (`use_connection_handler`: the
  module-level `mode_servers.ProxyConnectionHandler` is looked up for every new connection,
  and `ConnectionHandler.server_event` feeds each event to `self.layer`).

`REQUIREMENTS` lists what each one takes for granted; tests/unit/test_proxy_internals.py checks
every entry against the installed mitmproxy and names what changed when one no longer holds.
Nothing else in the code base may import a private mitmproxy name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from mitmproxy import http, optmanager, version
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, mode_servers, server
from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1

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

_stock_send = _http1.Http1Server.send
_render: ErrorPage | None = None


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


def install_error_pages(render: ErrorPage) -> None:
    """Have the HTTP/1 server answer protocol errors with `render`'s page, then close."""
    global _render
    _render = render
    _http1.Http1Server.send = _send  # type: ignore[method-assign]


def remove_error_pages() -> None:
    """mitmproxy's own error pages again."""
    global _render
    _render = None
    _http1.Http1Server.send = _stock_send  # type: ignore[method-assign]


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
