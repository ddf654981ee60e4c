"""Who may call the ops API, and from which browser origins.

- `ops_auth`: with auth on, every `/ops/*` path except the open ones (`OPEN_PATHS`) needs a
  bearer JWT that the proxy's own Verifier accepts and whose ops role claim holds one of the
  configured roles: 401 (no or bad token, with `WWW-Authenticate`) or 403 (no role) otherwise.
  `/healthz`, `/readyz` and `/metrics` stay open for probes and Prometheus.
- `cors`: answers preflights for the configured origins without a token (browsers send none on
  a preflight), and puts the CORS headers on every answer to an allowed origin, errors included,
  so a Grafana panel can read a 401 or 403 as well as a 200.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Final

from aiohttp import web

from agent.auth.bearer import bearer_token, challenge, www_authenticate
from agent.auth.errors import AuthError
from agent.auth.verify import Identity, Verifier, claim_roles
from ops_api.errors import Handler, json_error
from ops_api.openapi import error_responses

# Everything else needs the ops role (with auth on): a path no route serves answers 401, not
# 404, to a caller without a token, and a spelling such as `//ops/services` cannot slip by.
OPEN_PATHS: Final = frozenset({"/ops/health", "/ops/openapi.json", "/healthz", "/readyz", "/metrics"})
SCHEME: Final = "bearerAuth"  # the OpenAPI security scheme of the protected operations
# The verified caller, for handlers that act on its behalf (e.g. attributing a test request).
IDENTITY = web.RequestKey("ops_identity", Identity) if hasattr(web, "RequestKey") else "ops_identity"

ALLOW_METHODS: Final = "GET, POST, OPTIONS"
ALLOW_HEADERS: Final = "Authorization, Content-Type, X-Request-ID"
EXPOSE_HEADERS: Final = "X-Request-ID, WWW-Authenticate"
MAX_AGE: Final = "600"


def protected(path: str) -> bool:
    """Whether `path` needs the ops role when auth is on."""
    return path not in OPEN_PATHS


def ops_auth(verifier: Verifier | None, claim: str, roles: Iterable[str]) -> Any:
    """The middleware that checks the ops role; with auth off (no verifier) it lets all through."""
    wanted = frozenset(roles)
    needs = ", ".join(sorted(wanted))

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if verifier is None or not protected(request.path):
            return await handler(request)
        try:
            token = bearer_token(request.headers.getall("Authorization", []))
            identity = await verifier.verify(token)
        except AuthError as e:
            return json_error(401, e.description, headers={"WWW-Authenticate": www_authenticate(e)})
        if not claim_roles(identity.claims, claim) & wanted:
            message = f"the token's {claim} claim holds none of the ops roles ({needs})"
            refusal = challenge(message, "insufficient_scope")
            return json_error(403, message, headers={"WWW-Authenticate": refusal})
        request[IDENTITY] = identity
        return await handler(request)

    return middleware


class CorsPolicy:
    """The allowed origins: exact `scheme://host[:port]` strings, or `*` for any origin."""

    def __init__(self, origins: Collection[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")
        self.enabled = bool(self.any or self.origins)

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.origins

    def headers(self, origin: str) -> dict[str, str]:
        """The headers for an allowed `origin`. An exact origin may send credentials; with `*`
        browsers forbid them, so the answer says `*` and allows none."""
        if origin in self.origins:
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
        return {"Access-Control-Allow-Origin": "*"}


def cors(policy: CorsPolicy) -> Any:
    """The CORS middleware; outermost, so it sees the final answer (JSON errors included)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.enabled:
            return await handler(request)
        origin = request.headers.get("Origin")
        preflight = (
            request.method == "OPTIONS"
            and origin is not None
            and "Access-Control-Request-Method" in request.headers
        )
        if preflight:
            assert origin is not None
            if not policy.allows(origin):
                response: web.StreamResponse = json_error(
                    403, f"origin {origin} is not allowed to call the ops API (ops_cors_origins)"
                )
                response.headers["Vary"] = "Origin"
                return response
            return web.Response(
                status=204,
                headers={
                    **policy.headers(origin),
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": MAX_AGE,
                    "Vary": "Origin",
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as e:  # a redirect or the like that the error middleware let by
            response = e
        _vary_origin(response)
        if origin is not None and policy.allows(origin):
            response.headers.update(policy.headers(origin))
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return middleware


def _vary_origin(response: web.StreamResponse) -> None:
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"


def secure_document(document: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer scheme on every protected operation of an OpenAPI document, with its
    401 and 403 answers, so the document follows the same rule as the middleware."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "With auth on: a JWT verified like the proxy's, whose ops role claim "
        "(`ops_role_claim`, default `roles`) holds one of `ops_roles` (default `ops`).",
    }
    for path, item in document.get("paths", {}).items():
        if not protected(path):
            continue
        for operation in item.values():
            operation.setdefault("security", [{SCHEME: []}])
            responses = operation.setdefault("responses", {})
            for status, entry in error_responses(401, 403).items():
                responses.setdefault(status, entry)
    return document
