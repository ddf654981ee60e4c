"""The proxy's own failures, answered in the client's dialect: the pages the HTTP/1 server writes
while the addon is loaded, and the record and answer when the sidecar's own code fails."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http, options
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server  # what the addon's pages replace
from mitmproxy.test import taddons, tflow

from addons.errors import DialectErrors, client_message, refusal, render_error, sidecar_failed
from addons.flowstate import state_of
from agent.proxy.internals import refused_request
from agent.records import Outcome
from tests.support.flows import UPSTREAM_HOST, llm_flow
from tests.support.paths import ROOT

REFUSED = "[Errno 111] Connect call failed ('10.1.2.3', 8000)"
UNRESOLVED = "[Errno -2] Name or service not known"


def parse(page: bytes) -> http.Response:
    head, _, body = page.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    resp = http.Response.make(int(status_line.split()[1]), body)
    resp.headers = http.Headers([tuple(x.encode() for x in line.split(": ", 1)) for line in lines])  # type: ignore[misc]
    return resp


def error_message(resp: http.Response) -> str:
    doc = json.loads(resp.content or b"")
    return doc["error"] if isinstance(doc["error"], str) else doc["error"]["message"]


@pytest.mark.parametrize(
    ("status", "detail", "said", "not_said"),
    [
        (502, REFUSED, "unreachable; check that it is running", "10.1.2.3"),
        (502, UNRESOLVED, f"unreachable: its host {UPSTREAM_HOST} does not resolve", "failed to answer"),
        (502, "[Errno -3] Temporary failure in name resolution", "does not resolve", "failed to answer"),
        (502, "[Errno 101] Network is unreachable", "unreachable; check that it is running", "failed"),
        (502, "Server disconnected.", "failed to answer", "unreachable"),
        (
            413,
            "Request body exceeds mitmproxy's body_size_limit.",
            "larger than the sidecar accepts",
            "mitmproxy",
        ),
    ],
)
def test_the_client_is_told_the_cause(status: int, detail: str, said: str, not_said: str) -> None:
    message = client_message(status, detail, UPSTREAM_HOST)
    assert said in message and not_said not in message


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", dict), ("/api/generate", str)],
)
def test_pages_are_json_in_the_clients_dialect_with_the_request_id(path: str, shape: type) -> None:
    request = llm_flow(path, {"model": "m"}, headers={"X-Request-ID": "rid-9"}).request
    resp = parse(render_error(request, 502, UNRESOLVED))
    assert resp.status_code == 502
    assert resp.headers["Content-Type"] == "application/json" and resp.headers["Connection"] == "close"
    assert resp.headers["X-Request-ID"] == "rid-9"
    doc = json.loads(resp.content or b"")
    assert isinstance(doc["error"], shape)
    assert "unreachable" in error_message(resp) and UPSTREAM_HOST in error_message(resp)
    if shape is dict:
        assert (doc["error"]["type"], doc["error"]["code"]) == ("upstream_error", 502)


def test_a_page_without_a_request_still_parses() -> None:
    resp = parse(render_error(None, 502, "Server disconnected."))
    assert error_message(resp) == "the LLM server behind the sidecar failed to answer"


def _written(server: Http1Server, event: ResponseProtocolError) -> list[commands.Command]:
    return list(server.send(event))


def test_while_loaded_the_http1_server_writes_our_page_and_closes() -> None:
    addon = DialectErrors()
    server = Http1Server(Context(tflow.tclient_conn(), options.Options()))
    server.request = llm_flow("/api/chat", {"model": "m"}).request
    event = ResponseProtocolError(1, REFUSED, 502)
    with taddons.context(addon):  # load() installs the pages
        ours = _written(server, event)
        kept = _written(
            server, ResponseProtocolError(1, "killed", status_codes.NO_RESPONSE)
        )  # NO_RESPONSE: nothing to say
        addon.done()
    assert [type(c) for c in ours] == [commands.SendData, commands.CloseConnection]
    page = parse(ours[0].data)  # type: ignore[attr-defined]
    assert page.status_code == 502 and "unreachable" in json.loads(page.content or b"")["error"]
    assert b"10.1.2.3" not in ours[0].data  # type: ignore[attr-defined]
    assert not any(isinstance(c, commands.SendData) and b"error" in c.data for c in kept)
    stock = _written(server, event)  # unloaded: mitmproxy's own page again
    assert any(isinstance(c, commands.SendData) and b"<html>" in c.data for c in stock)


@pytest.mark.parametrize(
    ("path", "hook"), [("/v1/chat/completions", "request"), ("/api/chat", "requestheaders")]
)
def test_a_failure_of_our_code_before_the_upstream_is_answered_500(path: str, hook: str) -> None:
    f = llm_flow(path, {"model": "m"}, headers={"X-Request-ID": "crash-1"})
    sidecar_failed(f, hook, "Auth", RuntimeError("verifier bug"))
    rec = state_of(f).record
    assert (rec.outcome, rec.status) == (Outcome.PROXY_ERROR, 500)
    assert rec.error == f"sidecar failed in Auth.{hook}: RuntimeError: verifier bug"
    assert f.response is not None and f.response.status_code == 500
    assert f.response.headers["X-Request-ID"] == "crash-1"
    assert "the sidecar failed to handle this request" in error_message(f.response)
    assert "verifier bug" not in (f.response.text or "")  # details go to the log, not the client


def test_a_failure_of_our_code_after_the_upstream_only_marks_the_record() -> None:
    f = llm_flow()
    f.response = http.Response.make(200, b"{}")
    sidecar_failed(f, "response", "Meter", ValueError("parse bug"))
    assert f.response.status_code == 200
    assert state_of(f).record.outcome == Outcome.PROXY_ERROR


def test_the_addon_loads_as_a_mitmdump_script() -> None:
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / "errors.py"))
        assert [type(a).__name__ for a in script.addons] == ["DialectErrors"]
        assert http1.assemble_response  # the module the pages are assembled with is importable


@pytest.mark.parametrize(
    ("detail", "said"),
    [
        ("Bad HTTP request line: b'GARBAGE'", "request line"),
        ("Invalid header line: b'Authorization Bearer sk-1'", "no colon"),
        ("invalid content-length header: '2, 3'", "Content-Length"),
        ("Received multiple content-length headers: [b'2', b'3'] from client, refusing ...", "more than one"),
        (
            "Received unknown transfer-encoding header: b'xchunked' from client, refusing ...",
            "Transfer-Encoding",
        ),
        ("mitmproxy received an HTTP CONNECT request even though ...", "CONNECT"),
    ],
)
def test_a_refusal_is_described_without_the_clients_bytes(detail: str, said: str) -> None:
    message = client_message(400, detail)
    assert message.startswith("malformed request, refused by the sidecar: ") and said in message
    assert "sk-1" not in message and "xchunked" not in message and "b'" not in message
    assert refusal(detail) is not None and "mitmproxy" not in message


def test_an_unknown_400_still_says_nothing_of_its_detail() -> None:
    assert client_message(400, "Something new: b'secret'") == (
        "malformed request, refused by the sidecar: not valid HTTP/1.1"
    )
    assert refusal("Server disconnected.") is None


@pytest.mark.parametrize(("sent", "replaced"), [(None, False), ("a b\r", True), ("x" * 129, True)])
def test_a_page_carries_a_valid_id_and_the_request_keeps_it_for_the_record(
    sent: str | None, replaced: bool
) -> None:
    request = llm_flow(headers={"X-Request-ID": sent} if sent is not None else {}).request
    resp = parse(render_error(request, 400, "Bad HTTP request line: b'x'"))
    assert resp.headers["X-Request-ID"] == request.headers["X-Request-ID"] != sent
    assert ("X-Request-ID-Replaced" in resp.headers) is replaced


def _feed(server: Http1Server, data: bytes) -> list[commands.Command]:
    server.buf += data
    return list(server.read_headers(events.DataReceived(server.conn, data)))


def test_while_loaded_a_refused_head_is_our_page_then_a_flow_that_fails() -> None:
    addon = DialectErrors()
    head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-1\r\nAuthorization Bearer sk-9\r\n\r\n"
    with taddons.context(addon):
        server = Http1Server(Context(tflow.tclient_conn(), options.Options()))
        out = _feed(server, head)
        addon.done()
    kinds = [type(getattr(c, "event", c)).__name__ for c in out]
    assert kinds == ["SendData", "CloseConnection", "RequestHeaders", "RequestProtocolError"]
    page = parse(out[0].data)  # type: ignore[attr-defined]
    assert page.status_code == 400 and page.headers["X-Request-ID"] == "r-1"
    assert json.loads(page.content or b"")["error"].endswith("a header line has no colon")  # Ollama's shape
    assert b"sk-9" not in out[0].data  # type: ignore[attr-defined]
    request = out[2].event.request  # type: ignore[attr-defined]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert "Authorization" not in request.headers and request.headers["X-Request-ID"] == "r-1"
    stock = _feed(Http1Server(Context(tflow.tclient_conn(), options.Options())), head)
    assert any(isinstance(c, commands.SendData) and b"<html>" in c.data for c in stock)  # unloaded again


def test_a_request_line_that_does_not_parse_still_makes_a_request_of_what_is_well_formed() -> None:
    request = refused_request(
        [b"GARBAGE", b"X-Request-ID: r-2", b"Bad Name: x", b"Content-Length: 9", b"X: \x01"]
    )
    assert (request.method, request.path) == ("", "")
    assert list(request.headers.items()) == [("X-Request-ID", "r-2")]
    target = refused_request([b"GET /a\x00b HTTP/1.1"])
    assert (target.method, target.path) == ("GET", "")
