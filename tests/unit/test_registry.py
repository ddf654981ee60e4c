"""The fleet registry on a real SQLite file: registration, heartbeats, the states a row goes
through, forgetting old rows, two processes claiming one instance id, and a store that refuses
writes. A settable clock stands for the passing of time; the database is real."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from agent.store.database import migrate, open_database
from agent.store.registry import LIVE, STALE, STOPPED, Announcement, Member, Registry, state
from agent.upstream import UpstreamStatus
from tests.support.files import db_files, immutable

INTERVAL = 10.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[peewee.Database]:
    database = open_database(f"sqlite:///{tmp_path}/usage.db")
    migrate(database)
    yield database
    database.close()


def announce(instance: str, upstream: str = "http://127.0.0.1:11434", pid: int = 100) -> Announcement:
    status = UpstreamStatus(upstream, reachable=True, kind="ollama", version="0.5.1", models=("llama3",))
    return Announcement(
        instance=instance,
        host="gpu-1",
        pid=pid,
        version="9.9.9",
        upstream=upstream,
        upstream_status=status,
        auth="jwt",
        listen="0.0.0.0:8080",
        ops_listen="0.0.0.0:9090",
        pod=instance,
        namespace="llm",
        node="gpu-1",
    )


def registry(clock: Clock, instance: str, **kw: object) -> Registry:
    me = announce(instance, **kw)  # type: ignore[arg-type]
    return Registry(lambda: me, interval=INTERVAL, forget_after=7 * DAY, clock=clock)


def by_id(reg: Registry) -> dict[str, Member]:
    return {m.instance: m for m in reg.members}


def test_states_follow_the_rows_own_interval() -> None:
    row = Member(
        *("a", "run", "h", 1, "v", "u", UpstreamStatus("u"), "jwt", "l", "o", None, None, None),
        heartbeat_s=5.0,
        started=0.0,
        last_seen=100.0,
        stopped=None,
    )
    assert state(row, 115.0) == LIVE  # three intervals of 5 s
    assert state(row, 115.1) == STALE
    stopped = Member(**{**row.__dict__, "stopped": 100.0})
    assert state(stopped, 100.0) == STOPPED


def test_two_sidecars_see_each_other_then_one_stopped_then_forgotten(db: peewee.Database) -> None:
    clock = Clock()
    a = registry(clock, "side-a", upstream="http://10.0.0.1:11434")
    b = registry(clock, "side-b", upstream="http://10.0.0.2:8000")
    a.start(db)
    b.start(db)
    try:
        assert set(by_id(b)) == {"side-a", "side-b"}
        clock.now += INTERVAL
        a.beat()
        seen = by_id(a)
        assert seen["side-b"].upstream == "http://10.0.0.2:8000"
        assert seen["side-b"].upstream_status.models == ("llama3",)  # the prober's answer, round-tripped
        assert seen["side-a"].last_seen == clock.now and seen["side-b"].last_seen == clock.now - INTERVAL
        assert a.last_beat == clock.now and a.last_error is None
    finally:
        b.stop()
    clock.now += 1
    a.beat()
    assert state(by_id(a)["side-b"], clock.now) == STOPPED
    clock.now += 7 * DAY - 1
    a.beat()
    assert "side-b" in by_id(a)  # exactly the retention: kept
    clock.now += 2
    a.beat()
    assert set(by_id(a)) == {"side-a"}
    a.stop()


def test_a_sidecar_that_stops_beating_goes_stale(db: peewee.Database) -> None:
    clock = Clock()
    a, b = registry(clock, "side-a"), registry(clock, "side-b")
    a.start(db)
    b.start(db)
    b._stop.set()  # its thread ends without the clean shutdown's write: a crash
    clock.now += 3 * INTERVAL + 1
    a.beat()
    assert state(by_id(a)["side-b"], clock.now) == STALE
    a.stop()


def test_two_running_processes_with_one_instance_id_are_warned_about(
    db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    first = registry(clock, "gpu-1:8080", pid=100)
    second = registry(clock, "gpu-1:8080", pid=200)
    first.start(db)
    with caplog.at_level(logging.WARNING, "agent.store.registry"):
        second.start(db)  # takes the row over at its first beat: could be a restart after a crash
        assert second.conflict is None and not caplog.records
        clock.now += INTERVAL
        first.beat()  # finds another run's id in its row: someone else wrote it since
        assert first.conflict is not None and "pid 200 on gpu-1" in first.conflict
        second.beat()
        assert second.conflict is not None and "pid 100 on gpu-1" in second.conflict
        first.beat()
        second.beat()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one each, not one per beat
    assert all("give each sidecar its own instance_id" in w for w in warnings)
    first._stop.set()
    clock.now += 3 * INTERVAL + 1  # the first stopped beating: the conflict ages out
    second.beat()
    assert second.conflict is None
    second.stop()


def test_a_restart_after_a_crash_is_no_conflict(db: peewee.Database) -> None:
    clock = Clock()
    crashed = registry(clock, "side-a", pid=100)
    crashed.start(db)
    crashed._stop.set()
    clock.now += 1
    again = registry(clock, "side-a", pid=101)
    again.start(db)
    for _ in range(3):
        clock.now += INTERVAL
        again.beat()
    assert again.conflict is None
    assert [m.pid for m in again.members] == [101]
    again.stop()


def test_a_store_that_refuses_writes_fails_the_beat_and_keeps_the_fleet(
    tmp_path: Path, db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    a, b = registry(clock, "side-a"), registry(clock, "side-b")
    a.start(db)
    b.start(db)
    a.beat()  # reads b's row
    beat_at = a.last_beat
    db.close()
    with immutable(db_files(tmp_path / "usage.db")), caplog.at_level(logging.WARNING, "agent.store.registry"):
        for _ in range(3):
            clock.now += INTERVAL
            a.beat()
        assert a.last_error is not None and a.last_error.startswith("heartbeat to ")
        assert a.last_beat == beat_at and set(by_id(a)) == {"side-a", "side-b"}
    assert len(caplog.records) == 1  # logged once, retried at every beat
    clock.now += INTERVAL
    a.beat()
    assert a.last_error is None and a.last_beat == clock.now
    a.stop()
    b.stop()
