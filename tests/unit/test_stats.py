"""Usage statistics: parsing windows, groupings and scopes, the buckets' error bound, and the
rollups agreeing with the records themselves (counts, cost sums to the last digit, percentiles
within the bound) for random windows, one sidecar or the fleet, late records, pruning and the
schema 2 -> 3 and 3 -> 4 migrations, on real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import peewee
import pytest

from agent.records import UsageRecord, utcnow
from agent.store.database import migrate, open_database
from agent.store.queries import delete_records, iter_records
from agent.store.rollups import (
    DIMENSIONS,
    RELATIVE_ERROR,
    ZERO_BUCKET,
    Cell,
    bucket_of,
    bucket_value,
    roll_up_periods,
    rolled_periods,
)
from agent.store.schema import ROLLED_TABLE, ROLLUP_TABLE, ts_to_db
from agent.store.stats import (
    GROUP_BY,
    PERCENTILE_ERROR,
    StatsError,
    compute_stats,
    parse_group_by,
    parse_scope,
    resolve_window,
)
from agent.store.writer import UsageStore

RETENTION = timedelta(days=30)
NOW = datetime(2026, 5, 4, 15, 37, 12, 345678, tzinfo=UTC)

# -- parsing ------------------------------------------------------------------------------------


def test_group_by_takes_up_to_two_known_dimensions_in_the_callers_order() -> None:
    assert parse_group_by(None) == ()
    assert parse_group_by("") == ()
    assert parse_group_by("team") == ("team",)
    assert parse_group_by("team, model") == ("team", "model")


@pytest.mark.parametrize("text", ["tenant", "team,team", "team,model,user", "team,"])
def test_a_bad_group_by_says_which_dimensions_exist(text: str) -> None:
    with pytest.raises(StatsError) as err:
        parse_group_by(text)
    assert err.value.allowed == list(GROUP_BY) == [*DIMENSIONS, "instance"]


def test_scope_is_local_or_fleet_and_fleet_by_default() -> None:
    assert parse_scope(None) == "fleet"
    assert parse_scope("local") == "local" and parse_scope(" fleet") == "fleet"
    for bad in ("", "all", "LOCAL"):
        with pytest.raises(StatsError, match="unknown scope") as err:
            parse_scope(bad)
        assert err.value.allowed == ["local", "fleet"]


def test_windows_count_back_from_now() -> None:
    window = resolve_window(window="15m", since=None, until=None, retention=RETENTION, now=NOW)
    assert (window.since, window.until) == (NOW - timedelta(minutes=15), NOW)
    default = resolve_window(window=None, since=None, until=None, retention=RETENTION, now=NOW)
    assert default.seconds == 86400


def test_since_and_until_are_iso_times_naive_meaning_utc() -> None:
    window = resolve_window(
        window=None, since="2026-05-04T10:00:00", until="2026-05-04T12:30:00Z", retention=RETENTION, now=NOW
    )
    assert window.since == datetime(2026, 5, 4, 10, tzinfo=UTC)
    assert window.until == datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
    assert resolve_window(
        window=None, since="2026-05-04T15:00:00+02:00", until=None, retention=RETENTION, now=NOW
    ) == (type(window)(datetime(2026, 5, 4, 13, tzinfo=UTC), NOW))


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"window": "yesterday"}, "unknown window"),
        ({"window": "0m"}, "empty"),
        ({"window": "45d"}, "longer than the retention of 30d"),
        ({"since": "2026-03-01T00:00:00Z"}, "longer than the retention"),
        ({"since": "noon"}, "not an ISO-8601 time"),
        ({"since": "2026-05-04T12:00:00Z", "until": "2026-05-04T11:00:00Z"}, "must be later"),
        ({"window": "1h", "since": "2026-05-04T12:00:00Z"}, "either window or since"),
        ({"until": "2026-05-04T12:00:00Z"}, "until needs since"),
    ],
)
def test_a_bad_window_says_what_is_allowed(kw: dict[str, str], needle: str) -> None:
    args: dict[str, Any] = {"window": None, "since": None, "until": None, **kw}
    with pytest.raises(StatsError, match=needle) as err:
        resolve_window(**args, retention=RETENTION, now=NOW)
    if "window" in kw and "since" not in kw:
        assert "24h" in err.value.allowed and "30d" in err.value.allowed and "45d" not in err.value.allowed


def test_every_value_is_within_the_stated_error_of_its_bucket() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(0, 6) for _ in range(20_000)] + [1e-9, 0.5, 1.0, 1.02, 999.999, 1e14]
    for v in values:
        assert abs(bucket_value(bucket_of(v)) - v) <= RELATIVE_ERROR * v * (1 + 1e-9), v
    assert RELATIVE_ERROR <= PERCENTILE_ERROR
    assert bucket_of(0.0) == ZERO_BUCKET and bucket_value(ZERO_BUCKET) == 0.0


def test_merged_cells_give_the_nearest_rank_bucket_of_every_sample_brute_force() -> None:
    # Cells as a grouped answer builds them: rollup rows (encoded, then decoded) and loose
    # buckets from the records, merged; each percentile must be the bucket of the
    # ceil(q% n)-th smallest of all the samples, and the re-encoded cell the summed counts.
    rng = random.Random(11)
    qs = (0.1, 1, 25, 50, 95, 99, 99.9, 100)
    for trial in range(60):
        samples: list[int] = []
        total = Cell()
        for _ in range(rng.randint(0, 6)):
            part, rows = Cell(), rng.randint(0, 5)
            for _ in range(rows):
                row = Cell()
                for _ in range(rng.randint(0, 40)):
                    bucket = rng.choice((ZERO_BUCKET, rng.randint(-50, 400), rng.randint(0, 3)))
                    n = rng.randint(1, 1 if trial % 2 else 50)
                    row.add_bucket(0, bucket, n)
                    samples += [bucket] * n
                part.add_encoded(0, row.encoded(0))
            for _ in range(rng.randint(0, 20)):
                bucket = rng.randint(-5, 30)
                part.add_bucket(0, bucket, 1)
                samples.append(bucket)
            total.merge(part)
        samples.sort()
        want = [
            bucket_value(samples[max(1, math.ceil(q * len(samples) / 100)) - 1]) if samples else None
            for q in qs
        ]
        assert total.percentiles(0, qs) == want
        again = Cell()
        again.add_encoded(0, total.encoded(0))
        assert again.percentiles(0, qs) == want
        assert total.percentiles(1, qs) == [None] * len(qs)


# -- the rollups against the records ------------------------------------------------------------

TEAMS = ("quant", "eval", None, "")
MODELS = ("llama3", "qwen", None)
USERS = ("ana", "bo", "cy", None)
INSTANCES = ("pod-a", "pod-b", None)
OUTCOMES = ("ok", "ok", "ok", "upstream_error", "client_cancelled")


def random_record(rng: random.Random, i: int, ts: datetime) -> UsageRecord:
    chat = rng.random() < 0.8
    latency = rng.choice([0.0, rng.lognormvariate(5, 1.2), rng.lognormvariate(7, 0.3)])
    return UsageRecord(
        request_id=f"r{i}",
        ts=ts,
        user=rng.choice(USERS),
        team=rng.choice(TEAMS),
        model=rng.choice(MODELS),
        endpoint="/v1/chat/completions" if chat else "/api/embed",
        operation="chat" if chat else "embedding",
        outcome=rng.choice(OUTCOMES),
        prompt_tokens=rng.choice([None, rng.randint(0, 5000)]),
        completion_tokens=rng.randint(0, 900) if chat else None,
        cached_tokens=rng.choice([None, 0, rng.randint(0, 50)]),
        reasoning_tokens=rng.choice([None, rng.randint(0, 30)]),
        usage_source=rng.choice(["reported", "reported", "estimated", "none"]),
        latency_ms=None if rng.random() < 0.05 else latency,
        ttft_ms=rng.lognormvariate(3, 0.7) if chat else None,
        tokens_per_second=rng.uniform(5, 90) if chat and rng.random() < 0.9 else None,
        instance=rng.choice(INSTANCES),
        # Costs with up to 9 decimals, like a price table's, some far below a cent; some unknown.
        cost=rng.choice([None, 0.0, round(rng.uniform(0, 0.02), 9), round(rng.uniform(0, 40), 9)]),
    )


def nearest_rank(values: Sequence[float], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) / 100)) - 1]


def reference(
    db: peewee.Database,
    since: datetime,
    until: datetime,
    group_by: Sequence[str],
    instance: str | None = None,
) -> dict[Any, Any]:
    """The statistics computed in plain Python from every record in the window (of one
    instance, "" for those without one; of all when None)."""
    groups: dict[tuple[Any, ...], list[UsageRecord]] = {}
    for r in iter_records(db, since=since, until=until):
        if instance is not None and (r.instance or "") != instance:
            continue
        key = tuple(getattr(r, d) or None for d in group_by)
        groups.setdefault(key, []).append(r)
    out = {}
    for key, records in groups.items():
        out[key] = {
            "requests": len(records),
            "errors": sum(r.outcome != "ok" for r in records),
            "tokens_in": sum(r.prompt_tokens or 0 for r in records),
            "tokens_out": sum(r.completion_tokens or 0 for r in records),
            "cached_tokens": sum(r.cached_tokens or 0 for r in records),
            "reasoning_tokens": sum(r.reasoning_tokens or 0 for r in records),
            "estimated": sum(r.usage_source == "estimated" for r in records),
            "costed": sum(r.cost is not None for r in records),
            # Exact decimal sums of the costs as written (each has at most 9 decimals).
            "cost": sum((Decimal(repr(r.cost)) for r in records if r.cost is not None), Decimal(0)),
            "latency_ms": [r.latency_ms for r in records if r.latency_ms is not None],
            "ttft_ms": [r.ttft_ms for r in records if r.ttft_ms is not None],
            "tokens_per_second": [r.tokens_per_second for r in records if r.tokens_per_second is not None],
        }
    return out


def assert_agrees(
    db: peewee.Database,
    since: datetime,
    until: datetime,
    group_by: Sequence[str],
    instance: str | None = None,
) -> dict[str, Any]:
    body = compute_stats(db, since, until, group_by, instance=instance)
    expected = reference(db, since, until, group_by, instance)
    assert (body["scope"], body["instance"]) == ("fleet" if instance is None else "local", instance)
    got = (
        {tuple(g["key"][d] for d in group_by): g for g in body["groups"]} if group_by else {(): body["total"]}
    )
    if not group_by and not expected:
        assert body["total"]["requests"] == 0
        return body
    assert set(got) == set(expected), (since, until, group_by)
    for key, want in expected.items():
        stats = got[key]
        for name in (
            "requests",
            "errors",
            "tokens_in",
            "tokens_out",
            "cached_tokens",
            "reasoning_tokens",
            "estimated",
            "costed",
        ):
            assert stats[name] == want[name], (key, name, since, until)
        if want["costed"]:
            assert Decimal(repr(stats["cost"])) == want["cost"], (key, since, until)
        else:
            assert stats["cost"] is None
        for metric, qs in (
            ("latency_ms", (50, 95, 99)),
            ("ttft_ms", (50, 95, 99)),
            ("tokens_per_second", (50,)),
        ):
            for q in qs:
                exact, approx = nearest_rank(want[metric], q), stats[metric][f"p{q}"]
                if exact is None:
                    assert approx is None
                else:
                    assert approx is not None and abs(approx - exact) <= PERCENTILE_ERROR * exact, (
                        key,
                        metric,
                        q,
                    )
    assert body["total"]["requests"] == sum(w["requests"] for w in expected.values())
    return body


# `store_url` (tests/conftest.py): each test below runs on SQLite and on PostgreSQL.


@pytest.fixture
def db(store_url: str) -> Iterator[peewee.Database]:
    database = open_database(store_url)
    yield database
    database.close()


def write(url: str, records: list[UsageRecord]) -> None:
    """Through the writer, as the sidecar stores them."""
    store = UsageStore(url, journal=False)
    store.start()
    for r in records:
        store.submit(r)
    assert store.flush(30)
    assert store.last_error is None
    store.close()


def spread(rng: random.Random, n: int, start: datetime, hours: float, first_id: int = 0) -> list[UsageRecord]:
    return [
        random_record(rng, first_id + i, start + timedelta(seconds=rng.uniform(0, hours * 3600)))
        for i in range(n)
    ]


def random_window(rng: random.Random, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    span = (end - start).total_seconds()

    def point() -> datetime:
        t = start + timedelta(seconds=rng.uniform(-600, span + 600))
        return t.replace(minute=0, second=0, microsecond=0) if rng.random() < 0.2 else t

    a, b = sorted((point(), point()))
    return (a, b) if a < b else (a, a + timedelta(minutes=1))


def test_rollups_agree_with_the_records_for_random_windows_and_groupings(
    store_url: str, db: peewee.Database
) -> None:
    rng = random.Random(11)
    start = NOW - timedelta(hours=7)
    write(store_url, spread(rng, 3000, start, 7))
    assert roll_up_periods(db, NOW) > 0
    # 08:00 to 14:00; the 15:00 hour is not over yet
    assert len(rolled_periods(db, 3600, start - timedelta(hours=1), NOW)) == 7
    groupings = [(), *[(d,) for d in DIMENSIONS], ("team", "model"), ("model", "team"), ("user", "outcome")]
    for _ in range(40):
        since, until = random_window(rng, start, NOW)
        assert_agrees(db, since, until, rng.choice(groupings))
    whole_day = assert_agrees(db, NOW - timedelta(hours=24), NOW, ("team", "model"))
    assert whole_day["total"]["requests"] == 3000


def test_late_records_are_folded_into_rolled_up_periods(store_url: str, db: peewee.Database) -> None:
    rng = random.Random(5)
    now = utcnow()
    start = now - timedelta(hours=3)
    write(store_url, spread(rng, 800, start, 2.5))
    roll_up_periods(db, now)
    hours = rolled_periods(db, 3600, start - timedelta(hours=1), now)
    assert hours
    # A long request's record, and a re-ingested spill file's: written after their periods
    # were rolled up, by the writer's own transaction.
    write(store_url, spread(rng, 300, start, 2.5, first_id=10_000))
    for since, until in ((start - timedelta(hours=1), now), (hours[0], hours[-1] + timedelta(hours=1))):
        for group_by in ((), ("team",), ("user", "model")):
            assert_agrees(db, since, until, group_by)
    assert compute_stats(db, start - timedelta(hours=1), now)["total"]["requests"] == 1100


def test_prune_keeps_the_rollups_of_what_is_left(store_url: str, db: peewee.Database) -> None:
    rng = random.Random(8)
    start = NOW - timedelta(hours=5)
    write(store_url, spread(rng, 1500, start, 5))
    roll_up_periods(db, NOW)
    cut = start + timedelta(hours=2, minutes=17, seconds=3)
    deleted = delete_records(db, before=cut)
    assert deleted > 0
    for group_by in ((), ("outcome",), ("team", "model")):
        assert_agrees(db, start - timedelta(hours=1), NOW, group_by)
        assert_agrees(db, cut - timedelta(minutes=30), cut + timedelta(minutes=50), group_by)
    delete_records(db)
    assert db.execute_sql(f"SELECT COUNT(*) FROM {ROLLUP_TABLE}").fetchone()[0] == 0
    assert compute_stats(db, start, NOW)["total"]["requests"] == 0


def test_the_writer_rolls_up_what_a_schema_2_store_holds(store_url: str, db: peewee.Database) -> None:
    rng = random.Random(2)
    start = utcnow() - timedelta(hours=4)
    write(store_url, spread(rng, 1000, start, 3.5))
    # What a version 2 database looks like: records, no rollups.
    for table in (ROLLUP_TABLE, ROLLED_TABLE):
        db.execute_sql(f"DROP TABLE {table}")
    db.execute_sql("DELETE FROM schema_meta")
    db.execute_sql("INSERT INTO schema_meta (version) VALUES (2)")
    migrate(db)
    assert_agrees(db, start - timedelta(hours=1), utcnow(), ("team", "model"))  # from the records
    # The writer rolls up a few periods per turn until it has caught up.
    store = UsageStore(store_url, journal=False)
    store.start()
    deadline = time.monotonic() + 60
    while len(rolled_periods(db, 3600, start - timedelta(hours=1), utcnow())) < 3:
        assert time.monotonic() < deadline, "the writer did not roll up the stored records"
        time.sleep(0.05)
    store.close()
    assert_agrees(db, start - timedelta(hours=1), utcnow(), ("team", "model"))


def test_an_empty_window_has_zero_counts_and_no_percentiles(db: peewee.Database) -> None:
    migrate(db)
    body = compute_stats(db, NOW - timedelta(hours=1), NOW, ("team",))
    assert body["groups"] == []
    assert body["total"]["requests"] == 0 and body["total"]["error_rate"] == 0.0
    assert body["total"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert body["percentiles"] == "approximate" and body["percentile_error"] == PERCENTILE_ERROR


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, then a database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_one_sidecar_or_the_fleet_and_their_costs_agree_with_the_records(any_store_url: str) -> None:
    rng = random.Random(21)
    now = utcnow()
    start = now - timedelta(hours=3)
    write(any_store_url, spread(rng, 1200, start, 2.5))
    db = open_database(any_store_url)
    try:
        assert roll_up_periods(db, now) > 0
        late = spread(rng, 200, start, 2.5, first_id=50_000)  # folded into rolled-up periods
        write(any_store_url, late)
        windows = [(start - timedelta(hours=1), now), *(random_window(rng, start, now) for _ in range(6))]
        for since, until in windows:
            fleet = assert_agrees(db, since, until, ("team",))
            parts = [assert_agrees(db, since, until, ("team",), instance=i) for i in ("pod-a", "pod-b", "")]
            assert sum(p["total"]["requests"] for p in parts) == fleet["total"]["requests"]
            assert sum(p["total"]["costed"] for p in parts) == fleet["total"]["costed"]
            by_instance = assert_agrees(db, since, until, ("instance", "model"))
            assert {g["key"]["instance"] for g in by_instance["groups"]} <= {"pod-a", "pod-b", None}
            assert_agrees(db, since, until, ("instance",), instance="pod-b")
        assert assert_agrees(db, start - timedelta(hours=1), now, ())["total"]["requests"] == 1400
        assert (
            compute_stats(db, start, now, instance="pod-z")["total"]
            == compute_stats(db, now - timedelta(days=3), now - timedelta(days=2))["total"]
        )  # an unknown instance has nothing: zeros, null cost, no percentiles
    finally:
        db.close()


def test_prune_keeps_per_instance_rollups_and_costs_exact_on_postgresql(postgres_url: str) -> None:
    rng = random.Random(13)
    now = utcnow()
    start = now - timedelta(hours=4)
    write(postgres_url, spread(rng, 1000, start, 3.5))
    db = open_database(postgres_url)
    try:
        roll_up_periods(db, now)
        cut = start + timedelta(hours=1, minutes=41, seconds=7)
        assert delete_records(db, before=cut) > 0
        for instance in (None, "pod-a", ""):
            assert_agrees(db, start - timedelta(hours=1), now, ("model",), instance=instance)
            assert_agrees(db, cut - timedelta(minutes=20), cut + timedelta(minutes=70), (), instance=instance)
    finally:
        db.close()


# What the rollup table looked like in schema 3: no instance key, no cost sums.
_V3_ROLLUPS = """CREATE TABLE usage_rollups (span_s INTEGER NOT NULL, dims TEXT NOT NULL,
    period TIMESTAMP NOT NULL, k1 TEXT NOT NULL, k2 TEXT NOT NULL, requests INTEGER NOT NULL,
    errors INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
    latency_ms TEXT NOT NULL, ttft_ms TEXT NOT NULL, tokens_per_second TEXT NOT NULL,
    PRIMARY KEY (span_s, dims, period, k1, k2))"""


def test_a_schema_3_store_with_rollups_becomes_4_and_answers_the_same(store_url: str) -> None:
    rng = random.Random(17)
    now = utcnow()
    start = now - timedelta(hours=4)
    records = spread(rng, 900, start, 3.5)
    for r in records:  # schema 3 had neither
        r.instance = r.cost = None
    write(store_url, records)
    db = open_database(store_url)
    window = (start - timedelta(hours=1), now)
    before = compute_stats(db, *window, ("team", "model"))
    # Make it a schema 3 file: old columns, old rollups (filled: a v3 sidecar had rolled up).
    db.execute_sql("DROP INDEX usagelog_instance")
    for column in ("instance", "cost"):
        db.execute_sql(f"ALTER TABLE usage_logs DROP COLUMN {column}")
    db.execute_sql(f"DROP TABLE {ROLLUP_TABLE}")
    db.execute_sql(f"DELETE FROM {ROLLED_TABLE}")
    db.execute_sql(_V3_ROLLUPS)
    db.execute_sql(
        f"INSERT INTO usage_rollups VALUES (3600, '', {db.param}, '', '', 5, 0, 1, 1, 0, 0, 0, "
        "'[]', '[]', '[]')",
        (floor_hour(start),),
    )
    db.execute_sql(
        f"INSERT INTO {ROLLED_TABLE} (span_s, period) VALUES (3600, {db.param})", (floor_hour(start),)
    )
    db.execute_sql("DELETE FROM schema_meta")
    db.execute_sql("INSERT INTO schema_meta (version) VALUES (3)")
    db.close()

    db = open_database(store_url)
    try:
        migrate(db)
        columns = {c.name for c in db.get_columns(ROLLUP_TABLE)}
        assert {"instance", "costed", "cost_e9"} <= columns
        assert db.execute_sql(f"SELECT COUNT(*) FROM {ROLLED_TABLE}").fetchone()[0] == 0
        # Nothing rolled up yet: the window reads the records, and the old rollup row is gone.
        migrated = assert_agrees(db, *window, ("team", "model"))
        assert migrated["total"] == before["total"] and migrated["groups"] == before["groups"]
        store = UsageStore(store_url, journal=False)
        store.start()
        deadline = time.monotonic() + 60
        while len(rolled_periods(db, 3600, window[0], now)) < 3:
            assert time.monotonic() < deadline, "the writer did not roll up the stored records"
            time.sleep(0.05)
        store.close()
        rolled = assert_agrees(db, *window, ("team", "model"))
        assert rolled["total"] == before["total"] and rolled["groups"] == before["groups"]
        assert rolled["total"]["cost"] is None and rolled["total"]["costed"] == 0
    finally:
        db.close()


def floor_hour(ts: datetime) -> str:
    """The hour's start as the store writes periods."""
    return ts_to_db(ts.replace(minute=0, second=0, microsecond=0))
