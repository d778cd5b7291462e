"""Hostile input for the feature decoder: it must raise CodecError/UnsupportedVersion and nothing else, fast,
with bounded memory, whatever the bytes say."""

from __future__ import annotations

import lzma
import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimsplit.codec import DecodedFeatures, DecodeLimits, HuffmanTables, decode_features, encode_features, peek_header
from slimsplit.codec.bitpack import pack_bits
from slimsplit.codec.huffman import byte_contexts, count_bytes
from slimsplit.codec.quantize import quantize
from slimsplit.errors import CodecError, InvalidFrame, UnsupportedVersion

DECODE_ERRORS = (CodecError, UnsupportedVersion)
LIMITS = DecodeLimits()


def _features(c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((c, 10, 10)).astype(np.float32)
    z = z[:, :-2] + 2 * z[:, 1:-1] + z[:, 2:]
    z = z[:, :, :-2] + 2 * z[:, :, 1:-1] + z[:, :, 2:]
    return np.maximum(z / 6, 0).astype(np.float32)


def _tables() -> HuffmanTables:
    """Huffman tables (16 contexts) fitted on 4-bit frames of these features; valid for any frame."""
    ctx = byte_contexts((16, 8, 8), 4, 16)
    packed = [pack_bits(quantize(_features(16, seed=100 + i), 4)[0], 4) for i in range(20)]
    return HuffmanTables.fit(count_bytes(packed, ctx, 16))


TABLES = _tables()


def _valid_frames() -> list[bytes]:
    frames = []
    for coder in ("none", "zlib", "lzma", "huffman"):
        for c, bits in ((2, 1), (4, 3), (8, 4), (16, 8), (2, 12)):
            frames.append(encode_features(_features(c, seed=c * bits), bits, entropy=coder, tables=TABLES))
    frames.append(bytes(_V1_OF_FIRST))
    return frames


# one version-1 frame (14-byte header), which decoders still accept
_V1_OF_FIRST = struct.pack(">BBHHHeeH", 0xA1, 0x03, 2, 8, 8, 0.0, 1.0, 64) + bytes(64)
FRAMES = _valid_frames()


def _decode_or_codec_error(data: bytes) -> DecodedFeatures | None:
    """Decode; a CodecError/UnsupportedVersion is fine, any other exception fails the test."""
    try:
        out = decode_features(data, LIMITS, tables=TABLES)
    except DECODE_ERRORS:
        return None
    # if it decoded, the result must honour its header and the limits
    assert out.array.shape == out.header.shape
    assert out.array.dtype == np.float32
    assert out.array.size <= LIMITS.max_elements
    assert np.isfinite(out.array).all()
    assert out.header.total_len == len(data)
    return out


def _must_fail(data: bytes) -> InvalidFrame:
    with pytest.raises(DECODE_ERRORS) as info:
        decode_features(data, LIMITS, tables=TABLES)
    assert type(info.value) in DECODE_ERRORS  # exactly these classes, not some other subclass
    return info.value


def _peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    except DECODE_ERRORS:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# ------------------------------------------------------------------------------------------ deterministic


def test_the_sample_frames_decode() -> None:
    for frame in FRAMES:
        assert _decode_or_codec_error(frame) is not None


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_every_truncation_fails(index: int) -> None:
    frame = FRAMES[index]
    for n in range(len(frame)):
        _must_fail(frame[:n])


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_trailing_bytes_fail(index: int) -> None:
    for extra in (b"\x00", b"\xff", bytes(100)):
        _must_fail(FRAMES[index] + extra)


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_every_corruption_of_a_structural_header_byte_fails(index: int) -> None:
    """Magic/version (byte 0), shape and payload_len: every other value must be rejected."""
    frame = FRAMES[index]
    h = peek_header(frame)
    if h.version == 1:
        structural = [0, *range(2, 8), 12, 13]
    elif h.coder == "huffman":
        # a huffman stream has no length of its own: another shape may decode from the same bits when the
        # codes are short (the server also checks the shape against the mode), so only magic and length here
        structural = [0, *range(9, h.header_len)]
    else:  # version 2: C, H, W are one-byte varints here; payload_len is the header's last 1 or 2 bytes
        structural = [0, 2, 3, 4, *range(9, h.header_len)]
    for pos in structural:
        for value in range(256):
            if value != frame[pos]:
                _must_fail(frame[:pos] + bytes([value]) + frame[pos + 1 :])


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_every_corruption_of_the_remaining_bytes_never_escapes(index: int) -> None:
    """coder/bits, lo/hi and payload bytes: may still decode (no checksum), but never another exception."""
    frame = FRAMES[index]
    h = peek_header(frame)
    lo_hi = [8, 9, 10, 11] if h.version == 1 else [5, 6, 7, 8] if h.coder != "huffman" else [2, 3, 4, 5, 6, 7, 8]
    payload = range(h.header_len, len(frame), max(1, h.payload_len // 12))
    positions = [1, *lo_hi, *payload]
    for pos in positions:
        for value in range(0, 256, 3):
            if value != frame[pos]:
                _decode_or_codec_error(frame[:pos] + bytes([value]) + frame[pos + 1 :])


def _header(coder: int, bits: int, shape: tuple[int, int, int], payload_len: int) -> bytes:
    return struct.pack(">BBHHHeeH", 0xA1, (coder << 4) | (bits - 1), *shape, 0.0, 1.0, payload_len)


@pytest.mark.parametrize("coder", [0, 1, 2])
@pytest.mark.parametrize("shape", [(65535, 65535, 65535), (1024, 512, 512), (16, 256, 256), (1, 1, 1 << 15)])
def test_huge_shape_with_tiny_payload_fails_without_allocating(coder: int, shape: tuple[int, int, int]) -> None:
    payload = b"\x03\x00" if coder == 1 else b"\x00\x12\x34"
    frame = _header(coder, 16, shape, len(payload)) + payload
    limits = DecodeLimits(max_width=1 << 15)
    peak = _peak_bytes(lambda: decode_features(frame, limits))
    with pytest.raises(CodecError):
        decode_features(frame, limits)
    assert peak < 1 << 20  # bytes; the largest claimed tensor would be petabytes


@pytest.mark.parametrize("coder", ["zlib", "lzma"])
def test_decompression_bomb_fails_fast_with_bounded_memory(coder: str) -> None:
    zeros = bytes(10 * 1024 * 1024)
    if coder == "zlib":
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = c.compress(zeros) + c.flush()
    else:
        filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16, "preset": 9}]
        bomb = lzma.compress(zeros, format=lzma.FORMAT_RAW, filters=filters)
    assert len(bomb) < 65535
    frame = _header(1 if coder == "zlib" else 2, 8, (16, 8, 8), len(bomb)) + bomb
    err = _must_fail(frame)
    assert "more than the 1024 bytes" in str(err)
    peak = _peak_bytes(lambda: decode_features(frame))
    assert peak < 1 << 20  # nowhere near the 10 MB the stream holds


def test_bomb_within_default_limits_is_bounded_by_the_claimed_shape() -> None:
    """A header claiming the largest default shape: decoding allocates at most what the limits allow."""
    shape = (16, 256, 256)  # 1M elements: the default max_elements
    bomb = zlib.compress(bytes(8 * 1024 * 1024), 9, -15)  # 8 MB of zeros, 4x what 16 bits need
    frame = _header(1, 16, shape, len(bomb)) + bomb
    err = _must_fail(frame)
    assert "more than" in str(err)
    peak = _peak_bytes(lambda: decode_features(frame))
    assert peak < 8 << 20


# ------------------------------------------------------------------------------------------ property based

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the soak: 50k examples (about a minute here); SLIMSPLIT_SOAK=short (CI) runs 2k
SOAK_EXAMPLES = 2_000 if os.environ.get("SLIMSPLIT_SOAK") == "short" else 50_000
SOAK = settings(max_examples=SOAK_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    frame = draw(st.sampled_from(FRAMES))
    n = draw(st.integers(1, 4))
    data = bytearray(frame)
    for _ in range(n):
        data[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def hostile_v2_headers(draw: st.DrawFn) -> bytes:
    """Version-2 headers with arbitrary coder/bits and varint bytes, then arbitrary payloads."""
    return bytes([0xA2]) + draw(st.binary(min_size=1, max_size=18)) + draw(st.binary(max_size=200))


@st.composite
def hostile_headers(draw: st.DrawFn) -> bytes:
    """Plausible headers (right magic and version) with arbitrary fields and payloads."""
    head = struct.pack(
        ">BBHHHHHH",
        0xA1,
        draw(st.integers(0, 255)),
        *(draw(st.integers(0, 0xFFFF)) for _ in range(6)),
    )
    return head + draw(st.binary(max_size=200))


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_never_escape(data: bytes) -> None:
    _decode_or_codec_error(data)


@FUZZ
@given(data=hostile_headers())
def test_hostile_headers_never_escape(data: bytes) -> None:
    _decode_or_codec_error(data)


@FUZZ
@given(data=hostile_v2_headers())
def test_hostile_v2_headers_never_escape(data: bytes) -> None:
    _decode_or_codec_error(data)


@FUZZ
@given(data=corrupted())
def test_random_corruptions_never_escape(data: bytes) -> None:
    _decode_or_codec_error(data)


@pytest.mark.slow
@SOAK
@given(data=st.one_of(st.binary(max_size=2000), hostile_headers(), hostile_v2_headers(), corrupted()))
def test_soak_hostile_input_never_escapes(data: bytes) -> None:
    _decode_or_codec_error(data)
