"""`GET /ops/requests` and `GET /ops/requests/{request_id}` against the running sidecar: the
records of the traffic sent, newest first, paged by cursor and filtered, prompts only as
captured, JSON errors for what cannot be answered."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest

from agent.auth.issue import SigningKey, issue_token
from agent.sim import SimulatedLLM
from ops_api.schemas import RECORD_SCHEMA
from tests.support.sidecar import RunningSidecar

SECRET = "r" * 64
MODEL = "sim-model"
# Who sends what: user, team, model ("missing" is unknown to the server: an upstream error).
SENDERS = [
    ("alice", "quant", MODEL),
    ("bob", "quant", MODEL),
    ("carol", "eval", MODEL),
    ("alice", "quant", "missing"),
]

validate_record = jsonschema.Draft202012Validator(RECORD_SCHEMA).validate


def token(sub: str, team: str | None = None, roles: list[str] | None = None) -> str:
    extra = {"roles": roles} if roles else None
    return issue_token(SigningKey.from_secret(SECRET), sub, team=team, extra=extra)


OPS_HEADERS = {"Authorization": f"Bearer {token('ops-viewer', roles=['ops'])}"}


@pytest.fixture
async def side(sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any], store_url: str) -> RunningSidecar:
    """A sidecar on a SQLite file or on a PostgreSQL database (`store_url`)."""
    return await start_sidecar(sim_openai.url, auth="jwt", jwt_secret=SECRET, db=store_url)  # type: ignore[no-any-return]


async def send(
    side: RunningSidecar, n: int, prompt: str = "Say something."
) -> list[tuple[str, str, str, str]]:
    """`n` chat requests, one after another, cycling through SENDERS; (request id, user, team,
    model) of each, oldest first, once every record is stored."""
    sent = []
    async with httpx.AsyncClient(base_url=side.url, timeout=30) as http:
        for _, (user, team, model) in zip(range(n), itertools.cycle(SENDERS), strict=False):
            res = await http.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3},
                headers={"Authorization": f"Bearer {token(user, team)}"},
            )
            sent.append((res.headers["X-Request-ID"], user, team, model))
    for request_id, *_ in sent:
        await side.record(request_id)
    return sent


async def all_pages(ops: httpx.AsyncClient, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every record the endpoint lists for `params`, following next_cursor; and the page count."""
    records: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        res = await ops.get("/ops/requests", params={**params, **({"cursor": cursor} if cursor else {})})
        assert res.status_code == 200, res.text
        body = res.json()
        pages += 1
        records += body["requests"]
        cursor = body["next_cursor"]
        if cursor is None:
            return records, pages


def ops_client(side: RunningSidecar) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=side.ops_url, headers=OPS_HEADERS, timeout=30)


async def test_paging_with_filters_lists_exactly_what_was_sent_newest_first(side: RunningSidecar) -> None:
    sent = await send(side, 14)
    newest_first = [s[0] for s in reversed(sent)]
    async with ops_client(side) as ops:
        listed, pages = await all_pages(ops, limit=4)
        assert [r["request_id"] for r in listed] == newest_first and pages == 4
        for record in listed:
            validate_record(record)
        by_id = {r["request_id"]: r for r in listed}
        assert all(by_id[rid]["user"] == u and by_id[rid]["team"] == t for rid, u, t, _ in sent)

        for params, keep in [
            ({"user": "alice"}, lambda s: s[1] == "alice"),
            ({"team": "quant"}, lambda s: s[2] == "quant"),
            ({"team": "quant", "model": MODEL}, lambda s: s[2] == "quant" and s[3] == MODEL),
            ({"outcome": "upstream_error"}, lambda s: s[3] == "missing"),
            ({"outcome": "ok", "user": "carol"}, lambda s: s[1] == "carol"),
            ({"since": "1h"}, lambda s: True),
            ({"since": "2999-01-01T00:00:00Z"}, lambda s: False),
        ]:
            listed, _ = await all_pages(ops, limit=3, **params)
            assert [r["request_id"] for r in listed] == [s[0] for s in reversed(sent) if keep(s)], params

        first = (await ops.get("/ops/requests")).json()  # default limit: 20, all of them
        assert len(first["requests"]) == 14 and first["next_cursor"] is None


async def test_a_cursor_is_stable_while_new_records_arrive(side: RunningSidecar) -> None:
    sent = [s[0] for s in await send(side, 6)]
    async with ops_client(side) as ops:
        page1 = (await ops.get("/ops/requests", params={"limit": 3})).json()
        assert [r["request_id"] for r in page1["requests"]] == sent[:2:-1]
        newer = [s[0] for s in await send(side, 2)]
        page2 = (await ops.get("/ops/requests", params={"limit": 3, "cursor": page1["next_cursor"]})).json()
        assert [r["request_id"] for r in page2["requests"]] == sent[2::-1]  # no repeats, nothing skipped
        assert page2["next_cursor"] is None
        fresh = (await ops.get("/ops/requests", params={"limit": 3})).json()
        assert [r["request_id"] for r in fresh["requests"]] == [*newer[::-1], sent[-1]]


async def test_one_record_by_id_and_404_for_an_unknown_id(side: RunningSidecar) -> None:
    (request_id, *_), *_ = await send(side, 1)
    stored = await side.record(request_id)
    async with ops_client(side) as ops:
        one = await ops.get(f"/ops/requests/{request_id}")
        missing = await ops.get("/ops/requests/no-such-id")
    assert one.status_code == 200 and one.json() == stored.to_dict()
    validate_record(one.json())
    assert missing.status_code == 404
    assert missing.json() == {"error": {"type": "not_found", "message": "no request with id 'no-such-id'"}}


@pytest.mark.parametrize(
    ("params", "in_message"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000"),
        ({"cursor": "not-a-cursor!"}, "is not one this API handed out"),
        ({"cursor": "aWQ6LTM"}, "is not one this API handed out"),  # base64 of "id:-3"
        ({"cursor": "MTIz"}, "is not one this API handed out"),  # base64 of "123"
        ({"since": "yesterday"}, "since: invalid time 'yesterday'"),
        ({"outcome": "fine"}, "unknown outcome 'fine'"),
    ],
)
async def test_bad_parameters_are_400_with_what_is_wrong(
    side: RunningSidecar, params: dict[str, str], in_message: str
) -> None:
    await send(side, 1)
    async with ops_client(side) as ops:
        res = await ops.get("/ops/requests", params=params)
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["type"] == "bad_request" and in_message in error["message"], error
    if "outcome" in params:
        assert error["allowed"] == ["ok", "upstream_error", "rejected", "client_cancelled", "proxy_error"]


PROMPT = "Tell me the secret plan for the next quarter, please."


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("off", None), ("truncated", "Tell me the… [truncated: 42 more characters]"), ("full", PROMPT)],
)
async def test_the_prompt_is_shown_only_as_captured(
    sim_openai: SimulatedLLM, start_sidecar: Callable[..., Any], mode: str, shown: str | None
) -> None:
    side: RunningSidecar = await start_sidecar(
        sim_openai.url, auth="jwt", jwt_secret=SECRET, capture_prompts=mode, capture_prompts_chars=11
    )
    (request_id, *_), *_ = await send(side, 1, prompt=PROMPT)
    async with ops_client(side) as ops:
        one = (await ops.get(f"/ops/requests/{request_id}")).json()
        listed = (await ops.get("/ops/requests")).json()["requests"]
    assert one["prompt"] == shown and listed[0]["prompt"] == shown
