"""CompiledTail -> TaskGraph for a batch size (what the scheduler and the cost model see)."""

from __future__ import annotations

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga.graph_ir import CompiledTail, Op
from slimsplit.server.backends.fpga.ops import pool_pads
from slimsplit.server.backends.fpga.tasks import DType, GraphBuilder, TaskGraph, fuse_activations

WEIGHT_DTYPES = {4: DType.INT4, 8: DType.INT8, 16: DType.INT16}


def weight_dtype(bits: int) -> DType:
    try:
        return WEIGHT_DTYPES[bits]
    except KeyError:
        raise BackendError(f"weight bits must be one of {sorted(WEIGHT_DTYPES)}, got {bits}") from None


def to_task_graph(tail: CompiledTail, batch: int = 1, weight_bits: int = 8, fuse: bool = True) -> TaskGraph:
    """One task per operator (reshapes are free views); ReLU/Clip fold into their producer when ``fuse``."""
    if batch < 1:
        raise BackendError(f"batch must be >= 1, got {batch}")
    b = GraphBuilder(tail.name, weight_dtype(weight_bits))
    b.input(tail.input, (batch, *tail.input_shape))
    for node in tail.nodes:
        a = node.attrs
        x = node.inputs[0]
        out_shape = (batch, *tail.shapes[node.output])
        if node.op is Op.CONV:
            assert node.weight is not None
            got = b.conv(node.name, x, node.weight.shape[0], a.kernel, a.stride, a.pads, a.groups, a.dilation)
        elif node.op is Op.CONV_TRANSPOSE:
            assert node.weight is not None
            cout = node.weight.shape[1] * a.groups
            got = b.conv_transpose(node.name, x, cout, a.kernel, a.stride, a.pads, a.output_padding, a.groups)
        elif node.op is Op.GEMM:
            assert node.weight is not None
            got = b.linear(node.name, x, node.weight.shape[0])
        elif node.op is Op.MATMUL:
            got = b.matmul(node.name, x, node.inputs[1])
        elif node.op in (Op.MAXPOOL, Op.AVGPOOL):
            full = pool_pads(b.shape(x)[2:], a.kernel, a.stride, a.pads, a.ceil_mode)  # ceil_mode as extra pad
            got = b.pool(node.name, x, a.kernel, a.stride, full, op=node.op.value)
        elif node.op is Op.GLOBAL_AVGPOOL:
            got = b.global_pool(node.name, x)
            if not a.keepdims:
                got = b.view(f"{node.name}:view", got, out_shape)
        elif node.op is Op.RESIZE:
            _, _, h, w = b.shape(x)
            oh, ow = a.shape
            if oh % h == 0 and ow % w == 0:
                got = b.upsample(node.name, x, (oh // h, ow // w))
            else:  # a general nearest gather: one copy per output element
                got = b.elementwise(node.name, [x], "gather", out_shape)
        elif node.op is Op.RESHAPE:
            got = b.view(node.output, x, out_shape)
        elif node.op in (Op.SIGMOID, Op.SILU, Op.SOFTMAX):
            row = b.shape(x)[a.axis] if node.op is Op.SOFTMAX else None
            got = b.special(node.name, x, node.op.value, row=row)
        else:  # ADD, MUL, AFFINE, RELU, CLIP
            got = b.elementwise(node.name, list(node.inputs), node.op.value, out_shape)
        if b.shape(got) != out_shape:
            raise BackendError(
                f"{tail.name}: task {node.name!r} has shape {b.shape(got)} but the tail says {out_shape}"
            )
        if got != node.output:
            b.view(node.output, got, out_shape)
    graph = b.build([tail.output])
    return fuse_activations(graph) if fuse else graph
