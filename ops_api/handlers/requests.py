"""`GET /ops/requests` (recent usage records, newest first, cursor paging) and
`GET /ops/requests/{request_id}` (one record)."""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any, Final

from aiohttp import web

from agent.durations import parse_since
from agent.records import Outcome
from agent.store.queries import PAGE_LIMIT_MAX, get_record, page_records
from ops_api.errors import OpsError
from ops_api.openapi import error_responses, json_content
from ops_api.reads import read_store
from ops_api.schemas import RECORD_REF, RECORD_SCHEMA
from ops_api.view import SIDECAR

routes = web.RouteTableDef()

DEFAULT_LIMIT: Final = 20
_CURSOR_PREFIX: Final = "id:"
_FILTERS: Final = ("user", "team", "model", "outcome")
_OUTCOMES: Final = [str(o) for o in Outcome]


def encode_cursor(before_id: int) -> str:
    """Opaque to clients: base64url of the id the next page continues below."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{before_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(_CURSOR_PREFIX)
    if not text.startswith(_CURSOR_PREFIX) or not number.isdigit() or int(number) < 1:
        raise OpsError(400, f"cursor {cursor!r} is not one this API handed out: pass next_cursor as it is")
    return int(number)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise OpsError(400, f"limit must be a whole number from 1 to {PAGE_LIMIT_MAX}, got {raw!r}")
    return limit


def _filters(query: Any) -> dict[str, Any]:
    filters: dict[str, Any] = {name: query.get(name) or None for name in _FILTERS}
    outcome = filters["outcome"]
    if outcome is not None and outcome not in _OUTCOMES:
        raise OpsError(400, f"unknown outcome {outcome!r}", allowed=_OUTCOMES)
    if since := query.get("since"):
        try:
            filters["since"] = parse_since(since)
        except ValueError as e:
            raise OpsError(400, f"since: {e}") from None
    return filters


@routes.get("/ops/requests")
async def list_requests(request: web.Request) -> web.Response:
    """Recent usage records, newest first; `next_cursor` continues below the last one."""
    q = request.query
    limit = _limit(q.get("limit"))
    before = decode_cursor(q["cursor"]) if q.get("cursor") else None
    query = functools.partial(page_records, limit=limit, before=before, **_filters(q))
    page = await read_store(request.app[SIDECAR].store, query)
    return web.json_response(
        {
            "requests": [record.to_dict() for record in page.records],
            "next_cursor": None if page.next_before is None else encode_cursor(page.next_before),
        }
    )


@routes.get("/ops/requests/{request_id}")
async def one_request(request: web.Request) -> web.Response:
    """One usage record by its request id (the X-Request-ID of the request)."""
    request_id = request.match_info["request_id"]
    record = await read_store(request.app[SIDECAR].store, lambda db: get_record(db, request_id))
    if record is None:
        raise OpsError(404, f"no request with id {request_id!r}")
    return web.json_response(record.to_dict())


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_PAGE: Final = {
    "type": "object",
    "required": ["requests", "next_cursor"],
    "properties": {
        "requests": {"type": "array", "items": RECORD_REF},
        "next_cursor": {
            "type": ["string", "null"],
            "description": "Pass as `cursor` for the next (older) page; null on the last page",
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/requests": {
            "get": {
                "summary": "Recent usage records, newest first",
                "operationId": "listRequests",
                "parameters": [
                    _param(
                        "limit",
                        "Records per page",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": PAGE_LIMIT_MAX,
                            "default": DEFAULT_LIMIT,
                        },
                    ),
                    _param("cursor", "`next_cursor` of the previous page", {"type": "string"}),
                    _param("user", "Only this user", {"type": "string"}),
                    _param("team", "Only this team", {"type": "string"}),
                    _param("model", "Only this model", {"type": "string"}),
                    _param("outcome", "Only this outcome", {"type": "string", "enum": _OUTCOMES}),
                    _param(
                        "since",
                        "Only records newer than this: an age (30m, 24h, 7d) or an ISO-8601 time",
                        {"type": "string"},
                    ),
                ],
                "responses": {
                    "200": json_content(_PAGE, "One page of records"),
                    **error_responses(400, 401, 403, 503),
                },
            }
        },
        "/ops/requests/{request_id}": {
            "get": {
                "summary": "One usage record",
                "operationId": "getRequest",
                "parameters": [
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "description": "The request's X-Request-ID",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": json_content(RECORD_REF, "The record"),
                    **error_responses(401, 403, 404, 503),
                },
            }
        },
    },
    "components": {"schemas": {"Record": RECORD_SCHEMA}},
}
