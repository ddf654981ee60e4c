"""Prometheus metrics of the sidecar, served by the ops API at `GET /metrics`.

One registry for the process (not the global default one), so `/metrics` shows exactly the
sidecar's series. Metrics are created here once, at import, never per request (a registry
refuses the same name twice); the request path only increments them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from agent.auth.errors import REASONS

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
