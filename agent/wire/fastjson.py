"""The JSON decoder every parser here uses, and the errors a malformed document raises."""

from __future__ import annotations

from typing import Final

try:  # ~4x faster than json.loads on stream events; every proxied event is decoded once
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is a correct fallback
    from json import loads

__all__ = ["JSON_ERRORS", "loads"]

# What decoding untrusted bytes can raise: JSONDecodeError (orjson's too) and
# UnicodeDecodeError are ValueErrors; json's fallback recurses on deep nesting.
JSON_ERRORS: Final = (ValueError, RecursionError)
