"""Connections that read the usage store from worker threads (the ops API's queries, the
quota totals at start), apart from the writer's.

On PostgreSQL they are kept between queries: a new connection costs a server process and a
login, 4-6 ms on loopback with trust authentication and more with a password over a network,
which is most of a small query and a tenth of `/ops/stats` over a million records. A kept
connection the server has dropped meanwhile (a restart, `idle_session_timeout`) is replaced
and the query run once more; reads change nothing, so that is safe. SQLite files are opened
per query: that is cheap, and a connection kept open would go on reading a file that has been
replaced or deleted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Final, TypeVar

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from agent.store.database import (
    StoreError,
    connect_postgresql,
    errors_as_store_error,
    is_postgresql,
    open_database,
    postgresql_pool,
)

T = TypeVar("T")

# More than asyncio's default executor has threads on a small box (cores + 4), so its
# queries never wait for one another here.
MAX_CONNECTIONS: Final = 8
STALE_S: Final = 300.0  # a connection older than this is closed rather than handed out again
WAIT_S: Final = 10.0  # for a free connection, when MAX_CONNECTIONS threads read at once
_DOING: Final = "reading usage records from"


class Readers:
    """`read(query)` runs `query(db)` on a reading connection of the calling thread's own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: PooledPostgresqlDatabase | None = None
        self._lock = threading.Lock()

    def read(self, query: Callable[[peewee.Database], T]) -> T:
        """`query(db)`; a StoreError when the store cannot be read. Blocks: call it from a
        worker thread."""
        if not is_postgresql(self.url):
            db = open_database(self.url, create=False)
            try:
                with errors_as_store_error(db, _DOING):
                    return query(db)
            finally:
                db.close()
        pool = self._pooled()
        for attempt in (1, 2):
            connect_postgresql(pool, self.url)
            try:
                with errors_as_store_error(pool, _DOING):
                    return query(pool)
            except StoreError:
                if attempt == 1 and _dropped(pool):
                    pool.manual_close()  # the server dropped it: a fresh one, once
                    continue
                raise
            finally:
                if not pool.is_closed():
                    pool.close()  # back to the pool (closed instead when it is mid-transaction)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the kept connections (the store is closing)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close_all()

    def _pooled(self) -> PooledPostgresqlDatabase:
        with self._lock:
            if self._pool is None:
                self._pool = postgresql_pool(
                    self.url, max_connections=MAX_CONNECTIONS, stale_s=STALE_S, wait_s=WAIT_S
                )
            return self._pool


def _dropped(pool: PooledPostgresqlDatabase) -> bool:
    """The calling thread's connection is closed: the server or the network dropped it."""
    if pool.is_closed():
        return False
    return bool(getattr(pool.connection(), "closed", False))
