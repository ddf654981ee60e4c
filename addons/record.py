"""Hand every finished flow's usage record to the store: exactly one record per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons.flowstate import state_of
from agent.records import Outcome, UsageRecord, bound_text_fields
from agent.settings import declare_options
from agent.store.writer import UsageStore


class Recorder:
    """Submits the flow's record once, on `response` or `error`, whichever ends the flow.

    The runtime passes its own store; standalone under `mitmdump -s` the recorder opens
    the one named by the `sidemeter_db` option."""

    def __init__(self, store: UsageStore | None = None) -> None:
        self.store = store
        self.instance: str | None = None  # stamped on every record: the runtime sets it at start
        self._owns_store = store is None
        self._live: dict[int, http.HTTPFlow] = {}  # flows between requestheaders and their record
        self.idle = asyncio.Event()  # set while nothing is in flight; the graceful stop waits on it
        self.idle.set()
        # Called with each record as it is submitted (metrics, tests); must be quick.
        self.listeners: list[Callable[[UsageRecord], None]] = []

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def live_flows(self) -> list[http.HTTPFlow]:
        """The flows whose record is not submitted yet."""
        return list(self._live.values())

    def cut(self, reason: str) -> int:
        """Mark every flow in flight as failed by the sidecar with `reason` (a stop cuts them
        next); each is recorded as usual when its `error` hook fires. Returns how many."""
        for flow in self._live.values():
            rec = state_of(flow).record
            if rec.outcome != Outcome.PROXY_ERROR:
                rec.outcome, rec.error = Outcome.PROXY_ERROR, reason
        return len(self._live)

    def load(self, loader: Loader) -> None:
        declare_options(loader, "store")  # sidemeter_db, sidemeter_journal

    def running(self) -> None:
        if self.store is None:
            self.store = UsageStore(ctx.options.sidemeter_db, journal=ctx.options.sidemeter_journal)
            self.store.start()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._live[id(flow)] = flow
        self.idle.clear()
        state_of(flow).in_flight = True

    def response(self, flow: http.HTTPFlow) -> None:
        rec = state_of(flow).record
        if rec.status is None and flow.response is not None:
            rec.status = flow.response.status_code
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        # No fallback to flow.response here: unless it was streamed, its headers never reached
        # the client (the meter sets the status the client did get).
        self._finish(flow)

    def done(self) -> None:
        if self._owns_store and self.store is not None:
            self.store.close()

    def _finish(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state.recorded:
            return  # an error after the response (or vice versa) must not count twice
        state.recorded = True
        if state.in_flight:
            state.in_flight = False
            self._live.pop(id(flow), None)
            if not self._live:
                self.idle.set()
        rec = state.record
        if rec.latency_ms is None:
            rec.latency_ms = round((time.time() - flow.request.timestamp_start) * 1000, 3)
        self.submit(rec)

    def submit(self, rec: UsageRecord) -> None:
        """Store `rec` and tell the listeners: every record passes here, flow or not (a request
        head refused before mitmproxy made a flow of it), with its text fields bounded."""
        if rec.instance is None:
            rec.instance = self.instance
        bound_text_fields(rec)
        if self.store is not None:
            self.store.submit(rec)
        for listener in self.listeners:
            listener(rec)


addons = [Recorder()]
