"""The ops app: every endpoint module of ops_api/handlers/, JSON errors, the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from ops_api import handlers, openapi
from ops_api.errors import error_middleware
from ops_api.view import SIDECAR, SidecarView

__all__ = ["SIDECAR", "SidecarView", "build_app"]


def build_app(sidecar: SidecarView) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SIDECAR] = sidecar
    for module in handlers.MODULES:
        app.router.add_routes(module.routes)
    app.router.add_get("/ops/openapi.json", openapi.openapi_json)
    app[openapi.OPENAPI_DOCUMENT] = openapi.build_document((*handlers.MODULES, openapi))
    return app
