"""ONNX tail -> :class:`~.graph_ir.CompiledTail`.

Supported operators: Conv (stride/pads/dilations/groups, depthwise included), ConvTranspose, BatchNormalization
(folded into the Conv/ConvTranspose/Gemm before it when that is its only consumer, otherwise a per-channel affine),
Relu, Clip (ReLU6), Add, Sub, Mul, Div, MaxPool, AveragePool, GlobalAveragePool, ReduceMean over H and W, Resize and
Upsample (nearest), Flatten, Reshape, Gemm, MatMul, Sigmoid, SiLU (``x * Sigmoid(x)``) and Softmax; plus the
bookkeeping ops Identity, Dropout, Constant, Cast, and Shape/Gather/Unsqueeze/Squeeze/Concat/Slice when they only
compute shapes (folded to constants). Anything else raises :class:`~slimsplit.errors.BackendError` naming every
unsupported operator.

The importer runs a float probe of batch 1 through each node as it is added, which gives every tensor's shape and
lets shape sub-graphs fold to constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga.graph_ir import F64, Attrs, CompiledTail, Node, Op, run_node

SUPPORTED = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "Relu",
        "Clip",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "Resize",
        "Upsample",
        "Flatten",
        "Reshape",
        "Gemm",
        "MatMul",
        "Sigmoid",
        "Softmax",
        "Identity",
        "Dropout",
        "Constant",
        "Cast",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
    }
)

BATCH_SENTINEL = 7919  # stands for the batch size while shape sub-graphs are folded


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Importer:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.name = name
        self.consts: dict[str, npt.NDArray[Any]] = {}
        self.probe: dict[str, F64] = {}  # batch-1 float values of activations
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}
        self.consumers: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        for out in model.graph.output:
            self.consumers[out.name] = self.consumers.get(out.name, 0) + 1

    # -- environment
    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name: str) -> bool:
        return self.resolve(name) in self.consts

    def const(self, name: str, node: onnx.NodeProto) -> npt.NDArray[Any]:
        real = self.resolve(name)
        if real not in self.consts:
            raise BackendError(f"{self.name}: node {node.name or node.op_type!r} needs a constant for input {name!r}")
        return self.consts[real]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.probe[self.resolve(name)].shape[1:])

    def add(self, node: Node) -> None:
        inputs = tuple(self.resolve(i) for i in node.inputs)
        node = replace(node, inputs=inputs)
        self.probe[node.output] = run_node(node, [self.probe[i] for i in inputs])
        self.nodes.append(node)

    def replace_node(self, output: str, new: Node) -> None:
        for k, n in enumerate(self.nodes):
            if n.output == output:
                self.nodes[k] = new
                self.probe.pop(output, None)
                self.probe[new.output] = run_node(new, [self.probe[i] for i in new.inputs])
                return
        raise BackendError(f"{self.name}: internal error, no node writes {output!r}")  # pragma: no cover

    def producer(self, name: str) -> Node | None:
        real = self.resolve(name)
        for n in self.nodes:
            if n.output == real:
                return n
        return None

    # -- entry
    def run(self) -> CompiledTail:
        g = self.model.graph
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        unsupported = sorted(
            {n.op_type for n in g.node if n.op_type not in SUPPORTED or n.domain not in ("", "ai.onnx")}
        )
        if unsupported:
            names = [n.name or n.op_type for n in g.node if n.op_type in unsupported][:5]
            raise BackendError(
                f"{self.name}: the FPGA backend does not support ONNX operator(s) {', '.join(unsupported)} "
                f"(first nodes: {', '.join(names)}); supported: {', '.join(sorted(SUPPORTED))}",
                ops=unsupported,
            )
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1 or len(g.output) != 1:
            raise BackendError(
                f"{self.name}: a tail must have exactly one input and one output, got "
                f"{[i.name for i in inputs]} -> {[o.name for o in g.output]}"
            )
        inp = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        if len(dims) < 2 or any(d <= 0 for d in dims[1:]):
            raise BackendError(f"{self.name}: input {inp.name!r} needs static per-sample dims, got {dims}")
        rng = np.random.default_rng(0)
        self.probe[inp.name] = rng.standard_normal((1, *dims[1:]))
        for node in g.node:
            self.visit(node)
        out = self.resolve(g.output[0].name)
        if out in self.consts or out not in self.probe:
            raise BackendError(f"{self.name}: output {g.output[0].name!r} does not depend on the input")
        if out == inp.name:
            raise BackendError(f"{self.name}: the tail is empty (output is the input)")
        shapes = {name: tuple(v.shape[1:]) for name, v in self.probe.items()}
        return CompiledTail(self.name, inp.name, out, tuple(self.nodes), shapes)

    # -- one node
    def visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        ins = list(node.input)
        out = node.output[0]
        name = node.name or f"{op}_{out}"
        if op == "Constant":
            value = _attr(node, "value")
            if value is None:
                raise BackendError(f"{self.name}: Constant node {name!r} without a tensor 'value' is not supported")
            self.consts[out] = numpy_helper.to_array(value)
            return
        if op in ("Identity", "Dropout", "Cast"):
            if op == "Cast" and not self.is_const(ins[0]):
                to = _attr(node, "to")
                if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                    raise BackendError(f"{self.name}: Cast {name!r} of an activation to a non-float type")
            if self.is_const(ins[0]):
                arr = self.const(ins[0], node)
                if op == "Cast":
                    arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
                self.consts[out] = arr
            else:
                self.alias[out] = self.resolve(ins[0])
            return
        if all(self.is_const(i) for i in ins if i) and op not in ("Shape",):
            self.consts[out] = self.fold(node)
            return
        if op == "Shape":
            shape = (BATCH_SENTINEL, *self.shape(ins[0]))
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            self.consts[out] = np.asarray(shape[start:end], dtype=np.int64)
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise BackendError(f"{self.name}: operator {op} ({name!r}) only works on constants here")
        handler(node, name, ins, out)

    def fold(self, node: onnx.NodeProto) -> npt.NDArray[Any]:
        """Evaluate a node whose inputs are all constants (shape arithmetic)."""
        op = node.op_type
        args = [self.const(i, node) if i else None for i in node.input]
        a0 = args[0]
        assert a0 is not None
        if op == "Gather":
            return np.take(a0, np.asarray(args[1], dtype=np.int64), axis=int(_attr(node, "axis", 0)))
        if op == "Unsqueeze":
            axes = _attr(node, "axes") if len(args) < 2 else [int(v) for v in np.asarray(args[1]).ravel()]
            out = a0
            for ax in sorted(int(v) if v >= 0 else int(v) + a0.ndim + len(axes) for v in axes):
                out = np.expand_dims(out, ax)
            return out
        if op == "Squeeze":
            axes = _attr(node, "axes") if len(args) < 2 else [int(v) for v in np.asarray(args[1]).ravel()]
            return np.squeeze(a0, axis=tuple(axes) if axes else None)
        if op == "Concat":
            return np.concatenate([a for a in args if a is not None], axis=int(_attr(node, "axis", 0)))
        if op == "Slice":
            starts, ends = np.asarray(args[1]).ravel(), np.asarray(args[2]).ravel()
            axes = np.asarray(args[3]).ravel() if len(args) > 3 and args[3] is not None else np.arange(len(starts))
            steps = np.asarray(args[4]).ravel() if len(args) > 4 and args[4] is not None else np.ones(len(starts))
            sl = [slice(None)] * a0.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                sl[int(ax)] = slice(int(s), int(e), int(st))
            return a0[tuple(sl)]
        binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
        if op in binary and args[1] is not None:
            if op == "Div" and np.issubdtype(a0.dtype, np.integer):
                return np.asarray(np.floor_divide(a0, args[1]))
            return np.asarray(binary[op](a0, args[1]))
        if op == "Reshape" and args[1] is not None:
            return a0.reshape([int(v) for v in np.asarray(args[1]).ravel()])
        raise BackendError(f"{self.name}: cannot fold constant {op} node {node.name!r}")

    # -- operators on activations
    def _conv_common(self, node: onnx.NodeProto, name: str, kernel: tuple[int, int]) -> Attrs:
        strides = tuple(_attr(node, "strides", [1, 1]))
        dil = tuple(_attr(node, "dilations", [1, 1]))
        pads = tuple(_attr(node, "pads", [0, 0, 0, 0]))
        auto = _text(_attr(node, "auto_pad", "NOTSET"))
        if len(kernel) != 2 or len(strides) != 2:
            raise BackendError(f"{self.name}: {node.op_type} {name!r}: only 2-D convolutions are supported")
        if auto in ("SAME_UPPER", "SAME_LOWER") and node.op_type == "Conv":
            h, w = self.shape(node.input[0])[1:]
            ps = []
            for size, k, s, d in zip((h, w), kernel, strides, dil, strict=True):
                total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
                ps.append(
                    (total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2)
                )
            pads = (ps[0][0], ps[1][0], ps[0][1], ps[1][1])
        elif auto not in ("NOTSET", "VALID"):
            raise BackendError(f"{self.name}: {node.op_type} {name!r}: auto_pad={auto} is not supported")
        elif auto == "VALID":
            pads = (0, 0, 0, 0)
        return Attrs(
            kernel=(int(kernel[0]), int(kernel[1])),
            stride=(int(strides[0]), int(strides[1])),
            pads=(int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])),
            dilation=(int(dil[0]), int(dil[1])),
            groups=int(_attr(node, "group", 1)),
        )

    def op_Conv(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        w = self.const(ins[1], node).astype(np.float64)
        b = self.const(ins[2], node).astype(np.float64) if len(ins) > 2 and ins[2] else None
        if w.ndim != 4:
            raise BackendError(f"{self.name}: Conv {name!r}: only 2-D convolutions (4-D weights) are supported")
        attrs = self._conv_common(node, name, (w.shape[2], w.shape[3]))
        self.add(Node(name, Op.CONV, (ins[0],), out, attrs, weight=w, bias=b))

    def op_ConvTranspose(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        w = self.const(ins[1], node).astype(np.float64)
        b = self.const(ins[2], node).astype(np.float64) if len(ins) > 2 and ins[2] else None
        if w.ndim != 4:
            raise BackendError(f"{self.name}: ConvTranspose {name!r}: only 2-D is supported")
        if _attr(node, "output_shape") is not None:
            raise BackendError(f"{self.name}: ConvTranspose {name!r}: output_shape is not supported, use pads")
        attrs = self._conv_common(node, name, (w.shape[2], w.shape[3]))
        op_pad = tuple(_attr(node, "output_padding", [0, 0]))
        attrs = replace(attrs, output_padding=(int(op_pad[0]), int(op_pad[1])))
        self.add(Node(name, Op.CONV_TRANSPOSE, (ins[0],), out, attrs, weight=w, bias=b))

    def op_BatchNormalization(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        gamma, beta, mean, var = (self.const(i, node).astype(np.float64) for i in ins[1:5])
        eps = float(_attr(node, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        prev = self.producer(ins[0])
        if (
            prev is not None
            and prev.op in (Op.CONV, Op.CONV_TRANSPOSE, Op.GEMM)
            and self.consumers.get(ins[0], 0) == 1
            and prev.output == self.resolve(ins[0])
        ):
            assert prev.weight is not None
            w = prev.weight
            if prev.op is Op.CONV_TRANSPOSE:  # [Cin, Cout/g, kh, kw]: output channels on axis 1 per group
                g = prev.attrs.groups
                cin, og = w.shape[0], w.shape[1]
                wg = w.reshape(g, cin // g, og, *w.shape[2:]) * scale.reshape(g, 1, og, 1, 1)
                new_w = wg.reshape(w.shape)
            elif prev.op is Op.CONV:
                new_w = w * scale.reshape(-1, 1, 1, 1)
            else:
                new_w = w * scale.reshape(-1, 1)
            bias = prev.bias if prev.bias is not None else np.zeros_like(scale)
            new = replace(prev, name=f"{prev.name}+bn", output=out, weight=new_w, bias=bias * scale + shift)
            self.replace_node(prev.output, new)
            return
        self.add(Node(name, Op.AFFINE, (ins[0],), out, weight=scale, bias=shift))

    def op_Relu(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self.add(Node(name, Op.RELU, (ins[0],), out))

    def op_Clip(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        lo = _attr(node, "min", float("-inf"))
        hi = _attr(node, "max", float("inf"))
        if len(ins) > 1 and ins[1]:
            lo = float(self.const(ins[1], node))
        if len(ins) > 2 and ins[2]:
            hi = float(self.const(ins[2], node))
        self.add(Node(name, Op.CLIP, (ins[0],), out, Attrs(lo=float(lo), hi=float(hi))))

    def _binary(self, node: onnx.NodeProto, name: str, ins: list[str], out: str, op: Op, invert: bool) -> None:
        a, b = ins[0], ins[1]
        if self.is_const(a) and not self.is_const(b):
            if invert:  # c - x  or  c / x
                raise BackendError(f"{self.name}: {node.op_type} {name!r} with a constant left operand")
            a, b = b, a
        if self.is_const(b):
            c = self.const(b, node).astype(np.float64)
            if invert:
                c = -c if op is Op.ADD else 1.0 / c
            xs = self.shape(a)
            if c.ndim > len(xs) + 1 or (c.ndim == len(xs) + 1 and c.shape[0] != 1):
                raise BackendError(f"{self.name}: {node.op_type} {name!r}: constant {c.shape} broadcasts over batch")
            if c.ndim == len(xs) + 1:
                c = c[0]
            self.add(Node(name, op, (a,), out, const=np.asarray(c, dtype=np.float64)))
            return
        if invert:
            raise BackendError(f"{self.name}: {node.op_type} {name!r} of two activations is not supported")
        if op is Op.MUL and self._fuse_silu(a, b, out, name):
            return
        self.add(Node(name, op, (a, b), out))

    def _fuse_silu(self, a: str, b: str, out: str, name: str) -> bool:
        for x, s in ((a, b), (b, a)):
            sig = self.producer(s)
            if (
                sig is not None
                and sig.op is Op.SIGMOID
                and sig.inputs[0] == self.resolve(x)
                and self.consumers.get(s, 0) == 1
            ):
                self.replace_node(sig.output, Node(f"{name}:silu", Op.SILU, sig.inputs, out))
                return True
        return False

    def op_Add(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._binary(node, name, ins, out, Op.ADD, invert=False)

    def op_Sub(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._binary(node, name, ins, out, Op.ADD, invert=True)

    def op_Mul(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._binary(node, name, ins, out, Op.MUL, invert=False)

    def op_Div(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._binary(node, name, ins, out, Op.MUL, invert=True)

    def _pool(self, node: onnx.NodeProto, name: str, ins: list[str], out: str, op: Op) -> None:
        kernel = tuple(_attr(node, "kernel_shape"))
        if len(kernel) != 2:
            raise BackendError(f"{self.name}: {node.op_type} {name!r}: only 2-D pooling is supported")
        if op is Op.MAXPOOL and (len(node.output) > 1 and node.output[1]):
            raise BackendError(f"{self.name}: MaxPool {name!r}: the Indices output is not supported")
        attrs = self._conv_common(node, name, (int(kernel[0]), int(kernel[1])))
        if attrs.dilation != (1, 1):
            raise BackendError(f"{self.name}: {node.op_type} {name!r}: dilated pooling is not supported")
        attrs = replace(
            attrs,
            ceil_mode=bool(_attr(node, "ceil_mode", 0)),
            count_include_pad=bool(_attr(node, "count_include_pad", 0)),
        )
        self.add(Node(name, op, (ins[0],), out, attrs))

    def op_MaxPool(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._pool(node, name, ins, out, Op.MAXPOOL)

    def op_AveragePool(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self._pool(node, name, ins, out, Op.AVGPOOL)

    def op_GlobalAveragePool(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        if len(self.shape(ins[0])) != 3:
            raise BackendError(f"{self.name}: GlobalAveragePool {name!r} needs NCHW input")
        self.add(Node(name, Op.GLOBAL_AVGPOOL, (ins[0],), out, Attrs(keepdims=True)))

    def op_ReduceMean(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        axes = _attr(node, "axes")
        if len(ins) > 1 and ins[1]:
            axes = [int(v) for v in self.const(ins[1], node).ravel()]
        rank = len(self.shape(ins[0])) + 1
        norm = sorted(int(a) % rank for a in (axes or []))
        if rank != 4 or norm != [2, 3]:
            raise BackendError(f"{self.name}: ReduceMean {name!r}: only the mean over H and W of NCHW is supported")
        keep = bool(_attr(node, "keepdims", 1))
        self.add(Node(name, Op.GLOBAL_AVGPOOL, (ins[0],), out, Attrs(keepdims=keep)))

    def _resize(self, node: onnx.NodeProto, name: str, x: str, scales: Sequence[float] | None, sizes: Any) -> None:
        shape = self.shape(x)
        if len(shape) != 3:
            raise BackendError(f"{self.name}: {node.op_type} {name!r} needs NCHW input")
        if sizes is not None:
            sz = [int(v) for v in np.asarray(sizes).ravel()]
            if len(sz) != 4 or sz[1] != shape[0] or sz[0] != BATCH_SENTINEL:
                raise BackendError(
                    f"{self.name}: {node.op_type} {name!r}: sizes {sz} must keep N (taken from Shape) and C; "
                    "only H and W may be resized"
                )
            oh, ow = sz[2], sz[3]
        else:
            sc = [float(v) for v in (scales or [])]
            if len(sc) != 4 or sc[0] != 1.0 or sc[1] != 1.0:
                raise BackendError(f"{self.name}: {node.op_type} {name!r}: only H and W may be scaled, got {sc}")
            oh, ow = int(np.floor(shape[1] * sc[2])), int(np.floor(shape[2] * sc[3]))
        mode = _text(_attr(node, "mode", "nearest"))
        if mode != "nearest":
            raise BackendError(f"{self.name}: {node.op_type} {name!r}: mode {mode!r} is not supported (nearest only)")
        coord = _text(
            _attr(node, "coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample" else "half_pixel")
        )
        nearest = _text(_attr(node, "nearest_mode", "floor" if node.op_type == "Upsample" else "round_prefer_floor"))
        attrs = Attrs(shape=(oh, ow), coordinate_mode=coord, nearest_mode=nearest)
        self.add(Node(name, Op.RESIZE, (x,), out_name(node), attrs))

    def op_Resize(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        scales = self.const(ins[2], node) if len(ins) > 2 and ins[2] else None
        sizes = self.const(ins[3], node) if len(ins) > 3 and ins[3] else None
        if scales is not None and scales.size == 0:
            scales = None
        self._resize(node, name, ins[0], None if scales is None else list(scales.ravel()), sizes)

    def op_Upsample(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        scales = self.const(ins[1], node) if len(ins) > 1 else np.asarray(_attr(node, "scales"))
        self._resize(node, name, ins[0], list(np.asarray(scales).ravel()), None)

    def op_Flatten(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        axis = int(_attr(node, "axis", 1))
        if axis != 1:
            raise BackendError(f"{self.name}: Flatten {name!r}: only axis=1 is supported")
        self.add(Node(name, Op.RESHAPE, (ins[0],), out, Attrs(shape=(int(np.prod(self.shape(ins[0])) or 1),))))

    def op_Reshape(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        target = [int(v) for v in self.const(ins[1], node).ravel()]
        per = self.shape(ins[0])
        if not target or target[0] not in (BATCH_SENTINEL, -1, 0, 1):
            raise BackendError(f"{self.name}: Reshape {name!r} to {target} mixes the batch axis with others")
        # ONNX: 0 copies the input's dimension at the same position (target[k] <-> per-sample dim k - 1)
        rest = [per[k] if v == 0 and k < len(per) else v for k, v in enumerate(target[1:])]
        rest = [-1 if v == BATCH_SENTINEL else v for v in rest]
        try:
            shape = np.empty((1, *per)).reshape((1, *rest)).shape[1:]
        except ValueError as exc:
            raise BackendError(f"{self.name}: Reshape {name!r} of {per} to {target}: {exc}") from exc
        self.add(Node(name, Op.RESHAPE, (ins[0],), out, Attrs(shape=tuple(int(s) for s in shape))))

    def op_Gemm(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        if _attr(node, "transA", 0):
            raise BackendError(f"{self.name}: Gemm {name!r} with transA=1 is not supported")
        if len(self.shape(ins[0])) != 1:
            raise BackendError(f"{self.name}: Gemm {name!r} needs a 2-D input [N, K]")
        w = self.const(ins[1], node).astype(np.float64)
        w = w if _attr(node, "transB", 0) else w.T  # -> [out, in]
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        bias = None
        if len(ins) > 2 and ins[2]:
            c = self.const(ins[2], node).astype(np.float64)
            if c.ndim == 2 and c.shape[0] != 1:
                raise BackendError(f"{self.name}: Gemm {name!r}: bias C must not depend on the row")
            bias = beta * np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
        self.add(Node(name, Op.GEMM, (ins[0],), out, weight=alpha * w, bias=bias))

    def op_MatMul(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        if self.is_const(ins[0]):
            raise BackendError(f"{self.name}: MatMul {name!r} with a constant left operand is not supported")
        if self.is_const(ins[1]):
            w = self.const(ins[1], node).astype(np.float64)
            if w.ndim != 2:
                raise BackendError(f"{self.name}: MatMul {name!r}: constant operand must be 2-D")
            self.add(Node(name, Op.GEMM, (ins[0],), out, weight=w.T.copy()))
            return
        self.add(Node(name, Op.MATMUL, (ins[0], ins[1]), out))

    def op_Sigmoid(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        self.add(Node(name, Op.SIGMOID, (ins[0],), out))

    def op_Softmax(self, node: onnx.NodeProto, name: str, ins: list[str], out: str) -> None:
        rank = len(self.shape(ins[0])) + 1
        opset = max((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        axis = int(_attr(node, "axis", -1 if opset >= 13 else 1))
        axis = axis % rank
        if axis == 0:
            raise BackendError(f"{self.name}: Softmax {name!r} over the batch axis is not supported")
        if opset < 13 and axis != rank - 1:
            raise BackendError(f"{self.name}: Softmax {name!r} (opset < 13) must be over the last axis")
        self.add(Node(name, Op.SOFTMAX, (ins[0],), out, Attrs(axis=axis - rank)))


def out_name(node: onnx.NodeProto) -> str:
    return node.output[0]


def compile_onnx(source: Path | str | onnx.ModelProto, name: str | None = None) -> CompiledTail:
    """Read an ONNX tail (path or model) into a :class:`CompiledTail`; raises BackendError on anything unsupported."""
    if isinstance(source, onnx.ModelProto):
        model = source
        label = name or model.graph.name or "tail"
    else:
        path = Path(source)
        if not path.is_file():
            raise BackendError(f"tail file {path} does not exist")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise BackendError(f"{path}: not a readable ONNX model: {exc}") from exc
        label = name or path.stem
    return _Importer(model, label).run()
