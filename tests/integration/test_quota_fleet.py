"""Quotas shared by a fleet through a real PostgreSQL server: the sync's arithmetic on two
ledgers, two `sidemeter run` processes hammered by one user with the official openai client
(the combined usage stays within limit + the documented bound, both refuse), and a store that
goes down (budgets fail closed with 503, rates stay open, /ops/health says so)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agent.quota.fleet import FleetSync, closed_periods, load_fleet
from agent.quota.ledger import Ledger
from agent.quota.rules import rules_from_tables
from agent.quota.windows import zone
from agent.sim import SimulatedLLM
from agent.store.database import migrate, open_database
from agent.store.queries import get_record
from tests.support.postgres import PostgresServer
from tests.support.process import SidemeterProcess

PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]
MODEL = "sim-model"


def new_ledger(*tables: dict[str, Any]) -> Ledger:
    return Ledger(rules_from_tables(tables), zone("UTC"))


def sync_of(ledger: Ledger, url: str) -> FleetSync:
    return FleetSync(ledger, url, interval=0.1, stale_after=1.0, closed=closed_periods("open", "closed"))


def test_each_sidecar_admits_against_the_others_usage(postgres_url: str) -> None:
    db = open_database(postgres_url)
    migrate(db)
    db.close()
    # a day: no window rolls over mid-test; the budget is far off, its cost is shared too
    rule = {"user": "u", "tokens_per_day": 100, "cost_per_day": 100.0}
    a, b = new_ledger(rule), new_ledger(rule)
    sa, sb = sync_of(a, postgres_url), sync_of(b, postgres_url)
    try:
        for led, tokens, cost in ((a, 30, 0.1), (b, 50, 0.2)):
            d = led.admit("u", None, (1, 0, 10, 10, 0.05))
            assert d and d.refused_by is None
            led.reconcile(d, (1, 5, tokens - 5, tokens, cost))
        assert sa.tick() and sb.tick() and sa.tick()  # a reads b's push of the same round
        (scope_a,) = a.scopes.values()
        (scope_b,) = b.scopes.values()
        assert scope_a.windows["day"].others == pytest.approx([1, 5, 45, 50, 0.2])
        assert scope_a.windows["day"].used == [1, 5, 25, 30, 0.1]
        assert scope_b.windows["day"].others == pytest.approx([1, 5, 25, 30, 0.1])
        assert [s.used for s in a.standing_of(scope_a)] == [80, pytest.approx(0.3)]
        d = b.admit("u", None, (1, 0, 10, 10, 0.05))
        assert d and d.refused_by is None and d.shown.remaining == 10  # 100 - 80 - its own 10
        b.reconcile(d, (1, 0, 20, 20, 0.1))  # 100 counted across the fleet
        assert sb.tick() and sa.tick()
        assert scope_a.windows["day"].others[3] == 70
        assert scope_a.windows["day"].others[4] == pytest.approx(0.3)
        refused = a.admit("u", None, (1, 0, 1, 1, 0.0))
        assert refused and refused.refused_by is not None and refused.refused_by.used == 100
        assert sa.tick() and sa.tick()  # nothing new: the totals do not move
        assert scope_a.windows["day"].others[3] == 70 and scope_a.windows["day"].synced[3] == 30
        # every push is accounted for exactly, floats too: the window can be pruned once over
        assert scope_a.windows["day"].synced == scope_a.windows["day"].used
        # a third sidecar starting now loads the fleet's counters
        c = new_ledger(rule)
        db = open_database(postgres_url)
        try:
            assert load_fleet(c, db) == 1
        finally:
            db.close()
        (scope_c,) = c.scopes.values()
        assert scope_c.windows["day"].others[:4] == [3, 10, 90, 100]
        assert scope_c.windows["day"].others[4] == pytest.approx(0.4)
        assert c.admit("u", None, (1, 0, 1, 1, 0.0)).refused_by is not None  # type: ignore[union-attr]
    finally:
        for s in (sa, sb):
            if s._db is not None:
                s._db.close()


# -- two sidecars, one store -------------------------------------------------------------------

LIMIT = 4000
MAX_TOKENS = 20
CONCURRENCY = 8  # requests in flight per sidecar
SYNC_S = 0.25


def config_file(where: Path, text: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "sidemeter.toml").write_text(text)
    return where


async def hammer(url: str, user: str, stop_after_refusals: int, deadline: float) -> tuple[int, int]:
    """CONCURRENCY callers of `user` until `stop_after_refusals` refusals; (admitted, refused)."""
    client = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, default_headers={"X-User-Id": user}
    )
    admitted = refused = 0

    async def one_caller() -> None:
        nonlocal admitted, refused
        while refused < stop_after_refusals and time.monotonic() < deadline:
            try:
                await client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS)
                admitted += 1
            except openai.RateLimitError:
                refused += 1

    await asyncio.gather(*(one_caller() for _ in range(CONCURRENCY)))
    await client.close()
    return admitted, refused


async def test_two_sidecars_hold_one_limit_within_the_documented_bound(
    postgres_url: str, tmp_path: Path, processes: list[SidemeterProcess]
) -> None:
    sims = [SimulatedLLM("openai", token_delay=0.005) for _ in range(2)]
    for sim in sims:
        await sim.start()
    try:
        text = f'quota_sync_interval = {SYNC_S}\n[[quotas]]\nuser = "hammer"\ntokens_per_day = {LIMIT}\n'
        sides = [
            SidemeterProcess(sim.url, config_file(tmp_path / name, text), "--db", postgres_url)
            for sim, name in zip(sims, ("a", "b"), strict=True)
        ]
        processes.extend(sides)
        began = time.monotonic()
        results = await asyncio.gather(*(hammer(s.url, "hammer", 10, began + 60) for s in sides))
        elapsed = time.monotonic() - began
        for side in sides:  # a clean stop drains every record into the store
            side.proc.send_signal(signal.SIGTERM)
            assert side.wait() == 0, side.stderr
    finally:
        for sim in sims:
            await sim.stop()
    assert all(refused >= 10 for _, refused in results), results  # refusals on both sidecars
    db = open_database(postgres_url)
    try:
        cur = db.execute_sql(
            "SELECT instance, COUNT(*), SUM(total_tokens), MAX(total_tokens) FROM usage_logs "
            "WHERE \"user\" = 'hammer' AND outcome <> 'rejected' GROUP BY instance"
        )
        rows = cur.fetchall()
    finally:
        db.close()
    assert len(rows) == 2, rows  # both sidecars served the user
    total = sum(int(r[2]) for r in rows)
    largest = max(int(r[3]) for r in rows)  # R: the most one request used
    rate = max(int(r[2]) for r in rows) / elapsed  # tokens a second one sidecar served
    # limit + every sidecar's in-flight reservations + what the other served while a view was
    # stale (at most a sync interval old, plus the interval its own push waited)
    bound = LIMIT + 2 * CONCURRENCY * largest + rate * 2 * SYNC_S
    print(
        f"fleet total {total} tokens for a limit of {LIMIT} (overshoot {total - LIMIT}), "
        f"bound {bound:.0f}; R = {largest}, {rate:.0f} tokens/s per sidecar, {elapsed:.1f} s"
    )
    assert LIMIT <= total <= bound, (total, bound, rows)
    assert bound < 2 * LIMIT  # the check means something: two unshared sidecars would reach 2x


# -- the store goes down ---------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Any:
    """A server of this test's own: it is stopped and started again."""
    from tests.support.postgres import running_server, unavailable

    why = unavailable()
    if why:
        pytest.skip(why)
    with running_server() as server:
        yield server


