"""`sidemeter usage export`: the usage records, as JSON lines or CSV."""

from __future__ import annotations

from typing import Any

import click

from agent.cli.common import CONFIG_OPTION, _db_errors, _fail, _open


@click.group()
def usage() -> None:
    """Read usage records."""


@usage.command("export")
@CONFIG_OPTION
@click.option("--db", help="Usage store URL [default: from config].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object per record; csv: a header line, then one row per record.",
)
@click.option("--since", help="Only records newer than this: 24h, 30m, 7d or an ISO-8601 time.")
@click.option("-o", "--output", type=click.File("w"), default="-", help="File to write [default: stdout].")
def usage_export(config_path: str | None, db: str | None, fmt: str, since: str | None, output: Any) -> None:
    """Print usage records, one JSON object per line (jsonl) or CSV with a header.

    Reads only: a database that does not exist yet is an error, not created."""
    from agent.durations import parse_since
    from agent.store.queries import export_records

    try:
        since_dt = parse_since(since) if since else None
    except ValueError as e:
        _fail(f"--since: {e}")
    _, database = _open(config_path, db)
    with _db_errors(database, "reading usage records from"):
        n = export_records(database, output, fmt=fmt, since=since_dt)
    click.echo(f"{n} record(s) exported", err=True)
