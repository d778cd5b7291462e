"""A tiny but real model bundle for server tests: ONNX files built with ``onnx.helper`` (no torch,
milliseconds).

* ``encoder.onnx``: image [N,3,8,8] + width [1] -> features [N, width, 4, 4] (1x1 conv, 2x2 average pool,
  slice)
* ``tails/w<W>.onnx``: features [N, W, 4, 4] -> logits [N, 10] (flatten, matmul, add)

:meth:`TinyBundle.reference_logits` computes the same tail in numpy, so tests can check predictions exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from slimsplit.bundle import EncoderSpec, FeatureSpec, InputSpec, Manifest, ModeSpec, SplitSpec
from slimsplit.bundle.codec_tables import tables_fingerprint, write_codec_tables
from slimsplit.codec import HuffmanTables, decode_features, encode_features
from slimsplit.codec.bitpack import pack_bits
from slimsplit.codec.header import _parse_fields, _varint
from slimsplit.codec.huffman import byte_contexts, count_bytes
from slimsplit.codec.quantize import quantize

OPSET = 17
IR_VERSION = 8
CLASSES = tuple(f"class{i}" for i in range(10))
FEATURE_H = 4
FEATURE_W = 4
MAX_CHANNELS = 4


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def tail_graph(
    width: int,
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    *,
    height: int = FEATURE_H,
    width_px: int = FEATURE_W,
    batch: str | int = "N",
) -> onnx.GraphProto:
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, width, height, width_px])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, weight.shape[1]])
    nodes = [
        helper.make_node("Flatten", ["features"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")]
    return helper.make_graph(nodes, f"tail_w{width}", [inp], [out], inits)


def encoder_graph(conv: npt.NDArray[np.float32]) -> onnx.GraphProto:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2 * FEATURE_H, 2 * FEATURE_W])
    width = helper.make_tensor_value_info("width", TensorProto.INT64, [1])
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", "C", FEATURE_H, FEATURE_W])
    nodes = [
        helper.make_node("Conv", ["image", "K"], ["c"]),
        helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["p", "zero", "width", "one"], ["features"]),
    ]
    inits = [
        numpy_helper.from_array(conv, "K"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    return helper.make_graph(nodes, "encoder", [image, width], [out], inits)


@dataclass
class TinyBundle:
    root: Path
    manifest: Manifest
    weights: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = field(repr=False)
    tables: dict[str, HuffmanTables] = field(default_factory=dict, repr=False)  # codec tables, when shipped

    def mode(self, name: str) -> ModeSpec:
        return self.manifest.mode(name)

    def features(self, mode: str, seed: int = 0) -> npt.NDArray[np.float32]:
        """Random features of the mode's shape [width, H, W]."""
        spec = self.mode(mode)
        rng = np.random.default_rng(seed)
        return rng.normal(size=(spec.width, FEATURE_H, FEATURE_W)).astype(np.float32)

    def frame(self, mode: str, seed: int = 0) -> bytes:
        """An encoded frame for ``mode``."""
        return encode_features(self.features(mode, seed), self.mode(mode).bits, tables=self.tables.get(mode))

    def reference_logits(self, mode: str, frame: bytes) -> npt.NDArray[np.float32]:
        """What the tail must return for ``frame`` (decoded exactly as the server decodes it)."""
        spec = self.mode(mode)
        x = decode_features(frame, tables=self.tables.get(mode)).array
        w, b = self.weights[spec.width]
        out: npt.NDArray[np.float32] = (x.reshape(1, -1) @ w + b).astype(np.float32)[0]
        return out


def write_tiny_bundle(
    root: Path,
    *,
    name: str = "tiny",
    version: str = "1",
    widths: tuple[int, ...] = (2, 4),
    bits: tuple[int, ...] = (2, 8),
    seed: int = 0,
    codec_tables: bool = False,
) -> TinyBundle:
    """Write a complete bundle to ``root`` (created) and return it with its weights.

    With ``codec_tables`` the bundle ships huffman tables fitted on features like :meth:`TinyBundle.features`.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    weights: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}
    for w in widths:
        weight = rng.normal(size=(w * FEATURE_H * FEATURE_W, len(CLASSES))).astype(np.float32)
        bias = rng.normal(size=(len(CLASSES),)).astype(np.float32)
        weights[w] = (weight, bias)
        _save(tail_graph(w, weight, bias), root / "tails" / f"w{w}.onnx")
    _save(encoder_graph(rng.normal(size=(MAX_CHANNELS, 3, 1, 1)).astype(np.float32)), root / "encoder.onnx")
    manifest = Manifest(
        name=name,
        version=version,
        classes=CLASSES,
        input=InputSpec(height=2 * FEATURE_H, width=2 * FEATURE_W),
        split=SplitSpec(backbone="tiny", head=("conv",), tail=("fc",)),
        feature=FeatureSpec(max_channels=MAX_CHANNELS, height=FEATURE_H, width=FEATURE_W),
        encoder=EncoderSpec(),
        modes=tuple(
            ModeSpec(name=ModeSpec.make_name(w, b), width=w, bits=b, tail=f"tails/w{w}.onnx", accuracy=0.5)
            for w in widths
            for b in bits
        ),
        torch_checkpoint=None,
    )
    tables: dict[str, HuffmanTables] = {}
    if codec_tables:
        fit_rng = np.random.default_rng(seed + 1)
        for m in manifest.modes:
            shape = (m.width, FEATURE_H, FEATURE_W)
            feats = fit_rng.normal(size=(200, *shape)).astype(np.float32)
            packed = [pack_bits(quantize(f, m.bits)[0], m.bits) for f in feats]
            tables[m.name] = HuffmanTables.fit(count_bytes(packed, byte_contexts(shape, m.bits, m.width), m.width))
        write_codec_tables(root / "codec_tables.npz", tables)
        manifest = replace(
            manifest, codec_tables="codec_tables.npz", codec_tables_fingerprint=tables_fingerprint(tables)
        )
    (root / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return TinyBundle(root=root, manifest=manifest, weights=weights, tables=tables)


def rewrite_header(frame: bytes, **changes: Any) -> bytes:
    """Rewrite fields of a version-2 frame header (layout in slimsplit.codec.header) to build lying frames.

    Field names: magic_version, coder_bits, c, h, w, lo, hi, payload_len. The result is written in the
    version-2 layout without any validation (varints may grow when a value does).
    """
    names = ["magic_version", "coder_bits", "c", "h", "w", "lo", "hi", "payload_len"]
    _, coder_bits, c, h, w, lo, hi, payload_len, header_len = _parse_fields(frame)
    fields: list[Any] = [frame[0], coder_bits, c, h, w, lo, hi, payload_len]
    for key, value in changes.items():
        fields[names.index(key)] = value
    mv, cb, c, h, w, lo, hi, n = fields
    return (bytes([mv, cb]) + _varint(c) + _varint(h) + _varint(w) + struct.pack(">ee", lo, hi) + _varint(n)) + frame[
        header_len:
    ]
