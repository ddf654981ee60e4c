"""HookIndex calls the same handlers, in the same order, with the same results as mitmproxy's own
AddonManager, and keeps doing so as addons come and go."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httpx
import pytest
from mitmproxy import exceptions, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.http import HTTPFlow
from mitmproxy.master import Master
from mitmproxy.proxy import commands, mode_servers
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.proxy.server_hooks import ClientConnectedHook
from mitmproxy.test import tflow

from agent.proxy.dispatch import HookIndex, SidecarOptions, coalesce_writes
from agent.proxy.limits import LimitedConnectionHandler
from agent.sim import SimulatedLLM
from tests.support.sidecar import RunningSidecar


class Probe:
    """Writes every call to a shared log; `name` keeps addons apart in mitmproxy's lookup."""

    def __init__(self, name: str, calls: list[str], *, sub: list[Any] | None = None) -> None:
        self.name = name
        self.calls = calls
        if sub is not None:
            self.addons = sub

    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}.request {flow.request.path}")


class AsyncProbe(Probe):
    async def request(self, flow: HTTPFlow) -> None:
        await asyncio.sleep(0)  # a real suspension: the next handler must wait for it
        self.calls.append(f"{self.name}.request {flow.request.path}")

    def response(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}.response")


class Halting(Probe):
    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}.request halts")
        raise exceptions.AddonHalt


class Crashing(Probe):
    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}.request crashes")
        raise ValueError("boom in request")


class Watcher(Probe):
    def update(self, flows: list[HTTPFlow]) -> None:
        self.calls.append(f"{self.name}.update {len(flows)}")


def build(manager: type[AddonManager], make_addons: Any) -> tuple[Master, list[str]]:
    master = Master(options.Options())
    master.addons = manager(master)
    calls: list[str] = []
    master.addons.add(*make_addons(calls))
    return master, calls


async def run_both(make_addons: Any, *events: Any) -> tuple[list[str], list[str]]:
    logs = []
    for manager in (AddonManager, HookIndex):
        master, calls = build(manager, make_addons)
        for event in events:
            await master.addons.handle_lifecycle(event)
        logs.append(calls)
    return logs[0], logs[1]


def request_hook(path: str = "/v1/chat/completions") -> HttpRequestHook:
    flow = tflow.tflow()
    flow.request.path = path
    return HttpRequestHook(flow)


async def test_handlers_run_in_chain_order_with_sub_addons_and_async_ones_awaited() -> None:
    def addons(calls: list[str]) -> list[Any]:
        child = AsyncProbe("child", calls)
        return [Probe("a", calls, sub=[child]), Probe("b", calls), AsyncProbe("c", calls)]

    stock, ours = await run_both(addons, request_hook("/one"), HttpResponseHook(tflow.tflow(resp=True)))
    assert (
        ours
        == stock
        == [
            "a.request /one",
            "child.request /one",
            "b.request /one",
            "c.request /one",
            "child.response",
            "c.response",
        ]
    )


async def test_addon_halt_stops_the_handlers_after_it() -> None:
    def addons(calls: list[str]) -> list[Any]:
        return [Probe("a", calls), Halting("halt", calls), Probe("b", calls)]

    stock, ours = await run_both(addons, request_hook())
    assert ours == stock == ["a.request /v1/chat/completions", "halt.request halts"]


async def test_a_crashing_handler_is_logged_and_the_next_addon_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def addons(calls: list[str]) -> list[Any]:
        return [Crashing("crash", calls), Probe("b", calls)]

    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        stock, ours = await run_both(addons, request_hook())
    assert ours == stock == ["crash.request crashes", "b.request /v1/chat/completions"]
    errors = [r for r in caplog.records if r.name == "mitmproxy.addonmanager"]
    assert [r.getMessage() for r in errors] == ["Addon error: boom in request"] * 2
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in errors)


async def test_update_follows_flow_events_only_when_an_addon_listens() -> None:
    def addons(calls: list[str]) -> list[Any]:
        return [Probe("a", calls), Watcher("w", calls)]

    stock, ours = await run_both(addons, request_hook(), ClientConnectedHook(tflow.tclient_conn()))
    assert ours == stock == ["a.request /v1/chat/completions", "w.request /v1/chat/completions", "w.update 1"]

    master, calls = build(HookIndex, lambda calls: [Probe("a", calls)])
    assert master.addons.handlers("update") == ()
    await master.addons.handle_lifecycle(request_hook())
    assert calls == ["a.request /v1/chat/completions"]


