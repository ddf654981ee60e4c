"""`sidemeter token issue|verify`: bearer JWTs signed and checked with the configured key."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from agent import settings
from agent.cli.common import CONFIG_OPTION, _fail, _given_flags, _load, _setting_options


@click.group()
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
    from agent.auth.issue import TokenMinter
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
    try:
        minter = TokenMinter.from_settings(AuthSettings.from_config(cfg), private_key=private_key, kid=kid)
    except KeyConfigError as e:
        _fail(str(e))
    text = minter.mint(sub, team=team, ttl=lifetime, extra=claims)
    signing = minter.signing_key
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
