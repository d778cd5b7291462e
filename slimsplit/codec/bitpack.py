"""Vectorised MSB-first bit packing of quantized values.

Layout: the values are taken in C order (row-major over ``[C, H, W]``); each value contributes its ``bits``
low bits, most significant bit first; the bit strings are concatenated and split into bytes, the first bit
being the most significant bit of byte 0 (``np.packbits(..., bitorder="big")``). The last byte is padded with
zero bits. Hence ``packed_size(n, bits) == ceil(n * bits / 8)``; with ``bits == 8`` the packing is the values'
bytes themselves and with ``bits == 16`` their big-endian uint16 bytes.

Example: bits=3, values [5, 1, 7] -> bits 101 001 111 (+7 zero pad bits) -> bytes 0xA7 0x80.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.errors import CodecError

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits each."""
    return (count * bits + 7) // 8


def pack_bits(q: npt.NDArray[Any], bits: int) -> bytes:
    """Pack the values of ``q`` (each ``< 2**bits``) MSB-first into ``packed_size(q.size, bits)`` bytes."""
    flat = np.ascontiguousarray(q).reshape(-1)
    if bits == 8:
        return flat.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return flat.astype(">u2").tobytes()
    if bits == 1:
        return np.packbits(flat.astype(np.uint8, copy=False), bitorder="big").tobytes()
    if bits in (2, 4):  # whole values per byte: shift and OR
        per_byte = 8 // bits
        padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: flat.size] = flat
        groups = padded.reshape(-1, per_byte)
        out = groups[:, 0] << np.uint8(8 - bits)
        for i in range(1, per_byte):
            out |= groups[:, i] << np.uint8(8 - bits * (i + 1))
        return out.tobytes()
    width = 8 if bits < 8 else 16
    if width == 8:
        as_bytes = flat.astype(np.uint8, copy=False).reshape(-1, 1)
    else:
        as_bytes = flat.astype(">u2").view(np.uint8).reshape(-1, 2)
    planes = np.unpackbits(as_bytes, axis=1, bitorder="big")  # (n, width), MSB first
    return np.packbits(planes[:, width - bits :], bitorder="big").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> UIntArray:
    """Inverse of :func:`pack_bits`: ``count`` values (uint8 for bits <= 8, else uint16).

    Raises :class:`CodecError` when ``data`` is not exactly ``packed_size(count, bits)`` bytes or the padding
    bits of the last byte are not zero (a sign of corruption).
    """
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise CodecError(
            f"packed payload is {len(data)} bytes but {count} values of {bits} bits need {expected}",
            field="payload_len",
            actual=len(data),
            expected=expected,
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw.copy()
    if bits == 16:
        return raw.view(">u2").astype(np.uint16)
    pad = expected * 8 - count * bits
    if pad and int(raw[-1]) & ((1 << pad) - 1):
        raise CodecError(
            f"the {pad} padding bit(s) of the last payload byte are not zero", field="payload", pad_bits=pad
        )
    if bits == 1:
        return np.unpackbits(raw, count=count, bitorder="big")
    if bits in (2, 4):
        shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
        values = (raw[:, None] >> shifts) & np.uint8((1 << bits) - 1)
        return values.reshape(-1)[:count].copy()
    planes = np.unpackbits(raw, count=count * bits, bitorder="big").reshape(count, bits)
    width = 8 if bits < 8 else 16
    full = np.zeros((count, width), dtype=np.uint8)
    full[:, width - bits :] = planes
    packed = np.packbits(full, axis=1, bitorder="big")  # (count, width // 8)
    if width == 8:
        return packed.reshape(count)
    return packed.view(">u2").reshape(count).astype(np.uint16)
