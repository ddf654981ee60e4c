"""The auth part of the configuration: the `auth` group of the settings table (agent/settings.py).

`AuthSettings` has one attribute per setting of the group, named as the config key
(`auth`, `jwt_secret`, ..., `upstream_api_key`); the runtime takes it from `Config`, the addon
under plain mitmproxy from its `sidemeter_*` options.
"""

from __future__ import annotations

from typing import Any

from agent.auth.keys import safe_url
from agent.config import KEY_SOURCES
from agent.settings import dataclass_of, group


class _AuthSettingsMethods:
    """How bearer tokens are verified and what happens to the client's credentials."""

    __slots__ = ()

    @classmethod
    def from_config(cls, cfg: Any) -> Any:
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})  # type: ignore[attr-defined]

    @property
    def mode(self) -> str:
        return getattr(self, "auth")  # noqa: B009

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def key_sources(self) -> list[str]:
        return [name for name in KEY_SOURCES if getattr(self, name)]

    @property
    def audiences(self) -> list[str]:
        return [a.strip() for a in (getattr(self, "jwt_audience") or "").split(",") if a.strip()]  # noqa: B009

    def describe(self) -> str:
        """For the start-up log line: the mode and where the key comes from, never the key."""
        s: Any = self
        if not self.enabled:
            return "off"
        if s.jwt_secret:
            return "jwt (shared secret)"
        if s.jwt_secret_file:
            return f"jwt (shared secret from {s.jwt_secret_file})"
        if s.jwt_public_key:
            return f"jwt (public key {s.jwt_public_key})"
        if s.jwks_url:
            return f"jwt (JWKS {safe_url(s.jwks_url)})"
        return f"jwt (JWKS file {s.jwks_file})"


AuthSettings: Any = dataclass_of("AuthSettings", group("auth"), _AuthSettingsMethods, frozen=True)
