"""The price table: which price a model gets (exact, then the most specific glob), what a record
costs by token rates and by GPU time, the reservation a budget holds, the parse's messages,
and the lookup's cost on the hot path."""

from __future__ import annotations

import time

import pytest

from agent.prices import MAX_CACHED_MODELS, Price, PriceTable, parse_prices
from agent.records import Outcome, UsageRecord


def table(*tables: dict[str, object]) -> PriceTable:
    problems: list[str] = []
    prices = parse_prices(list(tables), "test", problems)
    assert problems == []
    return PriceTable(prices, "USD")


def rec(model: str | None = "m", **kw: object) -> UsageRecord:
    return UsageRecord(request_id="r", model=model, **kw)  # type: ignore[arg-type]


def test_an_exact_name_beats_globs_and_the_most_specific_glob_wins() -> None:
    t = table(
        {"model": "*", "input_per_million": 1},
        {"model": "llama3*", "input_per_million": 2},
        {"model": "llama3.2*", "input_per_million": 3},
        {"model": "llama3.2:1b", "input_per_million": 4},
        {"model": "qwen?", "input_per_million": 5},
        {"model": "qwen*", "input_per_million": 6},
    )
    picked = {
        m: t.price_for(m).input_per_million
        for m in ("llama3.2:1b", "llama3.2", "llama3:8b", "x", "qwen3", "qwen25")
    }  # type: ignore[union-attr]
    assert picked == {"llama3.2:1b": 4, "llama3.2": 3, "llama3:8b": 2, "x": 1, "qwen3": 5, "qwen25": 6}
    tie = table({"model": "a*", "output_per_million": 1}, {"model": "*a", "output_per_million": 2})
    assert tie.price_for("aa").output_per_million == 1  # type: ignore[union-attr]  # first listed
    assert table({"model": "gpt-4o", "input_per_million": 1}).price_for("GPT-4O") is None  # case counts
    assert t.price_for(None) is None  # a request without a model (e.g. /v1/models)


def test_token_cost_bills_cached_input_at_its_rate_and_reasoning_as_output() -> None:
    t = table(
        {"model": "m", "input_per_million": 2.5, "output_per_million": 10, "cached_input_per_million": 1.25}
    )
    r = rec(prompt_tokens=1000, completion_tokens=300, cached_tokens=400, reasoning_tokens=100)
    assert t.cost_of(r) == (600 * 2.5 + 400 * 1.25 + 300 * 10) / 1e6
    no_cached_rate = table({"model": "m", "input_per_million": 2, "output_per_million": 8})
    assert no_cached_rate.cost_of(r) == (1000 * 2 + 300 * 8) / 1e6  # cached tokens at the input rate
    assert no_cached_rate.cost_of(rec(prompt_tokens=12)) == 24 / 1e6  # an embedding: input only
    assert no_cached_rate.cost_of(rec(outcome=Outcome.REJECTED)) == 0.0  # priced, no tokens
    assert no_cached_rate.cost_of(rec(model="other", prompt_tokens=5)) is None  # no price


def test_gpu_hour_spreads_over_server_time_else_latency() -> None:
    t = table({"model": "llama*", "gpu_hour": 3.6})  # 0.001 a second
    assert t.cost_of(rec("llama3", server_duration_ms=2500.0, latency_ms=2600.0)) == 2500.0 * 3.6 / 3_600_000
    assert t.cost_of(rec("llama3", latency_ms=800.0)) == 800.0 * 3.6 / 3_600_000
    assert t.cost_of(rec("llama3", latency_ms=5.0, outcome=Outcome.REJECTED)) == 0.0  # never reached it
    assert t.cost_of(rec("llama3")) == 0.0


def test_reservations_price_the_prompt_estimate_and_output_cap_or_default_seconds() -> None:
    tokens = Price("m", input_per_million=2, output_per_million=8)
    assert tokens.reserved(100, 50, 30.0) == (100 * 2 + 50 * 8) / 1e6
    assert Price("m", gpu_hour=7.2).reserved(100, 50, 30.0) == 30.0 * 7.2 / 3600


def test_bad_price_tables_are_reported_one_line_each() -> None:
    problems: list[str] = []
    prices = parse_prices(
        [
            {"model": "ok", "input_per_million": 1},
            {"input_per_million": 1},
            {"model": "b", "gpu_hour": 2, "output_per_million": 1},
            {"model": "c"},
            {"model": "d", "input_per_million": -1, "colour": "red"},
            {"model": "e", "output_per_million": "3"},
            {"model": "ok", "gpu_hour": 1.0},
            "not a table",
            {"model": "f", "gpu_hour": True},
        ],
        "sidemeter.toml",
        problems,
    )
    assert [p.model for p in prices] == ["ok", "ok"]
    text = "\n".join(problems)
    assert "prices table 2: model must be a model name or a glob such as 'llama3*', got None" in text
    assert "prices table 3: give token prices or gpu_hour, not both" in text
    assert "prices table 4: no price; give input_per_million" in text
    assert "prices table 5: unknown key 'colour'" in text
    assert "prices table 5: input_per_million must be a number of 0 or more, got -1" in text
    assert "prices table 6: output_per_million must be a number of 0 or more, got '3'" in text
    assert "prices table 8 is not a table" in text
    assert "prices table 9: gpu_hour must be a number of 0 or more, got True" in text
    assert "two prices tables for model 'ok'" in text
    assert len(problems) == 9
    problems = []
    assert parse_prices({"model": "x"}, "f", problems) == () and "list of tables" in problems[0]


def test_the_lookup_cache_is_bounded() -> None:
    t = table({"model": "*", "input_per_million": 1})
    for n in range(MAX_CACHED_MODELS * 3):
        assert t.price_for(f"made-up-{n}") is not None
    assert len(t._cache) <= MAX_CACHED_MODELS + 1


@pytest.mark.parametrize("model", ["llama3.2:1b", "some-model-matched-by-a-glob"])
def test_pricing_a_record_is_cheap(model: str) -> None:
    """On the event loop once per request: a few microseconds even on a loaded shared box."""
    t = table(
        {"model": "llama3.2:1b", "input_per_million": 0.1, "output_per_million": 0.2},
        {"model": "some-*", "input_per_million": 1, "output_per_million": 2},
        *({"model": f"other-{n}*", "gpu_hour": 1.0} for n in range(20)),
    )
    r = rec(model, prompt_tokens=100, completion_tokens=200, cached_tokens=10)
    n = 20_000
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(n):
            t.cost_of(r)
        best = min(best, (time.thread_time() - start) / n * 1e6)
    assert best < 5.0, f"{best:.2f} us per record"
