"""The sidecar's log output: one access line per request on stdout, and the format of its other
log lines on stderr.

`text` lines are logfmt (`key=value`, quoted where needed), which Loki's `logfmt` stage and
most log shippers split into fields; `json` lines are flat JSON objects with `@timestamp`, which
Elasticsearch and Loki's `json` stage read without a parser. An access line never carries a
token, a secret or prompt text: only the fields below."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from agent.records import UsageRecord

ACCESS_FIELDS: Final = (
    "request_id",
    "user",
    "team",
    "model",
    "endpoint",
    "status",
    "outcome",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "ttft_ms",
)
FORMATS: Final = ("text", "json")

_FLUSH_AFTER_S: Final = 0.1  # lines reach stdout within this, in one write per batch
_FLUSH_BYTES: Final = 64 * 1024


def access_fields(rec: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": rec.request_id,
        "user": rec.user,
        "team": rec.team,
        "model": rec.model,
        "endpoint": rec.endpoint,
        "status": rec.status,
        "outcome": str(rec.outcome),
        "tokens_in": rec.prompt_tokens,
        "tokens_out": rec.completion_tokens,
        "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms,
    }


def _timestamp(ts: datetime) -> str:
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" -> "Z"


# A value is quoted (JSON escapes) when a client-chosen string could split the line or forge a field.
_NEEDS_QUOTES: Final = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029]|^$')


def _logfmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if type(v) is str:
        return orjson.dumps(v).decode() if _NEEDS_QUOTES.search(v) else v
    return str(v)


def text_line(rec: UsageRecord) -> str:
    q = _logfmt_value
    return (
        f"{_timestamp(rec.ts)} request_id={q(rec.request_id)} user={q(rec.user)} team={q(rec.team)} "
        f"model={q(rec.model)} endpoint={q(rec.endpoint)} status={q(rec.status)} "
        f"outcome={q(str(rec.outcome))} tokens_in={q(rec.prompt_tokens)} "
        f"tokens_out={q(rec.completion_tokens)} latency_ms={q(rec.latency_ms)} ttft_ms={q(rec.ttft_ms)}"
    )


def json_line(rec: UsageRecord) -> str:
    body = {"@timestamp": _timestamp(rec.ts), "log.logger": "sidemeter.access", **access_fields(rec)}
    return orjson.dumps(body).decode()


class AccessLog:
    """A recorder listener: formats each record's access line on the loop (a format and an
    append per request) and hands batches of lines to a thread that writes them to stdout, so
    a slow or stuck reader of stdout never stalls the proxy. Past `max_pending` bytes waiting
    for that thread, lines are dropped and counted (`dropped`), never held without bound."""

    def __init__(self, fmt: str = "text", *, fd: int = 1, max_pending: int = 8 * 1024 * 1024) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.format: Callable[[UsageRecord], str] = json_line if fmt == "json" else text_line
        self.fd = fd
        self.max_pending = max_pending
        self.dropped = 0
        self._lines: list[str] = []
        self._size = 0
        self._pending = 0  # bytes handed to the thread and not yet written
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._batches: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_batches, name="sidemeter-access-log", daemon=True)
        self._thread.start()

    def observe(self, rec: UsageRecord) -> None:
        line = self.format(rec)
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(_FLUSH_AFTER_S, self.flush)
            except RuntimeError:  # no running loop: hand the line over now
                self.flush()

    def flush(self) -> None:
        """Hand the lines so far to the writing thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode()
        count = len(self._lines)
        self._lines.clear()
        self._size = 0
        with self._lock:
            if self._pending + len(data) > self.max_pending:
                self.dropped += count
                return
            self._pending += len(data)
        self._batches.put(data)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, and wait up to `timeout` for the thread to write what it holds."""
        self.flush()
        self._batches.put(None)
        self._thread.join(timeout)
        if self.dropped:
            logging.getLogger("sidemeter").warning(
                "access log: %d line(s) dropped: stdout was not read fast enough", self.dropped
            )

    def _write_batches(self) -> None:
        broken = False
        while (data := self._batches.get()) is not None:
            size = len(data)
            try:
                while data and not broken:
                    data = data[os.write(self.fd, data) :]
            except OSError as e:  # stdout closed (its reader went away): metering goes on
                broken = True
                logging.getLogger("sidemeter").warning("access log: cannot write to stdout: %s", e)
            with self._lock:
                self._pending -= size


class JsonFormatter(logging.Formatter):
    """The sidecar's own log lines (stderr) as flat JSON objects, for `log_format = "json"`."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "@timestamp": _timestamp(datetime.fromtimestamp(record.created, UTC)),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["error.stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()
