"""`GET /ops/services`: the sidecars writing to this store and the upstream each one fronts.

Ours come first, as they are now (the upstream from the prober's last answer, never probed on the
request); then every other sidecar of the fleet registry with its upstream as that sidecar's
prober last reported it, from the registry as the heartbeat last read it (agent/store/registry.py:
the request never waits on the database). Each sidecar entry names its state: live, stale or
stopped."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from agent import __version__
from agent.store.registry import LIVE, STATES, Member, state
from agent.upstream import KINDS, UpstreamStatus
from ops_api.about import NAMESPACE_ENV, NODE_ENV, POD_ENV, address, instance, iso, store_kind
from ops_api.openapi import json_content
from ops_api.view import SIDECAR, SidecarView

routes = web.RouteTableDef()


def upstream_entry(up: UpstreamStatus, number: int, sidecar: str) -> dict[str, Any]:
    return {
        "type": "upstream",
        "id": f"upstream-{number}",
        "sidecar": sidecar,
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
    """This sidecar: live (it is answering), last seen now."""
    cfg, registry = side.config, side.registry
    return {
        "type": "sidecar",
        "id": instance(side),
        "self": True,
        "state": LIVE,
        "version": __version__,
        "upstream": cfg.upstream,
        "listen": address(cfg.listen_address[0], side.proxy_port),
        "ops_listen": address(cfg.ops_address[0], side.ops_port),
        "auth": "off" if cfg.auth == "off" else "jwt",
        "store": store_kind(cfg.db),
        "pod": os.environ.get(POD_ENV) or None,
        "namespace": os.environ.get(NAMESPACE_ENV) or None,
        "node": os.environ.get(NODE_ENV) or None,
        "started": iso(side.started_at),
        "last_seen": iso(time.time()),
        "stopped": None,
        "last_heartbeat": iso(registry.last_beat),
        "heartbeat_error": registry.last_error,
        "conflict": registry.conflict,
    }


def member_entry(member: Member, now: float, store: str) -> dict[str, Any]:
    """Another sidecar of the fleet, as its row in the registry describes it."""
    return {
        "type": "sidecar",
        "id": member.instance,
        "self": False,
        "state": state(member, now),
        "version": member.version,
        "upstream": member.upstream,
        "listen": member.listen,
        "ops_listen": member.ops_listen,
        "auth": member.auth,
        "store": store,  # the store this registry is in
        "pod": member.pod,
        "namespace": member.namespace,
        "node": member.node,
        "started": iso(member.started),
        "last_seen": iso(member.last_seen),
        "stopped": iso(member.stopped),
        "last_heartbeat": iso(member.last_seen),
        "heartbeat_error": None,  # only a sidecar itself knows why its beats fail
        "conflict": None,
    }


def fleet(side: SidecarView) -> list[dict[str, Any]]:
    me = instance(side)
    entries = [upstream_entry(side.upstream.status, 0, me), sidecar_entry(side)]
    now, store = time.time(), store_kind(side.config.db)
    # A row under our own id is ours, or a rival's (then our entry's `conflict` says so).
    others = [m for m in side.registry.members if m.instance != me]
    for number, member in enumerate(others, 1):
        entries.append(upstream_entry(member.upstream_status, number, member.instance))
        entries.append(member_entry(member, now, store))
    return entries


@routes.get("/ops/services")
async def services(request: web.Request) -> web.Response:
    """The sidecars of the fleet (this one first) and the upstream each one fronts."""
    return web.json_response({"services": fleet(request.app[SIDECAR])})


_NULLABLE_STRING = {"type": ["string", "null"]}

UPSTREAM_SERVICE: dict[str, Any] = {
    "type": "object",
    "required": [
        "type",
        "id",
        "sidecar",
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
        "sidecar": {"type": "string", "description": "the id of the sidecar entry that fronts it"},
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
        "state",
        "version",
        "upstream",
        "listen",
        "ops_listen",
        "auth",
        "store",
        "pod",
        "namespace",
        "node",
        "started",
        "last_seen",
        "stopped",
        "last_heartbeat",
        "heartbeat_error",
        "conflict",
    ],
    "properties": {
        "type": {"const": "sidecar"},
        "id": {"type": "string"},
        "self": {"type": "boolean", "description": "the sidecar answering"},
        "state": {
            "type": "string",
            "enum": list(STATES),
            "description": "live: a heartbeat within 3 of its intervals; stale: older; stopped: shut down",
        },
        "version": {"type": "string"},
        "upstream": {"type": "string", "description": "the URL of the LLM server it fronts"},
        "listen": {"type": "string"},
        "ops_listen": {"type": "string"},
        "auth": {"type": "string", "enum": ["jwt", "off"]},
        "store": {"type": "string", "enum": ["sqlite", "postgresql"]},
        "pod": _NULLABLE_STRING,
        "namespace": _NULLABLE_STRING,
        "node": _NULLABLE_STRING,
        "started": {"type": "string", "format": "date-time"},
        "last_seen": {"type": "string", "format": "date-time"},
        "stopped": {"type": ["string", "null"], "format": "date-time"},
        "last_heartbeat": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "the last heartbeat that reached the store's fleet registry",
        },
        "heartbeat_error": {
            "type": ["string", "null"],
            "description": "why this sidecar's last heartbeat failed (its own entry only)",
        },
        "conflict": {
            "type": ["string", "null"],
            "description": "another running sidecar claims the same instance id (its own entry only)",
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/ops/services": {
            "get": {
                "summary": "The sidecars of the fleet (this one first) and the upstream each one fronts",
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
