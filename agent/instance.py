"""Which sidecar this is: the name its records carry and the fleet view lists it under."""

from __future__ import annotations

import os
import socket

# Kubernetes downward-API variables (set them from metadata.name, metadata.namespace, spec.nodeName).
POD_ENV, NAMESPACE_ENV, NODE_ENV = "POD_NAME", "POD_NAMESPACE", "NODE_NAME"

LIVE_BEATS = 3
"""A sidecar of the fleet is live while its last heartbeat is at most this many of its own
heartbeat intervals old (one or two missed beats are a slow database, not a dead sidecar)."""


def instance_id(configured: str | None, proxy_port: int | None) -> str:
    """The configured `instance_id`, else the pod's name in Kubernetes, else host:proxy-port
    (unique among the sidecars of one host)."""
    if configured:
        return configured
    pod = os.environ.get(POD_ENV)
    if pod:
        return pod
    return f"{socket.gethostname()}:{proxy_port}"


def address(host: str, port: int | None) -> str:
    """HOST:PORT as a listener's address is written (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
