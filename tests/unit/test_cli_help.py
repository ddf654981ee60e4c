"""Every `sidemeter` command and group has a real --help: a description, and help for each option."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from agent.cli import main


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(main))


def test_the_walk_finds_every_group_and_command() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "",
        "run",
        "demo",
        "mock-upstream",
        "token issue",
        "usage export",
        "config set",
        "db prune",
    } <= paths
    assert len(COMMANDS) >= 19


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "sidemeter" for p, _ in COMMANDS])
def test_help_describes_the_command_and_every_option(path: tuple[str, ...], command: click.Command) -> None:
    res = CliRunner().invoke(main, [*path, "--help"], prog_name="sidemeter")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Usage: {' '.join(('sidemeter', *path))} "), res.output
    assert command.help and command.help.strip(), f"{' '.join(path)}: no description"
    assert " ".join(command.help.split()[:5]) in " ".join(res.output.split())  # printed, unwrapped
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help and param.help.strip(), f"{' '.join(path)} {param.opts[0]}: no help text"
            assert param.opts[-1] in res.output
