"""The usage store against real SQLite files and a real PostgreSQL server (the `store_url`
fixture runs a test on both): no mocks of peewee, sqlite3 or psycopg2. Tests of what only
SQLite has (the file, WAL, its parameter limit, its busy timeout) take `db_path`."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import peewee
import pytest

from agent.durations import parse_duration
from agent.records import FIELD_NAMES, UsageRecord
from agent.store.database import StoreError, errors_as_store_error, migrate, open_database
from agent.store.insert import MultiRowInsert
from agent.store.queries import export_records, get_record, iter_records, prune
from agent.store.schema import SCHEMA_VERSION
from agent.store.writer import UsageStore


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # tmp_path is absolute, so this is the four-slash form


def full_record(request_id: str = "req-full") -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        ts=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2))),
        user="alice",
        team="research",
        client_ip="10.0.0.7",
        upstream="http://ollama:11434",
        dialect="ollama",
        endpoint="/api/chat",
        operation="chat",
        model="llama3.2:1b",
        stream=True,
        status=200,
        outcome="ok",
        error="none really",
        prompt_tokens=12,
        completion_tokens=34,
        total_tokens=46,
        cached_tokens=5,
        reasoning_tokens=7,
        usage_source="reported",
        latency_ms=123.456,
        ttft_ms=7.25,
        server_duration_ms=110.5,
        tokens_per_second=42.125,
        request_bytes=321,
        response_bytes=4321,
        prompt="Why is the sky blue? ünïcode ✓",
        instance="ollama-0",
        cost=0.000123,
    )


def make_records(n: int, prefix: str = "r") -> list[UsageRecord]:
    return [UsageRecord(request_id=f"{prefix}{i}") for i in range(n)]


def plain_sqlite(db_path: Path) -> contextlib.closing[sqlite3.Connection]:
    """What a user's `sqlite3 data/usage.db` session is: autocommit, no peewee."""
    return contextlib.closing(sqlite3.connect(db_path, isolation_level=None))


def stored_ids(where: Path | str) -> list[str]:
    """The stored request ids in id order: of a SQLite file by plain sqlite3, or of a URL."""
    if isinstance(where, Path):
        with plain_sqlite(where) as conn:
            return [row[0] for row in conn.execute("SELECT request_id FROM usage_logs ORDER BY id")]
    db = open_database(where)
    try:
        return [row[0] for row in db.execute_sql("SELECT request_id FROM usage_logs ORDER BY id")]
    finally:
        db.close()


@contextlib.contextmanager
def write_locked(url: str) -> Iterator[None]:
    """Another connection holds the usage table's write lock: the writer waits in the database
    (SQLite's busy wait, PostgreSQL's lock queue) until the block ends."""
    db = open_database(url)
    try:
        if isinstance(db, peewee.SqliteDatabase):
            db.execute_sql("BEGIN EXCLUSIVE")
        else:
            db.execute_sql("BEGIN")
            db.execute_sql("LOCK TABLE usage_logs IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            db.execute_sql("ROLLBACK")
    finally:
        db.close()


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("usage-spill-*"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "usage.db"


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[UsageStore]:
    s = UsageStore(store_url, spill_dir=tmp_path / "spill")
    s.start()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[UsageStore]:
    s = UsageStore(sqlite_url(db_path))
    s.start()
    yield s
    s.close()


# -- storing and reading back ------------------------------------------------------------------


def test_every_field_round_trips_including_none_and_utc_ts(store: UsageStore) -> None:
    full = full_record()
    assert all(getattr(full, name) is not None for name in FIELD_NAMES)
    sparse = UsageRecord(request_id="req-sparse", ts=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))
    store.submit(full)
    store.submit(sparse)
    assert store.flush()

    got = get_record(store.db, "req-full")
    assert got == full  # aware datetimes compare by instant
    assert got is not None and got.ts.tzinfo is UTC and got.ts.hour == 3
    assert got.ts.microsecond == 891011
    got_sparse = get_record(store.db, "req-sparse")
    assert got_sparse == sparse
    assert got_sparse is not None and got_sparse.status is None and got_sparse.prompt is None
    assert isinstance(got_sparse.stream, bool)
    assert get_record(store.db, "nope") is None


def test_a_batch_bigger_than_one_insert_statement_is_stored_whole(store_url: str, tmp_path: Path) -> None:
    # batch_size above the rows one multi-row INSERT takes: the batch spans statements.
    store = UsageStore(store_url, batch_size=1200, linger=0.5, spill_dir=tmp_path / "spill")
    store.start()
    try:
        records = [dataclasses.replace(full_record(), request_id=f"big-{i}") for i in range(1234)]
        for record in records:
            store.submit(record)
        assert store.flush(30)
    finally:
        store.close()
    assert stored_ids(store_url) == [r.request_id for r in records]


def test_inserts_respect_a_small_sqlite_parameter_limit(db_path: Path) -> None:
    db = open_database(sqlite_url(db_path))
    migrate(db)
    # Old SQLite builds allow 999 parameters per statement; this one allows two rows' worth.
    db.connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2 * len(FIELD_NAMES) + 1)
    insert = MultiRowInsert(db)
    assert insert.per_statement == 2
    rows = UsageStore(sqlite_url(db_path))._rows([full_record(f"lim-{i}") for i in range(5)])
    with db.atomic():
        insert.run(db, rows)
    assert sorted(r.request_id for r in iter_records(db)) == [f"lim-{i}" for i in range(5)]
    db.close()


