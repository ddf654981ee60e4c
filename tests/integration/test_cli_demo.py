"""`sidemeter demo` says how to run the `sidemeter` commands it suggests, on PATH or not."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.demo import sidemeter_invocation


def test_on_path_the_commands_are_plain_sidemeter(tmp_path: Path) -> None:
    script = tmp_path / "sidemeter"
    script.touch()
    assert sidemeter_invocation("/usr/local/bin/sidemeter", str(script), sys.executable) == (
        "sidemeter",
        None,
    )


def test_off_path_the_commands_use_the_running_script_and_name_the_activate_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "my venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "sidemeter").touch()
    (bin_dir / "activate").touch()
    monkeypatch.chdir(tmp_path)  # argv[0] as typed: relative to the shell's directory
    command, note = sidemeter_invocation(None, "my venv/bin/sidemeter", str(bin_dir / "python"))
    assert shlex.split(command) == [str(bin_dir / "sidemeter")]
    assert note == f"sidemeter is not on PATH; . {shlex.quote(str(bin_dir / 'activate'))} puts it there"


def test_off_path_under_python_m_the_commands_use_python_m(tmp_path: Path) -> None:
    main = tmp_path / "agent" / "cli" / "__main__.py"
    main.parent.mkdir(parents=True)
    main.touch()
    command, note = sidemeter_invocation(None, str(main), str(tmp_path / "python3"))
    assert command == f"{tmp_path / 'python3'} -m agent.cli"
    assert note == "sidemeter is not on PATH"  # no activate script next to that python


def test_demo_off_path_prints_an_export_command_that_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sidemeter"
    if not script.is_file():
        pytest.skip(f"no console script at {script}: install the package (make test does)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
    env["PATH"] = "/usr/bin:/bin"
    db = f"sqlite:///{tmp_path}/demo.db"
    demo = [str(script), "demo", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--db", db]
    res = subprocess.run(
        [*demo, "-n", "3", "--exit"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    export = next(line for line in lines if line.lstrip().startswith("export:"))
    command = shlex.split(export.split(":", 1)[1])
    assert command == [str(script.resolve()), "usage", "export", "--db", db]
    assert "TOKEN=" in res.stdout and "/healthz" in res.stdout  # the URLs and token are still there
    assert "(sidemeter is not on PATH" in lines[lines.index(export) + 1]
    exported = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 3


def test_demo_keeps_its_secret_so_tokens_minted_for_it_stay_valid(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sidemeter"
    if not script.is_file():
        pytest.skip(f"no console script at {script}: install the package (make test does)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
    db = f"sqlite:///{tmp_path}/demo.db"
    demo = [str(script), "demo", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--db", db]

    def run_demo() -> str:
        res = subprocess.run(
            [*demo, "-n", "1", "--exit"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    first = run_demo()
    secret = tmp_path / "data" / "demo-secret"
    assert secret.stat().st_mode & 0o777 == 0o600  # a signing secret: its owner only
    kept = secret.read_text()
    for user in ("alice", "bob", "carol"):
        assert f"token of {user} " in first  # one token per demo user
    minted = subprocess.run(
        [str(script), "token", "issue", "--sub", "dave", "--team", "ml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**env, "SIDEMETER_JWT_SECRET_FILE": str(secret)},
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    run_demo()
    assert secret.read_text() == kept  # the second run signs with the same secret
    verified = subprocess.run(
        [str(script), "token", "verify", minted.stdout.strip().splitlines()[-1]],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**env, "SIDEMETER_JWT_SECRET_FILE": str(secret)},
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "valid: user dave, team ml" in verified.stderr
