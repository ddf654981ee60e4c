"""Answer the proxy's own failures in the client's dialect.

When the upstream is unreachable or a body is over the limit, mitmproxy writes an HTML page
that names internal addresses. Clients of an LLM API expect a JSON error they can parse
(`{"error": {...}}` on /v1, `{"error": "..."}` on /api), so the HTTP/1 server writes one of
ours instead (agent/proxy/internals.py: mitmproxy has no hook for this).

A request the HTTP layer refuses (a request line or header that does not parse, framing that
contradicts itself, a bare CR, NUL or folded header, CONNECT) is answered 400 in the same
shape, with a fixed description that never quotes the client's bytes, and still becomes a flow:
its record says `rejected`, 400 (`refusal`, read by the meter).

When the sidecar's own addon code raises on a flow, `sidecar_failed` records it as the proxy's
failure (outcome `proxy_error`) and answers a request that has not gone upstream yet with a 500,
rather than sending it on half-handled (say, past an auth check that crashed).
"""

from __future__ import annotations

from typing import Final

from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import http1

from addons import headers as hdr
from addons.flowstate import REQUEST_ID_KEY, record_of
from agent.proxy.internals import MALFORMED_BODY, install_error_pages, remove_error_pages
from agent.records import (
    REQUEST_ID_HEADER,
    REQUEST_ID_REPLACED_HEADER,
    Outcome,
    is_valid_request_id,
    new_request_id,
)
from agent.wire.errors import error_body
from agent.wire.head import DEFECTS, head_defect
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


# mitmproxy's reasons for refusing a request (from its parser, its request-smuggling checks and
# its mode checks), as a fixed phrase each: theirs quote the offending bytes, which may be a
# credential. The first match wins, so the more specific come first.
REFUSALS: Final = (
    *((d, d) for d in DEFECTS),
    ("Bad HTTP request line", "the request line is not METHOD /path HTTP/1.x"),
    ("Invalid header line", "a header line has no colon"),
    ("Invalid headers", "the header block starts with a continuation line"),
    ("both transfer-encoding and content-length", "both Transfer-Encoding and Content-Length"),
    ("multiple transfer-encoding", "more than one Transfer-Encoding"),
    ("transfer-encoding", "a Transfer-Encoding other than chunked"),
    ("multiple content-length", "more than one Content-Length"),
    ("content-length", "a Content-Length that is not one non-negative number"),
    ("invalid header name", "a header name that is not an HTTP token"),
    ("CONNECT request", "CONNECT: the sidecar is a reverse proxy, not a forward one"),
    ("Invalid request scheme", "an absolute URL that is not http or https"),
    (MALFORMED_BODY, "the body's chunked framing is malformed"),
)
PEER_CLOSED: Final = "peer closed connection without sending complete message body"
"""h11's reason when a body ends early: on the request side, the client hung up mid-body."""


def refusal(detail: str) -> str | None:
    """The fixed description of why the HTTP layer refused a request, when `detail` (an error
    message of the proxy) is such a refusal; else None."""
    for cause, description in REFUSALS:
        if cause in detail:
            return description
    return None


def client_message(status: int, detail: str, host: str = "") -> str:
    """What the client is told: the cause, never the upstream's address (but a host name that
    does not resolve, which is the thing to fix), never the client's own bytes."""
    if status == 400:
        return f"malformed request, refused by the sidecar: {refusal(detail) or 'not valid HTTP/1.1'}"
    if status == 413:
        return "request body is larger than the sidecar accepts (body_size_limit)"
    if status == 502:
        if (unresolved := unresolved_host(detail, host)) is not None:
            return unresolved
        low = detail.lower()
        if PEER_CLOSED in low or "protocol error" in low:
            return "the LLM server behind the sidecar broke off its answer"
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
    if request is not None:
        sent = hdr.get(request.headers, REQUEST_ID_KEY)
        if sent is None or not is_valid_request_id(sent):
            # Before the hooks (a refused head): the record, made from this request next, takes
            # the id the client is told.
            hdr.put(request.headers, REQUEST_ID_HEADER, new_request_id())
            if sent is not None:
                headers[REQUEST_ID_REPLACED_HEADER] = "1"
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
        install_error_pages(render_error, head_defect)

    def done(self) -> None:
        remove_error_pages()


addons = [DialectErrors()]
