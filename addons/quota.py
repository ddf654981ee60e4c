"""Quotas at the door: a request over its user's or team's limit is answered 429 before
anything goes upstream; every answered request within limits carries the RateLimit-* headers.

Runs after auth (it needs the caller) and the meter (it needs the parsed request: its model,
prompt and max_tokens), before the recorder; the meter's request hook only reads and edits the
request, so nothing has gone upstream when this one refuses it. Only inference requests (chat,
completions, embeddings, responses) count and are limited.

The headers follow draft-ietf-httpapi-ratelimit-headers-06: `RateLimit-Limit`,
`RateLimit-Remaining` (after this request's reservation) and `RateLimit-Reset` (seconds until
the window ends) of the caller's limit closest to running out; a 429 also has `Retry-After`.
For a cost budget (cost_per_day, cost_per_month) the limit and remaining are amounts of the
price table's currency with up to 6 decimals, not the draft's whole numbers.

In a fleet whose shared counters are stale (the store is down), a limit whose kind fails closed
refuses with 503 and `Retry-After` instead: the sidecar cannot tell whether it is used up.

Standalone: `mitmdump ... -s addons/errors.py -s addons/auth.py -s addons/meter.py
-s addons/quota.py -s addons/record.py` reads the [[quotas]] rules of ./sidemeter.toml (the
counters then start empty: only the sidecar rebuilds them from its store), and prices a cost
budget's reservations by its [[prices]] tables.
"""

from __future__ import annotations

import logging
from typing import Final

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addons.errors import refuse
from addons.flowstate import state_of
from agent.config import ConfigError, load
from agent.prices import PriceTable
from agent.quota.ledger import Decision, Ledger, reservation, seconds_until, used_by
from agent.quota.rules import COST, Limit, amount
from agent.quota.windows import zone
from agent.records import Operation
from agent.settings import declare_options, option_names, read_options

log = logging.getLogger("sidemeter.quota")

