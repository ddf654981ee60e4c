"""StreamMeter over recorded-looking wire bytes, whole and byte by byte; strip mode is in
test_wire_strip.py.
"""

from __future__ import annotations

import json

import pytest

from agent.wire.stream import StreamMeter
from agent.wire.usage import Usage
from tests.support.wire_transcripts import (
    CHAT,
    COMPLETIONS,
    LLAMACPP_CHAT_STREAM,
    LLAMACPP_COMPLETION_STREAM,
    OLLAMA_CHAT_STREAM,
    OLLAMA_GENERATE_STREAM,
    OLLAMA_STREAM_ERROR,
    OPENAI_CHAT_STREAM_NULL_USAGE,
    RESPONSES,
    RESPONSES_ERROR_EVENT_STREAM,
    RESPONSES_FAILED_STREAM,
    RESPONSES_STREAM,
    SIZES,
    SSE_ERROR_STREAM,
    VLLM_CHAT_STREAM,
    VLLM_COMPLETION_STREAM,
    VLLM_REASONING_STREAM,
    crlf,
    info_for,
    recorded,
    run,
    snapshot,
)

# --------------------------------------------------------------------------- streams


STREAM_CASES = {
    "ollama-generate": ("/api/generate", OLLAMA_GENERATE_STREAM),
    "ollama-chat": ("/api/chat", OLLAMA_CHAT_STREAM),
    "vllm-chat": (CHAT, VLLM_CHAT_STREAM),
    "openai-chat-null-usage": (CHAT, OPENAI_CHAT_STREAM_NULL_USAGE),
    "vllm-reasoning": (CHAT, VLLM_REASONING_STREAM),
    "vllm-completion": (COMPLETIONS, VLLM_COMPLETION_STREAM),
    "llamacpp-completion": (COMPLETIONS, LLAMACPP_COMPLETION_STREAM),
    "llamacpp-chat": (CHAT, LLAMACPP_CHAT_STREAM),
    "responses": (RESPONSES, RESPONSES_STREAM),
    "responses-crlf": (RESPONSES, crlf(RESPONSES_STREAM)),
    "vllm-chat-crlf": (CHAT, crlf(VLLM_CHAT_STREAM)),
    "ollama-crlf": ("/api/chat", crlf(OLLAMA_CHAT_STREAM)),
}


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
@pytest.mark.parametrize("size", SIZES)
def test_chunking_does_not_change_the_result(case: str, size: int | None) -> None:
    path, data = STREAM_CASES[case]
    info = info_for(path)
    whole, _ = run(info, data, None)
    meter, out = run(info, data, size)
    assert out == data
    assert snapshot(meter) == snapshot(whole)
    assert meter.done is True


def test_ollama_generate_stream() -> None:
    m, _ = run(info_for("/api/generate"), OLLAMA_GENERATE_STREAM, 7)
    assert (m.content_events, m.output_chars) == (3, len("The sky is blue."))
    assert m.usage == Usage(26, 259, 285, server_duration_ms=10706.818083)
    assert (m.done, m.finish_reason, m.model, m.error) == (True, "stop", "llama3.2", None)


def test_ollama_chat_stream_thinking_and_omitted_prompt_count() -> None:
    m, _ = run(info_for("/api/chat"), OLLAMA_CHAT_STREAM, 1)
    # thinking counts as generated content; the role-only empty content does not
    assert (m.content_events, m.output_chars) == (3, len("Hmm.") + len("Hello!"))
    assert m.usage is not None
    assert (m.usage.prompt_tokens, m.usage.completion_tokens, m.usage.total_tokens) == (0, 3, 3)
    assert m.usage.server_duration_ms == pytest.approx(4883.583458)
    assert m.finish_reason == "stop"


def test_ollama_done_object_without_any_counts() -> None:
    # Loading a model: {"done": true, "done_reason": "load"} and no metrics at all.
    data = b'{"model":"llama3.2","created_at":"2024-09-12T21:17:29.110811Z","response":"",'
    data += b'"done":true,"done_reason":"load"}'  # and no trailing newline
    m, _ = run(info_for("/api/generate"), data, 2)
    assert m.done and m.finish_reason == "load"
    assert m.usage == Usage(0, 0, 0)
    assert m.content_events == 0


@pytest.mark.parametrize("size", SIZES)
def test_ollama_stream_error_line(size: int | None) -> None:
    m, _ = run(info_for("/api/generate"), OLLAMA_STREAM_ERROR, size)
    assert m.error == "an error was encountered while running the model: unexpected EOF"
    assert (m.content_events, m.done, m.usage) == (1, False, None)


def test_vllm_chat_stream_role_chunk_is_not_content() -> None:
    m, _ = run(info_for(CHAT), VLLM_CHAT_STREAM, 2)
    assert (m.content_events, m.output_chars) == (2, len("Hello there"))
    assert m.usage == Usage(12, 2, 14, cached_tokens=8)
    assert (m.done, m.finish_reason, m.model) == (True, "stop", "Qwen/Qwen2.5-1.5B-Instruct")