async def test_the_index_follows_addons_added_registered_and_removed() -> None:
    master, calls = build(HookIndex, lambda calls: [Probe("a", calls), Probe("parent", calls, sub=[])])
    await master.addons.handle_lifecycle(request_hook("/1"))
    master.addons.add(Probe("late", calls))
    await master.addons.handle_lifecycle(request_hook("/2"))
    master.addons.remove(master.addons.get("a"))
    await master.addons.handle_lifecycle(request_hook("/3"))
    # How an addon manages sub-addons (mitmproxy's script loader does this): into its own
    # `addons`, then registered with the manager.
    child = Probe("child", calls)
    master.addons.get("parent").addons.append(child)
    master.addons.register(child)
    await master.addons.handle_lifecycle(request_hook("/4"))
    assert calls == [
        "a.request /1",
        "parent.request /1",
        "a.request /2",
        "parent.request /2",
        "late.request /2",
        "parent.request /3",
        "late.request /3",
        "parent.request /4",
        "child.request /4",
        "late.request /4",
    ]


async def test_a_non_callable_attribute_named_like_a_hook_is_refused() -> None:
    class Broken:
        request = "not a function"

    master, _ = build(HookIndex, lambda calls: [])
    master.addons.add(Broken())
    with pytest.raises(exceptions.AddonManagerError, match="not callable"):
        master.addons.handlers("request")


# -- hooks run inline by the sidecar's connection handlers ---------------------------------

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class HookTasks:
    """Notes which task ran each `requestheaders` hook; `request` waits while `gate` is closed."""

    def __init__(self) -> None:
        self.task_names: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    def requestheaders(self, flow: HTTPFlow) -> None:
        task = asyncio.current_task()
        self.task_names.append(task.get_name() if task else "")

    async def request(self, flow: HTTPFlow) -> None:
        if flow.request.headers.get("x-hold") and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()


class CrashingHook:
    def response(self, flow: HTTPFlow) -> None:
        raise RuntimeError("addon bug in response")


async def test_the_sidecar_runs_hooks_in_the_connection_task_not_one_task_each(
    openai_side: RunningSidecar,
) -> None:
    probe = HookTasks()
    openai_side.sidecar.master.addons.add(probe)
    async with httpx.AsyncClient(base_url=openai_side.url) as client:
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200
    assert len(probe.task_names) == 3
    # mitmproxy's own handler starts a task named "handle_hook(requestheaders)" per hook.
    assert not [n for n in probe.task_names if n.startswith("handle_hook")], probe.task_names


async def test_a_waiting_hook_holds_only_its_own_request(openai_side: RunningSidecar) -> None:
    probe = HookTasks()
    probe.gate.clear()
    openai_side.sidecar.master.addons.add(probe)
    async with (
        httpx.AsyncClient(base_url=openai_side.url) as held,
        httpx.AsyncClient(base_url=openai_side.url) as other,
    ):
        slow = asyncio.create_task(held.post("/v1/chat/completions", json=CHAT, headers={"x-hold": "1"}))
        await asyncio.wait_for(probe.waiting.wait(), 10)
        fast = await other.post("/v1/chat/completions", json=CHAT)  # another connection goes on
        assert fast.status_code == 200
        assert not slow.done()
        probe.gate.set()
        assert (await asyncio.wait_for(slow, 10)).status_code == 200
    rec = await openai_side.record(fast.headers["x-request-id"])
    assert rec.outcome == "ok"


