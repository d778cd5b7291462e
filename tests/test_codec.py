"""Feature codec: quantization, bit packing, header and round trips (fuzzing: test_codec_fuzz.py)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slimsplit.codec as codec
from slimsplit.codec import (
    CODEC_VERSION,
    MAX_HEADER_SIZE,
    DecodeLimits,
    decode_features,
    dequantize,
    encode_features,
    float16_range,
    peek_header,
    quantize,
)
from slimsplit.codec.bitpack import pack_bits, packed_size, unpack_bits
from slimsplit.codec.entropy import FAST_ZLIB_STRATEGIES, Coder, compress
from slimsplit.errors import CodecError, ConfigError, UnsupportedVersion

ALL_BITS = list(range(1, 17))
CODERS = ["none", "zlib", "lzma"]


def features(c: int = 8, h: int = 8, w: int = 8, seed: int = 0) -> npt.NDArray[np.float32]:
    """ReLU'd, spatially smoothed Gaussian features, like a bottleneck's output."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((c, h + 2, w + 2))
    rows = z[:, :-2] + 2 * z[:, 1:-1] + z[:, 2:]
    smooth = (rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]) / 6
    return np.maximum(smooth + rng.normal(0, 0.5, (c, 1, 1)), 0).astype(np.float32)


# ------------------------------------------------------------------------------------------ public API


def test_public_api_is_stable() -> None:
    assert set(codec.__all__) == {
        "CODEC_VERSION",
        "DEFAULT_LIMITS",
        "ENTROPY_CHOICES",
        "MAX_HEADER_SIZE",
        "Coder",
        "DecodeLimits",
        "DecodedFeatures",
        "FeatureHeader",
        "HuffmanTables",
        "decode_features",
        "dequantize",
        "encode_features",
        "float16_range",
        "peek_header",
        "quantize",
    }
    for name in codec.__all__:
        assert hasattr(codec, name), name
    assert MAX_HEADER_SIZE == 18
    assert CODEC_VERSION == 2


