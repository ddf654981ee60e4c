"""Opening the database a URL names, and bringing its schema up to date.

Every failure is a StoreError whose message is one line naming the path or URL (passwords
redacted) and what to do, because `sidemeter run` and the CLI print it as it is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url
from playhouse import migrate as playhouse_migrate
from playhouse.pool import PooledPostgresqlDatabase

from agent.store.schema import (
    ADDED_COLUMNS,
    COLUMNS,
    MODELS,
    ROLLED_TABLE,
    ROLLUP_TABLE,
    ROLLUPS_REMADE,
    SCHEMA_VERSION,
    USAGE_TABLE,
    SchemaMeta,
    UsageLog,
)

log = logging.getLogger(__name__)

_SQLITE_TIMEOUT_S: Final = 5.0  # how long a writer waits on a locked SQLite file per attempt
_PG_CONNECT_TIMEOUT_S: Final = 10  # an unreachable server fails `run` at start, not minutes later
# How to name another database, for messages about one that is missing or empty.
_POINT_ELSEWHERE: Final = (
    "pass --db sqlite:///PATH or set SIDEMETER_DB to the database the sidecar writes "
    "(the demo writes sqlite:///data/demo.db)"
)


class StoreError(Exception):
    """The store cannot work. The message is one line naming the URL or path and what to do."""


def first_line(exc: BaseException) -> str:
    """An exception as one line of text (drivers put hints and context on further lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def describe(db: peewee.Database) -> str:
    """The database for a message: the SQLite file's absolute path, or name and host."""
    if isinstance(db, peewee.SqliteDatabase):
        path = str(db.database)
        return path if path == ":memory:" else os.path.abspath(path)
    host = db.connect_params.get("host", "localhost")
    return f"database {db.database!r} on {host}"


@contextlib.contextmanager
def errors_as_store_error(db: peewee.Database, doing: str) -> Iterator[None]:
    """Turn a driver error while `doing` something with `db` into a one-line StoreError."""
    try:
        yield
    except StoreError:
        raise
    except (peewee.PeeweeException, sqlite3.Error) as exc:
        raise StoreError(
            f"{doing} {describe(db)} failed ({first_line(exc)}): check that it is a usage database "
            "this user may read and write, and that no other process keeps it locked"
        ) from exc


# -- opening ------------------------------------------------------------------------------------


def open_database(url: str, *, create: bool = True) -> peewee.Database:
    """Open (and connect to, so errors surface now) the database named by `url`:
    `sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite:///:memory:`, `postgresql://...`.

    With `create=False` (the CLI's reading and maintenance commands) a SQLite file that does
    not exist is a StoreError, and neither the file nor its folder is created."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return _open_sqlite(url, create=create)
    if is_postgresql(url):
        return _open_postgresql(url)
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///data/usage.db "
        "or postgresql://user:password@host:5432/dbname"
    )


def _open_sqlite(url: str, *, create: bool) -> peewee.SqliteDatabase:
    options = db_url.parse(url)
    path = str(options.pop("database"))
    try:
        timeout = float(options.pop("timeout", _SQLITE_TIMEOUT_S))
    except (TypeError, ValueError):
        raise StoreError(f"{url}: timeout must be a number of seconds, e.g. ?timeout=5") from None
    pragmas: dict[str, object] = {
        "synchronous": "normal",  # safe with WAL; no fsync per commit
        "busy_timeout": int(timeout * 1000),
    }
    if create:
        # Readers (ops API, CLI) never block the writer. Persistent in the file, so a database
        # the sidecar made is WAL for every later connection; a foreign file is left as it is.
        pragmas["journal_mode"] = "wal"
    if path == ":memory:":
        # Each connection to ":memory:" is its own empty database, so the writer thread and
        # the readers share one connection (SQLite's serialized mode makes that safe).
        memory = peewee.SqliteDatabase(
            path, pragmas=pragmas, timeout=timeout, thread_safe=False, check_same_thread=False, **options
        )
        return _connect_sqlite(memory, path, Path("."), warn=create)
    path = os.path.abspath(os.path.expanduser(path))
    parent = Path(path).parent
    if not create and not os.path.exists(path):
        raise StoreError(f"no usage database at {path}: {_POINT_ELSEWHERE}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {parent} for the database file {path} ({exc.strerror or exc}): "
            "make it a writable directory or choose another --db path"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"the folder {parent} of the database file {path} is not writable by this user: "
            "fix its permissions or choose another --db path"
        )
    db = peewee.SqliteDatabase(path, pragmas=pragmas, timeout=timeout, **options)
    return _connect_sqlite(db, path, parent, warn=create)


def _connect_sqlite(
    db: peewee.SqliteDatabase, path: str, parent: Path, *, warn: bool
) -> peewee.SqliteDatabase:
    try:
        db.connect()
        mode = db.journal_mode  # reading it also proves the file is a SQLite database
    except (peewee.PeeweeException, sqlite3.Error, OSError, TypeError) as exc:
        raise StoreError(
            f"cannot open the SQLite database {path} ({first_line(exc)}): check that {parent} is "
            f"writable by this user and {path} is a SQLite file, or choose another --db path"
        ) from exc
    if warn and mode not in ("wal", "memory"):  # e.g. a network filesystem without shared memory
        log.warning("SQLite %s runs in %s journal mode, not WAL: readers may block writes", path, mode)
    return db


def _postgresql_options(url: str) -> dict[str, object]:
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
        raise StoreError(
            f"{redact_url(url)} needs the PostgreSQL driver: "
            "pip install 'sidemeter[postgres]' (psycopg2-binary)"
        )
    options = db_url.parse(url, unquote_password=True, unquote_user=True)
    options.setdefault("connect_timeout", _PG_CONNECT_TIMEOUT_S)
    return options


def connect_postgresql(db: peewee.PostgresqlDatabase, url: str) -> None:
    """Connect `db` (opened from `url`), as a StoreError saying what to check."""
    try:
        db.connect(reuse_if_open=True)
    except Exception as exc:  # driver errors vary; all of them mean "cannot use this URL"
        raise StoreError(
            f"cannot connect to {redact_url(url)} ({first_line(exc)}): check that the server is up and the "
            "host, port, database, user and password in the URL are right"
        ) from exc


def _open_postgresql(url: str) -> peewee.PostgresqlDatabase:
    db = peewee.PostgresqlDatabase(**_postgresql_options(url))
    connect_postgresql(db, url)
    return db


def is_postgresql(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("postgres", "postgresql")


def postgresql_pool(
    url: str, *, max_connections: int, stale_s: float, wait_s: float
) -> PooledPostgresqlDatabase:
    """A pool of connections to the PostgreSQL database `url` names, for threads that read
    (each thread takes one with `connect`, gives it back with `close`). Connects lazily:
    `connect_postgresql` turns a failure into a StoreError."""
    return PooledPostgresqlDatabase(
        max_connections=max_connections, stale_timeout=stale_s, timeout=wait_s, **_postgresql_options(url)
    )


# -- the schema ---------------------------------------------------------------------------------


def _applied_version(db: peewee.Database) -> int:
    if not db.table_exists(SchemaMeta._meta.table_name):
        return 0
    return int(SchemaMeta.select(peewee.fn.MAX(SchemaMeta.version)).bind(db).scalar() or 0)


def require_schema(db: peewee.Database) -> int:
    """The schema version of a database the sidecar (or `db migrate`) has set up; a StoreError
    for one without the usage tables. Reads only: a reading command never creates tables."""
    with errors_as_store_error(db, "reading the schema of"):
        if not db.table_exists(USAGE_TABLE):
            raise StoreError(
                f"{describe(db)} has no usage tables yet (no sidecar has written to it): "
                f"{_POINT_ELSEWHERE}, or create them with sidemeter db migrate"
            )
        return _applied_version(db)


def migrate(db: peewee.Database) -> int:
    """Create the tables if needed, upgrade older ones, and return the schema version.
    Idempotent; refuses a database written by a newer Sidemeter rather than guessing at its
    layout."""
    where = describe(db)
    try:
        with db.atomic():
            found = _applied_version(db)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"{where} has usage schema version {found}, newer than this Sidemeter "
                    f"understands ({SCHEMA_VERSION}): upgrade Sidemeter or use another --db"
                )
            if db.table_exists(USAGE_TABLE):
                _add_columns(db)
                _check_columns(db, where)
                if found < 2 and isinstance(db, peewee.SqliteDatabase):
                    _rebuild_with_never_reused_ids(db)
                if 0 < found < ROLLUPS_REMADE:
                    _drop_rollups(db)
            for model in MODELS:
                peewee.SchemaManager(model, database=db).create_all(safe=True)
            # Schema 2 -> 3 adds the rollup tables (3 -> 4 makes them anew); the writer fills
            # them from the stored records a few periods at a time (a big store would hold the
            # start for minutes), and until then a window reads those records directly.
            # Always a write, even when nothing changed: a read-only database fails here, at
            # start, instead of at the first batch.
            SchemaMeta.insert(version=SCHEMA_VERSION).on_conflict_ignore().bind(db).execute()
    except StoreError:
        raise
    except (peewee.PeeweeException, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot set up the usage tables in {where} ({first_line(exc)}): check that the "
            "database is writable by this user"
        ) from exc
    return SCHEMA_VERSION


def _add_columns(db: peewee.Database) -> None:
    """Schema 3 -> 4 (and later): add the record fields an older table lacks, as nullable
    columns (existing rows read None); create_all adds their indexes under the model's names."""
    have = {c.name for c in db.get_columns(USAGE_TABLE)}
    if not have:
        return
    migrator = playhouse_migrate.SchemaMigrator.from_database(db)
    for name, version in ADDED_COLUMNS.items():
        field = COLUMNS[name]
        if field.column_name in have:
            continue
        # A copy without index=True: add_column would name the index its own way.
        column = type(field)(null=True)
        playhouse_migrate.migrate(migrator.add_column(USAGE_TABLE, field.column_name, column))
        log.info("usage store %s: column %s added (schema %d)", describe(db), name, version)


def _drop_rollups(db: peewee.Database) -> None:
    """Schema 3 -> 4: the rollups gain the instance key and the cost sums, which the old rows
    cannot be split into; dropped here, create_all makes them in the new layout, and the
    writer rolls the records up again (both tables go, so no period counts as rolled up)."""
    for table in (ROLLUP_TABLE, ROLLED_TABLE):
        if db.table_exists(table):
            db.execute_sql(f"DROP TABLE {db.quote[0]}{table}{db.quote[1]}")
            log.info(
                "usage store %s: %s dropped, rolled up again (schema %d)", describe(db), table, ROLLUPS_REMADE
            )


def _check_columns(db: peewee.Database, where: str) -> None:
    have = {c.name for c in db.get_columns(USAGE_TABLE)}
    missing = [f.column_name for f in UsageLog._meta.sorted_fields if f.column_name not in have]
    if missing:
        raise StoreError(
            f"the usage_logs table in {where} lacks columns {', '.join(missing)} (made by "
            "another tool?): rename it (ALTER TABLE usage_logs RENAME TO usage_logs_old) "
            "or use another --db"
        )


_V1_TABLE: Final = "usage_logs_v1"


def _rebuild_with_never_reused_ids(db: peewee.SqliteDatabase) -> None:
    """Schema 1 -> 2 on SQLite: `id` becomes INTEGER PRIMARY KEY AUTOINCREMENT. SQLite cannot
    alter a column, so the rows move, ids included, into a new table of the same name.
    Runs inside migrate's transaction: a failure leaves version 1 as it was."""
    columns = ", ".join(f'"{field.column_name}"' for field in COLUMNS.values())
    # Legacy renaming leaves views that query usage_logs alone (modern renaming would point
    # them at the old table, which is dropped below), so they read the new table afterwards.
    legacy = db.execute_sql("PRAGMA legacy_alter_table").fetchone()[0]
    db.execute_sql("PRAGMA legacy_alter_table = ON")
    try:
        db.execute_sql(f'ALTER TABLE "{USAGE_TABLE}" RENAME TO "{_V1_TABLE}"')
    finally:
        db.execute_sql(f"PRAGMA legacy_alter_table = {int(legacy)}")
    # The indexes moved with the table under their names; the new table's take those names.
    old_indexes = db.execute_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        (_V1_TABLE,),
    ).fetchall()
    for (name,) in old_indexes:
        db.execute_sql(f'DROP INDEX "{name}"')
    peewee.SchemaManager(UsageLog, database=db).create_all(safe=False)
    db.execute_sql(f'INSERT INTO "{USAGE_TABLE}" ({columns}) SELECT {columns} FROM "{_V1_TABLE}"')
    db.execute_sql(f'DROP TABLE "{_V1_TABLE}"')
    log.info("usage store %s: schema 1 -> 2 (ids are never reused)", describe(db))
