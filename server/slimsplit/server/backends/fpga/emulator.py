"""The functional fixed-point emulator: a :class:`CompiledTail` quantized and executed in integer arithmetic.

Calibration (:meth:`FixedPointProgram.calibrate`) runs the float reference on sample inputs and gives every tensor
an int16 scale (see :mod:`.fixedpoint` for formats, rounding and saturation). Scales are chosen per operator:

* ReLU, Clip, max/average pooling, global average pooling, nearest resize and reshape keep their input's scale
  (they cannot grow the range), so they are exact integer operations;
* sigmoid and softmax outputs use the fixed scale 1/32767 (their range is [0, 1]);
* every other tensor gets ``headroom * max|x| / 32767`` from the calibration data.

Execution per operator (``q`` = int16 tensor, ``m, sh`` = requantization multiplier and shift):

* Conv / ConvTranspose / Gemm / AFFINE: ``acc = sum q_in * q_w + q_b`` (exact, 48-bit saturating), then
  ``q_out = requantize(acc, m[c], sh[c])`` per output channel with ``r[c] = s_in * s_w[c] / s_out``;
* MatMul (activation x activation) and Mul: ``acc = q_a * q_b`` products/sums, ``r = s_a * s_b / s_out``;
* Add: both operands are rescaled to the output scale in one rounding step:
  ``q_out = sat16(round_shift(q_a * M_a + q_b * M_b, 16))`` with ``M = round(s / s_out * 2**16)``;
* average pools: exact window sums, then ``r = 1 / count`` per output position;
* sigmoid, SiLU, softmax: a lookup-table unit, modelled as the exact function of the dequantized input,
  quantized to the output scale (a table with one entry per int16 input would give the same values).

Constant operands of Add/Mul are int16 with their own scale ``max|c| / 32767``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga import ops
from slimsplit.server.backends.fpga.fixedpoint import (
    INT16_MAX,
    INT16_MIN,
    SatCounter,
    activation_scale,
    quantize,
    quantize_multiplier,
    quantize_weights,
    requantize,
    round_half_away,
    round_shift,
    saturate,
    saturate_acc,
)
from slimsplit.server.backends.fpga.graph_ir import (
    SCALE_PRESERVING,
    CompiledTail,
    Node,
    Op,
    resize_nearest,
    run_float,
    sigmoid,
    softmax,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
ADD_SHIFT = 16
UNIT_SCALE = 1.0 / INT16_MAX  # sigmoid / softmax outputs


@dataclass(frozen=True)
class QNode:
    """One node with its integer parameters."""

    node: Node
    s_out: float
    w: I64 | None = None  # int weights (same layout as the float weights)
    s_w: F64 | None = None  # weight scale per output channel
    b: I64 | None = None  # int bias at the accumulator scale
    m: I64 | None = None  # requantization multiplier(s)
    shift: I64 | None = None
    m_other: I64 | None = None  # Add: multiplier of the second operand
    const: I64 | None = None  # constant operand (int16)
    s_const: float = 0.0
    lo: int = INT16_MIN  # Clip bounds
    hi: int = INT16_MAX


@dataclass(frozen=True)
class EmuResult:
    logits: npt.NDArray[np.float32]
    q_output: I64
    saturated_fraction: float
    saturated: int


@dataclass(frozen=True)
class FixedPointProgram:
    tail: CompiledTail
    weight_bits: int
    scales: Mapping[str, float]
    qnodes: tuple[QNode, ...]
    headroom: float = 1.25
    notes: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ calibration
    @classmethod
    def calibrate(
        cls,
        tail: CompiledTail,
        samples: npt.ArrayLike,
        weight_bits: int = 8,
        headroom: float = 1.25,
        chunk: int = 64,
    ) -> FixedPointProgram:
        """Quantize ``tail`` using the value ranges it shows on ``samples`` [N, *input_shape]."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != len(tail.input_shape) + 1 or tuple(x.shape[1:]) != tuple(tail.input_shape):
            dims = ", ".join(map(str, tail.input_shape))
            raise BackendError(f"{tail.name}: calibration samples have shape {x.shape}, expected [N, {dims}]")
        if x.shape[0] == 0:
            raise BackendError(f"{tail.name}: calibration needs at least one sample")
        max_abs: dict[str, float] = {}
        for start in range(0, x.shape[0], chunk):
            env = run_float(tail, x[start : start + chunk], keep=True)
            for name, value in env.items():
                max_abs[name] = max(max_abs.get(name, 0.0), float(np.max(np.abs(value))) if value.size else 0.0)
        return cls.from_ranges(tail, max_abs, weight_bits, headroom)

    @classmethod
    def from_ranges(
        cls, tail: CompiledTail, max_abs: Mapping[str, float], weight_bits: int = 8, headroom: float = 1.25
    ) -> FixedPointProgram:
        if weight_bits not in (4, 8, 16):
            raise BackendError(f"weight_bits must be 4, 8 or 16, got {weight_bits}")
        scales: dict[str, float] = {tail.input: activation_scale(max_abs.get(tail.input, 0.0), headroom)}
        qnodes: list[QNode] = []
        for node in tail.nodes:
            s_in = [scales[i] for i in node.inputs]
            if node.op in SCALE_PRESERVING:
                s_out = s_in[0]
            elif node.op in (Op.SIGMOID, Op.SOFTMAX):
                s_out = UNIT_SCALE
            else:
                s_out = activation_scale(max_abs.get(node.output, 0.0), headroom)
            scales[node.output] = s_out
            qnodes.append(_quantize_node(node, s_in, s_out, weight_bits))
        return cls(tail=tail, weight_bits=weight_bits, scales=scales, qnodes=tuple(qnodes), headroom=headroom)

    # ------------------------------------------------------------------ execution
    @property
    def input_scale(self) -> float:
        return self.scales[self.tail.input]

    @property
    def output_scale(self) -> float:
        return self.scales[self.tail.output]

    def quantize_input(self, x: npt.ArrayLike, counter: SatCounter | None = None) -> I64:
        return quantize(x, self.input_scale, counter)

    def dequantize_output(self, q: I64) -> npt.NDArray[np.float32]:
        return (np.asarray(q, dtype=np.float64) * self.output_scale).astype(np.float32)

    def run(self, x: npt.ArrayLike) -> EmuResult:
        """Quantize ``x`` [N, *input_shape] (float), run every node in integer arithmetic, dequantize the output."""
        counter = SatCounter()
        arr = np.asarray(x)
        if arr.ndim != len(self.tail.input_shape) + 1 or tuple(arr.shape[1:]) != tuple(self.tail.input_shape):
            raise BackendError(
                f"{self.tail.name}: input of shape {arr.shape} does not match "
                f"[N, {', '.join(map(str, self.tail.input_shape))}]"
            )
        q_out = self.run_int(self.quantize_input(arr, counter), counter)
        return EmuResult(
            logits=self.dequantize_output(q_out),
            q_output=q_out,
            saturated_fraction=counter.fraction,
            saturated=counter.saturated,
        )

    def run_int(self, q_in: I64, counter: SatCounter | None = None) -> I64:
        env: dict[str, I64] = {self.tail.input: np.asarray(q_in, dtype=np.int64)}
        last_use = {name: i for i, qn in enumerate(self.qnodes) for name in qn.node.inputs}
        for i, qn in enumerate(self.qnodes):
            env[qn.node.output] = _run_qnode(qn, [env[n] for n in qn.node.inputs], self.scales, counter)
            for name in qn.node.inputs:
                if last_use.get(name) == i and name != self.tail.output:
                    env.pop(name, None)
        return env[self.tail.output]


