"""Strip mode: the client gets the stream it would get had nobody asked for usage on its behalf.

When the sidecar adds ``stream_options.include_usage`` to an OpenAI chat/completions stream
(``request.should_inject_usage``), the server changes its answer in three ways, each undone here:

- it adds a usage-only event (``"choices": []`` with a ``usage`` object): dropped;
- llama.cpp appends the members it puts on the last chunk of a chat stream (``timings``,
  ``__tool_call_incomplete``) to that usage-only chunk instead of the finish chunk: they are
  moved back onto the finish chunk, which is held until the next event shows whether anything
  has to move (it follows at once);
- Ollama's ``/v1/completions`` puts an all-zero ``usage`` on every chunk: cut out of them.

The dialect's event reader (``events.py``) gives each data line a ``Verdict``;
``UsageChunkStripper`` acts on the verdict of each complete event. The edits are byte surgery
that leaves every other byte as the server wrote it (its JSON serializer's spacing, escaping,
key order), checked by parsing the result; an edit that would not parse is not made.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any, Final

from agent.wire.fastjson import JSON_ERRORS, loads_lenient

__all__ = [
    "CUT",
    "CUT_HOLD",
    "DROP",
    "HOLD",
    "KEEP",
    "NONE",
    "UsageChunkStripper",
    "Verdict",
    "merge_verdicts",
    "placeholder_usage",
]


class Verdict(IntEnum):
    """What strip mode does with one SSE event, as its data lines decide."""

    NONE = 0  # no data line (comments, id:, retry:): goes out with the events around it
    KEEP = 1  # goes out as the server wrote it
    DROP = 2  # the usage-only chunk the added include_usage caused: removed
    CUT = 3  # goes out with its placeholder "usage" member cut out (Ollama's zeros)
    HOLD = 4  # a finish chunk: kept back until the next event decides what moves onto it
    CUT_HOLD = 5  # both (Ollama's finish chunk): cut, then held


# The members as plain names: the stream scanner compares them for every event.
NONE: Final = Verdict.NONE
KEEP: Final = Verdict.KEEP
DROP: Final = Verdict.DROP
CUT: Final = Verdict.CUT
HOLD: Final = Verdict.HOLD
CUT_HOLD: Final = Verdict.CUT_HOLD

# Members llama.cpp appends to the last chunk of a chat stream (server-task.cpp,
# to_json_oaicompat_chat_stream: deltas.back()). With include_usage that last chunk is the
# usage-only chunk; without it, the finish chunk.
_LAST_CHUNK_MEMBERS: Final = (b"timings", b"__tool_call_incomplete")


def merge_verdicts(a: Verdict, b: Verdict) -> Verdict:
    """The verdict of an event with two data lines (rare: servers send one per event). A
    usage-only line does not make droppable an event that carries anything else; a cut and a
    hold both apply."""
    if a in (NONE, DROP):
        return a if b == NONE else b
    if b in (NONE, DROP):
        return a
    if {a, b} == {CUT, HOLD}:
        return CUT_HOLD
    return max(a, b)


def placeholder_usage(u: dict[str, Any]) -> bool:
    """No count in it: Ollama's ``"usage": {"prompt_tokens": 0, ...}`` on content chunks."""
    return not (u.get("prompt_tokens") or u.get("completion_tokens") or u.get("total_tokens"))


