"""Strip mode: the client gets the stream it would get had the sidecar not asked for usage."""

from __future__ import annotations

import json
import re

import pytest

from agent.wire.events import (
    EventReader,
    StreamTally,
    read_llamacpp_object,
    read_ollama_object,
    read_openai_chunk,
    read_responses_event,
)
from agent.wire.stream import StreamMeter
from agent.wire.strip import (
    CUT,
    CUT_HOLD,
    DROP,
    HOLD,
    KEEP,
    NONE,
    UsageChunkStripper,
    Verdict,
    _value_end,
    merge_verdicts,
)
from agent.wire.usage import Usage
from tests.support.wire_transcripts import (
    CHAT,
    COMPLETIONS,
    LLAMACPP_CHAT_STREAM,
    LLAMACPP_CHAT_STREAM_PLAIN,
    LLAMACPP_CHAT_USAGE_EVENT,
    LLAMACPP_COMPLETION_STREAM,
    OLLAMA_CHAT_STREAM,
    OPENAI_CHAT_STREAM_NULL_USAGE,
    RESPONSES,
    RESPONSES_STREAM,
    SIZES,
    VLLM_CHAT_STREAM,
    VLLM_CHAT_USAGE_EVENT,
    VLLM_COMPLETION_STREAM,
    VLLM_COMPLETION_USAGE_EVENT,
    crlf,
    info_for,
    recorded,
    run,
    snapshot,
    unvarying,
)

# --------------------------------------------------------------------------- strip mode

# (path, stream with usage asked for, its usage-only event, what the client gets without asking)
STRIP_CASES = {
    "vllm-chat": (CHAT, VLLM_CHAT_STREAM, VLLM_CHAT_USAGE_EVENT, None),
    "vllm-chat-crlf": (CHAT, crlf(VLLM_CHAT_STREAM), crlf(VLLM_CHAT_USAGE_EVENT), None),
    "vllm-completion": (COMPLETIONS, VLLM_COMPLETION_STREAM, VLLM_COMPLETION_USAGE_EVENT, None),
    "openai-null-usage": (
        CHAT,
        OPENAI_CHAT_STREAM_NULL_USAGE,
        OPENAI_CHAT_STREAM_NULL_USAGE.split(b"\n\n")[3] + b"\n\n",
        None,
    ),
    # llama.cpp appends its timings to the last chunk: the usage-only one when usage is asked
    # for, the finish chunk otherwise. The timings go back onto the finish chunk.
    "llamacpp-chat": (CHAT, LLAMACPP_CHAT_STREAM, LLAMACPP_CHAT_USAGE_EVENT, LLAMACPP_CHAT_STREAM_PLAIN),
    "llamacpp-chat-crlf": (
        CHAT,
        crlf(LLAMACPP_CHAT_STREAM),
        crlf(LLAMACPP_CHAT_USAGE_EVENT),
        crlf(LLAMACPP_CHAT_STREAM_PLAIN),
    ),
}


@pytest.mark.parametrize("case", sorted(STRIP_CASES))
@pytest.mark.parametrize("size", SIZES)
def test_strip_removes_exactly_the_usage_only_event(case: str, size: int | None) -> None:
    path, data, usage_event, plain = STRIP_CASES[case]
    assert data.count(usage_event) == 1
    m, out = run(info_for(path, {"model": "m", "stream": True}), data, size, strip=True)
    assert out == (plain if plain is not None else data.replace(usage_event, b""))
    assert m.usage is not None and m.usage.total_tokens is not None  # still metered
    assert m.done is True
    plain, _ = run(info_for(path), data, size)
    assert snapshot(m) == snapshot(plain)


@pytest.mark.parametrize("size", SIZES)
def test_strip_leaves_usage_on_a_finish_chunk_in_place(size: int | None) -> None:
    # llama.cpp sends usage on the /v1/completions finish chunk on its own: not ours to take.
    m, out = run(info_for(COMPLETIONS), LLAMACPP_COMPLETION_STREAM, size, strip=True)
    assert out == LLAMACPP_COMPLETION_STREAM
    assert m.usage == Usage(5, 2, 7, cached_tokens=3, server_duration_ms=42.75)


def test_strip_holds_back_an_incomplete_event_until_finish() -> None:
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=True)
    first = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    assert m.feed(first + b'data: {"choices":[{"ind') == first
    assert m.feed(b"ex") == b""
    assert m.feed(b'":0,"delta":{"content":"b"}}]}\n') == b""
    assert m.finish() == b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n'
    assert m.content_events == 2


