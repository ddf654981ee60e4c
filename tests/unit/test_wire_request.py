"""Request classification and parsing, and the include_usage the sidecar adds."""

from __future__ import annotations

import json

import pytest

from agent.wire.request import RequestInfo, add_include_usage, classify, parse_request, should_inject_usage
from tests.support.wire_transcripts import CHAT, COMPLETIONS, RESPONSES, info_for

# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/generate", ("ollama", "completion")),
        ("POST", "/api/chat", ("ollama", "chat")),
        ("POST", "/api/embed", ("ollama", "embedding")),
        ("POST", "/api/embeddings", ("ollama", "embedding")),
        ("POST", "/api/pull", ("ollama", "other")),
        ("GET", "/api/tags", ("ollama", "other")),
        ("GET", "/api/chat", ("ollama", "other")),
        ("POST", "/v1/chat/completions", ("openai", "chat")),
        ("post", "/v1/chat/completions?api-version=1", ("openai", "chat")),
        ("POST", "/v1/completions", ("openai", "completion")),
        ("POST", "/v1/embeddings", ("openai", "embedding")),
        ("POST", "/v1/responses", ("openai", "responses")),
        # llama.cpp: the OpenAI routes without /v1, and its native completion API
        ("POST", "/chat/completions", ("openai", "chat")),
        ("POST", "/completions", ("openai", "completion")),
        ("POST", "/embeddings", ("openai", "embedding")),
        ("POST", "/responses", ("openai", "responses")),
        ("POST", "/completion", ("openai", "completion")),
        ("POST", "/infill", ("openai", "completion")),
        ("GET", "/completion", ("openai", "other")),
        ("GET", "/metrics", ("openai", "other")),
        ("GET", "/v1/models", ("openai", "other")),
        ("GET", "/v1/chat/completions", ("openai", "other")),
        ("POST", "/tokenize", ("openai", "other")),
        ("GET", "/health", ("openai", "other")),
        ("POST", "/apix/generate", ("openai", "other")),
        ("GET", "/", ("openai", "other")),
    ],
)
def test_classify(method: str, path: str, expected: tuple[str, str]) -> None:
    assert classify(method, path) == expected


# --------------------------------------------------------------------------- parse_request


def test_request_ollama_generate_streams_by_default() -> None:
    body = b'{"model":"llama3.2","prompt":"Why is the sky blue?","system":"Be brief."}'
    info = parse_request("POST", "/api/generate", body)
    assert (info.dialect, info.operation, info.endpoint) == (
        "ollama",
        "completion",
        "/api/generate",
    )
    assert info.model == "llama3.2"
    assert info.stream is True
    assert "Why is the sky blue?" in info.prompt_text and "Be brief." in info.prompt_text
    assert info.error is None


@pytest.mark.parametrize(("stream", "expected"), [(False, False), (True, True), (None, True)])
def test_request_ollama_chat_stream_flag(stream: bool | None, expected: bool) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    info = parse_request("POST", "/api/chat", json.dumps(body).encode())
    assert info.stream is expected
    assert info.prompt_text == "hi"


def test_request_ollama_embeddings_never_stream() -> None:
    embed = parse_request("POST", "/api/embed", b'{"model":"all-minilm","input":["a","bb"]}')
    assert (embed.operation, embed.stream, embed.prompt_text) == ("embedding", False, "a\nbb")
    legacy = parse_request("POST", "/api/embeddings", b'{"model":"all-minilm","prompt":"ccc"}')
    assert (legacy.operation, legacy.stream, legacy.prompt_text) == ("embedding", False, "ccc")


def test_request_ollama_pull_streams_by_default() -> None:
    info = parse_request("POST", "/api/pull", b'{"model":"llama3.2"}')
    assert (info.operation, info.stream) == ("other", True)


def test_request_openai_chat_defaults_and_content_parts() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    info = parse_request("POST", CHAT, json.dumps(body).encode())
    assert (info.dialect, info.operation, info.model) == ("openai", "chat", "gpt-4o")
    assert info.stream is False and info.wants_usage is False
    assert info.prompt_text == "You are terse.\nWhat is this?"


def test_request_openai_stream_and_include_usage() -> None:
    body = b'{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}'
    info = parse_request("POST", CHAT, body)
    assert info.stream is True and info.wants_usage is True
    asked_not = parse_request("POST", CHAT, b'{"model":"m","stream":true}')
    assert asked_not.stream is True and asked_not.wants_usage is False


