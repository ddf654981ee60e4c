"""The request headers that steer a simulated answer, and the faults they inject.

``X-Sim-Fault: error-500``
    answer 500 with an error body in the route's dialect.
``X-Sim-Fault: error-429``
    answer 429 (with ``Retry-After: 1``) and an error body in the route's dialect.
``X-Sim-Fault: cut``
    stream a few tokens (at most 3), then abort the TCP connection: no finish chunk, no
    ``done``, no ``[DONE]``, no chunked terminator. A non-streaming body is cut half-way
    through its announced ``Content-Length``.
``X-Sim-Fault: stall``
    send the headers and the first token, then nothing more until the client goes away (or the
    server stops, which aborts the connection).
``X-Sim-Tokens: N``
    generate N tokens instead of the default; still capped by the request's own limit.
``X-Sim-Gzip: 1``
    gzip the response body (``Content-Encoding: gzip``); streams are compressed incrementally
    with a sync flush per chunk, so each chunk is decodable on arrival.

A request's fault is decided once, by `decide_fault` in the server's middleware, and kept on
the request; the code that sends bodies and streams reads it back with `fault_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from typing import Any, Final

from aiohttp import web

from agent.sim.errors import SimError

__all__ = [
    "CUT_AFTER_TOKENS",
    "FAULTS",
    "Fault",
    "abort",
    "decide_fault",
    "fault_of",
    "requested_tokens",
    "stall",
    "wants_gzip",
]


class Fault(StrEnum):
    """What `X-Sim-Fault` asks for."""

    ERROR_500 = "error-500"
    ERROR_429 = "error-429"
    CUT = "cut"
    STALL = "stall"

    @property
    def error_status(self) -> int | None:
        """The HTTP status an error fault answers with; None for the faults that break a body."""
        return _ERROR_STATUS.get(self)


_ERROR_STATUS: Final = {Fault.ERROR_500: 500, Fault.ERROR_429: 429}
FAULTS: Final = tuple(fault.value for fault in Fault)
CUT_AFTER_TOKENS: Final = 3
# Recent aiohttp types request keys (and warns about plain strings); older releases take a string.
_FAULT: Final[Any] = (
    web.RequestKey("sidemeter_sim_fault", Fault) if hasattr(web, "RequestKey") else "sidemeter_sim_fault"
)


def decide_fault(request: web.Request) -> Fault | None:
    """The fault this request asks for, kept on the request for `fault_of`; 400 for an unknown one."""
    raw = request.headers.get("X-Sim-Fault", "").strip().lower()
    if not raw:
        return None
    if raw not in FAULTS:
        raise SimError(400, f"unknown X-Sim-Fault {raw!r}; use one of {', '.join(FAULTS)}")
    fault = request[_FAULT] = Fault(raw)
    return fault


def fault_of(request: web.Request) -> Fault | None:
    """The fault `decide_fault` chose for this request, if any."""
    return request.get(_FAULT)


def wants_gzip(request: web.Request) -> bool:
    return request.headers.get("X-Sim-Gzip", "").strip().lower() in ("1", "true", "yes")


def requested_tokens(request: web.Request) -> int | None:
    """`X-Sim-Tokens`: how many tokens to generate (None: the server's default); 400 when invalid."""
    raw = request.headers.get("X-Sim-Tokens")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise SimError(400, f"X-Sim-Tokens must be a non-negative integer, got {raw!r}")
    return n


async def abort(request: web.Request) -> None:
    """Drop the TCP connection mid-response, after what was written has left the process
    (transport.abort() discards the send buffer)."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(200):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)
    transport.abort()


async def stall(request: web.Request, stopping: asyncio.Event) -> None:
    """Hold the connection, sending nothing, until the client leaves or the server stops."""
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.05)
    await abort(request)  # stopping: never let a stalled answer look complete
