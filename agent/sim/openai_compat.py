"""The OpenAI-compatible API every simulated server offers under ``/v1``.

One handler per route reads and checks the request the same way for every server; what the
servers answer differs in field order, extra fields, ids, usage and stream framing, so each
server's subclass (`agent/sim/vllm.py`, `agent/sim/llamacpp.py`, `agent/sim/ollama_openai.py`)
builds those bodies. The Responses API is answered alike everywhere (`agent/sim/responses_api.py`).
"""

from __future__ import annotations

import base64
import struct
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from aiohttp import web

from agent.sim import responses_api
from agent.sim.api import Api
from agent.sim.errors import SimError, positive_int, text_of
from agent.sim.pacing import Clock
from agent.sim.runner import Plan, StreamShape
from agent.sim.tokens import embed_vector, render_chat, render_prompt

__all__ = ["OpenAICompatible", "Reply", "UsageFlags", "chat_turns"]


class UsageFlags(NamedTuple):
    """How a streamed answer reports usage, as the server reads ``stream_options``."""

    include_usage: bool
    continuous: bool  # vLLM's continuous_usage_stats: running counts on every chunk


@dataclass(frozen=True, slots=True)
class Reply:
    """What every chunk of one answer repeats: its id, creation time and model."""

    id: str
    created: int
    model: str

    def header(self, kind: str) -> dict[str, Any]:
        """The fields that open an OpenAI object of type `kind`, in OpenAI's order."""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def chat_turns(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of OpenAI chat messages."""
    return [(str(m.get("role") or "user"), text_of(m.get("content"))) for m in messages]


def _completion_prompt(body: dict[str, Any]) -> tuple[list[int], str]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return render_prompt(prompt), prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt), " ".join(map(str, prompt))  # token ids are used as given
    raise SimError(400, "prompt: a string, or one list of token ids, is required", param="prompt")


def _embedding_items(body: dict[str, Any]) -> list[Any]:
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        return [raw_input]
    if isinstance(raw_input, list) and raw_input and all(isinstance(t, int) for t in raw_input):
        return [raw_input]  # one prompt given as token ids
    if isinstance(raw_input, list) and raw_input:
        return list(raw_input)
    raise SimError(400, "input: a string or a non-empty list is required", param="input")


class OpenAICompatible(Api):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses``,
    ``/v1/models``, answered in the shapes of the server a subclass simulates."""

    caches_prompts: ClassVar[bool] = True  # reports prefix-cache hits as cached tokens

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self.chat)
        router.add_post("/v1/completions", self.completions)
        router.add_post("/v1/embeddings", self.embeddings)
        router.add_post("/v1/responses", self.responses)
        router.add_get("/v1/models", self.list_models)

    # ----------------------------------------------------------------- request reading

    def resolve_model(self, name: Any) -> str:
        """The model name to echo back; raises the server's not-found error."""
        if name is None:
            return self.runner.models[0]  # vLLM and llama.cpp fall back to the served model
        if isinstance(name, str) and name in self.runner.models:
            return name
        raise self.model_not_found(name)

    @abstractmethod
    def model_not_found(self, name: Any) -> SimError:
        """The error for a model this server does not serve."""

    def limit(self, body: dict[str, Any], *names: str) -> int | None:
        """The request's token limit: the first of `names` that is set."""
        for name in names:
            if body.get(name) is not None:
                return positive_int(body[name], name)
        return None

    def usage_flags(self, body: dict[str, Any], stream: bool) -> UsageFlags:
        options = body.get("stream_options")
        if options is None:
            return UsageFlags(False, False)
        if not isinstance(options, dict):
            raise SimError(400, "stream_options must be an object", param="stream_options")
        return self.read_stream_options(options, stream)

    def read_stream_options(self, options: dict[str, Any], stream: bool) -> UsageFlags:
        return UsageFlags(stream and options.get("include_usage") is True, False)

    def check_messages(self, messages: list[dict[str, Any]]) -> None:
        """Server-specific checks on a chat request's messages."""

    # ----------------------------------------------------------------- what a server answers

    @abstractmethod
    def completion_id(self, prefix: str) -> str:
        """A fresh answer id (``chatcmpl-...``, ``cmpl-...``) as this server makes them."""

    @abstractmethod
    def model_card(self, model: str) -> dict[str, Any]:
        """One entry of ``/v1/models``."""

    @abstractmethod
    def usage(self, plan: Plan) -> dict[str, Any]:
        """The ``usage`` object of a finished generation."""

    @abstractmethod
    def chat_completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]: ...

    @abstractmethod
    def chat_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape: ...

    @abstractmethod
    def completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]: ...

    @abstractmethod
    def completion_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape: ...

    @abstractmethod
    def embeddings_answer(self, model: str, data: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
        """`data`: the ``{"index", "object", "embedding"}`` rows, in order."""

    # ----------------------------------------------------------------- handlers

    async def chat(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self.resolve_model(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SimError(400, "messages: Field required (a list of message objects)", param="messages")
        self.check_messages(messages)
        stream = body.get("stream") is True
        flags = self.usage_flags(body, stream)
        limit = self.limit(body, "max_completion_tokens", "max_tokens")
        turns = chat_turns(messages)
        seed = "\n".join(c for _, c in turns)
        plan = self.runner.plan(request, model, render_chat(turns), seed, limit, cache=self.caches_prompts)
        reply = Reply(self.completion_id("chatcmpl"), int(time.time()), model)
        return await self.answer(
            request,
            plan,
            clock,
            stream=stream,
            whole=lambda: self.chat_completion(plan, clock, reply),
            shape=lambda: self.chat_stream(plan, clock, reply, flags),
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self.resolve_model(body.get("model"))
        prompt_ids, seed = _completion_prompt(body)
        stream = body.get("stream") is True
        flags = self.usage_flags(body, stream)
        limit = self.limit(body, "max_tokens")
        plan = self.runner.plan(request, model, prompt_ids, seed, limit, cache=self.caches_prompts)
        reply = Reply(self.completion_id("cmpl"), int(time.time()), model)
        return await self.answer(
            request,
            plan,
            clock,
            stream=stream,
            whole=lambda: self.completion(plan, clock, reply),
            shape=lambda: self.completion_stream(plan, clock, reply, flags),
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        model = self.resolve_model(body.get("model"))
        items = _embedding_items(body)
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise SimError(
                400,
                f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
            )
        prompt_tokens = 0
        data = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                prompt_tokens += len(render_prompt(item))
                vector = embed_vector(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                prompt_tokens += len(item)
                vector = embed_vector(" ".join(map(str, item)))
            else:
                raise SimError(400, "input items must be strings or lists of token ids", param="input")
            value: Any = vector
            if fmt == "base64":  # little-endian float32, which the openai client asks for by default
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"index": index, "object": "embedding", "embedding": value})
        await self.runner.process_prompt(model)
        self.runner.account(model, prompt_tokens)
        return await self.send_json(request, self.embeddings_answer(model, data, prompt_tokens))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self.resolve_model(body.get("model"))
        turns = responses_api.turns(body)
        limit = self.limit(body, "max_output_tokens")
        seed = "\n".join(c for _, c in turns)
        plan = self.runner.plan(request, model, render_chat(turns), seed, limit, cache=self.caches_prompts)
        answer = responses_api.ResponseAnswer(body, plan)
        stream = body.get("stream") is True
        return await self.answer(request, plan, clock, stream=stream, whole=answer.whole, shape=answer.stream)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        cards = [self.model_card(m) for m in self.runner.models]
        return await self.send_json(request, {"object": "list", "data": cards})
