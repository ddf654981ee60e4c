"""The ops app: every endpoint module of ops_api/handlers/, JSON errors, the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from agent.settings import split_list
from ops_api import handlers, openapi, security
from ops_api.errors import error_middleware
from ops_api.view import SIDECAR, SidecarView

__all__ = ["SIDECAR", "SidecarView", "build_app"]


def build_app(sidecar: SidecarView) -> web.Application:
    cfg = sidecar.config
    # CORS outermost: its headers go on every answer, JSON errors and refusals included.
    app = web.Application(
        middlewares=[
            security.cors(security.CorsPolicy(split_list(cfg.ops_cors_origins))),
            error_middleware,
            security.ops_auth(sidecar.verifier, cfg.ops_role_claim, split_list(cfg.ops_roles)),
        ]
    )
    document = openapi.build_document((*handlers.MODULES, openapi))
    app.middlewares.append(openapi.unknown_query_middleware(openapi.query_parameters(document)))
    app[SIDECAR] = sidecar
    for module in handlers.MODULES:
        app.router.add_routes(module.routes)
    app.router.add_get("/ops/openapi.json", openapi.openapi_json)
    app[openapi.OPENAPI_DOCUMENT] = security.secure_document(document)
    return app
