"""Reading the usage store from a handler without stalling the proxy: each query runs in a
worker thread on a reading connection of its own (`UsageStore.readers`), never on the event
loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import peewee

from agent.store.database import StoreError
from agent.store.writer import UsageStore
from ops_api.errors import OpsError

T = TypeVar("T")


def query_store(store: UsageStore, query: Callable[[peewee.Database], T]) -> T:
    """`query(db)` on a connection of its own (StoreError when the store cannot be read).
    Blocks: call it from a worker thread."""
    shared = store.db
    if isinstance(shared, peewee.SqliteDatabase) and shared.database == ":memory:":
        return query(shared)  # the writer's connection is the only way into a memory database
    return store.readers.read(query)


async def read_store(store: UsageStore, query: Callable[[peewee.Database], T]) -> T:
    """`query(db)` in a worker thread; a store that cannot be read answers 503."""
    try:
        return await asyncio.to_thread(query_store, store, query)
    except StoreError as e:
        raise OpsError(503, str(e)) from None
