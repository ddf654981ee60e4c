"""Flows crafted with mitmproxy's own test helpers, as the proxy hands them to an addon's hooks."""

from __future__ import annotations

import json
import time
from typing import Any

from mitmproxy import flow, http
from mitmproxy.test import tflow

UPSTREAM_HOST = "llm.internal"


def llm_flow(
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> http.HTTPFlow:
    """A request from a client to the sidecar in reverse mode (host already the upstream's)."""
    f = tflow.tflow()
    req = f.request
    req.method, req.path = method, path
    req.scheme, req.host, req.port = "http", UPSTREAM_HOST, 8000
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    req.headers = http.Headers(
        host=f"{UPSTREAM_HOST}:8000", content_type="application/json", **(headers or {})
    )
    req.raw_content = raw
    req.timestamp_start = time.time() - 0.05
    return f


def respond(
    f: http.HTTPFlow,
    status: int = 200,
    body: dict[str, Any] | bytes = b"",
    content_type: str = "application/json",
) -> http.Response:
    """Give `f` the upstream's response headers and (for buffered responses) body."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    f.response = http.Response.make(status, raw, {"Content-Type": content_type})
    f.response.timestamp_end = time.time()
    return f.response


def fail(f: http.HTTPFlow, message: str) -> None:
    """End `f` the way mitmproxy ends a failed flow."""
    f.error = flow.Error(message)


def sse(*events: dict[str, Any] | str) -> bytes:
    """An SSE body: each event a `data:` line and a blank line ("[DONE]" passed as a string)."""
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events
    )


def chat_chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
