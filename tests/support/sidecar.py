"""A sidecar running in the test's own event loop, and the config the tests start it with."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config import Config
from agent.records import UsageRecord
from agent.runtime import Sidecar
from agent.store.database import open_database
from agent.store.queries import get_record


class RunningSidecar:
    """A sidecar in this test's event loop, with a way to wait for a request's record."""

    def __init__(self, sidecar: Sidecar, upstream: str) -> None:
        self.sidecar = sidecar
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{sidecar.proxy_port}"
        self.ops_url = f"http://127.0.0.1:{sidecar.ops_port}"
        self._seen: dict[str, UsageRecord] = {}
        self._waiters: dict[str, asyncio.Future[UsageRecord]] = {}
        self.count = 0
        sidecar.recorder.listeners.append(self._on_record)

    def _on_record(self, rec: UsageRecord) -> None:
        self.count += 1
        self._seen[rec.request_id] = rec
        fut = self._waiters.pop(rec.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(rec)

    async def record(self, request_id: str, timeout: float = 10.0) -> UsageRecord:
        """The record as stored in the database, once the sidecar has submitted it."""
        if request_id not in self._seen:
            fut = self._waiters.setdefault(request_id, asyncio.get_running_loop().create_future())
            await asyncio.wait_for(fut, timeout)
        assert await asyncio.to_thread(self.sidecar.store.flush, timeout)
        db = open_database(self.sidecar.config.db)
        try:
            stored = get_record(db, request_id)
        finally:
            db.close()
        assert stored is not None, f"record {request_id} was submitted but is not in the database"
        return stored

    def last_request_id(self) -> str:
        return next(reversed(self._seen))


def sidecar_config(upstream: str, tmp_path: Path, db_url: str, **kw: object) -> Config:
    kw.setdefault("auth", "off")  # auth tests pass auth="jwt" and a key
    kw.setdefault("db", db_url)  # another database (e.g. PostgreSQL) needs its own data_dir too
    kw.setdefault("data_dir", str(tmp_path / "data"))
    return Config(
        upstream=upstream,
        listen="127.0.0.1:0",
        ops_listen="127.0.0.1:0",
        grace_period=5.0,
        **kw,  # type: ignore[arg-type]
    ).validate()
