"""A simulated Ollama server: its native ``/api/*`` (``api/types.go``, ``server/routes.go``).

``/api/generate`` and ``/api/chat`` stream NDJSON by default; the final object carries
``done_reason``, the token counts and the nanosecond durations (zero values are left out, as
Go's ``omitempty`` does). Also ``/api/embed``, the legacy ``/api/embeddings`` (no counts),
``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/show`` and ``GET /``. Its OpenAI
compatibility layer under ``/v1/`` is `agent/sim/ollama_openai.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from collections.abc import Callable
from typing import Any, ClassVar, Final

from aiohttp import web

from agent.sim.api import Api
from agent.sim.errors import SimError, text_of
from agent.sim.pacing import Clock, now
from agent.sim.runner import ModelRunner, Plan, StreamShape
from agent.sim.tokens import EMBEDDING_DIM, MAX_MODEL_LEN, embed_vector, piece_id, render_chat, render_prompt
from agent.sim.wire import JSON_UTF8, NDJSON, ndjson, rfc3339_nano

__all__ = [
    "OLLAMA_FAULT_MESSAGES",
    "OLLAMA_VERSION",
    "OllamaNative",
    "model_not_found",
    "resolve_model",
    "tagged",
]

OLLAMA_VERSION: Final = "0.6.8"
OLLAMA_FAULT_MESSAGES: Final = {
    500: "llama runner process has terminated: exit status 2",
    429: "server busy, please try again.  maximum pending requests exceeded",
}
_KEEP_ALIVE_SECONDS: Final = 300  # Ollama's default keep_alive: 5m
_TEMPLATE: Final = (
    "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}<|user|>{{ .Prompt }}<|end|><|assistant|>"
)


def tagged(name: str) -> str:
    """Ollama model names always carry a tag."""
    return name if ":" in name else f"{name}:latest"


def model_not_found(name: Any) -> SimError:
    return SimError(404, f"model {json.dumps(name, ensure_ascii=False)} not found, try pulling it first")


def resolve_model(models: list[str], name: Any) -> str:
    """The served model a request names (``llama3.2`` is ``llama3.2:latest``)."""
    if not name or not isinstance(name, str):
        raise SimError(400, "model is required")
    for candidate in (name, f"{name}:latest"):
        if candidate in models:
            return candidate
    raise model_not_found(name)


def _family(model: str) -> str:
    base = model.split(":")[0].split("/")[-1]
    return re.sub(r"[^a-z]+.*$", "", base.lower()) or "llama"


def _details(model: str) -> dict[str, Any]:
    family = "bert" if "embed" in model else _family(model)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "137M" if "embed" in model else "3.2B",
        "quantization_level": "F16" if "embed" in model else "Q4_K_M",
    }


def _size(model: str) -> int:
    return 274_302_450 if "embed" in model else 2_019_393_189 + zlib.crc32(model.encode()) % 1000


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise SimError(400, "options must be an object")
    value = options.get("num_predict")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimError(400, 'option "num_predict" must be of type integer')
    return int(value) if value > 0 else None  # -1 (infinite) and 0 mean "no limit" in Ollama


def _durations(plan: Plan, clock: Clock) -> dict[str, int]:
    """The final object's counts and nanosecond durations."""
    load = max(clock.prefill - clock.start, 1)
    prompt_eval = max(clock.first - clock.prefill, 1)
    eval_ns = max(clock.end - clock.first, 1) if plan.completion_tokens else 0
    metrics = {
        "total_duration": load + prompt_eval + eval_ns,
        "load_duration": load,
        "prompt_eval_count": plan.prompt_tokens,
        "prompt_eval_duration": prompt_eval,
        "eval_count": plan.completion_tokens,
        "eval_duration": eval_ns,
    }
    return {k: v for k, v in metrics.items() if v}  # Go's omitempty drops zeros


