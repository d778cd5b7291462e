"""Cheap structural checks of a bundle's files, so a cut or damaged file is refused when the bundle is opened, on
either side, whatever that side loads later (standard library only; reads a few bytes per file, not the weights).

* ONNX files (encoder, tails, baseline): the top-level fields of the ``onnx.ModelProto`` message are walked as
  protobuf wire format: every field must lie inside the file, and ``ir_version``, ``graph`` and ``opset_import`` must
  be there. A file cut anywhere ends inside a field, or (cut on a field boundary) lacks ``opset_import``, which
  ONNX writers put after the graph.
* Zip archives (codec tables ``.npz``, the torch checkpoint): the end-of-archive directory must be readable and list
  members that lie inside the file; a cut file has lost it.

What the files hold (shapes, weights, tables) is checked by whoever loads them: ONNX Runtime sessions on the edge
(encoder) and the server (tails), :func:`slimsplit.bundle.codec_tables.load_codec_tables`, the torch backend.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

# onnx.ModelProto field numbers (onnx/onnx.proto)
_IR_VERSION = 1
_GRAPH = 7
_OPSET_IMPORT = 8
_REQUIRED = {_IR_VERSION: "ir_version", _GRAPH: "graph", _OPSET_IMPORT: "opset_import"}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FIXED = {_I64: 8, _I32: 4}


def _varint(f: BinaryIO) -> int | None:
    """A protobuf varint at the file's position, or None when the file ends inside it (or it is over 10 bytes)."""
    value = shift = 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    return None


def onnx_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ONNX model file, or None when its top-level structure is whole."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return "the file is empty"
        f.seek(0)
        seen: dict[int, int] = {}
        while (start := f.tell()) < size:
            key = _varint(f)
            if key is None:
                return f"the file ends inside a field key at byte {start} (cut short or not ONNX)"
            number, wire = key >> 3, key & 7
            if number == 0 or wire not in (_VARINT, _I64, _LEN, _I32):
                return f"byte {start} is not a protobuf field (field {number}, wire type {wire}): not an ONNX model"
            if wire == _VARINT:
                if _varint(f) is None:
                    return f"the file ends inside field {number} at byte {start} (cut short)"
                end = f.tell()
            elif wire == _LEN:
                length = _varint(f)
                end = f.tell() + (length if length is not None else size)
            else:
                end = f.tell() + _FIXED[wire]
            if end > size:
                label = _REQUIRED.get(number, f"field {number}")
                return f"cut short: its {label} at byte {start} runs {end - size} bytes past the end of the file"
            f.seek(end)
            seen[number] = wire
    for number, name in _REQUIRED.items():
        if number not in seen:
            return f"no {name} field (cut short, or not an ONNX model)"
        if seen[number] != (_VARINT if number == _IR_VERSION else _LEN):
            return f"the {name} field has the wrong type: not an ONNX model"
    return None


def zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete zip archive (``.npz``, torch checkpoints), or None when it is whole."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"not a complete zip archive ({exc}; cut short or corrupt)"
    if not members:
        return "the archive holds nothing"
    for m in members:
        if m.header_offset + m.compress_size > size:
            return f"member {m.filename} lies past the end of the file (cut short)"
    return None


__all__ = ["onnx_problem", "zip_problem"]
