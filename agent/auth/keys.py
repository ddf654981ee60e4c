"""Verification keys: the shared secret, PEM public keys and certificates, JWKs and JWKS documents.

The accepted algorithms come from the configured key, never from the token (RFC 8725 §2.1):
a shared secret verifies HS256/384/512 only, an RSA key RS*/PS*, an EC key the ES* of its
curve, an Ed25519/Ed448 key EdDSA. A key that cannot work is a KeyConfigError naming the
setting, the file and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from agent.auth.errors import KeyConfigError

if TYPE_CHECKING:
    from agent.auth.settings import AuthSettings

log = logging.getLogger("sidemeter.auth")

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


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and the algorithms it may verify; `algorithms` is fixed when the key is loaded."""

    key: Any = field(repr=False)  # HMAC secret (bytes) or a cryptography public key
    algorithms: tuple[str, ...]
    kid: str | None = None


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


def public_algorithms(key: object, where: str) -> tuple[str, ...]:
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


def read_key_file(path: str | Path, setting: str) -> bytes:
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
        raw = read_key_file(settings.jwt_secret_file, "jwt_secret_file").strip()
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


def secret_algorithms(secret: bytes) -> tuple[str, ...]:
    # HS256 always (a short secret is warned about at start); HS384/HS512 only with a secret long
    # enough for them, so a longer hash never runs on a key weaker than it claims.
    return ("HS256", *(a for a in ("HS384", "HS512") if len(secret) >= HMAC_MIN_BYTES[a]))


def load_public_key(path: str | Path, setting: str = "jwt_public_key") -> VerificationKey:
    """A PEM public key (or X.509 certificate) file, with the algorithms its type allows."""
    data = read_key_file(path, setting)
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
    return VerificationKey(key, public_algorithms(key, where))


def load_private_key(path: str | Path) -> Any:
    """A PEM private key for `token issue` (unencrypted)."""
    data = read_key_file(path, "--private-key")
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
        allowed = public_algorithms(key, "key")
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


def safe_url(url: str) -> str:
    """A URL for log lines: no credentials, no query (either may carry secrets)."""
    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}"
