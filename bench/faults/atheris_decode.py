"""Coverage-guided fuzzing of the codec's decode path with atheris (libFuzzer), in a process of its own:
``python -m bench.faults.atheris_decode -atheris_runs=N [CORPUS_DIR]``.

Every input goes through ``peek_header`` and ``decode_features`` twice: with the default limits and with the limits
of the shipped bundle's feature shape (as the server decodes). A :class:`~slimsplit.errors.SlimsplitError` is the
expected answer to a malformed frame; any other exception is a crash (libFuzzer prints it and exits non-zero), and
so is a decoded array that breaks the limits or holds a non-finite value. ``write_corpus`` seeds a corpus with valid
frames of every mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["slimsplit"]):
    from slimsplit.codec import DEFAULT_LIMITS, DecodeLimits, decode_features, peek_header
    from slimsplit.errors import SlimsplitError

import numpy as np

SHAPE = (16, 8, 8)
BUNDLE_LIMITS = DecodeLimits.for_shape(SHAPE)


def test_one_input(data: bytes) -> None:
    for limits in (DEFAULT_LIMITS, BUNDLE_LIMITS):
        try:
            peek_header(data, limits)
            out = decode_features(data, limits).array
        except SlimsplitError:
            continue
        if out.size > limits.max_elements or out.ndim != 3:
            raise AssertionError(f"decoded {out.shape} beyond the limits {limits}")
        if not np.all(np.isfinite(out)):
            raise AssertionError("decoded a non-finite value")


def write_corpus(folder: Path) -> None:
    from slimsplit.codec import encode_features

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for width in (2, 4, 8, 16):
        for bits in (1, 2, 4, 8):
            for entropy in ("none", "zlib", "lzma"):
                x = np.maximum(rng.normal(size=(width, 8, 8)), 0).astype(np.float32)
                (folder / f"w{width}b{bits}-{entropy}").write_bytes(encode_features(x, bits, entropy=entropy))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