def test_openai_chat_null_usage_and_reasoning_details() -> None:
    m, _ = run(info_for(CHAT), OPENAI_CHAT_STREAM_NULL_USAGE, 7)
    assert m.usage == Usage(20, 70, 90, cached_tokens=0, reasoning_tokens=64)
    assert (m.content_events, m.output_chars) == (1, 2)


def test_vllm_reasoning_deltas_count_as_content() -> None:
    m, _ = run(info_for(CHAT), VLLM_REASONING_STREAM, 1)
    assert (m.content_events, m.output_chars) == (3, len("Let me think42"))
    assert (m.usage, m.finish_reason) == (None, "length")


def test_vllm_completion_stream() -> None:
    m, _ = run(info_for(COMPLETIONS), VLLM_COMPLETION_STREAM, 7)
    assert (m.content_events, m.output_chars) == (2, len(" Paris."))
    assert m.usage == Usage(4, 2, 6)


def test_llamacpp_completion_usage_and_timings_on_finish_chunk() -> None:
    m, _ = run(info_for(COMPLETIONS), LLAMACPP_COMPLETION_STREAM, 1)
    assert m.usage == Usage(5, 2, 7, cached_tokens=3, server_duration_ms=42.75)
    assert (m.content_events, m.output_chars, m.finish_reason) == (2, len("Once upon"), "length")


def test_llamacpp_chat_timings_on_usage_chunk() -> None:
    m, _ = run(info_for(CHAT), LLAMACPP_CHAT_STREAM, 7)
    assert m.usage == Usage(9, 1, 10, cached_tokens=0, server_duration_ms=25.5)
    assert m.content_events == 1  # the role chunk has "content": null


def test_responses_stream() -> None:
    m, _ = run(info_for(RESPONSES), RESPONSES_STREAM, 7)
    assert (m.content_events, m.output_chars) == (3, len("Think") + len("Hi there"))
    assert m.usage == Usage(37, 11, 48, cached_tokens=5, reasoning_tokens=3)
    assert (m.done, m.finish_reason, m.model, m.error) == (True, "completed", "gpt-oss-20b", None)


@pytest.mark.parametrize("size", SIZES)
def test_responses_failed(size: int | None) -> None:
    m, _ = run(info_for(RESPONSES), RESPONSES_FAILED_STREAM, size)
    assert m.done is True and m.finish_reason == "failed"
    assert m.error == "The model failed to generate a response."
    assert m.usage is None


def test_responses_error_event() -> None:
    m, _ = run(info_for(RESPONSES), RESPONSES_ERROR_EVENT_STREAM, 2)
    assert (m.error, m.done) == ("Something went wrong", False)


def test_responses_incomplete_is_terminal() -> None:
    data = (
        b"event: response.incomplete\n"
        b'data: {"type":"response.incomplete","sequence_number":4,"response":{"id":"r",'
        b'"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},'
        b'"error":null,"usage":{"input_tokens":3,"output_tokens":16,"total_tokens":19}}}\n\n'
    )
    m, _ = run(info_for(RESPONSES), data, 1)
    assert (m.done, m.finish_reason, m.error) == (True, "incomplete", None)
    assert m.usage == Usage(3, 16, 19)


@pytest.mark.parametrize("size", SIZES)
def test_sse_error_event(size: int | None) -> None:
    m, _ = run(info_for(CHAT), SSE_ERROR_STREAM, size)
    assert m.error == "The decoder prompt is too long"
    assert (m.content_events, m.done) == (1, True)


def test_legacy_llamacpp_error_field() -> None:
    data = b'error: {"code":500,"message":"slot unavailable","type":"server_error"}\n\n'
    m, _ = run(info_for(CHAT), data, 3)
    assert m.error == "slot unavailable"


def test_tool_call_deltas_count_as_content() -> None:
    data = (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
        b'"type":"function","function":{"name":"get_weather","arguments":""}}]}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        b'"function":{"arguments":"{\\"city\\":\\"Paris\\"}"}}]}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    m, _ = run(info_for(CHAT), data, 7)
    assert m.content_events == 2
    assert m.output_chars == len("get_weather") + len('{"city":"Paris"}')
    assert m.finish_reason == "tool_calls"


def test_unterminated_last_event_is_parsed_at_finish() -> None:
    data = VLLM_CHAT_STREAM[: -len(b"\n\n")]  # "data: [DONE]" and then the connection closes
    m, _ = run(info_for(CHAT), data, None)
    assert m.done is True and m.usage is not None


def test_sse_comments_and_other_fields_are_ignored() -> None:
    data = (
        b": keep-alive\n\n"
        b"id: 1\nretry: 1000\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        b"data:[DONE]\n\n"  # no space after the colon is valid SSE
    )
    m, _ = run(info_for(CHAT), data, 1)
    assert (m.content_events, m.output_chars, m.done) == (1, 1, True)


