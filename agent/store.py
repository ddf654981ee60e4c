"""The usage store: UsageRecords into the `usage_logs` table (SQLite by default, PostgreSQL for
fleets) — DESIGN.md, "Usage record" and "Non-negotiables".

The proxy calls `UsageStore.submit` on the event loop for every request. It only puts the
record on a bounded queue; one writer thread commits batches of multi-row INSERTs.
When the queue is full, or the database keeps failing, records are spilled as JSONL files
next to the database and re-ingested later (at start, when the writer is idle, on `flush`):
nothing is dropped, and re-ingesting is idempotent, so a crash at any point counts no record
twice.

The peewee models are not bound to a database: bind each query to the one `open_database`
returned (`UsageLog.select().bind(db)`), or use `iter_records` and friends.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import importlib.util
import itertools
import json
import logging
import operator
import os
import queue
import re
import sqlite3
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url

from agent.records import FIELD_NAMES, UsageRecord, utcnow

log = logging.getLogger(__name__)

SCHEMA_VERSION: int = 1

_SQLITE_TIMEOUT_S: Final = 5.0  # how long a writer waits on a locked SQLite file per attempt
_PG_CONNECT_TIMEOUT_S: Final = 10  # an unreachable server fails `run` at start, not minutes later
_ABORT_GRACE_S: Final = 0.5
_SPILL_PREFIX: Final = "usage-spill-"
_SPILL_NAME: Final = re.compile(r"usage-spill-(\d+)-")
_EXPORT_FORMATS: Final = ("jsonl", "csv")


class StoreError(Exception):
    """The store cannot work. The message is one line naming the URL or path and what to do."""


# -- timestamps ---------------------------------------------------------------------------


def _as_utc(ts: datetime) -> datetime:
    """Naive datetimes are UTC by contract (DESIGN.md: `ts` is UTC); aware ones are converted."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _ts_to_db(ts: datetime) -> str:
    # Naive UTC text with fixed microseconds: compares correctly as text in SQLite, reads like
    # SQLite's own datetime('now') in ad-hoc queries, and PostgreSQL casts it to TIMESTAMP.
    return _as_utc(ts).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class UTCDateTimeField(peewee.DateTimeField):
    """A timestamp stored as naive UTC and read back as an aware UTC datetime."""

    def db_value(self, value: Any) -> Any:
        if isinstance(value, str):
            value = self.adapt(value)  # "2026-01-31 12:00" in a query: same text form as stored
        return _ts_to_db(value) if isinstance(value, datetime) else value

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        return _as_utc(value) if isinstance(value, datetime) else value


# -- models ----------------------------------------------------------------------------------

_INDEXED: Final = frozenset({"ts", "request_id", "user", "model", "team"})
_FIELD_CLASSES: Final[dict[type, type[peewee.Field]]] = {
    str: peewee.TextField,  # not VARCHAR(255): errors, prompts and paths have no fixed length
    int: peewee.BigIntegerField,
    float: peewee.DoubleField,  # DOUBLE PRECISION on PostgreSQL; FloatField would be REAL
    bool: peewee.BooleanField,
    datetime: UTCDateTimeField,
}


def _record_types() -> dict[str, tuple[type, bool]]:
    """(base type, nullable) per UsageRecord field, from the dataclass hints: the record stays
    the one place that lists the fields."""
    hints = typing.get_type_hints(UsageRecord)
    types: dict[str, tuple[type, bool]] = {}
    for name in FIELD_NAMES:
        members = typing.get_args(hints[name]) or (hints[name],)
        (base,) = [m for m in members if m is not type(None)]
        types[name] = (base, type(None) in members)
    return types


_INT64: Final = range(-(2**63), 2**63)


def _int(value: Any) -> int:
    n = int(value)
    if n not in _INT64:  # sqlite3 raises OverflowError, PostgreSQL "bigint out of range"
        raise ValueError(f"{n} does not fit a 64-bit integer")
    return n


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. a client's JSON "\ud800"
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    str: _text,
    int: _int,
    float: float,
    bool: bool,
    datetime: _ts_to_db,
}


