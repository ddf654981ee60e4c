"""Who is calling: bearer JWT verification, the caller's identity, and token issuing.

No mitmproxy here: `addons/auth.py` calls `Verifier.verify` for every request, the CLI calls it
for `sidemeter token verify`, and `issue_token` backs `sidemeter token issue` and the demo.

Rules this module keeps:
- The accepted algorithms come from the configured key, never from the token (RFC 8725 §2.1):
  a shared secret verifies HS256/384/512 only, an RSA key RS*/PS*, an EC key the ES* of its
  curve, an Ed25519/Ed448 key EdDSA. `alg: none` and HS/RS confusion are refused before any
  key is used.
- Tokens and secrets never reach a log line, an error description or a repr. Descriptions
  do not echo what the client sent either (they end up in a response header).
- JWKS are fetched with aiohttp on the caller's event loop (pyjwt's PyJWKClient blocks on
  urllib), cached, refreshed every `jwks_refresh` seconds, and refetched early when a token
  names an unknown `kid` — at most once per `JWKS_MIN_REFETCH` seconds, so made-up kids
  cannot hammer the identity provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from agent.config import KEY_SOURCES, Config

log = logging.getLogger("sidemeter.auth")

# The closed set of rejection reasons: the `error` of a rejected usage record and the
# `reason` label of sidemeter_auth_failures_total.
REASONS: Final = (
    "missing",
    "malformed",
    "too_large",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_audience",
    "bad_issuer",
    "algorithm",
    "unknown_key",
    "user_mismatch",
    "jwks_unavailable",
)

HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# Curve names as cryptography spells them, and as JWKs do (RFC 7518 §6.2.1.1).
EC_CURVE_ALGORITHMS: Final = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}
JWK_CURVE_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
KNOWN_ALGORITHMS: Final = frozenset(
    (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_CURVE_ALGORITHMS.values(), "EdDSA")
)
MIN_RSA_BITS: Final = 2048

JWKS_MIN_REFETCH: Final = 10.0  # seconds between refetches caused by unknown kids (and retries)
JWKS_TIMEOUT: Final = 5.0
JWKS_MAX_BYTES: Final = 1024 * 1024


class AuthError(Exception):
    """A request's credentials are refused. `reason` is one of REASONS; `description` tells the
    client what is wrong without repeating the token."""

    def __init__(self, reason: str, description: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown auth failure reason {reason!r}")
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


class KeyConfigError(ValueError):
    """A configured key cannot be used; one line naming the setting, the file and what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified caller."""

    user: str
    team: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The auth part of the configuration (see agent/config.py for the meaning of each key)."""

    mode: str = "jwt"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_secret_file: str | None = None
    jwt_public_key: str | None = None
    jwks_url: str | None = None
    jwks_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: int = 30
    team_claim: str = "team"
    require_user_match: bool = False
    max_token_bytes: int = 8192
    jwks_refresh: int = 300
    forward_authorization: bool = False
    upstream_api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: Config) -> AuthSettings:
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.name != "mode"}
        return cls(mode=cfg.auth, **values)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def key_sources(self) -> list[str]:
        return [name for name in KEY_SOURCES if getattr(self, name)]

    @property
    def audiences(self) -> list[str]:
        return [a.strip() for a in (self.jwt_audience or "").split(",") if a.strip()]

    def describe(self) -> str:
        """For the start-up log line: the mode and where the key comes from, never the key."""
        if not self.enabled:
            return "off"
        if self.jwt_secret:
            return "jwt (shared secret)"
        if self.jwt_secret_file:
            return f"jwt (shared secret from {self.jwt_secret_file})"
        if self.jwt_public_key:
            return f"jwt (public key {self.jwt_public_key})"
        if self.jwks_url:
            return f"jwt (JWKS {_safe_url(self.jwks_url)})"
        return f"jwt (JWKS file {self.jwks_file})"


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and the algorithms it may verify; `algorithms` is fixed when the key is loaded."""

    key: Any = field(repr=False)  # HMAC secret (bytes) or a cryptography public key
    algorithms: tuple[str, ...]
    kid: str | None = None


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
        algorithm = _public_algorithms(key.public_key(), f"--private-key {path}")[0]
        return cls(key, algorithm, kid)


def _kind(key: object) -> str:
    name = type(key).__name__.lstrip("_")
    for prefix, label in (
        ("DSA", "a DSA key"),
        ("DH", "a Diffie-Hellman key"),
        ("X25519", "an X25519 (key exchange) key"),
        ("X448", "an X448 (key exchange) key"),
    ):
        if name.startswith(prefix):
            return label
    return f"a {name}"


def _public_algorithms(key: object, where: str) -> tuple[str, ...]:
    """The algorithms a public key can verify, strongest default first."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(
                f"{where}: the RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS} "
                "(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)"
            )
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_CURVE_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise KeyConfigError(
                f"{where}: EC curve {key.curve.name} is not usable for JWTs; use P-256, P-384 or P-521"
            )
        return (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise KeyConfigError(
        f"{where}: wrong key type: {_kind(key)} cannot verify JWTs; use an RSA (2048+ bits), "
        "EC (P-256/P-384/P-521) or Ed25519 key"
    )


def _read_bytes(path: str | Path, setting: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise KeyConfigError(f"{setting}: file {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise KeyConfigError(f"{setting}: {p} is a directory; give the key file itself") from None
    except OSError as e:
        raise KeyConfigError(f"{setting}: cannot read {p} ({e.strerror}); check its permissions") from None


def load_secret(settings: AuthSettings) -> bytes:
    """The shared HMAC secret from jwt_secret or jwt_secret_file (surrounding whitespace dropped)."""
    if settings.jwt_secret:
        raw, where = settings.jwt_secret.strip().encode(), "jwt_secret"
    else:
        assert settings.jwt_secret_file
        where = f"jwt_secret_file {settings.jwt_secret_file}"
        raw = _read_bytes(settings.jwt_secret_file, "jwt_secret_file").strip()
    if not raw:
        raise KeyConfigError(f"{where} is empty; put the shared secret in it (e.g. openssl rand -base64 48)")
    if raw.startswith(b"-----BEGIN"):  # pyjwt refuses PEM-looking HMAC secrets (key confusion)
        raise KeyConfigError(
            f"{where} holds a PEM key, not a shared secret; give a public key as jwt_public_key"
        )
    if len(raw) < HMAC_MIN_BYTES["HS256"]:
        log.warning(
            "%s is only %d bytes: HS256 wants at least 32 (RFC 7518 section 3.2); "
            "generate a strong one with: openssl rand -base64 48",
            where.split(" ")[0],
            len(raw),
        )
    return raw


def _secret_algorithms(secret: bytes) -> tuple[str, ...]:
    # HS256 always (a short secret is warned about at start); HS384/HS512 only with a secret long
    # enough for them, so a longer hash never runs on a key weaker than it claims.
    return ("HS256", *(a for a in ("HS384", "HS512") if len(secret) >= HMAC_MIN_BYTES[a]))


def load_public_key(path: str | Path, setting: str = "jwt_public_key") -> VerificationKey:
    """A PEM public key (or X.509 certificate) file, with the algorithms its type allows."""
    data = _read_bytes(path, setting)
    where = f"{setting} {path}"
    if b"PRIVATE KEY" in data:
        raise KeyConfigError(
            f"{where} holds a private key; give the sidecar only the public key "
            f"(openssl pkey -in {path} -pubout -out public.pem)"
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        hint = "; a JWKS (JSON) file goes in jwks_file" if data.lstrip().startswith(b"{") else ""
        raise KeyConfigError(
            f"{where} is not a readable PEM public key ({str(e).splitlines()[0]}){hint}"
        ) from None
    return VerificationKey(key, _public_algorithms(key, where))


def load_private_key(path: str | Path) -> Any:
    """A PEM private key for `token issue` (unencrypted)."""
    data = _read_bytes(path, "--private-key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyConfigError(
            f"--private-key {path} is encrypted; decrypt a copy (openssl pkey -in {path} -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyConfigError(
            f"--private-key {path} is not a readable PEM private key ({str(e).splitlines()[0]})"
        ) from None
    if not hasattr(key, "public_key"):
        raise KeyConfigError(f"--private-key {path}: wrong key type: {_kind(key)} cannot sign JWTs")
    return key


def jwk_to_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """One JWK of a key set; ValueError (with the reason) for keys that cannot verify tokens."""
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"use is {jwk.get('use')!r}, not 'sig'")
    if kty == "RSA":
        family: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC" and crv in JWK_CURVE_ALGORITHMS:
        family = (JWK_CURVE_ALGORITHMS[crv],)
    elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
        family = ("EdDSA",)
    elif kty == "oct":
        raise ValueError("symmetric (oct) keys are not accepted from a key set; use jwt_secret")
    else:
        raise ValueError(f"unsupported key type kty={kty!r} crv={crv!r}")
    if alg is not None:
        if alg not in family:
            raise ValueError(f"alg {alg!r} does not fit a {kty} key")
        family = (alg,)
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=family[0]).key
    except jwt.PyJWTError as e:
        raise ValueError(f"cannot be loaded ({type(e).__name__})") from None
    if hasattr(key, "private_bytes"):  # a JWKS that carries private parts: verify with the public half
        key = key.public_key()
    try:
        allowed = _public_algorithms(key, "key")
    except KeyConfigError as e:
        raise ValueError(str(e).removeprefix("key: ")) from None
    kid = jwk.get("kid")
    algorithms = tuple(a for a in family if a in allowed)
    return VerificationKey(key, algorithms, kid if isinstance(kid, str) else None)


def parse_jwks(doc: Any) -> list[VerificationKey]:
    """The usable keys of a JWKS document; ValueError when it has none."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS: expected a JSON object with a "keys" array')
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for i, item in enumerate(doc["keys"]):
        name = item.get("kid", f"#{i}") if isinstance(item, dict) else f"#{i}"
        try:
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
            keys.append(jwk_to_key(item))
        except ValueError as e:
            skipped.append(f"{name}: {e}")
    if skipped:
        log.warning("JWKS: skipped %d key(s): %s", len(skipped), "; ".join(skipped))
    if not keys:
        raise ValueError("no usable signing keys" + (f" ({'; '.join(skipped)})" if skipped else ""))
    return keys


def _safe_url(url: str) -> str:
    """A URL for log lines: no credentials, no query (either may carry secrets)."""
    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}"


class KeySource(Protocol):
    async def find(self, kid: str | None, alg: str) -> VerificationKey: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class StaticKey:
    """One configured key: a shared secret or a public key file. The token's kid is not consulted."""

    def __init__(self, key: VerificationKey) -> None:
        self.key = key

    async def find(self, kid: str | None, alg: str) -> VerificationKey:
        return self.key

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class JwksKeys:
    """A JWKS from a URL or a file, cached; keys are looked up by the token's `kid`."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        refresh: float = 300.0,
        min_refetch: float = JWKS_MIN_REFETCH,
        timeout: float = JWKS_TIMEOUT,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url, path")
        self.url, self.path = url, path
        self.refresh, self.min_refetch, self.timeout = refresh, min_refetch, timeout
        self.source = _safe_url(url) if url else f"file {path}"
        self.keys: list[VerificationKey] | None = None
        self.fetches = 0  # attempts, for tests and the ops API
        self._fetched_at = -math.inf  # monotonic time of the last successful fetch
        self._attempted_at = -math.inf  # ... of the last attempt, successful or not
        self._unknown_kid_at = -math.inf  # ... of the last refetch caused by an unknown kid
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def load_now(self) -> None:
        """Read a JWKS file at start so a broken one stops the sidecar with a clear line."""
        assert self.path is not None
        data = _read_bytes(self.path, "jwks_file")
        try:
            self._install(parse_jwks(json.loads(data)))
        except ValueError as e:  # JSON errors are ValueErrors too
            raise KeyConfigError(f"jwks_file {self.path}: {e}") from None

    async def start(self) -> None:
        """Warm the cache. An identity provider that is down must not stop the sidecar: the
        failure is logged, and tokens are refused with jwks_unavailable until it answers."""
        if self.keys is None:
            await self._refresh(lambda: True)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def find(self, kid: str | None, alg: str) -> VerificationKey:
        now = time.monotonic()
        await self._refresh(
            lambda: (
                (self.keys is None or now - self._fetched_at >= self.refresh)
                and now - self._attempted_at >= self.min_refetch
            )
        )
        if self.keys is None:
            raise AuthError(
                "jwks_unavailable",
                "the signing keys (JWKS) could not be fetched; try again shortly",
            )
        if kid is None:
            usable = [k for k in self.keys if alg in k.algorithms]
            if len(usable) == 1:
                return usable[0]
            raise AuthError(
                "unknown_key",
                "the token has no kid header and the key set does not have exactly one key for it",
            )
        key = self._by_kid(kid)
        if key is None:
            # A rotated key: look again, but not more often than min_refetch.
            def due() -> bool:
                recent = time.monotonic() - self._unknown_kid_at < self.min_refetch
                return self._by_kid(kid) is None and not recent

            await self._refresh(due, unknown_kid=True)
            key = self._by_kid(kid)
        if key is None:
            raise AuthError("unknown_key", "the token's kid is not in the key set (JWKS)")
        return key

    def _by_kid(self, kid: str) -> VerificationKey | None:
        return next((k for k in self.keys or () if k.kid == kid), None)

    async def _refresh(self, due: Any, *, unknown_kid: bool = False) -> None:
        if not due():
            return
        if self._lock.locked() and self.keys is not None and not unknown_kid:
            return  # another request is refreshing; the cached keys serve meanwhile
        async with self._lock:
            if not due():  # refreshed by whoever held the lock
                return
            now = time.monotonic()
            self._attempted_at = now
            if unknown_kid:
                self._unknown_kid_at = now
            self.fetches += 1
            try:
                keys = await (self._fetch_url() if self.url else self._fetch_file())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                cached = f"keeping {len(self.keys)} cached key(s)" if self.keys else "no keys yet"
                log.warning("JWKS from %s could not be loaded (%s); %s", self.source, _why(e), cached)
                return
            self._install(keys)

    def _install(self, keys: list[VerificationKey]) -> None:
        first = self.keys is None
        changed = first or {k.kid for k in keys} != {k.kid for k in self.keys or ()}
        self.keys = keys
        self._fetched_at = time.monotonic()
        if changed:
            kids = ", ".join(k.kid or "(no kid)" for k in keys)
            log.info("JWKS from %s: %d key(s): %s", self.source, len(keys), kids)

    async def _fetch_file(self) -> list[VerificationKey]:
        assert self.path is not None
        data = await asyncio.to_thread(Path(self.path).read_bytes)
        return parse_jwks(json.loads(data))

    async def _fetch_url(self) -> list[VerificationKey]:
        assert self.url is not None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json"},
                trust_env=True,  # HTTPS_PROXY / NO_PROXY apply, as they do for curl
            )
        async with self._session.get(self.url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.content.read(JWKS_MAX_BYTES + 1)
        if len(body) > JWKS_MAX_BYTES:
            raise ValueError(f"larger than {JWKS_MAX_BYTES} bytes")
        return parse_jwks(json.loads(body))


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------- verification


CACHE_SECONDS: Final = 30.0
CACHE_ENTRIES: Final = 1024


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
    ) -> None:
        self.keys = keys
        self.audiences = list(audiences)
        self.issuer = issuer or None
        self.leeway = leeway
        self.team_claim = team_claim
        self.require_user_match = require_user_match
        self.max_token_bytes = max_token_bytes
        # Verified tokens, by their exact text: a client sends the same token with every
        # request, and checking its signature again costs ~70 us (HS256) to much more (RSA,
        # EC) each time. An entry is used only until the token's exp (plus leeway) and at
        # most CACHE_SECONDS, and only while the key source still hands out the very key that
        # verified it: a key rotated out of a JWKS stops working at once.
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
                "no JWT key is configured, so clients cannot be authenticated; set one of "
                "--jwt-secret-file, SIDEMETER_JWT_SECRET, --jwt-public-key, --jwks-url or --jwks-file, "
                "or pass --auth off to run without authentication"
            )
        if len(sources) > 1:
            raise KeyConfigError(f"{' and '.join(sources)} are all set; configure exactly one JWT key source")
        keys: KeySource
        if settings.jwt_secret or settings.jwt_secret_file:
            secret = load_secret(settings)
            keys = StaticKey(VerificationKey(secret, _secret_algorithms(secret)))
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
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as e:
            raise self._refusal(e, token) from None
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

    def _remember(self, token: str, entry: _Verified, exp: Any) -> None:
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return
        entry.valid_until = min(float(exp) + self.leeway, self.clock() + CACHE_SECONDS)
        self._verified[token] = entry
        if len(self._verified) > CACHE_ENTRIES:
            self._verified.popitem(last=False)  # the oldest; tokens are bounded in size

    def _refusal(self, e: jwt.PyJWTError, token: str) -> AuthError:
        # pyjwt checks the signature before any claim, so the claims quoted here are authentic.
        if isinstance(e, jwt.InvalidSignatureError):
            return AuthError("bad_signature", "the token's signature does not verify with the configured key")
        if isinstance(e, jwt.ExpiredSignatureError):
            exp = _unverified_claims(token).get("exp")
            now = _iso(time.time())
            return AuthError(
                "expired", f"the token expired at {_iso(exp)} (now {now}, leeway {self.leeway}s)"
            )
        if isinstance(e, jwt.ImmatureSignatureError):
            claims = _unverified_claims(token)
            if "(iat)" in str(e):
                iat = _iso(claims.get("iat"))
                return AuthError(
                    "not_yet_valid",
                    f"the token is issued in the future (iat {iat}); check the issuer's clock",
                )
            return AuthError("not_yet_valid", f"the token is not valid before {_iso(claims.get('nbf'))}")
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
        return AuthError("malformed", f"the token is not acceptable: {_why(e)}")


def _unverified_claims(token: str) -> dict[str, Any]:
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}


def _iso(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        try:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            pass
    return "(not a time)"


def _claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim as text: `name` itself, else a dotted path into nested objects
    (`org.team`); a list counts by its first entry."""
    value: Any = claims.get(name)
    if value is None and "." in name:
        value = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        return None
    return str(value) or None


# --------------------------------------------------------------------------- issuing


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
