"""Incremental decoders for compressed response bodies (``Content-Encoding``).

mitmproxy hands the stream callback the body as the upstream sent it, compressed: the meter
reads the decoded text while the original bytes are relayed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

__all__ = ["make_decoder"]


def make_decoder(content_encoding: str | None) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a ``Content-Encoding`` (gzip, deflate, br, zstd, or a
    comma-separated chain of them), or None for identity/absent or an encoding it does not
    know (the body is then parsed as is, which finds nothing).

    The decoder never raises: after corrupt input it returns b"" for the rest of the body,
    so metering degrades to estimates while the bytes are still relayed untouched."""
    if not content_encoding:
        return None
    steps: list[Callable[[bytes], bytes]] = []
    for token in content_encoding.lower().split(","):
        name = token.strip()
        if name in ("", "identity"):
            continue
        step = _decoder_step(name)
        if step is None:
            return None
        steps.append(step)
    if not steps:
        return None
    steps.reverse()  # encodings are listed in the order they were applied
    broken = False

    def decode(data: bytes) -> bytes:
        nonlocal broken
        if broken:
            return b""
        try:
            for step in steps:
                data = step(data)
        except Exception:  # zlib.error, brotli.error, zstd.ZstdError: corrupt stream
            broken = True
            return b""
        return data

    return decode


def _decoder_step(name: str) -> Callable[[bytes], bytes] | None:
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress
    if name == "deflate":
        return _deflate_decoder()
    if name == "br":
        import brotli  # mitmproxy dependency; imported only when a body needs it

        return brotli.Decompressor().process
    if name == "zstd":
        return _zstd_step()
    return None


def _zstd_step() -> Callable[[bytes], bytes] | None:
    """A zstd decompressor from whichever module this mitmproxy brought: Python 3.14's
    `compression.zstd` or its backport (mitmproxy 12.2+), else `zstandard` (earlier ones)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        except ImportError:
            zstd = None
    if zstd is not None:
        return zstd.ZstdDecompressor().decompress
    try:
        import zstandard
    except ImportError:  # then zstd bodies are relayed unread, like an unknown encoding
        return None
    return zstandard.ZstdDecompressor().decompressobj().decompress


def _deflate_decoder() -> Callable[[bytes], bytes]:
    """HTTP "deflate" is meant to be zlib-wrapped, but some servers send raw deflate: look
    at the first two bytes (a zlib header is CM=8 and a multiple of 31) before choosing."""
    head = bytearray()
    decompress: Callable[[bytes], bytes] | None = None

    def decode(data: bytes) -> bytes:
        nonlocal decompress
        if decompress is None:
            head.extend(data)
            if len(head) < 2:
                return b""
            zlib_wrapped = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
            decompress = zlib.decompressobj(wbits).decompress
            data = bytes(head)
        return decompress(data)

    return decode
