"""What the ops API reads from the running sidecar, and the app key it is stored under."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from agent.auth.verify import Verifier
from agent.config import Config
from agent.quota.fleet import FleetSync
from agent.quota.ledger import Ledger
from agent.store.registry import Registry
from agent.store.writer import UsageStore
from agent.teamhealth import TeamHealth
from agent.upstream import UpstreamProber


class SidecarView(Protocol):
    """The running sidecar as the ops API sees it (implemented by agent.runtime.Sidecar)."""

    config: Config
    store: UsageStore
    started_at: float
    verifier: Verifier | None  # None with auth off
    upstream: UpstreamProber
    team_health: TeamHealth
    proxy_port: int | None
    ops_port: int | None
    quotas: Ledger  # the quota counters (empty rules: no quotas)
    quota_sync: FleetSync | None  # shares them with a fleet (PostgreSQL store and rules)
    registry: Registry  # this sidecar's row in the fleet registry, and the fleet it last read

    @property
    def proxy_listening(self) -> bool: ...

    @property
    def draining(self) -> bool: ...


SIDECAR = web.AppKey("sidecar", SidecarView)
