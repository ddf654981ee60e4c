"""`GET /ops/stats`: requests, errors, tokens, cost and latency percentiles over a window, in
total and per group, of this sidecar's records (`scope=local`) or the whole fleet's in a shared
store (`scope=fleet`). The query runs in a worker thread on its own connection, so it never stalls the
proxy's event loop; and an answer is reused for CACHE_S seconds by every caller that asks the
same question, so many dashboard panels polling at once cost one query, not one each (the
query's Python work holds the GIL the proxy needs)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from typing import Any, Final

import peewee
from aiohttp import web

from agent.durations import parse_duration
from agent.store.database import StoreError, first_line
from agent.store.stats import (
    GROUP_BY,
    SCOPES,
    WINDOWS,
    StatsError,
    Window,
    compute_stats,
    parse_group_by,
    parse_scope,
    resolve_window,
)
from ops_api.about import instance as own_instance
from ops_api.errors import OpsError
from ops_api.openapi import error_responses, json_content
from ops_api.reads import query_store
from ops_api.view import SIDECAR

routes = web.RouteTableDef()

CACHE_S: Final = 5.0
_Key = tuple[str | None, str | None, str | None, tuple[str, ...], str | None]
# Per app: the question -> (when it was asked, the answer being computed or computed).
_CACHES: weakref.WeakKeyDictionary[web.Application, dict[_Key, tuple[float, asyncio.Future[Any]]]] = (
    weakref.WeakKeyDictionary()
)


@routes.get("/ops/stats")
async def stats(request: web.Request) -> web.Response:
    """Usage statistics of the records in the window, per `group_by` group."""
    side = request.app[SIDECAR]
    query = request.query
    try:
        window = resolve_window(
            window=query.get("window"),
            since=query.get("since"),
            until=query.get("until"),
            retention=parse_duration(side.config.retention),
        )
        group_by = parse_group_by(query.get("group_by"))
        scope = parse_scope(query.get("scope"))
    except StatsError as e:
        raise OpsError(400, str(e), allowed=e.allowed) from None
    instance = own_instance(side) if scope == "local" else None
    key = (query.get("window"), query.get("since"), query.get("until"), group_by, instance)
    cache = _CACHES.setdefault(request.app, {})
    now = time.monotonic()
    for stale in [k for k, (at, _) in cache.items() if now - at > CACHE_S]:
        del cache[stale]
    hit = cache.get(key)
    if hit is None:
        future = asyncio.ensure_future(_compute(side, window, group_by, instance))
        cache[key] = (now, future)
    else:
        future = hit[1]
    try:
        body = await asyncio.shield(future)  # a caller hanging up does not cancel the others'
    except (StoreError, peewee.PeeweeException, sqlite3.Error) as e:
        cache.pop(key, None)
        raise OpsError(503, f"the usage store cannot be read: {first_line(e)}") from None
    except BaseException:
        cache.pop(key, None)
        raise
    return web.json_response(body)


async def _compute(
    side: Any, window: Window, group_by: tuple[str, ...], instance: str | None
) -> dict[str, Any]:
    if not side.store.db.thread_safe:  # `:memory:`: one connection, shared with the writer
        return await asyncio.to_thread(
            compute_stats,
            side.store.db,
            window.since,
            window.until,
            group_by,
            instance=instance,
            snapshot=False,
        )
    return await asyncio.to_thread(
        query_store,
        side.store,
        lambda db: compute_stats(db, window.since, window.until, group_by, instance=instance),
    )


_PERCENTILES = {
    "type": "object",
    "required": ["p50", "p95", "p99"],
    "properties": {p: {"type": ["number", "null"]} for p in ("p50", "p95", "p99")},
}
_STATS_PROPERTIES: dict[str, Any] = {
    "requests": {"type": "integer", "minimum": 0},
    "errors": {"type": "integer", "minimum": 0, "description": "Records whose outcome is not ok"},
    "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
    "tokens_in": {"type": "integer"},
    "tokens_out": {"type": "integer"},
    "cached_tokens": {"type": "integer"},
    "reasoning_tokens": {"type": "integer"},
    "estimated": {"type": "integer", "minimum": 0, "description": "Records whose tokens were estimated"},
    "estimated_share": {"type": "number", "minimum": 0, "maximum": 1},
    "cost": {
        "type": ["number", "null"],
        "description": "Sum of the records' costs (each to 1e-9); null when none had a cost",
    },
    "costed": {"type": "integer", "minimum": 0, "description": "Records that had a cost"},
    "latency_ms": _PERCENTILES,
    "ttft_ms": _PERCENTILES,
    "tokens_per_second": {
        "type": "object",
        "required": ["p50"],
        "properties": {"p50": {"type": ["number", "null"]}},
    },
}
STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(_STATS_PROPERTIES),
    "properties": _STATS_PROPERTIES,
}
_GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", *_STATS_PROPERTIES],
    "properties": {
        "key": {
            "type": "object",
            "description": "The group's value of each group_by dimension (null: none recorded)",
            "additionalProperties": {"type": ["string", "null"]},
        },
        **_STATS_PROPERTIES,
    },
}
STATS_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "since",
        "until",
        "window_s",
        "group_by",
        "scope",
        "instance",
        "percentiles",
        "percentile_error",
        "total",
        "groups",
    ],
    "properties": {
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "window_s": {"type": "number"},
        "group_by": {"type": "array", "items": {"type": "string", "enum": list(GROUP_BY)}},
        "scope": {"type": "string", "enum": list(SCOPES)},
        "instance": {
            "type": ["string", "null"],
            "description": "The sidecar whose records these are (scope local); null: every one",
        },
        "percentiles": {"type": "string", "enum": ["exact", "approximate"]},
        "percentile_error": {"type": "number", "description": "Largest relative error of a percentile"},
        "total": {"$ref": "#/components/schemas/Stats"},
        "groups": {
            "type": "array",
            "description": "Sorted by requests, most first; empty without group_by",
            "items": {"$ref": "#/components/schemas/StatsGroup"},
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/stats": {
            "get": {
                "summary": "Usage statistics over a window, in total and per group",
                "operationId": "stats",
                "parameters": [
                    {
                        "name": "window",
                        "in": "query",
                        "description": "How far back from now, e.g. "
                        + ", ".join(WINDOWS)
                        + " (default 24h; at most the retention setting)",
                        "schema": {"type": "string", "pattern": "^([0-9]+[smhdw])+$"},
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "description": "Start (ISO-8601; instead of window)",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "End (ISO-8601, default now; with since)",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "group_by",
                        "in": "query",
                        "description": "Zero to two of " + ", ".join(GROUP_BY) + ", comma-separated",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "scope",
                        "in": "query",
                        "description": "local: this sidecar's records (its instance id); fleet "
                        "(default): every sidecar's in the store",
                        "schema": {"type": "string", "enum": list(SCOPES)},
                    },
                ],
                "responses": {
                    "200": json_content(STATS_RESPONSE_SCHEMA, "The statistics"),
                    **error_responses(400, 401, 403, 503),
                },
            }
        }
    },
    "components": {"schemas": {"Stats": STATS_SCHEMA, "StatsGroup": _GROUP_SCHEMA}},
}