# ------------------------------------------------------------------------------------------ bit packing


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_unpack_exact_for_every_bits_value(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in (1, 2, 3, 7, 8, 9, 63, 64, 65, 1024):
        q = rng.integers(0, 1 << bits, size=count).astype(np.uint8 if bits <= 8 else np.uint16)
        q[0] = (1 << bits) - 1  # the extreme values always appear
        q[-1] = 0 if count > 1 else q[-1]
        packed = pack_bits(q, bits)
        assert len(packed) == packed_size(count, bits) == -(-count * bits // 8)
        back = unpack_bits(packed, bits, count)
        assert back.dtype == q.dtype
        np.testing.assert_array_equal(back, q)


@given(bits=st.integers(1, 16), data=st.data())
@settings(max_examples=60, deadline=None)
def test_pack_unpack_round_trip_property(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=300))
    q = np.array(values, dtype=np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(unpack_bits(pack_bits(q, bits), bits, q.size), q)


@pytest.mark.parametrize(
    ("bits", "values", "expected"),
    [
        (1, [1, 0, 0, 0, 0, 0, 0, 0, 1], b"\x80\x80"),
        (2, [0, 1, 2, 3, 3], b"\x1b\xc0"),
        (3, [5, 1, 7], b"\xa7\x80"),  # 101 001 111 + 7 zero bits
        (4, [0xA, 0xB, 0xC], b"\xab\xc0"),
        (8, [1, 255], b"\x01\xff"),
        (12, [0xABC, 0x123], b"\xab\xc1\x23"),
        (16, [0x0102, 0xFFFE], b"\x01\x02\xff\xfe"),
    ],
)
def test_pack_bits_is_msb_first(bits: int, values: list[int], expected: bytes) -> None:
    q = np.array(values, dtype=np.uint8 if bits <= 8 else np.uint16)
    assert pack_bits(q, bits) == expected


def test_unpack_rejects_wrong_length_and_nonzero_padding() -> None:
    with pytest.raises(CodecError, match="packed payload is 2 bytes"):
        unpack_bits(b"\x00\x00", 3, 2)
    with pytest.raises(CodecError, match="padding"):
        unpack_bits(b"\xa7\x81", 3, 3)


# ------------------------------------------------------------------------------------------ quantization


@pytest.mark.parametrize("bits", ALL_BITS)
def test_quantize_range_dtype_and_error_bound(bits: int) -> None:
    x = features(seed=bits) * 3 - 1  # negative values too
    q, lo, hi = quantize(x, bits)
    levels = (1 << bits) - 1
    assert q.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert q.shape == x.shape
    assert int(q.min()) >= 0 and int(q.max()) <= levels
    assert lo <= float(x.min()) and hi >= float(x.max())
    assert float(np.float16(lo)) == lo and float(np.float16(hi)) == hi  # exactly representable
    # the range is used (float16 rounding of lo/hi costs at most ~2**-10 of it at each end here)
    assert int(q.min()) <= levels >> 9 and int(q.max()) >= levels - 1 - (levels >> 9)
    x_hat = dequantize(q, lo, hi, bits)
    assert x_hat.dtype == np.float32
    bound = (hi - lo) / levels / 2
    assert float(np.max(np.abs(x_hat - x))) <= bound * (1 + 1e-4) + 1e-6


def test_quantize_follows_the_documented_formula_in_float32() -> None:
    x = features(seed=3)
    for bits in (1, 2, 4, 8, 16):
        q, lo, hi = quantize(x, bits)
        levels = np.float32((1 << bits) - 1)
        lo32, d = np.float32(lo), np.float32(hi) - np.float32(lo)
        expected = np.zeros_like(x)
        for i, v in enumerate(x.ravel()):  # element by element, numpy float32 scalars
            expected.ravel()[i] = min(max(np.rint((v - lo32) / d * levels), 0), levels)
        np.testing.assert_array_equal(q, expected.astype(q.dtype))
        manual = lo32 + q.astype(np.float32) * d / levels
        np.testing.assert_array_equal(dequantize(q, lo, hi, bits), manual)


def test_lo_rounds_down_and_hi_rounds_up_to_float16() -> None:
    x = np.array([[[0.1, 0.7]]], dtype=np.float32)  # neither is a float16 value
    lo, hi = float16_range(x)
    assert lo <= float(x.min()) and hi >= float(x.max())
    assert float(np.nextafter(np.float16(lo), np.float16(np.inf))) > float(x.min())  # the largest such lo
    assert float(np.nextafter(np.float16(hi), np.float16(-np.inf))) < float(x.max())  # the smallest such hi


@pytest.mark.parametrize("value", [0.0, 1.5, -2.0, 0.1, 1e-9, 65504.0, -65504.0])
def test_constant_tensor_round_trips(value: float) -> None:
    x = np.full((2, 8, 8), value, dtype=np.float32)
    for bits in (1, 4, 8):
        frame = encode_features(x, bits)
        out = decode_features(frame).array
        if float(np.float16(value)) == float(np.float32(value)):  # representable: lo == hi, exact
            assert peek_header(frame).lo == peek_header(frame).hi
            np.testing.assert_array_equal(out, x)
        else:
            h = peek_header(frame)
            assert h.lo < float(np.float32(value)) < h.hi
            assert float(np.max(np.abs(out - x))) <= (h.hi - h.lo) / h.levels / 2 * (1 + 1e-4) + 1e-9


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("bits", ALL_BITS)
def test_round_trip_equals_reference_dequantization(bits: int, coder: str) -> None:
    x = features(c=4, seed=bits)
    frame = encode_features(x, bits, entropy=coder)
    decoded = decode_features(frame)
    q, lo, hi = quantize(x, bits)
    assert decoded.array.shape == (4, 8, 8) and decoded.array.dtype == np.float32
    np.testing.assert_array_equal(decoded.array, dequantize(q, lo, hi, bits))
    h = decoded.header
    assert (h.version, h.coder, h.bits, h.shape, h.lo, h.hi) == (2, coder, bits, (4, 8, 8), lo, hi)
    assert h.total_len == len(frame) == h.header_len + h.payload_len
    assert h.header_len == 10 + (h.payload_len >= 128)
    assert peek_header(frame) == h


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 8, 8), (16, 8, 8), (3, 5, 7), (1, 1, 4000)])
def test_shapes(shape: tuple[int, int, int]) -> None:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    limits = DecodeLimits(max_width=4000)
    for bits in (1, 3, 8):
        out = decode_features(encode_features(x, bits), limits).array
        assert out.shape == shape


