"""Files made unwritable for real, for the tests of a database that refuses writes."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


@contextlib.contextmanager
def immutable(paths: Sequence[Path]) -> Iterator[None]:
    """The files made unwritable for real (`chattr +i`: root cannot write them either, and
    SQLite opens the database read-only); skips where the filesystem or the user cannot."""
    present = [str(p) for p in paths if p.exists()]
    res = subprocess.run(["chattr", "+i", *present], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {res.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *present], check=True)


def db_files(db_path: Path) -> list[Path]:
    """The SQLite database and its write-ahead log (not -shm: an immutable mapping is SIGBUS)."""
    return [db_path, db_path.with_name(db_path.name + "-wal")]
