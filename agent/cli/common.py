"""What the `sidemeter` commands share: the --config option, the setting flags, loading the
config, error exits, logging and opening the usage database."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from agent import config as configmod
from agent import settings
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


def _setup_logging(level: str, fmt: str = "text") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if fmt == "json":
        from agent.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # mitmproxy logs every connection at info; the sidecar's own lines are what operators need.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, logging.getLogger().level))


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


def _ops_token(minter: Any, cfg: Config, sub: str, ttl: float) -> str:
    """A token the ops API accepts: `sub` with the first of the configured ops roles in the
    configured role claim (`simulate` and `smoke-test` read records and services with it)."""
    role = (settings.split_list(cfg.ops_roles) or ["ops"])[0]
    return str(minter.mint(sub, ttl=ttl, extra={cfg.ops_role_claim: [role]}))
