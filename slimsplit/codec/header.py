"""The frame header, its decode limits and its validation.

Codec version 2 (written by this encoder; 10 bytes for the small frames of the narrow modes, at most 18)::

    size  field
     1    magic_version  high nibble: magic 0xA; low nibble: codec version (2)     -> byte 0 is 0xA2
     1    coder_bits     high nibble: entropy coder id (0 none, 1 zlib, 2 lzma, 3 huffman);
                         low nibble: bits - 1 (0..15 for 1..16 bits)
     1-3  channels  C    unsigned LEB128 varint (7 bits per byte, low group first, high bit = "more")
     1-3  height    H    varint
     1-3  width     W    varint
     2    lo             float16 (IEEE binary16, big-endian), the quantization minimum
     2    hi             float16, the quantization maximum
     1-3  payload_len    varint, bytes after the header (the frame is exactly header + payload_len bytes)

Every varint must be minimal (no redundant ``0x80`` groups) and at most 65535, so each value has exactly one
encoding. Codec version 1 (``struct`` format ``">BBHHHeeH"``: the same fields, C/H/W and payload_len as
big-endian uint16, always 14 bytes) is still decoded, so frames from older edges keep working.

The tensor is always 3-D ``[C, H, W]`` float32 on decode. The payload is the entropy-coded bit packing of the
quantized values (see ``bitpack``, ``entropy`` and ``huffman``). Byte 0 keeps its meaning in every future
version, so a decoder can always tell "not a slimsplit frame" (:class:`CodecError`) from "a newer codec
version" (:class:`UnsupportedVersion`).
Payloads are limited to 65535 bytes by the format (a float32 tensor of 16x8x8 at 8 bits packs to 1024 bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from slimsplit.codec.bitpack import packed_size
from slimsplit.codec.entropy import Coder, coder_from_id, coder_from_label
from slimsplit.codec.quantize import MAX_BITS, MIN_BITS
from slimsplit.errors import CodecError, ConfigError, UnsupportedVersion

V1_HEADER_FORMAT = ">BBHHHeeH"
V1_HEADER_SIZE = struct.calcsize(V1_HEADER_FORMAT)  # 14
MIN_HEADER_SIZE = 10  # version 2 with every varint one byte
MAX_HEADER_SIZE = 18  # version 2 with every varint three bytes
MAGIC = 0xA
CODEC_VERSION = 2  # what the encoder writes; versions 1 and 2 decode
MIN_CODEC_VERSION = 1
MAX_DIM = 0xFFFF
MAX_PAYLOAD = 0xFFFF

_V1 = struct.Struct(V1_HEADER_FORMAT)
_F16X2 = struct.Struct(">ee")


@dataclass(frozen=True)
class DecodeLimits:
    """Hard limits a frame header must satisfy before anything is allocated.

    The defaults accept any frame this codec can produce up to a 4 MiB decoded tensor; a server should tighten
    them to its model (see :meth:`for_shape`).
    """

    max_channels: int = 1024
    max_height: int = 512
    max_width: int = 512
    max_elements: int = 1 << 20
    max_payload_bytes: int = MAX_PAYLOAD
    allowed_bits: frozenset[int] = frozenset(range(MIN_BITS, MAX_BITS + 1))

    def __post_init__(self) -> None:
        for name in ("max_channels", "max_height", "max_width", "max_elements", "max_payload_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DecodeLimits.{name} must be a positive integer, got {value!r}", field=name)
        if not isinstance(self.allowed_bits, frozenset) or not self.allowed_bits:
            raise ConfigError(
                f"DecodeLimits.allowed_bits must be a non-empty frozenset, got {self.allowed_bits!r}",
                field="allowed_bits",
            )
        bad = sorted(b for b in self.allowed_bits if not (isinstance(b, int) and MIN_BITS <= b <= MAX_BITS))
        if bad:
            raise ConfigError(
                f"DecodeLimits.allowed_bits must lie in {MIN_BITS}..{MAX_BITS}, got {bad}",
                field="allowed_bits",
            )

    @classmethod
    def for_shape(cls, shape: tuple[int, int, int], bits: Iterable[int] | None = None) -> DecodeLimits:
        """Limits that admit at most ``shape`` (C, H, W) and, if given, only the ``bits`` depths."""
        c, h, w = shape
        return cls(
            max_channels=c,
            max_height=h,
            max_width=w,
            max_elements=c * h * w,
            max_payload_bytes=min(MAX_PAYLOAD, packed_size(c * h * w, MAX_BITS) + 64),
            allowed_bits=frozenset(range(MIN_BITS, MAX_BITS + 1)) if bits is None else frozenset(bits),
        )


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class FeatureHeader:
    """A parsed, validated frame header."""

    version: int
    coder: str  # "none" | "zlib" | "lzma" | "huffman"
    bits: int
    shape: tuple[int, int, int]
    lo: float
    hi: float
    payload_len: int

    @property
    def header_len(self) -> int:
        """Bytes of this header on the wire (14 for version 1; 10-18 for version 2)."""
        return V1_HEADER_SIZE if self.version == 1 else header_size(self.shape, self.payload_len)

    @property
    def total_len(self) -> int:
        """Header plus payload bytes: the exact length of the frame."""
        return self.header_len + self.payload_len

    @property
    def numel(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def packed_len(self) -> int:
        """Bytes of the bit-packed values before entropy coding."""
        return packed_size(self.numel, self.bits)

    def to_bytes(self) -> bytes:
        """The header bytes in this header's version; :class:`CodecError` when a field does not fit the layout."""
        c, h, w = self.shape
        coder = coder_from_label(self.coder)
        if not (MIN_CODEC_VERSION <= self.version <= CODEC_VERSION and MIN_BITS <= self.bits <= MAX_BITS):
            raise CodecError(f"version={self.version}, bits={self.bits} do not fit", field="header")
        if self.version == 1 and coder.value > 2:
            raise CodecError(f"codec version 1 has no {coder.label} coder", field="coder")
        first = bytes(((MAGIC << 4) | self.version, (coder.value << 4) | (self.bits - 1)))
        try:
            if self.version == 1:
                return _V1.pack(first[0], first[1], c, h, w, self.lo, self.hi, self.payload_len)
            for name, value in (("channels", c), ("height", h), ("width", w), ("payload_len", self.payload_len)):
                if not 0 <= value <= MAX_DIM:
                    raise CodecError(f"{name}={value} does not fit the layout (0..{MAX_DIM})", field=name)
            return (
                first + _varint(c) + _varint(h) + _varint(w) + _F16X2.pack(self.lo, self.hi) + _varint(self.payload_len)
            )
        except (struct.error, OverflowError) as exc:
            raise CodecError(f"header {self} does not fit the layout: {exc}", field="header") from None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _varint_len(value: int) -> int:
    return 1 if value < 0x80 else 2 if value < 0x4000 else 3


