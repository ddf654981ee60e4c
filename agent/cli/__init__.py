"""The `sidemeter` command line: the `main` group, with one module per command or group
(run.py, demo.py, simulate.py, smoke.py, token.py, usage.py, requests.py, stats.py, config.py,
db.py, quota.py) and what they share in common.py. `python -m agent.cli` runs it too (__main__.py)."""

from __future__ import annotations

import click

from agent import __version__
from agent.cli import config, db, demo, quota, requests, run, simulate, smoke, stats, token, usage


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sidemeter")
def main() -> None:
    """Sidemeter: a metering sidecar for self-hosted LLM servers.

    Clients talk to the sidecar's port instead of the LLM server's; every request is relayed
    unchanged and leaves one usage record (who, model, tokens, latency, time to first token).
    """


for command in (
    run.run,
    demo.mock_upstream,
    demo.demo,
    token.token,
    usage.usage,
    requests.requests,
    stats.stats,
    config.config_group,
    db.db,
    simulate.simulate,
    smoke.smoke_test,
    quota.quota,
):
    main.add_command(command)
