"""The quota core: rules, windows, the admission rule at its boundary, reservations,
reconciliation and windows rolling over, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.prices import Price
from agent.quota.ledger import Ledger, reservation, used_by
from agent.quota.report import quota_report
from agent.quota.rules import parse_rules, rules_from_tables
from agent.quota.windows import bounds, zone

UTC_ZONE = zone("UTC")
T0 = datetime(2026, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()  # a minute before day and month end


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ledger(*tables: dict[str, object], t: float = T0) -> tuple[Ledger, Clock]:
    clock = Clock(t)
    return Ledger(rules_from_tables(tables), UTC_ZONE, clock=clock), clock


def test_requests_refused_exactly_at_the_limit() -> None:
    led, _ = ledger({"user": "alice", "requests_per_minute": 3})
    for n in range(3):
        d = led.admit("alice", None, (1, 0, 0, 0, 0.0))
        assert d is not None and d.refused_by is None, n
        assert d.shown.remaining == 2 - n  # after this request's own reservation
        led.reconcile(d, (1, 0, 0, 0, 0.0))
    refused = led.admit("alice", None, (1, 0, 0, 0, 0.0))
    assert refused is not None and refused.refused_by is not None
    assert refused.refused_by.limit.key == "requests_per_minute" and refused.shown.remaining == 0
    assert led.admit("bob", None, (1, 0, 0, 0, 0.0)) is None  # no rule for bob: not counted


def test_one_after_another_is_refused_once_counted_usage_reaches_the_limit() -> None:
    led, _ = ledger({"team": "ml", "tokens_per_minute": 100})
    d = led.admit("a", "ml", (1, 0, 50, 50, 0.0))
    assert d and d.refused_by is None
    led.reconcile(d, (1, 10, 89, 99, 0.0))  # 99 < 100: the next one is still admitted
    d = led.admit("b", "ml", (1, 0, 50, 50, 0.0))
    assert d and d.refused_by is None
    led.reconcile(d, (1, 0, 1, 1, 0.0))  # exactly 100 counted
    d = led.admit("a", "ml", (1, 0, 1, 1, 0.0))
    assert d and d.refused_by is not None and d.scope == "team:ml"


def test_reservations_of_other_requests_refuse_but_a_request_s_own_does_not() -> None:
    led, _ = ledger({"user": "u", "output_tokens_per_minute": 100})
    big = led.admit("u", None, (1, 0, 500, 500, 0.0))  # bigger than the limit on its own: admitted
    assert big and big.refused_by is None
    assert led.admit("u", None, (1, 0, 1, 1, 0.0)).refused_by is not None  # type: ignore[union-attr]
    led.reconcile(big, (1, 0, 40, 40, 0.0))  # it used less: the rest is free again
    d = led.admit("u", None, (1, 0, 59, 59, 0.0))
    assert d and d.refused_by is None and d.shown.remaining == 1


def test_concurrent_overshoot_is_at_most_one_reservation() -> None:
    led, _ = ledger({"user": "u", "output_tokens_per_minute": 1000})
    held = []
    for _ in range(50):
        d = led.admit("u", None, (1, 0, 64, 64, 0.0))
        assert d is not None
        if d.refused_by is None:
            held.append(d)
    assert len(held) == 16  # 15 * 64 = 960 < 1000 admits a 16th; 16 * 64 >= 1000 refuses
    for r in held:
        led.reconcile(r, (1, 0, 64, 64, 0.0))
    ((_scope, standings),) = led.standings()
    assert standings[0].used == 1024 < 1000 + 64  # limit + the largest single reservation


def test_most_specific_rule_wins() -> None:
    led, _ = ledger(
        {"requests_per_minute": 1},
        {"team": "ml", "requests_per_minute": 2},
        {"user": "alice", "requests_per_minute": 3},
    )
    assert led.index.match("alice", "ml").name == "user:alice"  # type: ignore[union-attr]
    assert led.index.match("bob", "ml").name == "team:ml"  # type: ignore[union-attr]
    assert led.index.match("bob", None).name == "everyone"  # type: ignore[union-attr]
    # the everyone rule counts each user on their own; a team rule the whole team together
    for user in ("x", "y"):
        d = led.admit(user, None, (1, 0, 0, 0, 0.0))
        assert d and d.refused_by is None and d.scope == f"user:{user}"
    led.admit("b1", "ml", (1, 0, 0, 0, 0.0))
    led.admit("b2", "ml", (1, 0, 0, 0, 0.0))
    assert led.admit("b3", "ml", (1, 0, 0, 0, 0.0)).refused_by is not None  # type: ignore[union-attr]


def test_minute_window_rolls_over_and_in_flight_usage_stays_in_its_window() -> None:
    led, clock = ledger({"user": "u", "requests_per_minute": 1, "tokens_per_day": 1000})
    first = led.admit("u", None, (1, 0, 10, 10, 0.0))
    assert first and first.refused_by is None
    refused = led.admit("u", None, (1, 0, 10, 10, 0.0))
    assert refused and refused.refused_by is not None
    assert refused.refused_by.reset_in(clock.t) == 60
    clock.t += 59.5
    assert led.admit("u", None, (1, 0, 10, 10, 0.0)).refused_by.reset_in(clock.t) == 1  # type: ignore[union-attr]
    clock.t = T0 + 60  # 00:00:00 next day, next month: every window is new
    d = led.admit("u", None, (1, 0, 10, 10, 0.0))
    assert d and d.refused_by is None
    led.reconcile(first, (1, 0, 300, 300, 0.0))  # started in the old windows: counted there
    ((_scope, standings),) = led.standings()
    assert [(s.limit.key, s.used, s.reserved) for s in standings] == [
        ("requests_per_minute", 0, 1),
        ("tokens_per_day", 0, 10),
    ]


def test_day_and_month_windows_follow_the_time_zone() -> None:
    berlin = zone("Europe/Berlin")
    t = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()  # the day clocks go forward: 23 hours
    start, end = bounds("day", t, berlin)
    assert (end - start) / 3600 == 23
    assert datetime.fromtimestamp(start, berlin).hour == 0 and datetime.fromtimestamp(end, berlin).hour == 0
    start, end = bounds("month", datetime(2026, 12, 31, 23, 30, tzinfo=UTC).timestamp(), UTC_ZONE)
    assert (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert bounds("minute", 125.5, UTC_ZONE) == (120, 180)


def test_reservation_and_usage_amounts() -> None:
    assert reservation("chat", 9, 100, 1024) == (1, 3, 100, 103, 0.0)
    assert reservation("chat", 0, None, 1024) == (1, 0, 1024, 1024, 0.0)
    assert reservation("embedding", 8, None, 1024) == (1, 2, 0, 2, 0.0)
    assert used_by(5, 7, None) == (1, 5, 7, 12, 0.0)
    assert used_by(None, None, None, 0.25) == (1, 0, 0, 0, 0.25)
    priced = Price("m", input_per_million=2, output_per_million=8)
    assert reservation("chat", 9, 100, 1024, priced) == (1, 3, 100, 103, (3 * 2 + 100 * 8) / 1e6)
    assert reservation("chat", 0, None, 1024, Price("m", gpu_hour=36), 10.0) == (1, 0, 1024, 1024, 0.1)


def test_bad_rules_are_reported_one_line_each() -> None:
    problems: list[str] = []
    rules = parse_rules(
        [
            {"team": "ml", "tokens_per_minute": 10},
            {"user": "a", "team": "b", "requests_per_minute": 1},
            {"user": "c", "tokens_per_day": 0, "bogus": 1},
            {"team": "ml", "requests_per_minute": 5},
            {"user": "d"},
            {"user": "e", "cost_per_month": 0},
            {"user": "f", "tokens_per_month": True},
            {"user": "g", "cost_per_day": 2.5, "tokens_per_day": 2.5},
            {"user": "h", "cost_per_month": 7},
        ],
        "sidemeter.toml",
        problems,
    )
    assert [r.name for r in rules] == ["team:ml", "team:ml", "user:h"]
    text = "\n".join(problems)
    assert "rule 2: give user or team, not both" in text
    assert "rule 3: unknown key 'bogus'" in text
    assert "rule 3: tokens_per_day must be a positive whole number, got 0" in text
    assert "rule 5: no limit" in text
    assert "rule 6: cost_per_month must be a positive amount of the currency, got 0" in text
    assert "rule 7: tokens_per_month must be a positive whole number, got True" in text
    assert "rule 8: tokens_per_day must be a positive whole number, got 2.5" in text
    assert "rule 8: cost_per_day" not in text  # a budget may have cents
    assert "two quotas rules match team:ml" in text
    assert len(problems) == 8
    with pytest.raises(ValueError):
        rules_from_tables([{"team": "x"}])
    problems = []
    assert parse_rules({"team": "x"}, "f", problems) == () and "list of tables" in problems[0]


def test_other_sidecars_usage_counts_and_shows() -> None:
    led, _ = ledger({"user": "u", "requests_per_minute": 5})
    d = led.admit("u", None, (1, 0, 0, 0, 0.0))
    assert d and d.refused_by is None and d.shown.remaining == 4
    led.reconcile(d, (1, 0, 0, 0, 0.0))
    (scope,) = led.scopes.values()
    scope.windows["minute"].others[0] = 3  # what a sync read back: the fleet used 3 more
    d = led.admit("u", None, (1, 0, 0, 0, 0.0))
    assert d and d.refused_by is None and d.shown.used == 4 and d.shown.remaining == 0
    refused = led.admit("u", None, (1, 0, 0, 0, 0.0))  # 1 + 3 + 1 in flight = 5: used up
    assert refused and refused.refused_by is not None and refused.refused_by.used == 4
    assert [s.used for s in led.standing_of(scope)] == [4]


def test_stale_fleet_counters_refuse_closed_kinds_only() -> None:
    led, clock = ledger(
        {"user": "rates", "requests_per_minute": 100}, {"user": "budget", "tokens_per_day": 10_000}
    )
    led.closed = frozenset({"day", "month"})  # budgets closed, rates open
    led.fresh_until = clock.t + 5
    assert led.admit("budget", None, (1, 0, 1, 1, 0.0)).refused_by is None  # type: ignore[union-attr]
    clock.t += 5  # no sync for 5 s: stale
    refused = led.admit("budget", None, (1, 0, 1, 1, 0.0))
    assert refused and refused.unavailable and refused.refused_by is not None
    assert refused.refused_by.limit.key == "tokens_per_day" and refused.windows is None
    rate = led.admit("rates", None, (1, 0, 1, 1, 0.0))
    assert rate and rate.refused_by is None and not rate.unavailable
    led.fresh_until = clock.t + 5  # a sync succeeded again
    assert led.admit("budget", None, (1, 0, 1, 1, 0.0)).refused_by is None  # type: ignore[union-attr]


def test_pruning_keeps_the_scope_count_bounded_with_many_users() -> None:
    led, clock = ledger({"requests_per_minute": 10})  # everyone: a scope per user
    t0 = clock.t = T0 - T0 % 60  # the start of a minute
    peak = 0
    for minute in range(10):
        for n in range(1000):  # a thousand new users every minute
            clock.t = t0 + minute * 60 + n * 0.05
            d = led.admit(f"user{minute}-{n}", "t", (1, 0, 0, 0, 0.0))
            assert d and d.refused_by is None
            led.reconcile(d, (1, 0, 0, 0, 0.0))
        peak = max(peak, len(led.scopes))
        keys = list(led.scopes)
        clock.t = t0 + (minute + 1) * 60  # once a minute, as the runtime does
        dropped = led.prune(keys[:500], clock.t) + led.prune(keys[500:], clock.t)
        assert dropped == 1000 and not led.scopes
        assert len(led.teams) == 0  # the users' latest team went with their scopes
    assert peak == 1000  # never more than one minute's users


def test_pruning_keeps_live_windows_and_unsynced_ended_ones() -> None:
    led, clock = ledger({"user": "u", "requests_per_minute": 10, "tokens_per_day": 100}, t=T0 - 3600)
    d = led.admit("u", None, (1, 0, 1, 1, 0.0))
    assert d and d.refused_by is None
    led.reconcile(d, (1, 0, 1, 1, 0.0))
    clock.t += 60  # the minute ended, the day not
    led.shared = True  # in a fleet: the minute's usage has not been pushed yet
    assert led.prune(list(led.scopes), clock.t) == 0
    (scope,) = led.scopes.values()
    assert set(scope.windows) == {"minute", "day"}
    w = scope.windows["minute"]
    w.synced[:] = w.used  # pushed
    assert led.prune(list(led.scopes), clock.t) == 0 and set(scope.windows) == {"day"}
    assert led.teams == {"u": None}


def test_a_budget_admits_below_its_amount_and_refuses_once_spent() -> None:
    """The same admission rule in currency: reservations priced, reconciled with exact costs."""
    led, clock = ledger({"team": "ml", "cost_per_day": 0.01, "requests_per_minute": 1000})
    assert led.budgets
    d = led.admit("a", "ml", (1, 10, 100, 110, 0.004))
    assert d and d.refused_by is None and d.shown.limit.key == "cost_per_day"  # the tightest: 60 % left
    assert d.shown.remaining == pytest.approx(0.006)
    led.reconcile(d, (1, 10, 80, 90, 0.0035))
    d = led.admit("b", "ml", (1, 10, 100, 110, 0.004))
    assert d and d.refused_by is None
    led.reconcile(d, (1, 10, 300, 310, 0.0065))  # exactly 0.01 spent
    refused = led.admit("a", "ml", (1, 0, 1, 1, 0.0))  # refused even when it would cost nothing
    assert refused and refused.refused_by and refused.refused_by.limit.key == "cost_per_day"
    report = quota_report(led, team="ml")
    (scope,) = report["scopes"]
    by_name = {lim["name"]: lim for lim in scope["limits"]}
    assert (by_name["cost_per_day"]["used"], by_name["cost_per_day"]["remaining"]) == (0.01, 0.0)
    assert by_name["requests_per_minute"]["used"] == 2 and isinstance(
        by_name["requests_per_minute"]["used"], int
    )
    assert report["rules"] == [
        {"rule": "team:ml", "team": "ml", "cost_per_day": 0.01, "requests_per_minute": 1000}
    ]
    clock.t += 60  # the next day (T0 is a minute before midnight): a fresh budget
    d = led.admit("a", "ml", (1, 0, 1, 1, 0.0))
    assert d and d.refused_by is None


def test_a_rebuild_loads_costs_and_a_ledger_without_budgets_says_so() -> None:
    led, _ = ledger({"user": "u", "cost_per_month": 1.5})
    led.load("u", None, "month", (3, 30, 60, 90, 1.5))
    d = led.admit("u", None, (1, 0, 1, 1, 0.0))
    assert d and d.refused_by is not None and d.refused_by.used == 1.5
    assert not ledger({"user": "u", "tokens_per_day": 5})[0].budgets