def test_batch_of_one_is_accepted_and_float64_is_converted() -> None:
    x = features(c=2)
    a = encode_features(x[None], 4)
    b = encode_features(x.astype(np.float64), 4)
    assert a == b == encode_features(x, 4)


def test_auto_picks_the_smallest_and_max_is_never_larger() -> None:
    for seed, bits in [(0, 1), (1, 2), (2, 4), (3, 8)]:
        x = features(c=16, seed=seed)
        sizes = {e: len(encode_features(x, bits, entropy=e)) for e in ("none", "zlib", "lzma", "auto", "max")}
        packed = pack_bits(quantize(x, bits)[0], bits)
        z = compress(Coder.ZLIB, packed, FAST_ZLIB_STRATEGIES)
        fast_zlib = dataclasses.replace(peek_header(encode_features(x, bits)), payload_len=len(z)).header_len + len(z)
        assert sizes["auto"] == min(sizes["none"], fast_zlib)
        assert sizes["max"] == min(sizes["none"], sizes["zlib"], sizes["lzma"]) <= sizes["auto"]
        assert sizes["zlib"] <= fast_zlib


def test_incompressible_frame_falls_back_to_no_coder() -> None:
    x = np.random.default_rng(5).uniform(0, 1, (2, 8, 8)).astype(np.float32)
    assert peek_header(encode_features(x, 8)).coder == "none"


def test_decode_accepts_bytes_like() -> None:
    frame = encode_features(features(c=2), 2)
    ref = decode_features(frame).array
    np.testing.assert_array_equal(decode_features(bytearray(frame)).array, ref)
    np.testing.assert_array_equal(decode_features(memoryview(frame)).array, ref)


