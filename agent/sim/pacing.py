"""How fast the simulated model produces tokens, and the marks a server's timings are read from.

A `Pace` answers two questions per generation: how long before the first token (prompt
processing) and how long between the next ones. `FixedPace` is what ``token_delay`` and
``first_token_delay`` configure; anything with the same two methods can replace it (a pace per
model, a latency distribution) through ``SimulatedLLM(pace=...)``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Clock", "FixedPace", "Pace", "now", "pause"]


class Pace(Protocol):
    """Seconds the simulated model spends, asked once per token of a generation."""

    def first_token(self, model: str) -> float:
        """Before the first token (or before an embedding is ready)."""
        ...

    def next_token(self, model: str) -> float:
        """Between one token and the next."""
        ...


@dataclass(frozen=True, slots=True)
class FixedPace:
    """The same delays for every request."""

    first_token_delay: float = 0.0
    token_delay: float = 0.0

    def first_token(self, model: str) -> float:
        return self.first_token_delay

    def next_token(self, model: str) -> float:
        return self.token_delay


@dataclass(slots=True)
class Clock:
    """perf_counter_ns marks: request arrival, start of generation, first token, last token."""

    start: int = field(default_factory=time.perf_counter_ns)
    prefill: int = 0
    first: int = 0
    end: int = 0


def now() -> int:
    return time.perf_counter_ns()


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
