"""The bundle's learned feature-codec tables: one huffman code per mode, read and written as ``.npz``.

File layout (``numpy.savez``, no pickled objects): ``max_len`` (int scalar, the longest code) and one uint8
array ``[width, 256]`` of code lengths per mode, named by the mode (``w4b2``). A mode without an array has no
learned code (the export leaves out modes where the code does not pay for its decode time); its frames use the
table-free coders. Unlike the rest of
``slimsplit.bundle`` this module needs numpy (the edge has it anyway).

Loading reads nothing it has not bounded first: each member's name must be ``max_len`` or a mode's, its ``.npy``
header (read with :mod:`numpy.lib.format`, at most :data:`~slimsplit.bundle.limits.MAX_NPY_HEADER_BYTES`) must
give exactly that member's dtype and shape, and its uncompressed size in the zip must be that header plus those
bytes; only then is the array read. So a small file that unpacks to a huge array is refused before it is unpacked.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import limits
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
    expected: dict[str, _Member] = {m.name: ((m.width, ALPHABET), _UINT8) for m in bundle.manifest.modes}
    expected[MAX_LEN_KEY] = ((), _INT_DTYPES)
    cap = limits.codec_tables_max_bytes(m.width for m in bundle.manifest.modes)
    try:
        if (size := path.stat().st_size) > cap:
            raise BundleError(f"{path}: the codec tables are {size} bytes, more than the {cap} its modes take")
        arrays = _read_members(path, expected)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        # NotImplementedError: an unknown compression method; RuntimeError: an encrypted member
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


_UINT8: frozenset[np.dtype[Any]] = frozenset({np.dtype(np.uint8)})
_INT_DTYPES: frozenset[np.dtype[Any]] = frozenset(
    np.dtype(f"{order}{kind}{size}") for order in "<>" for kind in "iu" for size in (1, 2, 4, 8)
)


def _cut(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:37]}..."


_Member = tuple[tuple[int, ...], frozenset[np.dtype[Any]]]  # shape, the dtypes allowed


def _read_members(path: Path, expected: Mapping[str, _Member]) -> dict[str, npt.NDArray[Any]]:
    """Every member of the ``.npz`` at ``path``, each read only after its name, ``.npy`` header (dtype, shape) and
    uncompressed size agree with ``expected`` (member name without ``.npy`` -> shape, allowed dtypes)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        names = [info.filename.removesuffix(".npy") for info in members]
        unknown = [info.filename for info in members if info.filename.removesuffix(".npy") not in expected]
        unknown += [info.filename for info in members if not info.filename.endswith(".npy")]
        if unknown:
            shown = sorted({_cut(n) for n in unknown})[:8]
            raise BundleError(
                f"{path}: tables for unknown modes {shown} (members are '{MAX_LEN_KEY}.npy' and '<mode>.npy')",
                path=str(path),
            )
        if len(set(names)) != len(names):
            raise BundleError(f"{path}: a member appears twice", path=str(path))
        for key, info in zip(names, members, strict=True):
            shape, dtypes = expected[key]
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(f, max_header_size=limits.MAX_NPY_HEADER_BYTES)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(f, max_header_size=limits.MAX_NPY_HEADER_BYTES)
                else:
                    raise BundleError(f"{path}: member {info.filename}: unsupported .npy version {version}")
                got_shape, _fortran, dtype = header
                if tuple(got_shape) != shape or dtype not in dtypes:
                    want = "an integer" if len(dtypes) > 1 else str(next(iter(dtypes)))
                    raise BundleError(
                        f"{path}: member {info.filename} holds {dtype} {tuple(got_shape)}, expected {want} {shape}"
                        " (refused before reading it)",
                        path=str(path),
                        mode=key,
                    )
                size = f.tell() + dtype.itemsize * math.prod(shape)
                if info.file_size != size:
                    raise BundleError(
                        f"{path}: member {info.filename} unpacks to {info.file_size} bytes, but its header says "
                        f"{size} (refused before reading it)",
                        path=str(path),
                    )
            with archive.open(info) as f:
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


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
