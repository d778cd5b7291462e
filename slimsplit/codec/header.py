"""The 14-byte frame header, its decode limits and its validation.

Byte layout of codec version 1 (``struct`` format ``">BBHHHeeH"``, big-endian, no padding)::

    offset size field
     0     1    magic_version  high nibble: magic 0xA; low nibble: codec version (1)     -> byte 0 is 0xA1
     1     1    coder_bits     high nibble: entropy coder id (0 none, 1 zlib, 2 lzma);
                               low nibble: bits - 1 (0..15 for 1..16 bits)
     2     2    channels  C    uint16
     4     2    height    H    uint16
     6     2    width     W    uint16
     8     2    lo             float16 (IEEE binary16), the quantization minimum
    10     2    hi             float16, the quantization maximum
    12     2    payload_len    uint16, bytes after the header (the frame is exactly 14 + payload_len bytes)

The tensor is always 3-D ``[C, H, W]`` float32 on decode. The payload is the entropy-coded bit packing of the
quantized values (see ``bitpack`` and ``entropy``). Byte 0 keeps its meaning in every future version, so a
decoder can always tell "not a slimsplit frame" (:class:`CodecError`) from "a newer codec version"
(:class:`UnsupportedVersion`).
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

HEADER_FORMAT = ">BBHHHeeH"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 14
MAGIC = 0xA
CODEC_VERSION = 1
MAX_DIM = 0xFFFF
MAX_PAYLOAD = 0xFFFF

_STRUCT = struct.Struct(HEADER_FORMAT)


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
    coder: str  # "none" | "zlib" | "lzma"
    bits: int
    shape: tuple[int, int, int]
    lo: float
    hi: float
    payload_len: int

    @property
    def total_len(self) -> int:
        """Header plus payload bytes: the exact length of the frame."""
        return HEADER_SIZE + self.payload_len

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
        """The 14 header bytes; raises :class:`CodecError` when a field does not fit the layout."""
        c, h, w = self.shape
        coder = coder_from_label(self.coder)
        if not (1 <= self.version <= 0xF and MIN_BITS <= self.bits <= MAX_BITS):
            raise CodecError(f"version={self.version}, bits={self.bits} do not fit", field="header")
        try:
            return _STRUCT.pack(
                (MAGIC << 4) | self.version,
                (coder.value << 4) | (self.bits - 1),
                c,
                h,
                w,
                self.lo,
                self.hi,
                self.payload_len,
            )
        except (struct.error, OverflowError) as exc:
            raise CodecError(f"header {self} does not fit the layout: {exc}", field="header") from None


def parse_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> FeatureHeader:
    """Parse and validate the header of the frame ``data`` (the whole frame, so lengths can be checked).

    Checks, in order: length, magic, version, coder id, bits, shape, element count, payload length against the
    limits and against the bytes present, the packed length for uncoded payloads, and lo/hi. Raises
    :class:`CodecError` (or :class:`UnsupportedVersion`) naming the field and the values.
    """
    if len(data) < HEADER_SIZE:
        raise CodecError(
            f"frame is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header",
            field="header",
            actual=len(data),
        )
    magic_version, coder_bits, c, h, w, lo, hi, payload_len = _STRUCT.unpack_from(data)
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
    if version != CODEC_VERSION:
        raise CodecError(f"invalid feature codec version {version}", field="version", value=version)
    coder: Coder = coder_from_id(coder_bits >> 4)
    bits = (coder_bits & 0xF) + 1
    if bits not in limits.allowed_bits:
        raise CodecError(f"bits={bits} not allowed (allowed: {sorted(limits.allowed_bits)})", field="bits", value=bits)
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
    if payload_len > limits.max_payload_bytes:
        raise CodecError(
            f"payload_len={payload_len} exceeds the limit {limits.max_payload_bytes}",
            field="payload_len",
            value=payload_len,
            limit=limits.max_payload_bytes,
        )
    present = len(data) - HEADER_SIZE
    if payload_len != present:
        kind = "truncated frame" if present < payload_len else "trailing bytes after the payload"
        raise CodecError(
            f"{kind}: header says payload_len={payload_len} but {present} payload bytes are present",
            field="payload_len",
            value=payload_len,
            actual=present,
        )
    expected_packed = packed_size(numel, bits)
    if coder is Coder.NONE and payload_len != expected_packed:
        raise CodecError(
            f"payload_len={payload_len} but shape {(c, h, w)} at {bits} bits packs to {expected_packed} B",
            field="payload_len",
            value=payload_len,
            expected=expected_packed,
        )
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CodecError(f"non-finite lo={lo} / hi={hi} in header", field="lo/hi", lo=lo, hi=hi)
    if lo > hi:
        raise CodecError(f"inverted range: lo={lo} > hi={hi}", field="lo/hi", lo=lo, hi=hi)
    return FeatureHeader(
        version=version,
        coder=coder.label,
        bits=bits,
        shape=(c, h, w),
        lo=lo,
        hi=hi,
        payload_len=payload_len,
    )
