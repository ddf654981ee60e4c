"""The `sidemeter` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from agent import __version__, settings
from agent import config as configmod
from agent.config import Config, ConfigError

if TYPE_CHECKING:
    from peewee import Database

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file (default: ./sidemeter.toml when it exists).",
)


def _setting_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The command's flags, from the settings table (agent/settings.py), with the real default
    shown in --help. Only flags given on the command line override the file and the
    environment: see `_given_flags`."""
    opts = []
    for s in settings.flags_for(command):
        kind: Any = s.type
        if s.choices:
            kind = click.Choice(s.choices)
        elif s.path:
            kind = click.Path(dir_okay=False)
        decls = [f"{s.flag}/--no-{s.flag[2:]}"] if s.type is bool else [s.flag]
        opts.append(
            click.option(
                *decls,
                s.name,
                type=kind,
                default=s.default,
                metavar=s.metavar,
                show_default=s.default is not None,
                help=s.help,
            )
        )

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return apply


def _given_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The setting flags typed on the command line (a default must not override the config file)."""
    ctx = click.get_current_context()
    return {k: v for k, v in flags.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _load(config_path: str | None, **overrides: Any) -> Config:
    try:
        return configmod.load(config_path, overrides)
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable; keeps type checkers calm


def _reexec_optimized() -> None:
    """Run the proxy under `python -O`: without it mitmproxy type-checks every HTTP message it
    builds (~6% of the CPU a request costs). execv keeps the PID, so supervisors don't notice.
    SIDEMETER_OPTIMIZE=0 keeps the plain interpreter (e.g. for a debugger)."""
    if sys.flags.optimize or os.environ.get("SIDEMETER_OPTIMIZE", "1") == "0":
        return
    os.environ["SIDEMETER_OPTIMIZE"] = "0"  # never loop, whatever happens to sys.flags
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # not fatal: then it runs unoptimized
        os.execv(sys.executable, [sys.executable, "-O", "-m", "agent.cli", *sys.argv[1:]])


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # mitmproxy logs every connection at info; the sidecar's own lines are what operators need.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sidemeter")
def main() -> None:
    """Sidemeter: a metering sidecar for self-hosted LLM servers.

    Clients talk to the sidecar's port instead of the LLM server's; every request is relayed
    unchanged and leaves one usage record (who, model, tokens, latency, time to first token).
    """


# -- run ------------------------------------------------------------------------------


@main.command()
@CONFIG_OPTION
@_setting_options(settings.RUN)
def run(config_path: str | None, **flags: Any) -> None:
    """Run the sidecar in front of an LLM server until SIGTERM or Ctrl-C."""
    _reexec_optimized()
    from agent.runtime import StartupError, new_event_loop, serve

    cfg = _load(config_path, **_given_flags(flags))
    _setup_logging(cfg.log_level)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(cfg))
    except StartupError as e:
        _fail(str(e))


# -- simulated upstream and demo ----------------------------------------------------------


@main.command("mock-upstream")
@click.option("--dialect", type=click.Choice(["ollama", "openai"]), default="ollama", show_default=True)
@click.option("--listen", default="127.0.0.1:11434", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--flavor",
    type=click.Choice(["vllm", "llamacpp"]),
    default="vllm",
    show_default=True,
    help="For --dialect openai: where streamed usage goes "
    "(vLLM's separate chunk or llama.cpp's finish chunk).",
)
@click.option("--token-delay", type=float, default=0.02, show_default=True, help="Seconds between tokens.")
def mock_upstream(dialect: str, listen: str, flavor: str, token_delay: float) -> None:
    """Serve a simulated LLM server (Ollama or vLLM wire format) for demos and tests."""
    from agent.sim import serve

    try:
        host, port = configmod.parse_hostport(listen, "--listen")
    except ConfigError as e:
        _fail(str(e))
    serve(dialect, host, port, flavor=flavor, token_delay=token_delay)


@main.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="Sidecar HOST:PORT.")
@click.option("--ops-listen", default="127.0.0.1:9090", show_default=True, help="Ops API HOST:PORT.")
@click.option("--db", default="sqlite:///data/demo.db", show_default=True, help="Usage store URL.")
@click.option("-n", "--requests", "count", default=12, show_default=True, help="Requests in the burst.")
@click.option("--exit", "exit_after", is_flag=True, help="Exit after printing the table.")
def demo(listen: str, ops_listen: str, db: str, count: int, exit_after: bool) -> None:
    """Simulated LLM server + sidecar + a burst of traffic; prints the usage table and URLs."""
    from agent.demo import run_demo
    from agent.runtime import StartupError

    _setup_logging("warning")
    try:
        asyncio.run(run_demo(listen=listen, ops_listen=ops_listen, db=db, count=count, exit_after=exit_after))
    except StartupError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


# -- token ------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Issue and verify bearer JWTs with the configured key (for demos, tests and scripts;
    in production your identity provider issues them)."""