def test_batches_of_every_size_share_a_few_statements(store_url: str, tmp_path: Path) -> None:
    # Each distinct statement stays prepared in the driver's cache (megabytes for hundreds of
    # rows), so batch sizes must not each get their own.
    db = open_database(store_url)
    migrate(db)
    insert = MultiRowInsert(db)
    rows = UsageStore(store_url, spill_dir=tmp_path)._rows([full_record(f"s-{i}") for i in range(1200)])
    start = 0
    for size in (1, 2, 3, 7, 100, 255, 300, 512, 20):
        with db.atomic():
            insert.run(db, rows[start : start + size])
        start += size
    assert len(insert._sql) <= insert.per_statement.bit_length()
    assert len(stored_ids(store_url)) == start
    db.close()


def test_table_is_usage_logs_and_plain_sqlite3_can_query_it(sqlite_store: UsageStore, db_path: Path) -> None:
    sqlite_store.submit(full_record())
    assert sqlite_store.flush()
    with plain_sqlite(db_path) as conn:
        cur = conn.execute("SELECT * FROM usage_logs ORDER BY id DESC LIMIT 5;")
        rows = cur.fetchall()
        columns = [d[0] for d in cur.description]
        assert columns == ["id", *FIELD_NAMES]
        row = dict(zip(columns, rows[0], strict=True))
        assert row["ts"] == "2026-03-04 03:06:07.891011"  # UTC, sorts and compares as text
        assert row["user"] == "alice" and row["stream"] == 1
        indexed = {
            info[2]
            for index in conn.execute("PRAGMA index_list('usage_logs')")
            for info in conn.execute(f"PRAGMA index_info('{index[1]}')")
        }
        assert indexed == {"ts", "request_id", "user", "model", "team", "instance"}


