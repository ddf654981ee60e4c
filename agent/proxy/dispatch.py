"""Hook dispatch and option reads for the sidecar's embedded master, without mitmproxy's
per-event overhead.

Per-request costs of mitmproxy's own machinery that the profile (bench/cpu_profile.py) showed,
and what replaces each:

- For every event, mitmproxy's stock `AddonManager` walks every addon and its sub-addons with
  `getattr`, enters a context manager and creates a coroutine per addon, rebuilds the hook's
  argument list per handler, and then does it all again for an `update` event after every
  flow event. `HookIndex` finds each event's handlers once and calls just those.
- mitmproxy's connection handler starts an asyncio task for every hook (four per request) and
  only feeds the hook's completion back into the connection on a later loop iteration.
  `InlineHookHandler` runs the hooks right after the event that raised them, in the same task.
- Every read of an option fails a normal attribute lookup and then deep-copies the value,
  twice when it is at its default, and the HTTP layer reads several for every request and body
  (`check_body_size`, 4 times a request, reads 3-4 once `body_size_limit` is set).
  `SidecarOptions` reads them through class attributes and hands out immutable values as they
  are.

What these need of mitmproxy's private parts is in agent/proxy/internals.py.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mitmproxy import exceptions, flow, hooks, options
from mitmproxy.addonmanager import AddonManager, traverse
from mitmproxy.proxy import commands, events, mode_servers
from mitmproxy.proxy.layer import CommandGenerator, Layer

from agent.proxy.internals import OptionValue, use_connection_handler

# The stock manager's logger, so an addon's crash is reported exactly where it always was.
logger = logging.getLogger("mitmproxy.addonmanager")

Handler = Callable[..., Any]
HandlerError = Callable[[Handler, hooks.Hook, Exception], None]
"""Told of each exception a handler raised (handler, event, exception), after it is logged."""


class SidecarOptions(options.Options):
    """mitmproxy's options, read faster: a stock read fails the normal attribute lookup first
    (an AttributeError raised and caught) before `__getattr__` deep-copies the value, twice at
    a default. Each option here is a class attribute that reads it directly (~4x faster) and
    still copies lists, sets and other mutable values, as the stock manager promises."""

    def add_option(self, name: str, typespec: Any, default: Any, help: str, choices: Any = None) -> None:
        if not hasattr(SidecarOptions, name):  # never shadow a method of the manager
            setattr(SidecarOptions, name, OptionValue(name))
        super().add_option(name, typespec, default, help, choices)


class HookIndex(AddonManager):
    """An `AddonManager` that indexes handlers by event name.

    Behaves like the stock manager for addons added, registered or removed through it (the
    index is rebuilt after each change). One difference, deliberate: an addon whose handler
    raises does not skip its own sub-addons' handlers for that event. `on_error`, when set,
    hears of every exception a handler raised (the stock manager only logs it)."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._index: dict[str, tuple[Handler, ...]] = {}
        self.on_error: HandlerError | None = None

    def handlers(self, name: str) -> tuple[Handler, ...]:
        """The callables that handle event `name`, in chain order (sub-addons after their parent)."""
        found = self._index.get(name)
        if found is None:
            found = self._index[name] = tuple(_handlers(self.chain, name))
        return found

    # -- keeping the index right ------------------------------------------------------

    def register(self, addon: Any) -> Any:
        self._index.clear()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._index.clear()  # register() ran before the chain held the addon

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._index.clear()

    def clear(self) -> None:
        super().clear()
        self._index.clear()

    # -- dispatch ----------------------------------------------------------------------

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self._index.get(event.name)
        if handlers is None:
            handlers = self.handlers(event.name)
        if not handlers:
            return
        args = event.args()
        for handler in handlers:
            try:
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as exc:
                logger.error(f"Addon error: {exc}", exc_info=True)
                if self.on_error is not None:
                    self.on_error(handler, event, exc)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers("update"):
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))


