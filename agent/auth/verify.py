"""Bearer JWT verification: the Verifier, its verified-token cache, and the refusals it explains.

Tokens and secrets never reach a log line, an error description or a repr. Descriptions do
not echo what the client sent either (they end up in a response header).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import jwt

from agent.auth.errors import AuthError, KeyConfigError, why
from agent.auth.jwks import JwksKeys, KeySource, StaticKey
from agent.auth.keys import (
    HMAC_MIN_BYTES,
    KNOWN_ALGORITHMS,
    VerificationKey,
    load_public_key,
    load_secret,
    secret_algorithms,
)
from agent.auth.settings import AuthSettings
from agent.config import key_source_conflict
from agent.durations import parse_duration


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified caller."""

    user: str
    team: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


CACHE_SECONDS: Final = 30.0
CACHE_ENTRIES: Final = 1024

# The NumericDate claims (RFC 7519 §2): JSON numbers of seconds since 1970, which pyjwt would
# also take as numeric strings ("exp": "99999999999") or as 1e300. Accepted: a finite number
# (not a bool) from 1970 to the end of year 9999.
TIME_CLAIMS: Final = ("exp", "nbf", "iat")
LATEST_NUMERIC_DATE: Final = 253402300799.0  # 9999-12-31T23:59:59Z
# pyjwt's own checks of these claims are off: `_check_times` does them, on `clock`.
_DECODE_OPTIONS: Final = {
    "require": ["exp", "sub"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


@dataclass(slots=True)
class _Verified:
    identity: Identity
    valid_until: float
    kid: Any
    alg: str
    key: VerificationKey


class Verifier:
    """Verifies bearer JWTs against the configured key and turns them into an Identity."""

    def __init__(
        self,
        keys: KeySource,
        *,
        audiences: Sequence[str] = (),
        issuer: str | None = None,
        leeway: float = 30,
        team_claim: str = "team",
        require_user_match: bool = False,
        max_token_bytes: int = 8192,
        max_lifetime: float | None = None,
    ) -> None:
        self.keys = keys
        self.audiences = list(audiences)
        self.issuer = issuer or None
        self.leeway = leeway
        self.team_claim = team_claim
        self.require_user_match = require_user_match
        self.max_token_bytes = max_token_bytes
        self.max_lifetime = max_lifetime  # seconds; None: no limit
        # Verified tokens, by their exact text: a client sends the same token with every
        # request, and checking its signature again costs ~70 us (HS256) to much more (RSA,
        # EC) each time. An entry is used only until the token's exp (plus leeway) and at
        # most CACHE_SECONDS, and only while the key source still hands out the very key that
        # verified it: a key rotated out of a JWKS stops working at once. Every claim check
        # holds for as long as an entry is used: exp is its end; nbf, iat and the lifetime
        # rule (exp - iat, or exp - now, which only shrinks) cannot turn a pass into a refusal.
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self.clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        keys = type(self.keys).__name__
        return f"Verifier(keys={keys}, audiences={self.audiences}, issuer={self.issuer!r})"

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Verifier:
        """Load the configured key; KeyConfigError names what is wrong and what to do."""
        sources = settings.key_sources
        if not sources:
            raise KeyConfigError(
                "no JWT key is configured, so clients cannot be authenticated; configure one "
                "(SIDEMETER_JWT_SECRET, --jwt-secret-file, --jwt-public-key, --jwks-url or --jwks-file) "
                "or pass --auth off to run without authentication"
            )
        conflict = key_source_conflict(sources)
        if conflict:
            raise KeyConfigError(conflict)
        keys: KeySource
        if settings.jwt_secret or settings.jwt_secret_file:
            secret = load_secret(settings)
            keys = StaticKey(VerificationKey(secret, secret_algorithms(secret)))
        elif settings.jwt_public_key:
            keys = StaticKey(load_public_key(settings.jwt_public_key))
        elif settings.jwks_file:
            jwks = JwksKeys(path=settings.jwks_file, refresh=settings.jwks_refresh)
            jwks.load_now()
            keys = jwks
        else:
            assert settings.jwks_url
            keys = JwksKeys(url=settings.jwks_url, refresh=settings.jwks_refresh)
        return cls(
            keys,
            audiences=settings.audiences,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            team_claim=settings.team_claim,
            require_user_match=settings.require_user_match,
            max_token_bytes=settings.max_token_bytes,
            max_lifetime=(
                parse_duration(settings.jwt_max_lifetime).total_seconds()
                if settings.jwt_max_lifetime
                else None
            ),
        )

    async def start(self) -> None:
        await self.keys.start()

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def verify(self, token: str, *, claimed_user: str | None = None) -> Identity:
        """The caller behind `token`; AuthError(reason, description) when it is not acceptable.
        `claimed_user` is the request's X-User-Id, checked against `sub` when required."""
        if not token:
            raise AuthError("missing", "no bearer token; send Authorization: Bearer <token>")
        cached = self._verified.get(token)
        if cached is not None:
            if self.clock() < cached.valid_until and await self._still_current(cached):
                self._check_user(cached.identity, claimed_user)
                return cached.identity
            self._verified.pop(token, None)
        size = len(token.encode("utf-8", "replace"))
        if size > self.max_token_bytes:
            raise AuthError(
                "too_large", f"the token is {size} bytes; the sidecar accepts at most {self.max_token_bytes}"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(
                "malformed", "the bearer token is not a JWT (header.payload.signature, base64url)"
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg or alg.lower() == "none":
            raise AuthError("algorithm", "unsigned tokens (alg none or no alg) are never accepted")
        kid = header.get("kid")
        key = await self.keys.find(kid, alg)
        if alg not in key.algorithms:
            shown = alg if alg in KNOWN_ALGORITHMS else "an unsupported algorithm"
            hint = ""
            if alg in HMAC_MIN_BYTES and "HS256" in key.algorithms:
                hint = f" ({alg} needs a secret of at least {HMAC_MIN_BYTES[alg]} bytes)"
            raise AuthError(
                "algorithm",
                f"the token is signed with {shown} but the configured key accepts "
                f"{', '.join(key.algorithms)}{hint}",
            )
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audiences or None,
                issuer=self.issuer,
                options=_DECODE_OPTIONS,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as e:
            raise self._refusal(e) from None
        self._check_times(claims)
        user = claims["sub"]
        if not user:
            raise AuthError("malformed", "the token's sub claim is empty")
        identity = Identity(user, _claim_text(claims, self.team_claim), claims)
        self._remember(token, _Verified(identity, 0.0, kid, alg, key), claims["exp"])
        self._check_user(identity, claimed_user)
        return identity

    def _check_user(self, identity: Identity, claimed_user: str | None) -> None:
        if self.require_user_match and claimed_user is not None and claimed_user != identity.user:
            raise AuthError("user_mismatch", "X-User-Id does not match the token's subject (sub)")

    async def _still_current(self, cached: _Verified) -> bool:
        try:
            return await self.keys.find(cached.kid, cached.alg) is cached.key
        except AuthError:
            return False  # the full check that follows gives the reason

    def _remember(self, token: str, entry: _Verified, exp: float) -> None:
        entry.valid_until = min(float(exp) + self.leeway, self.clock() + CACHE_SECONDS)
        self._verified[token] = entry
        if len(self._verified) > CACHE_ENTRIES:
            self._verified.popitem(last=False)  # the oldest; tokens are bounded in size

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """exp, nbf and iat of a token whose signature verified: NumericDates, in force now
        (with leeway), and within the lifetime limit."""
        for name in TIME_CLAIMS:
            if name in claims and not _numeric_date(claims[name]):
                raise AuthError(
                    "bad_time_claim",
                    f"the token's {name} claim is not a time: it must be a JSON number of seconds "
                    "since 1970 (not a string, a boolean or out of range)",
                )
        now = self.clock()
        leeway = self.leeway
        exp, nbf, iat = claims["exp"], claims.get("nbf"), claims.get("iat")
        if exp <= now - leeway:
            raise AuthError(
                "expired", f"the token expired at {_iso(exp)} (now {_iso(now)}, leeway {leeway}s)"
            )
        if nbf is not None and nbf > now + leeway:
            raise AuthError("not_yet_valid", f"the token is not valid before {_iso(nbf)}")
        if iat is not None and iat > now + leeway:
            raise AuthError(
                "not_yet_valid",
                f"the token is issued in the future (iat {_iso(iat)}); check the issuer's clock",
            )
        limit = self.max_lifetime
        if limit is None:
            return
        if iat is not None:
            if exp - iat > limit:
                raise AuthError(
                    "lifetime_too_long",
                    f"the token is valid for {_span(exp - iat)} (iat to exp); the sidecar accepts "
                    f"at most {_span(limit)} (jwt_max_lifetime)",
                )
        elif exp - now > limit + leeway:
            raise AuthError(
                "lifetime_too_long",
                f"the token has no iat and expires in {_span(exp - now)}; the sidecar accepts "
                f"at most {_span(limit)} (jwt_max_lifetime)",
            )

    def _refusal(self, e: jwt.PyJWTError) -> AuthError:
        # pyjwt checks the signature before any claim, so a claim refused here is authentic.
        if isinstance(e, jwt.InvalidSignatureError):
            return AuthError("bad_signature", "the token's signature does not verify with the configured key")
        if isinstance(e, jwt.MissingRequiredClaimError):
            if e.claim == "aud":
                return AuthError("bad_audience", "the token has no audience (aud); the sidecar requires one")
            if e.claim == "iss":
                return AuthError("bad_issuer", "the token has no issuer (iss); the sidecar requires one")
            return AuthError("malformed", f"the token has no {e.claim} claim; it is required")
        if isinstance(e, jwt.InvalidAudienceError):
            if not self.audiences:
                return AuthError(
                    "bad_audience", "the token names an audience (aud) but the sidecar has no jwt_audience"
                )
            return AuthError("bad_audience", "the token's audience (aud) is not one the sidecar accepts")
        if isinstance(e, jwt.InvalidIssuerError):
            return AuthError("bad_issuer", "the token's issuer (iss) is not the one the sidecar accepts")
        if isinstance(e, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
            return AuthError("algorithm", "the token's algorithm cannot be used with the configured key")
        return AuthError("malformed", f"the token is not acceptable: {why(e)}")


def _numeric_date(v: Any) -> bool:
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and 0 <= v <= LATEST_NUMERIC_DATE
    )


def _span(seconds: float) -> str:
    """A duration as `parse_duration` reads it back: 1d2h, 15m, 90s."""
    rest = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def _iso(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        try:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            pass
    return "(not a time)"


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """The claim `name` itself, else a dotted path into nested objects (`org.team`,
    Keycloak's `realm_access.roles`); None when absent."""
    value: Any = claims.get(name)
    if value is None and "." in name:
        value = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return value


def claim_roles(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    """The roles a claim grants: a list of strings, or one string of roles separated by spaces
    (OAuth `scope`) or commas."""
    value = claim_value(claims, name)
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def _claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim as text (`claim_value`); a list counts by its first entry."""
    value = claim_value(claims, name)
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        return None
    return str(value) or None
