"""What the ops answers say about the sidecar itself: its instance name, times, store kind."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

from ops_api.view import SidecarView

# Kubernetes downward-API variables (set them from metadata.name, metadata.namespace, spec.nodeName).
POD_ENV, NAMESPACE_ENV, NODE_ENV = "POD_NAME", "POD_NAMESPACE", "NODE_NAME"


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO-8601 UTC with milliseconds: 2026-12-03T13:05:00.123Z."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instance(side: SidecarView) -> str:
    """The pod's name in Kubernetes, else host:proxy-port (unique among sidecars on one host)."""
    pod = os.environ.get(POD_ENV)
    if pod:
        return pod
    return f"{socket.gethostname()}:{side.proxy_port}"


def store_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgresql"


def address(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
