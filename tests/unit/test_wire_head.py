"""The request heads the sidecar refuses before parsing further: bare CR, NUL, folding, a
control character in the target; and never a word of the client's bytes in the reason."""

from __future__ import annotations

import pytest

from agent.wire.head import BARE_CR, FOLDED, NUL, TARGET, head_defect

LINE = b"POST /v1/chat/completions HTTP/1.1"


@pytest.mark.parametrize(
    ("lines", "defect"),
    [
        ([LINE, b"Host: x", b"X-Request-ID: abc\rInjected: 1"], BARE_CR),
        ([LINE, b"X-Trace: a\x00b"], NUL),
        ([LINE, b"X-Trace: a", b"  folded"], FOLDED),
        ([LINE, b"X-Trace: a", b"\tfolded"], FOLDED),
        ([b"GET /v1/models\x00 HTTP/1.1", b"Host: x"], TARGET),
        ([b"GET /v1/mo\x7fdels HTTP/1.1"], TARGET),
    ],
)
def test_refused_heads(lines: list[bytes], defect: str) -> None:
    assert head_defect(lines) == defect


@pytest.mark.parametrize(
    "lines",
    [
        [LINE, b"Host: x", b"Content-Length: 2", b"X-Request-ID: job-7"],
        [b"GET /v1/models?x=1&y=%20 HTTP/1.1", b"Accept: */*", b"User-Agent: a b (c; d)"],
        [LINE],
        [b"GARBAGE"],  # not a defect of ours: mitmproxy's parser refuses it
    ],
)
def test_well_formed_heads_pass(lines: list[bytes]) -> None:
    assert head_defect(lines) is None


def test_the_reason_never_quotes_the_head() -> None:
    reason = head_defect([LINE, b"Authorization: Bearer sk-secret\r"])
    assert reason is not None and "sk-secret" not in reason and "Authorization" not in reason
