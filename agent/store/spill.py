"""Spill files: usage records the database has not taken yet, one JSON object per line, in a
directory next to the database (or the runtime's `--data-dir`/spill).

The writer spills when the queue is full, when a batch keeps failing, and at close for what
it could not write in time; it re-ingests the files at start, when idle and on flush. Names
carry the writing process's pid, so a running sidecar's files are left alone, and a file is
claimed by renaming it before it is read, so no two ingests take the same one. Re-ingesting
is idempotent: a record whose (request_id, ts) is stored already is skipped, so a crash at
any point counts no record twice. What can never be stored goes to `usage-rejected-*.jsonl`
for a human to inspect, and is never re-ingested. A file a person drops in named
`usage-spill-recovered*.jsonl` (e.g. the records a stop printed to stderr) is ingested too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import threading
import time
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

import peewee
from playhouse import db_url

from agent.durations import as_utc
from agent.records import UsageRecord
from agent.store.database import StoreError, first_line
from agent.store.schema import COLUMNS, UsageLog, ts_to_db

log = logging.getLogger(__name__)

SPILL_PREFIX: Final = "usage-spill-"
RECOVERED_PREFIX: Final = "usage-spill-recovered"  # records a person saved (e.g. from stderr)
_SPILL_NAME: Final = re.compile(r"usage-spill-(\d+)-")


def spill_line(record: UsageRecord) -> str:
    d = record.to_dict()
    d["ts"] = as_utc(record.ts).isoformat()  # to_dict would read a naive ts as local time
    return json.dumps(d, default=str) + "\n"


def rejected_line(record: object) -> str:
    """Best effort for a record that failed to store: even a non-UsageRecord is kept."""
    try:
        return spill_line(typing.cast(UsageRecord, record))
    except Exception:
        return json.dumps({"unstorable": repr(record)}) + "\n"


def _ts_key(ts: object) -> str:
    """Comparable form of a stored or spilled ts; never raises (a bad one stays distinct)."""
    return ts_to_db(ts) if isinstance(ts, datetime) else repr(ts)


def pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return False  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def default_spill_dir(url: str) -> Path:
    """The SQLite file's folder; `data` for PostgreSQL and `:memory:`."""
    if urlsplit(url).scheme.lower() == "sqlite":
        with contextlib.suppress(Exception):
            path = str(db_url.parse(url)["database"])
            if path != ":memory:":
                return Path(os.path.expanduser(path)).parent
    return Path("data")


