"""`GET /ops/health`: the sidecar, its upstream, its store and every team over the last 5
minutes, each with a status. Open without a token (like /healthz), 503 when down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from agent import __version__
from agent.config import Config
from agent.teamhealth import (
    DEGRADED,
    DOWN,
    OK,
    STATUSES,
    WINDOW_S,
    TeamStats,
    Thresholds,
    judge,
    summarize,
    worst,
)
from agent.upstream import UpstreamStatus
from ops_api.about import instance, iso, store_kind
from ops_api.openapi import json_content
from ops_api.view import SIDECAR, SidecarView

routes = web.RouteTableDef()


def thresholds(config: Config) -> Thresholds:
    return Thresholds(
        error_rate_degraded=config.health_error_rate_degraded,
        error_rate_down=config.health_error_rate_down,
        latency_p95_degraded_ms=config.health_latency_p95_degraded * 1000,
        latency_p95_down_ms=config.health_latency_p95_down * 1000,
        min_requests=config.health_min_requests,
    )


def upstream_body(up: UpstreamStatus) -> dict[str, Any]:
    return {
        "url": up.url,
        "reachable": up.reachable,
        "latency_ms": up.latency_ms,
        "last_error": up.last_error,
        "last_checked": iso(up.last_checked),
    }


def quota_body(side: SidecarView) -> dict[str, Any]:
    """Where the quota counters stand: off (no rules), local (one sidecar's store: exact in
    memory), synced or stale (a fleet's shared counters), and what stale does to each kind."""
    cfg, sync = side.config, side.quota_sync
    body: dict[str, Any] = {
        "state": "off" if not side.quotas else "local",
        "rules": len(side.quotas.rules),
        "scopes": len(side.quotas.scopes),
        "last_sync": None,
        "last_error": None,
        "sync_interval_s": None,
        "stale_after_s": None,
        "store_down": {"rates": cfg.quota_store_down_rates, "budgets": cfg.quota_store_down_budgets},
    }
    if sync is not None:
        st = sync.state()
        body.update(
            state=st.state,
            last_sync=iso(st.last_sync),
            last_error=st.last_error,
            sync_interval_s=sync.interval,
            stale_after_s=sync.stale_after,
        )
    return body


def health_body(side: SidecarView, team_stats: list[TeamStats]) -> dict[str, Any]:
    limits = thresholds(side.config)
    status, reasons = OK, []
    up = side.upstream.status
    if up.reachable is False:
        status = DOWN
        reasons.append(f"upstream {up.url} is unreachable: {up.last_error}")
    store = side.store
    writing = store.healthy
    if not writing:
        status = DOWN
        reasons.append(f"usage store is not writing: {store.last_error or 'writer stopped'}")
    elif store.spill_pending:
        status = worst(status, DEGRADED)
        reasons.append(
            f"usage records are spilling to {store.spill_dir}; they are loaded when the database takes them"
        )
    quota = quota_body(side)
    if quota["state"] == "stale":
        status = worst(status, DEGRADED)
        closed = [kind for kind, mode in quota["store_down"].items() if mode == "closed"]
        reasons.append(
            f"quota counters not synced with the store since {quota['last_sync'] or 'start'}: "
            + (f"{' and '.join(closed)} refuse with 503" if closed else "every limit admits on local counts")
        )
    conflict = side.registry.conflict
    if conflict:  # two sidecars' records cannot be told apart
        status = worst(status, DEGRADED)
        reasons.append(f"{conflict}: give each sidecar its own instance_id")
    teams = []
    for stats in team_stats:
        team_status, why = judge(stats, limits)
        if team_status != OK:
            status = worst(status, DEGRADED)
            reasons.append(f"team {stats.team or '(none)'} is {team_status}")
        teams.append(
            {
                "team": stats.team,
                "status": team_status,
                "requests": stats.requests,
                "errors": stats.errors,
                "error_rate": round(stats.error_rate, 4),
                "latency_p95_ms": stats.latency_p95_ms,
                "ttft_p95_ms": stats.ttft_p95_ms,
                "reasons": why,
                "judged": stats.requests >= limits.min_requests,
            }
        )
    return {
        "status": status,
        "reasons": reasons,
        "version": __version__,
        "instance": instance(side),
        "uptime_s": round(time.time() - side.started_at, 3),
        "upstream": upstream_body(up),
        "store": {
            "kind": store_kind(side.config.db),
            "writing": writing,
            "queue_depth": store.queue_depth,
            "spilled": store.spilled_total,
            "last_error": store.last_error,
        },
        "quota": quota,
        "window_s": WINDOW_S,
        "thresholds": {
            "error_rate_degraded": limits.error_rate_degraded,
            "error_rate_down": limits.error_rate_down,
            "latency_p95_degraded_ms": limits.latency_p95_degraded_ms,
            "latency_p95_down_ms": limits.latency_p95_down_ms,
            "min_requests": limits.min_requests,
        },
        "teams": teams,
    }


@routes.get("/ops/health")
async def health(request: web.Request) -> web.Response:
    """Health of the sidecar, its upstream, its store and each team (last 5 minutes)."""
    side = request.app[SIDECAR]
    # The copy is cheap and consistent on the loop; the sorting for the p95s goes to a thread.
    teams = await asyncio.to_thread(summarize, side.team_health.collect())
    body = health_body(side, teams)
    return web.json_response(body, status=503 if body["status"] == DOWN else 200)


_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}
_STATUS = {"type": "string", "enum": list(STATUSES)}

UPSTREAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url", "reachable", "latency_ms", "last_error", "last_checked"],
    "properties": {
        "url": {"type": "string"},
        "reachable": {"type": ["boolean", "null"], "description": "null before the first probe"},
        "latency_ms": _NULLABLE_NUMBER,
        "last_error": _NULLABLE_STRING,
        "last_checked": {"type": ["string", "null"], "format": "date-time"},
    },
}

_MODE = {"type": "string", "enum": ["open", "closed"]}
QUOTA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "state",
        "rules",
        "scopes",
        "last_sync",
        "last_error",
        "sync_interval_s",
        "stale_after_s",
        "store_down",
    ],
    "properties": {
        "state": {
            "type": "string",
            "enum": ["off", "local", "synced", "stale"],
            "description": "off: no rules; local: counted in memory from this sidecar's store; "
            "synced/stale: the fleet's shared counters (PostgreSQL)",
        },
        "rules": {"type": "integer", "minimum": 0},
        "scopes": {"type": "integer", "minimum": 0, "description": "users and teams counted now"},
        "last_sync": {"type": ["string", "null"], "format": "date-time"},
        "last_error": _NULLABLE_STRING,
        "sync_interval_s": _NULLABLE_NUMBER,
        "stale_after_s": _NULLABLE_NUMBER,
        "store_down": {
            "type": "object",
            "required": ["rates", "budgets"],
            "properties": {"rates": _MODE, "budgets": _MODE},
            "description": "while stale: per-minute rates and per-day/month budgets admit (open) "
            "or refuse 503 (closed)",
        },
    },
}

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "status",
        "reasons",
        "version",
        "instance",
        "uptime_s",
        "upstream",
        "store",
        "quota",
        "window_s",
        "thresholds",
        "teams",
    ],
    "properties": {
        "status": _STATUS,
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "why not ok"},
        "version": {"type": "string"},
        "instance": {"type": "string"},
        "uptime_s": {"type": "number"},
        "upstream": {"$ref": "#/components/schemas/UpstreamHealth"},
        "store": {
            "type": "object",
            "required": ["kind", "writing", "queue_depth", "spilled", "last_error"],
            "properties": {
                "kind": {"type": "string", "enum": ["sqlite", "postgresql"]},
                "writing": {"type": "boolean"},
                "queue_depth": {"type": "integer", "minimum": 0},
                "spilled": {"type": "integer", "minimum": 0},
                "last_error": _NULLABLE_STRING,
            },
        },
        "quota": {"$ref": "#/components/schemas/QuotaHealth"},
        "window_s": {"type": "integer"},
        "thresholds": {
            "type": "object",
            "required": [
                "error_rate_degraded",
                "error_rate_down",
                "latency_p95_degraded_ms",
                "latency_p95_down_ms",
                "min_requests",
            ],
            "properties": {
                "error_rate_degraded": {"type": "number"},
                "error_rate_down": {"type": "number"},
                "latency_p95_degraded_ms": {"type": "number"},
                "latency_p95_down_ms": {"type": "number"},
                "min_requests": {"type": "integer"},
            },
        },
        "teams": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "team",
                    "status",
                    "requests",
                    "errors",
                    "error_rate",
                    "latency_p95_ms",
                    "ttft_p95_ms",
                    "reasons",
                    "judged",
                ],
                "properties": {
                    "team": {
                        "type": "string",
                        "description": "empty: requests without a team; other: past the cap",
                    },
                    "status": _STATUS,
                    "requests": {"type": "integer", "minimum": 1},
                    "errors": {"type": "integer", "minimum": 0},
                    "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
                    "latency_p95_ms": _NULLABLE_NUMBER,
                    "ttft_p95_ms": _NULLABLE_NUMBER,
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "judged": {"type": "boolean", "description": "false below min_requests: status ok"},
                },
            },
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/health": {
            "get": {
                "summary": "Health of the sidecar, its upstream, its store and each team (last 5 minutes)",
                "operationId": "health",
                "responses": {
                    "200": json_content({"$ref": "#/components/schemas/Health"}, "ok or degraded"),
                    "503": json_content({"$ref": "#/components/schemas/Health"}, "down: `reasons` says why"),
                },
            }
        }
    },
    "components": {
        "schemas": {"Health": HEALTH_SCHEMA, "UpstreamHealth": UPSTREAM_SCHEMA, "QuotaHealth": QUOTA_SCHEMA}
    },
}
