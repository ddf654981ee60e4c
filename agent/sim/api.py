"""What every simulated server's HTTP API has in common: routes, request bodies, error answers.

A simulated server is one or more `Api` objects (Ollama: its native ``/api/*`` and its OpenAI
compatibility layer under ``/v1/``) over one shared `ModelRunner`. An `Api` subclass states how
its server words and shapes errors; the differences that are only a wording or a content type
are class attributes, the rest are methods.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from aiohttp import web

from agent.sim.errors import SimError
from agent.sim.pacing import Clock
from agent.sim.runner import ModelRunner, Plan, StreamShape
from agent.sim.wire import JSON, JSON_UTF8, SSE_UTF8, dumps, send_body

__all__ = ["Api", "Server"]

_DEFAULT_FAULT_MESSAGES: Final = {500: "Internal server error", 429: "Too many requests"}


class Api(ABC):
    """One HTTP API of a simulated server, serving the paths under `path_prefix`."""

    path_prefix: ClassVar[str] = ""  # "" serves every path no other API of the server claims
    json_content_type: ClassVar[str] = JSON
    error_content_type: ClassVar[str] = JSON_UTF8
    empty_body_message: ClassVar[str] = "request body is empty"
    json_error_prefix: ClassVar[str] = "JSON decode error"
    fault_messages: ClassVar[Mapping[int, str]] = {}  # what X-Sim-Fault error-500/-429 say
    # NaN, Infinity and -Infinity in a request body: Python servers (vLLM: FastAPI reads bodies
    # with Python's json, pydantic floats allow them) take them; Go's encoding/json (Ollama) and
    # nlohmann::json (llama.cpp) answer 400.
    accepts_nan: ClassVar[bool] = True

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    @abstractmethod
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register this API's handlers."""

    @abstractmethod
    def error_payload(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        """The JSON error body this server sends."""

    @abstractmethod
    async def route_not_found(self, request: web.Request, status: int) -> web.StreamResponse:
        """What this server answers for a path (404) or method (405) it does not serve."""

    def fault_message(self, status: int) -> str:
        return self.fault_messages.get(status, _DEFAULT_FAULT_MESSAGES[status])

    async def error_response(self, request: web.Request, exc: SimError) -> web.StreamResponse:
        payload = dumps(self.error_payload(exc.status, exc.message, exc.param))
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return await self.send_body(
            request, payload, self.error_content_type, status=exc.status, headers=headers
        )

    async def json_body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object; 400 in this server's words when it is missing or not one."""
        raw = await request.read()
        if not raw.strip():
            raise SimError(400, self.empty_body_message)
        try:
            body = json.loads(raw) if self.accepts_nan else json.loads(raw, parse_constant=_refuse_constant)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a refused NaN
            raise SimError(400, f"{self.json_error_prefix}: {exc}") from None
        if not isinstance(body, dict):
            raise SimError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    async def send_body(
        self,
        request: web.Request,
        body: bytes,
        content_type: str,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        return await send_body(
            request, body, content_type, stopping=self.runner.stopping, status=status, headers=headers
        )

    async def send_json(self, request: web.Request, obj: Any) -> web.StreamResponse:
        return await self.send_body(request, dumps(obj), self.json_content_type)

    async def answer(
        self,
        request: web.Request,
        plan: Plan,
        clock: Clock,
        *,
        stream: bool,
        whole: Callable[[], dict[str, Any]],
        shape: Callable[[], StreamShape],
        content_type: str = SSE_UTF8,
    ) -> web.StreamResponse:
        """Run a generation: streamed in `shape()` when `stream`, else sent as one `whole()` object
        once the time it takes has passed."""
        if not stream:
            await self.runner.generate_quietly(plan, clock)
            return await self.send_json(request, whole())
        return await self.runner.stream(request, plan, clock, content_type, shape())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"invalid literal {name}: not a JSON value")


def _same_name(name: str) -> str:
    return name


@dataclass(frozen=True, slots=True)
class Server:
    """A kind of simulated server: its name, its APIs, how it spells a configured model name."""

    label: str  # as `sidemeter mock-upstream` announces it
    apis: Callable[[ModelRunner], tuple[Api, ...]]  # the first whose path_prefix matches serves a path
    model_name: Callable[[str], str] = _same_name
