"""Wire formats of the LLM servers Sidemeter meters: pure parsing over bytes.

Nothing here does I/O, logs, or keeps state outside the objects it returns, so every
function can be tested without a proxy and fed one byte at a time.

Dialects:
- ``ollama``: ``/api/*``; streams are NDJSON, one JSON object per ``\\n``-terminated line,
  the last one with ``"done": true`` and the counts (``prompt_eval_count``, ``eval_count``,
  durations in ns). Ollama's Go structs mark every count ``omitempty``: absent means 0.
- ``openai``: ``/v1/*`` (vLLM, llama.cpp server, Ollama's /v1, SGLang, TGI); streams are
  SSE (``data: {json}`` events separated by a blank line, then ``data: [DONE]``), the
  Responses API streams typed events (``event: <type>`` + ``data: {"type": ...}``) that end
  with ``response.completed`` / ``response.incomplete`` / ``response.failed`` and no [DONE].
  llama.cpp's server also answers the same routes without the ``/v1`` prefix, and its native
  ``/completion`` (and ``/infill``): a JSON body with ``tokens_evaluated`` (prompt) and
  ``tokens_predicted`` (output), or an SSE stream of such objects whose last one has
  ``"stop": true`` and the counts, with no [DONE]. Its error bodies are OpenAI-shaped, so these
  count as the ``openai`` dialect.

Modules, in the order a request meets them:
- ``request``: classification (dialect, operation), the request body, include_usage injection;
- ``usage``: the counts each dialect reports, and the estimate when none are;
- ``response``: what a non-streamed body says;
- ``stream``: ``StreamMeter``, the incremental reader of a streamed body (framing), with
  ``events`` (what one event says, per dialect) and ``strip`` (undoing the injected usage);
- ``decode``: decoders for compressed bodies; ``errors``: error messages read and written;
  ``fastjson``: the JSON decoder they share.

The names the addons use are re-exported here; code in the repository imports each from the
module that defines it.
"""

from agent.wire.decode import make_decoder
from agent.wire.errors import error_body
from agent.wire.request import RequestInfo, add_include_usage, classify, parse_request, should_inject_usage
from agent.wire.response import ResponseSummary, parse_response
from agent.wire.stream import StreamMeter
from agent.wire.usage import Usage, estimate_usage

__all__ = [
    "RequestInfo",
    "ResponseSummary",
    "StreamMeter",
    "Usage",
    "add_include_usage",
    "classify",
    "error_body",
    "estimate_usage",
    "make_decoder",
    "parse_request",
    "parse_response",
    "should_inject_usage",
]
