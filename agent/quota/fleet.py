"""Quotas shared by every sidecar of a PostgreSQL store: a thread adds what this sidecar's
finished requests used to the shared counters every `quota_sync_interval` and reads back the
fleet totals in the same statement (`agent/store/counters.py`); the ledger then admits against
the others' usage as of that sync plus its own. The request path never waits on it.

When no sync has succeeded for `quota_stale_after`, the counters are stale: limits of the
`closed` kinds refuse (503) until a sync succeeds again, the `open` ones admit on what this
sidecar knows (the fleet's usage at the last sync plus its own since). Rates are the
per-minute limits; budgets the per-day and per-month ones.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import peewee

from agent.quota.ledger import Ledger, Window
from agent.quota.rules import DAY, MINUTE, MONTH
from agent.store.counters import Push, WindowKey, add_and_read, current, delete_ended
from agent.store.database import first_line, open_database

log = logging.getLogger("sidemeter.quota")

OPEN: Final = "open"
CLOSED: Final = "closed"
MODES: Final = (OPEN, CLOSED)
RATE_PERIODS: Final = frozenset({MINUTE})
BUDGET_PERIODS: Final = frozenset({DAY, MONTH})
_KEEP_ENDED_S: Final = 3600  # counters of windows over for longer than this are deleted
_CLEAN_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class SyncState:
    """What /ops/health says of the shared counters."""

    state: str  # synced or stale
    last_sync: float | None  # epoch seconds of the last successful sync
    last_error: str | None
    syncs: int
    failures: int


def closed_periods(rates: str, budgets: str) -> frozenset[str]:
    """The windows whose limits refuse while the counters are stale."""
    return (RATE_PERIODS if rates == CLOSED else frozenset()) | (
        BUDGET_PERIODS if budgets == CLOSED else frozenset()
    )


def load_fleet(ledger: Ledger, db: peewee.Database) -> int:
    """Load the current windows' fleet counters into `ledger` (a start in fleet mode: the
    shared counters, not the records, since the fleet's deltas go there); returns how many.
    Blocks: run it off the event loop."""
    starts = {p: int(s) for p, s in ledger.window_starts().items()}
    rows = current(db, starts)
    return sum(ledger.load_fleet(k.rule, k.scope, k.period, k.window_start, a) for k, a in rows)


class FleetSync:
    """The sync thread: see the module docstring. `tick()` is one round, for tests and stop."""

    def __init__(
        self,
        ledger: Ledger,
        url: str,
        *,
        interval: float,
        stale_after: float,
        closed: frozenset[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.url = url
        self.interval = interval
        self.stale_after = stale_after
        self.clock = clock
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.syncs = 0
        self.failures = 0
        self._db: peewee.Database | None = None
        self._next_clean = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ledger.closed = closed
        ledger.shared = True  # ended windows wait for their last push before pruning

    def started(self, at: float) -> None:
        """The counters were loaded at `at`: fresh from then on."""
        self._synced(at)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sidemeter-quota-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last push of what this sidecar counted. Blocks."""
        self._stop.set()
        if self._thread is None:
            return  # never started: nothing counted
        self._thread.join(self.interval + 30)
        self._thread = None
        self.tick()
        if self._db is not None:
            self._db.close()
            self._db = None

    def state(self) -> SyncState:
        return SyncState(
            "synced" if self.clock() < self._fresh_until() else "stale",
            self.last_sync,
            self.last_error,
            self.syncs,
            self.failures,
        )

    def _fresh_until(self) -> float:
        return -math.inf if self.last_sync is None else self.last_sync + self.stale_after

    def _synced(self, at: float) -> None:
        self.last_sync = at
        self.ledger.fresh_until = self._fresh_until() if self.ledger.closed else math.inf

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> bool:
        """One sync: push the deltas, read the totals back; False (and nothing changed) when the
        store failed."""
        began = self.clock()
        pushes, reads, windows, costs = self._collect(began)
        try:
            if self._db is None:
                self._db = open_database(self.url)
            totals = add_and_read(self._db, pushes, reads)
            if began >= self._next_clean:
                delete_ended(self._db, int(began) - _KEEP_ENDED_S)
                self._next_clean = began + _CLEAN_EVERY_S
        except Exception as exc:  # any driver or store error: the counters go stale, never the loop
            self._failed(exc)
            return False
        for push in pushes:  # added to the table: no longer this sidecar's to push
            s = windows[push.key].synced
            d = push.delta
            s[0] += d[0]
            s[1] += d[1]
            s[2] += d[2]
            s[3] += d[3]
            s[4] = costs[push.key]  # the value pushed from, not a float sum that may miss it
        for key, total in totals.items():
            w = windows[key]
            s = w.synced
            w.others[:] = (
                total[0] - s[0],
                total[1] - s[1],
                total[2] - s[2],
                total[3] - s[3],
                max(0.0, total[4] - s[4]),  # a float's rounding never makes the others' cost negative
            )
        self.syncs += 1
        if self.last_error is not None:
            log.info("quota counters synced with the store again")
        self.last_error = None
        self._synced(began)
        return True

    def _collect(
        self, now: float
    ) -> tuple[list[Push], list[WindowKey], dict[WindowKey, Window], dict[WindowKey, float]]:
        """The windows to push (usage not shared yet, ended ones included) and to read
        (current), and the cost each push was taken from."""
        pushes: list[Push] = []
        reads: list[WindowKey] = []
        windows: dict[WindowKey, Window] = {}
        costs: dict[WindowKey, float] = {}
        for (rule, key), scope in list(self.ledger.scopes.items()):
            for period, w in list(scope.windows.items()):
                u, s = w.used, w.synced
                cost = u[4]  # a snapshot: the loop adds on
                delta = (int(u[0] - s[0]), int(u[1] - s[1]), int(u[2] - s[2]), int(u[3] - s[3]), cost - s[4])
                wk = WindowKey(rule, key, period, int(w.start))
                if any(delta):
                    pushes.append(Push(wk, int(w.end), delta))
                    costs[wk] = cost
                elif now < w.end:
                    reads.append(wk)
                else:
                    continue
                windows[wk] = w
        return pushes, reads, windows, costs

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        error = f"quota sync with the store failed: {first_line(exc)}"
        if error != self.last_error:
            log.warning("%s; the counters are stale after %gs without a sync", error, self.stale_after)
        self.last_error = error
        if self._db is not None:  # a fresh connection next time
            with contextlib.suppress(Exception):  # the connection is broken already
                self._db.close()
            self._db = None
