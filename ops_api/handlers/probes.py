"""Kubernetes probes and the Prometheus exposition: open without a token."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent import __version__
from agent.metrics import REGISTRY
from ops_api.openapi import json_content
from ops_api.view import SIDECAR

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    side = request.app[SIDECAR]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - side.started_at, 3),
        }
    )


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: traffic only while the proxy listens, the store writes, the upstream answers
    (unless `ready_requires_upstream` is off) and no stop is under way."""
    side = request.app[SIDECAR]
    problems = []
    if not side.proxy_listening:
        problems.append("proxy is not listening")
    if side.draining:
        problems.append("shutting down")
    if not side.store.healthy:
        problems.append(f"usage store is failing: {side.store.last_error or 'writer stopped'}")
    upstream = side.upstream.status
    if side.config.ready_requires_upstream and upstream.reachable is False:
        problems.append(f"upstream {upstream.url} is unreachable: {upstream.last_error}")
    body = {"status": "ready" if not problems else "not_ready", "problems": problems}
    return web.json_response(body, status=503 if problems else 200)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the sidecar's registry (agent/metrics/)."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


_READY: dict[str, Any] = {
    "type": "object",
    "required": ["status", "problems"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "required": ["status", "version", "uptime_s"],
                            "properties": {
                                "status": {"type": "string", "const": "ok"},
                                "version": {"type": "string"},
                                "uptime_s": {"type": "number"},
                            },
                        },
                        "The process answers",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "operationId": "readyz",
                "responses": {
                    "200": json_content(_READY, "Ready for traffic"),
                    "503": json_content(_READY, "Not ready; `problems` says why"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Metrics in the Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
}
