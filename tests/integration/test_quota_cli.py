"""`[[quotas]]` in the config file through the CLI (`config validate`, `config show`,
`config set`, `quota show`), and the rebuild from a real SQLite store summing only the
current windows."""

from __future__ import annotations

import json
import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from agent.quota.history import rebuild
from agent.quota.ledger import Ledger
from agent.quota.rules import rules_from_tables
from agent.quota.windows import zone
from agent.records import UsageRecord
from agent.store.database import open_database
from agent.store.writer import UsageStore

RULES = """
[[quotas]]
team = "ml"
tokens_per_minute = 20000
tokens_per_day = 500

[[quotas]]
user = "alice"
requests_per_minute = 60

[[quotas]]
tokens_per_month = 1000
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("SIDEMETER_"):
            monkeypatch.delenv(key)


def sidemeter(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def config(tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "sidemeter.toml"
    path.write_text(f'auth = "off"\ndata_dir = "{tmp_path}/d"\ndb = "sqlite:///{tmp_path}/u.db"\n{rules}')
    return path


def test_config_validate_reports_each_bad_rule_on_its_line(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[[quotas]]\nuser = "a"\nteam = "b"\nrequests_per_minute = 1\n'
        "[[quotas]]\ntokens_per_day = -5\nbogus = 1\n"
        '[[quotas]]\nteam = "ml"\ncost_per_month = 500.0\n',
    )
    res = sidemeter("config", "validate", "--config", str(path))
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines), lines
    assert "quotas rule 1: give user or team, not both" in lines[0]
    assert "quotas rule 2: unknown key 'bogus'" in res.output
    assert "quotas rule 2: tokens_per_day must be a positive whole number, got -5" in res.output
    assert "quotas rule team:ml: cost_per_month is a budget in currency and needs prices" in res.output
    bad_zone = config(tmp_path, 'quota_timezone = "Mars/Olympus"\n' + RULES)
    res = sidemeter("config", "validate", "--config", str(bad_zone))
    assert res.exit_code == 2 and "quota_timezone: 'Mars/Olympus' is not an IANA time zone" in res.output
    assert sidemeter("config", "validate", "--config", str(config(tmp_path, RULES))).output == "config ok\n"


def test_config_show_prints_the_rules_and_config_set_keeps_them(tmp_path: Path) -> None:
    path = config(tmp_path, RULES)
    shown = tomllib.loads(sidemeter("config", "show", "--config", str(path)).output)
    assert shown["quotas"] == [
        {"team": "ml", "tokens_per_minute": 20000, "tokens_per_day": 500},
        {"user": "alice", "requests_per_minute": 60},
        {"tokens_per_month": 1000},
    ]
    assert shown["quota_timezone"] == "UTC" and shown["quota_default_reservation"] == 1024
    assert sidemeter("config", "set", "--config", str(path), "quota_timezone", "Europe/Berlin").exit_code == 0
    written = tomllib.loads(path.read_text())
    assert written["quota_timezone"] == "Europe/Berlin" and written["quotas"] == shown["quotas"]


def _store(tmp_path: Path, records: list[UsageRecord]) -> None:
    store = UsageStore(f"sqlite:///{tmp_path}/u.db")
    store.start()
    try:
        for rec in records:
            store.submit(rec)
        assert store.flush()
    finally:
        store.close()


def _rec(user: str, team: str | None, tokens: int, ts: datetime, **kw: object) -> UsageRecord:
    return UsageRecord(
        request_id=os.urandom(8).hex(),
        ts=ts,
        user=user,
        team=team,
        operation=kw.pop("operation", "chat"),  # type: ignore[arg-type]
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        total_tokens=tokens,
        **kw,  # type: ignore[arg-type]
    )


def test_rebuild_sums_only_the_current_windows(tmp_path: Path) -> None:
    now = datetime(2026, 6, 15, 12, 30, 30, tzinfo=UTC)
    _store(
        tmp_path,
        [
            _rec("bob", "ml", 100, now - timedelta(seconds=20)),  # this minute, day, month
            _rec("bob", "ml", 30, now - timedelta(minutes=5)),  # this day and month
            _rec("cat", "ml", 7, now - timedelta(hours=13)),  # yesterday: this month only
            _rec("dan", None, 40, now - timedelta(days=20)),  # last month: nothing
            _rec("dan", None, 11, now - timedelta(days=1)),
            _rec("bob", "ml", 999, now, outcome="rejected"),  # refused: never counted
            _rec("bob", "ml", 999, now, operation="other"),  # a model list: not inference
        ],
    )
    ledger = Ledger(
        rules_from_tables(
            [{"team": "ml", "tokens_per_minute": 10_000, "tokens_per_day": 10_000}, {"tokens_per_month": 500}]
        ),
        zone("UTC"),
        clock=now.timestamp,
    )
    db = open_database(f"sqlite:///{tmp_path}/u.db")
    try:
        assert rebuild(ledger, db) == 3  # (bob, ml), (cat, ml), (dan, None)
    finally:
        db.close()
    used = {
        (scope.key, s.limit.key): (s.used, s.reserved)
        for scope, standings in ledger.standings()
        for s in standings
    }
    assert used == {
        ("team:ml", "tokens_per_minute"): (100, 0),
        ("team:ml", "tokens_per_day"): (130, 0),
        ("user:dan", "tokens_per_month"): (11, 0),
    }


def test_quota_show_reads_the_config_and_the_store(tmp_path: Path) -> None:
    path = config(tmp_path, RULES)
    now = datetime.now(UTC)
    _store(tmp_path, [_rec("bob", "ml", 120, now), _rec("alice", "ml", 10, now), _rec("zed", None, 5, now)])
    res = sidemeter("quota", "show", "--config", str(path))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["rule", "scope", "limit", "used", "reserved", "remaining", "reset"]
    rows = {tuple(line.split()[:5]) for line in lines[1:]}
    assert ("team:ml", "team:ml", "tokens_per_day", "500", "120") in rows
    assert ("user:alice", "user:alice", "requests_per_minute", "60", "1") in rows
    assert ("everyone", "user:zed", "tokens_per_month", "1000", "5") in rows
    alone = json.loads(sidemeter("quota", "show", "--config", str(path), "--user", "bob", "--json").output)
    (scope,) = alone["scopes"]
    assert (scope["rule"], scope["scope"]) == ("team:ml", "team:ml")  # bob's latest team
    assert [r["rule"] for r in alone["rules"]] == ["team:ml", "user:alice", "everyone"]
    nobody = sidemeter("quota", "show", "--config", str(path), "--team", "ops")
    assert nobody.output == "no quota rule applies to team ops\n"
    assert sidemeter("quota", "show", "--user", "a", "--team", "b", "--config", str(path)).exit_code == 2


PRICED = """
currency = "EUR"

