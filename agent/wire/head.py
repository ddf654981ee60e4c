"""What the sidecar refuses in a request head before anything parses it further.

The HTTP/1 parser under the proxy splits lines at LF and keeps a bare CR, a NUL or an obsolete
line fold inside a header value: each would be forwarded upstream, written into logs and, for
`X-Request-ID`, echoed in response headers. RFC 9112 lets a server refuse them (a bare CR
§2.2, obs-fold §5.2), and the sidecar does, with 400.
"""

from __future__ import annotations

from typing import Final

BARE_CR: Final = "a header line contains a bare CR"
NUL: Final = "a header line contains a NUL byte"
FOLDED: Final = "a header line is folded (obsolete line folding)"
TARGET: Final = "the request target contains a control character"

_CONTROL: Final = bytes(range(0x21)) + b"\x7f"  # what a request target may not contain


def head_defect(lines: list[bytes]) -> str | None:
    """Why the request head `lines` (request line first, line ends removed) must be refused,
    or None. The reasons are fixed phrases: they never quote the client's bytes."""
    for line in lines[1:]:
        if b"\r" in line:
            return BARE_CR
        if b"\0" in line:
            return NUL
        if line[:1] in (b" ", b"\t"):
            return FOLDED
    parts = lines[0].split(b" ") if lines else []
    if len(parts) == 3 and parts[1].translate(None, _CONTROL) != parts[1]:
        return TARGET
    return None


DEFECTS: Final = (BARE_CR, NUL, FOLDED, TARGET)
