"""Hook dispatch for the sidecar's embedded master, without mitmproxy's per-event lookups.

For every event, mitmproxy's stock `AddonManager` walks every addon and its sub-addons with
`getattr`, enters a context manager and creates a coroutine per addon, rebuilds the hook's
argument list per handler, and then does all of that again for an `update` event after every
flow event. With the sidecar's eight addons that cost more per request than the handlers
themselves (bench/cpu_profile.py). `HookIndex` finds each event's handlers once and calls
just those.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

# The stock manager's logger, so an addon's crash is reported exactly where it always was.
logger = logging.getLogger("mitmproxy.addonmanager")

Handler = Callable[..., Any]


class HookIndex(AddonManager):
    """An `AddonManager` that indexes handlers by event name.

    Behaves like the stock manager for addons added, registered or removed through it (the
    index is rebuilt after each change). One difference, deliberate: an addon whose handler
    raises does not skip its own sub-addons' handlers for that event."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._index: dict[str, tuple[Handler, ...]] = {}

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
