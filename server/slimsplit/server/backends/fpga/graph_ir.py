"""The compiled form of a tail: a short list of operators with float parameters, and its float reference.

The ONNX importer (:mod:`.onnx_import`) produces a :class:`CompiledTail`; the fixed-point emulator quantizes it,
the lowering (:mod:`.lowering`) turns it into a task graph for the scheduler, and :func:`run_float` executes it in
float64 (the reference the fixed-point result is compared with, and the source of calibration ranges).

Shapes in a :class:`CompiledTail` are *per sample* (the batch axis is left out); arrays at run time carry it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga import ops

F64 = npt.NDArray[np.float64]


class Op(StrEnum):
    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    GEMM = "gemm"  # y = x @ W^T + b, W constant [out, in]
    MATMUL = "matmul"  # activation x activation
    ADD = "add"
    MUL = "mul"
    AFFINE = "affine"  # per-channel y = x * scale + shift (an unfused BatchNormalization)
    RELU = "relu"
    CLIP = "clip"
    SIGMOID = "sigmoid"
    SILU = "silu"
    SOFTMAX = "softmax"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    RESIZE = "resize"
    RESHAPE = "reshape"


SCALE_PRESERVING = frozenset({Op.RELU, Op.CLIP, Op.MAXPOOL, Op.RESIZE, Op.RESHAPE, Op.AVGPOOL, Op.GLOBAL_AVGPOOL})


@dataclass(frozen=True)
class Attrs:
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    output_padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False
    axis: int = -1  # softmax (per-sample axis, negative)
    lo: float = float("-inf")  # clip
    hi: float = float("inf")
    keepdims: bool = True  # global average pool
    shape: tuple[int, ...] = ()  # reshape target (per sample) / resize output size (H, W)
    coordinate_mode: str = "asymmetric"
    nearest_mode: str = "floor"


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    attrs: Attrs = field(default_factory=Attrs)
    weight: F64 | None = None  # conv [Cout, Cin/g, kh, kw]; conv_t [Cin, Cout/g, kh, kw]; gemm [out, in]; affine
    bias: F64 | None = None  # per output channel (affine: shift)
    const: F64 | None = None  # constant second operand of add / mul (per-sample broadcastable)


@dataclass(frozen=True)
class CompiledTail:
    name: str
    input: str
    output: str
    nodes: tuple[Node, ...]
    shapes: Mapping[str, tuple[int, ...]]  # per sample, for every tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shapes[self.input]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.output]

    def producers(self) -> dict[str, Node]:
        return {n.output: n for n in self.nodes}


def run_node(node: Node, args: list[F64]) -> F64:
    """Execute one node in float64 (``args`` carry the batch axis)."""
    a = node.attrs
    x = args[0]
    if node.op is Op.CONV:
        assert node.weight is not None
        y = ops.conv2d(x, node.weight, a.stride, a.pads, a.dilation, a.groups)
        return y if node.bias is None else y + node.bias.reshape(1, -1, 1, 1)
    if node.op is Op.CONV_TRANSPOSE:
        assert node.weight is not None
        y = ops.conv_transpose2d(x, node.weight, a.stride, a.pads, a.dilation, a.groups, a.output_padding)
        return y if node.bias is None else y + node.bias.reshape(1, -1, 1, 1)
    if node.op is Op.GEMM:
        assert node.weight is not None
        y = ops.matmul(x, node.weight.T)
        return y if node.bias is None else y + node.bias
    if node.op is Op.MATMUL:
        return ops.matmul(x, args[1])
    if node.op in (Op.ADD, Op.MUL):
        other = args[1] if node.const is None else node.const[np.newaxis, ...]
        return np.asarray(x + other if node.op is Op.ADD else x * other, dtype=np.float64)
    if node.op is Op.AFFINE:
        assert node.weight is not None and node.bias is not None
        bshape = (1, -1) + (1,) * (x.ndim - 2)
        return np.asarray(x * node.weight.reshape(bshape) + node.bias.reshape(bshape), dtype=np.float64)
    if node.op is Op.RELU:
        return np.maximum(x, 0.0)
    if node.op is Op.CLIP:
        return np.clip(x, a.lo, a.hi)
    if node.op is Op.SIGMOID:
        return sigmoid(x)
    if node.op is Op.SILU:
        return x * sigmoid(x)
    if node.op is Op.SOFTMAX:
        return softmax(x, a.axis)
    if node.op is Op.MAXPOOL:
        full = ops.pool_pads(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode)
        return np.asarray(ops.windows(ops.pad_nchw(x, full, -np.inf), a.kernel, a.stride).max(axis=(-1, -2)))
    if node.op is Op.AVGPOOL:
        full = ops.pool_pads(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode)
        sums = ops.windows(ops.pad_nchw(x, full, 0.0), a.kernel, a.stride).sum(axis=(-1, -2))
        counts = ops.avgpool_counts(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode, a.count_include_pad)
        return np.asarray(sums / counts, dtype=np.float64)
    if node.op is Op.GLOBAL_AVGPOOL:
        return np.asarray(x.mean(axis=(2, 3), keepdims=a.keepdims), dtype=np.float64)
    if node.op is Op.RESIZE:
        return resize_nearest(x, a)
    if node.op is Op.RESHAPE:
        return x.reshape((x.shape[0], *a.shape))
    raise BackendError(f"no float kernel for op {node.op}")  # pragma: no cover - enum is exhaustive


def sigmoid(x: F64) -> F64:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def softmax(x: F64, axis: int) -> F64:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=axis, keepdims=True), dtype=np.float64)


def resize_nearest(x: F64 | npt.NDArray[np.int64], a: Attrs) -> npt.NDArray[np.float64]:
    _, _, h, w = x.shape
    oh, ow = a.shape
    rows = ops.nearest_indices(h, oh, oh / h, a.coordinate_mode, a.nearest_mode)
    cols = ops.nearest_indices(w, ow, ow / w, a.coordinate_mode, a.nearest_mode)
    return np.asarray(x[:, :, rows][:, :, :, cols])


def run_float(tail: CompiledTail, x: npt.ArrayLike, keep: bool = False) -> dict[str, F64]:
    """Run the tail in float64. Returns ``{output: logits}``, or every tensor when ``keep`` is true."""
    env: dict[str, F64] = {tail.input: np.asarray(x, dtype=np.float64)}
    last_use = {name: i for i, n in enumerate(tail.nodes) for name in n.inputs}
    for i, node in enumerate(tail.nodes):
        env[node.output] = run_node(node, [env[name] for name in node.inputs])
        if not keep:
            for name in node.inputs:
                if last_use.get(name) == i and name != tail.output:
                    env.pop(name, None)
    return env if keep else {tail.output: env[tail.output]}
