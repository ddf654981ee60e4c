"""The ops app. The rest of the ops API (stats, services, test console, metrics) hangs off this."""

from __future__ import annotations

import time
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent import __version__
from agent.metrics import REGISTRY
from agent.store.writer import UsageStore


class SidecarView(Protocol):
    """What the ops API reads from the running sidecar (implemented by agent.runtime.Sidecar)."""

    store: UsageStore
    started_at: float

    @property
    def proxy_listening(self) -> bool: ...

    @property
    def draining(self) -> bool: ...


SIDECAR = web.AppKey("sidecar", SidecarView)


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


async def readyz(request: web.Request) -> web.Response:
    """Readiness: traffic only while the proxy listens, the store writes and no stop is under way."""
    side = request.app[SIDECAR]
    problems = []
    if not side.proxy_listening:
        problems.append("proxy is not listening")
    if side.draining:
        problems.append("shutting down")
    if not side.store.healthy:
        problems.append(f"usage store is failing: {side.store.last_error or 'writer stopped'}")
    body = {"status": "ready" if not problems else "not_ready", "problems": problems}
    return web.json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the sidecar's registry (agent/metrics.py)."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(sidecar: SidecarView) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
