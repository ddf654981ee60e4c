"""The usage journal: lines the spill re-ingest reads, segments deleted once stored, a dead
process's journal replayed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.records import Outcome, UsageRecord, new_request_id
from agent.store.journal import JOURNAL_PREFIX, journal_line
from agent.store.queries import get_record
from agent.store.spill import spill_line
from agent.store.writer import UsageStore


def _record(**kw: object) -> UsageRecord:
    return UsageRecord(request_id=new_request_id(), model="m", outcome=Outcome.OK, completion_tokens=3, **kw)  # type: ignore[arg-type]


def test_a_journal_line_reads_back_as_the_record() -> None:
    rec = _record(prompt="caf\u00e9 \ud800")  # a lone surrogate: orjson refuses, json escapes it
    plain = _record()
    for r in (rec, plain):
        assert UsageRecord.from_dict(json.loads(journal_line(r))) == UsageRecord.from_dict(
            json.loads(spill_line(r))
        )
    assert UsageRecord.from_dict(json.loads(journal_line(plain))) == plain


def test_full_segments_go_once_stored_and_a_clean_close_leaves_no_journal(tmp_path: Path) -> None:
    store = UsageStore(f"sqlite:///{tmp_path}/usage.db", spill_dir=tmp_path / "spill")
    store.start()
    assert store.journal is not None
    store.journal.segment_bytes = 1500  # a few records per segment
    for _ in range(40):
        store.submit(_record())
    assert store.flush()
    left = sorted((tmp_path / "spill").glob(JOURNAL_PREFIX + "*"))
    assert len(left) <= 2, left  # the open segment (and at most one whose marker is still queued)
    store.close()
    assert not list((tmp_path / "spill").glob(JOURNAL_PREFIX + "*"))
    assert store.written_total == 40


def test_a_dead_process_journal_is_replayed_once(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/usage.db"
    spill = tmp_path / "spill"
    first = UsageStore(db, spill_dir=spill)
    first.start()
    stored_already, only_journaled = _record(), _record()
    first.submit(stored_already)
    assert first.flush()
    first.close()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # a process that has exited
    (spill / f"{JOURNAL_PREFIX}{pid}-1-0.jsonl").write_bytes(
        journal_line(stored_already) + journal_line(only_journaled) + b'{"torn'
    )
    second = UsageStore(db, spill_dir=spill)
    second.start()
    try:
        assert get_record(second.db, only_journaled.request_id) is not None
        rows = second.db.execute_sql("SELECT COUNT(*) FROM usage_logs").fetchone()[0]
        assert rows == 2  # the already stored one is not stored twice
        assert not list(spill.glob(f"*{pid}*.jsonl")) and os.getpid() != pid
    finally:
        second.close()
