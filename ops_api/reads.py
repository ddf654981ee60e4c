"""Reading the usage store from a handler without stalling the proxy: each query runs in a
worker thread on a connection of its own, never on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import peewee

from agent.store.database import StoreError, errors_as_store_error, open_database
from agent.store.writer import UsageStore
from ops_api.errors import OpsError

T = TypeVar("T")


def query_store(store: UsageStore, query: Callable[[peewee.Database], T]) -> T:
    """`query(db)` on a connection of its own (StoreError when the store cannot be read).
    Blocks: call it from a worker thread."""
    shared = store.db
    if isinstance(shared, peewee.SqliteDatabase) and shared.database == ":memory:":
        return query(shared)  # the writer's connection is the only way into a memory database
    db = open_database(store.url, create=False)
    try:
        with errors_as_store_error(db, "reading usage records from"):
            return query(db)
    finally:
        db.close()


async def read_store(store: UsageStore, query: Callable[[peewee.Database], T]) -> T:
    """`query(db)` in a worker thread; a store that cannot be read answers 503."""
    try:
        return await asyncio.to_thread(query_store, store, query)
    except StoreError as e:
        raise OpsError(503, str(e)) from None