def test_sqlite_uses_wal(sqlite_store: UsageStore, db_path: Path) -> None:
    with plain_sqlite(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_20k_records_from_a_thread_are_all_stored_after_flush(store: UsageStore) -> None:
    records = make_records(20_000)
    producer = threading.Thread(target=lambda: [store.submit(r) for r in records])
    producer.start()
    producer.join()
    assert store.flush(timeout=60)
    ids = stored_ids(store.url)
    assert len(ids) == 20_000
    assert set(ids) == {r.request_id for r in records}
    assert store.healthy and store.queue_depth == 0


def test_memory_database_works_across_threads(tmp_path: Path) -> None:
    s = UsageStore("sqlite:///:memory:", spill_dir=tmp_path)
    s.start()
    try:
        for r in make_records(50):
            s.submit(r)
        assert s.flush()
        assert [r.request_id for r in iter_records(s.db, limit=3)] == ["r0", "r1", "r2"]
    finally:
        s.close()


# -- backpressure, failures and spill files ---------------------------------------------------


def test_close_drains_the_queue(store_url: str, tmp_path: Path) -> None:
    s = UsageStore(store_url, batch_size=50, spill_dir=tmp_path / "spill")
    s.start()
    with write_locked(store_url):  # keep the writer from getting ahead of us
        for r in make_records(500):
            s.submit(r)
        assert s.written_total == 0
        assert s.queue_depth >= 500 - 50  # all queued but the batch the writer holds
    s.close()
    assert sorted(stored_ids(store_url)) == sorted(f"r{i}" for i in range(500))
    assert spill_files(tmp_path / "spill") == []
    assert not s.healthy


def test_close_spills_what_it_cannot_write_in_time(db_path: Path) -> None:
    s = UsageStore(sqlite_url(db_path) + "?timeout=0.05", batch_size=10)
    s.start()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the database stays locked through close()
    try:
        for r in make_records(100):
            s.submit(r)
        s.close(timeout=0.2)
        spilled = [
            json.loads(line) for f in spill_files(db_path.parent) for line in f.read_text().splitlines()
        ]
        # A batch may be spilled twice (writer and close); re-ingest stores it once.
        assert {d["request_id"] for d in spilled} == {f"r{i}" for i in range(100)}
        assert s.spilled_total >= 100
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    again = UsageStore(sqlite_url(db_path))
    again.start()
    again.close()
    assert sorted(stored_ids(db_path)) == sorted(f"r{i}" for i in range(100))


def test_unstorable_values_are_set_aside_or_repaired_not_retried_forever(
    store: UsageStore,
) -> None:
    # Each of these would fail its whole batch in SQLite or PostgreSQL on every retry.
    store.submit(UsageRecord(request_id="bad-float", latency_ms="fast"))  # type: ignore[arg-type]
    store.submit(UsageRecord(request_id="bad-null", upstream=None))  # type: ignore[arg-type]
    store.submit(UsageRecord(request_id="bad-int", prompt_tokens=10**30))
    store.submit(UsageRecord(request_id="surrogate", model="x\ud800y"))  # from JSON "\ud800"
    store.submit(UsageRecord(request_id="good"))
    assert store.flush()
    stored = {r.request_id: r for r in iter_records(store.db)}
    assert sorted(stored) == ["good", "surrogate"]
    assert stored["surrogate"].model == "x?y"
    rejected = "".join(f.read_text() for f in store.spill_dir.glob("usage-rejected-*"))
    for request_id in ("bad-float", "bad-null", "bad-int"):
        assert f'"{request_id}"' in rejected
    assert store.healthy


def test_full_queue_spills_instead_of_blocking_and_nothing_is_lost_or_doubled(
    store_url: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spill"
    s = UsageStore(store_url, queue_size=2, batch_size=5, spill_dir=spill)
    s.start()
    # Another connection holds the write lock: the writer waits inside the database.
    with write_locked(store_url):
        records = make_records(200)
        for r in records:
            s.submit(r)  # would deadlock here if submit waited for the queue
        assert s.written_total == 0
        assert s.spilled_total >= 200 - 2 - 5 - 1  # at most queue + one batch are in memory
        assert spill_files(spill)
    s.close()

    again = UsageStore(store_url, spill_dir=spill)
    again.start()  # re-ingests what the first run spilled
    again.close()
    ids = stored_ids(store_url)
    assert sorted(ids) == sorted(r.request_id for r in records)  # every record exactly once
    assert spill_files(spill) == []


def test_failing_batches_are_retried_spilled_and_recovered(db_path: Path) -> None:
    # SQLite only: its busy timeout makes each attempt fail fast while the lock is held
    # (PostgreSQL failing for real is a stopped server: tests/integration/test_postgres*.py).
    # A short busy timeout so each attempt fails fast while the lock is held.
    s = UsageStore(sqlite_url(db_path) + "?timeout=0.05")
    s.retry_delays = (0.01,)
    s.start()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for r in make_records(3):
            s.submit(r)
        assert not s.flush(timeout=30)  # the batch fails and is spilled; re-ingest fails too
        assert s.failed_batches >= 1
        assert not s.healthy
        assert s.last_error is not None and "locked" in s.last_error
        assert spill_files(db_path.parent)
        assert s.spill_waiting() == 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.flush(timeout=30)  # the spill is re-ingested now that the lock is gone
    assert s.healthy
    assert sorted(stored_ids(db_path)) == ["r0", "r1", "r2"]
    assert spill_files(db_path.parent) == []
    # What the stop line reports: nothing waits any more, though 3 were spilled on the way.
    assert (s.spilled_total, s.spill_waiting()) == (3, 0)
    s.close()


def test_records_submitted_before_start_or_after_close_are_kept(store_url: str, tmp_path: Path) -> None:
    s = UsageStore(store_url, spill_dir=tmp_path / "spill")
    s.submit(UsageRecord(request_id="early"))
    assert not s.flush(timeout=0.1)  # nothing can be committed before start()
    s.start()
    assert s.flush()
    s.close()
    s.submit(UsageRecord(request_id="late"))  # after close: spilled, not raised, not dropped
    assert s.spilled_total == 1
    again = UsageStore(store_url, spill_dir=tmp_path / "spill")
    again.start()
    again.close()
    assert sorted(stored_ids(store_url)) == ["early", "late"]


def test_reingest_after_a_crash_does_not_double_insert(store_url: str, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    first = UsageStore(store_url, spill_dir=spill_dir)
    first.start()
    stored = make_records(3, prefix="s")
    for r in stored:
        first.submit(r)
    assert first.flush()
    first.close()

    def lines(records: list[UsageRecord]) -> str:
        return "".join(json.dumps(r.to_dict()) + "\n" for r in records)

    pid = os.getpid()
    # Claimed and committed, but the crash came before it was deleted.
    (spill_dir / f"usage-spill-{pid}-1-0.jsonl.ingesting").write_text(
        lines([*stored, UsageRecord(request_id="n0")])
    )
    # A spill whose last line was torn by the crash.
    (spill_dir / f"usage-spill-{pid}-2-0.jsonl").write_text(
        lines([UsageRecord(request_id="n1")]) + '{"request_id": "tor'
    )
    # A batch spill that was never renamed into place.
    (spill_dir / f"usage-spill-{pid}-3-0.jsonl.tmp").write_text(lines([UsageRecord(request_id="n2")]))
    # A live process's file (our parent) is still being appended to: leave it alone.
    foreign = spill_dir / f"usage-spill-{os.getppid()}-4-0.jsonl"
    foreign.write_text(lines([UsageRecord(request_id="other")]))

    second = UsageStore(store_url, spill_dir=spill_dir)
    second.start()
    second.close()
    assert sorted(stored_ids(store_url)) == ["n0", "n1", "n2", "s0", "s1", "s2"]
    assert spill_files(spill_dir) == [foreign]
    rejected = list(spill_dir.glob("usage-rejected-*"))
    assert len(rejected) == 1 and "tor" in rejected[0].read_text()


def test_spill_dir_defaults_next_to_the_sqlite_file(db_path: Path) -> None:
    assert UsageStore(sqlite_url(db_path)).spill_dir == db_path.parent
    assert UsageStore("postgresql://u@db/usage").spill_dir == Path("data")


# -- opening, migrating and errors --------------------------------------------------------------


def test_unwritable_directory_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    url = sqlite_url(blocker / "db.sqlite")
    with pytest.raises(StoreError, match=str(blocker)) as err:
        open_database(url)
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match=str(blocker)):
        UsageStore(url).start()


def test_a_file_that_is_not_sqlite_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=str(path)):
        migrate(open_database(sqlite_url(path)))


def test_unsupported_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="sqlite:///"):
        open_database("mongodb://localhost/usage")


