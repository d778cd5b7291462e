#!/usr/bin/env python3
"""Write, or check, the feature codec's language-neutral test vectors (``protos/vectors/*.json``).

The vectors pin the byte format that ``protos/FORMAT.md`` specifies, so that a client written in another
language can test itself against them::

    python tools/make_vectors.py           # (re)write protos/vectors/*.json
    python tools/make_vectors.py --check   # exit 1 if the committed files differ from a fresh generation

Every expected value comes from the Python codec (``slimsplit.codec``) *and* from a second, deliberately naive
implementation in this file that follows FORMAT.md step by step (Python integers and numpy float32 scalars, one
value at a time); generation stops with an error if the two disagree, so the vectors, the codec and the
document say the same thing. Every refused frame is checked to raise exactly the error class and field written
into its vector.

Inputs come from a fixed integer generator (SplitMix64, no numpy random streams) and are written as float32
bit patterns. The DEFLATE and LZMA2 payloads the encoder produces depend on the zlib and liblzma builds; those
vectors say ``"encoder_exact": false``, and ``--check`` accepts a committed frame that differs from a fresh one
when it decodes to the same packed bits and header fields (any valid stream is conforming, FORMAT.md section 5).
The refusal vectors that need a DEFLATE or LZMA2 stream use hand-made stored blocks, which no library changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import math
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.bundle.codec_tables import load_codec_tables, tables_fingerprint
from slimsplit.codec import DEFAULT_LIMITS, DecodeLimits, HuffmanTables, decode_features, encode_features
from slimsplit.codec.bitpack import pack_bits, packed_size
from slimsplit.codec.entropy import Coder
from slimsplit.codec.header import FeatureHeader, parse_header
from slimsplit.codec.huffman import byte_contexts
from slimsplit.codec.planes import PLANE_HEADER_SIZE, decode_planes, encode_planes, parse_plane_header
from slimsplit.codec.quantize import quantize
from slimsplit.errors import CodecError, SlimsplitError, UnsupportedVersion

ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = ROOT / "protos" / "vectors"
FORMAT_NAME = "slimsplit feature codec test vectors (protos/FORMAT.md)"
FILE_VERSION = 1
F16_MAX = 65504.0
MASK64 = (1 << 64) - 1

Json = dict[str, Any]
F32 = npt.NDArray[np.float32]


class VectorError(Exception):
    """The codec and the reference implementation disagree, or a refusal raised something else."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise VectorError(what)


# ---------------------------------------------------------------------------------------------- inputs


