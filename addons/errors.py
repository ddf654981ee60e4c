"""Answer the proxy's own failures in the client's dialect.

When the upstream is unreachable or a body is over the limit, mitmproxy writes an HTML page
that names internal addresses. Clients of an LLM API expect a JSON error they can parse
(`{"error": {...}}` on /v1, `{"error": "..."}` on /api), so the HTTP/1 server writes one of
ours instead (agent/proxy/internals.py: mitmproxy has no hook for this).

When the sidecar's own addon code raises on a flow, `sidecar_failed` records it as the proxy's
failure (outcome `proxy_error`) and answers a request that has not gone upstream yet with a 500,
rather than sending it on half-handled (say, past an auth check that crashed).
"""

from __future__ import annotations

from typing import Final

from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import http1

from addons.flowstate import record_of
from agent.proxy.internals import install_error_pages, remove_error_pages
from agent.records import REQUEST_ID_HEADER, Outcome
from agent.wire.errors import error_body
from agent.wire.request import classify

# How the resolver says a host name does not exist (glibc, musl, macOS, Windows), lower-cased.
UNRESOLVED: Final = (
    "name or service not known",
    "temporary failure in name resolution",
    "no address associated with hostname",
    "nodename nor servname provided",
    "name does not resolve",
    "getaddrinfo failed",
)


def unresolved_host(detail: str, host: str) -> str | None:
    """The message for an upstream whose host name does not resolve, or None when `detail`
    (mitmproxy's error) says something else."""
    low = detail.lower()
    if not any(cause in low for cause in UNRESOLVED):
        return None
    return f"the LLM server behind the sidecar is unreachable: its host {host} does not resolve"


def client_message(status: int, detail: str, host: str = "") -> str:
    """What the client is told: the cause, never the upstream's address (but a host name that
    does not resolve, which is the thing to fix)."""
    if status == 413:
        return "request body is larger than the sidecar accepts (body_size_limit)"
    if status == 502:
        if (unresolved := unresolved_host(detail, host)) is not None:
            return unresolved
        low = detail.lower()
        # "Connect call failed", "Connection refused", ...; not "Server disconnected." (it answered the
        # connection, then hung up without a response: that is failing to answer).
        if ("connect" in low and "disconnect" not in low) or "refused" in low or "unreachable" in low:
            return "the LLM server behind the sidecar is unreachable; check that it is running"
        return "the LLM server behind the sidecar failed to answer"
    return detail


def render_error(request: http.Request | None, status: int, detail: str) -> bytes:
    dialect, _ = classify("POST", request.path if request else "/")
    err_type = "invalid_request_error" if status < 500 else "upstream_error"
    message = client_message(status, detail, request.host if request else "")
    body = error_body(dialect, status, message, err_type)
    headers = http.Headers(content_type="application/json", connection="close")
    if request is not None and REQUEST_ID_HEADER in request.headers:
        headers[REQUEST_ID_HEADER] = request.headers[REQUEST_ID_HEADER]
    return http1.assemble_response(http.Response.make(status, body, headers))


REQUEST_PHASE: Final = frozenset(
    {"requestheaders", "request"}
)  # hooks that run before anything goes upstream


def sidecar_failed(flow: http.HTTPFlow, hook: str, where: str, exc: Exception) -> None:
    """Our addon `where` raised `exc` in hook `hook` of `flow`: the record says so, and a request
    still on its way in is answered here with a 500 in the client's dialect."""
    rec = record_of(flow)
    rec.outcome = Outcome.PROXY_ERROR
    rec.error = f"sidecar failed in {where}.{hook}: {type(exc).__name__}: {exc}"
    if flow.response is None and hook in REQUEST_PHASE:
        message = "the sidecar failed to handle this request; its log has the details"
        _answer(flow, 500, message, "server_error")


def refuse(flow: http.HTTPFlow, status: int, message: str) -> None:
    """Answer `flow` with `status` and `message` in the client's dialect before it goes
    upstream (a request head over the sidecar's limits); the record says it was refused."""
    rec = record_of(flow)
    rec.outcome, rec.error = Outcome.REJECTED, message
    _answer(flow, status, message, "invalid_request_error")


def _answer(flow: http.HTTPFlow, status: int, message: str, err_type: str) -> None:
    rec = record_of(flow)
    dialect, _ = classify(flow.request.method, flow.request.path)
    flow.response = http.Response.make(
        status,
        error_body(dialect, status, message, err_type),
        {"Content-Type": "application/json", REQUEST_ID_HEADER: rec.request_id},
    )
    rec.status = status


class DialectErrors:
    """Installs the JSON error pages for as long as the addon is loaded."""

    def load(self, loader: Loader) -> None:
        install_error_pages(render_error)

    def done(self) -> None:
        remove_error_pages()


addons = [DialectErrors()]
