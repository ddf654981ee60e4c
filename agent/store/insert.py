"""The writer's INSERT: many usage rows in a few multi-row statements."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

import peewee

from agent.records import FIELD_NAMES
from agent.store.schema import USAGE_TABLE


class MultiRowInsert:
    """INSERT of many records with a few multi-row `VALUES (...), (...)` statements.

    Python's sqlite3 lets go of the GIL for each statement step and has to win it back from a
    busy event loop afterwards; with `executemany` that was once per record, so every record
    stalled the loop for a GIL hand-over. Here a batch takes one statement per power of two
    in its size (100 rows: 64 + 32 + 4). Power-of-two sizes only, because every distinct
    statement text stays prepared in the driver's statement cache, and one of 300 rows holds
    megabytes: a statement per batch size grew the sidecar by ~50 MB under load."""

    ROWS_PER_STATEMENT = 512

    def __init__(self, db: peewee.Database) -> None:
        # Quoted as peewee quotes them: `user` is a reserved word in PostgreSQL.
        q0, q1 = db.quote[0], db.quote[1]
        columns = ", ".join(f"{q0}{name}{q1}" for name in FIELD_NAMES)
        self.head = f"INSERT INTO {q0}{USAGE_TABLE}{q1} ({columns}) VALUES "
        # The new ids feed the rollups. SQLite: one writer at a time, so a statement's rows
        # get consecutive ids ending at lastrowid; PostgreSQL: RETURNING names them.
        self.sqlite = isinstance(db, peewee.SqliteDatabase)
        self.tail = "" if self.sqlite else " RETURNING id"
        self.group = "(" + ", ".join([db.param] * len(FIELD_NAMES)) + ")"
        most = self.ROWS_PER_STATEMENT
        if isinstance(db, peewee.SqliteDatabase):  # SQLite caps the parameters per statement
            most = min(
                most, db.connection().getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(FIELD_NAMES)
            )
        self.per_statement = 1 << (max(1, most).bit_length() - 1)  # the largest power of two <= most
        self._sql: dict[int, str] = {}

    def sizes(self, rows: int) -> Iterator[int]:
        """Statement sizes for `rows` rows: whole largest statements, then the binary digits."""
        step = self.per_statement
        yield from itertools.repeat(step, rows // step)
        rest = rows % step
        while rest:
            size = 1 << (rest.bit_length() - 1)
            yield size
            rest -= size

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self.head + ", ".join([self.group] * rows) + self.tail
        return text

    def run(self, db: peewee.Database, rows: list[list[Any]]) -> list[int]:
        """Insert the rows in the caller's transaction; returns their new ids."""
        cursor = db.cursor()
        start = 0
        ids: list[int] = []
        for size in self.sizes(len(rows)):
            chunk = rows[start : start + size]
            start += size
            cursor.execute(self.sql(size), list(itertools.chain.from_iterable(chunk)))
            if self.sqlite:
                last = cursor.lastrowid
                ids.extend(range(last - size + 1, last + 1))
            else:
                ids.extend(row[0] for row in cursor.fetchall())
        return ids
