"""Where the verification key comes from at run time: one static key, or a JWKS (URL or file).

JWKS are fetched with aiohttp on the caller's event loop (pyjwt's PyJWKClient blocks on
urllib), cached, refreshed every `jwks_refresh` seconds, and refetched early when a token
names an unknown `kid` — at most once per `JWKS_MIN_REFETCH` seconds, so made-up kids
cannot hammer the identity provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from agent.auth.errors import AuthError, KeyConfigError, why
from agent.auth.keys import VerificationKey, parse_jwks, read_key_file, safe_url

log = logging.getLogger("sidemeter.auth")

JWKS_MIN_REFETCH: Final = 10.0  # seconds between refetches caused by unknown kids (and retries)
JWKS_TIMEOUT: Final = 5.0
JWKS_MAX_BYTES: Final = 1024 * 1024


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
        self.source = safe_url(url) if url else f"file {path}"
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
        data = read_key_file(self.path, "jwks_file")
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
                log.warning("JWKS from %s could not be loaded (%s); %s", self.source, why(e), cached)
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
