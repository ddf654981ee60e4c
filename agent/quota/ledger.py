"""The quota ledger: per-scope counters, reservations of the requests in flight, the admission
rule. Pure and in memory: the request path never waits on anything.

The rule, per limit of the caller's rule: a request is admitted while the scope's counted usage
plus the reservations of the requests already in flight is below the limit, and refused once it
has reached it. Its own reservation never refuses it, so a user sending one request after
another is refused exactly when the counted usage reaches the limit.

Worst-case overshoot of a limit: every admitted request saw `used + in_flight < limit`, so the
usage a window ends with is below `limit + R`, where R is the largest reservation of one request
(its max_tokens, or quota_default_reservation), plus what requests used beyond their
reservations (a request without max_tokens that answered longer than the default, a prompt
longer than its estimate). requests_per_minute never overshoots. A cost budget holds, per
request, its reservation priced by the model's price (prompt estimate x input rate + output cap
x output rate, or quota_default_reservation_seconds of a gpu_hour price); requests to a model
without a price cost nothing and are not held back by it.

In a fleet (sidecars sharing a PostgreSQL store, `agent/quota/fleet.py`) each window also
counts `others`: what the other sidecars used, as of the last sync. Their in-flight
reservations, and what they finished since that sync, are invisible here, so the bound grows by
what the other sidecars admit while one's view is stale (see the README's Quotas section).
While the sync is stale (`fresh_until` has passed) the limits of `closed` periods refuse: their
decision says `unavailable`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from agent.prices import Price
from agent.quota.rules import COST, INPUT, OUTPUT, REQUESTS, TOTAL, Limit, QuotaRule, RuleIndex
from agent.quota.windows import bounds
from agent.records import Operation

Amounts = tuple[int, int, int, int, float]  # requests, input, output, total tokens, cost
EMBEDDING: Final = Operation.EMBEDDING


class Window:
    """One fixed window of one scope: usage counted from finished requests, and reserved by
    the requests in flight."""

    __slots__ = ("end", "others", "reserved", "start", "synced", "used")

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        # requests, input, output, total tokens, cost (a float: the price table's currency)
        self.used: list[float] = [0, 0, 0, 0, 0.0]  # this sidecar's finished requests (and the rebuild's)
        self.reserved: list[float] = [0, 0, 0, 0, 0.0]
        self.others: list[float] = [0, 0, 0, 0, 0.0]  # the rest of the fleet's, as of the last sync
        self.synced: list[float] = [0, 0, 0, 0, 0.0]  # the part of `used` already in the shared counters


class Scope:
    """The usage one rule counts for one user or team: a window per period the rule limits."""

    __slots__ = ("held", "key", "periods", "rule", "windows")

    def __init__(self, rule: QuotaRule, key: str) -> None:
        self.rule = rule
        self.key = key
        self.windows: dict[str, Window] = {}
        self.periods = tuple(dict.fromkeys(lim.period for lim in rule.limits))  # a request holds each once
        # The current window of each period, in `periods` order, as an admitted request holds
        # them; None once a window is replaced or dropped (rebuilt by the next admission).
        self.held: tuple[Window, ...] | None = None

    def expire(self, now: float, *, keep_unsynced: bool) -> None:
        """Drop the windows that have ended (`keep_unsynced`: not those whose usage the sync
        has yet to share; it pushes ended windows too)."""
        for period, w in list(self.windows.items()):
            if now >= w.end and not (keep_unsynced and w.used != w.synced):
                del self.windows[period]
                self.held = None


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs more a request
class Standing:
    """Where one limit of a scope stands: what the RateLimit-* headers and /ops/quotas say."""

    limit: Limit
    used: float  # whole numbers but for a cost budget
    reserved: float
    reset_at: float  # epoch seconds the window ends

    @property
    def remaining(self) -> float:
        return max(0, self.limit.value - self.used - self.reserved)

    def reset_in(self, now: float) -> int:
        return seconds_until(self.reset_at, now)


class Decision:
    """The answer for one request: admitted, holding `amounts` in `windows` until
    `Ledger.reconcile`, or refused by `refused_by`. `shown` is the standing the RateLimit-*
    headers report: of an admitted request, its tightest limit (`limit` in `window`) as it
    stands when read; of a refused one, the limit that refused it.

    A plain class rather than a dataclass, and the standing built only when read: one object
    per admitted request is what the request path can afford."""

    __slots__ = ("amounts", "limit", "refused_by", "rule", "scope", "unavailable", "window", "windows")

    def __init__(
        self,
        rule: QuotaRule,
        scope: str,
        limit: Limit,
        window: Window | None,
        windows: tuple[Window, ...] | None = None,
        amounts: Amounts | None = None,
        refused_by: Standing | None = None,
        unavailable: bool = False,  # refused because a closed limit's fleet counters are stale
    ) -> None:
        self.rule = rule
        self.scope = scope
        self.limit = limit
        self.window = window
        self.windows = windows
        self.amounts = amounts
        self.refused_by = refused_by
        self.unavailable = unavailable

    @property
    def shown(self) -> Standing:
        if self.refused_by is not None:
            return self.refused_by
        w = self.window
        assert w is not None
        m = self.limit.metric
        return Standing(self.limit, w.used[m] + w.others[m], w.reserved[m], w.end)


class Ledger:
    """Counters of every scope the rules have met, keyed by (rule, user or team)."""

    def __init__(
        self,
        rules: Iterable[QuotaRule],
        tz: ZoneInfo,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = tuple(rules)
        self.budgets = any(rule.budgets for rule in self.rules)  # a cost limit: reservations are priced
        self.index = RuleIndex(self.rules)
        self.tz = tz
        self.clock = clock
        self.scopes: dict[tuple[str, str], Scope] = {}
        # (user, team) -> their scope: one lookup instead of matching the rule and building the
        # scope's key each request; entries go with their scope (`prune`).
        self._callers: dict[tuple[str | None, str | None], Scope] = {}
        self.teams: dict[
            str, str | None
        ] = {}  # each user's latest team: whose rule `quota show --user` reads
        # Set by the fleet sync: until when its counters count as fresh, the periods whose
        # limits refuse once they are not, and whether ended windows wait for it before pruning.
        self.fresh_until = math.inf
        self.closed: frozenset[str] = frozenset()
        self.shared = False

    def __bool__(self) -> bool:
        return bool(self.rules)

    # -- the request path -----------------------------------------------------------

    def admit(self, user: str | None, team: str | None, amounts: Amounts) -> Decision | None:
        """Admit or refuse a request of `user` in `team` that would use up to `amounts`;
        None when no rule applies. An admitted request holds `amounts` until `reconcile`."""
        scope = self._callers.get((user, team))
        if scope is None:
            matched = self.index.match(user, team)
            if matched is None:
                return None
            scope = self._callers[(user, team)] = self._scope(matched, user, team)
        rule = scope.rule
        now = self.clock()
        if user is not None:
            self.teams[user] = team
        windows = scope.windows
        if now >= self.fresh_until and self.closed:
            closed = self._closed_limit(scope, now)
            if closed is not None:
                return Decision(rule, scope.key, closed.limit, None, refused_by=closed, unavailable=True)
        refused: Standing | None = None
        tightest: Limit | None = None
        tightest_left = math.inf
        for lim in rule.limits:
            w = windows.get(lim.period)
            if w is None or now >= w.end:
                w = self._window(scope, lim.period, now)
            m = lim.metric
            taken = w.used[m] + w.others[m] + w.reserved[m]
            if taken >= lim.value:
                if refused is None or w.end > refused.reset_at:  # Retry-After covers every exhausted limit
                    refused = Standing(lim, w.used[m] + w.others[m], w.reserved[m], w.end)
            elif refused is None:
                left = (lim.value - taken - amounts[m]) / lim.value
                if left < tightest_left:
                    tightest_left, tightest = left, lim
        if refused is not None:
            return Decision(rule, scope.key, refused.limit, None, refused_by=refused)
        held = scope.held
        if held is None:  # the loop above made every period's window current
            held = scope.held = tuple([windows[p] for p in scope.periods])
        for w in held:
            r = w.reserved
            r[0] += amounts[0]
            r[1] += amounts[1]
            r[2] += amounts[2]
            r[3] += amounts[3]
            r[4] += amounts[4]
        assert tightest is not None  # a rule has at least one limit
        return Decision(rule, scope.key, tightest, windows[tightest.period], held, amounts)

    def reconcile(self, admitted: Decision, actual: Amounts) -> None:
        """A request finished having used `actual`: its reservation is released and its usage
        counted, in the windows it started in (a window that has ended since is gone)."""
        assert admitted.amounts is not None and admitted.windows is not None
        h0, h1, h2, h3, h4 = admitted.amounts
        a0, a1, a2, a3, a4 = actual
        for w in admitted.windows:  # unrolled: this runs once per request
            r, u = w.reserved, w.used
            r[0] -= h0
            r[1] -= h1
            r[2] -= h2
            r[3] -= h3
            r[4] -= h4
            u[0] += a0
            u[1] += a1
            u[2] += a2
            u[3] += a3
            u[4] += a4

    # -- start-up and reads ---------------------------------------------------------

    def periods(self) -> set[str]:
        return {lim.period for rule in self.rules for lim in rule.limits}

    def window_starts(self) -> dict[str, float]:
        """The start of each current window the rules use (what a rebuild sums from)."""
        now = self.clock()
        return {p: bounds(p, now, self.tz)[0] for p in self.periods()}

    def load(self, user: str | None, team: str | None, period: str, amounts: Amounts) -> None:
        """Count `amounts` of finished requests of `user` in `team` into the current `period`
        window (the rebuild from the store at start)."""
        rule = self.index.match(user, team)
        if rule is None or all(lim.period != period for lim in rule.limits):
            return
        if user is not None:
            self.teams[user] = team
        w = self._window(self._scope(rule, user, team), period, self.clock())
        for i in (REQUESTS, INPUT, OUTPUT, TOTAL, COST):
            w.used[i] += amounts[i]

    def standings(self) -> Iterator[tuple[Scope, list[Standing]]]:
        """Every scope met so far, with where each of its limits stands now."""
        for scope in list(self.scopes.values()):
            yield scope, self.standing_of(scope)

    def standing_of(self, scope: Scope) -> list[Standing]:
        now = self.clock()
        out = []
        for lim in scope.rule.limits:
            w = self._window(scope, lim.period, now)
            m = lim.metric
            out.append(Standing(lim, w.used[m] + w.others[m], w.reserved[m], w.end))
        return out

    def load_fleet(self, rule_name: str, key: str, period: str, start: float, amounts: Amounts) -> bool:
        """Set the fleet's usage of the current `period` window of the scope `key` of the rule
        named `rule_name` (a fleet sidecar's start: the shared counters, not the records);
        False when no such rule or window is current (the rules changed, the window ended)."""
        rule = next((r for r in self.rules if r.name == rule_name), None)
        if rule is None or all(lim.period != period for lim in rule.limits):
            return False
        scope = self.scopes.get((rule_name, key))
        if scope is None:
            scope = self.scopes[(rule_name, key)] = Scope(rule, key)
        w = self._window(scope, period, self.clock())
        if w.start != start:
            return False
        w.others[:] = amounts
        return True

    # -- pruning: off the request path, at most once a minute -----------------------------

    def prune(self, keys: Iterable[tuple[str, str]], now: float) -> int:
        """Drop the ended windows of the scopes `keys`, and the scopes left without any (with
        the users whose latest team pointed at them); returns how many scopes went. The
        runtime calls it with a slice of the keys at a time, so no call holds the loop long."""
        dropped = 0
        for k in keys:
            scope = self.scopes.get(k)
            if scope is None:
                continue
            scope.expire(now, keep_unsynced=self.shared)
            if not scope.windows:
                del self.scopes[k]
                dropped += 1
        if dropped:
            scopes = self.scopes
            self._callers = {c: s for c, s in self._callers.items() if scopes.get((s.rule.name, s.key)) is s}
            self.teams = {
                u: t
                for u, t in self.teams.items()
                if (rule := self.index.match(u, t)) is not None
                and (rule.name, rule.scope(u, t)) in self.scopes
            }
        return dropped

    def scope_for(self, user: str | None, team: str | None) -> Scope | None:
        """The scope whose counters apply to `user` (in `team`; None: their latest team) or to
        `team` alone (a fresh one, not kept, when it has none yet); None when no rule applies."""
        if user is not None and team is None:
            team = self.teams.get(user)
        rule = self.index.match(user, team)
        if rule is None or (user is None and rule.team is None):
            return None  # a team asked about that has no rule of its own
        key = rule.scope(user, team)
        return self.scopes.get((rule.name, key)) or Scope(rule, key)

    # -- internals ----------------------------------------------------------------

    def _scope(self, rule: QuotaRule, user: str | None, team: str | None) -> Scope:
        key = rule.scope(user, team)
        scope = self.scopes.get((rule.name, key))
        if scope is None:
            scope = self.scopes[(rule.name, key)] = Scope(rule, key)
        return scope

    def _closed_limit(self, scope: Scope, now: float) -> Standing | None:
        """The first limit of `scope` whose period refuses while the fleet counters are stale."""
        for lim in scope.rule.limits:
            if lim.period in self.closed:
                w = self._window(scope, lim.period, now)
                m = lim.metric
                return Standing(lim, w.used[m] + w.others[m], w.reserved[m], w.end)
        return None

    def _window(self, scope: Scope, period: str, now: float) -> Window:
        w = scope.windows.get(period)
        if w is None or now >= w.end:
            w = scope.windows[period] = Window(*bounds(period, now, self.tz))
            scope.held = None
        return w


def seconds_until(end: float, now: float) -> int:
    """Whole seconds until a window ends at `end`, at least 1 (a client waits until then)."""
    return max(1, math.ceil(end - now))


def reservation(
    operation: str,
    prompt_chars: int,
    max_output: int | None,
    default_output: int,
    price: Price | None = None,
    default_seconds: float = 0.0,
) -> Amounts:
    """What a request holds while it runs: one request, its prompt at ~4 characters a token,
    its output cap (`default_output` when it sets none; embeddings generate nothing), and what
    these cost at `price` (`default_seconds` of the server for gpu_hour pricing; 0 unpriced)."""
    prompt = -(-prompt_chars // 4)
    output = 0 if operation == EMBEDDING else (max_output or default_output)
    cost = 0.0 if price is None else price.reserved(prompt, output, default_seconds)
    return (1, prompt, output, prompt + output, cost)


def used_by(
    prompt_tokens: int | None,
    completion_tokens: int | None,
    total_tokens: int | None,
    cost: float | None = None,
) -> Amounts:
    """What a finished request counts: one request, its recorded tokens and its cost."""
    p, c = prompt_tokens or 0, completion_tokens or 0
    return (1, p, c, total_tokens if total_tokens is not None else p + c, cost or 0.0)
