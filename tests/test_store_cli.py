"""`sidemeter usage export` and `sidemeter db ...` through the real CLI against real SQLite
files: missing and empty databases, prune's confirmation."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from agent.records import UsageRecord
from agent.store.schema import SCHEMA_VERSION
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


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def plain_sqlite(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def ids_and_request_ids(path: Path) -> list[tuple[int, str]]:
    with plain_sqlite(path) as conn:
        return conn.execute("SELECT id, request_id FROM usage_logs ORDER BY id").fetchall()


def store_records(path: Path, records: list[UsageRecord]) -> None:
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


def test_export_reads_what_the_sidecar_stored(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
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


def test_prune_that_would_delete_every_record_asks_with_counts_and_cutoff(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(3, 2, 1))
    declined = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", answer="n\n")
    assert declined.exit_code != 0
    prompt = declined.stdout.splitlines()[0]
    assert "3 of 3 usage records" in prompt and str(path) in prompt
    cutoff = datetime.fromisoformat(prompt.split("older than ")[1].split(" UTC")[0]).replace(tzinfo=UTC)
    assert abs(cutoff - datetime.now(UTC)) < timedelta(minutes=1)
    assert len(ids_and_request_ids(path)) == 3

    accepted = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "3 record(s) deleted" in accepted.stdout
    assert ids_and_request_ids(path) == []


def test_prune_with_yes_does_not_ask(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(3, 2))
    result = sidemeter("db", "prune", "--db", url(path), "--older-than", "0d", "--yes")
    assert result.exit_code == 0, result.output
    assert "?" not in result.stdout and "2 record(s) deleted" in result.stdout


def test_prune_of_some_records_does_not_ask(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(50, 30, 1))
    result = sidemeter("db", "prune", "--db", url(path), "--older-than", "1d")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 record(s) deleted"
    assert [rid for _, rid in ids_and_request_ids(path)] == ["r2"]


def test_prune_dry_run_only_counts(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(50, 30, 1))
    before = ids_and_request_ids(path)
    for age, counted in (("1d", "2 of 3"), ("0d", "3 of 3")):
        result = sidemeter("db", "prune", "--db", url(path), "--older-than", age, "--dry-run")
        assert result.exit_code == 0, result.output
        assert counted in result.stdout and "UTC" in result.stdout and "nothing deleted" in result.stdout
    assert ids_and_request_ids(path) == before


def test_reset_asks_with_the_count_and_deletes_on_yes(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(2, 1))
    declined = sidemeter("db", "reset", "--db", url(path), answer="n\n")
    assert declined.exit_code != 0 and "all 2 usage records" in declined.stdout
    assert len(ids_and_request_ids(path)) == 2
    accepted = sidemeter("db", "reset", "--db", url(path), "--yes")
    assert accepted.exit_code == 0 and "2 record(s) deleted" in accepted.stdout
    assert ids_and_request_ids(path) == []


def test_a_failing_query_is_one_line_naming_the_database(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store_records(path, aged(30, 1))
    with plain_sqlite(path) as conn:
        conn.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        result = sidemeter("db", "prune", "--db", url(path) + "?timeout=0.05", "--older-than", "1d")
        conn.execute("ROLLBACK")
    assert_one_line_error(result, str(path), "locked")
    assert len(ids_and_request_ids(path)) == 2
