"""Every failure still gets an answer the client can parse and exactly one usage record."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.support.sidecar import RunningSidecar

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Tell me a long story."}]}


def rid() -> str:
    return uuid.uuid4().hex


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_upstream_answers_502_in_each_dialect(start_sidecar: Any) -> None:
    side: RunningSidecar = await start_sidecar(f"http://127.0.0.1:{closed_port()}")
    r1, r2 = rid(), rid()
    oa = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e1:
        await oa.chat.completions.create(extra_headers={"X-Request-ID": r1}, **CHAT)
    assert e1.value.status_code == 502
    body = e1.value.response.json()
    assert "unreachable" in body["error"]["message"]
    assert "127.0.0.1" not in e1.value.response.text  # the internal address stays inside
    assert e1.value.response.headers["x-request-id"] == r1

    ol = ollama.AsyncClient(host=side.url, headers={"X-Request-ID": r2})
    with pytest.raises(ollama.ResponseError) as e2:
        await ol.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert e2.value.status_code == 502 and "unreachable" in e2.value.error

    for request_id, dialect in ((r1, "openai"), (r2, "ollama")):
        rec = await side.record(request_id)
        assert rec.dialect == dialect and rec.status == 502 and rec.outcome == "upstream_error"
        assert rec.error and rec.usage_source == "none"


async def test_upstream_500_passes_through(openai_side: RunningSidecar) -> None:
    request_id = rid()
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            openai_side.url + "/v1/chat/completions",
            json=CHAT,
            headers={"X-Request-ID": request_id, "X-Sim-Fault": "error-500"},
        )
    assert resp.status_code == 500 and "error" in resp.json()
    rec = await openai_side.record(request_id)
    assert rec.status == 500 and rec.outcome == "upstream_error" and rec.error


async def test_upstream_dies_mid_stream(any_side: tuple[str, RunningSidecar]) -> None:
    dialect, side = any_side
    path = "/v1/chat/completions" if dialect == "openai" else "/api/chat"
    body = {**CHAT, "stream": True}
    request_id = rid()
    received = b""
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            async with http.stream(
                "POST",
                side.url + path,
                json=body,
                headers={"X-Request-ID": request_id, "X-Sim-Fault": "cut"},
            ) as resp:
                async for chunk in resp.aiter_bytes():
                    received += chunk
    assert received  # some tokens made it before the cut
    rec = await side.record(request_id)
    assert rec.outcome == "upstream_error" and rec.error
    assert rec.usage_source == "estimated" and rec.completion_tokens and rec.completion_tokens > 0


async def test_client_disconnect_mid_stream(any_side: tuple[str, RunningSidecar]) -> None:
    dialect, side = any_side
    path = "/v1/chat/completions" if dialect == "openai" else "/api/chat"
    request_id = rid()
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            side.url + path,
            json={**CHAT, "stream": True},
            headers={"X-Request-ID": request_id, "X-Sim-Fault": "stall"},
        ) as resp,
    ):
        async for chunk in resp.aiter_bytes():
            if b"content" in chunk or b"response" in chunk:
                break  # the user closes the tab after the first words
    rec = await side.record(request_id)
    assert rec.outcome == "client_cancelled" and rec.status == 200
    assert rec.usage_source == "estimated" and rec.prompt_tokens and rec.prompt_tokens > 0


async def test_oversized_body_is_refused_with_413(start_sidecar: Any, sim_openai: Any) -> None:
    side: RunningSidecar = await start_sidecar(sim_openai.url, body_size_limit="2k")
    request_id = rid()
    big = {"model": "sim-model", "messages": [{"role": "user", "content": "x" * 10_000}]}
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            side.url + "/v1/chat/completions", json=big, headers={"X-Request-ID": request_id}
        )
    assert resp.status_code == 413
    assert "body" in resp.json()["error"]["message"]
    rec = await side.record(request_id)
    assert rec.status == 413 and rec.outcome == "rejected"


async def test_malformed_json_reaches_upstream_and_its_error_is_recorded(
    openai_side: RunningSidecar,
) -> None:
    request_id = rid()
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            openai_side.url + "/v1/chat/completions",
            content=b'{"model": "sim-model", "messages": [',
            headers={"X-Request-ID": request_id, "content-type": "application/json"},
        )
    assert resp.status_code == 400
    rec = await openai_side.record(request_id)
    assert rec.outcome == "upstream_error" and rec.status == 400 and rec.operation == "chat"


async def test_gzip_stream_is_metered(openai_side: RunningSidecar) -> None:
    request_id = rid()
    body = {**CHAT, "stream": True, "max_tokens": 6, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            openai_side.url + "/v1/chat/completions",
            json=body,
            headers={"X-Request-ID": request_id, "X-Sim-Gzip": "1"},
        )
    assert resp.headers.get("content-encoding") == "gzip"
    assert b'"usage"' in resp.content  # httpx decoded it: the client got valid gzip
    rec = await openai_side.record(request_id)
    assert rec.usage_source == "reported" and rec.completion_tokens == 6


async def test_a_crash_in_the_sidecars_own_code_is_a_proxy_error_answered_in_dialect(
    openai_side: RunningSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    import addons.meter

    def broken(method: str, path: str, body: bytes) -> Any:
        raise ValueError("parser bug")

    monkeypatch.setattr(addons.meter, "parse_request", broken)  # a bug in our request parsing
    r_openai, r_ollama = rid(), rid()
    async with httpx.AsyncClient() as http:
        oa = await http.post(
            openai_side.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": r_openai}
        )
        ol = await http.post(openai_side.url + "/api/chat", json=CHAT, headers={"X-Request-ID": r_ollama})
    # Not sent on half-handled: the sidecar answers itself, in the client's dialect.
    assert oa.status_code == 500 and oa.headers["x-request-id"] == r_openai
    assert oa.json()["error"]["message"].startswith("the sidecar failed to handle this request")
    assert oa.json()["error"]["type"] == "server_error"
    assert ol.status_code == 500 and ol.json()["error"].startswith("the sidecar failed")
    for request_id in (r_openai, r_ollama):
        rec = await openai_side.record(request_id)
        assert (rec.outcome, rec.status) == ("proxy_error", 500)
        assert rec.error == "sidecar failed in Meter.request: ValueError: parser bug"
    assert openai_side.count == 2  # exactly one record each


async def test_a_flow_killed_inside_the_proxy_is_a_proxy_error(openai_side: RunningSidecar) -> None:
    class Killer:  # any addon that ends a flow, e.g. an operator's script
        def request(self, flow: Any) -> None:
            if flow.request.headers.get("x-kill"):
                flow.kill()

    openai_side.sidecar.master.addons.add(Killer())
    request_id = rid()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):  # killed: no answer at all, as mitmproxy does
            await http.post(
                openai_side.url + "/v1/chat/completions",
                json=CHAT,
                headers={"X-Request-ID": request_id, "x-kill": "1"},
            )
    rec = await openai_side.record(request_id)
    assert rec.outcome == "proxy_error" and rec.error == "Connection killed."