class SplitMix64:
    """A tiny, fully specified integer generator (Steele et al. 2014), so inputs never depend on a library."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """In [0, 1), a multiple of 2**-53 (exact in float64)."""
        return (self.next() >> 11) * 2.0**-53

    def normal(self) -> float:
        """Approximately standard normal: Irwin-Hall of 4 uniforms, rescaled (no library functions, only IEEE float64
        additions and multiplications, which give the same result everywhere)."""
        return (sum(self.uniform() for _ in range(4)) - 2.0) * 1.7320508075688772


def features(shape: tuple[int, ...], seed: int, *, offset: float = -0.3) -> F32:
    """Bottleneck-like float32 features of ``shape``: ReLU of normals with mean ``offset`` (more zeros below 0)."""
    rng = SplitMix64(seed)
    values = [max(offset + rng.normal(), 0.0) for _ in range(math.prod(shape))]
    return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(shape)


def from_words(words: Iterable[int], shape: tuple[int, ...] | None = None) -> F32:
    """float32 values from their bit patterns."""
    arr = np.asarray(list(words), dtype=np.uint32).view(np.float32)
    return arr.reshape(shape if shape is not None else (1, 1, arr.size))


def f32_words(a: npt.ArrayLike) -> str:
    """float32 values as space-separated 8-digit hex bit patterns (``3f800000`` = 1.0), C order."""
    flat = np.ascontiguousarray(np.asarray(a, dtype=np.float32)).reshape(-1).view(np.uint32)
    return " ".join(f"{int(v):08x}" for v in flat)


def f16_hex(value: float) -> str:
    return struct.pack(">e", value).hex()


def same_float(a: float, b: float) -> bool:
    """Equal including the sign of zero."""
    return struct.pack(">d", a) == struct.pack(">d", b)


# ---------------------------------------------------------------------------------------------- reference
# A second implementation of FORMAT.md, one value at a time, used only to cross-check the codec.


def ref_f16_bits(value: float) -> int:
    return int(struct.unpack(">H", struct.pack(">e", value))[0])


def ref_f16_value(bits: int) -> float:
    return float(struct.unpack(">e", struct.pack(">H", bits))[0])


def ref_f16_outward(value: float, up: bool) -> float:
    """FORMAT.md 3.1: the float16 nearest ``value`` (ties to even), moved one step outwards if on the wrong side."""
    if not math.isfinite(value) or abs(value) > F16_MAX:
        raise VectorError(f"{value} is outside the float16 range")
    bits = ref_f16_bits(value)
    rounded = ref_f16_value(bits)
    if (rounded < value) if up else (rounded > value):
        if bits & 0x7FFF == 0:  # +0 or -0: the smallest subnormal of the wanted sign
            bits = 0x0001 if up else 0x8001
        elif up != bool(bits & 0x8000):  # away from zero
            bits += 1
        else:
            bits -= 1
        rounded = ref_f16_value(bits)
    return rounded


def ref_quantize(values: Sequence[float], bits: int) -> tuple[list[int], float, float]:
    """FORMAT.md 3.2, in float32 scalars: (q, lo, hi)."""
    levels = (1 << bits) - 1
    lo = ref_f16_outward(min(values), up=False)
    hi = ref_f16_outward(max(values), up=True)
    if lo == hi:
        return [0] * len(values), lo, hi
    lo32 = np.float32(lo)
    d = np.float32(hi) - lo32
    lv = np.float32(levels)
    q = []
    for v in values:
        t = (np.float32(v) - lo32) / d * lv
        q.append(min(max(round(float(t)), 0), levels))  # round(): ties to even
    return q, lo, hi


def ref_dequantize(q: Sequence[int], lo: float, hi: float, bits: int) -> list[np.float32]:
    levels = np.float32((1 << bits) - 1)
    lo32 = np.float32(lo)
    d = np.float32(hi) - lo32
    return [lo32 + (np.float32(v) * d) / levels for v in q]


def ref_pack(q: Sequence[int], bits: int) -> bytes:
    """FORMAT.md 4: MSB first, zero padding."""
    acc = 0
    for v in q:
        acc = (acc << bits) | v
    total = len(q) * bits
    pad = -total % 8
    return (acc << pad).to_bytes((total + pad) // 8, "big")


def ref_unpack(data: bytes, bits: int, count: int) -> list[int]:
    total = count * bits
    acc = int.from_bytes(data, "big") >> (len(data) * 8 - total)
    return [(acc >> (bits * (count - 1 - i))) & ((1 << bits) - 1) for i in range(count)]


def ref_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def ref_header(version: int, coder: int, bits: int, shape: Sequence[int], lo: float, hi: float, n: int) -> bytes:
    """FORMAT.md 2: the header bytes."""
    first = bytes((0xA0 | version, (coder << 4) | (bits - 1)))
    if version == 1:
        return first + struct.pack(">HHHeeH", *shape, lo, hi, n)
    return first + b"".join(ref_varint(v) for v in shape) + struct.pack(">ee", lo, hi) + ref_varint(n)


def ref_canonical_codes(lengths: Sequence[int]) -> list[str]:
    """FORMAT.md 5.4: RFC 1951 section 3.2.2, as bit strings (first bit first)."""
    max_len = max(lengths)
    bl_count = [0] * (max_len + 1)
    for n in lengths:
        bl_count[n] += 1
    next_code = [0] * (max_len + 2)
    code = 0
    for n in range(1, max_len + 1):
        code = (code + (bl_count[n - 1] if n > 1 else 0)) << 1
        next_code[n] = code
    out = []
    for n in lengths:
        out.append(format(next_code[n], f"0{n}b"))
        next_code[n] += 1
    return out


def ref_contexts(shape: Sequence[int], bits: int, contexts: int) -> list[int]:
    c, h, w = shape
    nbytes = (c * h * w * bits + 7) // 8
    return [min((8 * j // bits) // (h * w), contexts - 1) for j in range(nbytes)]


def ref_huffman_encode(packed: bytes, contexts: Sequence[int], codes: Sequence[Sequence[str]]) -> bytes:
    stream = "".join(codes[k][b] for b, k in zip(packed, contexts, strict=True))
    if not stream:
        return b""
    stream += "0" * (-len(stream) % 8)
    return int(stream, 2).to_bytes(len(stream) // 8, "big")


def ref_huffman_decode(payload: bytes, contexts: Sequence[int], codes: Sequence[Sequence[str]]) -> bytes:
    """Bit by bit; VectorError where FORMAT.md 5.4 says a decoder must refuse."""
    stream = "".join(format(b, "08b") for b in payload)
    inverse = [{code: sym for sym, code in enumerate(row)} for row in codes]
    out, pos = bytearray(), 0
    for k in contexts:
        end = pos + 1
        while stream[pos:end] not in inverse[k]:
            end += 1
            if end > len(stream):
                raise VectorError("huffman stream ends inside a code")
        out.append(inverse[k][stream[pos:end]])
        pos = end
    rest = stream[pos:]
    if len(rest) >= 8 or "1" in rest:
        raise VectorError("huffman stream has trailing bytes or non-zero padding")
    return bytes(out)


def inflate(payload: bytes) -> bytes:
    """Raw DEFLATE, as FORMAT.md 5.2 says (any conforming decoder)."""
    d = zlib.decompressobj(-15)
    out = d.decompress(payload)
    _require(d.eof and not d.unused_data, "deflate stream not exactly the payload")
    return out


def unlzma(payload: bytes) -> bytes:
    """Raw LZMA2, 64 KiB dictionary, as FORMAT.md 5.3 says."""
    d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16}])
    out = d.decompress(payload)
    _require(d.eof and not d.unused_data, "lzma2 stream not exactly the payload")
    return out


def stored_deflate(data: bytes, final: bool = True) -> bytes:
    """One DEFLATE stored block (RFC 1951 3.2.4): what no zlib version changes."""
    return bytes((1 if final else 0,)) + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data


def stored_lzma2(data: bytes) -> bytes:
    """One LZMA2 uncompressed chunk with dictionary reset, then the end marker."""
    return bytes((0x01,)) + struct.pack(">H", len(data) - 1) + data + b"\x00"


# ---------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class NamedTables:
    """Huffman tables with the name vectors use to refer to them (``toy`` or a shipped mode)."""

    name: str
    tables: HuffmanTables

    def codes(self) -> list[list[str]]:
        return [ref_canonical_codes([int(n) for n in row]) for row in self.tables.lengths]


def toy_tables() -> NamedTables:
    """A readable code: byte 0x00 -> '0', 0x01 -> '10000000', 0x02..0xFF -> 9 bits; context 1 swaps 0x00/0xFF."""
    row = np.full(256, 9, np.uint8)
    row[0], row[1] = 1, 8
    swapped = row.copy()
    swapped[0], swapped[255] = row[255], row[0]
    return NamedTables("toy", HuffmanTables(np.stack([row, swapped])))


def shipped_tables() -> dict[str, NamedTables]:
    tables = load_codec_tables(Bundle.open(default_bundle_path()))
    return {name: NamedTables(name, t) for name, t in tables.items()}


# ---------------------------------------------------------------------------------------------- JSON


def limits_json(limits: DecodeLimits) -> Json:
    return {
        "max_channels": limits.max_channels,
        "max_height": limits.max_height,
        "max_width": limits.max_width,
        "max_elements": limits.max_elements,
        "max_payload_bytes": limits.max_payload_bytes,
        "allowed_bits": sorted(limits.allowed_bits),
    }


def limits_from_json(raw: Mapping[str, Any]) -> DecodeLimits:
    return DecodeLimits(
        max_channels=int(raw["max_channels"]),
        max_height=int(raw["max_height"]),
        max_width=int(raw["max_width"]),
        max_elements=int(raw["max_elements"]),
        max_payload_bytes=int(raw["max_payload_bytes"]),
        allowed_bits=frozenset(int(b) for b in raw["allowed_bits"]),
    )


def render(obj: Any, indent: int = 0) -> str:
    """JSON with objects and lists of objects one item per line, lists of scalars on one line (deterministic)."""
    pad = "  " * indent
    if isinstance(obj, dict) and obj:
        items = [f"{pad}  {json.dumps(k)}: {render(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        items = [f"{pad}  {render(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def document(description: str, **sections: Any) -> Json:
    return {"format": FORMAT_NAME, "file_version": FILE_VERSION, "description": description, **sections}


def error_json(exc_type: type[SlimsplitError], field: str) -> Json:
    return {"error": exc_type.__name__, "grpc_status": exc_type.grpc_status, "field": field}


# ---------------------------------------------------------------------------------------------- descriptions

DESCRIPTIONS: dict[str, str] = {
    # header.json
    "v2_min_10_bytes": "every varint one byte: the 10-byte header of the narrow modes",
    "v2_payload_len_2_bytes": "payload_len 128: the first 2-byte varint (80 01)",
    "v2_varint_boundaries": "channels 127 (1 byte), height 128 (2), width 16383 (2), payload_len 16384 (3)",
    "v2_channels_3_bytes": "channels 16384 (varint 80 80 01), raw 1-bit payload of 2048 bytes",
    "v2_max_18_bytes": "every varint at the format's maximum 65535 (ff ff 03): the longest header",
    "v2_bits_16": "bits 16 is stored as 15 (low nibble f)",
    "v2_huffman": "coder 3 (huffman) and bits 2: byte 1 = 0x31",
    "v2_negative_zero_lo_subnormal_hi": "lo = -0.0 (8000), hi = the smallest float16 subnormal 2**-24 (0001)",
    "v1_none": "version 1: fixed 14 bytes, big-endian uint16 fields",
    "v1_lzma": "version 1 with coder lzma (2) and bits 8",
    # frames.json
    "pack_example_3_bits": "q = 0 5 1 7 at 3 bits: 000 101 001 111 + 4 zero bits = 14 f0",
    "round_half_to_even": "t = 0.5, 1.5, 2.5, 3.5 round to 0, 2, 2, 4",
    "bits_16_big_endian": "16 bits: each value is its big-endian uint16; t = 32767.5 rounds to 32768",
    "zlib_4x8x8_bits_2": "raw DEFLATE payload",
    "zlib_constant_runs": "raw DEFLATE on a frame of long zero runs",
    "lzma_4x8x8_bits_8": "raw LZMA2 payload",
    "huffman_toy_1_bit": "the toy code of code_tables.json: a zero byte costs one bit in context 0",
    "huffman_toy_3_bits_odd": "toy code at 3 bits: a byte's context is the channel of its first bit",
    "constant_float16_exact": "min == max == 1.5: lo == hi, every q is 0",
    "constant_zero": "all zeros: lo == hi == 0",
    "constant_not_float16": "min == max == 0.1, not a float16: lo < hi after outward rounding, and q is not 0",
    "negative_zero_min": "min is -0.0 (no +0.0 present): lo is written 8000; it decodes to +0.0",
    "negative_zero_only": "all -0.0: lo == hi == -0.0 (8000), decoded as +0.0",
    "negative_zero_inside": "-0.0 inside the range quantizes like +0.0",
    "float32_subnormals": (
        "float32 subnormal inputs: max = 2**-149 rounds up to hi = 2**-24 (0001); a decoder or encoder that "
        "flushes subnormals to zero gets lo == hi instead"
    ),
    "float32_subnormals_signed": "+-float32 subnormals: lo = -2**-24 (8001), hi = +2**-24 (0001)",
    "float16_subnormal_range": "values in float16's subnormal range: lo (0032) and hi (03ef) are float16 subnormals",
    "outward_rounding": "0.3 and 0.7 are not float16s: lo = 0.2998 (34cc) and hi = 0.7002 (399a), one step outwards",
    "outward_rounding_negative": "-0.3 and -0.1: lo rounds away from zero (b4cd), hi towards zero (ae66)",
    "outward_rounding_ties": (
        "+-(1 + 2**-11) are float16 ties whose nearest-even is +-1.0: lo = -1.0009765625 (bc01), hi = 1.0009765625 "
        "(3c01)"
    ),
    "narrow_range_far_from_zero": "values in [1000.1, 1000.9]: float16 steps of 0.5 widen the range to [1000, 1001]",
    "float16_extremes": "-65504 and 65504, the largest finite float16s: accepted",
    "input_4d": "an input [1, C, H, W] is encoded as [C, H, W]",
    "channels_2_byte_varint": "200 channels: channels is the 2-byte varint c8 01",
    "payload_2_byte_varint": "the shipped w16b8 shape, raw: payload_len 1024 is the varint 80 08",
    "quantize_float32_not_float64": "t computed in float64 gives q[2] = 33; float32, in the format's order, gives 34",
    "quantize_divide_then_multiply": "(x - lo) * (levels / d) gives q[2] = 2; the format's ((x - lo) / d) * levels 1",
    "dequantize_multiply_then_divide": "lo + q * (d / levels) differs in the last bit from lo + (q * d) / levels",
    "v1_raw": "codec version 1 (fixed 14-byte header), raw payload",
    "v1_deflate_stored": "codec version 1, DEFLATE: one stored block",
    "v1_lzma2_uncompressed": "codec version 1, LZMA2: one uncompressed chunk",
    "v2_deflate_stored": "any valid raw DEFLATE stream decodes: one stored block",
    "v2_deflate_two_blocks": "two stored blocks, the first not final",
    "v2_lzma2_uncompressed": "any valid raw LZMA2 stream decodes: an uncompressed chunk",
    "lo_positive_zero": "lo = +0.0 (0000)",
    "lo_negative_zero": "the same frame with lo = -0.0 (8000): identical decoded values",
    "range_wider_than_needed": "lo/hi need not be the rounded min/max of the values: a decoder uses them as they are",
    # refusals.json: frames
    "empty": "no bytes",
    "one_byte": "shorter than any header",
    "bad_magic": "byte 0 = 0x52: magic 5 is not 0xA",
    "not_a_frame_json": "some JSON text",
    "version_0": "byte 0 = 0xA0: there is no version 0",
    "version_3": "byte 0 = 0xA3: a newer codec version",
    "version_15_short": "byte 0 = 0xAF with nothing else to parse: still 'newer version', not 'truncated'",
    "truncated_in_varint": "the header ends inside the channels varint",
    "truncated_in_lo_hi": "the header ends inside lo/hi",
    "truncated_before_payload_len": "the header ends before payload_len",
    "v1_truncated_header": "version 1, 13 of its 14 header bytes",
    "unknown_coder_4": "coder id 4",
    "unknown_coder_15": "coder id 15",
    "varint_not_minimal": "channels 2 written as 82 00",
    "varint_4_bytes": "height written in 4 bytes (84 80 80 00)",
    "varint_over_65535": "width 65536 (80 80 04)",
    "channels_0": "channels 0",
    "height_0": "height 0",
    "shape_over_mode_limit": "3 channels where the mode sends 2 (the limits of a mode [2, 4, 4] at 2 bits)",
    "elements_over_limit": "32 elements, limit 16",
    "bits_not_allowed": "4 bits where the mode allows only 2",
    "payload_over_limit": "payload_len 8 above a limit of 4",
    "payload_truncated": "one payload byte missing",
    "payload_trailing_byte": "one byte after the payload",
    "raw_payload_wrong_size": "raw payload of 7 bytes (the header agrees) where 32 values of 2 bits need 8",
    "lo_infinite": "lo = -inf (fc00)",
    "hi_nan": "hi = NaN (7e00)",
    "lo_above_hi": "lo = 2 > hi = 1",
    "v1_huffman": "codec version 1 has no huffman coder (id 3)",
    "padding_not_zero": "45 bits of values: the 3 padding bits of the last byte are 1",
    "constant_with_nonzero_q": "lo == hi but a non-zero value in the payload",
    "deflate_corrupt": "block type 3 (reserved)",
    "deflate_truncated": "a stored block cut short",
    "deflate_not_final": "the only block is not final",
    "deflate_trailing_bytes": "a byte after the end of the stream",
    "deflate_too_short": "the stream decodes to 7 bytes where 8 are needed",
    "deflate_too_long": "the stream decodes to 9 bytes where 8 are needed",
    "lzma2_corrupt": "control byte 0x03 is not an LZMA2 chunk type",
    "lzma2_too_short": "the stream decodes to 7 bytes where 8 are needed",
    "lzma2_no_end_marker": "the chunk is not followed by the end marker",
    "huffman_without_tables": "a huffman frame given to a decoder that has no tables for the mode",
    "huffman_stream_ends_early": "the last payload byte missing (toy code)",
    "huffman_empty_payload": "no payload bytes for 4 codes (toy code)",
    "huffman_trailing_byte": "a whole byte after the last code (toy code)",
    "huffman_padding_not_zero": "a 1 among the padding bits after the last code (toy code)",
    "lsb_first_caught_by_padding": (
        "the padding_not_zero frame's values packed LSB first: its padding bits are not zero, which is the only "
        "thing that gives it away"
    ),
    "huffman_bit_reversed_caught": (
        "a w2b1 huffman frame with each payload byte's bits reversed: the codes no longer end exactly at the end "
        "of the payload"
    ),
    # refusals.json: encode
    "nan": "a NaN value",
    "infinity": "+inf",
    "above_float16_max": "65504.004 (477fe001), the next float32 above 65504",
    "below_float16_min": "-65504.004 (c77fe001)",
    "above_float16_max_rounds_down": "65519 (477fef00) would round to 65504 as a float16, but lies above it",
    "bits_0": "bits 0",
    "bits_17": "bits 17",
    "empty_dimension": "a dimension of 0",
    "rank_2": "a [H, W] tensor",
    "batch_of_2": "a batch [2, C, H, W]",
    "payload_over_65535": "[2, 1, 32768] of 1.0 at 16 bits, raw: 131072 payload bytes",
    # misencoded.json
    "bit_reversed_bytes_bits_8": "8 bits with each byte's bits reversed",
    "huffman_bit_reversed_accepted": (
        "a w2b1 huffman payload with each byte's bits reversed that still ends exactly at the end of the payload"
    ),
    # planes.json
    "planes_3_bits_small": "0, 1, 0.25, 0.75, 0.5, 0.1, 0.9, 0.3 at 3 bits: three raw 1-byte planes",
    "planes_1_bit": "the same values at 1 bit: one plane, which is the whole code",
    "planes_8_bits_bottleneck": (
        "bottleneck-like ReLU features [4, 7, 7] at 8 bits: the sparse high planes compress (DEFLATE), the low ones not"
    ),
    "planes_16_bits": "16 bits, frame_id 0xffffffff: the deepest code and the largest id",
    "planes_constant": "min == max == 1.5: lo == hi, every prefix decodes to 1.5",
    "planes_stored_deflate": "coder 1 with DEFLATE stored blocks (what any zlib decodes alike), frame_id 9",
    "plane_none": "no unit at all",
    "plane_short_header": "19 bytes: shorter than the header",
    "plane_bad_magic": "byte 0 is a frame's 0xa2, not 0xb1",
    "plane_index_not_below_bits": "plane 3 of a 3-bit code",
    "plane_bits_0": "bits 0",
    "plane_bits_17": "bits 17",
    "plane_unknown_coder": "coder 2 (LZMA2 is not a plane coder)",
    "plane_zero_channels": "C = 0",
    "plane_nan_range": "lo is a float16 NaN (7e00)",
    "plane_inverted_range": "lo = 1.0 > hi = 0.0",
    "plane_truncated": "one payload byte missing",
    "plane_trailing_byte": "one byte after the payload",
    "plane_raw_wrong_length": "a raw payload of 2 bytes where 8 values pack into 1",
    "plane_deflate_bomb": "DEFLATE that inflates to 4096 bytes where 1 is expected",
    "plane_deflate_short": "DEFLATE that inflates to nothing",
    "plane_gap": "planes 0 and 2 without 1",
    "plane_duplicate": "plane 0 twice",
    "plane_not_from_plane_0": "plane 1 alone",
    "plane_mixed_frames": "plane 1 of another frame id",
    "plane_mixed_bits": "plane 1 of the same input at 4 bits",
    "plane_payload_over_limit": "a plane payload one byte over the receiver's max_payload_bytes",
}


def describe(name: str) -> str:
    if name.startswith("bits_") and name.endswith("_raw"):
        bits = int(name.split("_")[1])
        return f"{bits}-bit values, raw packing, 15 values ({-15 * bits % 8} padding bits)"
    if name.startswith("mode_shape_2x8x8_bits_"):
        return f"the shape of the shipped mode w2b{name.rsplit('_', 2)[1]}, raw packing"
    if name.startswith("huffman_shipped_"):
        return f"the shipped bundle's table for mode {name.rsplit('_', 1)[1]}"
    if name.startswith("lsb_first_bits_"):
        return "packed LSB first: every bit pattern is a valid payload, and this shape has no padding bits"
    return DESCRIPTIONS[name]


# ---------------------------------------------------------------------------------------------- headers

GENEROUS = DecodeLimits(
    max_channels=0xFFFF, max_height=0xFFFF, max_width=0xFFFF, max_elements=0xFFFF**3, max_payload_bytes=0xFFFF
)

Shape = tuple[int, int, int]


def header_case(
    name: str, version: int, coder: str, bits: int, shape: Shape, lo: float, hi: float, n: int | None = None
) -> Json:
    """A header vector; ``n`` (payload_len) defaults to the packed size, as a raw frame needs."""
    payload_len = packed_size(math.prod(shape), bits) if n is None else n
    header = FeatureHeader(version, coder, bits, shape, lo, hi, payload_len)
    data = header.to_bytes()
    _require(data == ref_header(version, Coder[coder.upper()], bits, shape, lo, hi, payload_len), f"{name}: bytes")
    parsed = parse_header(data + bytes(payload_len), GENEROUS)
    _require(parsed == header and parsed.header_len == len(data), f"{name}: header parse")
    return {
        "name": name,
        "description": describe(name),
        "version": version,
        "coder": coder,
        "bits": bits,
        "shape": list(shape),
        "lo_f16": f16_hex(lo),
        "hi_f16": f16_hex(hi),
        "payload_len": payload_len,
        "header_len": len(data),
        "header_hex": data.hex(),
        "limits": limits_json(GENEROUS),
    }


def header_vectors() -> Json:
    cases = [
        header_case("v2_min_10_bytes", 2, "none", 2, (2, 8, 8), 0.0, 4.5),
        header_case("v2_payload_len_2_bytes", 2, "zlib", 4, (8, 8, 8), 0.0, 2.0, 128),
        header_case("v2_varint_boundaries", 2, "zlib", 1, (127, 128, 16383), -1.0, 1.0, 16384),
        header_case("v2_channels_3_bytes", 2, "none", 1, (16384, 1, 1), 0.0, 1.0),
        header_case("v2_max_18_bytes", 2, "lzma", 16, (65535, 65535, 65535), -65504.0, 65504.0, 65535),
        header_case("v2_bits_16", 2, "none", 16, (1, 2, 3), -2.0, 3.0),
        header_case("v2_huffman", 2, "huffman", 2, (4, 8, 8), 0.0, 1.5, 21),
        header_case("v2_negative_zero_lo_subnormal_hi", 2, "zlib", 8, (1, 1, 1), -0.0, 2.0**-24, 9),
        header_case("v1_none", 1, "none", 2, (2, 8, 8), 0.0, 4.5),
        header_case("v1_lzma", 1, "lzma", 8, (16, 8, 8), -1.5, 7.25, 300),
    ]
    return document(
        "Header serialisation (FORMAT.md section 2). Each case: the fields and the exact header bytes. To parse a "
        "case, append payload_len zero bytes (the header is then valid; the payload is not meant to decode) and "
        "use the limits given.",
        headers=_unique(cases),
    )


# ---------------------------------------------------------------------------------------------- frames


def _packed_of(name: str, payload: bytes, h: FeatureHeader, tables: NamedTables | None) -> bytes:
    """The packed bits inside ``payload``, decoded by the reference (FORMAT.md section 5)."""
    coder = Coder[h.coder.upper()]
    if coder is Coder.NONE:
        return payload
    if coder is Coder.ZLIB:
        return inflate(payload)
    if coder is Coder.LZMA:
        return unlzma(payload)
    if tables is None:
        raise VectorError(f"{name}: a huffman frame needs tables")
    return ref_huffman_decode(payload, ref_contexts(h.shape, h.bits, tables.tables.contexts), tables.codes())


def _check_frame(name: str, frame: bytes, x: F32 | None, tables: NamedTables | None, limits: DecodeLimits) -> Json:
    """Decode ``frame`` with the codec and with the reference; what they agree on, as JSON fields."""
    decoded = decode_features(frame, limits, tables=tables.tables if tables is not None else None)
    h = decoded.header
    payload = frame[h.header_len :]
    coder = Coder[h.coder.upper()]
    packed = _packed_of(name, payload, h, tables)
    q = ref_unpack(packed, h.bits, h.numel)
    _require(ref_pack(q, h.bits) == packed, f"{name}: padding bits are not zero")
    expect = np.asarray(ref_dequantize(q, h.lo, h.hi, h.bits), np.float32)
    _require(f32_words(decoded.array) == f32_words(expect), f"{name}: decoded values")
    want_header = ref_header(h.version, coder, h.bits, h.shape, h.lo, h.hi, h.payload_len)
    _require(frame[: h.header_len] == want_header, f"{name}: header bytes")
    if x is not None:
        rq, rlo, rhi = ref_quantize([float(v) for v in x.reshape(-1)], h.bits)
        _require(rq == q and same_float(rlo, h.lo) and same_float(rhi, h.hi), f"{name}: quantization")
        cq, clo, chi = quantize(x, h.bits)
        _require(cq.reshape(-1).tolist() == q and same_float(clo, h.lo) and same_float(chi, h.hi), f"{name}: q")
        _require(pack_bits(cq, h.bits) == packed, f"{name}: codec packing")
        if coder is Coder.HUFFMAN and tables is not None:
            ctx = ref_contexts(h.shape, h.bits, tables.tables.contexts)
            _require(ctx == byte_contexts(h.shape, h.bits, tables.tables.contexts).tolist(), f"{name}: contexts")
            _require(ref_huffman_encode(packed, ctx, tables.codes()) == payload, f"{name}: huffman encoding")
    return {
        "version": h.version,
        "coder": h.coder,
        "bits": h.bits,
        "shape": list(h.shape),
        "lo_f16": f16_hex(h.lo),
        "hi_f16": f16_hex(h.hi),
        "lo": h.lo,
        "hi": h.hi,
        "payload_len": h.payload_len,
        "q": " ".join(str(v) for v in q),
        "packed_hex": packed.hex(),
        "header_hex": frame[: h.header_len].hex(),
        "frame_hex": frame.hex(),
        "decoded_f32": f32_words(decoded.array),
    }


def frame_case(
    name: str, x: F32, bits: int, coder: str, tables: NamedTables | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> Json:
    """An encode + decode vector: ``x`` encoded at ``bits`` with ``coder`` forced."""
    frame = encode_features(x, bits, entropy=coder, tables=tables.tables if tables is not None else None)
    fields = _check_frame(name, frame, x, tables, limits)
    _require(fields["coder"] == coder, f"{name}: coder")
    return {
        "name": name,
        "description": describe(name),
        "encode": True,
        "encoder_exact": coder in ("none", "huffman"),
        "input_shape": list(x.shape),
        "input_f32": f32_words(x),
        "tables": tables.name if tables is not None else None,
        "limits": limits_json(limits),
        **fields,
    }


def decode_case(name: str, frame: bytes, tables: NamedTables | None = None) -> Json:
    """A decode-only vector (version 1, or a stream this encoder does not write)."""
    return {
        "name": name,
        "description": describe(name),
        "encode": False,
        "encoder_exact": False,
        "tables": tables.name if tables is not None else None,
        "limits": limits_json(DEFAULT_LIMITS),
        **_check_frame(name, frame, None, tables, DEFAULT_LIMITS),
    }


def with_header(frame: bytes, **changes: Any) -> bytes:
    """``frame`` with its header rewritten (same payload unless ``payload=``; payload_len follows the payload)."""
    h = parse_header(frame, GENEROUS)
    payload: bytes = changes.pop("payload", frame[h.header_len :])
    return replace(h, payload_len=len(payload), **changes).to_bytes() + payload


def payload_of(frame: bytes) -> bytes:
    return frame[parse_header(frame, GENEROUS).header_len :]


ORDER_SENSITIVE: dict[str, tuple[int, list[int]]] = {
    "quantize_float32_not_float64": (7, [0xBF18E000, 0x40858000, 0x3F292AB3]),
    "quantize_divide_then_multiply": (4, [0xBF99A000, 0x406F8000, 0xBF34B99A]),
    "dequantize_multiply_then_divide": (5, [0x40D4E764, 0x3F812AC1, 0x40D47F5B, 0x400BB353, 0x403DA677, 0x40B967C7]),
}


def _check_order_sensitive(name: str, x: F32, bits: int) -> None:
    """These inputs must keep telling the format's float32 order of operations from the obvious alternatives."""
    levels = (1 << bits) - 1
    q, lo, hi = quantize(x, bits)
    lo32, d = np.float32(lo), np.float32(hi) - np.float32(lo)
    alternatives = {
        "quantize_float32_not_float64": np.rint((x.astype(np.float64) - lo) / (hi - lo) * levels) != q,
        "quantize_divide_then_multiply": np.rint((x - lo32) * (np.float32(levels) / d)) != q,
        "dequantize_multiply_then_divide": (
            lo32 + q.astype(np.float32) * (d / np.float32(levels))
            != lo32 + q.astype(np.float32) * d / np.float32(levels)
        ),
    }
    _require(bool(alternatives[name].any()), f"{name}: no longer sensitive to the order of operations")


