"""`GET /ops/openapi.json`: the OpenAPI 3.1 document, merged from the fragment each handler
module declares next to its routes (`OPENAPI = {"paths": ..., "components": ...}`), so a route
and its documentation change in the same place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from aiohttp import web

from agent import __version__

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "enum": [
                        "bad_request",
                        "unauthorized",
                        "forbidden",
                        "not_found",
                        "method_not_allowed",
                        "unavailable",
                        "internal",
                    ],
                },
                "message": {"type": "string"},
                "allowed": {"type": "array", "items": {"type": "string"}},
            },
        }
    },
}

_ERROR_TEXT = {
    400: "Bad parameters; `allowed` lists the accepted values",
    401: "No valid bearer token",
    403: "The token lacks the ops role",
    404: "Not found",
    503: "Unavailable",
}


def error_responses(*statuses: int) -> dict[str, Any]:
    """The `responses` entries of JSON errors, for a path's operation."""
    return {
        str(s): {
            "description": _ERROR_TEXT.get(s, "Error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def json_content(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(schema)}}}


def build_document(modules: Iterable[ModuleType]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    security_schemes: dict[str, Any] = {}
    for module in modules:
        fragment = getattr(module, "OPENAPI", {})
        for path, item in fragment.get("paths", {}).items():
            paths.setdefault(path, {}).update(item)
        components = fragment.get("components", {})
        schemas.update(components.get("schemas", {}))
        security_schemes.update(components.get("securitySchemes", {}))
    components_out: dict[str, Any] = {"schemas": schemas}
    if security_schemes:
        components_out["securitySchemes"] = security_schemes
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sidemeter ops API",
            "version": __version__,
            "description": "Health, usage statistics, services, a test console and recent requests "
            "of a Sidemeter sidecar.",
        },
        "paths": dict(sorted(paths.items())),
        "components": components_out,
    }


OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOCUMENT])


OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": json_content({"type": "object"}, "The OpenAPI 3.1 document")},
            }
        }
    }
}


def query_parameters(document: Mapping[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """(METHOD, path) -> the query parameter names the document declares for that operation."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
            out[(method.upper(), path)] = frozenset(names)
    return out


def unknown_query_middleware(declared: Mapping[tuple[str, str], frozenset[str]]) -> Any:
    """400, naming the allowed ones, for a query parameter an operation does not declare: a
    misspelt filter (`?usr=alice`) must not silently answer everything unfiltered."""
    from ops_api.errors import OpsError

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.query:
            resource = request.match_info.route.resource
            allowed = declared.get((request.method, resource.canonical)) if resource is not None else None
            if allowed is not None:
                unknown = sorted(set(request.query) - allowed)
                if unknown:
                    raise OpsError(
                        400,
                        f"unknown query parameter(s) {', '.join(map(repr, unknown))} for "
                        f"{request.method} {resource.canonical}",  # type: ignore[union-attr]
                        allowed=sorted(allowed),
                    )
        return await handler(request)

    return check