def test_strip_finish_forwards_an_unterminated_usage_event_as_is() -> None:
    tail = VLLM_CHAT_USAGE_EVENT[:-2]  # the connection closed before its blank line
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=True)
    assert m.feed(tail) == b""
    assert m.finish() == tail
    assert m.usage is not None and m.usage.prompt_tokens == 12


def test_strip_is_off_for_ollama_and_responses() -> None:
    for path, data in (("/api/chat", OLLAMA_CHAT_STREAM), (RESPONSES, RESPONSES_STREAM)):
        m = StreamMeter(info_for(path), strip_usage_chunk=True)
        assert m.feed(data) is data
        assert m.finish() == b""


def test_strip_keeps_usage_only_event_mixed_with_other_data() -> None:
    # Two data lines in one event: the event carries more than usage, so it stays.
    event = (
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"z"}}]}\n\n'
    )
    _, out = run(info_for(CHAT), event, 1, strip=True)
    assert out == event


def test_strip_holds_a_finish_chunk_until_the_next_event() -> None:
    # The finish chunk may need the usage-only chunk's timings: it waits for the next event.
    finish, usage_event, done = LLAMACPP_CHAT_STREAM.split(b"\n\n")[2:5]
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=True)
    assert m.feed(finish + b"\n\n") == b""
    out = m.feed(usage_event + b"\n\n" + done + b"\n\n")
    assert out == LLAMACPP_CHAT_STREAM_PLAIN.split(b"\n\n", 2)[2]
    assert m.finish() == b""
    assert m.usage == Usage(9, 1, 10, cached_tokens=0, server_duration_ms=25.5)


def test_strip_releases_a_held_finish_chunk_unchanged() -> None:
    finish = VLLM_CHAT_STREAM.split(b"\n\n")[3] + b"\n\n"
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=True)
    assert m.feed(finish) == b""
    assert m.finish() == finish  # the stream ended before anything else came
    m = StreamMeter(info_for(CHAT), strip_usage_chunk=True)
    assert m.feed(finish) == b""
    assert m.feed(b"data: [DONE]\n\n") == finish + b"data: [DONE]\n\n"  # no usage asked: as is


def test_strip_keeps_comments_after_a_held_finish_chunk_in_order() -> None:
    finish, usage_event, done = LLAMACPP_CHAT_STREAM.split(b"\n\n")[2:5]
    data = finish + b"\n\n: ping\n\n" + usage_event + b"\n\n" + done + b"\n\n"
    expected = LLAMACPP_CHAT_STREAM_PLAIN.split(b"\n\n")[2] + b"\n\n: ping\n\ndata: [DONE]\n\n"
    for size in SIZES:
        _, out = run(info_for(CHAT), data, size, strip=True)
        assert out == expected


def test_strip_moves_every_last_chunk_member_in_order() -> None:
    # llama.cpp also flags a tool call cut short on the last chunk; a string value with
    # braces and escaped quotes must not confuse the span.
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"id":"c"}\n\n'
    usage_event = (
        b'data: {"choices":[],"id":"c","usage":{"prompt_tokens":2,"completion_tokens":3,'
        b'"total_tokens":5},"timings":{"note":"a \\"}\\" b","prompt_ms":1.0,"predicted_ms":2.0},'
        b'"__tool_call_incomplete":true}\n\n'
    )
    _, out = run(info_for(CHAT), finish + usage_event + b"data: [DONE]\n\n", 3, strip=True)
    assert out == (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"id":"c",'
        b'"timings":{"note":"a \\"}\\" b","prompt_ms":1.0,"predicted_ms":2.0},'
        b'"__tool_call_incomplete":true}\n\ndata: [DONE]\n\n'
    )


def test_strip_leaves_a_finish_chunk_that_has_its_timings_alone() -> None:
    # A server that puts the timings on the finish chunk anyway: nothing is held or moved.
    m, out = run(info_for(COMPLETIONS), LLAMACPP_COMPLETION_STREAM, None, strip=True)
    assert out == LLAMACPP_COMPLETION_STREAM
    m = StreamMeter(info_for(COMPLETIONS), strip_usage_chunk=True)
    last = LLAMACPP_COMPLETION_STREAM.split(b"\n\n")[2] + b"\n\n"
    assert m.feed(last) == last


