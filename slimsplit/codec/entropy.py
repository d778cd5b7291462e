"""Lossless back ends applied to the packed bits, chosen per frame; decompression is bounded (no bombs).

Coder ids (the high nibble of header byte 1):

* ``0 none`` - the packed bits as they are.
* ``1 zlib`` - raw DEFLATE (RFC 1951; ``wbits=-15``: no zlib/gzip framing, no checksum). The encoder runs
  one or more zlib strategies and keeps the smallest stream; the decoder does not care which was used.
* ``2 lzma`` - raw LZMA2 (``FORMAT_RAW``, one filter ``FILTER_LZMA2``, ``dict_size=65536``; no .xz framing).
* ``3 huffman`` - static canonical Huffman codes per channel, learned offline and shipped in the model bundle
  (``huffman``); only available when the caller passes the mode's tables (codec version 2).

The ``entropy=`` choices of the encoder (the smallest candidate wins; a tie goes to the earlier coder):

* ``"auto"`` - none, zlib with the RLE and Huffman-only strategies (both single fast passes, no match search;
  on feature frames each compresses better than zlib's default strategy at a quarter of its time), and the
  learned huffman code when the caller has tables for the mode.
* ``"max"``  - none, zlib with RLE, Huffman-only and default strategies, or lzma: a few percent smaller on
  some frames (mostly 8-bit ones) for 2-4x the encode time.
* ``"none"``, ``"zlib"`` (all three strategies), ``"lzma"``, ``"huffman"`` - force that coder.

bz2 was measured too (BENCHMARKS.md section 2) and never won on feature frames (its framing alone is ~40 bytes).
"""

from __future__ import annotations

import enum
import lzma
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from slimsplit.errors import CodecError

LZMA_DICT_SIZE = 1 << 16
ZLIB_LEVEL = 9
ZLIB_WBITS = -15  # raw deflate
ZLIB_MEMLEVEL = 8  # below 4 deflate cuts blocks every 2**(memLevel + 6) symbols: larger and slower
FAST_ZLIB_STRATEGIES = (zlib.Z_RLE, zlib.Z_HUFFMAN_ONLY)
ALL_ZLIB_STRATEGIES = (zlib.Z_RLE, zlib.Z_HUFFMAN_ONLY, zlib.Z_DEFAULT_STRATEGY)


class Coder(enum.IntEnum):
    """Entropy-coder ids as stored in the frame header."""

    NONE = 0
    ZLIB = 1
    LZMA = 2
    HUFFMAN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class EntropyChoice:
    """What an ``entropy=`` choice tries: these coders, and these zlib strategies for ``ZLIB``."""

    coders: tuple[Coder, ...]
    zlib_strategies: tuple[int, ...] = ALL_ZLIB_STRATEGIES


ENTROPY_CHOICES: Mapping[str, EntropyChoice] = MappingProxyType(
    {
        "auto": EntropyChoice((Coder.NONE, Coder.ZLIB, Coder.HUFFMAN), FAST_ZLIB_STRATEGIES),
        "max": EntropyChoice((Coder.NONE, Coder.ZLIB, Coder.LZMA, Coder.HUFFMAN)),
        "none": EntropyChoice((Coder.NONE,)),
        "zlib": EntropyChoice((Coder.ZLIB,)),
        "lzma": EntropyChoice((Coder.LZMA,)),
        "huffman": EntropyChoice((Coder.HUFFMAN,)),
    }
)


def entropy_choice(entropy: str) -> EntropyChoice:
    """Look up an ``entropy=`` choice by name."""
    try:
        return ENTROPY_CHOICES[entropy]
    except (KeyError, TypeError):
        raise CodecError(
            f"unknown entropy choice {entropy!r}; expected one of {', '.join(ENTROPY_CHOICES)}",
            field="entropy",
            value=entropy,
        ) from None


