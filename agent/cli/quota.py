"""`sidemeter quota show`: where each quota scope stands, from the config's rules and the store."""

from __future__ import annotations

import json

import click

from agent.cli.common import CONFIG_OPTION, _db_errors, _fail, _open


@click.group()
def quota() -> None:
    """Inspect the [[quotas]] rules and the usage they count."""


@quota.command("show")
@CONFIG_OPTION
@click.option("--db", help="Usage store URL [default: from config].")
@click.option("--user", help="Only the scope whose rule applies to this user.")
@click.option("--team", help="Only the scope of this team's rule.")
@click.option("--json", "as_json", is_flag=True, help="Print the /ops/quotas JSON instead of a table.")
def quota_show(
    config_path: str | None, db: str | None, user: str | None, team: str | None, as_json: bool
) -> None:
    """Usage, limit, remaining and reset of every limit of each scope in its current window,
    counted from the store's records (what a sidecar starting now would count; requests in
    flight in a running sidecar are not in the store yet)."""
    from agent.quota.history import rebuild
    from agent.quota.ledger import Ledger
    from agent.quota.report import quota_report
    from agent.quota.windows import zone

    if user and team:
        _fail("give --user or --team, not both")
    cfg, database = _open(config_path, db)
    ledger = Ledger(cfg.quotas, zone(cfg.quota_timezone))
    with _db_errors(database, "reading usage records from"):
        rebuild(ledger, database)
    report = quota_report(ledger, user=user, team=team)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not cfg.quotas:
        click.echo("no [[quotas]] rules configured")
        return
    if not report["scopes"]:
        who = f"user {user}" if user else f"team {team}" if team else "anyone"
        click.echo(f"no quota rule applies to {who}" if user or team else "no usage in the current windows")
        return
    header = ("rule", "scope", "limit", "used", "reserved", "remaining", "reset")
    rows = [
        (
            s["rule"],
            s["scope"],
            f"{lim['name']} {lim['limit']}",
            lim["used"],
            lim["reserved"],
            lim["remaining"],
            lim["reset"],
        )
        for s in report["scopes"]
        for lim in s["limits"]
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
