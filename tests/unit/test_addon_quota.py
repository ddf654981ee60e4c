"""The quota addon's hooks on crafted flows: what it limits, the headers it sets (replacing an
upstream's own), reconciliation once per flow, and its rules under plain `mitmdump -s`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from addons.flowstate import state_of
from addons.quota import Quota
from agent.prices import Price, PriceTable
from agent.quota.ledger import Ledger
from agent.quota.rules import rules_from_tables
from agent.quota.windows import zone
from agent.wire.request import parse_request

BODY = b'{"model":"m","messages":[{"role":"user","content":"12345678"}],"max_tokens":10}'


def flow(path: str = "/v1/chat/completions", body: bytes = BODY, user: str = "u") -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.method, f.request.path, f.request.content = "POST", path, body
    state = state_of(f)
    state.info = parse_request("POST", path, body)
    state.record.user = user
    return f


def answer(f: http.HTTPFlow, headers: dict[str, str] | None = None) -> None:
    f.response = http.Response.make(200, b"{}", headers or {})


def quota(**limits: int) -> Quota:
    return Quota(Ledger(rules_from_tables([{"user": "u", **limits}]), zone("UTC")), default_reservation=100)


def test_the_headers_replace_the_upstream_s_and_the_flow_is_reconciled_once() -> None:
    q = quota(output_tokens_per_minute=50)
    f = flow()
    q.request(f)
    assert f.response is None  # admitted: on its way upstream
    answer(f, {"ratelimit-limit": "999", "content-type": "application/json"})
    q.responseheaders(f)
    h = f.response.headers  # type: ignore[union-attr]
    assert h.get_all("RateLimit-Limit") == ["50"] and h["RateLimit-Remaining"] == "40"  # max_tokens 10 held
    assert h["content-type"] == "application/json"
    rec = state_of(f).record
    rec.prompt_tokens, rec.completion_tokens, rec.total_tokens = 3, 7, 10
    q.response(f)
    q.error(f)  # an error after the response must not count twice
    assert q.ledger is not None
    ((_scope, (standing,)),) = q.ledger.standings()
    assert (standing.used, standing.reserved) == (7, 0)


def test_only_inference_is_limited_and_an_answered_flow_is_left_alone() -> None:
    q = quota(requests_per_minute=1)
    models = flow("/v1/models", b"")
    q.request(models)
    assert models.response is None and state_of(models).quota is None
    first = flow()
    q.request(first)
    second = flow()
    q.request(second)
    assert second.response is not None and second.response.status_code == 429
    assert state_of(second).record.error == "quota_exceeded: rule user:u (user:u) requests_per_minute 1"
    refused_by_auth = flow()
    answer(refused_by_auth)
    q.request(refused_by_auth)
    assert state_of(refused_by_auth).quota is None  # already answered (a 401): not counted


def test_embeddings_reserve_no_output_and_a_missing_cap_reserves_the_default() -> None:
    q = quota(output_tokens_per_minute=1000)
    embed = flow("/v1/embeddings", b'{"model":"m","input":"hello"}')
    q.request(embed)
    uncapped = flow(body=b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    q.request(uncapped)
    assert state_of(embed).quota.amounts[2] == 0  # type: ignore[union-attr]
    assert state_of(uncapped).quota.amounts[2] == 100  # type: ignore[union-attr]


def test_standalone_it_reads_the_rules_of_sidemeter_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sidemeter.toml").write_text('[[quotas]]\nuser = "u"\nrequests_per_minute = 2\n')
    q = Quota()
    with taddons.context(q) as tctx:
        tctx.configure(q, sidemeter_quota_timezone="Europe/Berlin")
        assert q.ledger is not None and [r.name for r in q.ledger.rules] == ["user:u"]
        assert q.ledger.tz.key == "Europe/Berlin"
        (tmp_path / "sidemeter.toml").write_text('[[quotas]]\nuser = "u"\n')
        with pytest.raises(exceptions.OptionsError, match="no limit"):
            tctx.configure(q, sidemeter_quota_default_reservation=5)


def test_a_budget_holds_the_priced_reservation_and_counts_the_record_s_cost() -> None:
    prices = PriceTable([Price("m", input_per_million=1000, output_per_million=4000)], "USD")
    ledger = Ledger(rules_from_tables([{"user": "u", "cost_per_day": 0.5}]), zone("UTC"))
    q = Quota(ledger, default_reservation=100, prices=prices)
    f = flow()  # 8 characters of prompt (2 tokens) and max_tokens 10
    q.request(f)
    held = state_of(f).quota.amounts  # type: ignore[union-attr]
    assert held[4] == (2 * 1000 + 10 * 4000) / 1e6 == 0.042
    answer(f)
    q.responseheaders(f)
    h = f.response.headers  # type: ignore[union-attr]
    assert (h["RateLimit-Limit"], h["RateLimit-Remaining"]) == ("0.5", "0.458")
    state_of(f).record.cost = 0.125
    q.response(f)
    ((_scope, (standing,)),) = ledger.standings()
    assert (standing.used, standing.reserved) == (0.125, 0.0)
    ledger.load("u", None, "day", (0, 0, 0, 0, 0.375))  # 0.5 spent: the next one is refused
    refused = flow()
    q.request(refused)
    assert refused.response is not None and refused.response.status_code == 429
    assert b"cost_per_day = 0.5 USD of user:u" in refused.response.content  # type: ignore[operator]
    assert refused.response.headers["RateLimit-Remaining"] == "0"
    assert state_of(refused).record.error == "quota_exceeded: rule user:u (user:u) cost_per_day 0.5"
