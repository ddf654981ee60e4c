"""A simulated llama.cpp server (``tools/server``, ``server-task.cpp``).

``/v1/completions`` streams put ``usage`` and ``timings`` on the finish chunk itself whether or
not usage was asked for; chat streams start with a role chunk (``"content": null``), end with an
empty-delta finish chunk (plus a usage chunk if asked) and carry ``timings`` on the last chunk.
JSON objects keep nlohmann's ordered_json order (``choices`` first). Prefix-cache hits show as
``timings.cache_n``. Beside ``/v1``: the native ``/completion`` (``tokens_predicted``,
``tokens_evaluated``, no ``[DONE]``), ``/tokenize``, ``/props``, ``/health``, ``/metrics``.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar, Final

from aiohttp import web

from agent.sim.errors import SimError
from agent.sim.openai_compat import OpenAICompatible, Reply, UsageFlags
from agent.sim.pacing import Clock
from agent.sim.runner import Plan, StreamShape
from agent.sim.tokens import EMBEDDING_DIM, MAX_MODEL_LEN, VOCAB_SIZE, render_prompt
from agent.sim.wire import JSON_UTF8, SSE_DONE, dumps, sse

__all__ = ["LLAMACPP_BUILD", "LlamaCpp"]

LLAMACPP_BUILD: Final = "b5600-sim"
_JINJA_TEMPLATE: Final = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def timings(plan: Plan, clock: Clock) -> dict[str, Any]:
    """llama.cpp's ``timings`` object, from the clock's marks."""
    prompt_n = plan.prompt_tokens - plan.cached_tokens
    prompt_ms = max(clock.first - clock.prefill, 1_000) / 1e6
    predicted_n = plan.completion_tokens
    predicted_ms = max(clock.end - clock.first, 1_000) / 1e6
    return {
        "cache_n": plan.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / max(prompt_n, 1),
        "prompt_per_second": 1e3 / prompt_ms * prompt_n,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / max(predicted_n, 1),
        "predicted_per_second": 1e3 / predicted_ms * predicted_n,
    }


def _n_predict(body: dict[str, Any]) -> int | None:
    value = body.get("n_predict")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None  # -1 and 0 mean "until the end of the context" in llama.cpp


class LlamaCpp(OpenAICompatible):
    """llama.cpp's server: its ``/v1`` quirks and its native routes."""

    accepts_nan: ClassVar[bool] = False  # nlohmann::json: 400 "invalid literal"

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/tokenize", self.tokenize)
        router.add_get("/health", self.health)
        router.add_get("/metrics", self.metrics)
        router.add_post("/completion", self.native_completion)
        router.add_get("/props", self.props)
        super().add_routes(router)

    def error_payload(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        etype = _ERROR_TYPES.get(status, "server_error")  # format_error_response
        return {"error": {"code": status, "message": message, "type": etype}}

    async def route_not_found(self, request: web.Request, status: int) -> web.StreamResponse:
        payload = dumps(self.error_payload(404, "File Not Found", None))
        return await self.send_body(request, payload, JSON_UTF8, status=404)

    def model_not_found(self, name: Any) -> SimError:
        return SimError(404, f"model '{name}' not found")

    def completion_id(self, prefix: str) -> str:
        return f"{prefix}-" + secrets.token_hex(16)

    def model_card(self, model: str) -> dict[str, Any]:
        meta = {"vocab_type": 2, "n_vocab": VOCAB_SIZE, "n_ctx_train": MAX_MODEL_LEN, "n_embd": EMBEDDING_DIM}
        created = int(self.runner.started_at)
        return {"id": model, "object": "model", "created": created, "owned_by": "llamacpp", "meta": meta}

    def usage(self, plan: Plan) -> dict[str, Any]:
        return {
            "completion_tokens": plan.completion_tokens,
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }

    # ----------------------------------------------------------------- chat

    @staticmethod
    def _chat_base(reply: Reply, kind: str) -> dict[str, Any]:
        return {
            "created": reply.created,
            "id": reply.id,
            "model": reply.model,
            "system_fingerprint": LLAMACPP_BUILD,
            "object": kind,
        }

    def chat_completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]:
        message = {"role": "assistant", "content": plan.text}
        choice = {"finish_reason": plan.finish_reason, "index": 0, "message": message}
        return {
            "choices": [choice],
            **self._chat_base(reply, "chat.completion"),
            "usage": self.usage(plan),
            "timings": timings(plan, clock),
        }

    def chat_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        base = self._chat_base(reply, "chat.completion.chunk")

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
            return {"choices": [choice] if choice else [], **base, **extra}

        head = [
            sse(chunk({"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}))
        ]

        def frame(_: int, piece: str) -> bytes:
            return sse(chunk({"finish_reason": None, "index": 0, "delta": {"content": piece}}))

        def tail() -> list[bytes]:
            final = [chunk({"finish_reason": plan.finish_reason, "index": 0, "delta": {}})]
            if flags.include_usage:
                final.append(chunk(None, usage=self.usage(plan)))
            final[-1]["timings"] = timings(plan, clock)  # on the last chunk, as llama.cpp does
            return [*(sse(c) for c in final), SSE_DONE]

        return StreamShape(head, frame, tail)

    # ----------------------------------------------------------------- completions

    def completion(self, plan: Plan, clock: Clock, reply: Reply, text: str | None = None) -> dict[str, Any]:
        choice = {
            "text": plan.text if text is None else text,
            "index": 0,
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
        return {
            "choices": [choice],
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": LLAMACPP_BUILD,
            "object": "text_completion",
            "usage": self.usage(plan),
            "id": reply.id,
            "timings": timings(plan, clock),
        }

    def completion_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        def frame(_: int, piece: str) -> bytes:
            choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
            return sse({
                "choices": [choice], "created": reply.created, "model": reply.model,
                "system_fingerprint": LLAMACPP_BUILD, "object": "text_completion", "id": reply.id,
            })  # fmt: skip

        def tail() -> list[bytes]:  # usage and timings ride on the finish chunk, asked for or not
            return [sse(self.completion(plan, clock, reply, text="")), SSE_DONE]

        return StreamShape((), frame, tail)

    def embeddings_answer(self, model: str, data: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
        rows = [{"embedding": d["embedding"], "index": d["index"], "object": "embedding"} for d in data]
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return {"model": model, "object": "list", "usage": usage, "data": rows}

    # ----------------------------------------------------------------- native routes

    async def health(self, request: web.Request) -> web.StreamResponse:
        return await self.send_json(request, {"status": "ok"})

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise SimError(400, '"content" must be provided')
        tokens = render_prompt(content, add_special=body.get("add_special") is True)
        return await self.send_json(request, {"tokens": tokens})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        generated = sum(self.runner.generated_totals.values())
        lines: list[str] = []
        for name, kind, value in (
            ("prompt_tokens_total", "counter", sum(self.runner.prompt_totals.values())),
            ("tokens_predicted_total", "counter", generated),
            ("n_decode_total", "counter", generated),
            ("requests_processing", "gauge", 0),
            ("requests_deferred", "gauge", 0),
        ):
            lines += [f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {value}"]
        body = ("\n".join(lines) + "\n").encode()
        return await self.send_body(request, body, "text/plain; version=0.0.4; charset=utf-8")

    async def props(self, request: web.Request) -> web.StreamResponse:
        model = self.runner.models[0]
        props = {
            "default_generation_settings": {"id": 0, "n_ctx": MAX_MODEL_LEN, "params": {"n_predict": -1}},
            "total_slots": 1,
            "model_path": f"/models/{model}.gguf",
            "chat_template": _JINJA_TEMPLATE,
            "modalities": {"vision": False, "audio": False},
            "build_info": LLAMACPP_BUILD,
        }
        return await self.send_json(request, props)

    async def native_completion(self, request: web.Request) -> web.StreamResponse:
        """llama.cpp's native /completion: `tokens_predicted` / `tokens_evaluated`, no [DONE]."""
        clock = Clock()
        body = await self.json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise SimError(400, '"prompt" must be a string')
        model = self.resolve_model(body.get("model"))
        limit = _n_predict(body)
        stream = body.get("stream") is True
        plan = self.runner.plan(request, model, render_prompt(prompt), prompt, limit, cache=True)

        def final(content: str) -> dict[str, Any]:
            return {
                "index": 0,
                "content": content,
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": model,
                "tokens_predicted": plan.completion_tokens,
                "tokens_evaluated": plan.prompt_tokens,
                "generation_settings": {"n_predict": limit or -1, "stream": stream},
                "prompt": prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": "limit" if plan.finish_reason == "length" else "eos",
                "stopping_word": "",
                "tokens_cached": plan.prompt_tokens + plan.completion_tokens,
                "timings": timings(plan, clock),
            }

        def frame(i: int, piece: str) -> bytes:
            return sse({
                "index": 0, "content": piece, "tokens": [], "stop": False, "id_slot": -1,
                "tokens_predicted": i + 1, "tokens_evaluated": plan.prompt_tokens,
            })  # fmt: skip

        return await self.answer(
            request,
            plan,
            clock,
            stream=stream,
            whole=lambda: final(plan.text),
            shape=lambda: StreamShape((), frame, lambda: [sse(final(""))]),
            content_type="text/event-stream",  # without the charset of its /v1 streams
        )
