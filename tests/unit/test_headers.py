"""The single-pass header helpers agree with mitmproxy's own `Headers` methods."""

from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from addons import headers as hdr


def sample() -> Headers:
    return Headers(
        [
            (b"Host", b"127.0.0.1:8000"),
            (b"Accept", b"text/html"),
            (b"X-Request-ID", b"abc"),
            (b"accept", b"application/json"),
            (b"X-Note", "caf\u00e9".encode()),
            (b"X-Raw", b"\xff\xfe"),
        ]
    )


@pytest.mark.parametrize("name", ["accept", "x-request-id", "x-note", "x-raw", "absent", "host"])
def test_reads_match_headers(name: str) -> None:
    h = sample()
    assert hdr.get(h, name.encode()) == h.get(name)
    assert hdr.get_all(h, name.encode()) == h.get_all(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Request-ID", "new-id"), ("x-request-id", "lower"), ("Accept", "*/*"), ("X-New", "v\u00e9")],
)
def test_put_matches_setitem(name: str, value: str) -> None:
    ours, theirs = sample(), sample()
    hdr.put(ours, name, value)
    theirs[name] = value
    assert ours.get_all(name) == theirs.get_all(name) == [value]
    assert ours.fields == theirs.fields


@pytest.mark.parametrize("name", ["accept", "x-request-id", "absent"])
def test_remove_matches_pop(name: str) -> None:
    ours, theirs = sample(), sample()
    before = ours.fields
    hdr.remove(ours, name.encode())
    theirs.pop(name, None)
    assert ours.fields == theirs.fields
    assert (ours.fields is before) == (name == "absent")  # untouched when there is nothing to drop