QUOTA_EXCEEDED: Final = "quota_exceeded"
QUOTA_UNAVAILABLE: Final = "quota_unavailable"
OURS: Final = frozenset({b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset"})
_OUR_LENGTHS: Final = frozenset(len(name) for name in OURS)  # most names need no lower()
COUNTED: Final = frozenset({Operation.CHAT, Operation.COMPLETION, Operation.EMBEDDING, Operation.RESPONSES})


def rate_limit_headers(lim: Limit, taken: float, end: float, now: float) -> tuple[tuple[bytes, bytes], ...]:
    """The RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers-06) of limit `lim` of a
    window ending at `end` that has `taken` of it (used and reserved)."""
    left = lim.value - taken
    if left < 0:
        left = 0
    # bytes % formatting: a third cheaper than str().encode() on every admitted response
    remaining = amount(left).encode() if lim.metric == COST else b"%d" % left
    return (
        (b"RateLimit-Limit", lim.header),
        (b"RateLimit-Remaining", remaining),
        (b"RateLimit-Reset", b"%d" % seconds_until(end, now)),
    )


def without_ours(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """`fields` without the upstream's own RateLimit-* (ours replace them); a plain loop first,
    since an upstream rarely sends any and this runs once per admitted response."""
    for name, _ in fields:
        if len(name) in _OUR_LENGTHS and name.lower() in OURS:
            return tuple([f for f in fields if f[0].lower() not in OURS])
    return fields


def limit_text(lim: Limit, currency: str | None) -> str:
    """`tokens_per_day = 500` or `cost_per_month = 500 USD`."""
    if lim.metric == COST:
        return f"{lim.key} = {amount(lim.value)} {currency or ''}".rstrip()
    return f"{lim.key} = {lim.value}"


def refusal_error(decision: Decision) -> str:
    """The record's `error` of a refused request: the code, then the rule and limit that refused."""
    assert decision.refused_by is not None
    lim = decision.refused_by.limit
    code = QUOTA_UNAVAILABLE if decision.unavailable else QUOTA_EXCEEDED
    return f"{code}: rule {decision.rule.name} ({decision.scope}) {lim.key} {lim.value}"


class Quota:
    """Admits or refuses each inference request by the caller's quota rule, and reconciles
    its reservation with the record's exact counts when the flow ends.

    The runtime passes its ledger (rebuilt from the store) and price table; under `mitmdump -s`
    the rules and prices come from ./sidemeter.toml and the `sidemeter_quota_*` options."""

    def __init__(
        self,
        ledger: Ledger | None = None,
        default_reservation: int = 1024,
        prices: PriceTable | None = None,
        default_reservation_seconds: float = 30.0,
        unavailable_retry: int = 5,
    ) -> None:
        self.ledger = ledger
        self.default_reservation = default_reservation
        self.prices = prices
        self.default_reservation_seconds = default_reservation_seconds
        self.unavailable_retry = unavailable_retry  # Retry-After of a 503 while the counters are stale
        self._from_options = ledger is None

    def load(self, loader: Loader) -> None:
        declare_options(loader, "quota")  # sidemeter_quota_timezone, sidemeter_quota_default_reservation

    def configure(self, updated: set[str]) -> None:
        if not self._from_options or not updated & option_names("quota"):
            return
        values = read_options(ctx.options, "quota")
        try:
            cfg = load()
            tz = zone(values["quota_timezone"])
        except (ConfigError, ValueError) as e:
            raise exceptions.OptionsError(f"quotas: {e}") from None
        self.ledger = Ledger(cfg.quotas, tz)
        self.prices = cfg.price_table
        self.default_reservation = values["quota_default_reservation"]
        self.default_reservation_seconds = values["quota_default_reservation_seconds"]

    def request(self, flow: http.HTTPFlow) -> None:
        ledger = self.ledger
        if not ledger or flow.response is not None:
            return
        state = state_of(flow)
        info = state.info
        if info is None or info.operation not in COUNTED:
            return
        rec = state.record
        prices = self.prices
        amounts = reservation(
            info.operation,
            len(info.prompt_text),
            info.max_output,
            self.default_reservation,
            prices.price_for(info.model) if prices is not None and ledger.budgets else None,
            self.default_reservation_seconds,
        )
        decision = ledger.admit(rec.user, rec.team, amounts)
        if decision is None:
            return
        state.quota = decision
        refused = decision.refused_by
        if refused is None:
            return
        lim = refused.limit
        if decision.unavailable:
            refuse(
                flow,
                503,
                f"quota unavailable: {lim.key} of {decision.scope} (rule {decision.rule.name}) cannot "
                "be checked while the shared usage store is unreachable, and this kind of limit fails "
                f"closed; retry in {self.unavailable_retry} s",
            )
            rec.error = refusal_error(decision)
            assert flow.response is not None
            flow.response.headers["Retry-After"] = str(self.unavailable_retry)
            return
        now = ledger.clock()
        wait = refused.reset_in(now)
        currency = prices.currency if prices is not None else None
        refuse(
            flow,
            429,
            f"quota exceeded: {limit_text(lim, currency)} of {decision.scope} (rule {decision.rule.name}) "
            f"is used up; retry in {wait} s",
        )
        rec.error = refusal_error(decision)
        assert flow.response is not None
        flow.response.headers.fields += (
            *rate_limit_headers(lim, refused.used + refused.reserved, refused.reset_at, now),
            (b"Retry-After", str(wait).encode()),
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        decision = state_of(flow).quota
        if decision is None or (w := decision.window) is None or self.ledger is None:
            return  # no rule, or refused (its headers are on its 429 already)
        assert flow.response is not None
        lim = decision.limit
        m = lim.metric
        headers = flow.response.headers
        # The tightest limit at admission, as it stands now (this request's reservation in it).
        ours = rate_limit_headers(lim, w.used[m] + w.others[m] + w.reserved[m], w.end, self.ledger.clock())
        headers.fields = without_ours(headers.fields) + ours

    def response(self, flow: http.HTTPFlow) -> None:
        self._reconcile(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._reconcile(flow)

    def _reconcile(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        decision = state.quota
        if decision is None or decision.windows is None or self.ledger is None:
            return
        state.quota = None  # an error after the response must not count it twice
        rec = state.record
        self.ledger.reconcile(
            decision,
            used_by(rec.prompt_tokens, rec.completion_tokens, rec.total_tokens, rec.cost),
        )


addons = [Quota()]
