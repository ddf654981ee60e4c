"""The usage writer: `UsageStore.submit` appends a record to the journal, puts it on a bounded
queue, and one writer thread commits batches of multi-row INSERTs.

The proxy calls `submit` on the event loop for every request, so it never blocks and never
raises: when the queue is full, or the database keeps failing, records go to spill files
(`agent/store/spill.py`) and are re-ingested later. Nothing is dropped. The journal
(`agent/store/journal.py`) keeps what is still in memory safe from a crash of the process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import queue
import sys
import threading
import time
import typing
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import peewee

from agent.metrics import STORE_WRITE_DURATION
from agent.records import FIELD_NAMES, UsageRecord
from agent.store.database import StoreError, describe, first_line, migrate, open_database, redact_url
from agent.store.insert import MultiRowInsert
from agent.store.journal import Journal
from agent.store.readers import Readers
from agent.store.retention import DEFAULT_BATCH, Pruner
from agent.store.rollups import Rollups
from agent.store.schema import CONVERTERS_TO_DB, record_values
from agent.store.spill import SpillFiles, default_spill_dir, rejected_line

log = logging.getLogger(__name__)

_ABORT_GRACE_S: Final = 0.5
_TS: Final = FIELD_NAMES.index("ts")


@dataclasses.dataclass(eq=False)
class _FlushMarker:
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    ok: bool = False


@dataclasses.dataclass(frozen=True)
class _SegmentFull:
    """Queued behind the last record of a full journal segment: once the writer has stored
    everything before it, the segment can go."""

    path: Path


_STOP: Final = object()


class _Items(typing.NamedTuple):
    records: list[UsageRecord]
    markers: list[_FlushMarker]
    segments: list[Path]
    stop: bool


def _split(items: list[object]) -> _Items:
    """Queue items as records, flush markers, full journal segments, and whether the stop
    sentinel was among them."""
    records: list[UsageRecord] = []
    markers: list[_FlushMarker] = []
    segments: list[Path] = []
    stop = False
    for item in items:
        if item is _STOP:
            stop = True
        elif isinstance(item, _FlushMarker):
            markers.append(item)
        elif isinstance(item, _SegmentFull):
            segments.append(item.path)
        else:
            records.append(typing.cast(UsageRecord, item))
    return _Items(records, markers, segments, stop)


class UsageStore:
    """Bounded queue + one writer thread + spill files. See the module docstring."""

    # Waits between attempts at one batch before it is spilled; SQLite adds its busy timeout.
    retry_delays: tuple[float, ...] = (0.1, 0.5, 2.0)
    ingest_backoff_max: float = 300.0

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        spill_dir: str | Path | None = None,
        linger: float = 0.05,
        journal: bool = True,
        prune_after: timedelta | None = None,
        prune_batch: int = DEFAULT_BATCH,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("queue_size and batch_size must be >= 1, flush_interval > 0")
        self.url = url
        self.readers = Readers(url)  # the ops API's and the CLI's queries, apart from the writer
        self._spill = SpillFiles(Path(spill_dir) if spill_dir is not None else default_spill_dir(url))
        self.journal = Journal(self._spill.directory) if journal else None
        self._full_segments: collections.deque[Path] = collections.deque()  # not queued yet (loop only)
        self._stored_segments: list[Path] = []  # behind the writer, kept while overflow holds records
        self.written_total = 0
        self.lost_total = 0  # records neither written nor spilled: printed to stderr at close
        self.failed_batches = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        # After the first record of a batch the writer waits this long for more, so a steady
        # stream of requests costs one transaction per `linger` instead of one per record,
        # and submit() rarely has a waiting writer to wake (a wake-up costs the loop the GIL).
        self._linger = linger
        self._hurry = threading.Event()  # flush()/close() cut the linger short
        self._db: peewee.Database | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._final_drain = threading.Event()  # close() no longer reads the queue after this
        self._abort = threading.Event()
        self._last_write_ok = True
        self._inflight: list[UsageRecord] | None = None
        # Last resort when neither the database nor the spill directory takes a record.
        self._overflow: collections.deque[UsageRecord] = collections.deque()
        self._insert: MultiRowInsert | None = None
        self._rollups: Rollups | None = None
        # Background retention (auto_prune): records older than prune_after are deleted between batches.
        self.pruner = Pruner(prune_after, batch=prune_batch) if prune_after is not None else None
        self._scrub_nul = False
        self._next_ingest_at = 0.0
        self._ingest_backoff = 1.0

    # -- state --------------------------------------------------------------------------------

    @property
    def db(self) -> peewee.Database:
        """The database the writer uses (the only way to reach a `:memory:` one)."""
        if self._db is None:
            raise RuntimeError("UsageStore.start() has not run")
        return self._db

    @property
    def spill_dir(self) -> Path:
        return self._spill.directory

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._overflow)

    @property
    def spilled_total(self) -> int:
        """Records written to spill files so far (they are re-ingested later)."""
        return self._spill.spilled_total

    def spill_waiting(self) -> int:
        """Records now in spill files, waiting for the next start (`SpillFiles.waiting`)."""
        return self._spill.waiting()

    @property
    def spill_pending(self) -> bool:
        """Spilled records wait in spill files to be loaded into the database."""
        return self._spill.pending

    @property
    def healthy(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._last_write_ok

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open and migrate the database (StoreError on failure), re-ingest spill files left
        by an earlier run, start the writer thread."""
        if self._thread is not None:
            return
        if self._closed.is_set():
            raise RuntimeError("a closed UsageStore cannot be started again; create a new one")
        db = open_database(self.url)
        try:
            migrate(db)
            self._spill.check_writable()
            if self.journal is not None:
                self.journal.adopt_orphans()  # a crashed run's journal: replayed just below
        except BaseException:
            with contextlib.suppress(Exception):
                db.close()
            raise
        self._db = db
        self._insert = MultiRowInsert(db)
        self._rollups = Rollups(db)
        self._scrub_nul = not isinstance(db, peewee.SqliteDatabase)  # PostgreSQL rejects NUL
        self._ingest_spill(startup=True)  # a failure is logged and retried by the writer
        if db.thread_safe:
            db.close()  # thread-local connections: the writer and the readers open their own
        self._thread = threading.Thread(target=self._run, name="sidemeter-store-writer", daemon=True)
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Queue one record; never blocks, never raises. Runs on the event loop for every
        request, so a full queue spills the record to disk instead of waiting."""
        try:
            if not self._closed.is_set():
                if self.journal is not None and (full := self.journal.append(record)) is not None:
                    self._full_segments.append(full)
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    pass
                else:
                    if self._full_segments:
                        self._queue_full_segments()
                    if self._final_drain.is_set():  # lost a race with close(): nobody else
                        self._spill_batch(self._drain_queue())  # will read the queue now
                    return
            self._spill.append(record)
        except Exception as exc:  # metering must never break the proxy
            self._overflow.append(record)
            self.last_error = f"cannot spill a usage record to {self.spill_dir}: {first_line(exc)}"

    def _queue_full_segments(self) -> None:
        """Queue each full journal segment behind its records (later if the queue is full)."""
        with contextlib.suppress(queue.Full):
            while self._full_segments:
                self._queue.put_nowait(_SegmentFull(self._full_segments[0]))
                self._full_segments.popleft()

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything submitted before the call is committed (spilled records
        included: they are re-ingested first). False on timeout or if the database fails.
        Blocks: call it from a worker thread, not the event loop."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._closed.is_set():
            return False
        deadline = time.monotonic() + timeout
        marker = _FlushMarker()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        self._hurry.set()
        return marker.done.wait(max(0.0, deadline - time.monotonic())) and marker.ok

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, stop the writer and close the database. What cannot be
        written within `timeout` (database down or hung) is spilled for the next start; a
        writer stuck inside the database gets another half second on top."""
        if self._closed.is_set():
            return
        deadline = time.monotonic() + timeout
        self._closed.set()  # from now on submit() spills directly
        self._hurry.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._abort.set()  # stop retrying: the writer spills its batch and exits
                thread.join(_ABORT_GRACE_S)
        self._final_drain.set()  # before draining: a submit() racing us drains after itself
        leftovers = self._drain_queue()
        inflight = self._inflight
        if thread is not None and thread.is_alive() and inflight:
            # Still stuck inside the database. Spill its batch too: if that insert commits
            # after all, re-ingesting skips the records already stored.
            leftovers.extend(inflight)
        if leftovers:
            log.warning("usage store closing: spilling %d unwritten records", len(leftovers))
        self._spill_batch(leftovers)
        self._spill.close_live()
        if self.journal is not None:  # everything is stored or spilled, unless overflow holds some
            self.journal.close(delete=not self._overflow)
        if self._overflow:
            self._print_lost()
        self.readers.close()
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()

    def _print_lost(self) -> None:
        """The last resort at close: records neither the database nor the spill directory took
        go to stderr, one spill-format JSON line each (a container runtime keeps stderr), so a
        person can drop them into a spill directory or pipe them into `sidemeter db ingest`."""
        lost = list(self._overflow)
        self._overflow.clear()
        self.lost_total += len(lost)
        log.error(
            "usage store closing: %d record(s) could be neither written to %s nor spilled to %s; "
            "printing them to stderr as JSON lines (the lines starting with '{')",
            len(lost),
            redact_url(self.url),
            self.spill_dir,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.writelines(rejected_line(record) for record in lost)
        sys.stderr.flush()

    # -- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while True:
            items = self._take(block=not stopping)
            if items is None:
                if stopping or self._abort.is_set():
                    break
                if self._spill.pending and time.monotonic() >= self._next_ingest_at:
                    self._ingest_spill()
                self._roll_up()
                self._prune()
                continue
            records, markers, segments, stop = _split(items)
            stopping = stopping or stop
            if not stopping:
                self._roll_up()
                self._prune()
            try:
                self._handle(records, markers, segments)
            except Exception as exc:  # a bug must not stop metering: keep the batch, go on
                self.last_error = f"usage writer: {first_line(exc)}"
                self._last_write_ok = False
                log.exception("usage writer: unexpected error; spilling the batch")
                self._spill_batch(records)  # re-ingest skips any that did get stored
                self._retire_segments(segments)
                for marker in markers:
                    marker.done.set()
            if self._abort.is_set():
                break
        self._reset_connection()

    def _retire_segments(self, segments: list[Path]) -> None:
        """Every record queued before these journal segments' markers is now committed or
        spilled, unless it waits in overflow: delete the segments once overflow is empty."""
        self._stored_segments.extend(segments)
        if self._stored_segments and not self._overflow and self.journal is not None:
            self.journal.retire(self._stored_segments)
            self._stored_segments = []

    def _take(self, *, block: bool) -> list[object] | None:
        """The first item (waiting up to flush_interval) plus whatever else is already
        there, up to batch_size; None when idle."""
        items: list[object] = []
        with contextlib.suppress(IndexError):
            while self._overflow and len(items) < self._batch_size:
                items.append(self._overflow.popleft())
        try:
            if block and not items:
                items.append(self._queue.get(timeout=self._flush_interval))
                if self._linger and self._queue.qsize() < self._batch_size and not self._hurry.is_set():
                    self._hurry.wait(self._linger)
                self._hurry.clear()
            while len(items) < self._batch_size:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return items or None

    def _handle(self, records: list[UsageRecord], markers: list[_FlushMarker], segments: list[Path]) -> None:
        """Write the records, retire the journal segments behind them, then answer the flush
        markers that came with them (so a finished flush() also means a trimmed journal)."""
        if records:
            self._write_batch(records)
        self._retire_segments(segments)
        if markers:
            if self._spill.pending and not self._abort.is_set():
                self._ingest_spill()  # flush() covers spilled records too
            ok = self._last_write_ok and not self._spill.pending and not self._overflow
            for marker in markers:
                marker.ok = ok
                marker.done.set()

    def _write_batch(self, records: list[UsageRecord]) -> None:
        rows = self._rows(records)
        self._inflight = records
        try:
            for delay in (*self.retry_delays, None):
                started = time.perf_counter()
                try:
                    self._insert_rows(rows)
                except Exception as exc:
                    self._last_write_ok = False
                    self.last_error = f"writing to {describe(self.db)} failed: {first_line(exc)}"
                    self._reset_connection()
                    if delay is None or self._abort.wait(delay):
                        break
                else:
                    STORE_WRITE_DURATION.observe(time.perf_counter() - started)
                    self.written_total += len(rows)
                    self._last_write_ok = True
                    return
            self.failed_batches += 1
            log.warning("%s; spilling %d records to %s", self.last_error, len(records), self.spill_dir)
            self._spill_batch(records)
        finally:
            self._inflight = None

    def _rows(self, records: Iterable[UsageRecord]) -> list[list[Any]]:
        """DB-API parameter rows. A record that cannot be converted (a bug upstream) is set
        aside in a rejected file rather than failing its whole batch forever."""
        rows: list[list[Any]] = []
        rejected: list[str] = []
        for record in records:
            try:
                row = [to_db(v) for to_db, v in zip(CONVERTERS_TO_DB, record_values(record), strict=True)]
            except Exception as exc:
                rejected.append(rejected_line(record))
                self.last_error = f"unstorable usage record: {first_line(exc)}"
                continue
            if self._scrub_nul:
                row = [v.replace("\x00", "") if isinstance(v, str) else v for v in row]
            rows.append(row)
        self._spill.reject(rejected)
        return rows

    def _insert_rows(self, rows: list[list[Any]]) -> None:
        """One transaction of multi-row INSERTs (the cheap path, see `MultiRowInsert`) and
        the rollups of those rows, so the two always agree."""
        if not rows:
            return
        with self.db.atomic():
            self._store_rows(rows)

    def _store_rows(self, rows: list[list[Any]]) -> None:
        assert self._insert is not None and self._rollups is not None
        db = self.db
        self._rollups.begin_write(db)
        ids = self._insert.run(db, rows)
        self._rollups.add_late(db, ids, min(row[_TS] for row in rows))

    def _roll_up(self) -> None:
        """Roll up the hours that are over (once an hour; a failure is retried next time)."""
        rollups = self._rollups
        if rollups is None or time.time() < rollups.next_roll_at:
            return
        try:
            done = rollups.roll_up_due(self.db)
        except Exception as exc:
            rollups.next_roll_at = time.time() + 60.0
            log.warning("usage store: rolling up hours failed (%s); retrying in a minute", first_line(exc))
            self._reset_connection()
        else:
            if done:
                log.debug("usage store: rolled up %d hour(s)", done)

    def _prune(self) -> None:
        """One bounded batch of the background retention, when a turn is due."""
        pruner = self.pruner
        if pruner is None or self._db is None:
            return
        try:
            pruner.prune_due(self.db)
        except Exception as exc:
            pruner.failed(exc)
            self._reset_connection()

    def _insert_records(self, records: list[UsageRecord]) -> int:
        """Insert in the caller's transaction (re-ingesting); returns how many were stored
        (a record that cannot be is rejected by `_rows`)."""
        rows = self._rows(records)
        if rows:
            self._store_rows(rows)
        return len(rows)

    def _reset_connection(self) -> None:
        """Drop this thread's connection so the next attempt reconnects (a PostgreSQL
        connection may be dead). The shared `:memory:` connection is the database: keep it."""
        db = self._db
        if db is None or not db.thread_safe:
            return
        try:
            db.close()
        except Exception:
            db.dispose()

    # -- spilling and re-ingesting --------------------------------------------------------------

    def _spill_batch(self, records: list[UsageRecord]) -> None:
        """Spill records to their own file; kept in memory when even that fails."""
        try:
            self._spill.write_batch(records)
        except StoreError as exc:
            self.last_error = str(exc)
            log.error("%s; keeping %d records in memory", self.last_error, len(records))
            self._overflow.extend(records)

    def _drain_queue(self) -> list[UsageRecord]:
        """Take every record left in the queue (and in overflow); flush markers there fail."""
        items: list[object] = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        with contextlib.suppress(IndexError):
            while self._overflow:
                items.append(self._overflow.popleft())
        records, markers, _, _ = _split(items)
        for marker in markers:
            marker.done.set()
        return records

    def _ingest_spill(self, *, startup: bool = False) -> bool:
        """Insert the spill files' records that are not stored yet, then delete the files;
        on failure retry later, backing off."""
        self._spill.begin_ingest()
        paths: list[Path] = []
        try:
            paths = self._spill.candidates(startup=startup)
            for path in paths:
                self.written_total += self._spill.ingest_file(
                    path, self.db, self._insert_records, self._batch_size
                )
        except Exception as exc:
            self._spill.pending = True
            self._last_write_ok = False
            self.last_error = f"re-ingesting spill files from {self.spill_dir} failed: " + first_line(exc)
            log.warning("%s; retrying in %.0fs", self.last_error, self._ingest_backoff)
            self._next_ingest_at = time.monotonic() + self._ingest_backoff
            self._ingest_backoff = min(self._ingest_backoff * 2, self.ingest_backoff_max)
            self._reset_connection()
            return False
        self._ingest_backoff = 1.0
        if paths:
            self._last_write_ok = True
        return True
