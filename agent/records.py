"""The usage record: one per request that reaches the sidecar, and the closed vocabularies of its fields."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import uuid_utils


class Dialect(StrEnum):
    """The API a client speaks: Ollama's native `/api/*`, or the OpenAI-compatible `/v1/*`."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class Operation(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RESPONSES = "responses"
    OTHER = "other"  # anything that is not inference: /api/tags, /v1/models, health probes


class Outcome(StrEnum):
    """Who, if anyone, failed the request."""

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"  # the LLM server answered with an error or broke off
    REJECTED = "rejected"  # the sidecar refused it: auth, size, malformed request
    CLIENT_CANCELLED = "client_cancelled"  # the client hung up before the answer was complete
    PROXY_ERROR = "proxy_error"  # the sidecar itself failed


class UsageSource(StrEnum):
    REPORTED = "reported"  # counts the server sent
    ESTIMATED = "estimated"  # counted by the sidecar because the server sent none
    NONE = "none"  # no tokens involved (or nothing could be counted)


REQUEST_ID_HEADER: Final = "X-Request-ID"
"""The HTTP header of `UsageRecord.request_id`: the client's id when it sends one, and echoed
on every response (one name for the sidecar, its clients and the record it writes)."""


REQUEST_ID_REPLACED_HEADER: Final = "X-Request-ID-Replaced"
"""Set on a response whose request carried an `X-Request-ID` the sidecar would not keep: the
`X-Request-ID` beside it is the generated id that replaced it (in the record and upstream)."""

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_valid_request_id(value: str) -> bool:
    """A client's request id is kept when it is 1-128 of `A-Z a-z 0-9 . _ : -`: it goes into
    response headers, logs and an indexed column, where CR, NUL or a megabyte do harm."""
    return _REQUEST_ID.fullmatch(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so the stored `request_id` index grows at its end.
    Random ids (mitmproxy's flow ids are UUIDv4) land all over the index: each commit
    rewrote a page per record, and the writer's cost per record grew with the table."""
    return str(uuid_utils.uuid7())


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it went. Field names are the public contract:
    they are the `usage_logs` columns, the `usage export` keys and the `/ops/requests` keys."""

    request_id: str
    ts: datetime = field(default_factory=utcnow)
    user: str | None = None
    team: str | None = None
    client_ip: str | None = None
    upstream: str = ""
    dialect: str = Dialect.OPENAI
    endpoint: str = ""
    operation: str = Operation.OTHER
    model: str | None = None
    stream: bool = False
    status: int | None = None
    outcome: str = Outcome.OK
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_source: str = UsageSource.NONE
    latency_ms: float | None = None
    ttft_ms: float | None = None
    server_duration_ms: float | None = None
    tokens_per_second: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    prompt: str | None = None
    # Schema 4: which sidecar of a fleet metered the request (`instance_id`), and what it cost
    # by the price table (None without a price for its model).
    instance: str | None = None
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `ts` as ISO-8601 UTC, everything else as is."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["ts"] = self.ts.astimezone(UTC).isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UsageRecord:
        """Inverse of `to_dict`; unknown keys are ignored so older spill files still load."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        ts = kw.get("ts")
        if isinstance(ts, str):
            kw["ts"] = datetime.fromisoformat(ts)
        return cls(**kw)


FIELD_NAMES: Final = tuple(f.name for f in dataclasses.fields(UsageRecord))


def field_types() -> dict[str, tuple[type, bool]]:
    """(base type, nullable) per UsageRecord field, from the dataclass hints: what the store's
    columns and the ops API's record schema are derived from."""
    hints = typing.get_type_hints(UsageRecord)
    types: dict[str, tuple[type, bool]] = {}
    for name in FIELD_NAMES:
        members = typing.get_args(hints[name]) or (hints[name],)
        (base,) = [m for m in members if m is not type(None)]
        types[name] = (base, type(None) in members)
    return types


TEXT_LIMITS: Final[tuple[tuple[str, int], ...]] = (
    ("request_id", 128),
    ("user", 256),
    ("team", 256),
    ("client_ip", 64),
    ("upstream", 512),
    ("endpoint", 1024),
    ("model", 256),
    ("error", 1024),
    ("prompt", 65536),
    ("instance", 256),
)
"""The longest each text field of a stored record may be, in characters. A client controls
most of them (a path, a model name, a token's claims, the error a bad request causes), and a
refused request must not be able to store megabytes."""

TRUNCATED: Final = "…[truncated {} chars]"
"""What replaces the end of a value over its limit: the value with the marker is exactly the
limit long, and says how many characters of the original are not stored."""


def bounded(value: str, limit: int) -> str:
    """`value`, or its start and the `TRUNCATED` marker when it is longer than `limit`."""
    if len(value) <= limit:
        return value
    keep = max(0, limit - len(TRUNCATED.format(len(value))))  # the longest marker it can need
    # A shorter count leaves room for more of the value; each pass only keeps more, and stops.
    while keep < limit and len(TRUNCATED.format(len(value) - keep - 1)) <= limit - keep - 1:
        keep += 1
    return value[:keep] + TRUNCATED.format(len(value) - keep)


def bound_text_fields(rec: UsageRecord) -> None:
    """Cut every text field of `rec` over its `TEXT_LIMITS` entry (in place): once per record,
    a length check per field when nothing is over."""
    for name, limit in TEXT_LIMITS:
        value = getattr(rec, name)
        if value is not None and len(value) > limit:
            setattr(rec, name, bounded(value, limit))
