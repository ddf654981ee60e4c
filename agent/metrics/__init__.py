"""Prometheus metrics of the sidecar, served by the ops API at `GET /metrics`.

One registry for the process (not the global default one), so `/metrics` shows exactly the
sidecar's series. Metrics are created here once, at import, never per request (a registry
refuses the same name twice); the request path only increments them.

- Rare events update prometheus_client objects directly: auth failures, upstream probes
  (`record_upstream_probe`, called by the upstream prober), store batches.
- Per-request series live in the running sidecar's `RequestMetrics` (agent/metrics/requests.py),
  fed from its usage records; the registry reads the one made current by `activate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import Metric

from agent import __version__
from agent.auth.errors import REASONS
from agent.metrics.quotas import QuotaGauges
from agent.metrics.requests import RequestMetrics

# `*_created` series double every counter and histogram and no dashboard reads them; the
# per-request families (built at scrape time) have none either.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

AUTH_FAILURES = Counter(
    "sidemeter_auth_failures",
    "Requests refused by authentication, by reason.",
    ["reason"],
    registry=REGISTRY,
)
# Every reason exists from the start at 0, so rate() and alerts work before the first failure.
for _reason in REASONS:
    AUTH_FAILURES.labels(_reason)

CONNECTIONS_CLOSED = Counter(
    "sidemeter_client_connections_closed",
    "Client connections the sidecar closed on its own, by reason: max_connections (turned away "
    "with a 503), header_timeout, idle_timeout.",
    ["reason"],
    registry=REGISTRY,
)
for _reason in ("max_connections", "header_timeout", "idle_timeout"):
    CONNECTIONS_CLOSED.labels(_reason)

BUILD_INFO = Gauge(
    "sidemeter_build_info", "Always 1; the sidecar's version as a label.", ["version"], registry=REGISTRY
)
BUILD_INFO.labels(__version__).set(1)

UPSTREAM_UP = Gauge(
    "sidemeter_upstream_up",
    "1 when the last probe of the upstream LLM server succeeded, 0 when it failed, "
    "NaN before the first probe.",
    registry=REGISTRY,
)
UPSTREAM_UP.set(math.nan)

UPSTREAM_PROBE_DURATION = Histogram(
    "sidemeter_upstream_probe_duration_seconds",
    "How long each probe of the upstream LLM server took (failed probes included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

STORE_WRITE_DURATION = Histogram(
    "sidemeter_store_write_duration_seconds",
    "How long the store's writer thread took to insert one batch of usage records.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

STORE_PRUNED = Counter(
    "sidemeter_store_pruned_records_total",
    "Usage records deleted by the background retention (auto_prune), by this process.",
    registry=REGISTRY,
)


def record_upstream_probe(reachable: bool, seconds: float, kind: str | None = None) -> None:
    """What one probe of the upstream found: reachable or not, how long it took, and the server
    kind when it could tell ("ollama", "vllm", "llama.cpp"; sets `gen_ai_provider_name`)."""
    UPSTREAM_UP.set(1 if reachable else 0)
    UPSTREAM_PROBE_DURATION.observe(seconds)
    if kind:
        _current.metrics.set_upstream_kind(kind)


class _Current:
    """The registry's view of the running sidecar's per-request series. Before a sidecar runs
    (and after it stops) an empty `RequestMetrics` answers, so every family is always listed."""

    def __init__(self) -> None:
        self.idle = RequestMetrics()
        self.metrics = self.idle

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()

    def describe(self) -> Iterable[Metric]:
        return self.idle.describe()


_current = _Current()
REGISTRY.register(_current)
QUOTA_GAUGES = QuotaGauges()  # the running sidecar sets its ledger; listed from start either way
REGISTRY.register(QUOTA_GAUGES)


def activate(metrics: RequestMetrics) -> None:
    """Serve `metrics` at /metrics (the sidecar calls it as it starts)."""
    _current.metrics = metrics


def deactivate(metrics: RequestMetrics) -> None:
    """Stop serving `metrics` unless another sidecar has been activated since."""
    if _current.metrics is metrics:
        _current.metrics = _current.idle


__all__ = [
    "AUTH_FAILURES",
    "QUOTA_GAUGES",
    "REGISTRY",
    "STORE_WRITE_DURATION",
    "RequestMetrics",
    "activate",
    "deactivate",
    "record_upstream_probe",
]
