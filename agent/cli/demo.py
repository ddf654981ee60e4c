"""`sidemeter demo` and `sidemeter mock-upstream`: the simulated LLM server, alone or with the
sidecar and a burst of traffic in front of it."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sys
from pathlib import Path

import click

from agent import config as configmod
from agent.cli.common import _fail, _setup_logging
from agent.config import ConfigError
from agent.records import Dialect


@click.command("mock-upstream")
@click.option(
    "--dialect",
    type=click.Choice([d.value for d in Dialect]),  # the values: click would show enum names
    default=Dialect.OLLAMA.value,
    show_default=True,
    help="Wire format to serve: Ollama's /api/* or the OpenAI-compatible /v1/*.",
)
@click.option("--listen", default="127.0.0.1:11434", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--flavor",
    type=click.Choice(["vllm", "llamacpp"]),
    default="vllm",
    show_default=True,
    help="For --dialect openai: where streamed usage goes "
    "(vLLM's separate chunk or llama.cpp's finish chunk).",
)
@click.option("--token-delay", type=float, default=0.02, show_default=True, help="Seconds between tokens.")
def mock_upstream(dialect: str, listen: str, flavor: str, token_delay: float) -> None:
    """Serve a simulated LLM server (Ollama or vLLM wire format) for demos and tests."""
    from agent.sim import serve

    try:
        host, port = configmod.parse_hostport(listen, "--listen")
    except ConfigError as e:
        _fail(str(e))
    serve(dialect, host, port, flavor=flavor, token_delay=token_delay)


@click.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="Sidecar HOST:PORT.")
@click.option("--ops-listen", default="127.0.0.1:9090", show_default=True, help="Ops API HOST:PORT.")
@click.option("--db", default="sqlite:///data/demo.db", show_default=True, help="Usage store URL.")
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    help="Where the demo keeps its signing secret (demo-secret), spill files and journal.",
)
@click.option("-n", "--requests", "count", default=12, show_default=True, help="Requests in the burst.")
@click.option("--exit", "exit_after", is_flag=True, help="Exit after printing the table.")
def demo(listen: str, ops_listen: str, db: str, data_dir: str, count: int, exit_after: bool) -> None:
    """Simulated LLM server + sidecar + a burst of traffic; prints the usage table and URLs."""
    from agent.demo import run_demo
    from agent.runtime import StartupError

    _setup_logging("warning")
    sidemeter, not_on_path = sidemeter_invocation(shutil.which("sidemeter"), sys.argv[0], sys.executable)
    try:
        asyncio.run(
            run_demo(
                listen=listen,
                ops_listen=ops_listen,
                db=db,
                data_dir=data_dir,
                count=count,
                exit_after=exit_after,
                sidemeter=sidemeter,
                sidemeter_note=not_on_path,
            )
        )
    except StartupError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


def sidemeter_invocation(on_path: str | None, argv0: str, python: str) -> tuple[str, str | None]:
    """How to type a `sidemeter` command in the shell this one was started from, and a note
    saying why when that is not plain `sidemeter`.

    `on_path` is what `shutil.which("sidemeter")` found. Off PATH, the commands use the absolute
    path of the running script (argv0, e.g. .venv/bin/sidemeter), or `python -m agent.cli` when
    that is how it runs; the note names the venv's activate script when there is one."""
    if on_path:
        return "sidemeter", None
    script = Path(argv0)
    if script.name != "__main__.py" and script.is_file():
        command = shlex.quote(str(script.resolve()))
    else:
        command = f"{shlex.quote(python)} -m agent.cli"
    activate = Path(python).parent / "activate"
    note = "sidemeter is not on PATH" + (
        f"; . {shlex.quote(str(activate.absolute()))} puts it there" if activate.is_file() else ""
    )
    return command, note
