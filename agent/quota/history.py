"""Rebuilding the ledger from the store at start: one query sums, per user and team, the usage
(requests, tokens, cost) of the records that started in each current window, so a restart
resets nobody's day or budget."""

from __future__ import annotations

from datetime import UTC, datetime

import peewee

from agent.quota.ledger import Ledger
from agent.records import Operation, Outcome
from agent.store.schema import COLUMNS, UsageLog

# What counts against a quota: inference requests that were let through.
COUNTED_OPERATIONS = (Operation.CHAT, Operation.COMPLETION, Operation.EMBEDDING, Operation.RESPONSES)


def rebuild(ledger: Ledger, db: peewee.Database) -> int:
    """Load the current windows' usage from `db` into `ledger`; returns how many (user, team)
    pairs had any. Blocks: run it off the event loop."""
    starts = ledger.window_starts()
    if not starts:
        return 0
    ts = COLUMNS["ts"]
    prompt, completion, total = (
        COLUMNS["prompt_tokens"],
        COLUMNS["completion_tokens"],
        COLUMNS["total_tokens"],
    )
    tokens = peewee.fn.COALESCE(total, peewee.fn.COALESCE(prompt, 0) + peewee.fn.COALESCE(completion, 0))
    cost = peewee.fn.COALESCE(COLUMNS["cost"], 0.0)  # None: no price matched, nothing spent
    sums: list[peewee.Node] = []
    periods = sorted(starts)
    for period in periods:
        since = datetime.fromtimestamp(starts[period], UTC)
        inside = ts >= since
        sums += [
            peewee.fn.SUM(peewee.Case(None, [(inside, 1)], 0)),
            peewee.fn.SUM(peewee.Case(None, [(inside, peewee.fn.COALESCE(prompt, 0))], 0)),
            peewee.fn.SUM(peewee.Case(None, [(inside, peewee.fn.COALESCE(completion, 0))], 0)),
            peewee.fn.SUM(peewee.Case(None, [(inside, tokens)], 0)),
            peewee.fn.SUM(peewee.Case(None, [(inside, cost)], 0.0)),
        ]
    earliest = datetime.fromtimestamp(min(starts.values()), UTC)
    query = (
        UsageLog.select(COLUMNS["user"], COLUMNS["team"], *sums)
        .where(
            ts >= earliest,
            COLUMNS["outcome"] != str(Outcome.REJECTED),
            COLUMNS["operation"].in_([str(op) for op in COUNTED_OPERATIONS]),
        )
        .group_by(COLUMNS["user"], COLUMNS["team"])
    )
    pairs = 0
    for row in query.bind(db).tuples().iterator():
        user, team, values = row[0], row[1], row[2:]
        pairs += 1
        for n, period in enumerate(periods):
            a = values[5 * n : 5 * n + 5]
            ledger.load(
                user,
                team,
                period,
                (int(a[0] or 0), int(a[1] or 0), int(a[2] or 0), int(a[3] or 0), float(a[4] or 0)),
            )
    return pairs
