"""`sidemeter smoke-test`: passes against a working sidecar, and against a stopped or broken one
exits 1 naming the first step that failed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from click.testing import CliRunner, Result

from agent.cli import main
from agent.sim import SimulatedLLM
from agent.smoke import REQUEST_ID_PREFIX, SMOKE_USER, STEPS
from agent.store.database import open_database
from agent.store.queries import iter_records
from tests.support.sidecar import RunningSidecar

SECRET = "smoke-test-secret-" + "y" * 40
ENV = {"SIDEMETER_JWT_SECRET": SECRET, "SIDEMETER_AUTH": "jwt"}


async def _smoke(target: str, ops: str, *args: str) -> Result:
    argv = ["smoke-test", "--target", target, "--ops", ops, "--timeout", "10", *args]
    return await asyncio.to_thread(CliRunner().invoke, main, argv, env=ENV, catch_exceptions=False)


async def test_passes_against_a_working_sidecar_and_leaves_tagged_records(
    start_sidecar: Callable[..., object],
) -> None:
    sim = SimulatedLLM("ollama", token_delay=0.001)
    upstream = await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(upstream, auth="jwt", jwt_secret=SECRET)  # type: ignore[misc]
        res = await _smoke(side.url, side.ops_url)
        assert side.sidecar.store.flush(10)
    finally:
        await sim.stop()
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"✓ {name}" for name, _ in STEPS]
    assert lines[-1] == "smoke test passed"
    db = open_database(side.sidecar.config.db)
    try:
        mine = [r for r in iter_records(db) if r.request_id.startswith(REQUEST_ID_PREFIX)]
    finally:
        db.close()
    assert len(mine) == 5  # a bad token, then four tiny requests
    assert {r.user for r in mine if r.status == 200} == {SMOKE_USER}
    assert all((r.completion_tokens or 0) <= 8 for r in mine)


async def test_a_stopped_deployment_fails_at_the_first_step() -> None:
    res = await _smoke("http://127.0.0.1:9", "http://127.0.0.1:9")
    assert res.exit_code == 1
    (line,) = res.stdout.splitlines()  # the first step fails, and nothing runs after it
    assert line.startswith("✗ ops health (/ops/health): cannot reach http://127.0.0.1:9/ops/health (")
    assert "smoke test FAILED at: ops health (/ops/health)" in res.stderr


async def test_an_unreachable_model_server_fails_naming_the_step(
    start_sidecar: Callable[..., object],
) -> None:
    side: RunningSidecar = await start_sidecar("http://127.0.0.1:9", auth="jwt", jwt_secret=SECRET)  # type: ignore[misc]
    res = await _smoke(side.url, side.ops_url, "--model", "sim-model")
    assert res.exit_code == 1
    assert res.stdout.startswith("✗ ops health (/ops/health): /ops/health answered 503")
