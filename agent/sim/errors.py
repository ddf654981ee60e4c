"""The error a simulated handler raises, and the checks on request bodies that raise it."""

from __future__ import annotations

from typing import Any

__all__ = ["SimError", "positive_int", "text_of"]


class SimError(Exception):
    """An error answer; rendered in the wording and shape of the API it happened on."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def text_of(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "") if isinstance(part, dict) else str(part) for part in content
        )
    raise SimError(400, f"message content must be a string or a list of parts, got {type(content).__name__}")


def positive_int(value: Any, name: str) -> int | None:
    """A request's token limit (None when not given); 400 unless it is an integer of at least 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise SimError(400, f"{name} must be an integer, got {value!r}", param=name)
    if value < 1:
        raise SimError(400, f"{name} must be at least 1, got {int(value)}.", param=name)
    return int(value)