def _claim_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@token.command("issue")
@CONFIG_OPTION
@click.option("--sub", required=True, help="The user: the token's sub claim.")
@click.option("--team", help="The team, put in the claim named by team_claim [default claim: team].")
@click.option("--ttl", default="15m", show_default=True, help="Lifetime: 90s, 15m, 1h, 7d or 1h30m.")
@click.option(
    "--claim",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help='Extra claim, repeatable. VALUE is read as JSON when it parses (42, true, ["a"]), else as '
    "text; it overrides the claims above.",
)
@click.option(
    "--private-key",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Sign with this PEM private key (RS256, ES256/384/512 or EdDSA, by key type) "
    "instead of the configured secret.",
)
@click.option("--kid", help="Key id header: the kid of the matching public key in the sidecar's JWKS.")
def token_issue(
    config_path: str | None,
    sub: str,
    team: str | None,
    ttl: str,
    extra: tuple[str, ...],
    private_key: str | None,
    kid: str | None,
) -> None:
    """Print a signed JWT for --sub (the token is the last line of stdout).

    Signed with the configured shared secret (HS256), or with --private-key. The configured
    jwt_audience and jwt_issuer are put in, so the token passes this sidecar's checks.
    """
    from agent.auth.errors import KeyConfigError
    from agent.auth.issue import SigningKey, issue_token
    from agent.auth.keys import load_secret
    from agent.auth.settings import AuthSettings
    from agent.durations import parse_duration

    cfg = _load(config_path)
    try:
        lifetime = parse_duration(ttl).total_seconds()
    except ValueError as e:
        _fail(f"--ttl: {e}")
    if lifetime <= 0:
        _fail("--ttl: must be longer than 0s")
    claims: dict[str, Any] = {}
    for item in extra:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail(f"--claim {item!r}: use KEY=VALUE, e.g. --claim scope=chat")
        claims[key] = _claim_value(raw)
    auth = AuthSettings.from_config(cfg)
    try:
        if private_key:
            signing = SigningKey.from_private_key_file(private_key, kid)
        elif cfg.jwt_secret or cfg.jwt_secret_file:
            signing = SigningKey.from_secret(load_secret(auth), kid)
        else:
            verifies_with = ", ".join(cfg.key_sources)
            _fail(
                "no signing key: configure the shared secret (SIDEMETER_JWT_SECRET or jwt_secret_file) "
                "or pass --private-key FILE"
                + (
                    f" (the sidecar verifies with {verifies_with}: use its private key)"
                    if verifies_with
                    else ""
                )
            )
    except KeyConfigError as e:
        _fail(str(e))
    audiences = auth.audiences
    text = issue_token(
        signing,
        sub,
        team=team,
        ttl=lifetime,
        team_claim=cfg.team_claim,
        audience=audiences[0] if audiences else None,
        issuer=cfg.jwt_issuer,
        extra=claims,
    )
    click.echo(
        f"token for {sub}{f' (team {team})' if team else ''}, {signing.algorithm}, valid for {ttl}",
        err=True,
    )
    click.echo(text)


@token.command("verify")
@CONFIG_OPTION
@_setting_options(settings.TOKEN_VERIFY)
@click.argument("token_text", metavar="[TOKEN]", required=False)
def token_verify(config_path: str | None, token_text: str | None, **flags: Any) -> None:
    """Check TOKEN exactly as the sidecar would and print its claims (JSON), or the reason
    it fails (exit 1). Reads the token from stdin when TOKEN is - or left out."""
    from agent.auth.errors import AuthError, KeyConfigError
    from agent.auth.settings import AuthSettings
    from agent.auth.verify import Verifier

    cfg = _load(config_path, **_given_flags(flags))
    auth = AuthSettings.from_config(cfg)
    if not auth.key_sources:
        _fail(
            "no key to verify with: configure jwt_secret (SIDEMETER_JWT_SECRET), jwt_secret_file, "
            "jwt_public_key, jwks_url or jwks_file (or pass --jwt-public-key, --jwks-url, ...)"
        )
    try:
        verifier = Verifier.from_settings(auth)
    except KeyConfigError as e:
        _fail(str(e))
    text = token_text if token_text and token_text != "-" else sys.stdin.read()
    text = text.strip().removeprefix("Bearer ").strip()

    async def check() -> Any:
        try:
            return await verifier.verify(text)
        finally:
            await verifier.aclose()

    try:
        identity = asyncio.run(check())
    except AuthError as e:
        click.echo(f"invalid token: {e.reason}: {e.description}", err=True)
        sys.exit(1)
    click.echo(json.dumps(dict(identity.claims), indent=2, sort_keys=True))
    click.echo(f"valid: user {identity.user}, team {identity.team or '-'}", err=True)


