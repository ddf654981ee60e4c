"""The fleet registry: every sidecar writing to one store keeps a row in `sidemeter_instances`,
upserted at its start, renewed by a heartbeat every `heartbeat_interval` seconds and marked
stopped by its clean shutdown, so each sidecar's /ops/services lists the whole fleet.

The heartbeat runs on a thread of its own, on its own connection: neither the event loop nor a
request ever waits on the database. A database that is down only makes beats fail (logged once,
retried at the next beat); the fleet last read stays what the ops API shows.

Two processes claiming the same instance id are told apart by `run_id` (random per process): a
beat that finds another run's id in our row means someone else wrote it since our last beat.
That is warned about, not merged; a restart after a crash only finds its predecessor's row at
its first beat, which is no conflict (the predecessor never writes again).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import peewee

from agent.instance import LIVE_BEATS
from agent.store.database import describe, first_line
from agent.store.schema import SidecarInstance
from agent.upstream import UpstreamStatus

log = logging.getLogger(__name__)

LIVE, STALE, STOPPED = "live", "stale", "stopped"
STATES: Final = (LIVE, STALE, STOPPED)


@dataclasses.dataclass(frozen=True)
class Announcement:
    """What a sidecar says about itself in its row at each beat."""

    instance: str
    host: str
    pid: int
    version: str
    upstream: str
    upstream_status: UpstreamStatus
    auth: str
    listen: str
    ops_listen: str
    pod: str | None
    namespace: str | None
    node: str | None


@dataclasses.dataclass(frozen=True)
class Member:
    """One row of the registry as read back; times are Unix times."""

    instance: str
    run_id: str
    host: str
    pid: int
    version: str
    upstream: str
    upstream_status: UpstreamStatus
    auth: str
    listen: str
    ops_listen: str
    pod: str | None
    namespace: str | None
    node: str | None
    heartbeat_s: float
    started: float
    last_seen: float
    stopped: float | None


def state(member: Member, now: float) -> str:
    """`stopped` after a clean shutdown; `live` while its last beat is within LIVE_BEATS of its
    own intervals; `stale` after that (crashed, cut off from the store, or stopped uncleanly)."""
    if member.stopped is not None:
        return STOPPED
    return LIVE if now - member.last_seen <= LIVE_BEATS * member.heartbeat_s else STALE


def status_to_json(status: UpstreamStatus) -> str:
    return json.dumps(dataclasses.asdict(status), separators=(",", ":"))


def status_from_json(text: str, url: str) -> UpstreamStatus:
    """The stored prober answer; one that cannot be read is an upstream not probed yet."""
    try:
        data: dict[str, Any] = json.loads(text)
        data["models"] = tuple(data.get("models") or ())
        if data.get("loaded_models") is not None:
            data["loaded_models"] = tuple(data["loaded_models"])
        return UpstreamStatus(**data)
    except (TypeError, ValueError):
        return UpstreamStatus(url)


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _member(row: SidecarInstance) -> Member:
    stopped = row.stopped.timestamp() if row.stopped is not None else None
    return Member(
        instance=row.instance,
        run_id=row.run_id,
        host=row.host,
        pid=row.pid,
        version=row.version,
        upstream=row.upstream,
        upstream_status=status_from_json(row.upstream_status, row.upstream),
        auth=row.auth,
        listen=row.listen,
        ops_listen=row.ops_listen,
        pod=row.pod,
        namespace=row.namespace,
        node=row.node,
        heartbeat_s=row.heartbeat_s,
        started=row.started.timestamp(),
        last_seen=row.last_seen.timestamp(),
        stopped=stopped,
    )


def describe_claim(member: Member) -> str:
    started = _when(member.started).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"pid {member.pid} on {member.host}, started {started}"


class Registry:
    """This sidecar's row in the registry and its heartbeat thread; `members` is the fleet as the
    last successful beat read it."""

    def __init__(
        self,
        announce: Callable[[], Announcement],
        *,
        interval: float,
        forget_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._announce = announce
        self.interval = interval
        self.forget_after = forget_after
        self._clock = clock
        self.run_id = uuid.uuid4().hex
        self.started = clock()
        self.members: tuple[Member, ...] = ()
        self.last_beat: float | None = None  # the last beat that reached the store
        self.last_error: str | None = None  # why the last beat failed; None once one succeeds
        self.rival: Member | None = None  # the last other run seen writing our row
        self._db: peewee.Database | None = None
        self._wrote = False  # our row holds our run_id since a beat of ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def conflict(self) -> str | None:
        """Another running sidecar heartbeats under our instance id (while its beats are live)."""
        rival = self.rival
        if rival is None or state(rival, self._clock()) != LIVE:
            return None
        claim = describe_claim(rival)
        return f"instance id {rival.instance!r} is also claimed by another running sidecar ({claim})"

    # -- lifecycle (blocking: the runtime calls these in a worker thread) ----------------------

    def start(self, db: peewee.Database) -> None:
        """Register now (a failure is logged; the thread retries), then beat on a thread."""
        self._db = db
        self.beat()
        self._reset_connection()  # the caller's thread (a worker of the loop's pool) keeps none
        self._thread = threading.Thread(target=self._run, name="sidemeter-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the heartbeat and mark our row stopped (unless another run holds it now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck in the database: do not wait on it twice
                log.warning("fleet registry: the heartbeat is stuck; the row is not marked stopped")
                return
        if self._db is None:
            return
        now = self._clock()
        try:
            ours = (SidecarInstance.instance == self._announce().instance) & (
                SidecarInstance.run_id == self.run_id
            )
            query = SidecarInstance.update(stopped=_when(now), last_seen=_when(now)).where(ours)
            query.bind(self._db).execute()
        except Exception as exc:
            log.warning(
                "fleet registry: marking this sidecar stopped in %s failed (%s); the fleet lists it "
                "stale until it ages out",
                describe(self._db),
                first_line(exc),
            )
        finally:
            self._reset_connection()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
        self._reset_connection()

    # -- one beat ------------------------------------------------------------------------------

    def beat(self) -> None:
        """Write our row, drop rows older than `forget_after`, read the fleet. Never raises."""
        assert self._db is not None
        now = self._clock()
        try:
            me = self._announce()
            self._write(self._db, me, now)
            expired = _when(now - self.forget_after)
            SidecarInstance.delete().where(
                (SidecarInstance.last_seen < expired) & (SidecarInstance.instance != me.instance)
            ).bind(self._db).execute()
            rows = SidecarInstance.select().order_by(SidecarInstance.instance).bind(self._db)
            self.members = tuple(_member(row) for row in rows)
        except Exception as exc:
            if self.last_error is None:
                log.warning(
                    "fleet registry: heartbeat failed (%s); retrying every %gs",
                    first_line(exc),
                    self.interval,
                )
            self.last_error = f"heartbeat to {describe(self._db)} failed: {first_line(exc)}"
            self._reset_connection()
            return
        if self.last_error is not None:
            log.info("fleet registry: heartbeat to %s works again", describe(self._db))
        self.last_error = None
        self.last_beat = now

    def _write(self, db: peewee.Database, me: Announcement, now: float) -> None:
        values: dict[Any, Any] = {
            SidecarInstance.run_id: self.run_id,
            SidecarInstance.host: me.host,
            SidecarInstance.pid: me.pid,
            SidecarInstance.version: me.version,
            SidecarInstance.upstream: me.upstream,
            SidecarInstance.upstream_status: status_to_json(me.upstream_status),
            SidecarInstance.auth: me.auth,
            SidecarInstance.listen: me.listen,
            SidecarInstance.ops_listen: me.ops_listen,
            SidecarInstance.pod: me.pod,
            SidecarInstance.namespace: me.namespace,
            SidecarInstance.node: me.node,
            SidecarInstance.heartbeat_s: self.interval,
            SidecarInstance.started: _when(self.started),
            SidecarInstance.last_seen: _when(now),
            SidecarInstance.stopped: None,
        }
        ours = (SidecarInstance.instance == me.instance) & (SidecarInstance.run_id == self.run_id)
        if SidecarInstance.update(values).where(ours).bind(db).execute():
            self._wrote = True
            return
        found = SidecarInstance.select().where(SidecarInstance.instance == me.instance).bind(db).first()
        if found is not None and self._wrote and found.run_id != self.run_id:
            self._claimed(_member(found))
        # Take the row (back): a rival keeps seeing ours, so both of them warn.
        SidecarInstance.insert({SidecarInstance.instance: me.instance, **values}).on_conflict(
            conflict_target=[SidecarInstance.instance], update=values
        ).bind(db).execute()
        self._wrote = True

    def _claimed(self, rival: Member) -> None:
        known = self.rival is not None and self.rival.run_id == rival.run_id
        self.rival = rival
        if not known:
            log.warning(
                "%s: the records of both carry it and the fleet view lists one of them; give each "
                "sidecar its own instance_id (--instance-id or SIDEMETER_INSTANCE_ID)",
                self.conflict or f"instance id {rival.instance!r} was claimed by {describe_claim(rival)}",
            )

    def _reset_connection(self) -> None:
        """Drop this thread's connection so the next beat reconnects (a PostgreSQL connection may
        be dead). The shared `:memory:` connection is the database: keep it."""
        db = self._db
        if db is None or not db.thread_safe:
            return
        try:
            db.close()
        except Exception:
            db.dispose()
