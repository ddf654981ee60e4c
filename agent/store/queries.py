"""Reading and deleting stored usage records: what the CLI, the demo and the ops API ask of
the `usage_logs` table. Each function takes the database `open_database` returned."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Final, TextIO

import peewee

from agent.records import FIELD_NAMES, UsageRecord, utcnow
from agent.store import rollups
from agent.store.schema import COLUMNS, RECORD_COLUMNS, UsageLog

EXPORT_FORMATS: Final = ("jsonl", "csv")


def iter_records(
    db: peewee.Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[UsageRecord]:
    """Stored records with `since <= ts < until`, oldest first unless `newest_first`.
    Streams rows from a cursor, so exporting a large table does not load it into memory."""
    query = UsageLog.select(*RECORD_COLUMNS)
    conditions = []
    if since is not None:
        conditions.append(COLUMNS["ts"] >= since)
    if until is not None:
        conditions.append(COLUMNS["ts"] < until)
    if user is not None:
        conditions.append(COLUMNS["user"] == user)
    if model is not None:
        conditions.append(COLUMNS["model"] == model)
    if conditions:
        query = query.where(*conditions)
    if newest_first:
        query = query.order_by(COLUMNS["ts"].desc(), COLUMNS["id"].desc())
    else:
        query = query.order_by(COLUMNS["ts"], COLUMNS["id"])
    if limit is not None:
        query = query.limit(limit)
    for row in query.bind(db).dicts().iterator():
        yield UsageRecord(**row)


def get_record(db: peewee.Database, request_id: str) -> UsageRecord | None:
    """The newest record with this request id (clients may reuse an `X-Request-ID`)."""
    query = (
        UsageLog.select(*RECORD_COLUMNS)
        .where(COLUMNS["request_id"] == request_id)
        .order_by(COLUMNS["id"].desc())
        .limit(1)
    )
    row = next(iter(query.bind(db).dicts()), None)
    return None if row is None else UsageRecord(**row)


def export_records(
    db: peewee.Database, out: TextIO, fmt: str = "jsonl", since: datetime | None = None
) -> int:
    """Write records oldest first as JSON lines or CSV with exactly the record field names
    (`ts` as ISO-8601 UTC); returns how many were written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    count = 0
    records = iter_records(db, since=since)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELD_NAMES)
        writer.writeheader()
        for record in records:
            writer.writerow(record.to_dict())
            count += 1
    else:
        for record in records:
            out.write(json.dumps(record.to_dict()) + "\n")
            count += 1
    return count


def _older_than(query: peewee.Query, before: datetime | None) -> peewee.Query:
    return query if before is None else query.where(COLUMNS["ts"] < before)


def count_records(db: peewee.Database, *, before: datetime | None = None) -> int:
    """How many records are stored (with `ts` before `before`, when given)."""
    return int(_older_than(UsageLog.select(), before).bind(db).count())


def delete_records(db: peewee.Database, *, before: datetime | None = None) -> int:
    """Delete the records with `ts` before `before`, or every record, and their share of the
    rollups; returns how many."""
    with db.atomic():
        deleted = int(_older_than(UsageLog.delete(), before).bind(db).execute())
        rollups.forget_before(db, before)
    return deleted


def prune(db: peewee.Database, older_than: timedelta) -> int:
    """Delete records older than `older_than`; returns how many were deleted."""
    return delete_records(db, before=utcnow() - older_than)
