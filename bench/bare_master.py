"""A minimal embedded mitmproxy in reverse mode, without any Sidemeter addon.

The proxy core the sidecar embeds (`mitmproxy.master.Master` with the same stock addons as
`agent/runtime.py`) plus one line that streams SSE/NDJSON responses, as the meter does, so
the difference between this column and `sidemeter` in `bench/overhead.py` is what the sidecar
adds on top of the proxy core (auth, parsing, usage injection and stripping, records, the store
writer, the ops API) and nothing else. It runs on the sidecar's event loop (uvloop, from
`agent.runtime.new_event_loop`, where that exists); the bench starts it under `python -O` as the
sidecar re-executes itself (SIDEMETER_OPTIMIZE=0 turns both off).

    python -O bench/bare_master.py --upstream http://127.0.0.1:8000 --listen 127.0.0.1:8080 --confdir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from mitmproxy import http, options
from mitmproxy.addons import core, next_layer, proxyserver
from mitmproxy.master import Master

STREAM_CONTENT_TYPES = ("text/event-stream", "application/x-ndjson")


class StreamThrough:
    """Relay streamed responses chunk by chunk instead of buffering them whole."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        if flow.response.headers.get("content-type", "").startswith(STREAM_CONTENT_TYPES):
            flow.response.stream = True


async def serve(upstream: str, listen: str, confdir: str) -> None:
    opts = options.Options()
    master = Master(opts)  # needs the running loop: built inside the coroutine
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), StreamThrough())
    opts.update(mode=[f"reverse:{upstream}@{listen}"], connection_strategy="lazy", confdir=confdir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop the sidecar runs on: whatever `agent.runtime.new_event_loop` picks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from agent.runtime import new_event_loop
    except ImportError:
        return asyncio.new_event_loop
    return new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    parser.add_argument("--confdir", required=True, help="mitmproxy confdir (keeps ~/.mitmproxy clean)")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.upstream, args.listen, args.confdir))


if __name__ == "__main__":
    main()
