"""Why a request's credentials, or a configured key, are refused."""

from __future__ import annotations

from typing import Final

# The closed set of rejection reasons: the `error` of a rejected usage record and the
# `reason` label of sidemeter_auth_failures_total.
REASONS: Final = (
    "missing",
    "malformed",
    "too_large",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_time_claim",
    "lifetime_too_long",
    "bad_audience",
    "bad_issuer",
    "algorithm",
    "unknown_key",
    "user_mismatch",
    "jwks_unavailable",
)


class AuthError(Exception):
    """A request's credentials are refused. `reason` is one of REASONS; `description` tells the
    client what is wrong without repeating the token."""

    def __init__(self, reason: str, description: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown auth failure reason {reason!r}")
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


class KeyConfigError(ValueError):
    """A configured key cannot be used; one line naming the setting, the file and what to do."""


def why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