def test_postgresql_without_driver_says_what_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg"):
        pytest.skip("a PostgreSQL driver is installed")
    with pytest.raises(StoreError, match=r"sidemeter\[postgres\]") as err:
        open_database("postgresql://meter:s3cret@db.example:5432/usage")
    assert "s3cret" not in str(err.value) and "db.example" in str(err.value)


def test_migrate_is_idempotent_and_refuses_a_newer_schema(store_url: str, tmp_path: Path) -> None:
    db = open_database(store_url)
    assert migrate(db) == SCHEMA_VERSION
    assert migrate(db) == SCHEMA_VERSION
    assert db.execute_sql("SELECT version FROM schema_meta").fetchall() == [(SCHEMA_VERSION,)]
    db.execute_sql(f"INSERT INTO schema_meta (version) VALUES ({SCHEMA_VERSION + 1})")
    db.close()
    with pytest.raises(StoreError, match=r"newer.*upgrade Sidemeter"):
        migrate(open_database(store_url))
    with pytest.raises(StoreError, match="newer"):
        UsageStore(store_url, spill_dir=tmp_path / "spill").start()


def test_migrate_refuses_a_foreign_usage_logs_table(store_url: str) -> None:
    db = open_database(store_url)
    db.execute_sql('CREATE TABLE usage_logs (id INTEGER PRIMARY KEY, "user" TEXT)')
    with pytest.raises(StoreError, match="lacks columns request_id"):
        migrate(db)
    db.close()


