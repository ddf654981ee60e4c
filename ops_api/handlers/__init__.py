"""The ops API's endpoints, one module each. A module exposes `routes` (an aiohttp
RouteTableDef) and `OPENAPI` (its part of /ops/openapi.json); `MODULES` lists them."""

from __future__ import annotations

from ops_api.handlers import console, health, probes, quotas, requests, services, stats

MODULES = (probes, health, services, stats, requests, console, quotas)
