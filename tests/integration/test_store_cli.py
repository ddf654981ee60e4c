"""`sidemeter usage export` and `sidemeter db ...` through the real CLI against real SQLite
files (and a real PostgreSQL server where a test takes `store_url`): missing and empty
databases, prune's confirmation, ids that are never reused, and the schema 1 -> 2 migration
of a database file made with version 1's DDL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import peewee
import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from agent.records import FIELD_NAMES, UsageRecord
from agent.store.database import migrate, open_database
from agent.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, UsageLog
from agent.store.writer import UsageStore

DEMO_HINT = "sqlite:///data/demo.db"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sidemeter.toml, no SIDEMETER_* variables: only what each test passes."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("SIDEMETER_"):
            monkeypatch.delenv(key)


def sidemeter(*args: str, answer: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=answer, catch_exceptions=False)


def url(where: Path | str) -> str:
    """A SQLite file's URL; a URL (the `store_url` fixture's) as it is."""
    return where if isinstance(where, str) else f"sqlite:///{where}"


def plain_sqlite(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def ids_and_request_ids(where: Path | str) -> list[tuple[int, str]]:
    """Of a SQLite file as plain sqlite3 reads it, or of a database URL."""
    if isinstance(where, Path):
        with plain_sqlite(where) as conn:
            return conn.execute("SELECT id, request_id FROM usage_logs ORDER BY id").fetchall()
    db = open_database(where)
    try:
        rows = db.execute_sql("SELECT id, request_id FROM usage_logs ORDER BY id").fetchall()
        return [(int(i), str(r)) for i, r in rows]
    finally:
        db.close()


def shown(where: Path | str) -> str:
    """How the CLI names the database in its questions."""
    if isinstance(where, str) and where.startswith("postgresql:"):
        return f"database {where.rpartition('/')[2]!r}"
    return str(where).removeprefix("sqlite:///")


def store_records(path: Path | str, records: list[UsageRecord]) -> None:
    """As the sidecar stores them: through UsageStore (which also migrates)."""
    store = UsageStore(url(path))
    store.start()
    try:
        for record in records:
            store.submit(record)
        assert store.flush()
    finally:
        store.close()


def aged(*hours: float) -> list[UsageRecord]:
    now = datetime.now(UTC)
    return [UsageRecord(request_id=f"r{i}", ts=now - timedelta(hours=h)) for i, h in enumerate(hours)]


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- a database that is not there, or not set up ---------------------------------------------------

READING_AND_MAINTENANCE = [
    ("usage", "export"),
    ("usage", "export", "--format", "csv"),
    ("db", "prune", "--older-than", "30d"),
    ("db", "prune", "--older-than", "0d", "--yes"),
    ("db", "prune", "--older-than", "1d", "--dry-run"),
    ("db", "reset", "--yes"),
    ("stats",),
]


@pytest.mark.parametrize("command", READING_AND_MAINTENANCE)
def test_a_missing_database_is_one_line_naming_the_file_and_nothing_is_created(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    missing = tmp_path / "nowhere" / "usage.db"
    result = sidemeter(*command, "--db", url(missing))
    assert_one_line_error(result, str(missing), "--db", "SIDEMETER_DB", DEMO_HINT)
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", READING_AND_MAINTENANCE)
def test_the_default_database_is_named_by_its_absolute_path(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = sidemeter(*command)  # sqlite:///data/usage.db, relative to the working directory
    assert_one_line_error(result, str(tmp_path / "data" / "usage.db"), "SIDEMETER_DB")
    assert not (tmp_path / "data").exists()


def test_sidemeter_db_in_the_environment_is_the_database_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "env.db"
    monkeypatch.setenv("SIDEMETER_DB", url(missing))
    assert_one_line_error(sidemeter("usage", "export"), str(missing))
    assert not missing.exists()


@pytest.mark.parametrize("command", READING_AND_MAINTENANCE)
def test_a_file_without_the_usage_tables_is_one_line_and_left_as_it_was(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    with plain_sqlite(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    other_bytes = other.read_bytes()
    for path in (empty, other):
        result = sidemeter(*command, "--db", url(path))
        assert_one_line_error(result, str(path), "no usage tables", "db migrate", "--db")
    assert empty.read_bytes() == b""
    assert other.read_bytes() == other_bytes
    with plain_sqlite(other) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"notes"}


def test_db_migrate_creates_the_database_and_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "usage.db"
    result = sidemeter("db", "migrate", "--db", url(path))
    assert result.exit_code == 0, result.output
    assert f"schema version {SCHEMA_VERSION}" in result.stdout
    export = sidemeter("usage", "export", "--db", url(path))
    assert export.exit_code == 0 and export.stdout == ""
    assert "0 record(s) exported" in export.stderr


def test_export_reads_what_the_sidecar_stored(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(2, 1))
    result = sidemeter("usage", "export", "--db", url(path), "--since", "90m")
    assert result.exit_code == 0, result.output
    assert [line.count('"request_id": "r1"') for line in result.stdout.splitlines()] == [1]


def test_a_folder_that_cannot_be_created_is_named_as_the_database_files_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    path = blocker / "usage.db"
    result = sidemeter("db", "migrate", "--db", url(path))
    assert_one_line_error(result, f"the folder {blocker} for the database file {path}", "--db")
    assert "data directory" not in result.stderr


def test_a_read_only_folder_is_named_as_the_database_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ro" / "usage.db"
    store_records(path, aged(1))
    folder = path.parent
    if os.geteuid() == 0:  # root may write anywhere: let this folder fail the access check
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode))
    else:
        folder.chmod(0o555)
    try:
        for command in (
            ("db", "migrate"),
            ("db", "prune", "--older-than", "0d", "--yes"),
            ("usage", "export"),
        ):
            result = sidemeter(*command, "--db", url(path))
            assert_one_line_error(
                result, f"the folder {folder} of the database file {path} is not writable", "permissions"
            )
            assert "data directory" not in result.stderr
    finally:
        folder.chmod(0o755)


# -- prune asks before it deletes every record -------------------------------------------------------


def test_prune_that_would_delete_every_record_asks_with_counts_and_cutoff(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(3, 2, 1))
    declined = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", answer="n\n")
    assert declined.exit_code != 0
    prompt = declined.stdout.splitlines()[0]
    assert "3 of 3 usage records" in prompt and shown(path) in prompt
    cutoff = datetime.fromisoformat(prompt.split("older than ")[1].split(" UTC")[0]).replace(tzinfo=UTC)
    assert abs(cutoff - datetime.now(UTC)) < timedelta(minutes=1)
    assert len(ids_and_request_ids(path)) == 3

    accepted = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "3 record(s) deleted" in accepted.stdout
    assert ids_and_request_ids(path) == []


def test_prune_with_yes_does_not_ask(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(3, 2))
    result = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", "--yes")
    assert result.exit_code == 0, result.output
    assert "?" not in result.stdout and "2 record(s) deleted" in result.stdout


def test_prune_of_some_records_does_not_ask(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(50, 30, 1))
    result = sidemeter("db", "prune", "--db", url(path), "--older-than", "1d")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 record(s) deleted"
    assert [rid for _, rid in ids_and_request_ids(path)] == ["r2"]


def test_prune_dry_run_only_counts(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(50, 30, 1))
    before = ids_and_request_ids(path)
    for age, counted in (("1d", "2 of 3"), ("0d", "3 of 3")):
        result = sidemeter("db", "prune", "--db", url(path), "--older-than", age, "--dry-run")
        assert result.exit_code == 0, result.output
        assert counted in result.stdout and "UTC" in result.stdout and "nothing deleted" in result.stdout
    assert ids_and_request_ids(path) == before


def test_prune_deletes_what_is_older_than_the_retention_setting_by_default(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(24 * 40, 24 * 20, 1))
    assert "1 of 3" in sidemeter("db", "prune", "--db", url(path), "--dry-run").stdout  # 30d
    monkeypatch.setenv("SIDEMETER_RETENTION", "7d")
    assert "2 of 3" in sidemeter("db", "prune", "--db", url(path), "--dry-run").stdout


def test_reset_asks_with_the_count_and_deletes_on_yes(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(2, 1))
    declined = sidemeter("db", "reset", "--db", url(path), answer="n\n")
    assert declined.exit_code != 0 and "all 2 usage records" in declined.stdout
    assert len(ids_and_request_ids(path)) == 2
    accepted = sidemeter("db", "reset", "--db", url(path), "--yes")
    assert accepted.exit_code == 0 and "2 record(s) deleted" in accepted.stdout
    assert ids_and_request_ids(path) == []


# -- ids are never reused ------------------------------------------------------------------------------


def test_ids_are_not_reused_after_prune_or_reset(store_url: str) -> None:
    path = store_url  # a SQLite file or a PostgreSQL database
    store_records(path, aged(2, 1))
    assert [i for i, _ in ids_and_request_ids(path)] == [1, 2]
    assert sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", "--yes").exit_code == 0
    store_records(path, [UsageRecord(request_id="after-prune")])
    assert ids_and_request_ids(path) == [(3, "after-prune")]
    assert sidemeter("db", "reset", "--db", url(path), "--yes").exit_code == 0
    store_records(path, [UsageRecord(request_id="after-reset")])
    assert ids_and_request_ids(path) == [(4, "after-reset")]


# The DDL peewee generated for schema version 1, as every database written before version 2 has it.
V1_DDL = """
CREATE TABLE IF NOT EXISTS "usage_logs" ("id" INTEGER NOT NULL PRIMARY KEY, "request_id" TEXT NOT NULL,
"ts" DATETIME NOT NULL, "user" TEXT, "team" TEXT, "client_ip" TEXT, "upstream" TEXT NOT NULL,
"dialect" TEXT NOT NULL, "endpoint" TEXT NOT NULL, "operation" TEXT NOT NULL, "model" TEXT,
"stream" INTEGER NOT NULL, "status" INTEGER, "outcome" TEXT NOT NULL, "error" TEXT, "prompt_tokens" INTEGER,
"completion_tokens" INTEGER, "total_tokens" INTEGER, "cached_tokens" INTEGER, "reasoning_tokens" INTEGER,
"usage_source" TEXT NOT NULL, "latency_ms" REAL, "ttft_ms" REAL, "server_duration_ms" REAL,
"tokens_per_second" REAL, "request_bytes" INTEGER NOT NULL, "response_bytes" INTEGER NOT NULL, "prompt" TEXT);
CREATE INDEX IF NOT EXISTS "usagelog_request_id" ON "usage_logs" ("request_id");
CREATE INDEX IF NOT EXISTS "usagelog_ts" ON "usage_logs" ("ts");
CREATE INDEX IF NOT EXISTS "usagelog_user" ON "usage_logs" ("user");
CREATE INDEX IF NOT EXISTS "usagelog_team" ON "usage_logs" ("team");
CREATE INDEX IF NOT EXISTS "usagelog_model" ON "usage_logs" ("model");
CREATE TABLE IF NOT EXISTS "schema_meta" ("version" INTEGER NOT NULL PRIMARY KEY);
INSERT INTO schema_meta (version) VALUES (1);
"""


@pytest.fixture
def v1_db(tmp_path: Path) -> Iterator[Path]:
    """A version 1 file, as Sidemeter before version 2 left it: ids 1-6 written, 3 and 4
    pruned, the two newest (5, 6) deleted too -- version 1 hands out 5 and 6 again."""
    path = tmp_path / "v1.db"
    with plain_sqlite(path) as conn:
        conn.execute("PRAGMA journal_mode = wal")
        conn.executescript(V1_DDL)
        conn.executemany(
            'INSERT INTO usage_logs (id, request_id, ts, "user", upstream, dialect, endpoint, operation, '
            "stream, outcome, usage_source, request_bytes, response_bytes, prompt_tokens, latency_ms) "
            "VALUES (?, ?, ?, ?, 'http://up', 'openai', '/v1/chat/completions', 'chat', 1, 'ok', "
            "'reported', 10, 20, ?, ?)",
            [
                (i, f"v1-{i}", f"2026-01-0{i} 12:00:00.000000", f"user{i}", i * 10, i * 1.5)
                for i in (1, 2, 3, 4, 5, 6)
            ],
        )
        conn.execute("DELETE FROM usage_logs WHERE id IN (3, 4, 5, 6)")
        # A user's view over the table must survive the rebuild.
        conn.execute('CREATE VIEW per_user AS SELECT "user", count(*) AS n FROM usage_logs GROUP BY "user"')
    yield path


def rows(path: Path) -> list[tuple[object, ...]]:
    with plain_sqlite(path) as conn:
        return conn.execute("SELECT * FROM usage_logs ORDER BY id").fetchall()


def test_db_migrate_upgrades_a_v1_file_keeping_every_row_and_id(v1_db: Path) -> None:
    before = rows(v1_db)
    assert [r[0] for r in before] == [1, 2]
    result = sidemeter("db", "migrate", "--db", url(v1_db))
    assert result.exit_code == 0, result.output
    assert f"schema version {SCHEMA_VERSION}" in result.stdout
    upgraded = [(*row, None, None) for row in before]  # schema 4's instance and cost: unknown
    assert rows(v1_db) == upgraded
    with plain_sqlite(v1_db) as conn:
        assert conn.execute("SELECT version FROM schema_meta ORDER BY version").fetchall() == [
            (1,),
            (SCHEMA_VERSION,),
        ]
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'usage_logs'").fetchone()[0]
        assert "AUTOINCREMENT" in ddl
        columns = [row[1] for row in conn.execute("PRAGMA table_info('usage_logs')")]
        assert columns == ["id", *FIELD_NAMES]
        indexed = {
            info[2]
            for index in conn.execute("PRAGMA index_list('usage_logs')")
            for info in conn.execute(f"PRAGMA index_info('{index[1]}')")
        }
        assert indexed == {"ts", "request_id", "user", "model", "team", "instance"}
        assert conn.execute("SELECT * FROM per_user ORDER BY 1").fetchall() == [("user1", 1), ("user2", 1)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "usage_logs_v1" not in tables
    again = sidemeter("db", "migrate", "--db", url(v1_db))
    assert again.exit_code == 0 and rows(v1_db) == upgraded


@pytest.fixture
def v3_db(tmp_path: Path) -> Path:
    """A version 3 file: the current layout without the columns schema 4 added."""
    path = tmp_path / "v3.db"
    store_records(path, [UsageRecord(request_id=f"v3-{i}", user="ann", prompt_tokens=i) for i in (1, 2)])
    with plain_sqlite(path) as conn:
        for name in ADDED_COLUMNS:
            conn.execute(f'DROP INDEX IF EXISTS "usagelog_{name}"')
            conn.execute(f'ALTER TABLE usage_logs DROP COLUMN "{name}"')
        conn.execute("DELETE FROM schema_meta WHERE version > 3")
        conn.execute("INSERT OR IGNORE INTO schema_meta (version) VALUES (3)")
    return path


def test_db_migrate_adds_schema_4_columns_to_a_v3_file(v3_db: Path) -> None:
    before = rows(v3_db)
    assert len(before[0]) == 1 + len(FIELD_NAMES) - len(ADDED_COLUMNS)
    result = sidemeter("db", "migrate", "--db", url(v3_db))
    assert result.exit_code == 0, result.output
    assert rows(v3_db) == [(*row, None, None) for row in before]
    with plain_sqlite(v3_db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info('usage_logs')")]
        assert columns == ["id", *FIELD_NAMES]
        assert conn.execute("SELECT max(version) FROM schema_meta").fetchone() == (SCHEMA_VERSION,)
    store_records(v3_db, [UsageRecord(request_id="v4", instance="side-a", cost=0.25)])
    with plain_sqlite(v3_db) as conn:
        assert conn.execute("SELECT request_id, instance, cost FROM usage_logs ORDER BY id").fetchall() == [
            ("v3-1", None, None),
            ("v3-2", None, None),
            ("v4", "side-a", 0.25),
        ]


def test_the_sidecar_upgrades_a_v1_file_and_new_ids_continue(v1_db: Path) -> None:
    store_records(v1_db, [UsageRecord(request_id="new")])
    got = ids_and_request_ids(v1_db)
    assert got[:2] == [(1, "v1-1"), (2, "v1-2")]
    assert got[2] == (3, "new")  # the highest id version 1 still had is 2
    assert sidemeter("db", "prune", "--db", url(v1_db), "--older-than", "0d", "--yes").exit_code == 0
    store_records(v1_db, [UsageRecord(request_id="newer")])
    assert ids_and_request_ids(v1_db) == [(4, "newer")]


def test_prune_on_a_v1_file_upgrades_it_first(v1_db: Path) -> None:
    result = sidemeter("db", "prune", "--db", url(v1_db), "--older-than", "0d", "--yes")
    assert result.exit_code == 0 and "2 record(s) deleted" in result.stdout
    store_records(v1_db, [UsageRecord(request_id="after")])
    assert ids_and_request_ids(v1_db) == [(3, "after")]


def test_export_reads_a_v1_file_without_changing_it(v1_db: Path) -> None:
    before = v1_db.read_bytes()
    result = sidemeter("usage", "export", "--db", url(v1_db))
    assert result.exit_code == 0, result.output
    assert [line.count("v1-") for line in result.stdout.splitlines()] == [1, 1]
    with plain_sqlite(v1_db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_meta").fetchone() == (1,)
    assert v1_db.read_bytes() == before


def test_a_failed_upgrade_leaves_version_1_as_it_was(v1_db: Path) -> None:
    before = rows(v1_db)
    with plain_sqlite(v1_db) as conn:
        conn.execute("CREATE TABLE usage_logs_v1 (x)")  # in the way of the rebuild
    db = open_database(url(v1_db))
    with pytest.raises(Exception, match="usage_logs_v1"):
        migrate(db)
    db.close()
    assert rows(v1_db) == before
    with plain_sqlite(v1_db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_meta").fetchone() == (1,)


def test_postgresql_ddl_keeps_bigserial_without_autoincrement() -> None:
    # No PostgreSQL server here: check the statement peewee would send.
    pg = peewee.PostgresqlDatabase(None)
    sql, _ = peewee.SchemaManager(UsageLog, database=pg)._create_table(safe=True).query()
    assert '"id" BIGSERIAL NOT NULL PRIMARY KEY,' in sql and "AUTOINCREMENT" not in sql
    lite = peewee.SqliteDatabase(None)
    sql, _ = peewee.SchemaManager(UsageLog, database=lite)._create_table(safe=True).query()
    assert '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,' in sql


def test_a_failing_query_is_one_line_naming_the_database(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(30, 1))
    with plain_sqlite(path) as conn:
        conn.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        result = sidemeter("db", "prune", "--db", url(path) + "?timeout=0.05", "--older-than", "1d")
        conn.execute("ROLLBACK")
    assert_one_line_error(result, str(path), "locked")
    assert len(ids_and_request_ids(path)) == 2