# --------------------------------------------------------------------------- malformed input

MALFORMED_NDJSON = (
    b'{"model":"llama3.2","response":"ok","done":false}\n'
    b'{"model":"llama3.2","response":"tru\n'  # a line cut in half
    b"not json at all\n"
    b"[1,2,3]\n"
    b'"a string"\n'
    b"\xff\xfe\xfd\n"
    b"\n"
    b'{"model":"llama3.2","message":"not an object","response":7,"done":"yes"}\n'
    b'{"model":"llama3.2","response":"!","done":false}\n'
)

MALFORMED_SSE = (
    b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"tru\n\n'
    b"data: not json\n\n"
    b"data: 42\n\n"
    b"data: \xff\xfe\n\n"
    b'data: {"choices":"nope","usage":"nope"}\n\n'
    b'data: {"choices":[7,null,{"delta":"x","text":5}]}\n\n'
    b"garbage line without a field\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\n'
)


@pytest.mark.parametrize("size", SIZES)
def test_malformed_ndjson_counts_as_nothing(size: int | None) -> None:
    m, out = run(info_for("/api/generate"), MALFORMED_NDJSON, size)
    assert out == MALFORMED_NDJSON
    assert (m.content_events, m.output_chars) == (2, 3)
    assert (m.usage, m.done, m.error) == (None, False, None)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("strip", [False, True])
def test_malformed_sse_counts_as_nothing(size: int | None, strip: bool) -> None:
    m, out = run(info_for(CHAT), MALFORMED_SSE, size, strip=strip)
    assert out == MALFORMED_SSE  # nothing in it is a usage-only event: all forwarded
    assert (m.content_events, m.output_chars) == (2, 3)
    assert (m.usage, m.done, m.error) == (None, False, None)


@pytest.mark.parametrize("kind", ["/api/chat", CHAT, RESPONSES])
def test_binary_noise_never_raises(kind: str) -> None:
    noise = bytes(range(256)) * 8 + b"\n\n\r\n" + bytes(reversed(range(256))) * 3
    m, out = run(info_for(kind), noise, 7)
    assert out == noise
    assert m.usage is None and m.content_events == 0


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (CHAT, b'{"object":"error","message":"Stream options can only be defined when '
               b'`stream=True`.","type":"BadRequestError","param":null,"code":400}',
         "Stream options can only be defined when `stream=True`."),
        (CHAT, b'{"error":{"message":"boom","type":"server_error","code":500}}', "boom"),
        (RESPONSES, b'{"error":{"message":"no such model","type":"invalid_request_error"}}',
         "no such model"),
    ],
)  # fmt: skip
def test_plain_json_error_body_fed_to_the_meter(path: str, body: bytes, message: str) -> None:
    m, out = run(info_for(path), body, 3, strip=path == CHAT)
    assert out == body
    assert m.error == message


def test_plain_chat_completion_body_fed_to_the_meter() -> None:
    body = (
        b'{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )
    m, _ = run(info_for(CHAT), body, 5)
    assert (m.usage, m.output_chars, m.finish_reason) == (Usage(3, 1, 4), 5, "stop")


@pytest.mark.parametrize("strip", [False, True])
def test_feed_after_finish_is_inert(strip: bool) -> None:
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=strip)
    m.feed(VLLM_CHAT_STREAM)
    assert m.finish() == b""
    before = snapshot(m)
    chunk = b'data: {"choices":[{"delta":{"content":"late"}}]}\n\n'
    assert m.feed(chunk) is chunk
    assert m.finish() == b""
    assert snapshot(m) == before


# --------------------------------------------------------------------------- llama.cpp, recorded


@pytest.mark.parametrize("size", SIZES)
def test_recorded_llamacpp_native_completion_stream(size: int | None) -> None:
    data = recorded("completion_stream.sse")
    m, out = run(info_for("/completion", {"prompt": "Once upon a time", "stream": True}), data, size)
    assert out == data
    final = json.loads(data.split(b"\n\n")[-2][len(b"data: ") :])
    timings = final["timings"]
    assert m.usage == Usage(
        5, 3, 8, cached_tokens=0, server_duration_ms=timings["prompt_ms"] + timings["predicted_ms"]
    )
    assert (m.content_events, m.output_chars) == (3, len(", there was"))
    assert (m.done, m.finish_reason, m.model) == (True, "limit", "models/gemma-3-270m-q4_k_m.gguf")


@pytest.mark.parametrize("size", SIZES)
def test_recorded_llamacpp_native_completion_stream_of_two_prompts(size: int | None) -> None:
    # One result per prompt, interleaved by "index", separated by "data: null".
    data = recorded("completion_two_prompts_stream.sse")
    m, _ = run(info_for("/completion", {"prompt": ["a", "b"], "stream": True}), data, size)
    assert m.usage is not None
    assert (m.usage.prompt_tokens, m.usage.completion_tokens, m.usage.total_tokens) == (9, 4, 13)
    assert m.content_events == 4 and m.done
