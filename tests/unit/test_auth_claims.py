"""The time claims of a correctly signed token: NumericDates only, in force, and no longer-lived
than `jwt_max_lifetime` allows; the verified-token cache keeps every one of these checks."""

from __future__ import annotations

import json
import secrets
from typing import Any

import jwt
import pytest

from agent.auth.errors import AuthError
from agent.auth.settings import AuthSettings
from agent.auth.verify import Verifier
from agent.config import Config
from agent.settings import ConfigError

SECRET = secrets.token_hex(32)
NOW = 1_900_000_000.0  # a fixed "now" (2030) for the verifier's clock and the tokens


def verifier(**kw: Any) -> Verifier:
    v = Verifier.from_settings(AuthSettings.from_config(Config(auth="jwt", jwt_secret=SECRET, **kw)))
    v.clock = lambda: NOW
    return v


def signed(**claims: Any) -> str:
    """An HS256 token with the right key; `None` leaves a claim out."""
    body = {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, algorithm="HS256")


def signed_raw(payload: str) -> str:
    """A token whose payload JSON is written by hand (NaN, Infinity: what json.dumps allows)."""
    return jwt.api_jws.encode(payload.encode(), SECRET, algorithm="HS256")


async def reason_of(v: Verifier, token: str) -> str:
    with pytest.raises(AuthError) as err:
        await v.verify(token)
    assert "eyJ" not in err.value.description  # never the token
    return err.value.reason


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [
        "1900000300",  # a numeric string: pyjwt alone takes it
        str(int(NOW) - 10),
        True,  # int(True) == 1
        1e300,  # "never expires"
        2**70,
        -1,
        253402300800,  # 10000-01-01
        [1900000300],
        {"t": 1900000300},
    ],
)
async def test_time_claims_must_be_json_numbers_in_range(claim: str, value: Any) -> None:
    assert await reason_of(verifier(), signed(**{claim: value})) == "bad_time_claim"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_time_claims_refuse_nan_and_infinity(literal: str) -> None:
    payload = json.dumps({"sub": "alice", "iat": int(NOW)})[:-1] + f', "exp": {literal}}}'
    assert await reason_of(verifier(), signed_raw(payload)) == "bad_time_claim"


async def test_numeric_dates_may_be_fractional_and_nbf_is_optional() -> None:
    v = verifier()
    assert (await v.verify(signed(exp=NOW + 600.5, iat=NOW - 0.25, nbf=NOW - 1.5))).user == "alice"
    assert (await v.verify(signed(iat=None, nbf=None))).user == "alice"


async def test_expiry_and_not_before_are_checked_on_the_verifiers_clock() -> None:
    v = verifier(jwt_leeway=30)
    assert await reason_of(v, signed(exp=int(NOW) - 31)) == "expired"
    assert (await v.verify(signed(exp=int(NOW) - 29))).user == "alice"  # within leeway
    assert await reason_of(v, signed(nbf=int(NOW) + 31)) == "not_yet_valid"
    assert await reason_of(v, signed(iat=int(NOW) + 31, exp=int(NOW) + 900)) == "not_yet_valid"


async def test_a_forged_token_is_refused_as_forged_before_any_claim_is_read() -> None:
    other = jwt.encode({"sub": "alice", "exp": "soon"}, "x" * 64, algorithm="HS256")
    assert await reason_of(verifier(), other) == "bad_signature"


async def test_max_lifetime_is_exp_minus_iat() -> None:
    v = verifier(jwt_max_lifetime="1h")
    assert (await v.verify(signed(iat=int(NOW) - 1800, exp=int(NOW) + 1800))).user == "alice"
    with pytest.raises(AuthError) as err:
        await v.verify(signed(iat=int(NOW), exp=int(NOW) + 3601))
    assert err.value.reason == "lifetime_too_long"
    assert "1h1s" in err.value.description and "at most 1h (jwt_max_lifetime)" in err.value.description
    # Issued long ago, "valid" for years, expiring soon: still too long-lived.
    assert await reason_of(v, signed(iat=int(NOW) - 86400 * 365, exp=int(NOW) + 60)) == "lifetime_too_long"


async def test_max_lifetime_without_iat_is_exp_minus_now() -> None:
    v = verifier(jwt_max_lifetime="1h", jwt_leeway=30)
    assert (await v.verify(signed(iat=None, exp=int(NOW) + 3600 + 30))).user == "alice"
    assert await reason_of(v, signed(iat=None, exp=int(NOW) + 3600 + 31)) == "lifetime_too_long"
    assert (
        await reason_of(verifier(jwt_max_lifetime="24h"), signed(iat=None, exp=2e11)) == "lifetime_too_long"
    )


async def test_without_max_lifetime_long_lived_tokens_with_valid_dates_pass() -> None:
    assert (await verifier().verify(signed(exp=253402300799))).user == "alice"  # 9999-12-31


async def test_the_cache_keeps_every_claim_check() -> None:
    """A refused token is never cached, and a cached one is answered only while the checks it
    passed still hold: the lifetime rule without iat only gets easier as time goes by."""
    v = verifier(jwt_max_lifetime="1h", jwt_leeway=0)
    too_long = signed(iat=None, exp=int(NOW) + 7200)
    for _ in range(2):
        assert await reason_of(v, too_long) == "lifetime_too_long"
    ok = signed(iat=None, exp=int(NOW) + 3000)
    await v.verify(ok)
    v.clock = lambda: NOW + 2999  # the cache answers; the full check would pass too
    assert (await v.verify(ok)).user == "alice"
    v.clock = lambda: NOW + 3000  # at exp: no answer from the cache, refused as expired
    assert await reason_of(v, ok) == "expired"
    stringly = signed(exp=str(int(NOW) + 600))
    for _ in range(2):
        assert await reason_of(v, stringly) == "bad_time_claim"


@pytest.mark.parametrize("value", ["0s", "forever", "24", "-1h"])
def test_max_lifetime_setting_must_be_a_duration(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config(auth="jwt", jwt_secret=SECRET, jwt_max_lifetime=value).validate()
    assert "jwt_max_lifetime" in str(err.value)


def test_max_lifetime_setting_is_a_duration_in_seconds() -> None:
    assert verifier(jwt_max_lifetime="1h30m").max_lifetime == 5400
    assert verifier().max_lifetime is None
