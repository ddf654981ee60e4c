"""Simulated LLM servers that speak the real servers' wire formats.

`sidemeter demo`, `sidemeter mock-upstream`, the test-suite and the benchmarks put these in
place of Ollama, vLLM or the llama.cpp server. The official clients (``openai``, ``ollama``)
talk to them unchanged, so every shape follows the upstream sources rather than a summary:

* ``SimulatedLLM("ollama")``: Ollama, native ``/api/*`` (`agent/sim/ollama.py`) and its
  OpenAI-compatible ``/v1/*`` (`agent/sim/ollama_openai.py`);
* ``SimulatedLLM("openai", flavor="vllm")``: vLLM's OpenAI server (`agent/sim/vllm.py`);
* ``SimulatedLLM("openai", flavor="llamacpp")``: llama.cpp's server (`agent/sim/llamacpp.py`);
* ``/v1/responses`` everywhere (`agent/sim/responses_api.py`).

Shared by all of them: the tokenizer and prompt templates (`agent/sim/tokens.py`), the
simulated model that plans, paces and streams a generation (`agent/sim/runner.py`,
`agent/sim/pacing.py`), the ``X-Sim-*`` request headers that inject faults or fix the answer's
length (`agent/sim/faults.py`), the wire framing (`agent/sim/wire.py`), the request checks and
error answers (`agent/sim/api.py`, `agent/sim/errors.py`, `agent/sim/openai_compat.py`), and
the aiohttp application with its start and stop (`agent/sim/server.py`).

A new server is a module with its `Api` subclasses and one entry in `SERVERS`.
"""

from agent.sim.faults import FAULTS
from agent.sim.pacing import FixedPace, Pace
from agent.sim.server import DEFAULT_MODELS, DIALECTS, FLAVORS, SERVERS, SimulatedLLM, serve
from agent.sim.tokens import count_tokens

__all__ = [
    "DEFAULT_MODELS",
    "DIALECTS",
    "FAULTS",
    "FLAVORS",
    "SERVERS",
    "FixedPace",
    "Pace",
    "SimulatedLLM",
    "count_tokens",
    "serve",
]
