"""Plane units: a frame's quantized code split into bit planes, most significant first, each self-describing.

A plane unit (fixed 20-byte header, then ``payload_len`` bytes)::

    size  field
     1    magic      0xB1 (plane unit, version 1; distinct from frame byte 0 0xA?)
     1    plane      plane index, 0 = most significant bit
     1    bits       total bits B of the code (1..16); planes 0..B-1 exist
     1    coder      entropy coder id of this plane's payload (0 none, 1 zlib; see ``entropy.Coder``)
     4    frame_id   uint32, ties the planes of one frame together
     2x3  C, H, W    uint16 each, 1..65535
     2    lo         float16, the quantization minimum (as in the frame header)
     2    hi         float16, the quantization maximum
     2    payload_len  uint16

(all big-endian). The payload is the plane's C*H*W bits packed MSB-first (``bitpack`` at 1 bit), then coded
with ``coder`` (each plane picks the smaller of raw and zlib). The header is validated against
:class:`DecodeLimits` before anything is allocated, and zlib is decoded with a bounded output.

Any prefix of planes 0..k-1 decodes (:func:`decode_planes`) to the code ``q`` with the missing low bits set
to the midpoint of their range (``prefix << (B-k) | 1 << (B-k-1)``, clipped to ``2**B - 1``), dequantized as
in ``quantize``; all B planes give exactly the frame codec's decode.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slimsplit.codec import entropy as _entropy
from slimsplit.codec.bitpack import pack_bits, packed_size, unpack_bits
from slimsplit.codec.header import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_bits,
    check_payload_limit,
    check_range,
    check_shape,
)
from slimsplit.codec.quantize import as_float32, dequantize, levels_for, quantize
from slimsplit.errors import CodecError

PLANE_MAGIC = 0xB1
_HEADER = struct.Struct(">BBBBIHHHeeH")
PLANE_HEADER_SIZE = _HEADER.size  # 20
_CODERS = (_entropy.Coder.NONE, _entropy.Coder.ZLIB)


@dataclass(frozen=True)
class PlaneHeader:
    """A parsed, validated plane-unit header."""

    plane: int
    bits: int
    coder: str
    frame_id: int
    shape: tuple[int, int, int]
    lo: float
    hi: float
    payload_len: int

    @property
    def numel(self) -> int:
        c, h, w = self.shape
        return c * h * w


def encode_planes(x: npt.ArrayLike, bits: int, *, frame_id: int = 0) -> list[bytes]:
    """Quantize ``x`` (``[C, H, W]`` or ``[1, C, H, W]``) to ``bits`` bits; return one unit per plane, MSB first."""
    levels_for(bits)
    if not 0 <= int(frame_id) <= 0xFFFFFFFF:
        raise CodecError(f"frame_id must fit in uint32, got {frame_id!r}", field="frame_id")
    arr = as_float32(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or not all(1 <= d <= 0xFFFF for d in arr.shape):
        raise CodecError(f"features must be [C, H, W] with dims 1..65535, got {tuple(arr.shape)}", field="shape")
    q, lo, hi = quantize(arr, bits)
    flat = q.reshape(-1).astype(np.uint32)
    units = []
    for p in range(bits):
        plane = ((flat >> (bits - 1 - p)) & 1).astype(np.uint8)
        packed = pack_bits(plane, 1)
        candidates = [(len(c), coder, c) for coder in _CODERS for c in [_entropy.compress(coder, packed)]]
        _, coder, payload = min(candidates, key=lambda t: (t[0], int(t[1])))
        if len(payload) > 0xFFFF:
            raise CodecError(f"plane payload of {len(payload)} bytes exceeds 65535", field="payload_len")
        c, h, w = (int(d) for d in arr.shape)
        header = _HEADER.pack(PLANE_MAGIC, p, bits, int(coder), int(frame_id), c, h, w, lo, hi, len(payload))
        units.append(header + payload)
    return units


def parse_plane_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> PlaneHeader:
    """Validate the header of the plane unit ``data`` (including its total length) against ``limits``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"a plane unit must be bytes, got {type(data).__name__}", field="unit")
    buf = bytes(data)
    if len(buf) < PLANE_HEADER_SIZE:
        raise CodecError(
            f"plane unit of {len(buf)} bytes is shorter than its {PLANE_HEADER_SIZE}-byte header", field="header"
        )
    magic, plane, bits, coder_id, frame_id, c, h, w, lo, hi, plen = _HEADER.unpack_from(buf)
    if magic != PLANE_MAGIC:
        raise CodecError(f"not a plane unit: byte 0 is {magic:#04x}, expected {PLANE_MAGIC:#04x}", field="magic")
    check_bits(bits, limits)
    if plane >= bits:
        raise CodecError(f"plane {plane} out of range for {bits} bits", field="plane", value=plane)
    if coder_id not in (int(cd) for cd in _CODERS):
        raise CodecError(f"unknown plane coder id {coder_id}", field="coder", value=coder_id)
    check_shape((c, h, w), limits)
    check_range(float(lo), float(hi))
    check_payload_limit(plen, limits)
    if len(buf) != PLANE_HEADER_SIZE + plen:
        raise CodecError(
            f"plane unit is {len(buf)} bytes but its header says {PLANE_HEADER_SIZE} + {plen}", field="payload_len"
        )
    coder = _entropy.coder_from_id(coder_id)
    if coder is _entropy.Coder.NONE and plen != packed_size(c * h * w, 1):
        raise CodecError(f"raw plane payload must be {packed_size(c * h * w, 1)} bytes, got {plen}", field="payload")
    return PlaneHeader(plane, bits, coder.label, frame_id, (c, h, w), float(lo), float(hi), plen)