# -- usage ------------------------------------------------------------------------------


@main.group()
def usage() -> None:
    """Read usage records."""


@usage.command("export")
@CONFIG_OPTION
@click.option("--db", help="Usage store URL [default: from config].")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
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


# -- config ------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Create, inspect and change the config file."""


def _config_file(path: str | None) -> Path:
    return Path(path or configmod.DEFAULT_CONFIG_FILE)


@config_group.command("init")
@click.argument("path", required=False)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(path: str | None, force: bool) -> None:
    """Write a commented config file with every key at its default."""
    target = _config_file(path)
    if target.exists() and not force:
        _fail(f"{target} exists; pass --force to overwrite it")
    target.write_text(settings.config_file_text())
    click.echo(f"wrote {target}")


@config_group.command("show")
@CONFIG_OPTION
def config_show(config_path: str | None) -> None:
    """Print the effective config (defaults < file < environment), secrets masked."""
    import tomli_w

    cfg = _load(config_path)
    d = {k: v for k, v in cfg.to_dict(redact=True).items() if v is not None}
    click.echo(tomli_w.dumps(d), nl=False)


@config_group.command("validate")
@CONFIG_OPTION
def config_validate(config_path: str | None) -> None:
    """Check the config as `run` would short of opening its ports: every value, the data directory,
    the JWT key, the database. Prints every problem, one line each, and exits non-zero."""
    from agent.runtime import preflight_problems

    try:
        cfg, problems = configmod.load_unchecked(config_path)
    except ConfigError as e:
        _fail(str(e))
    problems = list(dict.fromkeys([*problems, *preflight_problems(cfg)]))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)
    click.echo("config ok")


@config_group.command("get")
@CONFIG_OPTION
@click.argument("key")
def config_get(config_path: str | None, key: str) -> None:
    """Print one effective value."""
    if key not in Config.field_names():
        _fail(f"unknown key {key!r}; known keys: {', '.join(Config.field_names())}")
    value = _load(config_path).to_dict(redact=True)[key]
    click.echo("" if value is None else str(value).lower() if isinstance(value, bool) else value)


@config_group.command("set")
@CONFIG_OPTION
@click.argument("key")
@click.argument("value")
def config_set(config_path: str | None, key: str, value: str) -> None:
    """Set KEY to VALUE in the config file (created when missing), checking the result."""
    import tomli_w

    if key not in Config.field_names():
        _fail(f"unknown key {key!r}; known keys: {', '.join(Config.field_names())}")
    target = _config_file(config_path)
    try:
        current = configmod.read_file(target) if target.exists() else {}
        current[key] = configmod._coerce(key, value, "the command line")
        Config(**current).validate()
    except ConfigError as e:
        _fail(str(e))
    target.write_text(tomli_w.dumps(current))
    click.echo(f"{key} = {value} written to {target}")


# -- db ------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the usage database."""


def _open(config_path: str | None, db_url: str | None, *, create: bool = False) -> tuple[Config, Database]:
    """The configured database. Only `db migrate` (create=True) makes one: for the other
    commands a missing database, or one without the usage tables, is a one-line error."""
    from agent.store.database import StoreError, open_database, require_schema

    cfg = _load(config_path, db=db_url)
    try:
        database = open_database(cfg.db, create=create)
        if not create:
            require_schema(database)
    except StoreError as e:
        _fail(str(e))
    return cfg, database


@contextlib.contextmanager
def _db_errors(database: Database, doing: str) -> Iterator[None]:
    """A failing query is one line naming the database, then exit 2; closes it either way."""
    from agent.store.database import StoreError, errors_as_store_error

    try:
        with errors_as_store_error(database, doing):
            yield
    except StoreError as e:
        _fail(str(e))
    finally:
        database.close()


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
@click.option("--older-than", required=True, help="Delete records older than this, e.g. 30d.")
@click.option("--yes", is_flag=True, help="Do not ask, even when every record would be deleted.")
@click.option("--dry-run", is_flag=True, help="Only count the records that would be deleted.")
def db_prune(config_path: str | None, db_url: str | None, older_than: str, yes: bool, dry_run: bool) -> None:
    """Delete usage records older than --older-than.

    Asks first when that would delete every record. Upgrades the schema first, as the
    sidecar does at start, so no id of a deleted record is handed out again."""
    from agent.durations import parse_duration
    from agent.records import utcnow
    from agent.store.database import describe, migrate
    from agent.store.queries import count_records, delete_records

    try:
        cutoff = utcnow() - parse_duration(older_than)
    except (ValueError, OverflowError) as e:
        _fail(f"--older-than: {e}")
    _, database = _open(config_path, db_url)
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


if __name__ == "__main__":
    main()
