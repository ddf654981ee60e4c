"""Key loading and settings: a key that cannot work stops the start with one line that names it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from addons.auth import www_authenticate
from agent import config as configmod
from agent.auth.errors import REASONS, AuthError, KeyConfigError
from agent.auth.issue import SigningKey, issue_token
from agent.auth.jwks import StaticKey
from agent.auth.keys import VerificationKey, load_public_key, parse_jwks
from agent.auth.settings import AuthSettings
from agent.auth.verify import Verifier
from agent.config import Config, ConfigError

PUBLIC = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
PRIVATE = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_public_key_types_decide_the_algorithms(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "rsa": (rsa_key.public_key(), ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")),
        "p256": (ec.generate_private_key(ec.SECP256R1()).public_key(), ("ES256",)),
        "p384": (ec.generate_private_key(ec.SECP384R1()).public_key(), ("ES384",)),
        "ed": (ed25519.Ed25519PrivateKey.generate().public_key(), ("EdDSA",)),
    }
    for name, (key, algorithms) in cases.items():
        loaded = load_public_key(_pem(tmp_path, f"{name}.pem", key.public_bytes(*PUBLIC)))
        assert loaded.algorithms == algorithms
    # A certificate works as well as its public key.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert load_public_key(_pem(tmp_path, "cert.pem", pem)).algorithms[0] == "RS256"


def test_unusable_public_keys_are_named_with_the_fix(tmp_path: Path) -> None:
    def error(path: Path) -> str:
        with pytest.raises(KeyConfigError) as info:
            load_public_key(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        return message

    assert "does not exist" in error(tmp_path / "missing.pem")
    assert "is a directory" in error(tmp_path)
    assert "not a readable PEM public key" in error(_pem(tmp_path, "junk.pem", b"hello"))
    assert "jwks_file" in error(_pem(tmp_path, "jwks.pem", b'{"keys": []}'))
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(*PRIVATE)
    assert "-pubout" in error(_pem(tmp_path, "private.pem", private))
    x = x25519.X25519PrivateKey.generate().public_key().public_bytes(*PUBLIC)
    message = error(_pem(tmp_path, "x25519.pem", x))
    assert "wrong key type" in message and "X25519" in message
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(*PUBLIC)
    assert "1024 bits" in error(_pem(tmp_path, "small.pem", small))


def test_jwks_parsing_keeps_only_signing_public_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(ec_key.public_key()))
    rsa_jwk = json.loads(
        jwt.get_algorithm_by_name("RS256").to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
    )  # private parts included: only the public half is kept
    doc = {
        "keys": [
            {**ec_jwk, "kid": "ec"},
            {**rsa_jwk, "kid": "rsa", "alg": "PS256"},
            {**ec_jwk, "kid": "enc", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {**ec_jwk, "kid": "mismatch", "alg": "RS256"},
            "not a key",
        ]
    }
    keys = {k.kid: k for k in parse_jwks(doc)}
    assert set(keys) == {"ec", "rsa"}
    assert keys["ec"].algorithms == ("ES256",) and keys["rsa"].algorithms == ("PS256",)
    assert isinstance(keys["rsa"].key, rsa.RSAPublicKey)
    with pytest.raises(ValueError, match="no usable signing keys"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(ValueError, match="not a JWKS"):
        parse_jwks([])


def test_conflicting_key_sources_are_named() -> None:
    with pytest.raises(ConfigError, match="jwt_secret and jwt_public_key are both set"):
        Config(jwt_secret="x" * 32, jwt_public_key="k.pem").validate()
    with pytest.raises(ConfigError, match="jwt_secret_file, jwks_url and jwks_file are all set"):
        Config(jwt_secret_file="s", jwks_url="https://idp/jwks", jwks_file="j.json").validate()
    with pytest.raises(ConfigError, match="jwks_url"):
        Config(jwks_url="ftp://idp/jwks").validate()
    with pytest.raises(ConfigError, match="jwt_leeway"):
        Config(jwt_leeway=-1).validate()
    # An empty SIDEMETER_JWT_SECRET= (as in .env.example) is not a key source.
    cfg = configmod.load(None, environ={"SIDEMETER_JWT_SECRET": "", "SIDEMETER_JWKS_URL": "https://idp/jwks"})
    assert cfg.key_sources == ["jwks_url"]
    env = configmod.load(None, environ={"SIDEMETER_REQUIRE_USER_MATCH": "yes", "SIDEMETER_JWT_LEEWAY": "5"})
    assert env.require_user_match is True and env.jwt_leeway == 5


def test_secrets_stay_out_of_reprs() -> None:
    secret, api_key = "top-secret-value-" + "q" * 20, "upstream-key-value"
    cfg = Config(jwt_secret=secret, upstream_api_key=api_key)
    settings = AuthSettings.from_config(cfg)
    verifier = Verifier.from_settings(settings)
    signing = SigningKey.from_secret(secret)
    static = verifier.keys
    assert isinstance(static, StaticKey)
    for text in (repr(cfg), repr(settings), repr(verifier), repr(signing), repr(static.key)):
        assert secret not in text and api_key not in text
    assert cfg.to_dict(redact=True)["jwt_secret"] == "***"
    assert cfg.to_dict(redact=True)["upstream_api_key"] == "***"


def test_no_key_and_empty_secret_files(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="--auth off"):
        Verifier.from_settings(AuthSettings())
    empty = _pem(tmp_path, "secret", b"\n")
    with pytest.raises(KeyConfigError, match="is empty"):
        Verifier.from_settings(AuthSettings(jwt_secret_file=str(empty)))


async def test_issue_token_picks_the_algorithm_from_the_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = _pem(tmp_path, "p384.pem", key.private_bytes(*PRIVATE))
    signing = SigningKey.from_private_key_file(path, kid="p384")
    assert signing.algorithm == "ES384"
    token = issue_token(signing, "erin", team="ops", ttl=60, team_claim="org", audience="a", issuer="i")
    verifier = Verifier(
        StaticKey(VerificationKey(key.public_key(), ("ES384",))),
        audiences=["a"],
        issuer="i",
        team_claim="org",
    )
    identity = await verifier.verify(token)
    assert (identity.user, identity.team) == ("erin", "ops")
    assert identity.claims["jti"] and identity.claims["exp"] - identity.claims["iat"] == 60


async def test_team_claim_reaches_nested_and_list_claims() -> None:
    secret = b"t" * 32
    verifier = Verifier(StaticKey(VerificationKey(secret, ("HS256",))), team_claim="org.teams")
    token = issue_token(SigningKey.from_secret(secret), "fay", extra={"org": {"teams": ["search", "ml"]}})
    assert (await verifier.verify(token)).team == "search"
    plain = Verifier(StaticKey(VerificationKey(secret, ("HS256",))))
    assert (await plain.verify(issue_token(SigningKey.from_secret(secret), "fay"))).team is None


def test_challenge_header_is_a_valid_rfc6750_quoted_string() -> None:
    header = www_authenticate(AuthError("malformed", 'bad "quote" and \\ backslash and é'))
    assert header == 'Bearer error="invalid_token", error_description="bad quote and  backslash and "'
    with pytest.raises(ValueError):
        AuthError("not-a-reason", "x")
    assert len(REASONS) == len(set(REASONS)) == 14
