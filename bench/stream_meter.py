#!/usr/bin/env python3
"""CPU per streamed event of `StreamMeter.feed`, for each dialect and stream shape.

The streams are built from recorded and documented wire bytes (the shapes in
`tests/wire_transcripts.py` and the llama.cpp recordings in `tests/fixtures/llamacpp/`),
stretched to a realistic length by repeating their content events. Each one is fed the way it reaches the
stream callback: one chunk per event (servers flush every event), and in 97-byte pieces that
cut events apart (what a proxy or a slow link makes of them). Figures are event-loop thread
CPU (`time.thread_time`), so a busy box inflates them less than wall time; the medians of
several rounds are printed, with every round.

    python -O bench/stream_meter.py            # 7 rounds of 40 streams per shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from agent.wire.request import parse_request
from agent.wire.stream import StreamMeter

LLAMACPP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llamacpp"
PIECE = 97  # bytes per piece in the "pieces" chunking: not a divisor of any event's length


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    path: str
    strip: bool  # the sidecar asked for usage on the client's behalf (strip mode)
    events: list[bytes]  # the stream, one wire event (SSE event or NDJSON line) per item


def _stretch(head: list[bytes], content: list[bytes], tail: list[bytes], tokens: int) -> list[bytes]:
    body = [content[i % len(content)] for i in range(tokens)]
    return head + body + tail


def _sse_events(data: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def _ollama_line(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def shapes(tokens: int) -> list[Shape]:
    created = "2024-08-04T08:52:19.385406455-07:00"
    gen = [_ollama_line(model="llama3.2", created_at=created, response=t, done=False) for t in (" a", " b")]
    gen_done = _ollama_line(
        model="llama3.2", created_at=created, response="", done=True, done_reason="stop", context=[1, 2, 3],
        total_duration=10706818083, load_duration=6338219291, prompt_eval_count=26,
        prompt_eval_duration=130079000, eval_count=259, eval_duration=4232710000,
    )  # fmt: skip
    chat = [
        _ollama_line(
            model="qwen3:0.6b", created_at=created, message={"role": "assistant", "content": t}, done=False
        )
        for t in ("Hello", "!")
    ]
    chat_done = _ollama_line(
        model="qwen3:0.6b", created_at=created, message={"role": "assistant", "content": ""},
        done_reason="stop", done=True, total_duration=4883583458, eval_count=3, eval_duration=4535599000,
    )  # fmt: skip

    def vllm(content: str, finish: str = "null") -> bytes:
        return (
            b'data: {"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1735689600,'
            b'"model":"Qwen/Qwen2.5-1.5B-Instruct","choices":[{"index":0,"delta":{%s},'
            b'"logprobs":null,"finish_reason":%s}]}\n\n' % (content.encode(), finish.encode())
        )

    vllm_stream = _stretch(
        [vllm('"role":"assistant","content":""')],
        [vllm('"content":"Hello"'), vllm('"content":" there"')],
        [
            vllm('"content":""', '"stop"'),
            b'data: {"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1735689600,'
            b'"model":"Qwen/Qwen2.5-1.5B-Instruct","choices":[],"usage":{"prompt_tokens":12,'
            b'"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}\n\n',
            b"data: [DONE]\n\n",
        ],
        tokens,
    )

    def ollama_v1(text: str, finish: str = "null") -> bytes:
        return (
            b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[{"text":'
            b'"%s","index":0,"finish_reason":%s}],"model":"llama3.2","system_fingerprint":"fp_ollama",'
            b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}\n\n'
            % (text.encode(), finish.encode())
        )

    ollama_v1_stream = _stretch(
        [],
        [ollama_v1("The"), ollama_v1(" sky")],
        [
            ollama_v1("", '"stop"'),
            b'data: {"id":"cmpl-712","object":"text_completion","created":1735689600,"choices":[],'
            b'"model":"llama3.2","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":26,'
            b'"completion_tokens":2,"total_tokens":28}}\n\n',
            b"data: [DONE]\n\n",
        ],
        tokens,
    )

    lc_chat = _sse_events((LLAMACPP / "chat_stream_include_usage.sse").read_bytes())
    lc_native = _sse_events((LLAMACPP / "completion_stream.sse").read_bytes())

    def responses_delta(i: int) -> bytes:
        return (
            b"event: response.output_text.delta\n"
            b'data: {"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_1",'
            b'"output_index":0,"content_index":0,"delta":" there","logprobs":[]}\n\n' % i
        )

    responses = _stretch(
        [
            b"event: response.created\n"
            b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
            b'"object":"response","created_at":1741290958,"status":"in_progress","error":null,'
            b'"incomplete_details":null,"model":"gpt-oss-20b","output":[],"usage":null}}\n\n'
        ],
        [responses_delta(i) for i in range(1, 9)],
        [
            b"event: response.completed\n"
            b'data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_1",'
            b'"object":"response","created_at":1741290958,"status":"completed","error":null,'
            b'"incomplete_details":null,"model":"gpt-oss-20b","output":[],"usage":{"input_tokens":37,'
            b'"input_tokens_details":{"cached_tokens":5},"output_tokens":11,"output_tokens_details":'
            b'{"reasoning_tokens":3},"total_tokens":48}}}\n\n'
        ],
        tokens,
    )
    return [
        Shape("ollama /api/generate ndjson", "/api/generate", False, _stretch([], gen, [gen_done], tokens)),
        Shape("ollama /api/chat ndjson", "/api/chat", False, _stretch([], chat, [chat_done], tokens)),
        Shape("vllm chat, client asked usage", "/v1/chat/completions", False, vllm_stream),
        Shape("vllm chat, usage added: drop", "/v1/chat/completions", True, vllm_stream),
        Shape("ollama /v1/completions added: cut", "/v1/completions", True, ollama_v1_stream),
        Shape(
            "llama.cpp chat added: hold+move",
            "/v1/chat/completions",
            True,
            _stretch(lc_chat[:1], lc_chat[1:5], lc_chat[5:], tokens),
        ),
        Shape(
            "llama.cpp /completion native",
            "/completion",
            False,
            _stretch([], lc_native[:3], lc_native[3:], tokens),
        ),
        Shape("responses api", "/v1/responses", False, responses),
    ]


def chunkings(events: list[bytes]) -> dict[str, list[bytes]]:
    data = b"".join(events)
    return {
        "event": list(events),
        "pieces": [data[i : i + PIECE] for i in range(0, len(data), PIECE)],
    }


def measure(shape: Shape, chunks: list[bytes], streams: int) -> float:
    """Microseconds of thread CPU per event: a fresh meter per stream, every chunk, finish."""
    info = parse_request("POST", shape.path, b'{"model":"m","stream":true}')
    strip = shape.strip
    clock: Callable[[], float] = time.thread_time
    start = clock()
    for _ in range(streams):
        meter = StreamMeter(info, strip_usage_chunk=strip)
        feed = meter.feed
        for chunk in chunks:
            feed(chunk)
        meter.finish()
    return (clock() - start) / streams / len(shape.events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="content events per stream [256]")
    parser.add_argument("--streams", type=int, default=40, help="streams per round and cell [40]")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, cells interleaved [7]")
    args = parser.parse_args()
    cells = [
        (shape, how, chunks)
        for shape in shapes(args.tokens)
        for how, chunks in chunkings(shape.events).items()
    ]
    results: list[list[float]] = [[] for _ in cells]
    for shape, _, chunks in cells:  # warm up: imports, caches
        measure(shape, chunks, 2)
    for _ in range(args.rounds):
        for i, (shape, _, chunks) in enumerate(cells):
            results[i].append(measure(shape, chunks, args.streams))
    print(
        f"StreamMeter.feed, us of CPU per event: {args.tokens} content events a stream, {args.rounds} rounds"
    )
    print(f"{'shape':<36} {'chunks':<7} {'us/event':>8}   rounds")
    for (shape, how, _), values in zip(cells, results, strict=True):
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(f"{shape.name:<36} {how:<7} {statistics.median(values):>8.2f}   {rounds}")


if __name__ == "__main__":
    main()
