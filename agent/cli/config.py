"""`sidemeter config init|show|validate|get|set`: the config file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent import config as configmod
from agent import settings
from agent.cli.common import CONFIG_OPTION, _fail, _load
from agent.config import Config, ConfigError


@click.group("config")
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
    """Print the effective config (defaults < file < environment), secrets masked, the
    [[quotas]] rules and the [[prices]] tables."""
    import tomli_w

    cfg = _load(config_path)
    d = {k: v for k, v in cfg.to_dict(redact=True).items() if v is not None and v != []}
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
    if configmod.QUOTAS in current:  # the file's [[quotas]] and [[prices]] tables, kept as they were
        current[configmod.QUOTAS] = [rule.to_table() for rule in current[configmod.QUOTAS]]
    if configmod.PRICES in current:
        current[configmod.PRICES] = [price.to_table() for price in current[configmod.PRICES]]
    target.write_text(tomli_w.dumps(current))
    click.echo(f"{key} = {value} written to {target}")