# ---------------------------------------------------------------------------------------------- quantization


def _per_channel_requant(s_in: float, s_w: F64, s_out: float) -> tuple[I64, I64]:
    return quantize_multiplier(s_in * s_w / s_out)


def _quantize_node(node: Node, s_in: list[float], s_out: float, weight_bits: int) -> QNode:
    op = node.op
    if op in (Op.CONV, Op.CONV_TRANSPOSE, Op.GEMM, Op.AFFINE):
        assert node.weight is not None
        w = node.weight
        if op is Op.CONV_TRANSPOSE:  # [Cin, Cout/g, kh, kw]: per output channel = per (group, axis 1)
            g = node.attrs.groups
            cin, og = w.shape[0], w.shape[1]
            wt = (
                w.reshape(g, cin // g, og, *w.shape[2:])
                .transpose(0, 2, 1, 3, 4)
                .reshape(g * og, cin // g, *w.shape[2:])
            )
            q_t, s_w = quantize_weights(wt, weight_bits, channel_axis=0)
            q = q_t.reshape(g, og, cin // g, *w.shape[2:]).transpose(0, 2, 1, 3, 4).reshape(w.shape)
        else:
            q, s_w = quantize_weights(w, weight_bits, channel_axis=0)
        for k in (red_len(node),):
            ops.check_exact_reduction(k, node.name)
        bias = node.bias if node.bias is not None else np.zeros(s_w.shape[0])
        b = round_half_away(bias / (s_in[0] * s_w)).astype(np.int64)
        m, sh = _per_channel_requant(s_in[0], s_w, s_out)
        return QNode(node, s_out, w=q, s_w=s_w, b=b, m=m, shift=sh)
    if op is Op.MATMUL:
        m, sh = quantize_multiplier(s_in[0] * s_in[1] / s_out)
        return QNode(node, s_out, m=m, shift=sh)
    if op in (Op.ADD, Op.MUL):
        if node.const is not None:
            c = node.const
            s_c = activation_scale(float(np.max(np.abs(c))) if c.size else 0.0, 1.0)
            q_c = saturate(round_half_away(c / s_c).astype(np.int64))
            s_b = s_c
        else:
            q_c, s_c, s_b = None, 0.0, s_in[1]
        if op is Op.ADD:
            m_a = int(round_half_away(s_in[0] / s_out * (1 << ADD_SHIFT)))
            m_b = int(round_half_away(s_b / s_out * (1 << ADD_SHIFT)))
            return QNode(
                node,
                s_out,
                m=np.asarray(m_a, dtype=np.int64),
                shift=np.asarray(ADD_SHIFT, dtype=np.int64),
                m_other=np.asarray(m_b, dtype=np.int64),
                const=q_c,
                s_const=s_c,
            )
        m, sh = quantize_multiplier(s_in[0] * s_b / s_out)
        return QNode(node, s_out, m=m, shift=sh, const=q_c, s_const=s_c)
    if op is Op.CLIP:
        a = node.attrs
        lo = INT16_MIN if not np.isfinite(a.lo) else int(np.clip(round_half_away(a.lo / s_out), INT16_MIN, INT16_MAX))
        hi = INT16_MAX if not np.isfinite(a.hi) else int(np.clip(round_half_away(a.hi / s_out), INT16_MIN, INT16_MAX))
        return QNode(node, s_out, lo=lo, hi=hi)
    return QNode(node, s_out)


def red_len(node: Node) -> int:
    """Length of the longest dot product of a MAC node (for the exactness check)."""
    assert node.weight is not None
    if node.op is Op.CONV:
        return int(np.prod(node.weight.shape[1:]))
    if node.op is Op.CONV_TRANSPOSE:
        return int(node.weight.shape[0] // node.attrs.groups * np.prod(node.weight.shape[2:]))
    if node.op is Op.GEMM:
        return int(node.weight.shape[1])
    return 1


# ---------------------------------------------------------------------------------------------- execution


def _chan(v: I64, ndim: int, axis: int = 1) -> I64:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _f(x: I64) -> F64:
    return x.astype(np.float64)


def _i(x: F64) -> I64:
    return np.rint(x).astype(np.int64)


def _run_qnode(qn: QNode, args: list[I64], scales: Mapping[str, float], counter: SatCounter | None) -> I64:
    node = qn.node
    a = node.attrs
    x = args[0]
    op = node.op
    if op in (Op.CONV, Op.CONV_TRANSPOSE, Op.GEMM, Op.AFFINE):
        assert qn.w is not None and qn.b is not None and qn.m is not None and qn.shift is not None
        if op is Op.CONV:
            acc = _i(ops.conv2d(_f(x), _f(qn.w), a.stride, a.pads, a.dilation, a.groups))
        elif op is Op.CONV_TRANSPOSE:
            acc = _i(ops.conv_transpose2d(_f(x), _f(qn.w), a.stride, a.pads, a.dilation, a.groups, a.output_padding))
        elif op is Op.GEMM:
            acc = _i(ops.matmul(_f(x), _f(qn.w).T))
        else:
            acc = x * _chan(qn.w, x.ndim)
        axis = x.ndim - 1 if op is Op.GEMM else 1
        acc = saturate_acc(acc + _chan(qn.b, acc.ndim, axis), counter)
        return requantize(acc, _chan(qn.m, acc.ndim, axis), _chan(qn.shift, acc.ndim, axis), counter)
    if op is Op.MATMUL:
        assert qn.m is not None and qn.shift is not None
        acc = saturate_acc(_i(ops.matmul(_f(x), _f(args[1]))), counter)
        return requantize(acc, qn.m, qn.shift, counter)
    if op is Op.ADD:
        assert qn.m is not None and qn.m_other is not None and qn.shift is not None
        other = args[1] if qn.const is None else qn.const[np.newaxis, ...]
        total = x * qn.m + other * qn.m_other
        return saturate(round_shift(total, qn.shift), counter=counter)
    if op is Op.MUL:
        assert qn.m is not None and qn.shift is not None
        other = args[1] if qn.const is None else qn.const[np.newaxis, ...]
        return requantize(x * other, qn.m, qn.shift, counter)
    if op is Op.RELU:
        return np.maximum(x, 0)
    if op is Op.CLIP:
        return np.clip(x, qn.lo, qn.hi).astype(np.int64)
    s_in = scales[node.inputs[0]]
    if op is Op.SIGMOID:
        return quantize(sigmoid(_f(x) * s_in), qn.s_out, counter)
    if op is Op.SILU:
        real = _f(x) * s_in
        return quantize(real * sigmoid(real), qn.s_out, counter)
    if op is Op.SOFTMAX:
        return quantize(softmax(_f(x) * s_in, a.axis), qn.s_out, counter)
    if op is Op.MAXPOOL:
        full = ops.pool_pads(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode)
        padded = ops.pad_nchw(_f(x), full, float(INT16_MIN - 1))
        return _i(ops.windows(padded, a.kernel, a.stride).max(axis=(-1, -2)))
    if op is Op.AVGPOOL:
        full = ops.pool_pads(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode)
        sums = _i(ops.windows(ops.pad_nchw(_f(x), full, 0.0), a.kernel, a.stride).sum(axis=(-1, -2)))
        counts = ops.avgpool_counts(x.shape[2:], a.kernel, a.stride, a.pads, a.ceil_mode, a.count_include_pad)
        m, sh = quantize_multiplier(1.0 / counts)
        return requantize(sums, m, sh, counter)
    if op is Op.GLOBAL_AVGPOOL:
        sums = x.sum(axis=(2, 3), keepdims=a.keepdims)
        m, sh = quantize_multiplier(1.0 / (x.shape[2] * x.shape[3]))
        return requantize(sums, m, sh, counter)
    if op is Op.RESIZE:
        return np.asarray(resize_nearest(x, a), dtype=np.int64)
    if op is Op.RESHAPE:
        return x.reshape((x.shape[0], *a.shape))
    raise BackendError(f"no fixed-point kernel for op {op}")  # pragma: no cover - enum is exhaustive
