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
    if not lines:
        return None
    # One pass over the joined head (each line starting after a LF): this runs for every request.
    head = b"\n".join(lines)
    if b"\r" in head:
        return TARGET if b"\r" in lines[0] else BARE_CR
    if b"\0" in head:
        return TARGET if b"\0" in lines[0] else NUL
    if b"\n " in head or b"\n\t" in head:
        return FOLDED
    parts = lines[0].split(b" ")
    if len(parts) == 3 and parts[1].translate(None, _CONTROL) != parts[1]:
        return TARGET
    return None


DEFECTS: Final = (BARE_CR, NUL, FOLDED, TARGET)
