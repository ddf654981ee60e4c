"""A simulated vLLM OpenAI-compatible server (``vllm/entrypoints/openai``).

The first chat chunk is role-only, one chunk per token, the step that hits ``max_tokens``
carries the last token and the finish reason; usage only on an extra ``"choices": []`` chunk
when ``stream_options.include_usage`` is true (``continuous_usage_stats`` adds running counts
to every chunk). Prompt tokens served from the prefix cache are reported as
``prompt_tokens_details.cached_tokens``, as with ``--enable-prompt-tokens-details``. Beside
``/v1``: ``/tokenize``, ``/version``, ``/health``, ``/metrics``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Final

from aiohttp import web

from agent.sim.errors import SimError
from agent.sim.openai_compat import OpenAICompatible, Reply, UsageFlags, chat_turns
from agent.sim.pacing import Clock
from agent.sim.runner import Plan, StreamShape
from agent.sim.tokens import MAX_MODEL_LEN, render_chat, render_prompt
from agent.sim.wire import JSON, SSE_DONE, dumps, sse

__all__ = ["VLLM_VERSION", "Vllm"]

VLLM_VERSION: Final = "0.9.2"
_ERROR_TYPES: Final = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


def _running_usage(plan: Plan, completion: int | None = None) -> dict[str, int]:
    """vLLM's continuous_usage_stats counts: what has been generated so far."""
    done = plan.completion_tokens if completion is None else completion
    return {
        "prompt_tokens": plan.prompt_tokens,
        "total_tokens": plan.prompt_tokens + done,
        "completion_tokens": done,
    }


def _stops_on_last_token(plan: Plan) -> bool:
    """The step that hits max_tokens carries the finish reason: no separate finish chunk then."""
    return bool(plan.completion_tokens) and plan.finish_reason == "length"


