"""`sidemeter run` as a real subprocess, and what the tests that stop, kill or starve it read back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.files import db_files, immutable
from tests.support.paths import ROOT

__all__ = ["SidemeterProcess", "db_files", "immutable", "stored"]

CLI = [sys.executable, "-m", "agent.cli"]


class SidemeterProcess:
    """`sidemeter run` in a subprocess; its stdout (after the ready line: the access lines) and
    stderr collected line by line on threads, so neither pipe fills and blocks it."""

    def __init__(
        self,
        upstream: str,
        tmp_path: Path,
        *extra: str,
        auth: Sequence[str] = ("--auth", "off"),
        db: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`db`: another store than tmp_path/usage.db (e.g. PostgreSQL); `env`: SIDEMETER_*
        settings without a flag (the caller's own SIDEMETER_* variables are never passed on)."""
        self.db_path = tmp_path / "usage.db"
        self.data_dir = tmp_path / "data"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
        environ["PYTHONPATH"] = str(ROOT)
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [
                *CLI,
                "run",
                "--upstream",
                upstream,
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--db",
                db or f"sqlite:///{self.db_path}",
                *auth,
                "--data-dir",
                str(self.data_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environ,
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.proxy_port, self.ops_port = self._wait_ready()
        self.stdout_lines: list[str] = []  # after the ready line: the access lines
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()
        self.url = f"http://127.0.0.1:{self.proxy_port}"

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> tuple[int, int]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("sidemeter ready"):
                parts = line.replace(",", "").split()  # "sidemeter ready: proxy :P, ops :P (pid N)"
                return int(parts[3].lstrip(":")), int(parts[5].lstrip(":"))
        self.proc.wait(30)
        self._reader.join(10)
        raise AssertionError("sidecar exited before ready:\n" + "\n".join(self.stderr_lines))

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        self._out_reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def stored(db_path: Path) -> dict[str, tuple[str, str | None, int | None, str]]:
    """request_id -> (outcome, error, completion_tokens, usage_source) as plain sqlite3 reads it."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute(
            "SELECT request_id, outcome, error, completion_tokens, usage_source FROM usage_logs"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
