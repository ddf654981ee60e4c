"""Reading and deleting stored usage records: what the CLI, the demo and the ops API ask of
the `usage_logs` table. Each function takes the database `open_database` returned."""

from __future__ import annotations

import csv
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TextIO

import peewee

from agent.records import FIELD_NAMES, UsageRecord, utcnow
from agent.store import rollups
from agent.store.schema import ADDED_COLUMNS, COLUMNS, RECORD_COLUMNS, USAGE_TABLE, UsageLog

EXPORT_FORMATS: Final = ("jsonl", "csv")


_READABLE: weakref.WeakKeyDictionary[peewee.Database, tuple[peewee.Field, ...]] = weakref.WeakKeyDictionary()


def _record_columns(db: peewee.Database) -> tuple[peewee.Field, ...]:
    """The record columns `db` has: reading commands never migrate, so a file of an older
    schema lacks the columns added since (its records read None there)."""
    columns = _READABLE.get(db)
    if columns is None:
        have = {c.name for c in db.get_columns(USAGE_TABLE)}
        missing = {name for name in ADDED_COLUMNS if COLUMNS[name].column_name not in have}
        columns = tuple(c for c in RECORD_COLUMNS if c.name not in missing) if have else RECORD_COLUMNS
        _READABLE[db] = columns
    return columns


def _filtered(query: peewee.Query, **equal: str | None) -> peewee.Query:
    """`query` limited to the records whose columns equal the given values (None: any)."""
    conditions = [COLUMNS[name] == value for name, value in equal.items() if value is not None]
    return query.where(*conditions) if conditions else query


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
    query = _filtered(UsageLog.select(*_record_columns(db)), user=user, model=model)
    if since is not None:
        query = query.where(COLUMNS["ts"] >= since)
    if until is not None:
        query = query.where(COLUMNS["ts"] < until)
    if newest_first:
        query = query.order_by(COLUMNS["ts"].desc(), COLUMNS["id"].desc())
    else:
        query = query.order_by(COLUMNS["ts"], COLUMNS["id"])
    if limit is not None:
        query = query.limit(limit)
    for row in query.bind(db).dicts().iterator():
        yield UsageRecord(**row)


PAGE_LIMIT_MAX: Final = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """One page of records, newest first, and the id to continue below (None: no more)."""

    records: list[UsageRecord]
    next_before: int | None


def _page_query(
    db: peewee.Database,
    since: datetime | None,
    user: str | None,
    team: str | None,
    model: str | None,
    outcome: str | None,
) -> peewee.Query:
    query = _filtered(
        UsageLog.select(COLUMNS["id"], *_record_columns(db)),
        user=user,
        team=team,
        model=model,
        outcome=outcome,
    )
    return query if since is None else query.where(COLUMNS["ts"] >= since)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise ValueError(f"limit must be 1..{PAGE_LIMIT_MAX}, got {limit}")


def page_records(
    db: peewee.Database,
    *,
    limit: int = 20,
    before: int | None = None,
    since: datetime | None = None,
    user: str | None = None,
    team: str | None = None,
    model: str | None = None,
    outcome: str | None = None,
) -> Page:
    """Up to `limit` matching records with ids below `before`, newest (highest id) first.

    Keyset paging on the never-reused id: a page continues strictly below the last id it
    returned, so records written meanwhile (higher ids) neither shift nor repeat later pages,
    and each page costs one index range scan however deep it is."""
    _check_limit(limit)
    id_column = COLUMNS["id"]
    query = _page_query(db, since, user, team, model, outcome)
    if before is not None:
        query = query.where(id_column < before)
    rows = list(query.order_by(id_column.desc()).limit(limit + 1).bind(db).dicts())
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [row.pop("id") for row in rows]
    return Page([UsageRecord(**row) for row in rows], ids[-1] if more else None)


def records_after(
    db: peewee.Database,
    after: int,
    *,
    limit: int = PAGE_LIMIT_MAX,
    user: str | None = None,
    team: str | None = None,
    model: str | None = None,
    outcome: str | None = None,
) -> tuple[list[UsageRecord], int]:
    """Up to `limit` matching records with ids above `after`, oldest first, and the highest
    id read (`after` when none): what a follower prints next and where it continues."""
    _check_limit(limit)
    id_column = COLUMNS["id"]
    query = _page_query(db, None, user, team, model, outcome).where(id_column > after)
    rows = list(query.order_by(id_column).limit(limit).bind(db).dicts())
    last = rows[-1]["id"] if rows else after
    for row in rows:
        del row["id"]
    return [UsageRecord(**row) for row in rows], last


def newest_id(db: peewee.Database) -> int:
    """The highest record id stored (0 when empty): where a follower starts."""
    return int(UsageLog.select(peewee.fn.MAX(COLUMNS["id"])).bind(db).scalar() or 0)


def get_record(db: peewee.Database, request_id: str) -> UsageRecord | None:
    """The newest record with this request id (clients may reuse an `X-Request-ID`)."""
    query = (
        UsageLog.select(*_record_columns(db))
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
