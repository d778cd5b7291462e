"""Static Huffman coding of packed feature bytes with code tables learned offline (a learned prior).

The packed bits of a frame (see ``bitpack``) are cut into bytes; each byte is coded with the canonical Huffman
code of its *context*: the channel that its first bit belongs to (clipped to the table's last context). The
tables are fitted per mode on training features (``slimsplit.server.export.codec_tables``) and ship in the
bundle, so neither side adapts anything per frame: a frame pays no table or model cost, which is what makes
this coder win on the small frames of the narrow modes (6-33% fewer bytes than packed bits or raw DEFLATE on
the shipped modes that have a table, see BENCHMARKS.md sections 1c and 2). Every context codes all 256 byte
values (the counts are smoothed before the code is built), so any input can be encoded.

Bit stream: the codes one after the other, MSB first, the last byte padded with zero bits. The decoder knows
how many bytes to produce (from the header's shape and bits), rejects a stream that ends early, a non-zero
padding, and any whole byte left over.

Encoding is vectorised numpy; decoding is one table lookup per byte (the table is indexed by the next
``max_len`` bits), a short Python loop: a shipped frame decodes in about 50-150 us here (BENCHMARKS.md section 2).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.codec.bitpack import pack_bits
from slimsplit.codec.quantize import quantize
from slimsplit.errors import CodecError

ALPHABET = 256
MAX_CODE_LEN = 12  # decode tables have 2**12 entries per context


def code_lengths(counts: npt.ArrayLike, max_len: int = MAX_CODE_LEN) -> npt.NDArray[np.uint8]:
    """Huffman code lengths (1..``max_len``) for the 256 byte values with these ``counts``.

    Counts are smoothed (+1) so that every value gets a code. When the optimal code is longer than ``max_len``
    the counts are flattened (halved, +1) and the code rebuilt until it fits; deterministic (ties by value).
    """
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if c.shape != (ALPHABET,) or (c < 0).any():
        raise CodecError(f"counts must be {ALPHABET} non-negative integers, got shape {c.shape}", field="counts")
    if not 8 <= max_len <= 16:
        raise CodecError(f"max_len must be in 8..16, got {max_len}", field="max_len")
    work = c + 1
    while True:
        lengths = _huffman_lengths(work)
        if int(lengths.max()) <= max_len:
            return lengths.astype(np.uint8)
        work = work // 2 + 1


def _huffman_lengths(weights: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    heap: list[tuple[int, int, list[int]]] = [(int(w), i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    lengths = np.zeros(len(weights), dtype=np.int64)
    order = len(weights)
    while len(heap) > 1:
        wa, _, a = heapq.heappop(heap)
        wb, _, b = heapq.heappop(heap)
        merged = a + b
        lengths[merged] += 1
        heapq.heappush(heap, (wa + wb, order, merged))
        order += 1
    return lengths


def _canonical_codes(lengths: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """Canonical codes (RFC 1951 3.2.2): shorter codes first, equal lengths in value order."""
    lens = lengths.astype(np.int64)
    counts = np.bincount(lens, minlength=17)
    counts[0] = 0
    first = np.zeros(17, dtype=np.int64)  # the first code of each length
    code = 0
    for n in range(1, 17):
        code = (code + int(counts[n - 1])) << 1
        first[n] = code
    order = np.lexsort((np.arange(ALPHABET), lens))  # by length, then by value
    rank = np.empty(ALPHABET, dtype=np.int64)
    sorted_lens = lens[order]
    starts = np.searchsorted(sorted_lens, sorted_lens, side="left")  # index of the first code of the same length
    rank[order] = np.arange(ALPHABET) - starts
    return (first[lens] + rank).astype(np.uint32)


@dataclass(frozen=True, eq=False)
class HuffmanTables:
    """Canonical Huffman codes for ``K`` contexts: ``lengths`` is uint8 ``[K, 256]``, every length in 1..max_len,
    each row a complete prefix code (Kraft sum exactly 1, as every Huffman code is), so every window decodes."""

    lengths: npt.NDArray[np.uint8]
    max_len: int = MAX_CODE_LEN
    _codes: npt.NDArray[np.uint32] = field(init=False, repr=False)
    _lut: list[int] | None = field(init=False, repr=False)  # [(k << max_len) | window] -> byte | length << 8

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths)
        if lengths.ndim != 2 or lengths.shape[1] != ALPHABET or lengths.shape[0] < 1:
            raise CodecError(f"code lengths must be [K, {ALPHABET}], got shape {lengths.shape}", field="lengths")
        if not 8 <= self.max_len <= 16:
            raise CodecError(f"max_len must be in 8..16, got {self.max_len}", field="max_len")
        if int(lengths.min()) < 1 or int(lengths.max()) > self.max_len:
            raise CodecError(f"code lengths must lie in 1..{self.max_len}", field="lengths")
        lengths = lengths.astype(np.uint8)
        kraft = (np.int64(1) << (self.max_len - lengths.astype(np.int64))).sum(axis=1)
        if (kraft != 1 << self.max_len).any():
            bad = int(np.argmax(kraft != 1 << self.max_len))
            raise CodecError(
                f"context {bad}: code lengths do not form a complete prefix code (Kraft sum "
                f"{kraft[bad] / (1 << self.max_len):.4f}, must be exactly 1)",
                field="lengths",
            )
        codes = np.stack([_canonical_codes(row) for row in lengths])
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_lut", None)  # the decode table, built on the first decode (edges never need it)

    def _build_lut(self) -> list[int]:
        luts = []
        for k in range(self.lengths.shape[0]):
            shift = self.max_len - self.lengths[k].astype(np.int64)
            starts = self._codes[k].astype(np.int64) << shift
            spans = np.int64(1) << shift
            idx = np.repeat(starts, spans) + (np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans))
            lut = np.zeros(1 << self.max_len, dtype=np.int64)  # the code is complete: every window is filled
            lut[idx] = np.repeat(np.arange(ALPHABET) | (self.lengths[k].astype(np.int64) << 8), spans)
            luts.append(lut)
        table: list[int] = np.concatenate(luts).tolist()
        object.__setattr__(self, "_lut", table)
        return table

    @classmethod
    def fit(cls, counts: npt.ArrayLike, max_len: int = MAX_CODE_LEN) -> HuffmanTables:
        """Tables from byte counts ``[K, 256]`` per context (see :func:`code_lengths`)."""
        c = np.asarray(counts)
        if c.ndim != 2 or c.shape[1] != ALPHABET:
            raise CodecError(f"counts must be [K, {ALPHABET}], got shape {c.shape}", field="counts")
        return cls(np.stack([code_lengths(row, max_len) for row in c]), max_len)

    @property
    def contexts(self) -> int:
        return int(self.lengths.shape[0])

    def fingerprint(self) -> str:
        """A short hash of the code (lengths and max_len): equal fingerprints decode each other's streams."""
        h = hashlib.sha256(bytes([self.max_len]) + self.lengths.tobytes())
        return h.hexdigest()[:16]

    def encode(self, packed: bytes, contexts: npt.NDArray[np.intp]) -> bytes:
        """Code the bytes ``packed``, byte ``j`` with context ``contexts[j]``."""
        data = np.frombuffer(packed, dtype=np.uint8).astype(np.intp)
        if data.shape != contexts.shape:
            raise CodecError(f"{data.size} bytes but {contexts.size} contexts", field="contexts")
        lens = self.lengths[contexts, data].astype(np.int64)
        codes = self._codes[contexts, data].astype(np.int64)
        total = int(lens.sum())
        if total == 0:
            return b""
        ends = np.cumsum(lens)
        owner = np.repeat(np.arange(len(lens)), lens)
        pos_in_code = np.arange(total) - (ends - lens)[owner]
        bits = (codes[owner] >> (lens[owner] - 1 - pos_in_code)) & 1
        return np.packbits(bits.astype(np.uint8), bitorder="big").tobytes()

    def decode(self, payload: bytes, contexts: npt.NDArray[np.intp]) -> bytes:
        """Decode ``len(contexts)`` bytes from ``payload``; :class:`CodecError` on any malformed stream."""
        n = len(contexts)
        nbits = 8 * len(payload)
        max_len = self.max_len
        # every code is at least 1 bit, so a valid stream has at most 8*len(payload) codes and ends in the last byte
        if n > nbits:
            raise CodecError(
                f"truncated huffman payload: {len(payload)} bytes cannot hold {n} codes",
                field="payload",
                coder="huffman",
            )
        # the max_len-bit window at every bit position: from the big-endian 32-bit word at its byte (zero padded)
        b = np.frombuffer(payload + bytes(3), dtype=np.uint8).astype(np.int64)
        words = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]
        positions = np.arange(nbits)
        windows = ((words[positions >> 3] >> (32 - max_len - (positions & 7))) & ((1 << max_len) - 1)).tolist()
        windows.append(0)  # position nbits: reached only after the last code
        lut = self._lut if self._lut is not None else self._build_lut()
        offsets = (contexts.astype(np.int64) << max_len).tolist()
        out = bytearray(n)
        pos = 0
        for i in range(n):
            entry = lut[offsets[i] + windows[pos]]
            out[i] = entry & 0xFF
            pos += entry >> 8
            if pos > nbits:
                raise CodecError(
                    f"truncated huffman payload: stream ended after {i} of {n} bytes", field="payload", coder="huffman"
                )
        if nbits - pos >= 8:
            raise CodecError(
                f"{(nbits - pos) // 8} trailing byte(s) after the end of the huffman stream",
                field="payload_len",
                coder="huffman",
            )
        if pos < nbits and payload[-1] & ((1 << (nbits - pos)) - 1):
            raise CodecError("non-zero padding bits after the huffman stream", field="payload", coder="huffman")
        return bytes(out)