# Ollama's /v1/completions with stream_options.include_usage (middleware/openai.go,
# CompleteWriter): every chunk gets an all-zero "usage", then a usage-only chunk comes.
OLLAMA_COMPLETION_USAGE_STREAM = (
    b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[{"text":'
    b'"The","index":0,"finish_reason":null}],"model":"llama3.2","system_fingerprint":"fp_ollama",'
    b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}\n\n'
    b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[{"text":'
    b'" sky","index":0,"finish_reason":null}],"model":"llama3.2","system_fingerprint":"fp_ollama",'
    b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}\n\n'
    b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[{"text":'
    b'"","index":0,"finish_reason":"stop"}],"model":"llama3.2","system_fingerprint":"fp_ollama",'
    b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}\n\n'
    b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[],'
    b'"model":"llama3.2","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":26,'
    b'"completion_tokens":2,"total_tokens":28}}\n\n'
    b"data: [DONE]\n\n"
)
OLLAMA_COMPLETION_STREAM = re.sub(
    rb',"usage":\{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0\}', b"",
    OLLAMA_COMPLETION_USAGE_STREAM.replace(OLLAMA_COMPLETION_USAGE_STREAM.split(b"\n\n")[3] + b"\n\n", b""),
)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_strip_cuts_ollamas_placeholder_usage_from_every_chunk(size: int | None) -> None:
    m, out = run(info_for(COMPLETIONS), OLLAMA_COMPLETION_USAGE_STREAM, size, strip=True)
    assert out == OLLAMA_COMPLETION_STREAM  # what Ollama sends a client that did not ask
    assert b"usage" not in out
    assert m.usage == Usage(26, 2, 28)
    assert (m.content_events, m.done, m.finish_reason) == (2, True, "stop")


@pytest.mark.parametrize("size", SIZES)
def test_placeholder_usage_is_not_usage(size: int | None) -> None:
    # The client asked for usage itself: it gets the zeros as sent, but they are not counts.
    # A stream cut before the real usage chunk must be estimated, not recorded as 0 tokens.
    m, out = run(info_for(COMPLETIONS), OLLAMA_COMPLETION_USAGE_STREAM, size)
    assert out == OLLAMA_COMPLETION_USAGE_STREAM
    assert m.usage == Usage(26, 2, 28)
    cut = OLLAMA_COMPLETION_USAGE_STREAM.split(b"\n\n")[0] + b"\n\n"
    m, _ = run(info_for(COMPLETIONS), cut, size)
    assert (m.usage, m.content_events) == (None, 1)


@pytest.mark.parametrize("size", SIZES)
def test_recorded_llamacpp_chat_stream_strip_gives_the_plain_stream(size: int | None) -> None:
    asked = recorded("chat_stream_include_usage.sse")
    m, out = run(info_for(CHAT, {"model": "m", "stream": True}), asked, size, strip=True)
    assert unvarying(out) == unvarying(recorded("chat_stream.sse"))
    assert b'"timings":' in out.split(b"\n\n")[-3]  # on the finish chunk, as without include_usage
    assert m.usage is not None
    assert (m.usage.prompt_tokens, m.usage.completion_tokens, m.usage.cached_tokens) == (11, 4, 0)
    assert m.content_events == 4 and m.done


# --------------------------------------------------------------------------- verdicts

_CHOICE = '{"index":0,"delta":{"content":"a"},"finish_reason":null}'
_FINISH = '{"index":0,"delta":{},"finish_reason":"stop"}'
_ZEROS = '{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'
_COUNTS = '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}'


@pytest.mark.parametrize(
    ("chunk", "verdict"),
    [
        (f'{{"choices":[{_CHOICE}]}}', KEEP),
        (f'{{"choices":[{_CHOICE}],"usage":null}}', KEEP),
        (f'{{"choices":[],"usage":{_COUNTS}}}', DROP),  # the usage-only chunk
        (f'{{"usage":{_COUNTS}}}', KEEP),  # no "choices" at all: not the added chunk
        (f'{{"choices":[{_CHOICE}],"usage":{_ZEROS}}}', CUT),  # Ollama's placeholder
        (f'{{"choices":[{_FINISH}]}}', HOLD),
        (f'{{"choices":[{_FINISH}],"usage":null}}', HOLD),
        (f'{{"choices":[{_FINISH}],"usage":{_ZEROS}}}', CUT_HOLD),  # Ollama's finish chunk
        (f'{{"choices":[{_FINISH}],"usage":{_COUNTS}}}', KEEP),  # the server's own usage
        (f'{{"choices":[{_FINISH}],"timings":{{"prompt_ms":1.0}}}}', KEEP),  # its own timings
        ('{"error":{"message":"boom"}}', KEEP),
    ],
)
def test_openai_chunk_verdicts(chunk: str, verdict: Verdict) -> None:
    assert read_openai_chunk(StreamTally(), json.loads(chunk), b"") is verdict


@pytest.mark.parametrize(
    ("read", "data"),
    [
        (read_ollama_object, OLLAMA_CHAT_STREAM),
        (read_responses_event, RESPONSES_STREAM),
        (read_llamacpp_object, recorded("completion_stream.sse")),
    ],
)
def test_streams_that_are_never_stripped_keep_every_event(read: EventReader, data: bytes) -> None:
    tally = StreamTally()
    objects = [json.loads(line.removeprefix(b"data: ")) for line in data.split(b"\n") if b"{" in line]
    assert objects
    assert {read(tally, obj, b"") for obj in objects} == {KEEP}
    assert tally.done is True


def test_merge_verdicts_of_an_event_with_several_data_lines() -> None:
    every = list(Verdict)
    for v in every:
        assert merge_verdicts(NONE, v) is v
        assert merge_verdicts(v, NONE) is v
        if v is not NONE:
            # A usage-only line in an event that carries anything else: the event stays.
            assert merge_verdicts(DROP, v) is v
            assert merge_verdicts(v, DROP) is v
    assert merge_verdicts(CUT, HOLD) is CUT_HOLD
    assert merge_verdicts(HOLD, CUT) is CUT_HOLD
    assert merge_verdicts(KEEP, CUT) is CUT
    assert merge_verdicts(HOLD, KEEP) is HOLD
    assert merge_verdicts(CUT_HOLD, HOLD) is CUT_HOLD
    assert all(merge_verdicts(a, b) is merge_verdicts(b, a) for a in every for b in every)


@pytest.mark.parametrize("size", SIZES)
def test_strip_cuts_and_holds_an_event_whose_data_lines_say_both(size: int | None) -> None:
    event = (
        f'data: {{"choices":[{_CHOICE}],"usage":{_ZEROS}}}\n'.encode()
        + f'data: {{"choices":[{_FINISH}]}}\n\n'.encode()
    )
    usage_event = f'data: {{"choices":[],"usage":{_COUNTS}}}\n\n'.encode()
    m, out = run(info_for(CHAT), event + usage_event + b"data: [DONE]\n\n", size, strip=True)
    assert out == event.replace(f',"usage":{_ZEROS}'.encode(), b"") + b"data: [DONE]\n\n"
    assert m.usage == Usage(3, 2, 5)


def test_stripper_acts_on_verdicts() -> None:
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage_event = b'data: {"choices":[],"usage":{"total_tokens":5},"timings":{"predicted_ms":2.0}}\n\n'
    buf = bytearray(b"data: {}\n\n" + finish + b": ping\n\n" + usage_event)
    a, b, c, d = 10, 10 + len(finish), 10 + len(finish) + 8, len(buf)
    stripper = UsageChunkStripper()
    out: list[bytes] = []
    assert stripper.end_event(buf, 0, a, b, HOLD, out) == b  # the run before it goes out
    assert (out, stripper.held) == ([b"data: {}\n\n"], finish)
    assert stripper.end_event(buf, b, b, c, NONE, out) == c  # stays behind the held event
    assert stripper.held == finish + b": ping\n\n"
    assert stripper.end_event(buf, c, c, d, DROP, out) == d  # the timings move onto the finish
    assert out[1] == finish.replace(b"]}", b'],"timings":{"predicted_ms":2.0}}') + b": ping\n\n"
    assert stripper.held is None and stripper.release() == b""
    stripper.held = finish
    assert stripper.release() == finish and stripper.held is None


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b'{"a":"}"}', 9),  # a bracket inside a string is text
        (b'"ab\\"c",', 7),  # an escaped quote does not end a string
        (b'"ab\\\\",', 6),  # an escaped backslash does not escape the quote after it
        (b'{"a":[1,{"b":"]"}]},"c":1', 19),
        (b"[[],{}]]", 7),
        (b"12,", 2),
        (b"null}", 4),
        (b'{"a":"no end', -1),
        (b'"ab\\', -1),  # cut off after a backslash
        (b'{"a":{}', -1),
        (b"", -1),
    ],
)
def test_value_end_of_the_member_strip_mode_edits(data: bytes, end: int) -> None:
    assert _value_end(data, 0) == end
    assert _value_end(b"xx" + data, 2) == (end + 2 if end >= 0 else -1)
