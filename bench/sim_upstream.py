"""The simulated vLLM server the benchmark talks to, with a token pace per model name.

Sidemeter's `SimulatedLLM` (what `sidemeter mock-upstream --dialect openai` serves) with one
addition: the pace of the tokens depends on the model a request names, so one server process
behind one proxy serves every scenario of `bench/overhead.py`, and every proxy (LiteLLM
included, which routes by model name) passes the choice through unchanged:

    sim-model          no delay at all: the whole answer is produced at once
    sim-model-paced    first token after 20 ms, then one every 5 ms
    sim-model-slow     one token every 250 ms (the 1,000-concurrent-streams test)

    python bench/sim_upstream.py --listen 127.0.0.1:8000 [--pace NAME=FIRST_MS,NEXT_MS]...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `agent`

from agent.sim import SimulatedLLM

# model name -> (seconds before the first token, seconds between the next ones)
DEFAULT_PACES: dict[str, tuple[float, float]] = {
    "sim-model": (0.0, 0.0),
    "sim-model-paced": (0.020, 0.005),
    "sim-model-slow": (0.250, 0.250),
}


class ModelPace:
    """A `agent.sim.Pace` that looks up the pace of the model a request names."""

    def __init__(self, paces: dict[str, tuple[float, float]]) -> None:
        self.paces = dict(paces)

    def first_token(self, model: str) -> float:
        return self.paces[model][0]

    def next_token(self, model: str) -> float:
        return self.paces[model][1]


def paced_llm(paces: dict[str, tuple[float, float]]) -> SimulatedLLM:
    """`SimulatedLLM` (vLLM flavour) serving one model per pace, each at its own pace."""
    return SimulatedLLM("openai", flavor="vllm", models=list(paces), pace=ModelPace(paces))


def _parse_pace(text: str) -> tuple[str, tuple[float, float]]:
    name, sep, ms = text.partition("=")
    first, sep2, nxt = ms.partition(",")
    if not (name and sep and sep2):
        raise argparse.ArgumentTypeError(f"--pace {text!r}: use NAME=FIRST_MS,NEXT_MS")
    return name, (float(first) / 1000, float(nxt) / 1000)


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve(host: str, port: int, paces: dict[str, tuple[float, float]]) -> None:
    sim = paced_llm(paces)
    url = await sim.start(host, port)
    print(f"simulated vLLM server listening on {url}; paces {paces}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    parser.add_argument(
        "--pace",
        action="append",
        type=_parse_pace,
        default=[],
        help="add or change a model: NAME=FIRST_MS,NEXT_MS (repeatable)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="serve on uvloop (default: asyncio's loop, as mock-upstream)"
    )
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    paces = DEFAULT_PACES | dict(args.pace)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop if args.uvloop else asyncio.new_event_loop) as runner,
    ):
        runner.run(serve(host, int(port), paces))


if __name__ == "__main__":
    main()