async def health(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return (await client.get(url + "/ops/health")).json()  # type: ignore[no-any-return]


async def wait_for_state(
    client: httpx.AsyncClient, url: str, state: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = await health(client, url)
        if body["quota"]["state"] == state:
            return body
        assert time.monotonic() < deadline, body["quota"]
        await asyncio.sleep(0.05)


async def test_store_down_budgets_fail_closed_rates_stay_open(
    own_postgres: PostgresServer, sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any], tmp_path: Path
) -> None:
    url = own_postgres.new_database()
    rules = rules_from_tables([
        {"user": "rater", "requests_per_minute": 10_000},
        {"user": "spender", "tokens_per_day": 1_000_000},
    ])  # fmt: skip
    side = await start_sidecar(
        sim_openai.url,
        db=url,
        quotas=rules,
        quota_sync_interval=0.1,
        quota_stale_after=1.0,
        data_dir=str(tmp_path / "pg-data"),
    )

    def client(user: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=side.url + "/v1", api_key="unused", max_retries=0, default_headers={"X-User-Id": user}
        )

    async with httpx.AsyncClient(timeout=10) as ops:
        quota = (await wait_for_state(ops, side.ops_url, "synced"))["quota"]
        assert quota["store_down"] == {"rates": "open", "budgets": "closed"}
        assert quota["sync_interval_s"] == 0.1 and quota["last_sync"] is not None
        for user in ("rater", "spender"):
            await client(user).chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5)
        own_postgres.stop()
        body = await wait_for_state(ops, side.ops_url, "stale")
        assert body["status"] in ("degraded", "down") and body["quota"]["last_error"]
        assert any("budgets refuse with 503" in r for r in body["reasons"]), body["reasons"]
        request_id = uuid.uuid4().hex
        with pytest.raises(openai.InternalServerError) as refused:
            await client("spender").chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=5, extra_headers={"X-Request-ID": request_id}
            )
        resp = refused.value.response
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert "quota unavailable: tokens_per_day of user:spender" in resp.json()["error"]["message"]
        ok = await client("rater").chat.completions.with_raw_response.create(
            model=MODEL, messages=PROMPT, max_tokens=5
        )
        assert ok.status_code == 200  # rates fail open: admitted on this sidecar's counts
        own_postgres.start()
        await wait_for_state(ops, side.ops_url, "synced")
        await client("spender").chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5)
    # the refusal is recorded once the store takes the spilled records back
    deadline = time.monotonic() + 60
    while True:
        db = open_database(url)
        try:
            rec = get_record(db, request_id)
        finally:
            db.close()
        if rec is not None:
            break
        assert time.monotonic() < deadline, "the refused request was never stored"
        await asyncio.sleep(0.2)
    assert (rec.outcome, rec.status, rec.user) == ("rejected", 503, "spender")
    assert rec.error == "quota_unavailable: rule user:spender (user:spender) tokens_per_day 1000000"
