"""The bundle's learned feature-codec tables: one huffman code per mode, read and written as ``.npz``.

File layout (``numpy.savez``, no pickled objects): ``max_len`` (int scalar, the longest code) and one uint8
array ``[width, 256]`` of code lengths per mode, named by the mode (``w4b2``). A mode without an array has no
learned code (the export leaves out modes where the code does not pay for its decode time); its frames use the
table-free coders. Unlike the rest of
``slimsplit.bundle`` this module needs numpy (the edge has it anyway).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from slimsplit.bundle.bundle import Bundle
from slimsplit.codec.huffman import ALPHABET, HuffmanTables
from slimsplit.errors import BundleError, CodecError

MAX_LEN_KEY = "max_len"
NO_TABLES: Mapping[str, HuffmanTables] = MappingProxyType({})


def load_codec_tables(bundle: Bundle) -> Mapping[str, HuffmanTables]:
    """The bundle's tables by mode name (modes without a table are absent); empty when the manifest names none.

    :class:`BundleError` when the file is unreadable, names an unknown mode or holds a malformed table."""
    rel = bundle.manifest.codec_tables
    if rel is None:
        return NO_TABLES
    path = bundle.path(rel)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: cannot read the codec tables: {exc}", path=str(path)) from None
    if MAX_LEN_KEY not in arrays or arrays[MAX_LEN_KEY].shape != ():
        raise BundleError(f"{path}: no scalar '{MAX_LEN_KEY}' in the codec tables", path=str(path))
    max_len = int(arrays.pop(MAX_LEN_KEY))
    tables: dict[str, HuffmanTables] = {}
    for mode in bundle.manifest.modes:
        lengths = arrays.pop(mode.name, None)
        if lengths is None:
            continue
        if lengths.shape != (mode.width, ALPHABET) or lengths.dtype != np.uint8:
            raise BundleError(
                f"{path}: the table of mode {mode.name} is {lengths.dtype} {lengths.shape}, "
                f"expected uint8 ({mode.width}, {ALPHABET})",
                path=str(path),
                mode=mode.name,
            )
        try:
            tables[mode.name] = HuffmanTables(lengths, max_len)
        except CodecError as exc:
            raise BundleError(f"{path}: bad codec table for mode {mode.name}: {exc}", path=str(path)) from None
    if arrays:
        raise BundleError(f"{path}: tables for unknown modes {sorted(arrays)}", path=str(path))
    want = bundle.manifest.codec_tables_fingerprint
    if want is not None and (got := tables_fingerprint(tables)) != want:
        raise BundleError(
            f"{path}: the codec tables (fingerprint {got}) are not the ones the manifest was written with ({want})",
            path=str(path),
        )
    return MappingProxyType(tables)


def tables_fingerprint(tables: Mapping[str, HuffmanTables]) -> str:
    """A short hash of every mode's code (name, max_len, lengths): equal fingerprints decode each other's frames."""
    h = hashlib.sha256()
    for name in sorted(tables):
        h.update(name.encode() + b"\0" + tables[name].fingerprint().encode())
    return h.hexdigest()[:16]


def write_codec_tables(path: Path, tables: Mapping[str, HuffmanTables]) -> None:
    """Write ``tables`` (every one with the same ``max_len``) to ``path``."""
    lens = {t.max_len for t in tables.values()}
    if len(lens) != 1:
        raise CodecError(f"codec tables must share one max_len, got {sorted(lens)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[np.generic]] = {MAX_LEN_KEY: np.asarray(lens.pop())}
    arrays.update((k, t.lengths) for k, t in tables.items())
    with path.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
