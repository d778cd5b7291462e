"""The feature codec shared by edge and server: pure numpy + the Python standard library.

A frame is a self-describing header (10-18 bytes) followed by the payload: the feature tensor quantized per
tensor (asymmetric min/max, 1..16 bits), bit-packed MSB-first and optionally entropy-coded (raw deflate, raw
LZMA2, or a static Huffman code per channel learned offline and shipped in the model bundle; chosen per frame
by size). Decoding validates every header field against :class:`DecodeLimits` before
allocating anything.

Usage::

    frame = encode_features(x, bits=4)        # x: float32 [C, H, W] or [1, C, H, W] -> bytes
    header = peek_header(frame, limits)       # cheap validation, e.g. against the bundle manifest
    features = decode_features(frame, limits).array    # float32 [C, H, W]
    frame = encode_features(x, bits=4, tables=t)  # t: the mode's HuffmanTables from the bundle; decode with them too

Byte layout: :mod:`slimsplit.codec.header`; quantization formula: :mod:`slimsplit.codec.quantize`; bit order:
:mod:`slimsplit.codec.bitpack`; coders: :mod:`slimsplit.codec.entropy`.
"""

from slimsplit.codec.codec import DecodedFeatures, decode_features, encode_features, peek_header
from slimsplit.codec.entropy import ENTROPY_CHOICES, Coder
from slimsplit.codec.header import (
    CODEC_VERSION,
    DEFAULT_LIMITS,
    MAX_HEADER_SIZE,
    DecodeLimits,
    FeatureHeader,
)
from slimsplit.codec.huffman import HuffmanTables
from slimsplit.codec.quantize import dequantize, float16_range, quantize

__all__ = [
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
]