# -- queries, export, prune ---------------------------------------------------------------------


@pytest.fixture
def seeded(store_url: str, tmp_path: Path) -> Iterator[peewee.Database]:
    db = open_database(store_url)
    migrate(db)
    store = UsageStore(store_url, spill_dir=tmp_path / "spill")
    store.start()
    base = datetime.now(UTC)
    for i, (user, model) in enumerate([("ann", "a"), ("bob", "b"), ("ann", "b"), ("cy", "a")]):
        store.submit(UsageRecord(request_id=f"q{i}", ts=base - timedelta(hours=i), user=user, model=model))
    store.submit(UsageRecord(request_id="old", ts=base - timedelta(days=40), user="ann"))
    assert store.flush()
    store.close()
    yield db
    db.close()


def test_iter_records_filters_and_orders(seeded: peewee.Database) -> None:
    def ids(**kw: object) -> list[str]:
        return [r.request_id for r in iter_records(seeded, **kw)]  # type: ignore[arg-type]

    now = datetime.now(UTC)
    assert ids() == ["old", "q3", "q2", "q1", "q0"]
    assert ids(newest_first=True, limit=2) == ["q0", "q1"]
    assert ids(user="ann") == ["old", "q2", "q0"]
    assert ids(model="b") == ["q2", "q1"]
    assert ids(since=now - timedelta(hours=1, minutes=30)) == ["q1", "q0"]
    assert ids(until=now - timedelta(days=1)) == ["old"]


def test_export_jsonl_has_exactly_the_record_fields(seeded: peewee.Database) -> None:
    out = io.StringIO()
    assert export_records(seeded, out, "jsonl", since=datetime.now(UTC) - timedelta(days=1)) == 4
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(objects) == 4
    assert all(list(o) == list(FIELD_NAMES) for o in objects)
    assert datetime.fromisoformat(objects[0]["ts"]).utcoffset() == timedelta(0)
    assert objects[0]["ts"].endswith("+00:00")


def test_export_csv_has_a_header_of_field_names(seeded: peewee.Database) -> None:
    out = io.StringIO()
    assert export_records(seeded, out, "csv") == 5
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == list(FIELD_NAMES)
    assert len(rows) == 6
    with pytest.raises(ValueError, match="jsonl, csv"):
        export_records(seeded, io.StringIO(), "xml")


def test_prune_deletes_only_older_records(seeded: peewee.Database) -> None:
    assert prune(seeded, timedelta(days=30)) == 1
    assert [r.request_id for r in iter_records(seeded)] == ["q3", "q2", "q1", "q0"]
    assert prune(seeded, parse_duration("30d")) == 0


def test_a_driver_error_becomes_one_line_naming_the_database(db_path: Path) -> None:
    db = open_database(sqlite_url(db_path))
    expected = rf"^reading {db_path} failed \(no such table: nope\): check"
    with pytest.raises(StoreError, match=expected) as err, errors_as_store_error(db, "reading"):
        db.execute_sql("SELECT * FROM nope")
    assert "\n" not in str(err.value)
    db.close()
