"""`SimulatedLLM`: one simulated server on a port, and `serve` for `sidemeter mock-upstream`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web

from agent.records import Dialect
from agent.sim.api import Api, Server
from agent.sim.errors import SimError
from agent.sim.faults import decide_fault
from agent.sim.llamacpp import LlamaCpp
from agent.sim.ollama import OllamaNative, tagged
from agent.sim.ollama_openai import OllamaOpenAI
from agent.sim.pacing import FixedPace, Pace
from agent.sim.runner import ModelRunner
from agent.sim.vllm import Vllm

__all__ = ["DEFAULT_MODELS", "DIALECTS", "FLAVORS", "SERVERS", "SimulatedLLM", "serve"]

DIALECTS: Final = tuple(Dialect)
FLAVORS: Final = ("vllm", "llamacpp")
DEFAULT_MODELS: Final[dict[str, tuple[str, ...]]] = {
    # "sim-model" is served in both dialects, so one name works everywhere in tests and demos.
    Dialect.OLLAMA: ("llama3.2:latest", "sim-model:latest", "nomic-embed-text:latest"),
    Dialect.OPENAI: ("sim-model",),
}
_MAX_BODY: Final = 64 * 1024 * 1024  # real servers take long prompts; aiohttp's default is 1 MiB

_OLLAMA: Final = Server("Ollama", lambda runner: (OllamaOpenAI(runner), OllamaNative(runner)), tagged)
# (dialect, flavor) -> server; the flavor chooses among the OpenAI-dialect servers only.
SERVERS: Final[dict[tuple[str, str], Server]] = {
    (Dialect.OLLAMA, "vllm"): _OLLAMA,
    (Dialect.OLLAMA, "llamacpp"): _OLLAMA,
    (Dialect.OPENAI, "vllm"): Server("vLLM", lambda runner: (Vllm(runner),)),
    (Dialect.OPENAI, "llamacpp"): Server("llama.cpp", lambda runner: (LlamaCpp(runner),)),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimulatedLLM:
    """A simulated Ollama, vLLM or llama.cpp server on a loopback (or any) port.

    `pace` replaces `first_token_delay` and `token_delay` with any `agent.sim.pacing.Pace`.
    """

    def __init__(
        self,
        dialect: str = Dialect.OPENAI,
        *,
        flavor: str = "vllm",
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        default_max_tokens: int = 16,
        models: Sequence[str] | None = None,
        pace: Pace | None = None,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
        if token_delay < 0 or first_token_delay < 0 or default_max_tokens < 0:
            raise ValueError("token_delay, first_token_delay and default_max_tokens must not be negative")
        self.dialect = dialect
        self.flavor = flavor
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.default_max_tokens = default_max_tokens
        self.server = SERVERS[dialect, flavor]
        self.pace: Pace = pace if pace is not None else FixedPace(first_token_delay, token_delay)
        names = [self.server.model_name(n) for n in (models or DEFAULT_MODELS[dialect])]
        self.runner = ModelRunner(names, default_max_tokens=default_max_tokens, pace=self.pace)
        self.models: list[str] = self.runner.models
        self.apis: tuple[Api, ...] = self.server.apis(self.runner)
        self.url = ""
        self._app_runner: web.AppRunner | None = None

    @property
    def label(self) -> str:
        """The server's name: Ollama, vLLM or llama.cpp."""
        return self.server.label

    def app(self) -> web.Application:
        """A fresh aiohttp application serving this simulator's routes."""
        app = web.Application(middlewares=[self._middleware], client_max_size=_MAX_BODY)
        for api in self.apis:
            api.add_routes(app.router)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) and return the base URL."""
        if self._app_runner is not None:
            return self.url
        self.runner.stopping = asyncio.Event()  # bound to the loop that serves
        # handler_cancellation: a client that leaves stops its generation, as on a real server.
        app_runner = web.AppRunner(
            self.app(), handler_cancellation=True, shutdown_timeout=2.0, access_log=None
        )
        await app_runner.setup()
        site = web.TCPSite(app_runner, host, port)
        try:
            await site.start()
        except BaseException:
            await app_runner.cleanup()
            raise
        self._app_runner = app_runner
        bound = app_runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; stalled responses are aborted, running ones get a short grace period."""
        self.runner.stopping.set()
        app_runner, self._app_runner = self._app_runner, None
        if app_runner is not None:
            await app_runner.cleanup()

    def api_for(self, path: str) -> Api:
        """The API that answers `path`, and so words its errors."""
        return next(api for api in self.apis if path.startswith(api.path_prefix))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = self.api_for(request.path)
        try:
            fault = decide_fault(request)
            status = fault.error_status if fault is not None else None
            if status is not None:
                await request.read()
                raise SimError(status, api.fault_message(status))
            return await handler(request)
        except SimError as exc:
            return await api.error_response(request, exc)
        except web.HTTPException as exc:
            if exc.status not in (404, 405):
                raise
            return await api.route_not_found(request, exc.status)


def serve(dialect: str, host: str, port: int, *, flavor: str = "vllm", token_delay: float = 0.0) -> None:
    """Run a simulated server until Ctrl-C or SIGTERM (for `sidemeter mock-upstream`)."""

    async def main() -> None:
        sim = SimulatedLLM(dialect, flavor=flavor, token_delay=token_delay)
        try:
            url = await sim.start(host, port)
        except OSError as exc:  # port in use, address not available: one line, not a traceback
            raise SystemExit(
                f"mock-upstream: cannot listen on {host}:{port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}; "
                "pick another --listen HOST:PORT"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows has no add_signal_handler
                loop.add_signal_handler(sig, stop.set)
        # Announced once a signal stops it cleanly: whoever reads the line may signal at once.
        print(f"simulated {sim.label} server listening on {url}", flush=True)
        try:
            await stop.wait()
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
