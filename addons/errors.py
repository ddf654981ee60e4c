"""Answer the proxy's own failures in the client's dialect.

When the upstream is unreachable or a body is over the limit, mitmproxy writes an HTML page
that names internal addresses. Clients of an LLM API expect a JSON error they can parse
(`{"error": {...}}` on /v1, `{"error": "..."}` on /api), so the HTTP/1 server's error path
is wrapped to write one instead. mitmproxy has no hook for this: the wrapped method is the
single place both majors (11 and 12) write those pages.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from agent.wire.errors import error_body
from agent.wire.request import classify

REQUEST_ID_HEADER = "X-Request-ID"


def client_message(status: int, detail: str) -> str:
    """What the client is told: the cause, never the upstream's address."""
    if status == 413:
        return "request body is larger than the sidecar accepts (body_size_limit)"
    if status == 502:
        if "connect" in detail.lower() or "refused" in detail.lower():
            return "the LLM server behind the sidecar is unreachable; check that it is running"
        return "the LLM server behind the sidecar failed to answer"
    return detail


def render_error(request: http.Request | None, status: int, detail: str) -> bytes:
    dialect, _ = classify("POST", request.path if request else "/")
    err_type = "invalid_request_error" if status < 500 else "upstream_error"
    body = error_body(dialect, status, client_message(status, detail), err_type)
    headers = http.Headers(content_type="application/json", connection="close")
    if request is not None and REQUEST_ID_HEADER in request.headers:
        headers[REQUEST_ID_HEADER] = request.headers[REQUEST_ID_HEADER]
    return http1.assemble_response(http.Response.make(status, body, headers))


_original_send = _http1.Http1Server.send


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
        isinstance(event, ResponseProtocolError)
        and not self.response
        and self.conn.state & ConnectionState.CAN_WRITE
        and (status := status_of(event.code)) is not None
    ):
        return _error_page(self, self.request, status, event.message)
    return _original_send(self, event)


def _error_page(
    server: _http1.Http1Server, request: http.Request | None, status: int, detail: str
) -> Generator[commands.Command, Any, None]:
    yield commands.SendData(server.conn, render_error(request, status, detail))
    yield commands.CloseConnection(server.conn)


class DialectErrors:
    """Installs the JSON error pages for as long as the addon is loaded."""

    def load(self, loader: object) -> None:
        _http1.Http1Server.send = _send  # type: ignore[method-assign]

    def done(self) -> None:
        _http1.Http1Server.send = _original_send  # type: ignore[method-assign]


addons = [DialectErrors()]
