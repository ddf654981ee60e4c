"""The JSON decoder every parser here uses, and the errors a malformed document raises.

``loads`` is orjson: strict JSON, fast. Python servers (vLLM, SGLang: FastAPI/Starlette read a
body with Python's ``json``) also accept what Python's ``json`` does: ``NaN``, ``Infinity`` and
``-Infinity``, integers beyond 64 bits (orjson makes them floats), lone surrogate escapes. A
request such a server answers must be read too, so ``loads_lenient`` retries what orjson refuses
with Python's ``json``; the common, valid document never pays for it.
"""

from __future__ import annotations

import json
from typing import Any, Final

try:  # ~4x faster than json.loads on stream events; every proxied event is decoded once
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is a correct fallback
    from json import loads

__all__ = ["JSON_ERRORS", "loads", "loads_lenient", "loads_python"]

# What decoding untrusted bytes can raise: JSONDecodeError (orjson's too) and
# UnicodeDecodeError are ValueErrors; json's fallback recurses on deep nesting.
JSON_ERRORS: Final = (ValueError, RecursionError)


def loads_python(data: bytes | bytearray | memoryview) -> Any:
    """UTF-8 ``data`` as Python's ``json`` reads it; raises one of JSON_ERRORS. Several times
    slower than ``loads``: only for what ``loads`` refused. Byte order marks and UTF-16/32,
    which ``json.loads(bytes)`` would also take, are refused: the sidecar edits requests as
    UTF-8 bytes."""
    return json.loads(str(data, "utf-8"))


def loads_lenient(data: bytes | bytearray | memoryview) -> Any:
    """``loads``, and for what orjson refuses, ``loads_python``."""
    try:
        return loads(data)
    except JSON_ERRORS:
        return loads_python(data)
