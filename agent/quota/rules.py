"""Quota rules as the config file declares them (`[[quotas]]` tables), parsed and checked.

A rule names a user, a team or neither (everyone) and any of the limits in `LIMITS`. Rules are
matched most specific first: a user's own rule, then their team's, then the everyone rule. A
team rule is shared by the whole team; the everyone rule gives each user a quota of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# How long a window is, and which usage a limit counts.
MINUTE: Final = "minute"
DAY: Final = "day"
MONTH: Final = "month"
PERIODS: Final = (MINUTE, DAY, MONTH)
REQUESTS: Final = 0
INPUT: Final = 1
OUTPUT: Final = 2
TOTAL: Final = 3
COST: Final = 4  # in the price table's currency
METRIC_NAMES: Final = ("requests", "input_tokens", "output_tokens", "tokens", "cost")

# Limit key -> (window, counted usage).
LIMITS: Final[Mapping[str, tuple[str, int]]] = {
    "requests_per_minute": (MINUTE, REQUESTS),
    "tokens_per_minute": (MINUTE, TOTAL),
    "input_tokens_per_minute": (MINUTE, INPUT),
    "output_tokens_per_minute": (MINUTE, OUTPUT),
    "tokens_per_day": (DAY, TOTAL),
    "tokens_per_month": (MONTH, TOTAL),
    "cost_per_day": (DAY, COST),
    "cost_per_month": (MONTH, COST),
}
EVERYONE: Final = "everyone"


def amount(value: float) -> str:
    """A cost in currency units as headers and messages show it: up to 6 decimals."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Limit:
    key: str  # e.g. tokens_per_minute
    period: str
    metric: int
    value: float  # a whole number, but for a cost budget (COST)
    # The value as the RateLimit-Limit header carries it, formatted once rather than per response.
    header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shown = amount(self.value) if self.metric == COST else str(self.value)
        object.__setattr__(self, "header", shown.encode())


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One `[[quotas]]` table: whom it matches and its limits."""

    user: str | None = None
    team: str | None = None
    limits: tuple[Limit, ...] = field(default=())

    @property
    def budgets(self) -> tuple[Limit, ...]:
        """The limits in currency (cost_per_day, cost_per_month): they need prices."""
        return tuple(lim for lim in self.limits if lim.metric == COST)

    @property
    def name(self) -> str:
        """The rule's label: `user:alice`, `team:ml` or `everyone`."""
        if self.user is not None:
            return f"user:{self.user}"
        if self.team is not None:
            return f"team:{self.team}"
        return EVERYONE

    def scope(self, user: str | None, team: str | None) -> str:
        """Whose usage the rule counts for a caller: the team's for a team rule, else the user's."""
        if self.team is not None:
            return f"team:{self.team}"
        return f"user:{user or ''}"

    def to_table(self) -> dict[str, Any]:
        """The rule as the config file writes it."""
        out: dict[str, Any] = {}
        if self.user is not None:
            out["user"] = self.user
        if self.team is not None:
            out["team"] = self.team
        out.update((lim.key, lim.value) for lim in self.limits)
        return out


def parse_rules(tables: Any, source: str, problems: list[str]) -> tuple[QuotaRule, ...]:
    """The rules of a `quotas` value read from `source`; what is wrong goes to `problems`, one
    line each, and the rule it is in is left out."""
    if not isinstance(tables, list):
        problems.append(
            f"{source}: quotas must be a list of tables ([[quotas]]), got {type(tables).__name__}"
        )
        return ()
    rules: list[QuotaRule] = []
    for n, table in enumerate(tables, 1):
        where = f"{source}: quotas rule {n}"
        before = len(problems)
        rule = _parse_rule(table, where, problems)
        if rule is not None and len(problems) == before:
            rules.append(rule)
    seen: dict[str, int] = {}
    for n, rule in enumerate(rules, 1):
        if rule.name in seen:
            problems.append(f"{source}: two quotas rules match {rule.name}; merge them into one")
        seen[rule.name] = n
    return tuple(rules)


def _parse_rule(table: Any, where: str, problems: list[str]) -> QuotaRule | None:
    if not isinstance(table, dict):
        problems.append(f"{where} is not a table; write it as [[quotas]] with keys under it")
        return None
    known = ("user", "team", *LIMITS)
    for key in table:
        if key not in known:
            problems.append(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
    who: dict[str, str | None] = {}
    for key in ("user", "team"):
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"{where}: {key} must be a non-empty string, got {value!r}")
            value = None
        who[key] = value
    if who["user"] is not None and who["team"] is not None:
        problems.append(f"{where}: give user or team, not both (a rule matches one of them, or everyone)")
    limits = []
    for key, (period, metric) in LIMITS.items():
        if key not in table:
            continue
        value = table[key]
        if metric == COST:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                problems.append(f"{where}: {key} must be a positive amount of the currency, got {value!r}")
                continue
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{where}: {key} must be a positive whole number, got {value!r}")
            continue
        limits.append(Limit(key, period, metric, value))
    if not any(k in LIMITS for k in table):
        problems.append(f"{where}: no limit; give at least one of {', '.join(LIMITS)}")
    return QuotaRule(who["user"], who["team"], tuple(limits))


class RuleIndex:
    """The rule that applies to a caller, found with at most three dict lookups."""

    __slots__ = ("everyone", "teams", "users")

    def __init__(self, rules: Iterable[QuotaRule]) -> None:
        self.users: dict[str, QuotaRule] = {}
        self.teams: dict[str, QuotaRule] = {}
        self.everyone: QuotaRule | None = None
        for rule in rules:
            if rule.user is not None:
                self.users[rule.user] = rule
            elif rule.team is not None:
                self.teams[rule.team] = rule
            else:
                self.everyone = rule

    def match(self, user: str | None, team: str | None) -> QuotaRule | None:
        """Most specific first: the user's rule, their team's, the everyone rule."""
        if user is not None and (rule := self.users.get(user)) is not None:
            return rule
        if team is not None and (rule := self.teams.get(team)) is not None:
            return rule
        return self.everyone


def rules_from_tables(tables: Sequence[Mapping[str, Any]]) -> tuple[QuotaRule, ...]:
    """Rules from already valid tables (tests, tools); ValueError listing the problems otherwise."""
    problems: list[str] = []
    rules = parse_rules(list(tables), "quotas", problems)
    if problems:
        raise ValueError("; ".join(problems))
    return rules
