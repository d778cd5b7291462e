"""The limits a bundle must stay inside before anything in it is trusted (standard library only).

A bundle is input: an operator may copy one from anywhere, so loading bounds every size, depth, name and figure
before using it, and refuses with a :class:`~slimsplit.errors.BundleError` that names the file and the limit.

* ``manifest.json`` is at most :data:`MAX_MANIFEST_BYTES` (1 MiB) on disk *and* as served: the server sends the
  manifest whole in every ``Describe`` answer (``ModelInfo.manifest_json``, next to its classes and modes, which
  take no more bytes than the JSON does), so a model's ``ModelInfo`` stays under 2 MiB and fits the default 4 MiB
  gRPC send limit. Every bundle one server serves together stays under :data:`MAX_SERVED_MANIFESTS_BYTES`, so a
  ``Describe`` of all models fits too.
* The JSON nests at most :data:`MAX_JSON_DEPTH` levels (the schema needs 3; ``notes`` may add a few), checked by a
  linear scan before it is parsed; ``NaN``, ``Infinity`` and duplicate keys are refused.
* Names: model names and mode names match :data:`NAME_PATTERN`, versions :data:`VERSION_PATTERN` (they become
  folder names, metric labels and wire fields); other strings are at most :data:`MAX_STRING_CHARS` characters.
* Figures: accuracy in [0, 1]; mean payload in (0, :data:`MAX_FRAME_BYTES`] (the largest frame the codec can
  write); latencies in [0, :data:`MAX_LATENCY_MS`]; normalisation mean and std finite and bounded.
* ``codec_tables.npz`` holds only the members the manifest's modes allow, each no larger than its table
  (:func:`codec_tables_max_bytes`); each member's ``.npy`` header (dtype, shape) is checked before it is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_MANIFEST_BYTES = 1 << 20
MAX_SERVED_MANIFESTS_BYTES = 3 << 19  # 1.5 MiB: a Describe of every model stays under 3 MiB (of 4 MiB)
MAX_JSON_DEPTH = 16

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
VERSION_RULE = "1 to 32 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{8,64}")
MAX_STRING_CHARS = 256
MAX_PATH_CHARS = 255
MAX_MODES = 256
MAX_CLASSES = 65_536
MAX_SPLIT_BLOCKS = 256

MAX_FRAME_BYTES = 18 + 0xFFFF  # slimsplit.codec.header: MAX_HEADER_SIZE + MAX_PAYLOAD
MAX_LATENCY_MS = 60_000.0
MAX_ABS_MEAN = 1e3
MIN_STD, MAX_STD = 1e-6, 1e3
MAX_FEATURE_ELEMENTS = 1 << 24  # channels x height x width of the bottleneck tensor
MAX_INPUT_ELEMENTS = 1 << 28  # channels x height x width of the encoder's input

ALPHABET = 256  # a codec table is [width, 256] uint8 (slimsplit.codec.huffman.ALPHABET)
MAX_NPY_HEADER_BYTES = 4096  # numpy writes 128 for these small arrays
_ZIP_MEMBER_OVERHEAD = 4096  # local header, central directory entry, zip64 extras, deflate's worst growth
_ZIP_OVERHEAD = 64 << 10


def table_nbytes(width: int) -> int:
    """Bytes of one mode's codec table (uint8 ``[width, 256]``)."""
    return width * ALPHABET


def codec_tables_max_bytes(widths: Iterable[int]) -> int:
    """The largest ``codec_tables.npz`` (on disk, and its members uncompressed) for modes of these widths: one
    table per mode and the ``max_len`` scalar, each with its ``.npy`` header and zip bookkeeping."""
    members = [table_nbytes(w) for w in widths] + [16]
    return sum(n + MAX_NPY_HEADER_BYTES + _ZIP_MEMBER_OVERHEAD for n in members) + _ZIP_OVERHEAD


_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]')


def json_depth_problem(text: str, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``text`` nests deeper than ``max_depth`` (arrays and objects, brackets inside strings not counted), or
    None. Linear in the text (an unterminated string runs to the end instead of being retried), stops at the first
    level too deep; whether the text is valid JSON is the parser's business."""
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels (at character {match.start()})"
        elif token in ("]", "}"):
            depth -= 1
    return None


__all__ = [
    "ALPHABET",
    "FINGERPRINT_PATTERN",
    "MAX_ABS_MEAN",
    "MAX_CLASSES",
    "MAX_FEATURE_ELEMENTS",
    "MAX_FRAME_BYTES",
    "MAX_INPUT_ELEMENTS",
    "MAX_JSON_DEPTH",
    "MAX_LATENCY_MS",
    "MAX_MANIFEST_BYTES",
    "MAX_MODES",
    "MAX_NPY_HEADER_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SERVED_MANIFESTS_BYTES",
    "MAX_SPLIT_BLOCKS",
    "MAX_STD",
    "MAX_STRING_CHARS",
    "MIN_STD",
    "NAME_PATTERN",
    "NAME_RULE",
    "VERSION_PATTERN",
    "VERSION_RULE",
    "codec_tables_max_bytes",
    "json_depth_problem",
    "table_nbytes",
]
