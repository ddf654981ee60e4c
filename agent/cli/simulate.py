"""`sidemeter simulate`: mixed traffic against a running sidecar, with a progress bar and a
summary of what the clients saw beside what the sidecar recorded."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from agent.cli.common import CONFIG_OPTION, _fail, _load, _ops_token

TOKEN_TTL_S = 3600.0


def _ratio(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value} is not between 0 and 1")
    return value


@click.command()
@CONFIG_OPTION
@click.option("--target", default="http://127.0.0.1:8080", show_default=True, help="The sidecar's proxy URL.")
@click.option("--ops", default="http://127.0.0.1:9090", show_default=True, help="The sidecar's ops API URL.")
@click.option(
    "-n",
    "--requests",
    "count",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Requests to send through the proxy (exactly this many).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--users",
    default=None,
    metavar="NAME[:TEAM],...",
    help="Simulated users, in turn [default: demo-user:demo].",
)
@click.option(
    "--mix",
    default=None,
    metavar="KIND,...|all",
    help="Kinds of call, in turn: ollama-chat, ollama-generate, ollama-embed, openai-chat, "
    "openai-completion, openai-embedding [default: the four chat and completion kinds].",
)
@click.option(
    "--stream-ratio",
    type=float,
    default=0.5,
    show_default=True,
    callback=_ratio,
    help="Share of the calls that can stream which are sent streamed.",
)
@click.option(
    "--fault-ratio",
    type=float,
    default=0.0,
    show_default=True,
    callback=_ratio,
    help="Share of deliberate faults: an unknown model (404), a bad token (401), "
    "a client that hangs up mid-stream.",
)
@click.option(
    "--model", default=None, help="Model to ask for [default: the first the ops API lists, else llama3.2]."
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="max_tokens / num_predict of each call.",
)
@click.option(
    "--token", default=None, help="Send every request with this bearer token instead of minting one per user."
)
@click.option(
    "--private-key",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Mint the users' tokens with this private key instead of the configured secret.",
)
@click.option("--seed", type=int, default=None, help="Make the plan (streams, faults) repeatable.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="The summary as a table, or as JSON for scripts.",
)
def simulate(
    config_path: str | None,
    target: str,
    ops: str,
    count: int,
    concurrency: int,
    users: str | None,
    mix: str | None,
    stream_ratio: float,
    fault_ratio: float,
    model: str | None,
    max_tokens: int,
    token: str | None,
    private_key: str | None,
    seed: int | None,
    fmt: str,
) -> None:
    """Send mixed traffic (both dialects, streamed and not) through a running sidecar.

    Each simulated user gets a token minted with the configured key (SIDEMETER_JWT_SECRET or
    jwt_secret_file; for the demo: SIDEMETER_JWT_SECRET_FILE=data/demo-secret), or every request
    carries --token. With auth off in the config, requests carry X-User-Id instead. Exit 1 when
    a request that was not a deliberate fault failed."""
    from agent import simulate as sim
    from agent.auth.errors import KeyConfigError
    from agent.auth.issue import TokenMinter
    from agent.auth.settings import AuthSettings

    cfg = _load(config_path)
    try:
        people = sim.parse_users(users or sim.DEFAULT_USERS)
        kinds = sim.parse_mix(mix) if mix else [sim.KINDS[k] for k in sim.DEFAULT_MIX]
    except ValueError as e:
        _fail(str(e))
    target, ops = target.rstrip("/"), ops.rstrip("/")

    tokens: dict[str, str] | None = None
    ops_token = token
    if token is not None:
        tokens = {u.name: token for u in people}
    elif cfg.auth != "off":
        try:
            minter = TokenMinter.from_settings(AuthSettings.from_config(cfg), private_key=private_key)
        except KeyConfigError as e:
            _fail(f"cannot mint the users' tokens: {e}; or pass --token")
        tokens = {u.name: minter.mint(u.name, team=u.team, ttl=TOKEN_TTL_S) for u in people}
        ops_token = _ops_token(minter, cfg, "sidemeter-simulate", TOKEN_TTL_S)

    async def go() -> tuple[list[sim.Result], dict[str, dict[str, Any]], str | None, str]:
        chosen = model or await sim.discover_model(ops, ops_token) or sim.DEFAULT_MODEL
        calls = sim.plan_calls(
            count,
            people,
            kinds,
            model=chosen,
            stream_ratio=stream_ratio,
            fault_ratio=fault_ratio,
            max_tokens=max_tokens,
            seed=seed,
        )
        who = ", ".join(f"{u.name}:{u.team}" if u.team else u.name for u in people)
        click.echo(
            f"sending {count} request(s) to {target} as {who}, model {chosen}, {concurrency} at a time",
            err=True,
        )
        results = await _with_progress(sim, target, calls, tokens, concurrency)
        records, problem = await sim.fetch_records(ops, [c.request_id for c in calls], ops_token)
        return results, records, problem, chosen

    try:
        results, records, problem, chosen = asyncio.run(go())
    except KeyboardInterrupt:
        sys.exit(130)
    unexpected = [r for r in results if r.call.fault is None and not r.ok]
    if all(r.status is None for r in results):
        _fail(f"no request got an answer from {target}: {results[0].error}")
    client = sim.client_figures(results)
    recorded = sim.recorded_figures(records.values()) if records else None
    if fmt == "json":
        out = {
            "target": target,
            "model": chosen,
            "client": _figures_json(sim, client),
            "recorded": _figures_json(sim, recorded) if recorded else None,
            "records_found": len(records),
            "ops_problem": problem,
            "unexpected_failures": [
                {"request_id": r.call.request_id, "status": r.status, "error": r.error} for r in unexpected
            ],
        }
        click.echo(json.dumps(out, indent=2))
    else:
        _print_summary(client, recorded, len(records), count, problem)
        for r in unexpected[:5]:
            click.echo(
                f"  failed: {r.call.request_id} {r.call.kind.name}: HTTP {r.status} {r.error or ''}", err=True
            )
    sys.exit(1 if unexpected else 0)


async def _with_progress(sim: Any, target: str, calls: list[Any], tokens: Any, concurrency: int) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # On a terminal only: piped output (CI, scripts) gets the summary without redraw codes.
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("requests", total=len(calls))
        return await sim.run_calls(
            target, calls, tokens, concurrency=concurrency, on_result=lambda _: progress.advance(task)
        )


def _figures_json(sim: Any, f: Any) -> dict[str, Any]:
    return {
        "requests": f.sent,
        "ok": f.ok,
        "errors_by_status": dict(f.by_status),
        "cancelled": f.cancelled,
        "tokens_in": f.prompt_tokens,
        "tokens_out": f.completion_tokens,
        "latency_ms": {q: sim.percentile(f.latency_ms, n) for q, n in (("p50", 50), ("p95", 95))},
        "ttft_ms": {q: sim.percentile(f.ttft_ms, n) for q, n in (("p50", 50), ("p95", 95))},
    }


def _print_summary(client: Any, recorded: Any, found: int, sent: int, problem: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sidemeter simulate")
    table.add_column("")
    table.add_column("clients saw", justify="right")
    if recorded is not None:
        table.add_column("sidecar recorded", justify="right")
    theirs = dict(recorded.rows()) if recorded is not None else {}
    for name, value in client.rows():
        table.add_row(name, value, *([theirs[name]] if recorded is not None else []))
    console = Console()
    console.print(table)
    if problem:
        console.print(f"records: not read ({problem})")
    elif found < sent:
        console.print(f"records: {found} of {sent} found in the sidecar's records")
    else:
        console.print(f"records: all {sent} found (request ids start with 'sim-')")