class Vllm(OpenAICompatible):
    """vLLM's OpenAI server and its extra routes."""

    error_content_type: ClassVar[str] = JSON

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/tokenize", self.tokenize)
        router.add_get("/health", self.health)
        router.add_get("/metrics", self.metrics)
        router.add_get("/version", self.version)
        super().add_routes(router)

    def error_payload(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        etype = _ERROR_TYPES.get(status, "InternalServerError")  # vLLM's ErrorResponse
        return {"error": {"message": message, "type": etype, "param": param, "code": status}}

    async def route_not_found(self, request: web.Request, status: int) -> web.StreamResponse:
        detail = "Not Found" if status == 404 else "Method Not Allowed"  # FastAPI's own answer
        return await self.send_body(request, dumps({"detail": detail}), JSON, status=status)

    def model_not_found(self, name: Any) -> SimError:
        return SimError(404, f"The model `{name}` does not exist.", param="model")

    def read_stream_options(self, options: dict[str, Any], stream: bool) -> UsageFlags:
        if not stream:
            if options:
                raise SimError(
                    400, "Stream options can only be defined when `stream=True`.", param="stream_options"
                )
            return UsageFlags(False, False)
        include = bool(options.get("include_usage", True))  # vLLM's StreamOptions default
        return UsageFlags(include, include and bool(options.get("continuous_usage_stats")))

    def completion_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    def model_card(self, model: str) -> dict[str, Any]:
        created = int(self.runner.started_at)
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "permission": [permission],
        }

    def usage(self, plan: Plan) -> dict[str, Any]:
        total = plan.prompt_tokens + plan.completion_tokens
        return {
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": total,
            "completion_tokens": plan.completion_tokens,
            # As if vLLM ran with --enable-prompt-tokens-details, so cached tokens can be metered.
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens},
        }

    # ----------------------------------------------------------------- chat

    def chat_completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning_content": None,
        }
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": plan.finish_reason,
            "stop_reason": None,
        }
        return {
            **reply.header("chat.completion"),
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(plan),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    def chat_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        base = reply.header("chat.completion.chunk")
        continuous = flags.continuous
        n = plan.completion_tokens

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            return sse({**base, "choices": [choice] if choice else [], **extra})

        role = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        head = [chunk(role, **({"usage": _running_usage(plan, 0)} if continuous else {}))]

        def frame(i: int, piece: str) -> bytes:
            last = i == n - 1 and plan.finish_reason == "length"
            choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "logprobs": None}
            choice |= {"finish_reason": "length", "stop_reason": None} if last else {"finish_reason": None}
            return chunk(choice, **({"usage": _running_usage(plan, i + 1)} if continuous else {}))

        def tail() -> list[bytes]:
            out: list[bytes] = []
            if not _stops_on_last_token(plan):  # EOS: an empty-content finish chunk
                choice = {"index": 0, "delta": {"content": ""}, "logprobs": None}
                choice |= {"finish_reason": plan.finish_reason, "stop_reason": None}
                out.append(chunk(choice, **({"usage": _running_usage(plan)} if continuous else {})))
            if flags.include_usage:
                out.append(chunk(None, usage=self.usage(plan)))
            return [*out, SSE_DONE]

        return StreamShape(head, frame, tail)

    # ----------------------------------------------------------------- completions

    def completion(self, plan: Plan, clock: Clock, reply: Reply) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": plan.text,
            "logprobs": None,
            "finish_reason": plan.finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        return {
            **reply.header("text_completion"),
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(plan),
            "kv_transfer_params": None,
        }

    def completion_stream(self, plan: Plan, clock: Clock, reply: Reply, flags: UsageFlags) -> StreamShape:
        base = reply.header("text_completion")
        n = plan.completion_tokens

        def chunk(text: str, finish: str | None, tokens: int) -> bytes:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            obj: dict[str, Any] = {**base, "choices": [choice]}
            if flags.continuous:
                obj["usage"] = _running_usage(plan, tokens)
            return sse(obj)

        def frame(i: int, piece: str) -> bytes:
            last = i == n - 1 and plan.finish_reason == "length"
            return chunk(piece, "length" if last else None, i + 1)

        def tail() -> list[bytes]:
            out = [] if _stops_on_last_token(plan) else [chunk("", plan.finish_reason, n)]
            if flags.include_usage:
                out.append(sse({**base, "choices": [], "usage": self.usage(plan)}))
            return [*out, SSE_DONE]

        return StreamShape((), frame, tail)

    def embeddings_answer(self, model: str, data: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0}
        return {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": usage | {"prompt_tokens_details": None},
        }

    # ----------------------------------------------------------------- extra routes

    async def version(self, request: web.Request) -> web.StreamResponse:
        return await self.send_json(request, {"version": VLLM_VERSION})

    async def health(self, request: web.Request) -> web.StreamResponse:
        return await self.send_body(request, b"", JSON)  # 200, empty body

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        self.resolve_model(body.get("model"))
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise SimError(400, "messages must be a list of message objects", param="messages")
            generation_prompt = body.get("add_generation_prompt", True) is not False
            ids = render_chat(chat_turns(messages), add_generation_prompt=generation_prompt)
        elif isinstance(body.get("prompt"), str):
            ids = render_prompt(body["prompt"], add_special=body.get("add_special_tokens", True) is not False)
        else:
            raise SimError(400, "prompt or messages is required", param="prompt")
        answer = {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None}
        return await self.send_json(request, answer)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        lines: list[str] = []
        models = self.runner.models
        for name, totals in (
            ("prompt_tokens_total", self.runner.prompt_totals),
            ("generation_tokens_total", self.runner.generated_totals),
        ):
            lines.append(f"# TYPE vllm:{name} counter")
            lines += [f'vllm:{name}{{model_name="{m}"}} {totals.get(m, 0)}.0' for m in models]
        lines += ["# TYPE vllm:num_requests_running gauge"]
        lines += [f'vllm:num_requests_running{{model_name="{m}"}} 0.0' for m in models]
        body = ("\n".join(lines) + "\n").encode()
        return await self.send_body(request, body, "text/plain; version=0.0.4; charset=utf-8")
