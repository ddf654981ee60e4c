"""`sidemeter requests`: recent usage records, newest first, or followed as they are written."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from agent.cli.common import CONFIG_OPTION, _db_errors, _open
from agent.records import Outcome, UsageRecord

if TYPE_CHECKING:
    from rich.console import Console

# (header, record field or how to show it, width): fixed widths keep followed batches aligned.
_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("time (UTC)", "ts", 23),
    ("request id", "request_id", 36),
    ("user", "user", 12),
    ("team", "team", 10),
    ("model", "model", 18),
    ("op", "operation", 10),
    ("status", "status", 6),
    ("outcome", "outcome", 16),
    ("in", "prompt_tokens", 6),
    ("out", "completion_tokens", 6),
    ("ms", "latency_ms", 9),
    ("ttft ms", "ttft_ms", 9),
)
_NUMERIC = frozenset({"status", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms"})


def _cell(record: UsageRecord, field: str) -> str:
    value = getattr(record, field)
    if value is None:
        return "-"
    if field == "ts":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _print_table(console: Console, records: Iterable[UsageRecord], *, header: bool) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=header, pad_edge=False, header_style="bold")
    for title, field, width in _COLUMNS:
        table.add_column(
            title,
            width=width,
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if field in _NUMERIC else "left",
        )
    for record in records:
        table.add_row(*(_cell(record, field) for _, field, _ in _COLUMNS))
    console.print(table)


def _emit(console: Console, records: list[UsageRecord], fmt: str, *, header: bool) -> None:
    if fmt == "json":
        for record in records:
            click.echo(json.dumps(record.to_dict()))
    elif records or header:
        _print_table(console, records, header=header)
    sys.stdout.flush()  # a follower piped into another program sees each record at once


@click.command("requests")
@CONFIG_OPTION
@click.option("--db", "db_url", help="Usage store URL [default: from config].")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Records to list.")
@click.option("--user", help="Only this user.")
@click.option("--team", help="Only this team.")
@click.option("--model", help="Only this model.")
@click.option("--outcome", type=click.Choice([str(o) for o in Outcome]), help="Only this outcome.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one row per record; json: one JSON object per record and line (as usage export).",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new records as they are written (Ctrl-C ends)."
)
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
def requests(
    config_path: str | None,
    db_url: str | None,
    limit: int,
    user: str | None,
    team: str | None,
    model: str | None,
    outcome: str | None,
    fmt: str,
    follow: bool,
    interval: float,
) -> None:
    """List recent usage records, newest first.

    With --follow the last --limit records are printed oldest first and each new one below
    them, like tail -f. Reads only: a database that does not exist yet is an error."""
    from rich.console import Console

    from agent.store.queries import newest_id, page_records, records_after

    console = Console(width=None if click.get_text_stream("stdout").isatty() else 200)
    filters: dict[str, Any] = {"user": user, "team": team, "model": model, "outcome": outcome}
    _, database = _open(config_path, db_url)
    try:
        with _db_errors(database, "reading usage records from"):
            last = newest_id(database)
            records = page_records(database, limit=limit, before=last + 1, **filters).records
            if not follow:
                _emit(console, records, fmt, header=True)
                return
            _emit(console, records[::-1], fmt, header=True)
            while True:
                time.sleep(interval)
                new, last = records_after(database, last, **filters)
                _emit(console, new, fmt, header=False)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
