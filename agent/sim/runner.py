"""The simulated model every server shares: it plans a generation, spends its time, streams it.

A generation of N tokens is exactly N streamed pieces and every reported count is what was
actually sent. N is the request's own limit (finish reason ``length``), else ``X-Sim-Tokens``
or ``default_max_tokens`` (``stop``). How each piece is framed is the server's business: it
hands `ModelRunner.stream` a `StreamShape`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from agent.sim.faults import CUT_AFTER_TOKENS, Fault, abort, fault_of, requested_tokens, stall
from agent.sim.pacing import Clock, Pace, now, pause
from agent.sim.tokens import PrefixCache, generate_pieces
from agent.sim.wire import StreamWire

__all__ = ["ModelRunner", "Plan", "StreamShape"]


@dataclass(slots=True)
class Plan:
    """One generation: what the prompt costs and what will be sent."""

    model: str
    prompt_ids: list[int]
    pieces: list[str]
    finish_reason: str  # "stop" | "length"
    cached_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class StreamShape:
    """How a server frames one streamed generation: `head` before the first token, `frame(i,
    piece)` per token as it is produced, then `tail()` (called after the last token, so it may
    read the clock)."""

    head: Sequence[bytes]
    frame: Callable[[int, str], bytes]
    tail: Callable[[], Sequence[bytes]]


class ModelRunner:
    """The served models, their pace, prefix cache and token totals, and the generation loop."""

    def __init__(self, models: Sequence[str], *, default_max_tokens: int, pace: Pace) -> None:
        self.models: list[str] = list(models)
        self.default_max_tokens = default_max_tokens
        self.pace = pace
        self.cache = PrefixCache()
        self.prompt_totals: dict[str, int] = {}
        self.generated_totals: dict[str, int] = {}
        self.started_at = time.time()
        self.stopping = asyncio.Event()  # replaced by the server on start: bound to the loop that serves

    def plan(
        self,
        request: web.Request,
        model: str,
        prompt_ids: list[int],
        seed: str,
        limit: int | None,
        *,
        cache: bool = False,
    ) -> Plan:
        natural = requested_tokens(request)
        if natural is None:
            natural = limit if limit is not None else self.default_max_tokens
        n = natural if limit is None else min(natural, limit)
        finish = "length" if limit is not None and n >= limit else "stop"
        cached = self.cache.match_and_store(model, prompt_ids) if cache else 0
        return Plan(model, prompt_ids, generate_pieces(seed, n), finish, cached)

    def account(self, model: str, prompt_tokens: int, generated_tokens: int = 0) -> None:
        """Totals for /metrics."""
        self.prompt_totals[model] = self.prompt_totals.get(model, 0) + prompt_tokens
        self.generated_totals[model] = self.generated_totals.get(model, 0) + generated_tokens

    async def process_prompt(self, model: str) -> None:
        """Spend the time before a first token (or an embedding)."""
        await pause(self.pace.first_token(model))

    async def generate_quietly(self, plan: Plan, clock: Clock) -> None:
        """Spend the time a real server would, for a non-streamed answer."""
        clock.prefill = now()
        await self.process_prompt(plan.model)
        clock.first = now()
        await pause(sum(self.pace.next_token(plan.model) for _ in range(plan.completion_tokens - 1)))
        clock.end = now()
        self.account(plan.model, plan.prompt_tokens, plan.completion_tokens)

    async def stream(
        self, request: web.Request, plan: Plan, clock: Clock, content_type: str, shape: StreamShape
    ) -> web.StreamResponse:
        """Send `shape` with one frame per token as it is produced. `cut` and `stall` are applied
        here so every stream shape gets them."""
        fault = fault_of(request)
        wire = StreamWire(request, content_type)
        n = plan.completion_tokens
        cut_after = min(CUT_AFTER_TOKENS, max(n - 1, 1)) if fault is Fault.CUT and n else 0
        pace, model = self.pace, plan.model
        try:
            await wire.open()
            for chunk in shape.head:
                await wire.send(chunk)
            clock.prefill = now()
            if fault is Fault.CUT and n == 0:
                await abort(request)
                return wire.response
            for i, piece in enumerate(plan.pieces):
                await pause(pace.first_token(model) if i == 0 else pace.next_token(model))
                if i == 0:
                    clock.first = now()
                await wire.send(shape.frame(i, piece))
                if fault is Fault.STALL:
                    await stall(request, self.stopping)
                    return wire.response
                if fault is Fault.CUT and i + 1 == cut_after:
                    await abort(request)
                    return wire.response
            if n == 0:
                await self.process_prompt(model)
                clock.first = now()
                if fault is Fault.STALL:
                    await stall(request, self.stopping)
                    return wire.response
            clock.end = now()
            self.account(plan.model, plan.prompt_tokens, plan.completion_tokens)
            for chunk in shape.tail():
                await wire.send(chunk)
            await wire.close()
        except ConnectionResetError:
            pass  # the client left mid-stream: nobody is listening for the rest
        return wire.response