# ------------------------------------------------------------------------------------------ encoder errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(bad: float) -> None:
    x = features(c=2)
    x[1, 3, 4] = bad
    with pytest.raises(CodecError, match="non-finite"):
        encode_features(x, 4)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((8, 8), np.float32), "shape"),
        (np.zeros((2, 2, 8, 8), np.float32), "shape"),
        (np.zeros((0, 8, 8), np.float32), "shape"),
        (np.zeros((1, 1, 65536), np.float32), "1..65535"),
        (np.zeros((2, 8, 8), np.int32), "floating-point"),
        (np.full((2, 8, 8), 1e5, np.float32), "float16 range"),
        (np.full((2, 8, 8), 1e300, np.float64), "non-finite"),
    ],
)
def test_bad_tensors_are_rejected(x: np.ndarray, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode_features(x, 4)


@pytest.mark.parametrize("bits", [0, 17, -1, True, 2.0, "4"])
def test_bad_bits_are_rejected(bits: object) -> None:
    with pytest.raises(CodecError, match="bits"):
        encode_features(features(c=2), bits)  # type: ignore[arg-type]


def test_unknown_entropy_choice_is_rejected() -> None:
    with pytest.raises(CodecError, match="entropy"):
        encode_features(features(c=2), 4, entropy="zstd")


def test_payload_beyond_the_format_limit_is_rejected() -> None:
    x = np.random.default_rng(0).uniform(0, 1, (4, 128, 128)).astype(np.float32)  # 64 KiB at 8 bits
    with pytest.raises(CodecError, match="65535"):
        encode_features(x, 8, entropy="none")


# ------------------------------------------------------------------------------------------ header and limits


def test_golden_frame_bytes() -> None:
    x = np.array([[[0, 1], [2, 3]]], dtype=np.float32)
    frame = encode_features(x, 2, entropy="none")
    # version 2: magic/version, coder/bits, C H W varints, lo hi float16, payload_len varint, payload
    assert frame == bytes.fromhex("a2 01 01 02 02 0000 4200 01 1b")
    h = peek_header(frame)
    assert (h.coder, h.bits, h.shape, h.lo, h.hi, h.payload_len) == ("none", 2, (1, 2, 2), 0.0, 3.0, 1)
    assert h.header_len == 10
    np.testing.assert_array_equal(decode_features(frame).array, x)
    # the same frame in version 1 (14-byte fixed header) still decodes to the same tensor
    v1 = bytes.fromhex("a1 01 0001 0002 0002 0000 4200 0001 1b")
    assert peek_header(v1).header_len == 14
    np.testing.assert_array_equal(decode_features(v1).array, x)


def test_varints_grow_with_the_values() -> None:
    x = np.zeros((1, 1, 200), np.float32)
    frame = encode_features(x, 8, entropy="none")
    h = peek_header(frame)
    assert (h.shape, h.payload_len, h.header_len) == ((1, 1, 200), 200, 12)  # W and payload_len: 2 bytes each
    assert frame[4:6] == bytes([0xC8, 0x01])  # 200 = 0b1_1001000: low 7 bits first, continuation bit set
    np.testing.assert_array_equal(decode_features(frame).array, x)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("a2 03 8200 08 08 0000 3c00 40", "non-minimal varint in the channels"),
        ("a2 03 ffffff 08 08 0000 3c00 40", "longer than 3 bytes"),
        ("a2 03 808004 08 08 0000 3c00 40", "exceeds the format's 65535"),
        ("a2 03 02 08 08 0000 3c00 80", "ends inside the payload_len"),
        ("a2 03 02 08", "ends inside the width"),
        ("a2 03 02 08 08 0000 3c", "ends inside the lo/hi"),
    ],
)
def test_bad_varints_and_short_headers_raise_codec_error(header: str, match: str) -> None:
    payload = b"" if "ends inside" in match else bytes(64)
    with pytest.raises(CodecError, match=match):
        decode_features(bytes.fromhex(header) + payload)


def _frame(
    *,
    mv: int = 0xA1,
    coder: int = 0,
    bits: int = 4,
    c: int = 2,
    h: int = 8,
    w: int = 8,
    lo: float = 0.0,
    hi: float = 1.0,
    plen: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """A hand-made version-1 frame: the defaults describe a valid 2x8x8, 4-bit, uncoded frame, zero payload."""
    if payload is None:
        payload = bytes(packed_size(2 * 8 * 8, bits))
    plen = len(payload) if plen is None else plen
    return struct.pack(">BBHHHeeH", mv, (coder << 4) | (bits - 1), c, h, w, lo, hi, plen) + payload


def test_hand_made_frame_is_valid() -> None:
    out = decode_features(_frame()).array
    assert out.shape == (2, 8, 8) and not out.any()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"mv": 0xB1}, "magic"),
        ({"mv": 0x00}, "magic"),
        ({"mv": 0xA0}, "version 0"),
        ({"coder": 7}, "coder id 7"),
        ({"c": 0}, "channels=0"),
        ({"h": 0}, "height=0"),
        ({"w": 0}, "width=0"),
        ({"c": 2000}, "channels=2000"),
        ({"c": 1024, "h": 512, "w": 512, "payload": b"\x00"}, "elements"),
        ({"lo": float("nan")}, "non-finite"),
        ({"hi": float("inf")}, "non-finite"),
        ({"lo": 2.0, "hi": 1.0}, "inverted"),
        ({"plen": 63}, "trailing"),
        ({"plen": 65}, "truncated"),
        ({"payload": bytes(63)}, "packs to 64"),
        ({"coder": 1, "payload": b"\x03\x00"}, "zlib"),
        ({"lo": 1.0, "hi": 1.0, "payload": b"\x10" + bytes(63)}, "lo == hi"),
    ],
)
def test_lying_header_fields_raise_codec_error(fields: dict[str, Any], match: str) -> None:
    frame = _frame(**fields)
    with pytest.raises(CodecError, match=match) as info:
        decode_features(frame)
    assert type(info.value) is CodecError


