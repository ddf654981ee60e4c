"""`sidemeter stats`: the figures of `/ops/stats`, read from the store, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click

from agent.cli.common import CONFIG_OPTION, _db_errors, _fail, _open

# (path in the stats object, table heading or None: CSV and JSON only)
_COLUMNS = (
    ("requests", "req"),
    ("errors", "err"),
    ("error_rate", "err%"),
    ("tokens_in", "tok in"),
    ("tokens_out", "tok out"),
    ("cached_tokens", None),
    ("reasoning_tokens", None),
    ("estimated", None),
    ("estimated_share", "est%"),
    ("cost", "cost"),
    ("costed", None),
    ("latency_ms.p50", "ms p50"),
    ("latency_ms.p95", "p95"),
    ("latency_ms.p99", "p99"),
    ("ttft_ms.p50", "TTFT p50"),
    ("ttft_ms.p95", "p95"),
    ("ttft_ms.p99", None),
    ("tokens_per_second.p50", "tok/s"),
)
_TABLE = tuple((path, title) for path, title in _COLUMNS if title is not None)


def _value(stats: dict[str, Any], path: str) -> Any:
    value: Any = stats
    for part in path.split("."):
        value = value[part]
    return value


def _cell(path: str, value: Any) -> str:
    if value is None:
        return "-"
    if path.endswith(("_rate", "_share")):
        return f"{value:.1%}"
    if path == "cost":
        return f"{value:,.2f}" if value >= 100 else f"{value:.4g}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:,}"


def _rows(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(key, stats) per group, then the total (key: every dimension "(total)")."""
    dims = body["group_by"]
    rows = [(g["key"], g) for g in body["groups"]]
    rows.append(({d: "(total)" for d in dims}, body["total"]))
    return rows


def _print_table(body: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{body['since']} - {body['until']}, "
        + (f"instance {body['instance']}" if body["instance"] is not None else "whole fleet"),
        caption=f"latency and TTFT in ms; percentiles {body['percentiles']}, "
        f"within {body['percentile_error']:.0%}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    for dim in body["group_by"]:
        table.add_column(dim, overflow="fold")
    for _, title in _TABLE:
        table.add_column(title, justify="right", no_wrap=True)
    rows = _rows(body)
    for i, (key, stats) in enumerate(rows):
        cells = ["-" if key[d] is None else str(key[d]) for d in body["group_by"]]
        cells += [_cell(path, _value(stats, path)) for path, _ in _TABLE]
        table.add_row(*cells, end_section=i == len(rows) - 2)
    console = Console()
    # Never squeeze figures into ellipses: a narrow terminal wraps the lines instead.
    wide = console.options.update(max_width=1000)
    console.width = max(console.width, console.measure(table, options=wide).maximum)
    console.print(table)


def _print_csv(body: dict[str, Any]) -> None:
    writer = csv.writer(sys.stdout)
    columns = [path.replace(".", "_") for path, _ in _COLUMNS]
    writer.writerow([*body["group_by"], *columns])
    for key, stats in _rows(body):
        values = [_value(stats, path) for path, _ in _COLUMNS]
        writer.writerow([*("" if key[d] is None else key[d] for d in body["group_by"]), *values])


@click.command("stats")
@CONFIG_OPTION
@click.option("--window", help="How far back from now, e.g. 15m, 24h, 7d [default: 24h].")
@click.option("--since", help="Start, ISO-8601 (instead of --window).")
@click.option("--until", help="End, ISO-8601 [default: now]; with --since.")
@click.option(
    "--by", "by", help="Group by up to two of model, user, team, endpoint, operation, outcome, instance."
)
@click.option(
    "--scope",
    type=click.Choice(["local", "fleet"]),
    default=None,
    help="fleet: every sidecar's records in the store [default]; local: one sidecar's "
    "(--instance, else the config's instance_id).",
)
@click.option(
    "--instance", help="Only the records of the sidecar with this instance id (implies --scope local)."
)
@click.option("--db", help="Usage store URL [default: from config].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table: for people; json: what GET /ops/stats answers; csv: a row per group, then the total.",
)
def stats(
    config_path: str | None,
    window: str | None,
    since: str | None,
    until: str | None,
    by: str | None,
    scope: str | None,
    instance: str | None,
    db: str | None,
    fmt: str,
) -> None:
    """Requests, errors, tokens, cost and latency percentiles per group: the figures of /ops/stats.

    Reads only: a database that does not exist yet is an error, not created."""
    from agent.durations import parse_duration
    from agent.store.stats import StatsError, compute_stats, parse_group_by, resolve_window

    if scope == "fleet" and instance is not None:
        _fail("--instance names one sidecar: it goes with --scope local, not fleet")
    cfg, database = _open(config_path, db)
    if instance is None and scope == "local":
        instance = cfg.instance_id
        if not instance:
            database.close()
            _fail(
                "this command is no sidecar, so --scope local needs --instance NAME "
                "(or instance_id in the config); the instance ids are in sidemeter stats --by instance"
            )
    try:
        span = resolve_window(
            window=window, since=since, until=until, retention=parse_duration(cfg.retention)
        )
        group_by = parse_group_by(by)
    except StatsError as e:
        database.close()
        allowed = f" (allowed: {', '.join(e.allowed)})" if e.allowed else ""
        _fail(f"{e}{allowed}")
    with _db_errors(database, "reading usage statistics from"):
        body = compute_stats(database, span.since, span.until, group_by, instance=instance)
    if fmt == "json":
        click.echo(json.dumps(body, indent=2))
    elif fmt == "csv":
        _print_csv(body)
    else:
        _print_table(body)
