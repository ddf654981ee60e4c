"""`sidemeter simulate` against a running sidecar: exactly N requests through the proxy, each
attributed to its simulated user, and a summary whose figures are the clients' real ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from agent.cli import main
from agent.sim import SimulatedLLM
from agent.simulate import REQUEST_ID_PREFIX
from agent.store.database import open_database
from agent.store.queries import iter_records
from tests.support.sidecar import RunningSidecar

SECRET = "simulate-test-secret-" + "x" * 40


async def _simulate(
    side: RunningSidecar, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    runner = CliRunner()
    argv = ["simulate", "--target", side.url, "--ops", side.ops_url, "--format", "json", *args]
    res = await asyncio.to_thread(runner.invoke, main, argv, env=env or {}, catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def _records(side: RunningSidecar) -> list:
    assert side.sidecar.store.flush(10)
    db = open_database(side.sidecar.config.db)
    try:
        return [r for r in iter_records(db) if r.request_id.startswith(REQUEST_ID_PREFIX)]
    finally:
        db.close()


async def test_sends_exactly_n_requests_as_each_user_and_reports_what_clients_saw(
    tmp_path: Path, start_sidecar: Callable[..., object]
) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.001)
    upstream = await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(upstream, auth="jwt", jwt_secret=SECRET)  # type: ignore[misc]
        code, out, _ = await _simulate(
            side,
            "-n", "23",
            "--concurrency", "4",
            "--users", "alice:quant,bob:eval,carol",
            "--mix", "all",
            "--model", "sim-model",
            "--seed", "7",
            env={"SIDEMETER_JWT_SECRET": SECRET, "SIDEMETER_AUTH": "jwt"},
        )  # fmt: skip
        assert code == 0, out
        summary = json.loads(out)
        records = await asyncio.to_thread(_records, side)
    finally:
        await sim.stop()
    assert len(records) == 23 == summary["client"]["requests"]
    # The side-by-side column: every request found in the ops API under its id, same figures.
    assert summary["records_found"] == 23 and summary["ops_problem"] is None
    recorded, client = summary["recorded"], summary["client"]
    for key in ("requests", "ok", "errors_by_status", "cancelled", "tokens_in", "tokens_out"):
        assert recorded[key] == client[key], key
    by_user = {u: [r for r in records if r.user == u] for u in ("alice", "bob", "carol")}
    assert [len(v) for v in by_user.values()] == [8, 8, 7]  # users in turn
    assert {r.team for r in by_user["alice"]} == {"quant"} and {r.team for r in by_user["carol"]} == {None}
    assert {r.operation for r in records} >= {"chat", "completion", "embedding"}
    assert {r.dialect for r in records} == {"ollama", "openai"}
    assert any(r.stream for r in records) and any(not r.stream for r in records)
    assert summary["client"]["ok"] == sum(r.outcome == "ok" for r in records) == 23
    # The clients' token counts are the ones the server reported, as the sidecar recorded them.
    assert summary["client"]["tokens_out"] == sum(r.completion_tokens or 0 for r in records) > 0
    assert summary["client"]["tokens_in"] == sum(r.prompt_tokens or 0 for r in records) > 0


async def test_deliberate_faults_are_sent_and_counted_by_status(
    tmp_path: Path, start_sidecar: Callable[..., object]
) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.005)
    upstream = await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(upstream, auth="jwt", jwt_secret=SECRET)  # type: ignore[misc]
        code, out, _ = await _simulate(
            side, "-n", "30", "--fault-ratio", "0.5", "--stream-ratio", "1", "--model", "sim-model",
            "--seed", "3", env={"SIDEMETER_JWT_SECRET": SECRET, "SIDEMETER_AUTH": "jwt"},
        )  # fmt: skip
        assert code == 0, out  # deliberate faults are not failures of the run
        both = json.loads(out)
        summary = both["client"]
        records = await asyncio.to_thread(_records, side)
    finally:
        await sim.stop()
    assert len(records) == 30
    refused = [r for r in records if r.status == 401]
    unknown = [r for r in records if r.status == 404]
    cancelled = [r for r in records if r.outcome == "client_cancelled"]
    assert refused and unknown and cancelled
    assert summary["errors_by_status"] == {"401": len(refused), "404": len(unknown)}
    assert summary["cancelled"] == len(cancelled)
    assert summary["ok"] == 30 - len(refused) - len(unknown) - len(cancelled)
    for key in ("requests", "ok", "errors_by_status", "cancelled"):
        assert both["recorded"][key] == summary[key], key  # the sidecar saw what the clients saw


async def test_without_a_key_it_says_how_to_get_tokens(openai_side: RunningSidecar) -> None:
    code, _, err = await _simulate(openai_side, "-n", "1", env={"SIDEMETER_AUTH": "jwt"})
    assert code == 2
    assert "cannot mint the users' tokens: no signing key" in err and "--token" in err
    records = await asyncio.to_thread(_records, openai_side)
    assert records == []  # nothing was sent


async def test_an_unreachable_target_fails_with_the_reason(tmp_path: Path) -> None:
    runner = CliRunner()
    res = await asyncio.to_thread(
        runner.invoke,
        main,
        ["simulate", "--target", "http://127.0.0.1:9", "--ops", "http://127.0.0.1:9", "-n", "2"],
        env={"SIDEMETER_AUTH": "off"},
    )
    assert res.exit_code == 2
    assert "no request got an answer from http://127.0.0.1:9" in res.stderr
