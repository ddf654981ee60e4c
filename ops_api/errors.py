"""Every error of the ops API is one JSON shape: `{"error": {"type", "message", "allowed"?}}`.

`error_middleware` turns aiohttp's own HTTP exceptions (unknown path, wrong method) and any
unexpected exception into that shape, so no client ever sees an HTML page or a traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

log = logging.getLogger("sidemeter.ops")

# HTTP status -> the `type` of the error body.
ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "bad_request",
    415: "bad_request",
    503: "unavailable",
}


def error_body(status: int, message: str, *, allowed: Iterable[str] | None = None) -> dict[str, object]:
    error: dict[str, object] = {"type": ERROR_TYPES.get(status, "internal"), "message": message}
    if allowed is not None:
        error["allowed"] = list(allowed)
    return {"error": error}


def json_error(
    status: int,
    message: str,
    *,
    allowed: Iterable[str] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(error_body(status, message, allowed=allowed), status=status, headers=headers)


class OpsError(Exception):
    """Raised by a handler to answer with a JSON error (e.g. a bad query parameter)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        allowed: Iterable[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allowed = list(allowed) if allowed is not None else None
        self.headers = headers

    def response(self) -> web.Response:
        return json_error(self.status, self.message, allowed=self.allowed, headers=self.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OpsError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "www-authenticate")}
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif e.status == 405:
            message = (
                f"{request.method} is not allowed on {request.path}; allowed: {headers.get('Allow', '')}"
            )
        return json_error(e.status, message, headers=headers)
    except Exception:
        log.exception("ops API: %s %s failed", request.method, request.path)
        return json_error(500, f"internal error while answering {request.method} {request.path}")
