"""What the ops answers say about the sidecar itself: its instance name, times, store kind."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.instance import NAMESPACE_ENV, NODE_ENV, POD_ENV, address, instance_id
from ops_api.view import SidecarView

__all__ = ["NAMESPACE_ENV", "NODE_ENV", "POD_ENV", "address", "instance", "iso", "store_kind"]


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO-8601 UTC with milliseconds: 2026-12-03T13:05:00.123Z."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instance(side: SidecarView) -> str:
    """The name this sidecar's records carry (see agent.instance.instance_id)."""
    return instance_id(side.config.instance_id, side.proxy_port)


def store_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgresql"
