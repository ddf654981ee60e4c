"""`/ops/services` against the running sidecar: the upstream's kind, version and models as each
simulated server reports them, servers the prober does not know, the sidecar's own entry, and
what the probes send upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiohttp import web

from agent.sim import SimulatedLLM
from agent.sim.llamacpp import LLAMACPP_BUILD
from agent.sim.ollama import OLLAMA_VERSION
from agent.sim.vllm import VLLM_VERSION
from agent.upstream import USER_AGENT
from tests.support.ops import SECRET, generate, ops_token, poll, simulated, token
from tests.support.sidecar import RunningSidecar

EXPECTED = {
    "ollama": ("ollama", OLLAMA_VERSION),
    "vllm": ("openai", VLLM_VERSION),
    "llamacpp": ("openai", LLAMACPP_BUILD),
}


async def services(side: RunningSidecar, bearer: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx.AsyncClient() as http:
        res = await http.get(side.ops_url + "/ops/services", headers=headers)
    assert res.status_code == 200, res.text
    return res.json()["services"]


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llamacpp"])
async def test_the_upstream_entry_names_kind_version_and_models(kind: str, start_sidecar: Any) -> None:
    sim = simulated(kind)
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url, auth="jwt", jwt_secret=SECRET)
        upstream, me = await services(side, ops_token())
        dialect, version = EXPECTED[kind]
        assert upstream | {"latency_ms": None, "last_checked": None} == {
            "type": "upstream",
            "id": "upstream-0",
            "sidecar": me["id"],
            "url": sim.url,
            "dialect": dialect,
            "kind": kind,
            "version": version,
            "models": sim.models,
            "loaded_models": [] if kind == "ollama" else None,
            "reachable": True,
            "latency_ms": None,
            "last_error": None,
            "last_checked": None,
        }
        assert upstream["latency_ms"] > 0 and upstream["last_checked"].endswith("Z")
        assert me["type"] == "sidecar" and me["self"] is True and me["auth"] == "jwt"
    finally:
        await sim.stop()


async def test_ollama_models_in_memory_appear_once_loaded(start_sidecar: Any) -> None:
    sim = SimulatedLLM("ollama")
    await sim.start()
    try:
        side: RunningSidecar = await start_sidecar(sim.url, probe_interval=0.1)
        assert (await services(side))[0]["loaded_models"] == []
        async with httpx.AsyncClient() as http:
            await generate(http, side.url, "ollama", None)  # loads sim-model:latest
        loaded = await poll(
            lambda: services(side),
            lambda s: s[0]["loaded_models"] == ["sim-model:latest"],
            what="sim-model in loaded_models",
        )
        assert loaded[0]["models"] == sim.models
    finally:
        await sim.stop()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_other_servers_are_openai_compatible_or_unknown(start_sidecar: Any) -> None:
    plain = web.Application()

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-local", "object": "model"}]})

    plain.router.add_get("/v1/models", models)
    nothing = web.Application()  # answers 404 to everything
    runners = []
    try:
        for app, kind, model_list, error in (
            (plain, "openai_compatible", ["gpt-local"], None),
            (nothing, "unknown", [], "no known LLM server API answered"),
        ):
            runner, url = await _serve(app)
            runners.append(runner)
            side: RunningSidecar = await start_sidecar(url)
            upstream = (await services(side))[0]
            assert (upstream["kind"], upstream["models"], upstream["version"]) == (kind, model_list, None)
            assert upstream["reachable"] is True  # it answers HTTP, whatever it is
            assert upstream["dialect"] == ("openai" if kind == "openai_compatible" else None)
            assert (
                upstream["last_error"] is None if error is None else upstream["last_error"].startswith(error)
            )
    finally:
        for runner in runners:
            await runner.cleanup()


class NotingLLM(SimulatedLLM):
    """A simulated vLLM noting each request's path, User-Agent and Authorization values."""

    def __init__(self) -> None:
        super().__init__("openai", flavor="vllm")
        self.seen: list[tuple[str, str | None, list[str]]] = []

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def note(request: web.Request, handler: Any) -> web.StreamResponse:
            auth = request.headers.getall("Authorization", [])
            self.seen.append((request.path, request.headers.get("User-Agent"), auth))
            return await handler(request)

        app.middlewares.insert(0, note)
        return app


@pytest.mark.parametrize("api_key", ["vllm-key-123", None])
async def test_probes_send_the_upstream_api_key_never_a_clients_token(
    start_sidecar: Any, api_key: str | None
) -> None:
    sim = NotingLLM()
    url = await sim.start()
    seen = sim.seen
    try:
        side: RunningSidecar = await start_sidecar(
            url, auth="jwt", jwt_secret=SECRET, upstream_api_key=api_key, probe_interval=0.1
        )
        async with httpx.AsyncClient() as http:
            await generate(http, side.url, "openai", token("carol", team="quant"))
        await poll(
            lambda: services(side, ops_token()),
            lambda _: sum(agent == USER_AGENT for _, agent, _ in seen) >= 6,
            what="a second round of probes",
        )
    finally:
        await sim.stop()
    probes = [auth for _, agent, auth in seen if agent == USER_AGENT]
    assert probes and all(auth == ([f"Bearer {api_key}"] if api_key else []) for auth in probes)
    paths = {path for path, agent, _ in seen if agent == USER_AGENT}
    assert paths >= {"/version", "/v1/models"}


async def test_the_sidecar_entry_describes_this_sidecar(
    sim_ollama: SimulatedLLM, start_sidecar: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "sidemeter-7d9f-x2k4")
    monkeypatch.setenv("POD_NAMESPACE", "llm")
    monkeypatch.setenv("NODE_NAME", "gpu-node-3")
    side: RunningSidecar = await start_sidecar(sim_ollama.url)
    upstream, me = await services(side)  # a fleet of one: nobody else writes to this store
    proxy_port, ops_port = side.sidecar.proxy_port, side.sidecar.ops_port
    volatile = dict.fromkeys(("version", "started", "last_seen", "last_heartbeat"))
    assert me | volatile == {
        "type": "sidecar",
        "id": "sidemeter-7d9f-x2k4",
        "self": True,
        "state": "live",
        "version": None,
        "upstream": sim_ollama.url,
        "listen": f"127.0.0.1:{proxy_port}",
        "ops_listen": f"127.0.0.1:{ops_port}",
        "auth": "off",
        "store": "sqlite",
        "pod": "sidemeter-7d9f-x2k4",
        "namespace": "llm",
        "node": "gpu-node-3",
        "started": None,
        "last_seen": None,
        "stopped": None,
        "last_heartbeat": None,
        "heartbeat_error": None,
        "conflict": None,
    }
    assert me["version"] and me["last_seen"].endswith("Z")
    assert me["started"] <= me["last_heartbeat"] <= me["last_seen"]  # registered at start
    assert upstream["sidecar"] == me["id"]
