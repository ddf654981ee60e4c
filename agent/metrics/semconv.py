"""The OpenTelemetry GenAI semantic conventions as far as the sidecar's metrics use them.

Names are the conventions' instrument names as OpenTelemetry's Prometheus exporter writes them
(dots become underscores, the unit `s` becomes `_seconds`, `{token}` is dropped, counters get
`_total`). Two generations:

- Default: the names of semantic-conventions v1.41.0 (`docs/gen-ai/gen-ai-metrics.md`, the last
  release before the GenAI conventions moved to open-telemetry/semantic-conventions-genai),
  which gateways deploy today: `gen_ai.client.token.usage` with `gen_ai.token.type`, and the
  `gen_ai.server.*` latency histograms.
- `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`: the token instruments of
  semantic-conventions-genai (`docs/gen-ai/gen-ai-token-metrics.md`), which replace
  `gen_ai.client.token.usage`: per-category counters `gen_ai.client.inference.usage.*` and the
  per-operation histograms `gen_ai.client.inference.operation.{input,output}_tokens`. As the
  convention's transition plan says, the replaced instrument is then no longer emitted; the
  `gen_ai.server.*` histograms stand in both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from agent.records import Dialect, Operation

OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
LATEST_EXPERIMENTAL: Final = "gen_ai_latest_experimental"


def latest_experimental(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list) opts in to the latest names."""
    value = (os.environ if environ is None else environ).get(OPT_IN_ENV, "")
    return LATEST_EXPERIMENTAL in (v.strip() for v in value.split(","))


# Bucket boundaries: each instrument's `ExplicitBucketBoundaries` advice in the convention.
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
REQUEST_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)

# `gen_ai.operation.name` well-known values for the sidecar's operations. Requests that are not
# inference (`other`: /api/tags, /v1/models, probes) are no GenAI operation: they are counted by
# sidemeter_requests_total only. A Responses API call answers a conversation: `chat` is the
# nearest well-known value (the convention lists none of its own for it).
OPERATION_NAMES: Final[Mapping[str, str]] = {
    Operation.CHAT: "chat",
    Operation.COMPLETION: "text_completion",
    Operation.EMBEDDING: "embeddings",
    Operation.RESPONSES: "chat",
}

# `gen_ai.provider.name`: the kind of server behind the sidecar. The convention has no well-known
# value for self-hosted servers, so these are custom values, spelled like its own (`mistral_ai`).
OLLAMA: Final = "ollama"
VLLM: Final = "vllm"
LLAMA_CPP: Final = "llama_cpp"
OPENAI_COMPATIBLE: Final = "openai_compatible"  # an OpenAI-compatible server not identified further
PROVIDERS: Final = (OLLAMA, VLLM, LLAMA_CPP, OPENAI_COMPATIBLE)

_PROVIDER_SPELLINGS: Final = {
    "ollama": OLLAMA,
    "vllm": VLLM,
    "llama.cpp": LLAMA_CPP,
    "llamacpp": LLAMA_CPP,
    "llama_cpp": LLAMA_CPP,
    "llama-cpp": LLAMA_CPP,
}


def provider_name(kind: str | None) -> str:
    """`gen_ai.provider.name` for a server kind as a prober or a person names it ("Ollama",
    "vLLM", "llama.cpp"); anything else OpenAI-compatible is `openai_compatible`."""
    return _PROVIDER_SPELLINGS.get((kind or "").strip().lower(), OPENAI_COMPATIBLE)


def provider_of_dialect(dialect: str) -> str | None:
    """The provider a request's dialect proves: only Ollama serves `/api/*`."""
    return OLLAMA if dialect == Dialect.OLLAMA else None
