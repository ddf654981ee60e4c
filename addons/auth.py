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

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addons import headers as hdr
from addons.flowstate import record_of
from agent.auth.bearer import bearer_token, www_authenticate
from agent.auth.errors import AuthError, KeyConfigError
from agent.auth.settings import AuthSettings
from agent.auth.verify import Verifier
from agent.metrics import AUTH_FAILURES
from agent.records import REQUEST_ID_HEADER, Outcome
from agent.settings import declare_options, option_names, read_options
from agent.wire.errors import error_body
from agent.wire.request import classify

log = logging.getLogger("sidemeter.auth")

USER_HEADER = "X-User-Id"
USER_KEY = USER_HEADER.lower().encode()
ANONYMOUS = "anonymous"
MAX_UNVERIFIED_USER = 256  # X-User-Id is only trusted with --auth off; keep records sane anyway


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
        declare_options(loader, "auth")

    def configure(self, updated: set[str]) -> None:
        if not self._from_options or not updated & option_names("auth"):
            return
        settings = AuthSettings(**read_options(ctx.options, "auth"))
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
