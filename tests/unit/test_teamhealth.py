"""The 5-minute team window: exact counts as time passes, its bounds, p95 and the judgement."""

from __future__ import annotations

import pytest

from agent.records import UsageRecord
from agent.teamhealth import OTHER, WINDOW_S, TeamHealth, TeamStats, Thresholds, judge, p95


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rec(
    team: str | None, *, ok: bool = True, latency: float | None = 100.0, ttft: float | None = None
) -> UsageRecord:
    r = UsageRecord(request_id="r", team=team, dialect="openai")
    r.outcome = "ok" if ok else "upstream_error"
    r.latency_ms, r.ttft_ms = latency, ttft
    return r


def test_counts_are_exact_and_leave_the_window_after_five_minutes() -> None:
    clock = Clock()
    health = TeamHealth(clock=clock)
    for i in range(10):
        health.observe(rec("quant", ok=i != 0, latency=float(i)))
    clock.now += 200
    for _ in range(5):
        health.observe(rec("quant", ok=False, latency=50.0))
    (stats,) = health.snapshot()
    assert (stats.requests, stats.errors) == (15, 6)
    clock.now += WINDOW_S - 200 + 1  # the first ten are older than 5 minutes now
    (stats,) = health.snapshot()
    assert (stats.requests, stats.errors, stats.latency_p95_ms) == (5, 5, 50.0)
    clock.now += 200
    assert health.snapshot() == []


def test_seconds_reused_by_the_ring_start_from_zero() -> None:
    clock = Clock()
    health = TeamHealth(clock=clock)
    health.observe(rec("eval"))
    clock.now += WINDOW_S  # the same ring slot, a later second
    health.observe(rec("eval"))
    assert health.snapshot()[0].requests == 1


def test_teams_past_the_cap_count_as_other_and_quiet_teams_make_room() -> None:
    clock = Clock()
    health = TeamHealth(max_teams=2, clock=clock)
    for team in ("a", "b", "c", "d"):
        health.observe(rec(team))
    assert {s.team: s.requests for s in health.snapshot()} == {"a": 1, "b": 1, OTHER: 2}
    clock.now += WINDOW_S + 1
    health.observe(rec("e"))  # a and b are quiet: e gets its own window
    assert [s.team for s in health.snapshot()] == ["e"]


def test_samples_are_bounded_and_p95_is_over_the_latest() -> None:
    health = TeamHealth(max_samples=100, clock=Clock())
    for i in range(1000):
        health.observe(rec("quant", latency=float(i), ttft=1.0 if i % 2 else None))
    (stats,) = health.snapshot()
    assert stats.requests == 1000  # counts stay exact
    assert stats.latency_p95_ms == 994.0  # nearest rank 95 of 900..999
    assert stats.ttft_p95_ms == 1.0


def test_nearest_rank_p95() -> None:
    assert p95([]) is None
    assert p95([7.0]) == 7.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0


LIMITS = Thresholds(
    error_rate_degraded=0.05, error_rate_down=0.5, latency_p95_degraded_ms=1000, min_requests=5
)


@pytest.mark.parametrize(
    ("requests", "errors", "latency", "status", "reasons"),
    [
        (10, 0, 100.0, "ok", []),
        (10, 1, 100.0, "degraded", ["error rate 10% >= 5%"]),
        (10, 5, 100.0, "down", ["error rate 50% >= 50%"]),
        (10, 0, 1500.0, "degraded", ["p95 latency 1.50s >= 1s"]),
        (10, 6, 31_000.0, "down", ["error rate 60% >= 50%", "p95 latency 31.00s >= 30s"]),
        (4, 4, 99_000.0, "ok", []),  # too few to judge
        (10, 0, None, "ok", []),
    ],
)
def test_judge(requests: int, errors: int, latency: float | None, status: str, reasons: list[str]) -> None:
    assert judge(TeamStats("t", requests, errors, latency, None), LIMITS) == (status, reasons)
