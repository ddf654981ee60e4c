"""The price table (`[[prices]]` in the config file) and what each request cost by it.

A price names a model (an exact name, or a glob such as `llama3*`) and either token rates,
`input_per_million`, `output_per_million`, `cached_input_per_million` (API-style pricing), or
`gpu_hour`, the price of an hour of the server, spread over the requests by their server time
(self-hosted models). One currency, the top-level `currency` key, holds for the whole table.

The price of a model: its exact name's table if there is one, else the matching glob with the
most characters other than `*` (`llama3.2*` beats `llama3*` beats `*`), the first listed on a tie.

A record's cost (`cost_of`):
- token rates: (input - cached) x input + cached x cached (the input rate when unset) + output x
  output, per million tokens; reasoning tokens are output tokens;
- gpu_hour: server seconds x gpu_hour / 3600, server seconds being `server_duration_ms` when the
  server reports it (Ollama's total_duration, llama.cpp's timings), else the request's latency;
  a request the sidecar refused never reached the server and costs 0;
- 0 for a priced request without tokens (or time), None when no price matches the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from agent.records import Outcome, UsageRecord

PRICES: Final = "prices"  # the config file's key of the [[prices]] tables
TOKEN_RATES: Final = ("input_per_million", "output_per_million", "cached_input_per_million")
GPU_HOUR: Final = "gpu_hour"
KEYS: Final = ("model", *TOKEN_RATES, GPU_HOUR)
WILDCARDS: Final = frozenset("*?[")
CURRENCY: Final = re.compile(r"[A-Z]{3}")
MAX_CACHED_MODELS: Final = 1024  # model names are the client's: the lookup cache stays bounded


@dataclass(frozen=True, slots=True)
class Price:
    """One `[[prices]]` table. Rates are per million tokens, `gpu_hour` per hour of server time."""

    model: str
    input_per_million: float | None = None
    output_per_million: float | None = None
    cached_input_per_million: float | None = None
    gpu_hour: float | None = None

    @property
    def specificity(self) -> int:
        """How specific the model pattern is: its characters other than `*`."""
        return len(self.model) - self.model.count("*")

    def cost(self, rec: UsageRecord) -> float:
        """What `rec` cost at this price (see the module's docstring)."""
        if self.gpu_hour is not None:
            if rec.outcome == Outcome.REJECTED:
                return 0.0
            ms = rec.server_duration_ms if rec.server_duration_ms is not None else rec.latency_ms
            return (ms or 0.0) * self.gpu_hour / 3_600_000
        p = rec.prompt_tokens or 0
        cached = min(rec.cached_tokens or 0, p)
        return self.tokens_cost(p - cached, cached, rec.completion_tokens or 0)

    def tokens_cost(self, uncached: int, cached: int, output: int) -> float:
        """The cost of `uncached` and `cached` input tokens and `output` tokens (0 for gpu_hour)."""
        inp = self.input_per_million or 0.0
        cached_rate = inp if self.cached_input_per_million is None else self.cached_input_per_million
        return (uncached * inp + cached * cached_rate + output * (self.output_per_million or 0.0)) / 1e6

    def reserved(self, input_tokens: int, output_tokens: int, seconds: float) -> float:
        """What a request in flight holds against a cost budget: its prompt estimate at the
        input rate and its output cap at the output rate, or `seconds` of the server for
        gpu_hour pricing."""
        if self.gpu_hour is not None:
            return seconds * self.gpu_hour / 3600
        return self.tokens_cost(input_tokens, 0, output_tokens)

    def to_table(self) -> dict[str, Any]:
        """The price as the config file writes it."""
        return {k: v for k in KEYS if (v := getattr(self, k)) is not None}


class PriceTable:
    """The prices and their currency; `price_for` finds a model's price with one dict lookup
    once the model has been seen."""

    __slots__ = ("_cache", "_exact", "_globs", "currency", "prices")

    def __init__(self, prices: Iterable[Price], currency: str) -> None:
        self.prices = tuple(prices)
        self.currency = currency
        self._exact = {p.model: p for p in reversed(self.prices) if not WILDCARDS & set(p.model)}
        # Most specific first; sorted() is stable, so the first listed wins a tie.
        globs = [p for p in self.prices if WILDCARDS & set(p.model)]
        self._globs = sorted(globs, key=lambda p: -p.specificity)
        self._cache: dict[str | None, Price | None] = {None: None}

    def __bool__(self) -> bool:
        return bool(self.prices)

    def price_for(self, model: str | None) -> Price | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        assert model is not None
        price = self._exact.get(model) or next((p for p in self._globs if fnmatchcase(model, p.model)), None)
        if len(self._cache) <= MAX_CACHED_MODELS:
            self._cache[model] = price
        return price

    def cost_of(self, rec: UsageRecord) -> float | None:
        """What `rec` cost by this table; None when no price matches its model."""
        price = self.price_for(rec.model)
        return None if price is None else price.cost(rec)


# --------------------------------------------------------------------------- the config file


def parse_prices(tables: Any, source: str, problems: list[str]) -> tuple[Price, ...]:
    """The prices of a `prices` value read from `source`; what is wrong goes to `problems`,
    one line each, and the table it is in is left out."""
    if not isinstance(tables, list):
        problems.append(
            f"{source}: prices must be a list of tables ([[prices]]), got {type(tables).__name__}"
        )
        return ()
    prices: list[Price] = []
    for n, table in enumerate(tables, 1):
        before = len(problems)
        price = _parse_price(table, f"{source}: prices table {n}", problems)
        if price is not None and len(problems) == before:
            prices.append(price)
    seen: set[str] = set()
    for price in prices:
        if price.model in seen:
            problems.append(f"{source}: two prices tables for model {price.model!r}; keep one")
        seen.add(price.model)
    return tuple(prices)


def _parse_price(table: Any, where: str, problems: list[str]) -> Price | None:
    if not isinstance(table, dict):
        problems.append(f"{where} is not a table; write it as [[prices]] with keys under it")
        return None
    for key in table:
        if key not in KEYS:
            problems.append(f"{where}: unknown key {key!r}; known keys: {', '.join(KEYS)}")
    model = table.get("model")
    if not isinstance(model, str) or not model.strip():
        problems.append(f"{where}: model must be a model name or a glob such as 'llama3*', got {model!r}")
        model = ""
    rates: dict[str, float] = {}
    for key in (*TOKEN_RATES, GPU_HOUR):
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            problems.append(f"{where}: {key} must be a number of 0 or more, got {value!r}")
            continue
        rates[key] = float(value)
    given = [k for k in (*TOKEN_RATES, GPU_HOUR) if k in table]
    if not given:
        problems.append(
            f"{where}: no price; give {', '.join(TOKEN_RATES)} (per million tokens) or {GPU_HOUR}"
        )
    elif GPU_HOUR in given and len(given) > 1:
        problems.append(
            f"{where}: give token prices or {GPU_HOUR}, not both (a model is priced by its tokens or "
            "by the server time it takes)"
        )
    return Price(model, **rates)


def currency_problem(currency: str | None, prices: tuple[Price, ...]) -> str | None:
    """The problem when there are prices but no currency to read them in (the code itself is
    checked by the `currency` setting)."""
    if prices and currency is None:
        return 'prices need a currency: add e.g. currency = "USD" at the top of the config file'
    return None
