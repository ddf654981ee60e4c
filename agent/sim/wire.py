"""Bytes on the wire: JSON, SSE and NDJSON framing, whole bodies and streamed ones."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from agent.sim.faults import Fault, abort, fault_of, stall, wants_gzip

__all__ = [
    "JSON",
    "JSON_UTF8",
    "NDJSON",
    "SSE_DONE",
    "SSE_UTF8",
    "StreamWire",
    "dumps",
    "ndjson",
    "rfc3339_nano",
    "send_body",
    "sse",
]

JSON: Final = "application/json"
JSON_UTF8: Final = "application/json; charset=utf-8"
NDJSON: Final = "application/x-ndjson"
SSE_UTF8: Final = "text/event-stream; charset=utf-8"
SSE_DONE: Final = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    """Compact JSON, as the Go and C++ servers write it (no spaces, UTF-8 left unescaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    """One NDJSON line."""
    return dumps(obj) + b"\n"


def rfc3339_nano(ns: int | None = None) -> str:
    """Go's time.RFC3339Nano in UTC: nanoseconds with trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


async def send_body(
    request: web.Request,
    body: bytes,
    content_type: str,
    *,
    stopping: asyncio.Event,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """A whole (non-streamed) body; `cut` and `stall` apply to successful answers."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if wants_gzip(request):
        body = gzip.compress(body)
        all_headers["Content-Encoding"] = "gzip"
    fault = fault_of(request)
    if status < 400 and fault in (Fault.CUT, Fault.STALL):
        resp = web.StreamResponse(status=status, headers=all_headers)
        if fault is Fault.CUT:
            resp.content_length = len(body)
        await resp.prepare(request)
        if fault is Fault.STALL:
            await stall(request, stopping)
        else:
            await resp.write(body[: len(body) // 2])
            await abort(request)
        return resp
    return web.Response(status=status, body=body, headers=all_headers)


class StreamWire:
    """A streamed response body: written and flushed chunk by chunk, optionally gzip'ed."""

    __slots__ = ("_gzip", "request", "response")

    def __init__(self, request: web.Request, content_type: str) -> None:
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": content_type})
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if wants_gzip(request) else None
        if self._gzip is not None:
            self.response.headers["Content-Encoding"] = "gzip"

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, data: bytes) -> None:
        if self._gzip is not None:
            data = self._gzip.compress(data) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        await self.response.write(data)

    async def close(self) -> None:
        if self._gzip is not None:
            await self.response.write(self._gzip.flush(zlib.Z_FINISH))
        await self.response.write_eof()
