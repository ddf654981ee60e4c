"""Error messages both ways: read from a server's error body, written in the client's dialect."""

from __future__ import annotations

import json
from typing import Any

from agent.records import Dialect

__all__ = ["error_body", "error_message"]


def error_message(err: Any) -> str:
    """``"str"`` (Ollama), ``{"message": ...}`` (OpenAI); anything else as compact JSON."""
    if isinstance(err, str):
        return err
    if isinstance(err, dict):
        msg = err.get("message")
        if isinstance(msg, str) and msg:
            return msg
    try:
        return json.dumps(err, ensure_ascii=False, separators=(",", ":"))[:500]
    except (TypeError, ValueError):
        return str(err)[:500]


def error_body(dialect: str, status: int, message: str, err_type: str = "upstream_error") -> bytes:
    """An error body in the client's dialect: ``{"error": "..."}`` for Ollama (what its
    clients read), the OpenAI error object otherwise (``code`` is the HTTP status, as vLLM
    and llama.cpp send it)."""
    if dialect == Dialect.OLLAMA:
        doc: dict[str, Any] = {"error": message}
    else:
        doc = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    try:
        return json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate read from an upstream's "\ud800": keep it escaped
        return json.dumps(doc).encode()
