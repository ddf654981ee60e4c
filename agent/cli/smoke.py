"""`sidemeter smoke-test`: check a running deployment end to end; exit 0 only when every step passed."""

from __future__ import annotations

import asyncio
import sys

import click

from agent.cli.common import CONFIG_OPTION, _fail, _load, _ops_token

TOKEN_TTL_S = 300.0


@click.command("smoke-test")
@CONFIG_OPTION
@click.option("--target", default="http://127.0.0.1:8080", show_default=True, help="The sidecar's proxy URL.")
@click.option("--ops", default="http://127.0.0.1:9090", show_default=True, help="The sidecar's ops API URL.")
@click.option("--model", default=None, help="Model to ask for [default: the first the ops API lists].")
@click.option(
    "--token", default=None, help="Send the requests with this token (its sub must be sidemeter-smoke)."
)
@click.option(
    "--private-key",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Mint the tokens with this private key instead of the configured secret.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds for each step.")
def smoke_test(
    config_path: str | None,
    target: str,
    ops: str,
    model: str | None,
    token: str | None,
    private_key: str | None,
    timeout: float,
) -> None:
    """Check a running sidecar: ops health, readiness, a bad token refused, a request in each
    dialect (streamed and whole) through the proxy, their records stored with the right user and
    tokens, and counted in /metrics. One line per step; exit 1 naming the first failing step.

    Tokens are minted with the configured key (SIDEMETER_JWT_SECRET or jwt_secret_file) for the
    user sidemeter-smoke (team smoke-test); request ids start with smoke-."""
    from agent import smoke
    from agent.auth.errors import KeyConfigError
    from agent.auth.issue import TokenMinter
    from agent.auth.settings import AuthSettings

    cfg = _load(config_path)
    ops_token = token
    if token is None and cfg.auth != "off":
        try:
            minter = TokenMinter.from_settings(AuthSettings.from_config(cfg), private_key=private_key)
        except KeyConfigError as e:
            _fail(f"cannot mint the smoke test's tokens: {e}; or pass --token")
        token = minter.mint(smoke.SMOKE_USER, team=smoke.SMOKE_TEAM, ttl=TOKEN_TTL_S)
        ops_token = _ops_token(minter, cfg, smoke.SMOKE_USER, TOKEN_TTL_S)
    deployment = smoke.Deployment(
        target=target.rstrip("/"),
        ops=ops.rstrip("/"),
        token=token,
        ops_token=ops_token,
        model=model,
        timeout=timeout,
    )

    def report(passed: bool, name: str, detail: str) -> None:
        mark = "-" if passed and detail.startswith("skipped") else "✓" if passed else "✗"
        click.echo(f"{mark} {name}: {detail}")

    failed = asyncio.run(smoke.run_steps(deployment, report))
    if failed is not None:
        click.echo(f"smoke test FAILED at: {failed}", err=True)
        sys.exit(1)
    click.echo("smoke test passed")