def byte_contexts(shape: tuple[int, int, int], bits: int, contexts: int) -> npt.NDArray[np.intp]:
    """The context of every packed byte of a ``shape`` frame at ``bits`` bits: the channel of its first bit."""
    c, h, w = shape
    nbytes = (c * h * w * bits + 7) // 8
    first_value = (np.arange(nbytes, dtype=np.int64) * 8) // bits
    channel = first_value // (h * w)
    return np.minimum(channel, contexts - 1).astype(np.intp)


def count_bytes(packed_frames: list[bytes], contexts: npt.NDArray[np.intp], k: int) -> npt.NDArray[np.int64]:
    """Byte counts ``[k, 256]`` per context over frames that all have the layout of ``contexts``."""
    counts = np.zeros((k, ALPHABET), dtype=np.int64)
    if not packed_frames:
        return counts
    data = np.stack([np.frombuffer(p, dtype=np.uint8) for p in packed_frames]).astype(np.intp)
    np.add.at(counts, (np.broadcast_to(contexts, data.shape), data), 1)
    return counts


def count_frame_bytes(frames: npt.NDArray[np.float32], bits: int) -> npt.NDArray[np.int64]:
    """Byte counts ``[C, 256]`` (one context per channel) of feature frames ``[N, C, H, W]`` quantized and packed
    at ``bits`` exactly as the encoder does; counts of disjoint sets of frames add up."""
    _, c, h, w = frames.shape
    packed = [pack_bits(quantize(x, bits)[0], bits) for x in frames]
    return count_bytes(packed, byte_contexts((c, h, w), bits, c), c)


def as_tables(value: Any) -> HuffmanTables | None:
    """``value`` when it is a :class:`HuffmanTables` or ``None``; a clear error for anything else."""
    if value is None or isinstance(value, HuffmanTables):
        return value
    raise CodecError(f"tables must be HuffmanTables or None, got {type(value).__name__}", field="tables")
