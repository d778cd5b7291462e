"""The feature codec shared by edge and server: pure numpy + the Python standard library.

A frame is a 14-byte self-describing header followed by the payload: the feature tensor quantized per tensor
(asymmetric min/max, 1..16 bits), bit-packed MSB-first and optionally entropy-coded (raw deflate or raw
LZMA2, chosen per frame by size). Decoding validates every header field against :class:`DecodeLimits` before
allocating anything.

Usage::

    frame = encode_features(x, bits=4)        # x: float32 [C, H, W] or [1, C, H, W] -> bytes
    header = peek_header(frame, limits)       # cheap validation, e.g. against the bundle manifest
    features = decode_features(frame, limits).array    # float32 [C, H, W]

Byte layout: :mod:`slimsplit.codec.header`; quantization formula: :mod:`slimsplit.codec.quantize`; bit order:
:mod:`slimsplit.codec.bitpack`; coders: :mod:`slimsplit.codec.entropy`.
"""

from slimsplit.codec.codec import DecodedFeatures, decode_features, encode_features, peek_header
from slimsplit.codec.entropy import ENTROPY_CHOICES, Coder
from slimsplit.codec.header import (
    CODEC_VERSION,
    DEFAULT_LIMITS,
    HEADER_SIZE,
    DecodeLimits,
    FeatureHeader,
)
from slimsplit.codec.quantize import dequantize, float16_range, quantize

__all__ = [
    "CODEC_VERSION",
    "DEFAULT_LIMITS",
    "ENTROPY_CHOICES",
    "HEADER_SIZE",
    "Coder",
    "DecodeLimits",
    "DecodedFeatures",
    "FeatureHeader",
    "decode_features",
    "dequantize",
    "encode_features",
    "float16_range",
    "peek_header",
    "quantize",
]