def header_size(shape: tuple[int, int, int], payload_len: int) -> int:
    """Bytes of the header (this codec version) of a frame of ``shape`` with ``payload_len`` payload bytes."""
    return 6 + sum(_varint_len(v) for v in (*shape, payload_len))


def _read_varint(data: bytes, pos: int, name: str) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it; at most 3 bytes, minimal, <= 65535."""
    value, shift = 0, 0
    for i in range(3):
        if pos + i >= len(data):
            raise CodecError(
                f"frame is {len(data)} bytes: the header ends inside the {name} field",
                field="header",
                actual=len(data),
            )
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if i > 0 and byte == 0:
                raise CodecError(f"non-minimal varint in the {name} field", field=name)
            if value > MAX_DIM:
                raise CodecError(f"{name}={value} exceeds the format's {MAX_DIM}", field=name, value=value)
            return value, pos + i + 1
    raise CodecError(f"the {name} varint is longer than 3 bytes", field=name)


def _parse_fields(data: bytes) -> tuple[int, int, int, int, int, float, float, int, int]:
    """Raw fields of a version-1 or -2 header (magic and version checked, nothing else): ..., header length."""
    if len(data) < 2:
        raise CodecError(
            f"frame is {len(data)} bytes, shorter than any header ({MIN_HEADER_SIZE} bytes)",
            field="header",
            actual=len(data),
        )
    magic_version, coder_bits = data[0], data[1]
    magic, version = magic_version >> 4, magic_version & 0xF
    if magic != MAGIC:
        raise CodecError(
            f"bad magic in byte 0 (0x{magic_version:02X}), expected 0x{MAGIC:X}_: not a feature frame",
            field="magic",
            value=magic,
        )
    if version > CODEC_VERSION:
        raise UnsupportedVersion(
            f"feature codec version {version} is newer than this decoder's version {CODEC_VERSION}",
            field="version",
            value=version,
            supported=CODEC_VERSION,
        )
    if version < MIN_CODEC_VERSION:
        raise CodecError(f"invalid feature codec version {version}", field="version", value=version)
    if version == 1:
        if len(data) < V1_HEADER_SIZE:
            raise CodecError(
                f"frame is {len(data)} bytes, shorter than the {V1_HEADER_SIZE}-byte version-1 header",
                field="header",
                actual=len(data),
            )
        _, _, c, h, w, lo, hi, payload_len = _V1.unpack_from(data)
        return version, coder_bits, c, h, w, lo, hi, payload_len, V1_HEADER_SIZE
    c, pos = _read_varint(data, 2, "channels")
    h, pos = _read_varint(data, pos, "height")
    w, pos = _read_varint(data, pos, "width")
    if len(data) < pos + _F16X2.size:
        raise CodecError(
            f"frame is {len(data)} bytes: the header ends inside the lo/hi fields", field="header", actual=len(data)
        )
    lo, hi = _F16X2.unpack_from(data, pos)
    payload_len, pos = _read_varint(data, pos + _F16X2.size, "payload_len")
    return version, coder_bits, c, h, w, lo, hi, payload_len, pos


def check_bits(bits: int, limits: DecodeLimits) -> None:
    """CodecError unless ``bits`` is one of ``limits.allowed_bits``."""
    if bits not in limits.allowed_bits:
        raise CodecError(f"bits={bits} not allowed (allowed: {sorted(limits.allowed_bits)})", field="bits", value=bits)


def check_shape(shape: tuple[int, int, int], limits: DecodeLimits) -> int:
    """The element count of ``shape`` (C, H, W), or CodecError naming the dimension or count beyond ``limits``."""
    c, h, w = shape
    for name, value, limit in (
        ("channels", c, limits.max_channels),
        ("height", h, limits.max_height),
        ("width", w, limits.max_width),
    ):
        if not 1 <= value <= limit:
            raise CodecError(
                f"shape {name}={value} outside 1..{limit} (shape {(c, h, w)})",
                field=name,
                value=value,
                limit=limit,
            )
    numel = c * h * w
    if numel > limits.max_elements:
        raise CodecError(
            f"shape {(c, h, w)} has {numel} elements, more than the limit {limits.max_elements}",
            field="shape",
            value=numel,
            limit=limits.max_elements,
        )
    return numel


def check_payload_limit(payload_len: int, limits: DecodeLimits) -> None:
    """CodecError when ``payload_len`` exceeds ``limits.max_payload_bytes``."""
    if payload_len > limits.max_payload_bytes:
        raise CodecError(
            f"payload_len={payload_len} exceeds the limit {limits.max_payload_bytes}",
            field="payload_len",
            value=payload_len,
            limit=limits.max_payload_bytes,
        )


def check_range(lo: float, hi: float) -> None:
    """CodecError unless the quantization range ``lo``..``hi`` is finite and not inverted."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CodecError(f"non-finite lo={lo} / hi={hi} in header", field="lo/hi", lo=lo, hi=hi)
    if lo > hi:
        raise CodecError(f"inverted range: lo={lo} > hi={hi}", field="lo/hi", lo=lo, hi=hi)


