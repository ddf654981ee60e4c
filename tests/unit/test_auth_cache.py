"""The verified-token cache: it saves the signature check on repeat requests, never more."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
import pytest

from agent.auth.errors import AuthError
from agent.auth.issue import SigningKey, issue_token
from agent.auth.settings import AuthSettings
from agent.auth.verify import CACHE_SECONDS, Verifier
from agent.config import Config

SECRET = secrets.token_hex(32)


def verifier(**kw: Any) -> Verifier:
    return Verifier.from_settings(AuthSettings.from_config(Config(auth="jwt", jwt_secret=SECRET, **kw)))


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full verification pyjwt does (the real one runs; we only count it)."""
    calls: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


async def test_repeat_requests_skip_the_signature_check(decode_calls: list[str]) -> None:
    v = verifier()
    token = issue_token(SigningKey.from_secret(SECRET), "alice", team="ml", ttl=600)
    first = await v.verify(token)
    again = await v.verify(token)
    assert (again.user, again.team) == (first.user, first.team) == ("alice", "ml")
    assert decode_calls == [token]


async def test_a_cached_token_is_checked_again_after_its_expiry(decode_calls: list[str]) -> None:
    v = verifier(jwt_leeway=5)
    now = time.time()
    token = issue_token(SigningKey.from_secret(SECRET), "alice", ttl=10, now=now)
    await v.verify(token)
    v.clock = lambda: now + 14  # before exp + leeway: answered from the cache
    await v.verify(token)
    assert len(decode_calls) == 1
    v.clock = lambda: now + 16  # past exp + leeway: the cache must not answer for it
    with pytest.raises(AuthError) as err:
        await v.verify(token)
    assert err.value.reason == "expired"
    assert len(decode_calls) == 2


async def test_a_cached_token_is_checked_again_after_the_cache_limit(decode_calls: list[str]) -> None:
    v = verifier()
    now = time.time()
    v.clock = lambda: now
    token = issue_token(SigningKey.from_secret(SECRET), "bob", ttl=3600, now=now)
    await v.verify(token)
    v.clock = lambda: now + CACHE_SECONDS + 1  # long before exp: a rotated-out key must stop working
    await v.verify(token)
    assert len(decode_calls) == 2


async def test_cache_serves_only_the_exact_token(decode_calls: list[str]) -> None:
    v = verifier()
    token = issue_token(SigningKey.from_secret(SECRET), "alice", ttl=600)
    await v.verify(token)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}"
    with pytest.raises(AuthError) as err:
        await v.verify(tampered)
    assert err.value.reason == "bad_signature"


async def test_cached_identity_still_checks_x_user_id() -> None:
    v = verifier(require_user_match=True)
    token = issue_token(SigningKey.from_secret(SECRET), "alice", ttl=600)
    assert (await v.verify(token, claimed_user="alice")).user == "alice"
    with pytest.raises(AuthError) as err:
        await v.verify(token, claimed_user="mallory")
    assert err.value.reason == "user_mismatch"
