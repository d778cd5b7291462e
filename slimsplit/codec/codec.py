"""Encode a feature tensor to one self-describing frame and back.

A frame is ``header (10-18 bytes) + payload`` where the payload is ``entropy(bitpack(quantize(x, bits)))``.
See ``header`` for the byte layout, ``quantize`` for the exact quantization formula, ``bitpack`` for the bit
order, ``entropy`` for the coders and ``huffman`` for the learned code of the ``huffman`` coder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.codec import entropy as _entropy
from slimsplit.codec.bitpack import pack_bits, unpack_bits
from slimsplit.codec.header import (
    CODEC_VERSION,
    DEFAULT_LIMITS,
    MAX_DIM,
    MAX_PAYLOAD,
    DecodeLimits,
    FeatureHeader,
    parse_header,
)
from slimsplit.codec.huffman import HuffmanTables, as_tables, byte_contexts
from slimsplit.codec.quantize import as_float32, dequantize, quantize
from slimsplit.errors import CodecError


@dataclass(frozen=True, eq=False)
class DecodedFeatures:
    """A decoded frame: ``array`` is a fresh float32 ``[C, H, W]`` array owned by the caller."""

    array: npt.NDArray[np.float32]
    header: FeatureHeader


def encode_features(
    x: npt.ArrayLike, bits: int, *, entropy: str = "auto", tables: HuffmanTables | None = None
) -> bytes:
    """Quantize ``x`` (float ``[C, H, W]`` or ``[1, C, H, W]``) to ``bits`` bits and encode it as one frame.

    ``entropy`` is ``"auto"`` (smallest of none/fast zlib/huffman, per frame), ``"max"`` (thorough zlib, lzma
    too), or one coder name (``"none"``, ``"zlib"``, ``"lzma"``, ``"huffman"``) to force it (see ``entropy``).
    ``tables`` are the mode's learned huffman codes (from the bundle); without them the huffman coder is not
    tried (and ``entropy="huffman"`` is an error). The decoder needs the same tables.

    Raises :class:`CodecError` for non-finite values, a wrong rank, dimensions beyond 65535, values beyond the
    float16 range, or a payload beyond 65535 bytes.
    """
    choice = _entropy.entropy_choice(entropy)
    huffman = as_tables(tables)
    if choice.coders == (_entropy.Coder.HUFFMAN,) and huffman is None:
        raise CodecError('entropy="huffman" needs the mode\'s code tables (tables=)', field="entropy")
    arr = as_float32(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise CodecError(
            f"features must be [C, H, W] or [1, C, H, W], got shape {tuple(arr.shape)}",
            field="shape",
            shape=tuple(arr.shape),
        )
    c, h, w = (int(d) for d in arr.shape)
    if not all(1 <= d <= MAX_DIM for d in (c, h, w)):
        raise CodecError(
            f"every dimension must be in 1..{MAX_DIM}, got shape {(c, h, w)}", field="shape", shape=(c, h, w)
        )
    q, lo, hi = quantize(arr, bits)
    packed = pack_bits(q, bits)
    huffman_coder = None
    if huffman is not None and _entropy.Coder.HUFFMAN in choice.coders:
        huffman_coder = partial(huffman.encode, contexts=byte_contexts((c, h, w), bits, huffman.contexts))
    best_coder, payload = _entropy.encode_payload(packed, choice, huffman_coder)
    if len(payload) > MAX_PAYLOAD:
        raise CodecError(
            f"payload of {len(payload)} bytes exceeds the format's {MAX_PAYLOAD}-byte limit "
            f"(shape {(c, h, w)} at {bits} bits); use fewer bits or channels",
            field="payload_len",
            value=len(payload),
        )
    header = FeatureHeader(
        version=CODEC_VERSION,
        coder=best_coder.label,
        bits=int(bits),
        shape=(c, h, w),
        lo=lo,
        hi=hi,
        payload_len=len(payload),
    )
    return header.to_bytes() + payload


def peek_header(data: Any, limits: DecodeLimits = DEFAULT_LIMITS) -> FeatureHeader:
    """Validate and return the header of the frame ``data`` without decoding the payload (cheap)."""
    return parse_header(_as_bytes(data), limits)


def decode_features(
    data: Any, limits: DecodeLimits = DEFAULT_LIMITS, *, tables: HuffmanTables | None = None
) -> DecodedFeatures:
    """Decode a frame made by :func:`encode_features`, validating every field against ``limits`` first.

    ``tables`` are the mode's huffman codes; a huffman-coded frame without them is a :class:`CodecError`.

    Raises :class:`CodecError` (or :class:`UnsupportedVersion` for a newer codec version) and nothing else for
    any malformed input; memory use is bounded by ``limits`` whatever the header claims.
    """
    buf = _as_bytes(data)
    header = parse_header(buf, limits)
    coder = _entropy.coder_from_label(header.coder)
    payload = buf[header.header_len :]
    if coder is _entropy.Coder.HUFFMAN:
        huffman = as_tables(tables)
        if huffman is None:
            raise CodecError(
                "the frame is huffman-coded, which needs the model's code tables for its mode", field="coder"
            )
        packed = huffman.decode(payload, byte_contexts(header.shape, header.bits, huffman.contexts))
    else:
        packed = _entropy.decompress(coder, payload, header.packed_len)
    q = unpack_bits(packed, header.bits, header.numel)
    if header.hi == header.lo and q.any():
        raise CodecError(f"lo == hi == {header.lo} but the payload holds non-zero quantized values", field="payload")
    array = dequantize(q, header.lo, header.hi, header.bits).reshape(header.shape)
    return DecodedFeatures(array=array, header=header)


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise CodecError(f"a frame must be bytes, got {type(data).__name__}", field="frame")
