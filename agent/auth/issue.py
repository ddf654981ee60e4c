"""Issuing tokens: `sidemeter token issue`, the demo and the tests sign with a SigningKey."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from agent.auth.errors import KeyConfigError
from agent.auth.keys import load_private_key, load_secret, public_algorithms
from agent.auth.settings import AuthSettings


@dataclass(frozen=True, slots=True)
class SigningKey:
    """What `issue_token` signs with: a shared secret (HS256) or a private key."""

    key: Any = field(repr=False)
    algorithm: str
    kid: str | None = None

    @classmethod
    def from_secret(cls, secret: str | bytes, kid: str | None = None) -> SigningKey:
        raw = secret.encode() if isinstance(secret, str) else secret
        if not raw:
            raise KeyConfigError("the JWT secret is empty; set jwt_secret or jwt_secret_file")
        return cls(raw, "HS256", kid)

    @classmethod
    def from_private_key_file(cls, path: str | Path, kid: str | None = None) -> SigningKey:
        key = load_private_key(path)
        algorithm = public_algorithms(key.public_key(), f"--private-key {path}")[0]
        return cls(key, algorithm, kid)


def issue_token(
    signing_key: SigningKey,
    sub: str,
    *,
    team: str | None = None,
    ttl: float = 900.0,
    team_claim: str = "team",
    audience: str | None = None,
    issuer: str | None = None,
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT for `sub`: iat, exp = iat + ttl, a jti, the team claim and aud/iss when
    given; `extra` claims are added last and win."""
    if not sub:
        raise ValueError("sub must not be empty")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl), "jti": uuid.uuid4().hex}
    if team:
        claims[team_claim] = team
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    claims.update(extra or {})
    headers = {"kid": signing_key.kid} if signing_key.kid else None
    return jwt.encode(claims, signing_key.key, algorithm=signing_key.algorithm, headers=headers)


@dataclass(frozen=True, slots=True)
class TokenMinter:
    """Tokens this sidecar accepts: signed with its configured secret (or a private key whose
    public half it verifies with), carrying its audience, issuer and team claim. Used by
    `sidemeter token issue`, `simulate` and `smoke-test`."""

    signing_key: SigningKey
    settings: AuthSettings

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, *, private_key: str | Path | None = None, kid: str | None = None
    ) -> TokenMinter:
        """KeyConfigError, saying what to configure, when there is nothing to sign with."""
        if private_key:
            return cls(SigningKey.from_private_key_file(private_key, kid), settings)
        if settings.jwt_secret or settings.jwt_secret_file:
            return cls(SigningKey.from_secret(load_secret(settings), kid), settings)
        verifies_with = ", ".join(settings.key_sources)
        raise KeyConfigError(
            "no signing key: configure the shared secret (SIDEMETER_JWT_SECRET or jwt_secret_file) "
            "or pass --private-key FILE"
            + (f" (the sidecar verifies with {verifies_with}: use its private key)" if verifies_with else "")
        )

    def mint(
        self,
        sub: str,
        *,
        team: str | None = None,
        ttl: float = 900.0,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        audiences = self.settings.audiences
        return issue_token(
            self.signing_key,
            sub,
            team=team,
            ttl=ttl,
            team_claim=self.settings.team_claim,
            audience=audiences[0] if audiences else None,
            issuer=self.settings.jwt_issuer,
            extra=extra,
        )