def frame_vectors(toy: NamedTables, shipped: Mapping[str, NamedTables]) -> Json:
    def arr(*values: float) -> F32:
        return np.asarray([[list(values)]], np.float32)

    cases = [frame_case(f"bits_{b}_raw", features((1, 3, 5), 100 + b, offset=0.0), b, "none") for b in range(1, 17)]
    cases += [
        frame_case(f"mode_shape_2x8x8_bits_{b}_raw", features((2, 8, 8), 200 + b), b, "none") for b in (1, 2, 4, 8)
    ]
    cases += [
        frame_case("pack_example_3_bits", arr(0.0, 5.0, 1.0, 7.0), 3, "none"),
        frame_case("round_half_to_even", arr(0.0, 7.0, 0.5, 1.5, 2.5, 3.5), 3, "none"),
        frame_case("bits_16_big_endian", arr(0.0, 1.0, 0.5, 0.25), 16, "none"),
        frame_case("zlib_4x8x8_bits_2", features((4, 8, 8), 300), 2, "zlib"),
        frame_case("zlib_constant_runs", features((2, 8, 8), 301, offset=-1.5), 4, "zlib"),
        frame_case("lzma_4x8x8_bits_8", features((4, 8, 8), 302), 8, "lzma"),
        frame_case("huffman_toy_1_bit", features((2, 2, 8), 303, offset=-1.8), 1, "huffman", toy),
        frame_case("huffman_toy_3_bits_odd", features((2, 1, 5), 304, offset=-0.5), 3, "huffman", toy),
    ]
    for seed, mode in enumerate(("w2b1", "w2b2", "w4b4", "w8b2", "w16b1", "w2b8"), 310):
        nt = shipped[mode]
        x = features((nt.tables.contexts, 8, 8), seed)
        cases.append(frame_case(f"huffman_shipped_{mode}", x, int(mode.split("b")[1]), "huffman", nt))
    cases += [
        frame_case("constant_float16_exact", np.full((1, 2, 3), 1.5, np.float32), 4, "none"),
        frame_case("constant_zero", np.zeros((2, 2, 2), np.float32), 8, "none"),
        frame_case("constant_not_float16", np.full((1, 1, 4), 0.1, np.float32), 8, "none"),
        frame_case("negative_zero_min", from_words([0x80000000, 0x3F000000, 0x3F800000, 0x40000000]), 2, "none"),
        frame_case("negative_zero_only", from_words([0x80000000] * 3), 3, "none"),
        frame_case("negative_zero_inside", from_words([0xBF800000, 0x80000000, 0x00000000, 0x3F800000]), 4, "none"),
        frame_case("float32_subnormals", from_words([0x00000000, 0x00000001, 0x00400000, 0x007FFFFF]), 8, "none"),
        frame_case("float32_subnormals_signed", from_words([0x80000001, 0x00000001, 0, 0x807FFFFF]), 2, "none"),
        frame_case("float16_subnormal_range", arr(3e-6, 1e-5, 2.5e-5, 6e-5), 8, "none"),
        frame_case("outward_rounding", arr(0.3, 0.5, 0.7), 8, "none"),
        frame_case("outward_rounding_negative", arr(-0.3, -0.2, -0.1), 4, "none"),
        frame_case("outward_rounding_ties", arr(-(1 + 2**-11), 0.0, 1 + 2**-11), 8, "none"),
        frame_case("narrow_range_far_from_zero", arr(1000.1, 1000.5, 1000.9), 8, "none"),
        frame_case("float16_extremes", arr(-65504.0, 0.0, 65504.0), 16, "none"),
        frame_case("input_4d", features((1, 2, 2, 2), 320), 4, "none"),
        frame_case("channels_2_byte_varint", features((200, 1, 1), 321), 1, "none"),
        frame_case("payload_2_byte_varint", features((16, 8, 8), 322), 8, "none"),
    ]
    for name, (bits, words) in ORDER_SENSITIVE.items():
        _check_order_sensitive(name, from_words(words), bits)
        cases.append(frame_case(name, from_words(words), bits, "none"))
    # decode only: version 1, and valid streams this encoder does not write
    base = encode_features(features((2, 4, 4), 330), 2, entropy="none")
    packed = payload_of(base)
    v1 = with_header(base, version=1)
    zero = with_header(base, lo=0.0)
    two_blocks = stored_deflate(packed[:3], final=False) + stored_deflate(packed[3:])
    cases += [
        decode_case("v1_raw", v1),
        decode_case("v1_deflate_stored", with_header(v1, coder="zlib", payload=stored_deflate(packed))),
        decode_case("v1_lzma2_uncompressed", with_header(v1, coder="lzma", payload=stored_lzma2(packed))),
        decode_case("v2_deflate_stored", with_header(base, coder="zlib", payload=stored_deflate(packed))),
        decode_case("v2_deflate_two_blocks", with_header(base, coder="zlib", payload=two_blocks)),
        decode_case("v2_lzma2_uncompressed", with_header(base, coder="lzma", payload=stored_lzma2(packed))),
        decode_case("lo_positive_zero", zero),
        decode_case("lo_negative_zero", with_header(zero, lo=-0.0)),
        decode_case("range_wider_than_needed", with_header(base, lo=-4.0, hi=12.0)),
    ]
    return document(
        "Whole frames (FORMAT.md sections 2-5). encode=true: quantize input_f32 (shape input_shape) at bits with "
        "coder (and tables, from code_tables.json); an encoder must produce frame_hex exactly when encoder_exact "
        "is true; when it is false (DEFLATE, LZMA2) any valid stream of packed_hex is conforming. Every frame: a "
        "decoder given limits and tables must return decoded_f32 exactly (bit patterns, C order [C, H, W]). q, "
        "packed_hex and lo/hi are the intermediate results.",
        frames=_unique(cases),
    )


