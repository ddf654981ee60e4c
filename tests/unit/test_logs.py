"""Access lines: every field a reader needs, one line per record whatever the client sent, and
nothing a log must not hold."""

from __future__ import annotations

import json
import os
import re
import shlex

from agent.logs import ACCESS_FIELDS, AccessLog, json_line, text_line
from agent.records import UsageRecord

HOSTILE = UsageRecord(
    request_id="r-1",
    user="mallory",
    team="eval",
    model='evil model"\n status=200 outcome=ok',
    endpoint="/v1/chat/completions",
    status=401,
    outcome="rejected",
    error="Bearer eyJhbGciOi.secret.token",
    prompt="my private prompt",
    prompt_tokens=3,
    completion_tokens=None,
    latency_ms=1.5,
)


def _logfmt(line: str) -> dict[str, str]:
    ts, _, rest = line.partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)
    return dict(item.split("=", 1) for item in shlex.split(rest))


def test_text_lines_are_logfmt_and_a_client_value_cannot_forge_fields() -> None:
    line = text_line(HOSTILE)
    assert "\n" not in line
    fields = _logfmt(line)
    assert list(fields) == list(ACCESS_FIELDS)
    assert fields["status"] == "401" and fields["outcome"] == "rejected"
    assert json.loads(json.dumps(fields["model"])) == 'evil model"\\n status=200 outcome=ok'
    assert fields["tokens_out"] == "-" and fields["tokens_in"] == "3"


def test_json_lines_are_flat_objects_with_a_timestamp() -> None:
    obj = json.loads(json_line(HOSTILE))
    assert set(obj) == {"@timestamp", "log.logger", *ACCESS_FIELDS}
    assert obj["model"] == HOSTILE.model and obj["tokens_out"] is None and obj["latency_ms"] == 1.5


def test_no_line_carries_prompt_text_or_the_error_text() -> None:
    for line in (text_line(HOSTILE), json_line(HOSTILE)):
        assert "private prompt" not in line and "secret.token" not in line


def test_lines_reach_the_file_in_order_and_a_reader_that_stops_costs_lines_not_memory() -> None:
    r, w = os.pipe()
    log = AccessLog("json", fd=w, max_pending=4096)
    try:
        for i in range(400):  # nobody reads yet: the pipe fills, then the writing thread blocks
            log.observe(UsageRecord(request_id=f"id-{i:04d}", endpoint="/x" * 40))
            log.flush()
        assert log.dropped > 0  # bounded: beyond max_pending, lines are counted and dropped
        expected = 400 - log.dropped
        data = b""
        with os.fdopen(r, "rb", buffering=0, closefd=False) as reader:
            while data.count(b"\n") < expected:  # blocks until the thread writes the rest
                data += reader.read(1 << 16)
        ids = [json.loads(line)["request_id"] for line in data.decode().splitlines()]
        assert len(ids) == expected and ids == sorted(ids) and ids[0] == "id-0000"
    finally:
        log.close(timeout=2)
        os.close(w)
        os.close(r)