def encode_payload(
    packed: bytes, choice: EntropyChoice, huffman: Callable[[bytes], bytes] | None = None
) -> tuple[Coder, bytes]:
    """The smallest encoding of ``packed`` among the choice's coders (ties: the earlier coder).

    ``huffman`` codes ``packed`` with the mode's learned code; without it the huffman coder is left out, and a
    choice with no other coder (``"huffman"``) is a :class:`CodecError`.
    """
    best: tuple[Coder, bytes] | None = None
    for coder in choice.coders:
        if coder is Coder.HUFFMAN:
            if huffman is None:
                continue
            out = huffman(packed)
        else:
            out = compress(coder, packed, choice.zlib_strategies)
        if best is None or len(out) < len(best[1]):
            best = (coder, out)
    if best is None:
        raise CodecError('entropy="huffman" needs the mode\'s code tables (tables=)', field="entropy")
    return best


def coder_from_id(coder_id: int) -> Coder:
    try:
        return Coder(coder_id)
    except ValueError:
        known = ", ".join(f"{c.value}={c.label}" for c in Coder)
        raise CodecError(
            f"unknown entropy coder id {coder_id} in frame header (known: {known})",
            field="coder",
            value=coder_id,
        ) from None


def coder_from_label(label: str) -> Coder:
    for c in Coder:
        if c.label == label:
            return c
    raise CodecError(f"unknown entropy coder {label!r}", field="coder", value=label)


def compress(coder: Coder, packed: bytes, zlib_strategies: tuple[int, ...] = ALL_ZLIB_STRATEGIES) -> bytes:
    """Encode ``packed`` with ``coder`` (``NONE`` returns it unchanged; zlib keeps its smallest strategy)."""
    if coder is Coder.NONE:
        return packed
    if coder is Coder.HUFFMAN:
        raise CodecError("the huffman coder needs the mode's code tables: use encode_features(..., tables=)")
    if coder is Coder.ZLIB:
        best: bytes | None = None
        for strategy in zlib_strategies:
            c = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL, strategy)
            out = c.compress(packed) + c.flush()
            if best is None or len(out) < len(best):
                best = out
        if best is None:
            raise CodecError("no zlib strategy given", field="entropy")
        return best
    return lzma.compress(packed, format=lzma.FORMAT_RAW, filters=_lzma_filters(preset=9))


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def decompress(coder: Coder, payload: bytes, expected_len: int) -> bytes:
    """Decode ``payload`` to exactly ``expected_len`` bytes, never producing more than ``expected_len + 1``.

    Raises :class:`CodecError` when the stream is corrupt, truncated, followed by trailing bytes, or decodes
    to a different length (a decompression bomb stops after ``expected_len + 1`` bytes).
    """
    if coder is Coder.NONE:
        return payload
    if coder is Coder.HUFFMAN:
        raise CodecError("the huffman coder needs the mode's code tables: use decode_features(..., tables=)")
    dec: _Decompressor
    errors: tuple[type[Exception], ...]
    if coder is Coder.ZLIB:
        dec, errors = zlib.decompressobj(ZLIB_WBITS), (zlib.error,)
    else:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters())
        errors = (lzma.LZMAError,)
    name = coder.label
    try:
        out = dec.decompress(payload, expected_len + 1)
    except errors as exc:
        raise CodecError(f"corrupt {name} payload: {exc}", field="payload", coder=name) from None
    if len(out) > expected_len:
        raise CodecError(
            f"{name} payload decompresses to more than the {expected_len} bytes that the header implies",
            field="payload",
            coder=name,
            expected=expected_len,
        )
    if not dec.eof:
        raise CodecError(
            f"truncated {name} payload: stream ended after {len(out)} of {expected_len} bytes",
            field="payload",
            coder=name,
        )
    if dec.unused_data:
        raise CodecError(
            f"{len(dec.unused_data)} trailing byte(s) after the end of the {name} stream",
            field="payload_len",
            coder=name,
        )
    if len(out) != expected_len:
        raise CodecError(
            f"{name} payload decompresses to {len(out)} bytes but the header implies {expected_len}",
            field="payload",
            coder=name,
            actual=len(out),
            expected=expected_len,
        )
    return out


def _lzma_filters(preset: int | None = None) -> list[dict[str, int]]:
    f = {"id": lzma.FILTER_LZMA2, "dict_size": LZMA_DICT_SIZE}
    if preset is not None:
        f["preset"] = preset
    return [f]
