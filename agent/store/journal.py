"""The journal: every usage record appended to a local file before it is queued for the
database, so a crash of the process (`kill -9`, the OOM killer, a segfault) loses none of the
records whose responses had finished.

A record is one `write()` of one spill-format JSON line to an `O_APPEND` file descriptor: once
the call returns, the line is in the kernel's page cache, which outlives the process. There is
no fsync per record, so what the kernel has not written back yet (a few seconds' worth, as
`vm.dirty_expire_centisecs` says) is lost to a power cut or a kernel crash; that is the window
the journal leaves.

The journal is a series of segments, `usage-journal-<pid>-<ns>-<seq>.jsonl`, in the spill
directory. When a segment is full (`SEGMENT_BYTES`) the next one starts, and the writer deletes
the full one once every record queued before it is committed or spilled; at a clean close the
whole journal goes. At start, the segments of a process that is gone are renamed into spill
files, so the spill re-ingest replays them, skipping what the database already holds.

`append` runs on the event loop once per request (never per chunk): it serialises with orjson
and makes one system call (bench/journal.py measures it).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
from pathlib import Path
from typing import Final

import orjson

from agent.records import UsageRecord
from agent.store.database import first_line
from agent.store.spill import SPILL_PREFIX, pid_alive, spill_line

log = logging.getLogger(__name__)

JOURNAL_PREFIX: Final = "usage-journal-"
_JOURNAL_NAME: Final = re.compile(r"usage-journal-(\d+)-(.+)\.jsonl$")
SEGMENT_BYTES: Final = 1 << 20  # ~2,000 records: what a restart may have to compare with the database
_REOPEN_AFTER_S: Final = 1.0  # after a failed write, how long appends go without the journal
_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_ORJSON_OPTIONS: Final = orjson.OPT_NAIVE_UTC | orjson.OPT_APPEND_NEWLINE


def journal_line(record: UsageRecord) -> bytes:
    """The record as a spill-file line (what `UsageRecord.from_dict` reads back)."""
    try:
        return orjson.dumps(record, option=_ORJSON_OPTIONS)
    except TypeError:  # e.g. a lone surrogate in captured prompt text: json escapes it
        return spill_line(record).encode()


class Journal:
    """The journal segments of this process in one directory. `append` is called on the event
    loop only; `retire` (deleting full segments) and `close` on the writer thread or at close."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.failed_writes = 0
        self.last_error: str | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._seq = itertools.count()
        self._retry_at = 0.0

    @property
    def path(self) -> Path | None:
        """The segment being appended to (None before the first record)."""
        return self._path

    def adopt_orphans(self) -> int:
        """Rename the segments of processes that are gone (this pid too: nothing of ours is
        written yet) into spill files, for the spill re-ingest to replay. Returns how many."""
        own = os.getpid()
        adopted = 0
        for path in sorted(self.directory.glob(JOURNAL_PREFIX + "*.jsonl")):
            match = _JOURNAL_NAME.match(path.name)
            if match is None:
                continue
            pid = int(match.group(1))
            if pid != own and pid_alive(pid):
                continue  # another sidecar's journal in the same directory
            target = path.with_name(f"{SPILL_PREFIX}{pid}-{match.group(2)}-journal.jsonl")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target)
                adopted += 1
        if adopted:
            log.info("replaying %d journal file(s) left by a sidecar that did not stop cleanly", adopted)
        return adopted

    def append(self, record: UsageRecord) -> Path | None:
        """Write the record's line. Returns the segment this append completed (the caller
        queues it behind the record, for `retire`), else None. Never raises: a failed write
        is counted and logged, and the journal is tried again a second later."""
        fd = self._fd
        if fd is None and (fd := self._open()) is None:
            return None
        line = journal_line(record)
        try:
            written = os.write(fd, line)
        except OSError as exc:
            self._failed(exc)
            return None
        if written != len(line):  # a full disk: the torn line is skipped (and kept) at replay
            self._failed(OSError(f"short write ({written} of {len(line)} bytes)"))
            return None
        self._size += written
        if self._size < self.segment_bytes:
            return None
        full = self._path
        self._close_fd()
        return full

    def retire(self, segments: list[Path]) -> None:
        """Delete segments whose records are all committed or spilled."""
        for path in segments:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self, *, delete: bool) -> None:
        """Close the open segment; `delete`: everything was stored, the whole journal goes
        (else it stays, and the next start replays it)."""
        current = self._path
        self._close_fd()
        if delete:
            own = f"{JOURNAL_PREFIX}{os.getpid()}-"
            with contextlib.suppress(OSError):
                self.retire([p for p in self.directory.glob(own + "*.jsonl")])
        elif current is not None:
            log.warning("usage journal %s kept: the next start replays it", current)

    def _open(self) -> int | None:
        if time.monotonic() < self._retry_at:
            return None
        path = self.directory / f"{JOURNAL_PREFIX}{os.getpid()}-{time.time_ns()}-{next(self._seq)}.jsonl"
        try:
            self._fd = os.open(path, _FLAGS, 0o600)
        except OSError as exc:
            self._failed(exc)
            return None
        self._path, self._size = path, 0
        return self._fd

    def _failed(self, exc: OSError) -> None:
        self.failed_writes += 1
        self._close_fd()
        self._retry_at = time.monotonic() + _REOPEN_AFTER_S
        error = f"cannot append to the usage journal in {self.directory}: {first_line(exc)}"
        if error != self.last_error:
            log.error("%s; records are not crash-safe until it works again", error)
        self.last_error = error

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
