"""`sidemeter_quota_remaining_ratio{rule,scope}`: how much of its tightest limit each quota
scope has left, built from the ledger at scrape time (nothing runs per request).

The family is listed from start, with no series until a rule meets a caller. A scope's ratio
is the smallest remaining/limit over its rule's limits (0 = refused until a window resets).
With many users under an everyone rule, only the `max_series` lowest ratios are exported:
the ones an alert at 80 % or 95 % is about.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from agent.quota.ledger import Ledger

NAME = "sidemeter_quota_remaining_ratio"
HELP = (
    "Share of its tightest quota limit a rule's scope (user:<name> or team:<name>) has left in "
    "the current window, 0 to 1 (reservations of requests in flight count as used)."
)


class QuotaGauges:
    """The registry's view of the running sidecar's ledger (None: no sidecar, no series)."""

    def __init__(self, max_series: int = 100) -> None:
        self.ledger: Ledger | None = None
        self.max_series = max_series

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(NAME, HELP, labels=("rule", "scope"))
        ledger = self.ledger
        if ledger:
            ratios = (
                (min(s.remaining / s.limit.value for s in standings), scope.rule.name, scope.key)
                for scope, standings in ledger.standings()
            )
            for ratio, rule, key in heapq.nsmallest(self.max_series, ratios):
                fam.add_metric((rule, key), ratio)
        yield fam

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(NAME, HELP, labels=("rule", "scope"))]
