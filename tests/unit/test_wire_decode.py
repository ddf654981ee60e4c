"""Decoders for compressed bodies, alone and in front of the meter."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import brotli
import pytest

try:  # the zstd module this mitmproxy brought, as agent/wire/decode.py looks for it
    from compression.zstd import compress as zstd_compress  # type: ignore[import-not-found]
except ImportError:
    try:
        from backports.zstd import compress as zstd_compress  # type: ignore[import-not-found,no-redef]
    except ImportError:
        import zstandard

        zstd_compress = zstandard.ZstdCompressor().compress

from agent.wire.decode import make_decoder
from agent.wire.stream import StreamMeter
from tests.support.wire_transcripts import (
    CHAT,
    OLLAMA_GENERATE_STREAM,
    VLLM_CHAT_STREAM,
    info_for,
    run,
    snapshot,
)

# --------------------------------------------------------------------------- decoders


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 64])
def test_gzip_stream_through_decoder(size: int) -> None:
    decode = make_decoder("gzip")
    assert decode is not None
    meter = StreamMeter(info_for(CHAT))
    plain = bytearray()
    for piece in _pieces(gzip.compress(VLLM_CHAT_STREAM), size):
        decoded = decode(piece)
        plain += decoded
        if decoded:
            meter.feed(decoded)
    meter.finish()
    assert bytes(plain) == VLLM_CHAT_STREAM
    reference, _ = run(info_for(CHAT), VLLM_CHAT_STREAM, None)
    assert snapshot(meter) == snapshot(reference)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # no zlib header, as some servers send it
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
        ("br", brotli.compress),
        ("BR", brotli.compress),
        ("zstd", zstd_compress),
        ("gzip, br", lambda d: brotli.compress(gzip.compress(d))),
    ],
)
def test_decoders_in_small_pieces(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    wire = compress(OLLAMA_GENERATE_STREAM)
    decode = make_decoder(encoding)
    assert decode is not None
    assert b"".join(decode(p) for p in _pieces(wire, 2)) == OLLAMA_GENERATE_STREAM


@pytest.mark.parametrize("encoding", [None, "", "identity", " identity ", "compress", "snappy"])
def test_no_decoder_for_identity_or_unknown(encoding: str | None) -> None:
    assert make_decoder(encoding) is None


def test_corrupt_gzip_stops_decoding_without_raising() -> None:
    decode = make_decoder("gzip")
    assert decode is not None
    assert decode(b"this is not gzip at all") == b""
    assert decode(gzip.compress(b"later")) == b""