def test_request_openai_completion_list_prompt() -> None:
    info = parse_request("POST", COMPLETIONS, b'{"model":"m","prompt":["one","two",[1,2,3]]}')
    assert info.prompt_text == "one\ntwo"  # token-id prompts are not text


def test_request_openai_embeddings_never_stream() -> None:
    info = parse_request("POST", "/v1/embeddings", b'{"model":"e","input":"x","stream":true}')
    assert (info.operation, info.stream, info.prompt_text) == ("embedding", False, "x")


def test_request_responses_prompt_text() -> None:
    body = {
        "model": "gpt-oss-20b",
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "user", "content": "And bye?"},
        ],
        "stream": True,
    }
    info = parse_request("POST", RESPONSES, json.dumps(body).encode())
    assert (info.operation, info.stream) == ("responses", True)
    assert info.prompt_text == "Answer in French.\nHello\nBonjour\n42\nAnd bye?"
    plain = parse_request("POST", RESPONSES, b'{"model":"m","input":"Tell me a joke"}')
    assert (plain.prompt_text, plain.stream) == ("Tell me a joke", False)


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_request_empty_body(body: bytes) -> None:
    info = parse_request("GET", "/v1/models?x=1", body)
    assert info == RequestInfo("openai", "other", "/v1/models")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "m", ', "not valid JSON"),
        (b"model=m", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not"),
        (b'["model", "m"]', "JSON array, expected an object"),
        (b'"hello"', "JSON string, expected an object"),
        (b"42", "JSON number, expected an object"),
        (b"null", "JSON null, expected an object"),
    ],
)
def test_request_bad_bodies_keep_classification(body: bytes, fragment: str) -> None:
    info = parse_request("POST", "/api/chat", body)
    assert (info.dialect, info.operation, info.endpoint) == ("ollama", "chat", "/api/chat")
    assert info.error is not None and fragment in info.error
    assert info.model is None


def test_request_odd_field_types_are_ignored() -> None:
    body = b'{"model":7,"messages":"hi","stream":"yes","stream_options":[1]}'
    info = parse_request("POST", CHAT, body)
    assert info.model is None and info.stream is False and info.wants_usage is False
    assert info.prompt_text == "" and info.error is None


# --------------------------------------------------------------------------- add_include_usage


def test_add_include_usage_splices_without_reserializing() -> None:
    body = b'{"model": "m",  "stream": true, "messages": [{"role": "user", "content": "\\u00e9"}]}'
    out = add_include_usage(body)
    assert out.endswith(body[1:])  # the client's bytes are untouched after the splice
    doc = json.loads(out)
    assert doc["stream_options"] == {"include_usage": True}
    assert doc["messages"][0]["content"] == "é"


def test_add_include_usage_keeps_other_stream_options() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}'
    doc = json.loads(add_include_usage(body))
    assert doc["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    off = b'{"model":"m","stream":true,"stream_options":{"include_usage":false}}'
    assert json.loads(add_include_usage(off))["stream_options"] == {"include_usage": True}
    null = b'{"model":"m","stream":true,"stream_options":null}'
    assert json.loads(add_include_usage(null))["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}',  # already there
        b'{"model":"m"}',  # not streaming: vLLM rejects stream_options then
        b'{"model":"m","stream":false}',
        b"[1]",
        b"not json",
        b"",
    ],
)
def test_add_include_usage_leaves_body_alone(body: bytes) -> None:
    assert add_include_usage(body) == body


def test_should_inject_usage() -> None:
    body = {"model": "m", "stream": True}
    assert should_inject_usage(info_for(CHAT, body))
    assert should_inject_usage(info_for(COMPLETIONS, body))
    assert should_inject_usage(info_for("/chat/completions", body))  # llama.cpp without /v1
    assert not should_inject_usage(info_for(CHAT, {**body, "stream_options": {"include_usage": True}}))
    assert not should_inject_usage(info_for(CHAT, {"model": "m"}))  # not streamed
    assert not should_inject_usage(info_for(RESPONSES, body))
    assert not should_inject_usage(info_for("/api/chat", body))
    assert not should_inject_usage(info_for("/completion", body))  # llama.cpp native: reports anyway
    assert not should_inject_usage(parse_request("POST", CHAT, b"{nope"))