def _unique(cases: list[Json]) -> list[Json]:
    names = [c["name"] for c in cases]
    _require(len(names) == len(set(names)), f"duplicate vector names: {names}")
    return cases


# ---------------------------------------------------------------------------------------------- refusals


def check_refused(name: str, decode: Callable[[], object], error: type[SlimsplitError], field: str) -> None:
    """``decode()`` raises exactly ``error`` naming ``field`` (VectorError otherwise, or when it decodes)."""
    try:
        decode()
    except SlimsplitError as exc:
        got = exc.context.get("field")
        _require(type(exc) is error and got == field, f"{name}: raised {type(exc).__name__}({got}): {exc}")
    else:
        raise VectorError(f"{name}: it decodes")


def refusal(
    name: str,
    frame: bytes,
    error: type[SlimsplitError],
    field: str,
    tables: NamedTables | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Json:
    """A frame the decoder must refuse with ``error`` (checked, and the field the codec names)."""
    check_refused(name, lambda: decode_features(frame, limits, tables=tables.tables if tables else None), error, field)
    return {
        "name": name,
        "description": describe(name),
        "frame_hex": frame.hex(),
        "tables": tables.name if tables is not None else None,
        "limits": limits_json(limits),
        **error_json(error, field),
    }


def encode_refusal(
    name: str, shape: tuple[int, ...], bits: int, field: str, words: Sequence[int] = (), fill: int | None = None
) -> Json:
    """An input the encoder must refuse (raw coder); ``fill``: every element has that bit pattern."""
    if fill is None:
        x = from_words(words, shape)
        source: Json = {"input_f32": f32_words(x)}
    else:
        x = np.full(shape, fill, np.uint32).view(np.float32)
        source = {"input_fill_f32": f"{fill:08x}"}
    try:
        encode_features(x, bits, entropy="none")
    except CodecError as exc:
        got = exc.context.get("field")
        _require(type(exc) is CodecError and got == field, f"{name}: raised {type(exc).__name__}({got})")
    else:
        raise VectorError(f"{name}: the input encodes")
    return {
        "name": name,
        "description": describe(name),
        "input_shape": list(shape),
        **source,
        "bits": bits,
        "coder": "none",
        **error_json(CodecError, field),
    }


def lsb_first_values(q: npt.NDArray[Any], bits: int) -> bytes:
    """A wrong packer: value i at bit offset i*bits counted from the least significant bit, value bits LSB first."""
    acc = 0
    for i, v in enumerate(np.asarray(q).reshape(-1).tolist()):
        acc |= int(v) << (i * bits)
    return acc.to_bytes((q.size * bits + 7) // 8, "little")


def reverse_bits_per_byte(data: bytes) -> bytes:
    """Another wrong packer: the right bits with each byte's bit order reversed (``packbits(bitorder="little")``)."""
    return bytes(int(format(b, "08b")[::-1], 2) for b in data)


def refusal_vectors(toy: NamedTables, shipped: Mapping[str, NamedTables]) -> Json:
    base = encode_features(features((2, 4, 4), 400), 2, entropy="none")  # 10-byte header + 8 bytes
    packed = payload_of(base)
    odd_x = features((1, 3, 5), 401, offset=0.5)
    odd = encode_features(odd_x, 3, entropy="none")  # 45 bits of values: 3 padding bits
    mode = DecodeLimits.for_shape((2, 4, 4), (2,))
    v1 = with_header(base, version=1)
    zlib_frame = partial(with_header, base, coder="zlib")
    lzma_frame = partial(with_header, base, coder="lzma")
    three_channels = encode_features(features((3, 4, 4), 402), 2, entropy="none")
    four_bits = encode_features(features((2, 4, 4), 403), 4, entropy="none")
    c, u = CodecError, UnsupportedVersion
    cases = [
        refusal("empty", b"", c, "header"),
        refusal("one_byte", base[:1], c, "header"),
        refusal("bad_magic", b"\x52" + base[1:], c, "magic"),
        refusal("not_a_frame_json", b'{"features": []}', c, "magic"),
        refusal("version_0", b"\xa0" + base[1:], c, "version"),
        refusal("version_3", b"\xa3" + base[1:], u, "version"),
        refusal("version_15_short", b"\xaf\x00", u, "version"),
        refusal("truncated_in_varint", b"\xa2\x01\x82", c, "header"),
        refusal("truncated_in_lo_hi", base[:7], c, "header"),
        refusal("truncated_before_payload_len", base[:9], c, "header"),
        refusal("v1_truncated_header", v1[:13], c, "header"),
        refusal("unknown_coder_4", base[:1] + b"\x41" + base[2:], c, "coder"),
        refusal("unknown_coder_15", base[:1] + b"\xf1" + base[2:], c, "coder"),
        refusal("varint_not_minimal", base[:2] + b"\x82\x00" + base[3:], c, "channels"),
        refusal("varint_4_bytes", base[:3] + b"\x84\x80\x80\x00" + base[4:], c, "height"),
        refusal("varint_over_65535", base[:4] + b"\x80\x80\x04" + base[5:], c, "width"),
        refusal("channels_0", base[:2] + b"\x00" + base[3:], c, "channels"),
        refusal("height_0", base[:3] + b"\x00" + base[4:], c, "height"),
        refusal("shape_over_mode_limit", three_channels, c, "channels", limits=mode),
        refusal("elements_over_limit", base, c, "shape", limits=replace(DEFAULT_LIMITS, max_elements=16)),
        refusal("bits_not_allowed", four_bits, c, "bits", limits=mode),
        refusal("payload_over_limit", base, c, "payload_len", limits=replace(DEFAULT_LIMITS, max_payload_bytes=4)),
        refusal("payload_truncated", base[:-1], c, "payload_len"),
        refusal("payload_trailing_byte", base + b"\x00", c, "payload_len"),
        refusal("raw_payload_wrong_size", with_header(base, payload=packed[:7]), c, "payload_len"),
        refusal("lo_infinite", with_header(base, lo=-math.inf), c, "lo/hi"),
        refusal("hi_nan", base[:7] + b"\x7e\x00" + base[9:], c, "lo/hi"),
        refusal("lo_above_hi", with_header(base, lo=2.0, hi=1.0), c, "lo/hi"),
        refusal("v1_huffman", v1[:1] + bytes((0x30 | v1[1] & 0x0F,)) + v1[2:], c, "coder"),
        refusal("padding_not_zero", odd[:-1] + bytes((odd[-1] | 0x07,)), c, "payload"),
        refusal("constant_with_nonzero_q", with_header(base, lo=1.0, hi=1.0, payload=b"\x40" + bytes(7)), c, "payload"),
        refusal("deflate_corrupt", zlib_frame(payload=b"\x07\x00"), c, "payload"),
        refusal("deflate_truncated", zlib_frame(payload=stored_deflate(packed)[:-2]), c, "payload"),
        refusal("deflate_not_final", zlib_frame(payload=stored_deflate(packed, final=False)), c, "payload"),
        refusal("deflate_trailing_bytes", zlib_frame(payload=stored_deflate(packed) + b"\x00"), c, "payload_len"),
        refusal("deflate_too_short", zlib_frame(payload=stored_deflate(packed[:7])), c, "payload"),
        refusal("deflate_too_long", zlib_frame(payload=stored_deflate(packed + b"\x00")), c, "payload"),
        refusal("lzma2_corrupt", lzma_frame(payload=b"\x03" + packed), c, "payload"),
        refusal("lzma2_too_short", lzma_frame(payload=stored_lzma2(packed[:7])), c, "payload"),
        refusal("lzma2_no_end_marker", lzma_frame(payload=stored_lzma2(packed)[:-1]), c, "payload"),
    ]
    hf = encode_features(features((2, 2, 8), 404, offset=-1.8), 1, entropy="huffman", tables=toy.tables)
    hp = payload_of(hf)
    cases += [
        refusal("huffman_without_tables", hf, c, "coder"),
        refusal("huffman_stream_ends_early", with_header(hf, payload=hp[:-1]), c, "payload", toy),
        refusal("huffman_empty_payload", with_header(hf, payload=b""), c, "payload", toy),
        refusal("huffman_trailing_byte", with_header(hf, payload=hp + b"\x00"), c, "payload_len", toy),
        refusal("huffman_padding_not_zero", with_header(hf, payload=hp[:-1] + bytes((hp[-1] | 1,))), c, "payload", toy),
    ]
    # frames packed in the wrong bit order that the format does catch (padding bits, huffman stream length)
    lsb = with_header(odd, payload=lsb_first_values(quantize(odd_x, 3)[0], 3))
    w2b1 = shipped["w2b1"]
    caught = _find_reversed_huffman(w2b1, caught=True)
    cases += [
        refusal("lsb_first_caught_by_padding", lsb, c, "payload"),
        refusal("huffman_bit_reversed_caught", caught, c, _field_of(caught, w2b1), w2b1),
    ]
    one = [0, 0x3F800000]
    encode = [
        encode_refusal("nan", (1, 1, 3), 4, "values", [0x3F800000, 0x7FC00000, 0]),
        encode_refusal("infinity", (1, 1, 2), 4, "values", [0x7F800000, 0]),
        encode_refusal("above_float16_max", (1, 1, 2), 8, "hi", [0, 0x477FE001]),
        encode_refusal("below_float16_min", (1, 1, 2), 8, "lo", [0xC77FE001, 0]),
        encode_refusal("above_float16_max_rounds_down", (1, 1, 2), 8, "hi", [0, 0x477FEF00]),
        encode_refusal("bits_0", (1, 1, 2), 0, "bits", one),
        encode_refusal("bits_17", (1, 1, 2), 17, "bits", one),
        encode_refusal("empty_dimension", (0, 2, 2), 4, "shape"),
        encode_refusal("rank_2", (2, 2), 4, "shape", [0] * 4),
        encode_refusal("batch_of_2", (2, 1, 1, 2), 4, "shape", [0] * 4),
        encode_refusal("payload_over_65535", (2, 1, 32768), 16, "payload_len", fill=0x3F800000),
    ]
    return document(
        "Frames a decoder must refuse, and inputs an encoder must refuse (FORMAT.md sections 2.4, 3.3, 3.4, 4.1 "
        "and 5). A decoder given limits (and tables, when named) must refuse frame_hex with error (grpc_status: "
        "INVALID_ARGUMENT for CodecError, FAILED_PRECONDITION for UnsupportedVersion). field is the Python codec's "
        "name for the offending field: informative, not part of the format. An encoder must refuse each encode "
        "input (input_fill_f32: every element has that bit pattern).",
        frames=_unique(cases),
        encode=_unique(encode),
    )


def _field_of(frame: bytes, tables: NamedTables) -> str:
    try:
        decode_features(frame, tables=tables.tables)
    except CodecError as exc:
        return str(exc.context.get("field"))
    raise VectorError("the frame decodes")


def _find_reversed_huffman(tables: NamedTables, caught: bool) -> bytes:
    """The first frame (by seed) whose bit-reversed huffman payload is refused (``caught``) or accepted."""
    bits = int(tables.name.split("b")[1])
    for seed in range(500, 1500):
        x = features((tables.tables.contexts, 8, 8), seed)
        frame = encode_features(x, bits, entropy="huffman", tables=tables.tables)
        h = parse_header(frame)
        bad = frame[: h.header_len] + reverse_bits_per_byte(frame[h.header_len :])
        try:
            decode_features(bad, tables=tables.tables)
        except CodecError:
            if caught:
                return bad
        else:
            if not caught:
                return bad
    raise VectorError("no such frame in 1000 seeds")


# ---------------------------------------------------------------------------------------------- misencoded


def misencoded_case(name: str, intended: bytes, wrong: bytes, tables: NamedTables | None = None) -> Json:
    """A wrongly packed frame that decodes anyway (to other values than ``intended``)."""
    t = tables.tables if tables is not None else None
    right = decode_features(intended, tables=t).array
    got = decode_features(wrong, tables=t).array  # accepted: that is the point
    _require(f32_words(right) != f32_words(got), f"{name}: decodes to the intended values")
    return {
        "name": name,
        "description": describe(name),
        "tables": tables.name if tables is not None else None,
        "limits": limits_json(DEFAULT_LIMITS),
        "intended_frame_hex": intended.hex(),
        "intended_decoded_f32": f32_words(right),
        "frame_hex": wrong.hex(),
        "decoded_f32": f32_words(got),
    }


def misencoded_vectors(shipped: Mapping[str, NamedTables]) -> Json:
    cases = []
    for bits, shape in ((1, (2, 8, 8)), (2, (2, 8, 8)), (4, (4, 8, 8))):
        x = features(shape, 600 + bits)
        frame = encode_features(x, bits, entropy="none")
        wrong = with_header(frame, payload=lsb_first_values(quantize(x, bits)[0], bits))
        cases.append(misencoded_case(f"lsb_first_bits_{bits}", frame, wrong))
    frame = encode_features(features((2, 8, 8), 608), 8, entropy="none")
    cases.append(
        misencoded_case(
            "bit_reversed_bytes_bits_8", frame, with_header(frame, payload=reverse_bits_per_byte(payload_of(frame)))
        )
    )
    accepted = _find_reversed_huffman(shipped["w2b1"], caught=False)
    intended = with_header(accepted, payload=reverse_bits_per_byte(payload_of(accepted)))
    cases.append(misencoded_case("huffman_bit_reversed_accepted", intended, accepted, shipped["w2b1"]))
    return document(
        "Wrongly packed frames that a conforming decoder ACCEPTS (FORMAT.md section 4.2): the format cannot tell "
        "them from valid frames. intended_frame_hex is the frame the sender meant; frame_hex is what a packer "
        "with the wrong bit order sent instead, and decoded_f32 is what every conforming decoder returns for it. "
        "An encoder whose output matches frame_hex instead of intended_frame_hex has this bug.",
        frames=_unique(cases),
    )


# ---------------------------------------------------------------------------------------------- code tables


def _npz_members(path: Path) -> list[Json]:
    out = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                _require(version == (1, 0), f"{info.filename}: .npy version {version}")
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            out.append(
                {
                    "name": info.filename,
                    "compression": "stored" if info.compress_type == 0 else "deflated",
                    "npy_version": "1.0",
                    "descr": dtype.str,
                    "fortran_order": bool(fortran),
                    "shape": list(shape),
                }
            )
    return out


def _table_json(nt: NamedTables) -> Json:
    t = nt.tables
    codes = nt.codes()
    for k, row in enumerate(codes):  # the codec's codes are the reference's: encode each byte alone
        for sym in (0, 1, 127, 255):
            coded = t.encode(bytes((sym,)), np.asarray([k], np.intp))
            bitstring = "".join(format(b, "08b") for b in coded)[: len(row[sym])]
            _require(bitstring == row[sym], f"{nt.name}: canonical code of {sym} in context {k}")
    fp = hashlib.sha256(bytes([t.max_len]) + t.lengths.tobytes()).hexdigest()[:16]
    _require(fp == t.fingerprint(), f"{nt.name}: table fingerprint")
    return {
        "name": nt.name,
        "contexts": t.contexts,
        "max_len": t.max_len,
        "lengths_hex": [bytes(row).hex() for row in t.lengths],
        "fingerprint": fp,
    }


def code_table_vectors(toy: NamedTables, shipped: Mapping[str, NamedTables]) -> Json:
    bundle = Bundle.open(default_bundle_path())
    rel = bundle.manifest.codec_tables
    assert rel is not None
    path = bundle.path(rel)
    names = sorted(shipped)
    fp_input = b"".join(n.encode() + b"\0" + shipped[n].tables.fingerprint().encode() for n in names)
    fp = hashlib.sha256(fp_input).hexdigest()[:16]
    _require(fp == tables_fingerprint({n: t.tables for n, t in shipped.items()}), "bundle fingerprint")
    _require(fp == bundle.manifest.codec_tables_fingerprint, "the manifest's fingerprint")
    toy_input = b"toy\0" + toy.tables.fingerprint().encode()
    toy_fp = hashlib.sha256(toy_input).hexdigest()[:16]
    _require(toy_fp == tables_fingerprint({"toy": toy.tables}), "toy bundle fingerprint")
    shipped_json = {
        "path": path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name,
        "manifest_codec_tables_fingerprint": bundle.manifest.codec_tables_fingerprint,
        "npz_members": _npz_members(path),
        "modes_without_table": [m.name for m in bundle.manifest.modes if m.name not in shipped],
        "tables": [_table_json(shipped[n]) for n in names],
        "fingerprint_order": names,
        "fingerprint_input_hex": fp_input.hex(),
        "fingerprint": fp,
    }
    return document(
        "Learned huffman code tables (FORMAT.md section 6). lengths_hex: one string of 256 code lengths (one byte "
        "each, byte value 0 first) per context. canonical_codes: the code of every byte value as a bit string, "
        "first bit first. fingerprint: per table sha256(max_len byte + lengths, row-major) -> first 16 lowercase "
        "hex digits; per bundle sha256(for each mode in sorted order: name UTF-8, 0x00, the table's fingerprint "
        "as ASCII) -> first 16 hex digits.",
        toy={
            **_table_json(toy),
            "canonical_codes": toy.codes(),
            "bundle_fingerprint_input_hex": toy_input.hex(),
            "bundle_fingerprint": toy_fp,
        },
        shipped=shipped_json,
        shipped_canonical_codes={"w2b2": shipped["w2b2"].codes()},
    )


# ---------------------------------------------------------------------------------------------- preprocessing


def preprocess_reference(pixels: npt.NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]) -> F32:
    """FORMAT.md 8: uint8 HWC RGB -> float32 CHW, in float32: (p * f32(1/255) - mean) * (1 / std)."""
    h, w, c = pixels.shape
    scale = np.float32(1.0 / 255.0)
    out = np.zeros((c, h, w), np.float32)
    for ch in range(c):
        m = np.float32(mean[ch])
        inv = np.float32(1.0) / np.float32(std[ch])
        for y in range(h):
            for x in range(w):
                out[ch, y, x] = (np.float32(pixels[y, x, ch]) * scale - m) * inv
    return out


def preprocess_vectors() -> Json:
    spec = Bundle.open(default_bundle_path()).manifest.input
    mean, std = list(spec.mean), list(spec.std)
    ramp = np.stack([np.arange(256, dtype=np.uint8)] * spec.channels, axis=-1).reshape(1, 256, spec.channels)
    table = preprocess_reference(ramp, mean, std).reshape(spec.channels, 256)
    example = np.asarray([[[0, 128, 255], [1, 2, 3]], [[254, 127, 64], [10, 200, 77]]], np.uint8)
    return document(
        "Image preprocessing of the shipped bundle (FORMAT.md section 8): uint8 RGB pixels, height x width x "
        "channel order, to the encoder's float32 [C, H, W] input. pixel_f32[c][p] is the value of pixel value p "
        "in channel c. The example is a 2 x 2 image (image_hwc_hex: R, G, B of (0,0), (0,1), (1,0), (1,1)).",
        input={
            "channels": spec.channels,
            "height": spec.height,
            "width": spec.width,
            "color": spec.color,
            "layout": spec.layout,
            "mean": mean,
            "std": std,
        },
        scale_f32=f32_words(np.float32(1.0 / 255.0)),
        mean_f32=f32_words(np.asarray(mean, np.float32)),
        inv_std_f32=f32_words(np.float32(1.0) / np.asarray(std, np.float32)),
        pixel_f32=[f32_words(row) for row in table],
        example={
            "height": 2,
            "width": 2,
            "image_hwc_hex": example.tobytes().hex(),
            "output_chw_f32": f32_words(preprocess_reference(example, mean, std)),
        },
    )


# ---------------------------------------------------------------------------------------------- plane units
# FORMAT.md section 10, one value at a time.

PLANE_MAGIC_BYTE = 0xB1


def ref_plane_unit(
    plane: int, bits: int, coder: int, frame_id: int, shape: Sequence[int], lo: float, hi: float, payload: bytes
) -> bytes:
    """The 20-byte big-endian header, then the payload."""
    c, h, w = shape
    head = bytes((PLANE_MAGIC_BYTE, plane, bits, coder)) + frame_id.to_bytes(4, "big")
    head += b"".join(v.to_bytes(2, "big") for v in (c, h, w))
    head += ref_f16_bits(lo).to_bytes(2, "big") + ref_f16_bits(hi).to_bytes(2, "big") + len(payload).to_bytes(2, "big")
    return head + payload


def ref_plane_bits(q: Sequence[int], bits: int, plane: int) -> bytes:
    """Plane ``plane`` (0 = most significant) of ``q``, packed at 1 bit (FORMAT.md section 4)."""
    return ref_pack([(v >> (bits - 1 - plane)) & 1 for v in q], 1)


def ref_prefix_decode(units: Sequence[bytes]) -> list[np.float32]:
    """Decode planes 0..k-1 (any order): the code with the midpoint of the missing bits, dequantized."""
    fields = [(u[1], u[2], u[3], u[4:8], u[8:14], u[14:18]) for u in units]
    _require(all(u[0] == PLANE_MAGIC_BYTE for u in units), "plane magic")
    _require(len({f[1:] for f in fields} - {(f[1], f[2], f[3], f[4], f[5]) for f in fields}) == 0, "fields")
    _require(len({(f[1], f[3], f[4], f[5]) for f in fields}) == 1, "units of one frame")
    bits = units[0][2]
    c, h, w = (int.from_bytes(units[0][i : i + 2], "big") for i in (8, 10, 12))
    lo = ref_f16_value(int.from_bytes(units[0][14:16], "big"))
    hi = ref_f16_value(int.from_bytes(units[0][16:18], "big"))
    n = c * h * w
    planes = sorted(u[1] for u in units)
    k = len(units)
    _require(planes == list(range(k)), "a gap-free prefix")
    q = [0] * n
    for u in units:
        payload = u[20:]
        _require(int.from_bytes(u[18:20], "big") == len(payload), "payload_len")
        packed = payload if u[3] == 0 else inflate(payload)
        for i, b in enumerate(ref_unpack(packed, 1, n)):
            q[i] |= b << (bits - 1 - u[1])
    if k < bits:
        q = [min(v | (1 << (bits - k - 1)), (1 << bits) - 1) for v in q]
    if lo == hi:
        q = [0] * n
    return ref_dequantize(q, lo, hi, bits)


def plane_case(name: str, x: F32, bits: int, frame_id: int) -> Json:
    """An encode + decode vector: ``x`` as ``bits`` plane units, and what every prefix of them decodes to."""
    units = encode_planes(x, bits, frame_id=frame_id)
    values = [float(v) for v in x.reshape(-1)]
    q, lo, hi = ref_quantize(values, bits)
    shape = x.shape[-3:]
    rows = []
    for p, unit in enumerate(units):
        hd = parse_plane_header(unit)
        packed = ref_plane_bits(q, bits, p)
        payload = unit[PLANE_HEADER_SIZE:]
        coder = Coder[hd.coder.upper()]
        _require((payload if coder is Coder.NONE else inflate(payload)) == packed, f"{name}: plane {p} bits")
        _require(unit == ref_plane_unit(p, bits, int(coder), frame_id, shape, lo, hi, payload), f"{name}: unit {p}")
        if coder is Coder.ZLIB:
            _require(len(payload) < len(packed), f"{name}: DEFLATE chosen although not smaller")
        rows.append({"plane": p, "coder": hd.coder, "packed_hex": packed.hex(), "unit_hex": unit.hex()})
    prefixes = []
    for k in range(1, bits + 1):
        got = decode_planes(units[:k])
        want = np.asarray(ref_prefix_decode(units[:k]), np.float32)
        _require(f32_words(got) == f32_words(want), f"{name}: prefix of {k} planes")
        _require(f32_words(decode_planes(units[:k][::-1])) == f32_words(want), f"{name}: order of the units")
        prefixes.append({"planes": k, "decoded_f32": f32_words(want)})
    whole = decode_features(encode_features(x, bits, entropy="none")).array
    _require(f32_words(whole) == prefixes[-1]["decoded_f32"], f"{name}: all planes = the frame codec's decode")
    return {
        "name": name,
        "description": describe(name),
        "encode": True,
        "encoder_exact": all(r["coder"] == "none" for r in rows),
        "frame_id": frame_id,
        "bits": bits,
        "input_shape": list(x.shape),
        "input_f32": f32_words(x),
        "lo_f16": f16_hex(lo),
        "hi_f16": f16_hex(hi),
        "q": " ".join(str(v) for v in q),
        "units": rows,
        "prefixes": prefixes,
    }


def plane_decode_case(name: str, units: Sequence[bytes]) -> Json:
    """A decode-only vector: units this encoder does not write (a stored DEFLATE block)."""
    prefixes = []
    for k in range(1, len(units) + 1):
        got = decode_planes(units[:k])
        want = np.asarray(ref_prefix_decode(units[:k]), np.float32)
        _require(f32_words(got) == f32_words(want), f"{name}: prefix of {k} planes")
        prefixes.append({"planes": k, "decoded_f32": f32_words(want)})
    return {
        "name": name,
        "description": describe(name),
        "encode": False,
        "encoder_exact": False,
        "units": [{"plane": u[1], "unit_hex": u.hex()} for u in units],
        "prefixes": prefixes,
    }


def plane_refusal(name: str, units: Sequence[bytes], field: str, limits: DecodeLimits = DEFAULT_LIMITS) -> Json:
    """Plane units the decoder must refuse (``CodecError`` naming ``field``)."""
    check_refused(name, lambda: decode_planes(list(units), limits), CodecError, field)
    return {
        "name": name,
        "description": describe(name),
        "units_hex": [u.hex() for u in units],
        "limits": limits_json(limits),
        **error_json(CodecError, field),
    }


def with_plane_header(unit: bytes, **changes: int) -> bytes:
    """``unit`` with header bytes replaced: ``plane``, ``bits``, ``coder``, ``magic`` (one byte each), ``frame_id``
    (4), ``channels`` (2), ``lo``/``hi`` (float16 bit patterns), ``payload_len`` (2); the rest unchanged."""
    at = {
        "magic": (0, 1),
        "plane": (1, 1),
        "bits": (2, 1),
        "coder": (3, 1),
        "frame_id": (4, 4),
        "channels": (8, 2),
        "lo": (14, 2),
        "hi": (16, 2),
        "payload_len": (18, 2),
    }
    out = bytearray(unit)
    for key, value in changes.items():
        start, size = at[key]
        out[start : start + size] = value.to_bytes(size, "big")
    return bytes(out)


def plane_vectors() -> Json:
    small = from_words(
        [0x00000000, 0x3F800000, 0x3E800000, 0x3F400000, 0x3F000000, 0x3DCCCCCD, 0x3F666666, 0x3E99999A], (1, 2, 4)
    )  # 0, 1, 0.25, 0.75, 0.5, 0.1, 0.9, 0.3
    shipped = features((4, 7, 7), 41)
    wide = features((2, 3, 5), 43, offset=0.5)
    units = [
        plane_case("planes_3_bits_small", small, 3, 7),
        plane_case("planes_1_bit", small, 1, 1),
        plane_case("planes_8_bits_bottleneck", shipped, 8, 123456),
        plane_case("planes_16_bits", wide, 16, 0xFFFFFFFF),
        plane_case("planes_constant", np.full((1, 1, 3), 1.5, np.float32), 4, 2),
    ]
    _, lo, hi = ref_quantize([float(v) for v in small.reshape(-1)], 3)
    q, _, _ = ref_quantize([float(v) for v in small.reshape(-1)], 3)
    stored = [ref_plane_unit(p, 3, 1, 9, (1, 2, 4), lo, hi, stored_deflate(ref_plane_bits(q, 3, p))) for p in range(3)]
    units.append(plane_decode_case("planes_stored_deflate", stored))
    good = encode_planes(small, 3, frame_id=7)
    big = encode_planes(shipped, 8, frame_id=5)
    zero_plane = next(u for u in big if u[3] == 1)
    n = int(np.prod(small.shape))
    bomb = ref_plane_unit(
        0,
        3,
        1,
        7,
        (1, 2, 4),
        lo,
        hi,
        zlib.compressobj(9, zlib.DEFLATED, -15).compress(bytes(4096)) + zlib.compressobj(9, zlib.DEFLATED, -15).flush(),
    )
    refusals = [
        plane_refusal("plane_none", [], "plane"),
        plane_refusal("plane_short_header", [good[0][:19]], "header"),
        plane_refusal("plane_bad_magic", [with_plane_header(good[0], magic=0xA2)], "magic"),
        plane_refusal("plane_index_not_below_bits", [with_plane_header(good[0], plane=3)], "plane"),
        plane_refusal("plane_bits_0", [with_plane_header(good[0], bits=0)], "bits"),
        plane_refusal("plane_bits_17", [with_plane_header(good[0], bits=17)], "bits"),
        plane_refusal("plane_unknown_coder", [with_plane_header(good[0], coder=2)], "coder"),
        plane_refusal("plane_zero_channels", [with_plane_header(good[0], channels=0)], "channels"),
        plane_refusal("plane_nan_range", [with_plane_header(good[0], lo=0x7E00)], "lo/hi"),
        plane_refusal("plane_inverted_range", [with_plane_header(good[0], lo=0x3C00, hi=0x0000)], "lo/hi"),
        plane_refusal("plane_truncated", [good[0][:-1]], "payload_len"),
        plane_refusal("plane_trailing_byte", [good[0] + b"\x00"], "payload_len"),
        plane_refusal("plane_raw_wrong_length", [with_plane_header(good[0] + b"\x00", payload_len=2)], "payload"),
        plane_refusal("plane_deflate_bomb", [bomb], "payload"),
        plane_refusal(
            "plane_deflate_short", [ref_plane_unit(0, 3, 1, 7, (1, 2, 4), lo, hi, stored_deflate(b""))], "payload"
        ),
        plane_refusal("plane_gap", [good[0], good[2]], "plane"),
        plane_refusal("plane_duplicate", [good[0], good[0]], "plane"),
        plane_refusal("plane_not_from_plane_0", [good[1]], "plane"),
        plane_refusal("plane_mixed_frames", [good[0], with_plane_header(good[1], frame_id=8)], "frame_id"),
        plane_refusal(
            "plane_mixed_bits", [good[0], with_plane_header(encode_planes(small, 4, frame_id=7)[1])], "frame_id"
        ),
        plane_refusal(
            "plane_payload_over_limit",
            [zero_plane],
            "payload_len",
            replace(DEFAULT_LIMITS, max_payload_bytes=len(zero_plane) - PLANE_HEADER_SIZE - 1),
        ),
    ]
    _require(n == 8, "small input")
    return document(
        "Plane units (FORMAT.md section 10): a frame's code as bit planes, most significant first. In `units`, "
        "encoding input_f32 at `bits` with `frame_id` gives every unit_hex exactly when `encoder_exact` (else each "
        "unit's header fields and packed_hex, its plane's bits packed at 1 bit, DEFLATE-coded by any conforming "
        "encoder where `coder` is zlib); decoding the first `planes` units, in any order, gives decoded_f32 exactly. "
        "In `refusals`, decoding units_hex (in that order) is refused with CodecError naming `field`.",
        units=_unique(units),
        refusals=_unique(refusals),
    )


# ---------------------------------------------------------------------------------------------- files


def generate() -> dict[str, Json]:
    """Every vector file by name (as JSON objects)."""
    toy = toy_tables()
    shipped = shipped_tables()
    return {
        "header.json": header_vectors(),
        "frames.json": frame_vectors(toy, shipped),
        "refusals.json": refusal_vectors(toy, shipped),
        "misencoded.json": misencoded_vectors(shipped),
        "code_tables.json": code_table_vectors(toy, shipped),
        "preprocess.json": preprocess_vectors(),
        "planes.json": plane_vectors(),
    }


def text_of(doc: Json) -> str:
    return render(doc) + "\n"


def _decodes_alike(committed: Json, fresh: Json, tables: Callable[[str | None], HuffmanTables | None]) -> bool:
    """A committed encode vector whose DEFLATE/LZMA2 frame differs from a fresh one, but means the same."""
    if committed.get("encoder_exact", True) or not committed.get("encode"):
        return False
    try:
        frame = bytes.fromhex(committed["frame_hex"])
        limits = limits_from_json(committed["limits"])
        got = decode_features(frame, limits, tables=tables(committed.get("tables")))
        fresh_frame = bytes.fromhex(fresh["frame_hex"])
        want = parse_header(fresh_frame, limits)
        h = got.header
        packed = _packed_of(committed["name"], frame[h.header_len :], h, None)  # a DEFLATE or LZMA2 stream here
    except (CodecError, VectorError, KeyError, ValueError):
        return False
    same_header = replace(h, payload_len=want.payload_len) == want
    return same_header and packed.hex() == fresh["packed_hex"] and f32_words(got.array) == fresh["decoded_f32"]


def _plane_unit_alike(committed: Json, fresh: Json) -> bool:
    """A committed DEFLATE plane unit that differs from a fresh one but carries the same header and bits."""
    try:
        old, new = bytes.fromhex(committed["unit_hex"]), bytes.fromhex(fresh["unit_hex"])
        same_header = old[:18] == new[:18] and committed["coder"] == fresh["coder"] == "zlib"
        return same_header and inflate(old[PLANE_HEADER_SIZE:]).hex() == fresh["packed_hex"]
    except (KeyError, ValueError, VectorError, zlib.error):
        return False


def _compare_planes(committed: Json, fresh: Json) -> bool:
    cases = {c.get("name"): c for c in committed.get("units", []) if isinstance(c, dict)}
    patched = []
    for case in fresh["units"]:
        old = cases.get(case["name"])
        if (
            old is not None
            and case["encode"]
            and not case["encoder_exact"]
            and len(old.get("units", [])) == len(case["units"])
        ):
            rows = [o if _plane_unit_alike(o, n) else n for o, n in zip(old["units"], case["units"], strict=True)]
            case = {**case, "units": rows}
        patched.append(case)
    return text_of(committed) == text_of({**fresh, "units": patched})


def compare(committed_text: str, fresh: Json) -> bool:
    """Whether a committed file says what a fresh generation says (DEFLATE/LZMA2 frames and plane units: by
    meaning)."""
    if committed_text == text_of(fresh):
        return True
    try:
        committed = json.loads(committed_text)
    except ValueError:
        return False
    if "units" in fresh and isinstance(committed, dict):
        return committed_text == text_of(committed) and _compare_planes(committed, fresh)
    if "frames" not in fresh or not isinstance(committed, dict) or not isinstance(committed.get("frames"), list):
        return False
    toy, shipped = toy_tables(), shipped_tables()

    def tables(name: str | None) -> HuffmanTables | None:
        if name is None:
            return None
        return toy.tables if name == toy.name else shipped[name].tables

    by_name = {c.get("name"): c for c in committed["frames"] if isinstance(c, dict)}
    patched = []
    for case in fresh["frames"]:
        old = by_name.get(case["name"])
        if old is not None and old.get("frame_hex") != case["frame_hex"] and _decodes_alike(old, case, tables):
            keep = ("payload_len", "header_hex", "frame_hex")
            case = {k: (old[k] if k in keep else v) for k, v in case.items()}
        patched.append(case)
    return committed_text == text_of({**fresh, "frames": patched})


def check(directory: Path) -> list[str]:
    """The vector files in ``directory`` that are missing or differ from a fresh generation."""
    problems = []
    for name, doc in generate().items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif not compare(path.read_text(encoding="utf-8"), doc):
            problems.append(f"{path}: differs from a fresh generation (run tools/make_vectors.py)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed vectors are not fresh")
    parser.add_argument("--dir", type=Path, default=VECTORS_DIR, help="the vectors folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for p in problems:
            print(p, file=sys.stderr)
        if not problems:
            print(f"{args.dir}: test vectors are fresh")
        return 1 if problems else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, doc in generate().items():
        (args.dir / name).write_text(text_of(doc), encoding="utf-8")
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
