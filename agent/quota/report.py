"""Where each quota scope stands, as JSON-ready rows: what `GET /ops/quotas` answers and
`sidemeter quota show` prints. Cost budgets are amounts of the price table's currency, rounded
to 9 decimals (a sum of float costs carries rounding dust far below any price)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.quota.ledger import Ledger, Scope, Standing
from agent.quota.rules import COST


def _numbers(s: Standing) -> tuple[float, float, float, float]:
    """limit, used, reserved, remaining of `s` as shown."""
    limit, used, reserved, remaining = s.limit.value, s.used, s.reserved, s.remaining
    if s.limit.metric == COST:  # + 0.0: dust of -1e-18 shows as 0.0, not -0.0
        return (
            round(limit, 9) + 0.0,
            round(used, 9) + 0.0,
            round(reserved, 9) + 0.0,
            round(remaining, 9) + 0.0,
        )
    return limit, used, reserved, remaining


def scope_row(ledger: Ledger, scope: Scope) -> dict[str, Any]:
    now = ledger.clock()
    return {
        "rule": scope.rule.name,
        "scope": scope.key,
        "limits": [
            {
                "name": s.limit.key,
                "window": s.limit.period,
                **dict(zip(("limit", "used", "reserved", "remaining"), _numbers(s), strict=True)),
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
