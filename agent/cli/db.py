"""`sidemeter db migrate|prune|reset`: the usage database's schema and records."""

from __future__ import annotations

import click

from agent.cli.common import CONFIG_OPTION, _db_errors, _fail, _open


@click.group()
def db() -> None:
    """Manage the usage database."""


@db.command("migrate")
@CONFIG_OPTION
@click.option("--db", "db_url", help="Usage store URL [default: from config].")
def db_migrate(config_path: str | None, db_url: str | None) -> None:
    """Create or upgrade the schema (the sidecar also does this at start)."""
    from agent.store.database import migrate, redact_url

    cfg, database = _open(config_path, db_url, create=True)
    with _db_errors(database, "migrating"):
        version = migrate(database)
    click.echo(f"{redact_url(cfg.db)}: schema version {version}")


@db.command("prune")
@CONFIG_OPTION
@click.option("--db", "db_url", help="Usage store URL [default: from config].")
@click.option(
    "--older-than", help="Delete records older than this, e.g. 30d [default: the retention setting]."
)
@click.option("--yes", is_flag=True, help="Do not ask, even when every record would be deleted.")
@click.option("--dry-run", is_flag=True, help="Only count the records that would be deleted.")
def db_prune(
    config_path: str | None, db_url: str | None, older_than: str | None, yes: bool, dry_run: bool
) -> None:
    """Delete usage records older than --older-than.

    Asks first when that would delete every record. Upgrades the schema first, as the
    sidecar does at start, so no id of a deleted record is handed out again."""
    from agent.durations import parse_duration
    from agent.records import utcnow
    from agent.store.database import describe, migrate
    from agent.store.queries import count_records, delete_records

    cfg, database = _open(config_path, db_url)
    try:
        cutoff = utcnow() - parse_duration(older_than or cfg.retention)
    except (ValueError, OverflowError) as e:
        database.close()
        _fail(f"--older-than: {e}")
    when = cutoff.strftime("%Y-%m-%d %H:%M:%S UTC")
    with _db_errors(database, "pruning"):
        matching, total = count_records(database, before=cutoff), count_records(database)
        if dry_run:
            click.echo(f"{matching} of {total} record(s) are older than {when}: nothing deleted (--dry-run)")
            return
        if matching and matching == total and not yes:
            click.confirm(
                f"Delete {matching} of {total} usage records in {describe(database)}: "
                f"every record, all older than {when}?",
                abort=True,
            )
        migrate(database)
        n = delete_records(database, before=cutoff)
    click.echo(f"{n} record(s) deleted")


@db.command("reset")
@CONFIG_OPTION
@click.option("--db", "db_url", help="Usage store URL [default: from config].")
@click.option("--yes", is_flag=True, help="Do not ask.")
def db_reset(config_path: str | None, db_url: str | None, yes: bool) -> None:
    """Delete every usage record (ids keep counting up from the last one)."""
    from agent.store.database import describe, migrate
    from agent.store.queries import count_records, delete_records

    _, database = _open(config_path, db_url)
    with _db_errors(database, "resetting"):
        if not yes:
            total = count_records(database)
            click.confirm(f"Delete all {total} usage records in {describe(database)}?", abort=True)
        migrate(database)
        n = delete_records(database)
    click.echo(f"{n} record(s) deleted")
