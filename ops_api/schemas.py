"""JSON schemas the ops API's endpoints share, for /ops/openapi.json.

`RECORD_SCHEMA` is derived from UsageRecord's type hints and closed vocabularies, so a new
record field shows up in the document without anyone editing it here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from agent.records import Dialect, Operation, Outcome, UsageSource, field_types

_JSON_TYPES: Final[dict[type, str]] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_VOCABULARIES: Final[dict[str, type[StrEnum]]] = {
    "dialect": Dialect,
    "operation": Operation,
    "outcome": Outcome,
    "usage_source": UsageSource,
}
_DESCRIPTIONS: Final[dict[str, str]] = {
    "ts": "When the request arrived (ISO-8601, UTC)",
    "prompt": "The prompt text; null unless prompt capture is on (capture_prompts)",
    "error": "Why the request failed; null when outcome is ok",
}


def _property(name: str, base: type, nullable: bool) -> dict[str, Any]:
    if base is datetime:
        prop: dict[str, Any] = {"type": "string", "format": "date-time"}
    else:
        kind = _JSON_TYPES[base]
        prop = {"type": [kind, "null"] if nullable else kind}
    if name in _VOCABULARIES:
        prop["enum"] = [str(v) for v in _VOCABULARIES[name]]
    if name in _DESCRIPTIONS:
        prop["description"] = _DESCRIPTIONS[name]
    return prop


def record_schema() -> dict[str, Any]:
    """One usage record: the object `usage export --format jsonl` writes per line."""
    types = field_types()
    return {
        "type": "object",
        "required": list(types),
        "properties": {name: _property(name, *types[name]) for name in types},
    }


RECORD_SCHEMA: Final = record_schema()
RECORD_REF: Final = {"$ref": "#/components/schemas/Record"}
