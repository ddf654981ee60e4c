"""The bearer token of an `Authorization` header, and the RFC 6750 challenge of a refusal:
shared by the proxy's auth addon and the ops API."""

from __future__ import annotations

from agent.auth.errors import AuthError

__all__ = ["bearer_token", "challenge", "www_authenticate"]


def bearer_token(values: list[str]) -> str:
    """The token of the request's `Authorization: Bearer <token>`; AuthError when there is none."""
    if not values:
        raise AuthError("missing", "no bearer token; send Authorization: Bearer <token>")
    if len(values) > 1:
        raise AuthError("malformed", "more than one Authorization header; send exactly one")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("malformed", "the Authorization header must use the Bearer scheme: Bearer <token>")
    token = token.strip()
    if not token:
        raise AuthError(
            "missing", "the Authorization header has no token; send Authorization: Bearer <token>"
        )
    return token


def www_authenticate(error: AuthError) -> str:
    """The challenge of a refused token (RFC 6750 §3)."""
    return challenge(error.description)


def challenge(description: str, code: str = "invalid_token") -> str:
    """`WWW-Authenticate: Bearer error=...`; error_description allows printable ASCII without `"`
    and `\\`. `code` is `invalid_token` (401) or `insufficient_scope` (403)."""
    desc = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
    return f'Bearer error="{code}", error_description="{desc}"'
