"""Fixtures that start the real thing: the simulated LLM server and the sidecar on loopback ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime import Sidecar
from agent.sim import SimulatedLLM
from tests.support.postgres import SKIP_REASON as POSTGRES_SKIP
from tests.support.postgres import PostgresServer, running_server
from tests.support.postgres import unavailable as postgres_unavailable
from tests.support.sidecar import RunningSidecar, sidecar_config


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/usage.db"


StartSidecar = Callable[..., "asyncio.Future[RunningSidecar]"]


@pytest.fixture
async def start_sidecar(tmp_path: Path, db_url: str) -> AsyncIterator[Callable[..., object]]:
    started: list[Sidecar] = []

    async def start(upstream: str, **kw: object) -> RunningSidecar:
        sc = Sidecar(sidecar_config(upstream, tmp_path, db_url, **kw))
        await sc.start()
        started.append(sc)
        return RunningSidecar(sc, upstream)

    yield start
    for sc in started:
        await sc.stop()


@pytest.fixture
async def sim_openai() -> AsyncIterator[SimulatedLLM]:
    sim = SimulatedLLM("openai")
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def sim_ollama() -> AsyncIterator[SimulatedLLM]:
    sim = SimulatedLLM("ollama")
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def openai_side(sim_openai: SimulatedLLM, start_sidecar: Callable[..., object]) -> RunningSidecar:
    return await start_sidecar(sim_openai.url)  # type: ignore[misc]


@pytest.fixture
async def ollama_side(sim_ollama: SimulatedLLM, start_sidecar: Callable[..., object]) -> RunningSidecar:
    return await start_sidecar(sim_ollama.url)  # type: ignore[misc]


@pytest.fixture(params=["openai", "ollama"])
async def any_side(
    request: pytest.FixtureRequest, start_sidecar: Callable[..., object]
) -> AsyncIterator[tuple[str, RunningSidecar]]:
    """The sidecar in front of a simulated server of each dialect, one per test run."""
    sim = SimulatedLLM(request.param)
    await sim.start()
    yield request.param, await start_sidecar(sim.url)  # type: ignore[misc]
    await sim.stop()


@pytest.fixture
async def paced_side(start_sidecar: Callable[..., object]) -> AsyncIterator[RunningSidecar]:
    """The sidecar in front of a vLLM-style server that produces a token every 50 ms."""
    sim = SimulatedLLM("openai", token_delay=0.05)
    await sim.start()
    yield await start_sidecar(sim.url)  # type: ignore[misc]
    await sim.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (skips, loudly, where none can run)."""
    why = postgres_unavailable()
    if why:
        pytest.skip(POSTGRES_SKIP.format(why=why))
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """An empty database of this test's own on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store suites run on both backends: a SQLite file, or an empty database of this
    test's own on the session's PostgreSQL server (skipped, loudly, where none can run)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    # A PostgreSQL store spills to ./data unless told otherwise: keep that in tmp_path too.
    request.getfixturevalue("monkeypatch").chdir(tmp_path)
    return server.new_database()