class PlaneAssembly:
    """The plane units of one frame as they arrive, in any order: each is validated against ``limits`` and the
    first unit (same frame id, bits, shape and range; no plane twice) and its bits are merged into the code at
    once, so :meth:`decode` only fills the missing bits. ``frame_id``: when given, the units must carry it (its
    low 32 bits); ``shape``: when given, the units must have exactly this ``[C, H, W]``."""

    def __init__(
        self,
        limits: DecodeLimits = DEFAULT_LIMITS,
        *,
        frame_id: int | None = None,
        shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.limits = limits
        self.shape = shape
        self.frame_id = None if frame_id is None else int(frame_id) & 0xFFFFFFFF
        self.header: PlaneHeader | None = None
        self._planes: set[int] = set()
        self._q: npt.NDArray[np.uint32] | None = None
        self.bytes = 0

    @property
    def received(self) -> int:
        """Planes taken so far."""
        return len(self._planes)

    @property
    def prefix(self) -> int:
        """Planes 0..k-1 all taken: the k a decode uses now."""
        k = 0
        while k in self._planes:
            k += 1
        return k

    def add(self, unit: bytes) -> PlaneHeader:
        """Take one unit (raises :class:`CodecError` naming the field, leaving the assembly unchanged)."""
        hd = parse_plane_header(unit, self.limits)
        if self.shape is not None and hd.shape != tuple(self.shape):
            raise CodecError(
                f"the plane unit has shape {list(hd.shape)} but its frame's mode sends {list(self.shape)}",
                field="shape",
                value=hd.shape,
            )
        first = self.header
        if first is None:
            if self.frame_id is not None and hd.frame_id != self.frame_id:
                raise CodecError(
                    f"the plane unit is of frame {hd.frame_id}, not of frame {self.frame_id}", field="frame_id"
                )
        elif (hd.bits, hd.frame_id, hd.shape, hd.lo, hd.hi) != (
            first.bits,
            first.frame_id,
            first.shape,
            first.lo,
            first.hi,
        ):
            raise CodecError("plane units belong to different frames", field="frame_id")
        if hd.plane in self._planes:
            raise CodecError(f"plane {hd.plane} was sent twice", field="plane", value=hd.plane)
        n = hd.numel
        payload = bytes(unit)[PLANE_HEADER_SIZE:]
        packed = _entropy.decompress(_entropy.coder_from_label(hd.coder), payload, packed_size(n, 1))
        bits = unpack_bits(packed, 1, n).astype(np.uint32) << (hd.bits - 1 - hd.plane)
        if self._q is None:
            self._q = np.zeros(n, dtype=np.uint32)
            self.header = hd
        self._q |= bits
        self._planes.add(hd.plane)
        self.bytes += len(unit)
        return hd

    def decode(self) -> npt.NDArray[np.float32]:
        """The float32 ``[C, H, W]`` tensor of the :attr:`prefix` planes (missing bits at their midpoint)."""
        hd, k = self.header, self.prefix
        if hd is None or self._q is None or k == 0:
            raise CodecError("plane 0 (the most significant) has not arrived: nothing to decode", field="plane")
        bits = hd.bits
        q = self._q.copy()
        if k < bits:
            q &= np.uint32(((1 << k) - 1) << (bits - k))  # planes after a gap are not used
            q |= 1 << (bits - k - 1)
            np.minimum(q, levels_for(bits), out=q)
        if hd.hi == hd.lo:
            q[:] = 0
        return dequantize(q, hd.lo, hd.hi, bits).reshape(hd.shape)


def decode_planes(units: Sequence[bytes], limits: DecodeLimits = DEFAULT_LIMITS) -> npt.NDArray[np.float32]:
    """Decode planes 0..k-1 (any order, no gaps, one frame) to a float32 ``[C, H, W]`` tensor (midpoint fill)."""
    if not units:
        raise CodecError("no plane units given", field="plane")
    assembly = PlaneAssembly(limits)
    for unit in units:
        assembly.add(unit)
    if assembly.prefix != len(units):
        raise CodecError(f"planes must be a gap-free prefix 0..k-1, got {sorted(assembly._planes)}", field="plane")
    return assembly.decode()


def split_units(data: bytes) -> list[bytes]:
    """The plane units laid end to end in ``data`` (each one's length from its header; raises CodecError)."""
    buf = memoryview(bytes(data))
    units = []
    at = 0
    while at < len(buf):
        if len(buf) - at < PLANE_HEADER_SIZE:
            raise CodecError(f"{len(buf) - at} trailing bytes are not a plane unit", field="header")
        plen = struct.unpack_from(">H", buf, at + PLANE_HEADER_SIZE - 2)[0]
        end = at + PLANE_HEADER_SIZE + plen
        if end > len(buf):
            raise CodecError("the last plane unit is cut short", field="payload_len")
        units.append(bytes(buf[at:end]))
        at = end
    if not units:
        raise CodecError("no plane units given", field="plane")
    return units


def plane_sizes(units: Sequence[bytes]) -> list[int]:
    """Bytes on the wire of each unit."""
    return [len(u) for u in units]