def test_newer_version_raises_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion, match="version 3"):
        peek_header(_frame(mv=0xA3))
    with pytest.raises(UnsupportedVersion):
        decode_features(_frame(mv=0xAF) + b"anything at all")


def test_short_input_and_wrong_types() -> None:
    v2 = encode_features(features(c=2), 4)
    for data in (b"", b"\xa1", _frame()[:13], v2[:2], v2[:4], v2[:8], v2[:9]):
        with pytest.raises(CodecError, match=r"shorter than|ends inside"):
            decode_features(data)
    for obj in ("a string", None, 42, [1, 2]):
        with pytest.raises(CodecError, match="must be bytes"):
            decode_features(obj)


def test_limits_restrict_shape_bits_and_payload() -> None:
    frame = encode_features(features(c=16), 8, entropy="none")
    decode_features(frame, DecodeLimits.for_shape((16, 8, 8)))
    with pytest.raises(CodecError, match="channels=16"):
        decode_features(frame, DecodeLimits.for_shape((8, 8, 8)))
    with pytest.raises(CodecError, match="bits=8 not allowed"):
        decode_features(frame, DecodeLimits(allowed_bits=frozenset({1, 2, 4})))
    with pytest.raises(CodecError, match="elements"):
        decode_features(frame, DecodeLimits(max_elements=1000))
    with pytest.raises(CodecError, match="payload_len=1024 exceeds"):
        decode_features(frame, DecodeLimits(max_payload_bytes=1000))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_channels": 0},
        {"max_elements": -5},
        {"max_width": 2.5},
        {"max_height": True},
        {"allowed_bits": frozenset()},
        {"allowed_bits": frozenset({0, 4})},
        {"allowed_bits": {4}},
    ],
)
def test_bad_limits_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DecodeLimits(**kwargs)  # type: ignore[arg-type]


def test_header_to_bytes_rejects_fields_that_do_not_fit() -> None:
    good = peek_header(encode_features(features(c=2), 4))
    assert good.to_bytes() == encode_features(features(c=2), 4)[: good.header_len]
    for bad in (
        dataclasses.replace(good, shape=(70000, 8, 8)),
        dataclasses.replace(good, payload_len=-1),
        dataclasses.replace(good, lo=1e9),
        dataclasses.replace(good, bits=17),
        dataclasses.replace(good, version=16),
        dataclasses.replace(good, coder="zstd"),
    ):
        with pytest.raises(CodecError):
            bad.to_bytes()


@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6),
        elements=st.floats(-60000, 60000, width=32, allow_subnormal=True),
    ),
    bits=st.integers(1, 16),
    entropy=st.sampled_from(["auto", "none", "zlib", "lzma"]),
)
@settings(max_examples=150, deadline=None)
def test_round_trip_property(x: npt.NDArray[np.float32], bits: int, entropy: str) -> None:
    frame = encode_features(x, bits, entropy=entropy)
    out = decode_features(frame)
    q, lo, hi = quantize(x, bits)
    np.testing.assert_array_equal(out.array, dequantize(q, lo, hi, bits))
    assert out.array.shape == x.shape
    step = (np.float32(hi) - np.float32(lo)) / np.float32((1 << bits) - 1)
    err = np.abs(out.array.astype(np.float64) - x.astype(np.float64))
    # half a step, plus float32 rounding of the computation at the magnitude of the values
    tol = float(step) / 2 * (1 + 1e-3) + 4 * float(np.finfo(np.float32).eps) * max(abs(lo), abs(hi))
    assert float(err.max()) <= tol


def test_limits_for_shape_admit_exactly_the_manifest_shape_and_bits() -> None:
    limits = DecodeLimits.for_shape((4, 8, 8), bits=[2, 4])
    frame = encode_features(features(c=4), 4)
    assert peek_header(frame, limits).shape == (4, 8, 8)
    with pytest.raises(CodecError, match="bits=8"):
        peek_header(encode_features(features(c=4), 8), limits)
    with pytest.raises(CodecError, match="channels=8"):
        peek_header(encode_features(features(c=8), 4), limits)