[[prices]]
model = "llama3*"
gpu_hour = 1.8

[[prices]]
model = "gpt-4o-mini"
input_per_million = 0.15
output_per_million = 0.6

[[quotas]]
team = "ml"
cost_per_day = 2.5
tokens_per_day = 100000
"""


def test_budgets_are_rebuilt_from_the_cost_column_and_shown(tmp_path: Path) -> None:
    """The spend of the current windows is the store's sum of cost (records without a price,
    cost NULL, spend nothing); `config show` prints the prices, `config set` keeps them."""
    path = config(tmp_path, PRICED)
    now = datetime.now(UTC)
    _store(
        tmp_path,
        [
            _rec("bob", "ml", 120, now, cost=1.25),
            _rec("amy", "ml", 30, now, cost=0.5),
            _rec("amy", "ml", 50, now),  # no price for its model: cost NULL
            _rec("amy", "ml", 10, now - timedelta(days=40), cost=9.0),  # an older month
        ],
    )
    res = sidemeter("quota", "show", "--config", str(path), "--team", "ml", "--json")
    assert res.exit_code == 0, res.output
    (scope,) = json.loads(res.output)["scopes"]
    limits = {lim["name"]: (lim["limit"], lim["used"], lim["remaining"]) for lim in scope["limits"]}
    assert limits == {"tokens_per_day": (100000, 200, 99800), "cost_per_day": (2.5, 1.75, 0.75)}
    table = sidemeter("quota", "show", "--config", str(path)).output
    assert ("team:ml", "team:ml", "cost_per_day", "2.5", "1.75") in {
        tuple(line.split()[:5]) for line in table.splitlines()
    }
    shown = tomllib.loads(sidemeter("config", "show", "--config", str(path)).output)
    assert shown["currency"] == "EUR"
    assert shown["prices"] == [
        {"model": "llama3*", "gpu_hour": 1.8},
        {"model": "gpt-4o-mini", "input_per_million": 0.15, "output_per_million": 0.6},
    ]
    assert sidemeter("config", "set", "--config", str(path), "retention", "7d").exit_code == 0
    written = tomllib.loads(path.read_text())
    assert written["prices"] == shown["prices"] and written["quotas"] == shown["quotas"]
    assert sidemeter("config", "validate", "--config", str(path)).output == "config ok\n"