class OllamaNative(Api):
    """Ollama's own API: every path not under ``/v1/``."""

    json_content_type: ClassVar[str] = JSON_UTF8
    empty_body_message: ClassVar[str] = "missing request body"
    json_error_prefix: ClassVar[str] = "invalid character in JSON body"
    fault_messages: ClassVar[dict[int, str]] = OLLAMA_FAULT_MESSAGES
    accepts_nan: ClassVar[bool] = False  # Go's encoding/json

    def __init__(self, runner: ModelRunner) -> None:
        super().__init__(runner)
        self._loaded: dict[str, float] = {}  # model -> expiry (time.time), for /api/ps

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)
        router.add_get("/api/version", self.version)
        router.add_get("/api/tags", self.tags)
        router.add_get("/api/ps", self.ps)
        router.add_post("/api/show", self.show)
        router.add_post("/api/generate", self.generate)
        router.add_post("/api/chat", self.chat)
        router.add_post("/api/embed", self.embed)
        router.add_post("/api/embeddings", self.embeddings)

    def error_payload(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        return {"error": message}  # gin.H{"error": err.Error()}

    async def route_not_found(self, request: web.Request, status: int) -> web.StreamResponse:
        return await self.send_body(request, b"404 page not found", "text/plain", status=404)

    def _model(self, name: Any) -> str:
        return resolve_model(self.runner.models, name)

    def _mark_loaded(self, model: str) -> None:
        self._loaded[model] = time.time() + _KEEP_ALIVE_SECONDS

    def _listing(self, model: str) -> dict[str, Any]:
        return {
            "name": model,
            "model": model,
            "size": _size(model),
            "digest": hashlib.sha256(model.encode()).hexdigest(),
            "details": _details(model),
        }

    # ----------------------------------------------------------------- server information

    async def root(self, request: web.Request) -> web.StreamResponse:
        return await self.send_body(request, b"Ollama is running", "text/plain; charset=utf-8")

    async def version(self, request: web.Request) -> web.StreamResponse:
        return await self.send_json(request, {"version": OLLAMA_VERSION})

    async def tags(self, request: web.Request) -> web.StreamResponse:
        modified = rfc3339_nano(int(self.runner.started_at * 1e9))
        models = []
        for m in self.runner.models:
            listing = self._listing(m)
            models.append({"name": m, "model": m, "modified_at": modified, **listing})
        return await self.send_json(request, {"models": models})

    async def ps(self, request: web.Request) -> web.StreamResponse:
        t = time.time()
        models = [
            self._listing(m) | {"expires_at": rfc3339_nano(int(expiry * 1e9)), "size_vram": _size(m)}
            for m, expiry in self._loaded.items()
            if expiry > t
        ]
        return await self.send_json(request, {"models": models})

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        name = body.get("model") or body.get("name")
        if not name:
            raise SimError(400, "model is required")
        try:
            model = self._model(name)
        except SimError:
            raise SimError(404, f"model '{name}' not found") from None
        embedding = "embed" in model
        details = _details(model)
        family = details["family"]
        show = {
            "modelfile": (
                f'# Modelfile generated by "ollama show"\nFROM {model}\nTEMPLATE """{_TEMPLATE}"""\n'
            ),
            "parameters": 'stop                           "<|end|>"',
            "template": _TEMPLATE,
            "details": details,
            "model_info": {
                "general.architecture": family,
                "general.parameter_count": 137_000_000 if embedding else 3_212_749_888,
                f"{family}.context_length": MAX_MODEL_LEN,
                f"{family}.embedding_length": EMBEDDING_DIM,
            },
            "capabilities": ["embedding"] if embedding else ["completion"],
            "modified_at": rfc3339_nano(int(self.runner.started_at * 1e9)),
        }
        return await self.send_json(request, show)

    # ----------------------------------------------------------------- generation

    async def _load_answer(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        # An empty prompt only loads (or, with keep_alive 0, unloads) the model: one JSON object.
        model = self._model(body.get("model"))
        unload = body.get("keep_alive") in (0, "0", "0s", "0m")
        if unload:
            self._loaded.pop(model, None)
        else:
            self._mark_loaded(model)
        reason = "unload" if unload else "load"
        answer: dict[str, Any] = {"model": body["model"], "created_at": rfc3339_nano()}
        if chat:
            answer |= {"message": {"role": "assistant", "content": ""}, "done_reason": reason, "done": True}
        else:
            answer |= {"response": "", "done": True, "done_reason": reason}
        return await self.send_json(request, answer)

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        plan: Plan,
        clock: Clock,
        final: Callable[[str], dict[str, Any]],
        part: Callable[[str], dict[str, Any]],
    ) -> web.StreamResponse:
        """The whole `final(text)` object when ``"stream": false``, else NDJSON: a `part(piece)`
        line per token, then `final("")`."""
        return await self.answer(
            request,
            plan,
            clock,
            stream=body.get("stream") is not False,  # Ollama streams by default
            whole=lambda: final(plan.text),
            shape=lambda: StreamShape((), lambda _, piece: ndjson(part(piece)), lambda: [ndjson(final(""))]),
            content_type=NDJSON,
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self._model(body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise SimError(400, "prompt must be a string")
        if not prompt and not body.get("images"):
            return await self._load_answer(request, body, chat=False)
        raw = bool(body.get("raw"))
        system = body.get("system") or ""
        if raw:
            prompt_ids = render_prompt(prompt)
        else:
            prompt_ids = render_chat(([("system", str(system))] if system else []) + [("user", prompt)])
            context = body.get("context")
            if isinstance(context, list) and all(isinstance(t, int) for t in context):
                prompt_ids = list(context) + prompt_ids  # the conversation so far counts again
        plan = self.runner.plan(request, model, prompt_ids, prompt, _num_predict(body))
        self._mark_loaded(model)
        name = body["model"]

        def final(response: str) -> dict[str, Any]:
            done: dict[str, Any] = {
                "model": name,
                "created_at": rfc3339_nano(),
                "response": response,
                "done": True,
                "done_reason": plan.finish_reason,
            }
            if not raw:  # raw mode returns no context
                done["context"] = plan.prompt_ids + [piece_id(p.strip()) for p in plan.pieces]
            return done | _durations(plan, clock)

        def part(piece: str) -> dict[str, Any]:
            return {"model": name, "created_at": rfc3339_nano(), "response": piece, "done": False}

        return await self._answer(request, body, plan, clock, final, part)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self._model(body.get("model"))
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SimError(400, "messages must be a list of message objects")
        if not messages:
            return await self._load_answer(request, body, chat=True)
        turns = [(str(m.get("role") or "user").lower(), text_of(m.get("content"))) for m in messages]
        seed = "\n".join(c for _, c in turns)
        plan = self.runner.plan(request, model, render_chat(turns), seed, _num_predict(body))
        self._mark_loaded(model)
        name = body["model"]

        def final(content: str) -> dict[str, Any]:
            return {
                "model": name,
                "created_at": rfc3339_nano(),
                "message": {"role": "assistant", "content": content},
                "done_reason": plan.finish_reason,
                "done": True,
            } | _durations(plan, clock)

        def part(piece: str) -> dict[str, Any]:
            message = {"role": "assistant", "content": piece}
            return {"model": name, "created_at": rfc3339_nano(), "message": message, "done": False}

        return await self._answer(request, body, plan, clock, final, part)

    # ----------------------------------------------------------------- embeddings

    async def embed(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body = await self.json_body(request)
        model = self._model(body.get("model"))
        raw_input = body.get("input")
        if raw_input is None:
            texts: list[str] = []
        elif isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
            texts = list(raw_input)
        else:
            raise SimError(400, "invalid input type")
        self._mark_loaded(model)
        prompt_tokens = sum(len(render_prompt(t)) for t in texts)
        await self.runner.process_prompt(model)
        clock.end = now()
        total = max(clock.end - clock.start, 1)
        answer: dict[str, Any] = {
            "model": body["model"],
            "embeddings": [embed_vector(t) for t in texts],
            "total_duration": total,
            "load_duration": max(total // 10, 1),
        }
        if prompt_tokens:
            answer["prompt_eval_count"] = prompt_tokens
        self.runner.account(model, prompt_tokens)
        return await self.send_json(request, answer)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        model = self._model(body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise SimError(400, "prompt must be a string")
        self._mark_loaded(model)
        await self.runner.process_prompt(model)
        # The legacy endpoint reports no token counts at all: proxies must estimate them.
        return await self.send_json(request, {"embedding": embed_vector(prompt) if prompt else []})