class SpillFiles:
    """The spill and rejected files in one directory. Appending (from `submit`, on the event
    loop) and rotating take a lock held only for one line write; everything else runs on the
    writer thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.spilled_total = 0  # records written to spill files so far
        self.pending = False  # spilled records wait to be re-ingested
        self._lock = threading.Lock()
        self._live: TextIO | None = None
        self._seq = itertools.count()

    def check_writable(self) -> None:
        """Create the directory; StoreError (one line) when it cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the spill directory {self.directory} "
                f"({exc.strerror or exc}): make it a writable directory"
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreError(
                f"the spill directory {self.directory} is not writable by this user: fix its permissions"
            )

    # -- writing ----------------------------------------------------------------------------

    def _new_path(self) -> Path:
        # pid: a running process's files are left alone; ns + seq: unique, sorted by age.
        name = f"{SPILL_PREFIX}{os.getpid()}-{time.time_ns()}-{next(self._seq)}.jsonl"
        return self.directory / name

    def append(self, record: UsageRecord) -> None:
        """Append one line to the live spill file (submit's path when the queue is full)."""
        line = spill_line(record)
        with self._lock:
            try:
                if self._live is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._live = open(self._new_path(), "a", encoding="utf-8")  # noqa: SIM115 - kept open across calls
                self._live.write(line)
                self._live.flush()  # a crash keeps every line submit() returned for
            except OSError:
                self._close_live()  # a torn line must not swallow the next record's
                raise
            self.spilled_total += 1
            self.pending = True

    def _close_live(self) -> None:
        """Caller holds the lock. The next spilled record starts a new file."""
        if self._live is not None:
            with contextlib.suppress(OSError):
                self._live.close()
            self._live = None

    def close_live(self) -> None:
        with self._lock:
            self._close_live()

    def write_batch(self, records: list[UsageRecord]) -> None:
        """Write records to their own spill file, renamed into place once complete.
        StoreError when that fails; then no file is left behind."""
        if not records:
            return
        path = self._new_path()
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(spill_line(r) for r in records)
            os.replace(tmp, path)
        except Exception as exc:  # OSError, or a record that cannot even be serialised
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"cannot write spill file {tmp}: {first_line(exc)}") from exc
        with self._lock:
            self.spilled_total += len(records)
            self.pending = True

    def waiting(self) -> int:
        """Records in the directory's spill files now: what the next start re-ingests (records
        spilled and re-ingested since are not among them). Reads the files: for the stop only."""
        n = 0
        for path in self.directory.glob(SPILL_PREFIX + "*"):
            try:
                with open(path, "rb") as fh:
                    n += sum(block.count(b"\n") for block in iter(lambda fh=fh: fh.read(1 << 20), b""))
            except OSError:
                continue
        return n

    def reject(self, lines: list[str]) -> None:
        """Keep what can never be stored for a human to inspect; never re-ingested."""
        if not lines:
            return
        path = self.directory / f"usage-rejected-{os.getpid()}-{time.time_ns()}.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        except OSError as exc:
            log.error("cannot write %s: %s; %d rejected lines lost", path, exc, len(lines))
            return
        log.error("%d usage records cannot be stored; kept in %s", len(lines), path)

    # -- re-ingesting -------------------------------------------------------------------------

    def begin_ingest(self) -> None:
        """Close the live file (its lines are complete; new spills go to a new file)."""
        with self._lock:
            self.pending = False
            self._close_live()

    def candidates(self, *, startup: bool) -> list[Path]:
        """The files to re-ingest, oldest first."""
        own = os.getpid()
        found: list[Path] = []
        for path in sorted(self.directory.glob(SPILL_PREFIX + "*")):
            # A .tmp is a batch spill still being written, unless no writer is running yet.
            if path.name.endswith(".tmp") and not startup:
                continue
            if path.name.startswith(RECOVERED_PREFIX):  # put here by a person: no process owns it
                found.append(path)
                continue
            match = _SPILL_NAME.match(path.name)
            if match is None:
                continue
            pid = int(match.group(1))
            if pid != own and pid_alive(pid):
                continue  # another running sidecar still appends to it
            found.append(path)
        return found

    def ingest_file(
        self,
        path: Path,
        db: peewee.Database,
        insert: Callable[[list[UsageRecord]], int],
        chunk_size: int,
    ) -> int:
        """Store the file's records that are not stored yet with `insert` (in one
        transaction), then delete the file; returns how many were inserted."""
        # Claim by rename, so no other ingest takes it; a claimed file left by a crash is
        # taken again next time, and the insert below skips what that run already stored.
        if not path.name.endswith(".ingesting"):
            claimed = path.with_name(path.name + ".ingesting")
            try:
                os.replace(path, claimed)
            except FileNotFoundError:
                return 0
            path = claimed
        bad_lines: list[str] = []
        inserted = 0
        with open(path, encoding="utf-8", errors="replace") as fh, db.atomic():
            chunk: list[UsageRecord] = []
            for line in fh:
                if not line.strip():
                    continue
                try:
                    chunk.append(UsageRecord.from_dict(json.loads(line)))
                except (ValueError, TypeError, AttributeError):
                    bad_lines.append(line)  # e.g. a line torn by a crash
                    continue
                if len(chunk) >= chunk_size:
                    inserted += insert(_not_stored(db, chunk))
                    chunk = []
            inserted += insert(_not_stored(db, chunk))
        self.reject(bad_lines)
        path.unlink()
        log.info("re-ingested %d usage records from %s", inserted, path.name)
        return inserted


def _not_stored(db: peewee.Database, records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """The records whose (request_id, ts) is not stored yet, each once. That makes
    re-ingesting idempotent: a crash between commit and delete, or a batch that did commit
    although the driver reported an error, does not count twice."""
    records = list(records)
    if not records:
        return []
    ids = list({r.request_id for r in records})
    stored = (
        UsageLog.select(COLUMNS["request_id"], COLUMNS["ts"])
        .where(COLUMNS["request_id"].in_(ids))
        .bind(db)
        .tuples()
    )
    seen = {(rid, _ts_key(ts)) for rid, ts in stored}
    fresh: list[UsageRecord] = []
    for record in records:
        key = (record.request_id, _ts_key(record.ts))
        if key not in seen:
            seen.add(key)
            fresh.append(record)
    return fresh
