"""``StreamMeter``: reads a streamed response body chunk by chunk as it is relayed.

Framing is the meter's own: NDJSON lines (Ollama) or SSE events (everything else). What an
event means is the dialect's reader's (``events.py``); what strip mode does with it is the
stripper's (``strip.py``), told by the reader's verdict.
"""

from __future__ import annotations

from typing import Final

from agent.records import Dialect, Operation
from agent.wire.events import (
    EventReader,
    StreamTally,
    read_llamacpp_object,
    read_ollama_object,
    read_openai_chunk,
    read_responses_event,
)
from agent.wire.fastjson import JSON_ERRORS, loads, loads_python
from agent.wire.request import LLAMACPP_NATIVE_ENDPOINTS, RequestInfo
from agent.wire.strip import KEEP, NONE, UsageChunkStripper, Verdict, merge_verdicts

__all__ = ["StreamMeter"]

# A line (SSE/NDJSON) longer than this is not a plausible event: stop buffering it so a
# misbehaving upstream cannot grow the sidecar's memory without bound.
_MAX_PENDING: Final = 8 * 1024 * 1024


class StreamMeter(StreamTally):
    """Incremental parser of one streamed response body.

    ``feed`` every upstream chunk (already decoded, see ``decode.make_decoder``) and ``finish``
    at the end of the body. Chunk boundaries need not align with lines or events: the meter
    keeps the unterminated tail in a buffer and scans each byte once.

    With ``strip_usage_chunk`` (OpenAI chat/completions streams whose usage the sidecar asked
    for on the client's behalf) ``feed`` returns only complete SSE events, undoing what the
    added ``include_usage`` changed (see ``strip.py``), so the client gets what the server
    sends a request without it. Otherwise ``feed`` returns the chunk object itself and parses
    on the side.

    Read after (or during) the stream the tally's attributes (``events.StreamTally``):
    ``content_events``, ``output_chars``, ``usage``, ``done``, ``error``, ``finish_reason``
    and ``model``.
    """

    __slots__ = (
        "_buf",
        "_ev_name",
        "_finished",
        "_ndjson",
        "_pos",
        "_read",
        "_search",
        "_stripper",
        "_verdict",
    )

    def __init__(self, info: RequestInfo, strip_usage_chunk: bool = False) -> None:
        StreamTally.__init__(self)
        read: EventReader
        if info.dialect == Dialect.OLLAMA:
            read = read_ollama_object
        elif info.operation == Operation.RESPONSES:
            read = read_responses_event
        elif info.endpoint in LLAMACPP_NATIVE_ENDPOINTS:
            read = read_llamacpp_object
        else:
            read = read_openai_chunk
        self._read = read  # a plain function in a slot: called as self._read(self, ...)
        self._ndjson = read is read_ollama_object
        # Only chat/completions streams can carry the usage-only chunk that include_usage adds.
        # None also once stripping has stopped (an event too large to hold, see feed).
        self._stripper = UsageChunkStripper() if strip_usage_chunk and read is read_openai_chunk else None
        self._buf = bytearray()
        self._pos = 0  # start of the next unparsed line in _buf
        self._search = 0  # where to resume looking for "\n" (never re-scan a partial line)
        self._verdict = NONE  # strip mode: the current event's verdict so far
        self._ev_name = b""  # SSE "event:" field of the current event
        self._finished = False

    # -- public

    def feed(self, chunk: bytes) -> bytes:
        if self._finished or not chunk:
            return chunk  # nothing to hold back any more: forward as is
        self._buf += chunk
        stripper = self._stripper
        if stripper is None:
            self._scan()
            self._compact()
            return chunk
        out = self._scan()
        if len(self._buf) > _MAX_PENDING:
            # An "event" this large is not SSE: stop holding bytes back, forward everything.
            out.append(stripper.release())
            out.append(bytes(self._buf))
            self._stripper = None
            self._compact()
        return b"".join(out)

    def finish(self) -> bytes:
        """Parse an unterminated last line; return what strip mode still holds, as is."""
        if self._finished:
            return b""
        self._finished = True
        buf = self._buf
        if self._pos < len(buf):
            end = len(buf)
            if buf[end - 1] == 13:  # "\r"
                end -= 1
            self._line(self._pos, end)
        held = b""
        if self._stripper is not None:
            held = self._stripper.release() + bytes(buf)
        buf.clear()
        self._pos = self._search = 0
        return held

    # -- framing

    def _scan(self) -> list[bytes]:
        """Handle every complete line in the buffer. In strip mode, return the bytes of the
        complete events to forward and drop them: between calls the buffer holds only the
        current, incomplete event, from its start."""
        buf = self._buf
        pos = self._pos
        search = self._search
        stripper = self._stripper
        ev_start = 0  # strip mode: start of the current event
        ev_verdict = self._verdict  # strip mode: its verdict so far
        out: list[bytes] = []
        run = 0  # strip mode: start of the run of bytes to forward as they are
        find = buf.find
        while True:
            nl = find(b"\n", search)
            if nl < 0:
                search = len(buf)
                break
            end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            if end == pos:  # blank line: the event ends here
                if stripper is not None:
                    if ev_verdict > KEEP or stripper.held is not None:
                        run = stripper.end_event(buf, run, ev_start, nl + 1, ev_verdict, out)
                    ev_verdict = NONE
                    ev_start = nl + 1
                self._ev_name = b""
            else:
                verdict = self._line(pos, end)
                if verdict and stripper is not None:
                    ev_verdict = verdict if ev_verdict == NONE else merge_verdicts(ev_verdict, verdict)
            pos = search = nl + 1
        self._verdict = ev_verdict
        if stripper is not None and ev_start:
            if run < ev_start:
                out.append(bytes(buf[run:ev_start]))
            del buf[:ev_start]
            pos -= ev_start
            search -= ev_start
        self._pos = pos
        self._search = search
        return out

    def _compact(self) -> None:
        """Not stripping: drop parsed lines; bound an endless unterminated line."""
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._search -= self._pos
            self._pos = 0
        if len(buf) > _MAX_PENDING:
            buf.clear()
            self._search = 0

    def _line(self, start: int, end: int) -> Verdict:
        """One non-blank line ``buf[start:end]`` (without its line terminator): its JSON payload,
        if it has one, goes to the dialect's reader."""
        buf = self._buf
        if self._ndjson:
            ev_name = b""
        elif buf.startswith(b"data:", start, end):
            start += 6 if end > start + 5 and buf[start + 5] == 32 else 5
            if buf.startswith(b"[DONE]", start, end):
                self.done = True
                return KEEP
            ev_name = self._ev_name
        elif buf.startswith(b"event:", start, end):
            self._ev_name = bytes(buf[start + 6 : end]).strip()
            return NONE
        elif buf.startswith(b"error:", start, end):
            # Older llama.cpp servers sent stream errors as an "error:" field.
            start += 6
            ev_name = b"error"
        elif buf[start] == 123:  # "{"
            # No SSE field starts with "{": a plain JSON body (typically an error answered to
            # a streaming request) reaching the meter. Read it rather than miss the error.
            ev_name = b""
        else:
            # Other fields (id:, retry:) and ":" comments carry nothing to meter; only data
            # lines decide what strip mode does with an event.
            return NONE
        try:
            obj = loads(buf[start:end])
        except JSON_ERRORS:
            try:  # NaN or Infinity from a Python server (fastjson.py); never on the fast path
                obj = loads_python(buf[start:end])
            except JSON_ERRORS:
                return KEEP  # forwarded untouched, counted as nothing
        if not isinstance(obj, dict):
            return KEEP
        return self._read(self, obj, ev_name)
