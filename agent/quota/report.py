"""Where each quota scope stands, as JSON-ready rows: what `GET /ops/quotas` answers and
`sidemeter quota show` prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.quota.ledger import Ledger, Scope


def scope_row(ledger: Ledger, scope: Scope) -> dict[str, Any]:
    now = ledger.clock()
    return {
        "rule": scope.rule.name,
        "scope": scope.key,
        "limits": [
            {
                "name": s.limit.key,
                "window": s.limit.period,
                "limit": s.limit.value,
                "used": s.used,
                "reserved": s.reserved,
                "remaining": s.remaining,
                "reset": datetime.fromtimestamp(s.reset_at, UTC).isoformat().replace("+00:00", "Z"),
                "reset_in_s": s.reset_in(now),
            }
            for s in ledger.standing_of(scope)
        ],
    }


def quota_report(ledger: Ledger, *, user: str | None = None, team: str | None = None) -> dict[str, Any]:
    """The rules, and the scopes met so far (only the one applying to `user` or `team` when given)."""
    if user is not None or team is not None:
        one = ledger.scope_for(user, team)
        scopes = [one] if one is not None else []
    else:
        scopes = sorted(ledger.scopes.values(), key=lambda s: (s.rule.name, s.key))
    return {
        "rules": [{"rule": r.name, **r.to_table()} for r in ledger.rules],
        "scopes": [scope_row(ledger, s) for s in scopes],
    }
