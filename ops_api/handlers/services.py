"""`GET /ops/services`: the upstream the sidecar fronts (from the prober's last answer, never
probed on the request) and the sidecar itself. A list of typed entries, so other sidecars of a
fleet can join it as more `"type": "sidecar"` entries."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from agent import __version__
from agent.upstream import KINDS
from ops_api.about import NAMESPACE_ENV, NODE_ENV, POD_ENV, address, instance, iso, store_kind
from ops_api.openapi import json_content
from ops_api.view import SIDECAR, SidecarView

routes = web.RouteTableDef()


def upstream_entry(side: SidecarView) -> dict[str, Any]:
    up = side.upstream.status
    return {
        "type": "upstream",
        "id": "upstream-0",
        "url": up.url,
        "dialect": up.dialect,
        "kind": up.kind,
        "version": up.version,
        "models": list(up.models),
        "loaded_models": list(up.loaded_models) if up.loaded_models is not None else None,
        "reachable": up.reachable,
        "latency_ms": up.latency_ms,
        "last_error": up.last_error,
        "last_checked": iso(up.last_checked),
    }


def sidecar_entry(side: SidecarView) -> dict[str, Any]:
    cfg = side.config
    return {
        "type": "sidecar",
        "id": instance(side),
        "self": True,
        "version": __version__,
        "listen": address(cfg.listen_address[0], side.proxy_port),
        "ops_listen": address(cfg.ops_address[0], side.ops_port),
        "auth": "off" if cfg.auth == "off" else "jwt",
        "store": store_kind(cfg.db),
        "pod": os.environ.get(POD_ENV) or None,
        "namespace": os.environ.get(NAMESPACE_ENV) or None,
        "node": os.environ.get(NODE_ENV) or None,
        "last_seen": iso(time.time()),
    }


@routes.get("/ops/services")
async def services(request: web.Request) -> web.Response:
    """The upstream LLM server and this sidecar."""
    side = request.app[SIDECAR]
    return web.json_response({"services": [upstream_entry(side), sidecar_entry(side)]})


_NULLABLE_STRING = {"type": ["string", "null"]}

UPSTREAM_SERVICE: dict[str, Any] = {
    "type": "object",
    "required": [
        "type",
        "id",
        "url",
        "dialect",
        "kind",
        "version",
        "models",
        "loaded_models",
        "reachable",
        "latency_ms",
        "last_error",
        "last_checked",
    ],
    "properties": {
        "type": {"const": "upstream"},
        "id": {"type": "string"},
        "url": {"type": "string"},
        "dialect": {"type": ["string", "null"], "enum": ["ollama", "openai", None]},
        "kind": {"type": "string", "enum": list(KINDS)},
        "version": _NULLABLE_STRING,
        "models": {"type": "array", "items": {"type": "string"}},
        "loaded_models": {
            "type": ["array", "null"],
            "items": {"type": "string"},
            "description": "models in memory (Ollama's /api/ps); null where the server does not say",
        },
        "reachable": {"type": ["boolean", "null"], "description": "null before the first probe"},
        "latency_ms": {"type": ["number", "null"]},
        "last_error": _NULLABLE_STRING,
        "last_checked": {"type": ["string", "null"], "format": "date-time"},
    },
}

SIDECAR_SERVICE: dict[str, Any] = {
    "type": "object",
    "required": [
        "type",
        "id",
        "self",
        "version",
        "listen",
        "ops_listen",
        "auth",
        "store",
        "pod",
        "namespace",
        "node",
        "last_seen",
    ],
    "properties": {
        "type": {"const": "sidecar"},
        "id": {"type": "string"},
        "self": {"type": "boolean"},
        "version": {"type": "string"},
        "listen": {"type": "string"},
        "ops_listen": {"type": "string"},
        "auth": {"type": "string", "enum": ["jwt", "off"]},
        "store": {"type": "string", "enum": ["sqlite", "postgresql"]},
        "pod": _NULLABLE_STRING,
        "namespace": _NULLABLE_STRING,
        "node": _NULLABLE_STRING,
        "last_seen": {"type": "string", "format": "date-time"},
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/services": {
            "get": {
                "summary": "The upstream LLM server (kind, version, models) and this sidecar",
                "operationId": "services",
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "required": ["services"],
                            "properties": {
                                "services": {
                                    "type": "array",
                                    "items": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/UpstreamService"},
                                            {"$ref": "#/components/schemas/SidecarService"},
                                        ]
                                    },
                                }
                            },
                        },
                        "The services",
                    )
                },
            }
        }
    },
    "components": {"schemas": {"UpstreamService": UPSTREAM_SERVICE, "SidecarService": SIDECAR_SERVICE}},
}
