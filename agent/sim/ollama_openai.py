"""Ollama's OpenAI compatibility layer under ``/v1/`` (``openai/openai.go``, ``middleware/openai.go``).

Every chat chunk repeats ``"role": "assistant"``; the finish comes on a chunk of its own and a
usage chunk (``"choices": []``) follows only when ``stream_options.include_usage`` is true; once
usage is asked for, every ``/v1/completions`` chunk carries an all-zero ``usage``. A token
limit of zero or less means "no limit" (it becomes ``num_predict``). No prefix cache is reported.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from aiohttp import web

from agent.sim import ollama
from agent.sim.errors import SimError
from agent.sim.openai_compat import OpenAICompatible, Reply, UsageFlags
from agent.sim.pacing import Clock
from agent.sim.runner import Plan, StreamShape
from agent.sim.wire import SSE_DONE, sse

__all__ = ["OllamaOpenAI"]

_FINGERPRINT = "fp_ollama"


class OllamaOpenAI(OpenAICompatible):
    """Ollama's ``/v1/*`` routes."""

    path_prefix: ClassVar[str] = "/v1/"
    empty_body_message: ClassVar[str] = "missing request body"
    fault_messages: ClassVar[dict[int, str]] = ollama.OLLAMA_FAULT_MESSAGES
    caches_prompts: ClassVar[bool] = False
    accepts_nan: ClassVar[bool] = False  # Go's encoding/json

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/models/{model:.+}", self.show_model)
        super().add_routes(router)

    def error_payload(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return {"error": {"message": message, "type": etype, "param": None, "code": None}}  # openai.NewError

    async def route_not_found(self, request: web.Request, status: int) -> web.StreamResponse:
        return await self.send_body(request, b"404 page not found", "text/plain", status=404)

    def resolve_model(self, name: Any) -> str:
        ollama.resolve_model(self.runner.models, name)
        return str(name)  # echoed as the request spelled it

    def model_not_found(self, name: Any) -> SimError:
        return ollama.model_not_found(name)

    def limit(self, body: dict[str, Any], *names: str) -> int | None:
        for name in names:
            if body.get(name) is not None:  # becomes num_predict: zero or less means "no limit"
                value = body[name]
                return int(value) if isinstance(value, int | float) and value > 0 else None
        return None

    def check_messages(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            raise SimError(400, "[] is too short - 'messages'")

    def completion_id(self, prefix: str) -> str:
        return f"{prefix}-{secrets.randbelow(999)}"

    def model_card(self, model: str) -> dict[str, Any]:
        owner = model.split("/")[0] if "/" in model else "library"
        return {"id": model, "object": "model", "created": int(self.runner.started_at), "owned_by": owner}

    def usage(self, plan: Plan) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }

    async def show_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        try:
            ollama.resolve_model(self.runner.models, name)
        except SimError as exc:
            raise SimError(404, f"model '{name}' not found") from exc
        return await self.send_json(request, self.model_card(name))

    # ----------------------------------------------------------------- chat

    def chat_completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]:
        message = {"role": "assistant", "content": plan.text}
        choice = {"index": 0, "message": message, "finish_reason": plan.finish_reason}
        return {
            **reply.header("chat.completion"),
            "system_fingerprint": _FINGERPRINT,
            "choices": [choice],
            "usage": self.usage(plan),
        }

    def chat_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        base = reply.header("chat.completion.chunk") | {"system_fingerprint": _FINGERPRINT}

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            return sse({**base, "choices": [choice] if choice else [], **extra})

        def frame(_: int, piece: str) -> bytes:
            return chunk(
                {"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}
            )

        def tail() -> list[bytes]:
            delta = {"role": "assistant", "content": ""}
            out = [chunk({"index": 0, "delta": delta, "finish_reason": plan.finish_reason})]
            if flags.include_usage:
                out.append(chunk(None, usage=self.usage(plan)))
            return [*out, SSE_DONE]

        return StreamShape((), frame, tail)

    # ----------------------------------------------------------------- completions

    @staticmethod
    def _completion_chunk(
        reply: Reply, text: str, finish: str | None, usage: dict[str, Any] | None = None, *, zero_usage: bool
    ) -> dict[str, Any]:
        choices = [] if usage else [{"text": text, "index": 0, "finish_reason": finish}]
        obj: dict[str, Any] = {
            "id": reply.id,
            "object": "text_completion",
            "created": reply.created,
            "choices": choices,
            "model": reply.model,
            "system_fingerprint": _FINGERPRINT,
        }
        if usage is not None:
            obj["usage"] = usage
        elif zero_usage:  # Ollama sets an all-zero usage on every chunk once usage is asked for
            obj["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return obj

    def completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]:
        chunk = self._completion_chunk(reply, plan.text, plan.finish_reason, zero_usage=False)
        return chunk | {"usage": self.usage(plan)}

    def completion_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        zero = flags.include_usage

        def frame(_: int, piece: str) -> bytes:
            return sse(self._completion_chunk(reply, piece, None, zero_usage=zero))

        def tail() -> list[bytes]:
            out = [sse(self._completion_chunk(reply, "", plan.finish_reason, zero_usage=zero))]
            if flags.include_usage:
                out.append(sse(self._completion_chunk(reply, "", None, self.usage(plan), zero_usage=zero)))
            return [*out, SSE_DONE]

        return StreamShape((), frame, tail)

    def embeddings_answer(self, model: str, data: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
        rows = [{"object": "embedding", "embedding": d["embedding"], "index": d["index"]} for d in data]
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return {"object": "list", "data": rows, "model": model, "usage": usage}
