"""Identity at the door: verify the bearer JWT, put the caller on the usage record, or answer 401.

First in the chain, so nothing unauthenticated reaches the upstream and the `Authorization`
header is read before anything strips it. A refused request still gets its usage record
(outcome `rejected`, error = the reason) and counts in sidemeter_auth_failures_total.

Standalone: `mitmdump --mode reverse:http://127.0.0.1:11434@8080 -s addons/errors.py
-s addons/auth.py -s addons/meter.py -s addons/record.py` with SIDEMETER_JWT_SECRET set (or
`--set sidemeter_jwks_url=...`, `--set sidemeter_auth=off`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addons import headers as hdr
from addons.flowstate import record_of
from agent.auth import AuthError, AuthSettings, KeyConfigError, Verifier
from agent.metrics import AUTH_FAILURES
from agent.records import REQUEST_ID_HEADER, Outcome
from agent.wire import classify, error_body

log = logging.getLogger("sidemeter.auth")

USER_HEADER = "X-User-Id"
USER_KEY = USER_HEADER.lower().encode()
ANONYMOUS = "anonymous"
MAX_UNVERIFIED_USER = 256  # X-User-Id is only trusted with --auth off; keep records sane anyway

# mitmproxy option -> AuthSettings field; the option names carry the sidemeter_ prefix.
_OPTIONS = (
    "auth",
    "jwt_secret",
    "jwt_secret_file",
    "jwt_public_key",
    "jwks_url",
    "jwks_file",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
    "team_claim",
    "require_user_match",
    "max_token_bytes",
    "jwks_refresh",
    "forward_authorization",
    "upstream_api_key",
)


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
    """RFC 6750 §3; error_description allows printable ASCII without `"` and `\\`."""
    desc = "".join(c for c in error.description if " " <= c <= "~" and c not in '"\\')
    return f'Bearer error="invalid_token", error_description="{desc}"'


class Auth:
    """Verifies bearer JWTs (or, with auth off, takes X-User-Id at its word) and attributes the flow.

    The runtime passes settings and a ready Verifier; under `mitmdump -s` both are built from
    the `sidemeter_*` options in `configure`."""

    def __init__(self, settings: AuthSettings | None = None, verifier: Verifier | None = None) -> None:
        self.settings = settings
        self.verifier = verifier
        self._from_options = settings is None
        self._closing: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        add = loader.add_option
        add(
            "sidemeter_auth",
            str,
            "jwt",
            "jwt: every request needs a valid bearer JWT. off: no authentication; the user is taken "
            "from X-User-Id (or 'anonymous').",
            choices=["jwt", "off"],
        )
        add(
            "sidemeter_jwt_secret",
            str | None,
            None,
            "Shared secret for HS256/384/512 tokens. Prefer the SIDEMETER_JWT_SECRET environment "
            "variable or sidemeter_jwt_secret_file: command lines are visible to other users.",
        )
        add("sidemeter_jwt_secret_file", str | None, None, "File holding the HS256/384/512 secret.")
        add(
            "sidemeter_jwt_public_key",
            str | None,
            None,
            "PEM public key (or certificate) file: RSA for RS*/PS*, EC for ES*, Ed25519 for EdDSA tokens.",
        )
        add(
            "sidemeter_jwks_url",
            str | None,
            None,
            "Identity provider's JWKS URL; cached, refreshed, and refetched when a token names a new kid.",
        )
        add("sidemeter_jwks_file", str | None, None, "Local JWKS (JSON) file of public keys.")
        add(
            "sidemeter_jwt_audience",
            str | None,
            None,
            "Required token audience (aud); several accepted values separated by commas.",
        )
        add("sidemeter_jwt_issuer", str | None, None, "Required token issuer (iss).")
        add("sidemeter_jwt_leeway", int, 30, "Seconds of clock skew allowed when checking exp, nbf and iat.")
        add(
            "sidemeter_team_claim",
            str,
            "team",
            "Token claim naming the caller's team (dotted path for nested).",
        )
        add(
            "sidemeter_require_user_match",
            bool,
            False,
            "Refuse a request whose X-User-Id header, when sent, differs from the token's sub.",
        )
        add("sidemeter_max_token_bytes", int, 8192, "Largest bearer token accepted, in bytes.")
        add("sidemeter_jwks_refresh", int, 300, "Seconds a fetched JWKS is used before it is fetched again.")
        add(
            "sidemeter_forward_authorization",
            bool,
            False,
            "Forward the client's Authorization header to the upstream (removed by default).",
        )
        add(
            "sidemeter_upstream_api_key",
            str | None,
            None,
            "Send Authorization: Bearer <key> to the upstream (vLLM --api-key). "
            "SIDEMETER_UPSTREAM_API_KEY works too and stays off the command line.",
        )

    def configure(self, updated: set[str]) -> None:
        if not self._from_options or not any(f"sidemeter_{o}" in updated for o in _OPTIONS):
            return
        values = {o: getattr(ctx.options, f"sidemeter_{o}") for o in _OPTIONS}
        values["mode"] = values.pop("auth")
        for secret in ("jwt_secret", "upstream_api_key"):
            values[secret] = values[secret] or os.environ.get(f"SIDEMETER_{secret.upper()}") or None
        settings = AuthSettings(**values)
        verifier = None
        if settings.enabled:
            try:
                verifier = Verifier.from_settings(settings)
            except KeyConfigError as e:
                raise exceptions.OptionsError(
                    str(e).replace("--auth off", "--set sidemeter_auth=off")
                ) from None
        old, self.settings, self.verifier = self.verifier, settings, verifier
        if old is not None:  # options changed at run time: release the old JWKS session
            with contextlib.suppress(RuntimeError):  # no loop yet: nothing was opened
                self._closing = asyncio.get_running_loop().create_task(old.aclose())

    async def running(self) -> None:
        if self._from_options and self.verifier is not None:
            await self.verifier.start()

    async def done(self) -> None:
        if self.verifier is not None:
            await self.verifier.aclose()

    async def request(self, flow: http.HTTPFlow) -> None:
        settings = self.settings
        if settings is None or flow.response is not None:
            return
        rec = record_of(flow)
        headers = flow.request.headers
        if self.verifier is None:  # auth off: attribution only, on the client's word
            rec.user = (hdr.get(headers, USER_KEY) or "").strip()[:MAX_UNVERIFIED_USER] or ANONYMOUS
        else:
            try:
                token = bearer_token(hdr.get_all(headers, b"authorization"))
                identity = await self.verifier.verify(token, claimed_user=hdr.get(headers, USER_KEY))
            except AuthError as e:
                self._refuse(flow, e)
                return
            rec.user, rec.team = identity.user, identity.team
        # The client's credentials are for the sidecar, not for the LLM server.
        if not settings.forward_authorization:
            hdr.remove(headers, b"authorization")
        if settings.upstream_api_key:
            hdr.put(headers, "authorization", f"Bearer {settings.upstream_api_key}")

    def _refuse(self, flow: http.HTTPFlow, error: AuthError) -> None:
        rec = record_of(flow)
        rec.outcome, rec.error, rec.status = Outcome.REJECTED, error.reason, 401
        AUTH_FAILURES.labels(error.reason).inc()
        dialect, _ = classify(flow.request.method, flow.request.path)
        body = error_body(dialect, 401, f"authentication failed: {error.description}", "authentication_error")
        flow.response = http.Response.make(
            401,
            body,
            {
                "Content-Type": "application/json",
                "WWW-Authenticate": www_authenticate(error),
                REQUEST_ID_HEADER: rec.request_id,
            },
        )
        log.debug("request %s refused: %s", rec.request_id, error.reason)


addons = [Auth()]
