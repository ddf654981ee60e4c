"""Header reads and writes straight on mitmproxy's raw header fields.

`Headers.get()` goes through four layers of mapping code and lower-cases and re-encodes every
field on each lookup, and `headers[name] = value` rebuilds the whole field tuple; the addons
touch a handful of headers on every request, so they use these single-pass equivalents.
Names passed as bytes must be lower-case.
"""

from __future__ import annotations

from mitmproxy.http import Headers


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")  # as mitmproxy decodes header values


def get_all(headers: Headers, name: bytes) -> list[str]:
    """Every value of header `name`, in order (`Headers.get_all`)."""
    return [_text(v) for k, v in headers.fields if k.lower() == name]


def get(headers: Headers, name: bytes) -> str | None:
    """Header `name`, repeated values joined with ", " (`Headers.get`); None when absent."""
    values = get_all(headers, name)
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def put(headers: Headers, name: str, value: str) -> None:
    """Set header `name` to `value` (`headers[name] = value`); appended when it is new."""
    key = name.lower().encode()
    if any(k.lower() == key for k, _ in headers.fields):
        headers[name] = value
    else:
        headers.fields = (*headers.fields, (name.encode(), value.encode("utf-8", "surrogateescape")))


def remove(headers: Headers, name: bytes) -> None:
    """Drop every `name` header (`headers.pop(name, None)`)."""
    fields = headers.fields
    kept = tuple(f for f in fields if f[0].lower() != name)
    if len(kept) != len(fields):
        headers.fields = kept