def _handlers(chain: list[Any], name: str) -> list[Handler]:
    found = []
    for addon in traverse(chain):
        func = getattr(addon, name, None)
        if not func or isinstance(func, types.ModuleType):
            continue  # e.g. `from mitmproxy import log` in an addon is not a `log` hook
        if not callable(func):
            raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
        found.append(func)
    return found


# -- hooks without a task each -----------------------------------------------------------


class _HookCatcher:
    """A connection's root layer, with two changes to the commands it hands mitmproxy's loop:

    - the hooks it raises are set aside (for `InlineHookHandler`) instead of each becoming a task;
    - consecutive writes to the same connection become one: mitmproxy writes every HTTP chunk
      and every header block with a syscall of its own, so a stream whose 66 events arrive in
      one read went out in 66 writes, and a plain request in two. Nothing waits for this: the
      commands of one event are all handled in the same pass of the loop."""

    def __init__(self, layer: Layer, hooks: deque[commands.StartHook]) -> None:
        self.layer = layer
        self.hooks = hooks

    def handle_event(self, event: events.Event) -> CommandGenerator[None]:
        return coalesce_writes(self.layer.handle_event(event), self.hooks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)


def coalesce_writes(
    layer_commands: Iterable[commands.Command], hooks: deque[commands.StartHook]
) -> Iterator[commands.Command]:
    """The commands, in order, minus the hooks (appended to `hooks`), with each run of
    `SendData` to one connection joined into one."""
    send: commands.SendData | None = None
    parts: list[bytes] = []
    for command in layer_commands:
        if type(command) is commands.SendData:
            if send is not None and command.connection is send.connection:
                parts.append(command.data)
                continue
            if send is not None:
                yield _joined(send, parts)
            send, parts = command, [command.data]
        elif isinstance(command, commands.StartHook):
            hooks.append(command)
        else:
            if send is not None:
                yield _joined(send, parts)
                send = None
            yield command
    if send is not None:
        yield _joined(send, parts)


def _joined(send: commands.SendData, parts: list[bytes]) -> commands.SendData:
    return send if len(parts) == 1 else commands.SendData(send.connection, b"".join(parts))


class InlineHookHandler(mode_servers.ProxyConnectionHandler):
    """mitmproxy's connection handler, running the hooks an event raises right after that event
    in the same task, instead of starting a task per hook (four per request, each one more trip
    through the event loop).

    As with the stock handler, a flow's hooks run one at a time and outside the layers' event
    processing, and other connections go on while a hook awaits something. What changes: no
    other callback runs between an event and its hooks, and while an async hook is waiting,
    this connection's reader waits with it (an HTTP/1 client has nothing else in flight).
    Hooks must finish well inside the idle timeout, which the stock handler suspends during
    a hook; an intercepted flow is waited for as the stock handler does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._hooks: deque[commands.StartHook] = deque()
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def layer(self) -> Any:
        return self._catcher

    @layer.setter
    def layer(self, value: Layer) -> None:  # set by ConnectionHandler, then again by the server
        self._catcher = _HookCatcher(value, self._hooks)

    async def server_event(self, event: events.Event) -> None:
        await super().server_event(event)
        hooks = self._hooks
        while hooks:
            hook = hooks.popleft()
            try:
                await self.master.addons.handle_lifecycle(hook)
            except Exception:  # what HookIndex lets through (OptionsError): still finish the hook
                self.log(f"hook {hook.name} failed", logging.ERROR, exc_info=True)
            (data,) = hook.args()
            if isinstance(data, flow.Flow) and data.intercepted:
                await data.wait_for_resume()
            if hook.blocking:
                await super().server_event(events.HookCompleted(hook))


def use_inline_hooks() -> Callable[[], None]:
    """Have mitmproxy's servers in this process build `InlineHookHandler`s for new connections;
    returns the function that undoes it (counted, so sidecars may overlap in one process)."""
    return use_connection_handler(InlineHookHandler)
