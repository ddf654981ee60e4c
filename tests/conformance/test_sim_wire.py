"""Every byte the simulated servers send, frozen: one transcript per server, replayed and compared.

``tests/fixtures/sim/*.json`` holds what each simulated server (Ollama, vLLM, llama.cpp) answers
to a fixed sequence of requests over every route, stream shape, error and fault, with only the
values that differ between any two runs normalised (ids, timestamps, measured durations). A
change to the wire format shows up here as a diff; when the change is meant, rewrite the
transcripts with ``python -m tests.conformance.test_sim_wire`` and review the diff.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import zlib
from typing import Any

import httpx
import pytest

from agent.sim import SimulatedLLM
from tests.support import paths

FIXTURES = paths.FIXTURES / "sim"
SERVERS: dict[str, tuple[str, str]] = {
    "ollama": ("ollama", "vllm"),
    "vllm": ("openai", "vllm"),
    "llamacpp": ("openai", "llamacpp"),
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]
LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(40))}]
PARTS = [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}]

Case = tuple[str, str, Any, dict[str, str]]  # method, path, JSON body (or raw bytes), headers


def _openai_cases(model: str) -> list[Case]:
    chat = {"model": model, "messages": MESSAGES}
    usage = {"stream_options": {"include_usage": True}}
    cases: list[Case] = [
        ("GET", "/v1/models", None, {}),
        ("POST", "/v1/chat/completions", chat, {}),
        ("POST", "/v1/chat/completions", chat | {"max_tokens": 3}, {}),
        ("POST", "/v1/chat/completions", chat | {"max_completion_tokens": 2, "stream": True}, {}),
        ("POST", "/v1/chat/completions", chat | {"stream": True}, {}),
        ("POST", "/v1/chat/completions", chat | {"stream": True, "max_tokens": 3} | usage, {}),
        ("POST", "/v1/chat/completions", chat | {"stream": True} | usage, {"X-Sim-Tokens": "2"}),
        ("POST", "/v1/chat/completions", chat | {"stream": True, "max_tokens": 0}, {}),
        ("POST", "/v1/chat/completions", chat | {"stream": True}, {"X-Sim-Tokens": "0"}),
        ("POST", "/v1/chat/completions", chat | {"stream": False}, {"X-Sim-Tokens": "0"}),
        (
            "POST",
            "/v1/chat/completions",
            chat
            | {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            {"X-Sim-Tokens": "3"},
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat | {"stream": True, "stream_options": {}},
            {"X-Sim-Tokens": "2"},
        ),
        ("POST", "/v1/chat/completions", chat | usage, {}),
        ("POST", "/v1/chat/completions", chat | {"stream_options": "yes"}, {}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": PARTS, "max_tokens": 2}, {}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": LONG, "max_tokens": 2}, {}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": LONG, "max_tokens": 2}, {}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": []}, {}),
        ("POST", "/v1/chat/completions", {"model": model}, {}),
        ("POST", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1}, {}),
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": MESSAGES}, {}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": [{"content": 5}]}, {}),
        ("POST", "/v1/chat/completions", b'{"model": "x", "messages": [', {}),
        ("POST", "/v1/chat/completions", b"", {}),
        ("POST", "/v1/chat/completions", b"[1, 2]", {}),
        ("POST", "/v1/chat/completions", chat | {"max_tokens": 2.5}, {}),
        ("POST", "/v1/chat/completions", chat | {"max_tokens": True}, {}),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Tokens": "-1"}),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Tokens": "many"}),
        ("POST", "/v1/completions", {"model": model, "prompt": "Once upon a time", "max_tokens": 4}, {}),
        ("POST", "/v1/completions", {"model": model, "prompt": ["Once upon"], "stream": True}, {}),
        (
            "POST",
            "/v1/completions",
            {"model": model, "prompt": [1, 2, 3], "max_tokens": 2, "stream": True},
            {},
        ),
        (
            "POST",
            "/v1/completions",
            {"model": model, "prompt": "Hi", "max_tokens": 2, "stream": True} | usage,
            {},
        ),
        (
            "POST",
            "/v1/completions",
            {"model": model, "prompt": "Hi", "stream": True}
            | {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            {"X-Sim-Tokens": "2"},
        ),
        ("POST", "/v1/completions", {"model": model, "prompt": "Hi", "stream": True}, {"X-Sim-Tokens": "0"}),
        ("POST", "/v1/completions", {"model": model, "prompt": 5}, {}),
        ("POST", "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 0}, {}),
        ("POST", "/v1/completions", {"model": model, "prompt": "x", "max_tokens": -3}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": "one text"}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": ["one", "two, three"]}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": [5, 6, 7]}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": [[5, 6], "text"]}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": "x", "encoding_format": "base64"}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": "x", "encoding_format": "int8"}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": []}, {}),
        ("POST", "/v1/embeddings", {"model": model, "input": [{"a": 1}]}, {}),
        ("POST", "/v1/responses", {"model": model, "input": "Say hello.", "max_output_tokens": 3}, {}),
        (
            "POST",
            "/v1/responses",
            {"model": model, "input": "Say hello.", "instructions": "Be kind.", "metadata": {"k": "v"}},
            {"X-Sim-Tokens": "2"},
        ),
        (
            "POST",
            "/v1/responses",
            {"model": model, "input": "Say hello.", "stream": True, "max_output_tokens": 2},
            {},
        ),
        (
            "POST",
            "/v1/responses",
            {
                "model": model,
                "input": [
                    {"role": "user", "content": "hi"},
                    {"type": "function_call", "arguments": "{}"},
                    {"type": "function_call_output", "output": "42"},
                ],
                "stream": True,
            },
            {"X-Sim-Tokens": "2"},
        ),
        ("POST", "/v1/responses", {"model": model, "input": 5}, {}),
        ("POST", "/v1/responses", {"model": model, "input": [5]}, {}),
        ("POST", "/v1/nowhere", {}, {}),
        ("GET", "/v1/chat/completions", None, {}),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Fault": "error-500"}),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Fault": "error-429"}),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Fault": "bogus"}),
        ("POST", "/v1/chat/completions", chat | {"stream": True}, {"X-Sim-Fault": "cut"}),
        (
            "POST",
            "/v1/chat/completions",
            chat | {"stream": True},
            {"X-Sim-Fault": "cut", "X-Sim-Tokens": "0"},
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat | {"stream": True},
            {"X-Sim-Fault": "cut", "X-Sim-Tokens": "2"},
        ),
        ("POST", "/v1/chat/completions", chat, {"X-Sim-Fault": "cut"}),
        ("POST", "/v1/completions", {"model": model, "prompt": "x", "stream": True}, {"X-Sim-Fault": "cut"}),
        ("POST", "/v1/chat/completions", chat | {"stream": True}, {"X-Sim-Fault": "stall"}),
        (
            "POST",
            "/v1/chat/completions",
            chat | {"stream": True},
            {"X-Sim-Fault": "stall", "X-Sim-Tokens": "0"},
        ),
        ("GET", "/v1/models", None, {"X-Sim-Fault": "stall"}),
        ("POST", "/v1/chat/completions", chat | {"stream": True, "max_tokens": 3}, {"X-Sim-Gzip": "1"}),
        ("GET", "/v1/models", None, {"X-Sim-Gzip": "yes"}),
        ("POST", "/v1/chat/completions", {"model": "no-such-model"}, {"X-Sim-Gzip": "true"}),
        ("POST", "/v1/nowhere", {}, {"X-Sim-Fault": "error-429"}),
    ]
    return cases


def _ollama_cases() -> list[Case]:
    m = "llama3.2"
    chat = {"model": m, "messages": MESSAGES}
    return [
        ("GET", "/", None, {}),
        ("HEAD", "/", None, {}),
        ("GET", "/api/version", None, {}),
        ("GET", "/api/tags", None, {}),
        ("GET", "/api/ps", None, {}),
        ("POST", "/api/show", {"model": m}, {}),
        ("POST", "/api/show", {"name": "nomic-embed-text"}, {}),
        ("POST", "/api/show", {"model": "nope"}, {}),
        ("POST", "/api/show", {}, {}),
        ("POST", "/api/generate", {"model": m, "prompt": "Why?", "options": {"num_predict": 3}}, {}),
        ("POST", "/api/generate", {"model": m, "prompt": "Why?", "stream": False}, {}),
        (
            "POST",
            "/api/generate",
            {"model": m, "prompt": "Why?", "raw": True, "stream": False},
            {"X-Sim-Tokens": "2"},
        ),
        (
            "POST",
            "/api/generate",
            {"model": m, "prompt": "Again", "system": "Be kind.", "context": [1, 2, 3], "stream": False},
            {"X-Sim-Tokens": "2"},
        ),
        ("POST", "/api/generate", {"model": m, "prompt": "Why?"}, {"X-Sim-Tokens": "0"}),
        (
            "POST",
            "/api/generate",
            {"model": m, "prompt": "Why?", "options": {"num_predict": -1}},
            {"X-Sim-Tokens": "1"},
        ),
        ("POST", "/api/generate", {"model": m, "prompt": "x", "options": {"num_predict": "a"}}, {}),
        ("POST", "/api/generate", {"model": m, "prompt": "x", "options": []}, {}),
        ("POST", "/api/generate", {"model": m, "prompt": 5}, {}),
        ("POST", "/api/generate", {"model": m}, {}),
        ("POST", "/api/generate", {"model": m, "keep_alive": 0}, {}),
        ("GET", "/api/ps", None, {}),
        ("POST", "/api/chat", chat | {"options": {"num_predict": 3}}, {}),
        ("POST", "/api/chat", chat | {"stream": False}, {"X-Sim-Tokens": "4"}),
        ("POST", "/api/chat", {"model": m, "messages": PARTS, "stream": False}, {"X-Sim-Tokens": "1"}),
        ("POST", "/api/chat", {"model": m, "messages": []}, {}),
        ("POST", "/api/chat", {"model": m, "messages": [], "keep_alive": "0s"}, {}),
        ("POST", "/api/chat", {"model": m, "messages": "hi"}, {}),
        ("POST", "/api/chat", {"messages": MESSAGES}, {}),
        ("POST", "/api/chat", {"model": "no-such-model", "messages": MESSAGES}, {}),
        ("POST", "/api/chat", b'{"model": ', {}),
        ("POST", "/api/chat", b"", {}),
        ("POST", "/api/chat", b'"text"', {}),
        ("POST", "/api/embed", {"model": m, "input": ["first", "second text"]}, {}),
        ("POST", "/api/embed", {"model": m, "input": "first"}, {}),
        ("POST", "/api/embed", {"model": m}, {}),
        ("POST", "/api/embed", {"model": m, "input": 5}, {}),
        ("POST", "/api/embeddings", {"model": m, "prompt": "first"}, {}),
        ("POST", "/api/embeddings", {"model": m}, {}),
        ("POST", "/api/embeddings", {"model": m, "prompt": 5}, {}),
        ("GET", "/api/ps", None, {}),
        ("GET", "/v1/models/llama3.2", None, {}),
        ("GET", "/v1/models/library/nope", None, {}),
        ("GET", "/nowhere", None, {}),
        ("GET", "/api/chat", None, {}),
        ("POST", "/api/chat", chat, {"X-Sim-Fault": "error-500"}),
        ("POST", "/api/chat", chat, {"X-Sim-Fault": "error-429"}),
        ("POST", "/api/chat", chat, {"X-Sim-Fault": "nope"}),
        ("POST", "/api/chat", chat, {"X-Sim-Fault": "cut"}),
        ("POST", "/api/generate", {"model": m, "prompt": "hi"}, {"X-Sim-Fault": "cut"}),
        ("POST", "/api/chat", chat | {"stream": False}, {"X-Sim-Fault": "cut"}),
        ("POST", "/api/chat", chat, {"X-Sim-Fault": "stall"}),
        ("POST", "/api/chat", chat | {"options": {"num_predict": 2}}, {"X-Sim-Gzip": "1"}),
        ("GET", "/api/version", None, {"X-Sim-Gzip": "1"}),
        *_openai_cases(m),
    ]


def _vllm_extras(model: str) -> list[Case]:
    return [
        ("POST", "/tokenize", {"model": model, "messages": MESSAGES}, {}),
        ("POST", "/tokenize", {"model": model, "messages": MESSAGES, "add_generation_prompt": False}, {}),
        ("POST", "/tokenize", {"model": model, "prompt": "a b, c"}, {}),
        ("POST", "/tokenize", {"model": model, "prompt": "a b", "add_special_tokens": False}, {}),
        ("POST", "/tokenize", {"model": model}, {}),
        ("POST", "/tokenize", {"model": model, "messages": "x"}, {}),
        ("POST", "/tokenize", {"model": "nope", "prompt": "x"}, {}),
        ("GET", "/health", None, {}),
        ("GET", "/version", None, {}),
        ("GET", "/metrics", None, {}),
        ("GET", "/props", None, {}),
    ]


def _llamacpp_extras(model: str) -> list[Case]:
    return [
        ("POST", "/tokenize", {"content": "a b"}, {}),
        ("POST", "/tokenize", {"content": "a b", "add_special": True}, {}),
        ("POST", "/tokenize", {"prompt": "a b"}, {}),
        ("GET", "/health", None, {}),
        ("GET", "/props", None, {}),
        ("GET", "/version", None, {}),
        ("POST", "/completion", {"prompt": "Hi there", "n_predict": 3}, {}),
        ("POST", "/completion", {"prompt": "Hi there", "stream": True}, {"X-Sim-Tokens": "2"}),
        (
            "POST",
            "/completion",
            {"prompt": "Hi there", "n_predict": 0, "model": model},
            {"X-Sim-Tokens": "1"},
        ),
        ("POST", "/completion", {"prompt": 5}, {}),
        ("POST", "/completion", {"prompt": "x", "model": "nope"}, {}),
        ("POST", "/completion", {"prompt": "x", "stream": True}, {"X-Sim-Fault": "cut"}),
        ("GET", "/metrics", None, {}),
    ]


def cases(server: str) -> list[Case]:
    if server == "ollama":
        return _ollama_cases()
    extras = _vllm_extras if server == "vllm" else _llamacpp_extras
    return [*_openai_cases("sim-model"), *extras("sim-model")]


_NORMALISE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(chatcmpl|cmpl|embd|modelperm)-[0-9a-f]+"), r"\1-ID"),
    (re.compile(r"\b(resp|msg)_[0-9a-f]{32}"), r"\1_ID"),
    (re.compile(r'"(created|created_at)":\d+'), r'"\1":0'),
    (re.compile(r'"(created_at|expires_at|modified_at)":"[^"]+"'), r'"\1":"TS"'),
    (re.compile(r'"(total|load|prompt_eval|eval)_duration":\d+'), r'"\1_duration":1'),
    (re.compile(r'"(prompt|predicted)_(ms|per_token_ms|per_second)":[-0-9.e+]+'), r'"\1_\2":0'),
]


def normalise(text: str) -> str:
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    return text


async def exchange(http: httpx.AsyncClient, url: str, case: Case) -> dict[str, Any]:
    method, path, body, headers = case
    content = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    req_headers = {"Content-Type": "application/json", **headers} if content is not None else dict(headers)
    raw = b""
    end = "complete"
    status, resp_headers = 0, {}
    try:
        async with http.stream(method, url + path, content=content, headers=req_headers) as resp:
            status = resp.status_code
            resp_headers = {
                k: v for k, v in resp.headers.items() if k not in ("date", "server", "content-length")
            }
            chunks = resp.aiter_raw()
            while True:
                try:
                    raw += await asyncio.wait_for(anext(chunks), 0.3 if "stall" in str(headers) else 10)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    end = "stalled"
                    break
    except httpx.RemoteProtocolError:
        end = "cut"
    if resp_headers.get("content-encoding") == "gzip" and raw:
        raw = zlib.decompressobj(31).decompress(raw)
    text = normalise(raw.decode())
    if end == "cut" and not text.endswith("\n"):
        # A whole body cut half-way: where depends on the length of the values normalised away.
        text = text[:120]
    return {
        "request": f"{method} {path} {headers or ''} {body!r}"[:300],
        "status": status,
        "headers": resp_headers,
        "end": end,
        "body": text,
    }


async def transcript(server: str) -> list[dict[str, Any]]:
    dialect, flavor = SERVERS[server]
    sim = SimulatedLLM(dialect, flavor=flavor)
    await sim.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            return [await exchange(http, sim.url, case) for case in cases(server)]
    finally:
        await sim.stop()


@pytest.mark.parametrize("server", list(SERVERS))
async def test_wire_is_unchanged(server: str) -> None:
    expected = json.loads((FIXTURES / f"{server}.json").read_text())
    got = await transcript(server)
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert have == want, want["request"]


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for server in SERVERS:
        out = asyncio.run(transcript(server))
        (FIXTURES / f"{server}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"{server}: {len(out)} exchanges", file=sys.stderr)


if __name__ == "__main__":
    main()
