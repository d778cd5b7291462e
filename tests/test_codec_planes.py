"""Plane units: all planes == frame codec decode; prefixes == top-k truncation at the midpoint; bad units rejected."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from slimsplit.codec.codec import decode_features, encode_features
from slimsplit.codec.header import DecodeLimits
from slimsplit.codec.planes import (
    PLANE_HEADER_SIZE,
    PlaneAssembly,
    decode_planes,
    encode_planes,
    parse_plane_header,
    split_units,
)
from slimsplit.codec.quantize import dequantize, quantize
from slimsplit.errors import CodecError, InvalidFrame

_tensors = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    elements=st.floats(-100, 100, width=32),
)


@settings(max_examples=60, deadline=None)
@given(x=_tensors, bits=st.integers(1, 10))
def test_all_planes_equal_frame_decode(x: np.ndarray, bits: int) -> None:
    units = encode_planes(x, bits, frame_id=7)
    assert len(units) == bits
    expected = decode_features(encode_features(x, bits, entropy="none")).array
    np.testing.assert_array_equal(decode_planes(units), expected)
    np.testing.assert_array_equal(decode_planes(list(reversed(units))), expected)


@settings(max_examples=60, deadline=None)
@given(x=_tensors, bits=st.integers(2, 10), data=st.data())
def test_prefix_is_truncation_at_midpoint(x: np.ndarray, bits: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, bits - 1))
    units = encode_planes(x, bits)
    q, lo, hi = quantize(x, bits)
    drop = bits - k
    trunc = ((q.astype(np.uint32) >> drop) << drop) | (1 << (drop - 1))
    trunc = np.minimum(trunc, (1 << bits) - 1)
    if hi == lo:
        trunc[:] = 0
    np.testing.assert_array_equal(decode_planes(units[:k]), dequantize(trunc, lo, hi, bits))
    # error is bounded by half the dropped range plus the quantization step's half (upper midpoint)
    err = np.abs(decode_planes(units[:k]) - x)
    assert float(err.max()) <= (hi - lo) / ((1 << bits) - 1) * ((1 << drop) / 2 + 0.5) * 1.01 + 1e-3


def _units() -> list[bytes]:
    x = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    return encode_planes(x, 8, frame_id=3)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda u: b"",
        lambda u: u[:10],
        lambda u: b"\xa2" + u[1:],  # a frame, not a plane unit
        lambda u: u[:1] + b"\x09" + u[2:],  # plane >= bits
        lambda u: u[:2] + b"\x00" + u[3:],  # bits 0
        lambda u: u[:3] + b"\x05" + u[4:],  # unknown coder
        lambda u: u[:8] + struct.pack(">H", 60000) + u[10:],  # huge shape
        lambda u: u + b"\x00",  # trailing byte
        lambda u: u[:-1],  # truncated
    ],
)
def test_malformed_units_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    unit = mutate(_units()[0])
    with pytest.raises(InvalidFrame):
        decode_planes([unit])


def test_mixed_frames_gaps_and_limits_rejected() -> None:
    units = _units()
    other = encode_planes(np.ones((4, 8, 8), np.float32) * 2, 8, frame_id=4)
    with pytest.raises(CodecError, match="different frames"):
        decode_planes([units[0], other[1]])
    with pytest.raises(CodecError, match="prefix"):
        decode_planes([units[0], units[2]])
    with pytest.raises(CodecError, match="twice"):
        decode_planes([units[0], units[0]])
    with pytest.raises(CodecError):
        parse_plane_header(units[0], DecodeLimits.for_shape((2, 8, 8)))
    with pytest.raises(CodecError):
        decode_planes([])


def test_corrupt_zlib_plane_rejected() -> None:
    units = encode_planes(np.linspace(0, 1, 256, dtype=np.float32).reshape(4, 8, 8) ** 4, 8)
    z = next(u for u in units if parse_plane_header(u).coder == "zlib")
    bad = z[:PLANE_HEADER_SIZE] + b"\xff" * (len(z) - PLANE_HEADER_SIZE)
    with pytest.raises(InvalidFrame):
        decode_planes([bad])


@settings(max_examples=40, deadline=None)
@given(x=_tensors, bits=st.integers(2, 8), data=st.data())
def test_assembly_in_any_order_decodes_its_prefix(x: np.ndarray, bits: int, data: st.DataObject) -> None:
    units = encode_planes(x, bits, frame_id=9)
    order = data.draw(st.permutations(range(bits)))
    cut = data.draw(st.integers(1, bits))
    assembly = PlaneAssembly(frame_id=9)
    for p in order[:cut]:
        assembly.add(units[p])
    prefix = assembly.prefix
    assert assembly.received == cut
    assert assembly.bytes == sum(len(units[p]) for p in order[:cut])
    if prefix == 0:
        with pytest.raises(CodecError, match="plane 0"):
            assembly.decode()
        return
    # planes after a gap are ignored: the decode is exactly the prefix's
    np.testing.assert_array_equal(assembly.decode(), decode_planes(units[:prefix]))


def test_assembly_refuses_another_frames_unit_and_stays_unchanged() -> None:
    units = _units()
    assembly = PlaneAssembly(frame_id=3)
    with pytest.raises(CodecError, match="frame"):
        assembly.add(encode_planes(np.ones((4, 8, 8), np.float32), 8, frame_id=4)[0])
    assert assembly.received == 0
    assembly = PlaneAssembly()
    assembly.add(units[0])
    with pytest.raises(CodecError, match="twice"):
        assembly.add(units[0])
    assert (assembly.received, assembly.prefix) == (1, 1)


def test_split_units_recovers_units_laid_end_to_end() -> None:
    units = _units()
    assert split_units(b"".join(units)) == units
    with pytest.raises(CodecError, match="cut short"):
        split_units(b"".join(units)[:-1])
    with pytest.raises(CodecError, match="trailing"):
        split_units(b"".join(units) + b"\xb1")
    with pytest.raises(CodecError):
        split_units(b"")