class UsageChunkStripper:
    """Acts on the verdicts of one stream's complete events; holds at most one finish event.

    The stream scanner forwards runs of events untouched, without copying them one by one,
    and hands an event here only when it needs more: a verdict above ``KEEP``, or an event
    held back (then every event comes here, to keep the stream's order)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: bytes | None = None  # a finish event kept back (HOLD)

    def end_event(
        self, buf: bytearray, run: int, start: int, stop: int, verdict: Verdict, out: list[bytes]
    ) -> int:
        """The event ``buf[start:stop]`` is complete. Appends to ``out`` what goes out before
        it (the run ``buf[run:start]`` or the held event) and the event when it goes out
        edited; returns the new start of the run of bytes to forward as they are. While an
        event is held, ``run`` is the current event's start: nothing after the held event
        went out before it."""
        held = self.held
        if verdict == DROP:
            if held is not None:
                out.append(_move_last_chunk_members(held, bytes(buf[start:stop])))
                self.held = None
            elif run < start:
                out.append(bytes(buf[run:start]))
            return stop
        if held is not None:
            if verdict == NONE:
                self.held = held + bytes(buf[start:stop])  # a comment or blank: keep order
                return stop
            out.append(held)
            self.held = None
        elif run < start:
            out.append(bytes(buf[run:start]))
        if verdict <= KEEP:
            return start
        event = bytes(buf[start:stop])
        if verdict != HOLD:  # CUT or CUT_HOLD
            event = _cut_placeholder_usage(event)
        if verdict >= HOLD:
            self.held = event
        else:
            out.append(event)
        return stop

    def release(self) -> bytes:
        """The held event, as it is (the stream ended, or stripping stopped); b"" if none."""
        held = self.held
        self.held = None
        return held if held is not None else b""


# Where a JSON value's structure can change: a bracket or a quote. The scan jumps from one to
# the next (and over whole strings) rather than stepping through every byte in Python.
_BRACKET_OR_QUOTE: Final = re.compile(rb'[{}\[\]"]')


def _value_end(data: bytes, i: int) -> int:
    """Index just past the JSON value that starts at ``data[i]``; -1 if it does not end."""
    n = len(data)
    if i >= n:
        return -1
    first = data[i]
    if first not in (123, 91, 34):  # a number, true, false or null: up to a delimiter
        while i < n and data[i] not in b",}] \t\r\n":
            i += 1
        return i
    depth = 0
    search = _BRACKET_OR_QUOTE.search
    while (m := search(data, i)) is not None:
        i = m.start()
        c = data[i]
        if c == 34:  # a string: skip it whole
            i = _string_end(data, i + 1)
            if i < 0:
                return -1
            if depth == 0:
                return i  # a string value
            continue
        i += 1
        if c == 123 or c == 91:
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _string_end(data: bytes, i: int) -> int:
    """Index just past the closing quote of the string whose text starts at ``data[i]``: the
    first quote not escaped, that is not after an odd run of backslashes; -1 if none."""
    while (q := data.find(b'"', i)) >= 0:
        k = q
        while k > i and data[k - 1] == 92:
            k -= 1
        if (q - k) % 2 == 0:
            return q + 1
        i = q + 1
    return -1


def _member(event: bytes, key: bytes) -> tuple[int, int] | None:
    """Span of the last ``,"key":value`` member of an event, comma included. It is never
    inside a JSON string: there a quote is escaped, so ``,"key":`` cannot occur."""
    at = event.rfind(b',"' + key + b'":')
    if at < 0:
        return None
    end = _value_end(event, at + len(key) + 4)
    return None if end < 0 else (at, end)


def _data_object(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's (first) data line, or None."""
    at = event.find(b"data:")
    if at < 0:
        return None
    end = event.find(b"\n", at)
    try:
        obj = loads_lenient(event[at + 5 : end if end >= 0 else len(event)])  # as the reader did
    except JSON_ERRORS:
        return None
    return obj if isinstance(obj, dict) else None


def _cut_placeholder_usage(event: bytes) -> bytes:
    """The event without its placeholder ``"usage"`` member; unchanged if that fails."""
    span = _member(event, b"usage")
    if span is None:
        return event
    cut = event[: span[0]] + event[span[1] :]
    obj = _data_object(cut)
    return cut if obj is not None and "usage" not in obj else event


def _move_last_chunk_members(finish: bytes, usage_event: bytes) -> bytes:
    """The held finish event with the members llama.cpp appended to the dropped usage-only
    event put back at its end, where the server puts them when usage was not asked for.
    Unchanged when there is nothing to move or the edit would not parse."""
    found = [(span, key) for key in _LAST_CHUNK_MEMBERS if (span := _member(usage_event, key))]
    if not found:
        return finish  # the common case (vLLM, Ollama, OpenAI)
    found.sort()  # in the order the server wrote them
    close = finish.rfind(b"}")
    if close < 0:
        return finish
    moved = finish[:close] + b"".join(usage_event[a:b] for (a, b), _ in found) + finish[close:]
    obj = _data_object(moved)
    if obj is None or any(key.decode() not in obj for _, key in found):
        return finish
    return moved
