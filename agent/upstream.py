"""The upstream prober: what the LLM server behind the sidecar is, and whether it answers.

A background task asks the server every `probe_interval` seconds, off the request path, and
keeps the answer (`UpstreamProber.status`) for `/ops/health`, `/ops/services` and `/readyz`.
Each server kind is told by an endpoint only it has, tried in this order:

- Ollama: `GET /api/version` (`{"version": "0.6.8"}`), then `/api/tags` (models on disk) and
  `/api/ps` (models loaded in memory);
- vLLM: `GET /version` (`{"version": "0.9.1"}`), then `/v1/models`;
- llama.cpp's server: `GET /props` (`build_info`, `default_generation_settings`), then `/v1/models`;
- any other OpenAI-compatible server: `GET /v1/models`.

Once a kind is known, the next probes ask only its endpoints, and detect again when they fail.
The configured `upstream_api_key` is sent as the bearer token; client tokens never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import aiohttp
import orjson

from agent import metrics
from agent.auth.errors import why
from agent.records import Dialect

log = logging.getLogger("sidemeter.upstream")

OLLAMA: Final = "ollama"
VLLM: Final = "vllm"
LLAMACPP: Final = "llamacpp"
OPENAI_COMPATIBLE: Final = "openai_compatible"
UNKNOWN: Final = "unknown"
KINDS: Final = (OLLAMA, VLLM, LLAMACPP, OPENAI_COMPATIBLE, UNKNOWN)
USER_AGENT: Final = "sidemeter-prober"  # tells the probes apart in the server's logs
_MAX_BODY: Final = 4 * 1024 * 1024  # a model list of thousands of entries fits; nothing larger is read


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """What the last probe found. `reachable` is None before the first probe; `last_checked`
    is a Unix time; `latency_ms` is the probe's first request, the server's plain answer time."""

    url: str
    reachable: bool | None = None
    kind: str = UNKNOWN
    version: str | None = None
    models: tuple[str, ...] = ()
    loaded_models: tuple[str, ...] | None = None
    latency_ms: float | None = None
    last_error: str | None = None
    last_checked: float | None = None

    @property
    def dialect(self) -> str | None:
        if self.kind == OLLAMA:
            return str(Dialect.OLLAMA)
        if self.kind == UNKNOWN:
            return None
        return str(Dialect.OPENAI)


class ProbeFailed(Exception):
    """One probe request got no usable answer; `reached` says whether the server answered at all."""

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


@dataclass(slots=True)
class _Found:
    kind: str
    version: str | None = None
    models: list[str] = field(default_factory=list)
    loaded: list[str] | None = None
    errors: list[str] = field(default_factory=list)


class UpstreamProber:
    """Probes one upstream URL on a timer and keeps the last answer."""

    def __init__(
        self,
        url: str,
        *,
        interval: float = 10.0,
        timeout: float = 2.0,
        api_key: str | None = None,
        on_probe: Callable[[bool, float, str | None], None] = metrics.record_upstream_probe,
    ) -> None:
        self.url = url.rstrip("/")
        self.interval = interval
        self.timeout = timeout
        self.api_key = api_key
        self.on_probe = on_probe
        self.status = UpstreamStatus(self.url)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Probe once (so the first health answer is real), then keep probing in the background."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # A fresh connection per probe: a reachable answer means the server accepts connections now.
            connector=aiohttp.TCPConnector(force_close=True),
        )
        self._stop.clear()
        await self.probe()
        self._task = asyncio.create_task(self._run(), name="upstream-prober")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            if self._stop.is_set():
                return
            try:
                await self.probe()
            except Exception:  # a bug here must not end the probing
                log.exception("probing the upstream %s failed", self.url)

    async def probe(self) -> UpstreamStatus:
        """Probe now; the new status is kept and returned."""
        started = time.perf_counter()
        first: list[float] = []
        try:
            found = await self._identify(first)
        except ProbeFailed as e:
            seconds = time.perf_counter() - started
            status = replace(  # kind, version and models: the last known, while it is down
                self.status,
                reachable=e.reached,
                latency_ms=round(first[0] * 1000, 3) if first and e.reached else None,
                last_error=str(e),
                last_checked=time.time(),
            )
            self._update(status, seconds, None)
            return status
        seconds = time.perf_counter() - started
        status = UpstreamStatus(
            self.url,
            reachable=True,
            kind=found.kind,
            version=found.version,
            models=tuple(found.models),
            loaded_models=tuple(found.loaded) if found.loaded is not None else None,
            latency_ms=round(first[0] * 1000, 3) if first else None,
            last_error="; ".join(found.errors) or None,
            last_checked=time.time(),
        )
        self._update(status, seconds, found.kind if found.kind != UNKNOWN else None)
        return status

    def _update(self, status: UpstreamStatus, seconds: float, kind: str | None) -> None:
        was = self.status.reachable
        self.status = status
        self.on_probe(bool(status.reachable), seconds, kind)
        if status.reachable is not was:
            if status.reachable:
                log.info("upstream %s is reachable (%s %s)", self.url, status.kind, status.version or "")
            else:
                log.warning("upstream %s is unreachable: %s", self.url, status.last_error)

    # -- one probe -----------------------------------------------------------------------

    async def _identify(self, first: list[float]) -> _Found:
        """Ask the known kind first, then every kind in turn; ProbeFailed when nothing answered."""
        order = [_ollama, _vllm, _llamacpp, _openai]
        known = {OLLAMA: _ollama, VLLM: _vllm, LLAMACPP: _llamacpp, OPENAI_COMPATIBLE: _openai}.get(
            self.status.kind
        )
        if known is not None:
            order.remove(known)
            order.insert(0, known)
        answered: str | None = None
        for detect in order:
            try:
                found = await detect(self, first)
            except ProbeFailed as e:
                if not e.reached:
                    raise  # the server is down: the other kinds cannot answer either
                answered = answered or str(e)
                continue
            if found is not None:
                return found
        # The server answers HTTP but none of the known endpoints: reachable, kind unknown.
        tried = "/api/version, /version, /props, /v1/models"
        return _Found(UNKNOWN, errors=[f"no known LLM server API answered ({tried}): {answered}"])

    async def get(self, path: str, first: list[float]) -> tuple[int, Any]:
        """GET `path`: (status, parsed JSON or None). ProbeFailed(reached=False) when no HTTP
        answer came (refused, reset, timed out)."""
        assert self._session is not None, "start() the prober first"
        t0 = time.perf_counter()
        try:
            async with self._session.get(self.url + path, allow_redirects=False) as res:
                body = await res.content.read(_MAX_BODY + 1)
                if not first:
                    first.append(time.perf_counter() - t0)
                status = res.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
                raise ProbeFailed(f"GET {path}: no answer within {self.timeout:g}s", reached=False) from None
            raise ProbeFailed(f"GET {path}: {why(e)}", reached=False) from None
        if status != 200 or len(body) > _MAX_BODY:
            return status, None
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, None


# -- the kinds: each returns what it found, None when the server is not of that kind --------


async def _ollama(prober: UpstreamProber, first: list[float]) -> _Found | None:
    status, body = await prober.get("/api/version", first)
    version = body.get("version") if isinstance(body, dict) else None
    if status != 200 or not isinstance(version, str):
        return None
    found = _Found(OLLAMA, version)
    found.models = await _names(prober, "/api/tags", "models", "name", found, first) or []
    found.loaded = await _names(prober, "/api/ps", "models", "name", found, first)
    return found


async def _vllm(prober: UpstreamProber, first: list[float]) -> _Found | None:
    status, body = await prober.get("/version", first)
    version = body.get("version") if isinstance(body, dict) else None
    if status != 200 or not isinstance(version, str):
        return None
    found = _Found(VLLM, version)
    found.models = await _names(prober, "/v1/models", "data", "id", found, first) or []
    return found


async def _llamacpp(prober: UpstreamProber, first: list[float]) -> _Found | None:
    status, body = await prober.get("/props", first)
    if status != 200 or not isinstance(body, dict):
        return None
    if "default_generation_settings" not in body and "build_info" not in body:
        return None
    build = body.get("build_info")
    found = _Found(LLAMACPP, build if isinstance(build, str) and build else None)
    found.models = await _names(prober, "/v1/models", "data", "id", found, first) or []
    return found


async def _openai(prober: UpstreamProber, first: list[float]) -> _Found | None:
    found = _Found(OPENAI_COMPATIBLE)
    models = await _names(prober, "/v1/models", "data", "id", found, first)
    if models is None:
        if found.errors:
            raise ProbeFailed(found.errors[0], reached=True)
        return None
    found.models = models
    return found


async def _names(
    prober: UpstreamProber, path: str, key: str, name: str, found: _Found, first: list[float]
) -> list[str] | None:
    """The `name` of each entry of the list under `key`; None (and a note in `found.errors`)
    when the server does not answer that list."""
    status, body = await prober.get(path, first)
    entries = body.get(key) if isinstance(body, dict) else None
    if status != 200 or not isinstance(entries, list):
        found.errors.append(
            f"GET {path}: HTTP {status}" if status != 200 else f"GET {path}: not a model list"
        )
        return None
    return [e[name] for e in entries if isinstance(e, dict) and isinstance(e.get(name), str)]
