#!/usr/bin/env python3
"""What updating the metrics costs one request: `RequestMetrics.observe` (the Recorder listener
that feeds /metrics) on typical finished records, against the same updates made through
prometheus_client's own Counter and Histogram children.

    python -O bench/metrics_listener.py      # µs per request, best of 5 rounds of 50,000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from prometheus_client import CollectorRegistry, Counter, Histogram

from agent.metrics import semconv
from agent.metrics.requests import RequestMetrics
from agent.records import UsageRecord, UsageSource

ROUNDS, N = 5, 50_000


def records() -> list[UsageRecord]:
    """A streamed chat, a non-streamed one, an embedding and a failed stream, 4 teams, 2 models."""
    out = []
    for i in range(16):
        rec = UsageRecord(request_id=str(i), team=f"team-{i % 4}", model=f"model-{i % 2}", dialect="openai")
        rec.operation = ("chat", "chat", "embedding", "chat")[i % 4]
        rec.stream = i % 4 != 1
        rec.status = 500 if i % 4 == 3 else 200
        rec.outcome = "upstream_error" if i % 4 == 3 else "ok"
        rec.prompt_tokens, rec.completion_tokens = 42, (None if rec.operation == "embedding" else 128)
        rec.usage_source = UsageSource.REPORTED
        rec.latency_ms, rec.ttft_ms = 850.0, (35.0 if rec.stream else None)
        out.append(rec)
    return out


def per_request(fn: object, recs: list[UsageRecord]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for i in range(N):
            fn(recs[i & 15])  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t) / N)
    return best * 1e6


def prometheus_client_variant() -> object:
    """The same updates through prometheus_client children (looked up once per label set)."""
    reg = CollectorRegistry()
    requests = Counter("r", "r", ["outcome", "operation", "dialect"], registry=reg)
    tokens = Counter("t", "t", ["type", "model", "team"], registry=reg)
    labels = ["op", "provider", "model", "team"]
    duration = Histogram("d", "d", [*labels, "error"], buckets=semconv.REQUEST_DURATION_BUCKETS, registry=reg)
    ttft = Histogram("f", "f", labels, buckets=semconv.TIME_TO_FIRST_TOKEN_BUCKETS, registry=reg)
    tpot = Histogram("p", "p", labels, buckets=semconv.TIME_PER_OUTPUT_TOKEN_BUCKETS, registry=reg)
    usage = Histogram("u", "u", [*labels, "type"], buckets=semconv.TOKEN_BUCKETS, registry=reg)
    children: dict[tuple[str, ...], object] = {}

    def child(metric: object, *values: str) -> object:
        key = (id(metric), *values)
        c = children.get(key)  # type: ignore[arg-type]
        if c is None:
            c = children[key] = metric.labels(*values)  # type: ignore[attr-defined,index]
        return c

    def observe(rec: UsageRecord) -> None:
        child(requests, rec.outcome, rec.operation, rec.dialect).inc()  # type: ignore[attr-defined]
        team, model = rec.team or "", rec.model or ""
        base = ("chat", "openai_compatible", model, team)
        if rec.prompt_tokens is not None:
            child(tokens, "input", model, team).inc(rec.prompt_tokens)  # type: ignore[attr-defined]
            child(usage, *base, "input").observe(rec.prompt_tokens)  # type: ignore[attr-defined]
        if rec.completion_tokens is not None:
            child(tokens, "output", model, team).inc(rec.completion_tokens)  # type: ignore[attr-defined]
            child(usage, *base, "output").observe(rec.completion_tokens)  # type: ignore[attr-defined]
        assert rec.latency_ms is not None
        child(duration, *base, "").observe(rec.latency_ms / 1000)  # type: ignore[attr-defined]
        if rec.ttft_ms is not None:
            child(ttft, *base).observe(rec.ttft_ms / 1000)  # type: ignore[attr-defined]
            child(tpot, *base).observe(0.006)  # type: ignore[attr-defined]

    return observe


def main() -> None:
    recs = records()
    ours = per_request(RequestMetrics().observe, recs)
    stock = per_request(prometheus_client_variant(), recs)
    print(f"RequestMetrics.observe:             {ours:6.2f} µs per request")
    print(f"same updates via prometheus_client: {stock:6.2f} µs per request")


if __name__ == "__main__":
    main()
