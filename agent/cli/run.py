"""`sidemeter run`: the sidecar in the foreground, under `python -O`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import click

from agent import settings
from agent.cli.common import CONFIG_OPTION, _fail, _given_flags, _load, _setting_options, _setup_logging


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


@click.command()
@CONFIG_OPTION
@_setting_options(settings.RUN)
def run(config_path: str | None, **flags: Any) -> None:
    """Run the sidecar in front of an LLM server until SIGTERM or Ctrl-C."""
    _reexec_optimized()
    from agent.runtime import StartupError, new_event_loop, serve

    cfg = _load(config_path, **_given_flags(flags))
    _setup_logging(cfg.log_level, cfg.log_format)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            status = runner.run(serve(cfg))
    except StartupError as e:
        _fail(str(e))
    if status:
        sys.exit(status)  # records were lost: the summary line said how many and where they went