def parse_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> FeatureHeader:
    """Parse and validate the header of the frame ``data`` (the whole frame, so lengths can be checked).

    Checks, in order: length, magic, version, the encoding of every field (for version 2: each varint minimal, at
    most 3 bytes and 65535, and present), coder id, bits, shape, element count, payload length against the limits
    and against the bytes present, the packed length for uncoded payloads, and lo/hi. Raises
    :class:`CodecError` (or :class:`UnsupportedVersion`) naming the field and the values.
    """
    version, coder_bits, c, h, w, lo, hi, payload_len, header_len = _parse_fields(data)
    coder: Coder = coder_from_id(coder_bits >> 4)
    bits = (coder_bits & 0xF) + 1
    check_bits(bits, limits)
    numel = check_shape((c, h, w), limits)
    check_payload_limit(payload_len, limits)
    present = len(data) - header_len
    if payload_len != present:
        kind = "truncated frame" if present < payload_len else "trailing bytes after the payload"
        raise CodecError(
            f"{kind}: header says payload_len={payload_len} but {present} payload bytes are present",
            field="payload_len",
            value=payload_len,
            actual=present,
        )
    expected_packed = packed_size(numel, bits)
    if version == 1 and coder is Coder.HUFFMAN:
        raise CodecError("codec version 1 has no huffman coder", field="coder", value=coder.value)
    if coder is Coder.NONE and payload_len != expected_packed:
        raise CodecError(
            f"payload_len={payload_len} but shape {(c, h, w)} at {bits} bits packs to {expected_packed} B",
            field="payload_len",
            value=payload_len,
            expected=expected_packed,
        )
    check_range(lo, hi)
    return FeatureHeader(
        version=version,
        coder=coder.label,
        bits=bits,
        shape=(c, h, w),
        lo=lo,
        hi=hi,
        payload_len=payload_len,
    )
