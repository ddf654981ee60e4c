"""`GET /ops/quotas`: every quota rule, and each scope's usage, limit, remaining and reset
(`?user=` or `?team=`: only the scope that applies to them). Token and request limits are whole
numbers; cost budgets (cost_per_day, cost_per_month) amounts of the price table's currency."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.quota.report import quota_report
from ops_api.errors import OpsError
from ops_api.openapi import error_responses, json_content
from ops_api.view import SIDECAR

routes = web.RouteTableDef()


@routes.get("/ops/quotas")
async def quotas(request: web.Request) -> web.Response:
    """Read from the in-memory ledger: no store query, nothing waits."""
    user, team = request.query.get("user") or None, request.query.get("team") or None
    if user is not None and team is not None:
        raise OpsError(400, "give user or team, not both")
    return web.json_response(quota_report(request.app[SIDECAR].quotas, user=user, team=team))


_LIMIT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "window", "limit", "used", "reserved", "remaining", "reset", "reset_in_s"],
    "properties": {
        "name": {"type": "string", "description": "The limit's config key, e.g. tokens_per_minute"},
        "window": {"type": "string", "enum": ["minute", "day", "month"]},
        "limit": {"type": "number", "description": "Whole numbers but for a cost budget (currency)"},
        "used": {"type": "number", "description": "Counted from finished requests in this window"},
        "reserved": {"type": "number", "description": "Held by requests in flight"},
        "remaining": {"type": "number", "description": "limit - used - reserved, at least 0"},
        "reset": {"type": "string", "format": "date-time", "description": "When the window ends (UTC)"},
        "reset_in_s": {"type": "integer"},
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/quotas": {
            "get": {
                "summary": "Quota rules and where each scope stands",
                "operationId": "quotas",
                "parameters": [
                    {"name": "user", "in": "query", "schema": {"type": "string"}},
                    {"name": "team", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "required": ["rules", "scopes"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["rule"],
                                        "properties": {"rule": {"type": "string"}},
                                        "additionalProperties": {"type": ["string", "number"]},
                                    },
                                },
                                "scopes": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["rule", "scope", "limits"],
                                        "properties": {
                                            "rule": {"type": "string"},
                                            "scope": {"type": "string"},
                                            "limits": {"type": "array", "items": _LIMIT},
                                        },
                                    },
                                },
                            },
                        },
                        "The rules and scopes",
                    ),
                    **error_responses(400),
                },
            }
        }
    }
}