def _to_db(name: str, base: type, nullable: bool) -> Callable[[Any], Any]:
    """A strict converter for the writer: a value the column cannot hold raises here, for
    one record, instead of failing its whole batch in the database again and again (and
    then every re-ingest of the spill file that batch went to)."""
    convert = _CONVERTERS[base]

    def to_db(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValueError(f"{name} must not be None")
        return convert(value)

    return to_db


class UsageLog(peewee.Model):
    """A stored UsageRecord: auto `id` + one column per record field (added below)."""

    id = peewee.BigAutoField()

    class Meta:
        table_name = "usage_logs"


_TYPES: Final = _record_types()
# Added after the class body so the columns follow `id` in FIELD_NAMES order.
for _name, (_base, _nullable) in _TYPES.items():
    UsageLog._meta.add_field(_name, _FIELD_CLASSES[_base](null=_nullable, index=_name in _INDEXED))


class SchemaMeta(peewee.Model):
    """One row per schema version applied to this database."""

    version = peewee.IntegerField(primary_key=True)

    class Meta:
        table_name = "schema_meta"


_MODELS: Final = (UsageLog, SchemaMeta)
_COL: Final[dict[str, peewee.Field]] = UsageLog._meta.fields
_RECORD_COLUMNS: Final = tuple(_COL[name] for name in FIELD_NAMES)
_TO_DB: Final = tuple(_to_db(name, *_TYPES[name]) for name in FIELD_NAMES)
_RECORD_VALUES: Final = operator.attrgetter(*FIELD_NAMES)


# -- opening and migrating -------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _describe(db: peewee.Database) -> str:
    if isinstance(db, peewee.SqliteDatabase):
        return str(db.database)
    host = db.connect_params.get("host", "localhost")
    return f"database {db.database!r} on {host}"


def open_database(url: str) -> peewee.Database:
    """Open (and connect to, so errors surface now) the database named by `url`:
    `sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite:///:memory:`, `postgresql://...`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return _open_sqlite(url)
    if scheme in ("postgres", "postgresql"):
        return _open_postgresql(url)
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///data/usage.db "
        "or postgresql://user:password@host:5432/dbname"
    )


def _open_sqlite(url: str) -> peewee.SqliteDatabase:
    options = db_url.parse(url)
    path = str(options.pop("database"))
    try:
        timeout = float(options.pop("timeout", _SQLITE_TIMEOUT_S))
    except (TypeError, ValueError):
        raise StoreError(f"{url}: timeout must be a number of seconds, e.g. ?timeout=5") from None
    pragmas = {
        "journal_mode": "wal",  # readers (ops API, CLI) never block the writer
        "synchronous": "normal",  # safe with WAL; no fsync per commit
        "busy_timeout": int(timeout * 1000),
    }
    if path == ":memory:":
        # Each connection to ":memory:" is its own empty database, so the writer thread and
        # the readers share one connection (SQLite's serialized mode makes that safe).
        return _connect_sqlite(
            peewee.SqliteDatabase(
                path,
                pragmas=pragmas,
                timeout=timeout,
                thread_safe=False,
                check_same_thread=False,
                **options,
            ),
            path,
            Path("."),
        )
    path = os.path.expanduser(path)
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the data directory {parent} for {url} ({exc.strerror or exc}): "
            "make it a writable directory or choose another --db path"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"the data directory {parent} is not writable by this user: fix its permissions "
            "or choose another --db path"
        )
    db = peewee.SqliteDatabase(path, pragmas=pragmas, timeout=timeout, **options)
    return _connect_sqlite(db, path, parent)


def _connect_sqlite(db: peewee.SqliteDatabase, path: str, parent: Path) -> peewee.SqliteDatabase:
    try:
        db.connect()
        mode = db.journal_mode  # reading it also proves the file is a SQLite database
    except (peewee.PeeweeException, sqlite3.Error, OSError, TypeError) as exc:
        raise StoreError(
            f"cannot open the SQLite database {path} ({_one_line(exc)}): check that {parent} is "
            f"writable by this user and {path} is a SQLite file, or choose another --db path"
        ) from exc
    if mode not in ("wal", "memory"):  # e.g. a network filesystem without shared memory
        log.warning("SQLite %s runs in %s journal mode, not WAL: readers may block writes", path, mode)
    return db


def _open_postgresql(url: str) -> peewee.PostgresqlDatabase:
    shown = redact_url(url)
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
        raise StoreError(
            f"{shown} needs the PostgreSQL driver: pip install 'sidemeter[postgres]' (psycopg2-binary)"
        )
    options = db_url.parse(url, unquote_password=True, unquote_user=True)
    options.setdefault("connect_timeout", _PG_CONNECT_TIMEOUT_S)
    db = peewee.PostgresqlDatabase(**options)
    try:
        db.connect()
    except Exception as exc:  # driver errors vary; all of them mean "cannot use this URL"
        raise StoreError(
            f"cannot connect to {shown} ({_one_line(exc)}): check that the server is up and the "
            "host, port, database, user and password in the URL are right"
        ) from exc
    return db


def migrate(db: peewee.Database) -> int:
    """Create the tables if needed and return the schema version. Idempotent; refuses a
    database written by a newer Sidemeter rather than guessing at its layout."""
    where = _describe(db)
    try:
        with db.atomic():
            found = 0
            if db.table_exists(SchemaMeta._meta.table_name):
                found = SchemaMeta.select(peewee.fn.MAX(SchemaMeta.version)).bind(db).scalar() or 0
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"{where} has usage schema version {found}, newer than this Sidemeter "
                    f"understands ({SCHEMA_VERSION}): upgrade Sidemeter or use another --db"
                )
            for model in _MODELS:
                peewee.SchemaManager(model, database=db).create_all(safe=True)
            have = {c.name for c in db.get_columns(UsageLog._meta.table_name)}
            wanted = [f.column_name for f in UsageLog._meta.sorted_fields]
            missing = [name for name in wanted if name not in have]
            if missing:
                raise StoreError(
                    f"the usage_logs table in {where} lacks columns {', '.join(missing)} (made by "
                    "another tool?): rename it (ALTER TABLE usage_logs RENAME TO usage_logs_old) "
                    "or use another --db"
                )
            # Always a write, even when nothing changed: a read-only database fails here, at
            # start, instead of at the first batch.
            SchemaMeta.insert(version=SCHEMA_VERSION).on_conflict_ignore().bind(db).execute()
    except StoreError:
        raise
    except (peewee.PeeweeException, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot set up the usage tables in {where} ({_one_line(exc)}): check that the "
            "database is writable by this user"
        ) from exc
    return SCHEMA_VERSION


# -- reading ---------------------------------------------------------------------------------


def iter_records(
    db: peewee.Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[UsageRecord]:
    """Stored records with `since <= ts < until`, oldest first unless `newest_first`.
    Streams rows from a cursor, so exporting a large table does not load it into memory."""
    query = UsageLog.select(*_RECORD_COLUMNS)
    conditions = []
    if since is not None:
        conditions.append(_COL["ts"] >= since)
    if until is not None:
        conditions.append(_COL["ts"] < until)
    if user is not None:
        conditions.append(_COL["user"] == user)
    if model is not None:
        conditions.append(_COL["model"] == model)
    if conditions:
        query = query.where(*conditions)
    if newest_first:
        query = query.order_by(_COL["ts"].desc(), _COL["id"].desc())
    else:
        query = query.order_by(_COL["ts"], _COL["id"])
    if limit is not None:
        query = query.limit(limit)
    for row in query.bind(db).dicts().iterator():
        yield UsageRecord(**row)


def get_record(db: peewee.Database, request_id: str) -> UsageRecord | None:
    """The newest record with this request id (clients may reuse an `X-Request-ID`)."""
    query = (
        UsageLog.select(*_RECORD_COLUMNS)
        .where(_COL["request_id"] == request_id)
        .order_by(_COL["id"].desc())
        .limit(1)
    )
    row = next(iter(query.bind(db).dicts()), None)
    return None if row is None else UsageRecord(**row)


def export_records(
    db: peewee.Database, out: TextIO, fmt: str = "jsonl", since: datetime | None = None
) -> int:
    """Write records oldest first as JSON lines or CSV with exactly the record field names
    (`ts` as ISO-8601 UTC); returns how many were written."""
    if fmt not in _EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(_EXPORT_FORMATS)}")
    count = 0
    records = iter_records(db, since=since)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELD_NAMES)
        writer.writeheader()
        for record in records:
            writer.writerow(record.to_dict())
            count += 1
    else:
        for record in records:
            out.write(json.dumps(record.to_dict()) + "\n")
            count += 1
    return count


def prune(db: peewee.Database, older_than: timedelta) -> int:
    """Delete records older than `older_than`; returns how many were deleted."""
    cutoff = utcnow() - older_than
    return int(UsageLog.delete().where(_COL["ts"] < cutoff).bind(db).execute())


# -- durations -------------------------------------------------------------------------------

_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART: Final = re.compile(r"(\d+)([smhdw])")


def parse_duration(value: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d`, `2w`, or combined like `1h30m`."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"invalid duration {value!r}: use a whole number and a unit (s, m, h, d, w), "
            "e.g. 90s, 15m, 24h, 30d, 2w or 1h30m"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long") from None


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """A relative age (`24h`, `7d`, ... before `now`) or an ISO-8601 time (naive = UTC),
    returned as an aware UTC datetime."""
    with contextlib.suppress(ValueError, OverflowError):
        return _as_utc(now or utcnow()) - parse_duration(value)
    try:
        return _as_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}: use an age like 30m, 24h, 7d, 2w or an ISO-8601 time "
            "like 2026-01-31T12:00:00Z"
        ) from None


# -- the writer ------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _FlushMarker:
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    ok: bool = False


_STOP: Final = object()


def _split(items: list[object]) -> tuple[list[UsageRecord], list[_FlushMarker], bool]:
    """Queue items as (records, flush markers, whether the stop sentinel was among them)."""
    records: list[UsageRecord] = []
    markers: list[_FlushMarker] = []
    stop = False
    for item in items:
        if item is _STOP:
            stop = True
        elif isinstance(item, _FlushMarker):
            markers.append(item)
        else:
            records.append(typing.cast(UsageRecord, item))
    return records, markers, stop


class _Insert:
    """INSERT of many records with a few multi-row `VALUES (...), (...)` statements.

    Python's sqlite3 lets go of the GIL for each statement step and has to win it back from a
    busy event loop afterwards; with `executemany` that was once per record, so every record
    stalled the loop for a GIL hand-over. Here a batch takes one statement per power of two
    in its size (100 rows: 64 + 32 + 4). Power-of-two sizes only, because every distinct
    statement text stays prepared in the driver's statement cache, and one of 300 rows holds
    megabytes: a statement per batch size grew the sidecar by ~50 MB under load."""

    ROWS_PER_STATEMENT = 512

    def __init__(self, db: peewee.Database) -> None:
        # Quoted as peewee quotes them: `user` is a reserved word in PostgreSQL.
        q0, q1 = db.quote[0], db.quote[1]
        columns = ", ".join(f"{q0}{name}{q1}" for name in FIELD_NAMES)
        self.head = f"INSERT INTO {q0}{UsageLog._meta.table_name}{q1} ({columns}) VALUES "
        self.group = "(" + ", ".join([db.param] * len(FIELD_NAMES)) + ")"
        most = self.ROWS_PER_STATEMENT
        if isinstance(db, peewee.SqliteDatabase):  # SQLite caps the parameters per statement
            most = min(
                most, db.connection().getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(FIELD_NAMES)
            )
        self.per_statement = 1 << (max(1, most).bit_length() - 1)  # the largest power of two <= most
        self._sql: dict[int, str] = {}

    def sizes(self, rows: int) -> Iterator[int]:
        """Statement sizes for `rows` rows: whole largest statements, then the binary digits."""
        step = self.per_statement
        yield from itertools.repeat(step, rows // step)
        rest = rows % step
        while rest:
            size = 1 << (rest.bit_length() - 1)
            yield size
            rest -= size

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self.head + ", ".join([self.group] * rows)
        return text

    def run(self, db: peewee.Database, rows: list[list[Any]]) -> None:
        cursor = db.cursor()
        start = 0
        for size in self.sizes(len(rows)):
            chunk = rows[start : start + size]
            start += size
            cursor.execute(self.sql(size), list(itertools.chain.from_iterable(chunk)))


def _spill_line(record: UsageRecord) -> str:
    d = record.to_dict()
    d["ts"] = _as_utc(record.ts).isoformat()  # to_dict would read a naive ts as local time
    return json.dumps(d, default=str) + "\n"


def _ts_key(ts: object) -> str:
    """Comparable form of a stored or spilled ts; never raises (a bad one stays distinct)."""
    return _ts_to_db(ts) if isinstance(ts, datetime) else repr(ts)


def _rejected_line(record: object) -> str:
    """Best effort for a record that failed to store: even a non-UsageRecord is kept."""
    try:
        return _spill_line(typing.cast(UsageRecord, record))
    except Exception:
        return json.dumps({"unstorable": repr(record)}) + "\n"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return False  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _default_spill_dir(url: str) -> Path:
    if urlsplit(url).scheme.lower() == "sqlite":
        with contextlib.suppress(Exception):
            path = str(db_url.parse(url)["database"])
            if path != ":memory:":
                return Path(os.path.expanduser(path)).parent
    return Path("data")


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
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("queue_size and batch_size must be >= 1, flush_interval > 0")
        self.url = url
        self.spill_dir = Path(spill_dir) if spill_dir is not None else _default_spill_dir(url)
        self.written_total = 0
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
        self._insert: _Insert | None = None
        self._scrub_nul = False
        # Spill state. The lock is held only for a line write or a file rotation.
        self._spill_lock = threading.Lock()
        self._spilled = 0
        self._spill_pending = False
        self._live_spill: TextIO | None = None
        self._spill_seq = itertools.count()
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
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._overflow)

    @property
    def spilled_total(self) -> int:
        """Records written to spill files so far (they are re-ingested later)."""
        return self._spilled

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
            try:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the spill directory {self.spill_dir} "
                    f"({exc.strerror or exc}): make it a writable directory"
                ) from exc
            if not os.access(self.spill_dir, os.W_OK | os.X_OK):
                raise StoreError(
                    f"the spill directory {self.spill_dir} is not writable by this user: fix its permissions"
                )
        except BaseException:
            with contextlib.suppress(Exception):
                db.close()
            raise
        self._db = db
        self._insert = _Insert(db)
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
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    pass
                else:
                    if self._final_drain.is_set():  # lost a race with close(): nobody else
                        self._spill_batch(self._drain_queue())  # will read the queue now
                    return
            self._spill_record(record)
        except Exception as exc:  # metering must never break the proxy
            self._overflow.append(record)
            self.last_error = f"cannot spill a usage record to {self.spill_dir}: {_one_line(exc)}"

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
        with self._spill_lock:
            self._close_live_spill()
        if self._overflow:
            log.error(
                "usage store closing: %d records could be neither written nor spilled to %s",
                len(self._overflow),
                self.spill_dir,
            )
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()

    # -- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while True:
            items = self._take(block=not stopping)
            if items is None:
                if stopping or self._abort.is_set():
                    break
                if self._spill_pending and time.monotonic() >= self._next_ingest_at:
                    self._ingest_spill()
                continue
            records, markers, stop = _split(items)
            stopping = stopping or stop
            try:
                self._handle(records, markers)
            except Exception as exc:  # a bug must not stop metering: keep the batch, go on
                self.last_error = f"usage writer: {_one_line(exc)}"
                self._last_write_ok = False
                log.exception("usage writer: unexpected error; spilling the batch")
                self._spill_batch(records)  # re-ingest skips any that did get stored
                for marker in markers:
                    marker.done.set()
            if self._abort.is_set():
                break
        self._reset_connection()

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

    def _handle(self, records: list[UsageRecord], markers: list[_FlushMarker]) -> None:
        """Write the records, then answer the flush markers that came with them."""
        if records:
            self._write_batch(records)
        if markers:
            if self._spill_pending and not self._abort.is_set():
                self._ingest_spill()  # flush() covers spilled records too
            ok = self._last_write_ok and not self._spill_pending and not self._overflow
            for marker in markers:
                marker.ok = ok
                marker.done.set()

    def _write_batch(self, records: list[UsageRecord]) -> None:
        rows = self._rows(records)
        self._inflight = records
        try:
            for delay in (*self.retry_delays, None):
                try:
                    self._insert_rows(rows)
                except Exception as exc:
                    self._last_write_ok = False
                    self.last_error = f"writing to {_describe(self.db)} failed: {_one_line(exc)}"
                    self._reset_connection()
                    if delay is None or self._abort.wait(delay):
                        break
                else:
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
                row = [to_db(v) for to_db, v in zip(_TO_DB, _RECORD_VALUES(record), strict=True)]
            except Exception as exc:
                rejected.append(_rejected_line(record))
                self.last_error = f"unstorable usage record: {_one_line(exc)}"
                continue
            if self._scrub_nul:
                row = [v.replace("\x00", "") if isinstance(v, str) else v for v in row]
            rows.append(row)
        self._reject(rejected)
        return rows

    def _insert_rows(self, rows: list[list[Any]]) -> None:
        """One transaction of multi-row INSERTs: the cheap path (see `_Insert`)."""
        if not rows:
            return
        assert self._insert is not None
        db = self.db
        with db.atomic():
            self._insert.run(db, rows)

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

    # -- spilling -----------------------------------------------------------------------------

    def _new_spill_path(self) -> Path:
        # pid: a running process's files are left alone; ns + seq: unique, sorted by age.
        name = f"{_SPILL_PREFIX}{os.getpid()}-{time.time_ns()}-{next(self._spill_seq)}.jsonl"
        return self.spill_dir / name

    def _spill_record(self, record: UsageRecord) -> None:
        """Append one line to the live spill file (submit's path when the queue is full)."""
        line = _spill_line(record)
        with self._spill_lock:
            try:
                if self._live_spill is None:
                    self.spill_dir.mkdir(parents=True, exist_ok=True)
                    path = self._new_spill_path()
                    self._live_spill = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across calls
                self._live_spill.write(line)
                self._live_spill.flush()  # a crash keeps every line submit() returned for
            except OSError:
                self._close_live_spill()  # a torn line must not swallow the next record's
                raise
            self._spilled += 1
            self._spill_pending = True

    def _close_live_spill(self) -> None:
        """Caller holds the spill lock. The next spilled record starts a new file."""
        if self._live_spill is not None:
            with contextlib.suppress(OSError):
                self._live_spill.close()
            self._live_spill = None

    def _spill_batch(self, records: list[UsageRecord]) -> None:
        """Write records to their own spill file, renamed into place once complete."""
        if not records:
            return
        path = self._new_spill_path()
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(_spill_line(r) for r in records)
            os.replace(tmp, path)
        except Exception as exc:  # OSError, or a record that cannot even be serialised
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.last_error = f"cannot write spill file {tmp}: {_one_line(exc)}"
            log.error("%s; keeping %d records in memory", self.last_error, len(records))
            self._overflow.extend(records)
            return
        with self._spill_lock:
            self._spilled += len(records)
            self._spill_pending = True

    def _drain_queue(self) -> list[UsageRecord]:
        """Take every record left in the queue (and in overflow); flush markers there fail."""
        items: list[object] = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        with contextlib.suppress(IndexError):
            while self._overflow:
                items.append(self._overflow.popleft())
        records, markers, _ = _split(items)
        for marker in markers:
            marker.done.set()
        return records

    def _reject(self, lines: list[str]) -> None:
        """Keep what can never be stored for a human to inspect; never re-ingested."""
        if not lines:
            return
        path = self.spill_dir / f"usage-rejected-{os.getpid()}-{time.time_ns()}.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        except OSError as exc:
            log.error("cannot write %s: %s; %d rejected lines lost", path, exc, len(lines))
            return
        log.error("%d usage records cannot be stored; kept in %s", len(lines), path)

    # -- re-ingesting ---------------------------------------------------------------------------

    def _spill_candidates(self, *, startup: bool) -> list[Path]:
        own = os.getpid()
        found: list[Path] = []
        for path in sorted(self.spill_dir.glob(_SPILL_PREFIX + "*")):
            # A .tmp is a batch spill still being written, unless no writer is running yet.
            if path.name.endswith(".tmp") and not startup:
                continue
            match = _SPILL_NAME.match(path.name)
            if match is None:
                continue
            pid = int(match.group(1))
            if pid != own and _pid_alive(pid):
                continue  # another running sidecar still appends to it
            found.append(path)
        return found

    def _ingest_spill(self, *, startup: bool = False) -> bool:
        """Insert the spill files' records that are not stored yet, then delete the files."""
        with self._spill_lock:
            self._spill_pending = False
            self._close_live_spill()  # its lines are complete; new spills go to a new file
        paths: list[Path] = []
        try:
            paths = self._spill_candidates(startup=startup)
            for path in paths:
                self._ingest_file(path)
        except Exception as exc:
            self._spill_pending = True
            self._last_write_ok = False
            self.last_error = f"re-ingesting spill files from {self.spill_dir} failed: " + (_one_line(exc))
            log.warning("%s; retrying in %.0fs", self.last_error, self._ingest_backoff)
            self._next_ingest_at = time.monotonic() + self._ingest_backoff
            self._ingest_backoff = min(self._ingest_backoff * 2, self.ingest_backoff_max)
            self._reset_connection()
            return False
        self._ingest_backoff = 1.0
        if paths:
            self._last_write_ok = True
        return True

    def _ingest_file(self, path: Path) -> None:
        # Claim by rename, so no other ingest takes it; a claimed file left by a crash is
        # taken again next time, and the insert below skips what that run already stored.
        if not path.name.endswith(".ingesting"):
            claimed = path.with_name(path.name + ".ingesting")
            try:
                os.replace(path, claimed)
            except FileNotFoundError:
                return
            path = claimed
        bad_lines: list[str] = []
        inserted = 0
        db = self.db
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
                if len(chunk) >= self._batch_size:
                    inserted += self._insert_new(chunk)
                    chunk = []
            inserted += self._insert_new(chunk)
        self._reject(bad_lines)
        path.unlink()
        self.written_total += inserted
        log.info("re-ingested %d usage records from %s", inserted, path.name)

    def _insert_new(self, records: list[UsageRecord]) -> int:
        """Insert the records whose (request_id, ts) is not stored yet. That makes
        re-ingesting idempotent: a crash between commit and delete, or a batch that did
        commit although the driver reported an error, does not count twice."""
        if not records:
            return 0
        ids = list({r.request_id for r in records})
        stored = (
            UsageLog.select(_COL["request_id"], _COL["ts"])
            .where(_COL["request_id"].in_(ids))
            .bind(self.db)
            .tuples()
        )
        seen = {(rid, _ts_key(ts)) for rid, ts in stored}
        fresh: list[UsageRecord] = []
        for record in records:
            key = (record.request_id, _ts_key(record.ts))
            if key not in seen:
                seen.add(key)
                fresh.append(record)  # one that cannot be stored is rejected by _rows
        rows = self._rows(fresh)
        if rows:
            assert self._insert is not None
            self._insert.run(self.db, rows)
        return len(rows)