async def test_a_crashing_addon_hook_is_logged_and_the_request_still_completes(
    openai_side: RunningSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    openai_side.sidecar.master.addons.add(CrashingHook())
    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        async with httpx.AsyncClient(base_url=openai_side.url) as client:
            r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert "Addon error: addon bug in response" in [rec.getMessage() for rec in caplog.records]
    rec = await openai_side.record(r.headers["x-request-id"])
    assert (rec.outcome, rec.completion_tokens) == ("ok", 4)


async def test_the_stock_handler_is_back_once_the_sidecar_stops(
    sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    stock = mode_servers.ProxyConnectionHandler
    first = await start_sidecar(sim_openai.url)
    second = await start_sidecar(sim_openai.url)
    assert mode_servers.ProxyConnectionHandler is LimitedConnectionHandler
    await first.sidecar.stop()
    assert mode_servers.ProxyConnectionHandler is LimitedConnectionHandler  # the second still runs
    await second.sidecar.stop()
    assert mode_servers.ProxyConnectionHandler is stock is not LimitedConnectionHandler


# -- writes coalesced -----------------------------------------------------------------------


def test_runs_of_writes_to_one_connection_become_one_write_in_order() -> None:
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    hook = HttpRequestHook(tflow.tflow())
    layer_commands = [
        commands.SendData(server, b"POST / HTTP/1.1\r\n\r\n"),
        commands.SendData(server, b"{}"),
        commands.SendData(client, b"HTTP/1.1 200 OK\r\n\r\n"),
        hook,  # set aside for the handler; the writes around it still join
        commands.SendData(client, b"5\r\nhello\r\n"),
        commands.Log("a log line"),
        commands.SendData(client, b"0\r\n\r\n"),
        commands.CloseConnection(client),
        commands.SendData(server, b"last"),
    ]
    hooks: deque[commands.StartHook] = deque()
    out = list(coalesce_writes(iter(layer_commands), hooks))
    assert list(hooks) == [hook]
    summary = [
        (
            type(c).__name__,
            c.connection is client if hasattr(c, "connection") else None,
            getattr(c, "data", None),
        )
        for c in out
    ]
    assert summary == [
        ("SendData", False, b"POST / HTTP/1.1\r\n\r\n{}"),
        ("SendData", True, b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n"),
        ("Log", None, None),
        ("SendData", True, b"0\r\n\r\n"),
        ("CloseConnection", True, None),
        ("SendData", False, b"last"),
    ]
    lone = [commands.SendData(client, b"x")]
    [only] = coalesce_writes(iter(lone), hooks)
    assert only is lone[0]  # nothing to join: passed on as is


def _loaded(opts: options.Options) -> options.Options:
    """Options with every stock addon's options too, as a running master has them."""
    from mitmproxy.addons import default_addons

    manager = AddonManager(Master(opts))
    manager.add(*default_addons())
    return opts


def _values(opts: options.Options) -> dict[str, Any]:
    return {name: getattr(opts, name) for name in sorted(opts.keys())}


async def test_sidecar_options_read_like_the_stock_ones_at_defaults_and_after_updates() -> None:
    stock, ours = _loaded(options.Options()), _loaded(SidecarOptions())
    assert stock.keys() == ours.keys() and len(ours.keys()) > 50
    assert _values(ours) == _values(stock)
    changes = dict(
        body_size_limit="1m", connection_strategy="lazy", ignore_hosts=["a\\.example"], ssl_insecure=True
    )
    stock.update(**changes)
    ours.update(**changes)
    assert _values(ours) == _values(stock)
    assert ours.body_size_limit == "1m" and ours.ignore_hosts == ["a\\.example"]
    with pytest.raises(AttributeError, match="No such option: nope"):
        _ = ours.nope
    with pytest.raises(AttributeError, match="No such option: body_size_limit"):
        _ = SidecarOptions().body_size_limit  # an addon's option, not loaded into this one


async def test_sidecar_options_still_copy_mutable_values_and_see_rollbacks() -> None:
    ours = _loaded(SidecarOptions())
    ours.update(ignore_hosts=["a"])
    ours.ignore_hosts.append("b")  # a caller's copy: the option keeps its value
    assert ours.ignore_hosts == ["a"]

    def refuse(updated: set[str]) -> None:
        if "body_size_limit" in updated and ours.body_size_limit == "2m":
            raise exceptions.OptionsError("refused")

    ours.changed.connect(refuse)
    ours.update(body_size_limit="1m")
    with pytest.raises(exceptions.OptionsError):
        ours.update(body_size_limit="2m")
    assert ours.body_size_limit == "1m"  # rolled back, and read from the live option
