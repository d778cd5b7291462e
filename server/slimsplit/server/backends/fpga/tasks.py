"""Task graphs: the units the InTAR scheduler places (one DNN operator, or a fused operator + activation).

Every task is described by the few numbers the cost model needs:

* MAC tasks (convolution, transposed convolution, linear/matmul) are ``parallel`` independent dot products of
  length ``reduction`` (for a convolution: one dot product per output element, of length ``Cin/groups * kh * kw``;
  for a transposed convolution the true MAC count divided by the outputs);
* vector tasks (pooling, upsampling, element-wise, special functions) are ``elements`` outputs with
  ``ops_per_element`` vector operations each;
* every input has an :class:`InputAccess`: how much of it must exist before the task can produce its first output
  when fed by a stream (``lead``, a fraction) and how many bytes a streaming consumer keeps on chip (``window``).

Tensors are int16 activations (InTAR's kernels); weights may be int16, int8 or int4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from slimsplit.errors import BackendError


class DType(StrEnum):
    INT16 = "int16"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        return {"int16": 16, "int8": 8, "int4": 4}[self.value]

    def nbytes(self, count: int) -> int:
        return math.ceil(count * self.bits / 8)


class TaskKind(StrEnum):
    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    LINEAR = "linear"  # activation x weights (Gemm, MatMul with a constant)
    MATMUL = "matmul"  # activation x activation (attention)
    POOL = "pool"
    UPSAMPLE = "upsample"
    ELEMENTWISE = "elementwise"  # relu, clip, add, mul, affine, reshape copies
    SPECIAL = "special"  # sigmoid, silu, gelu, softmax, layer norm, exp

    @property
    def uses_macs(self) -> bool:
        return self in (TaskKind.CONV, TaskKind.CONV_TRANSPOSE, TaskKind.LINEAR, TaskKind.MATMUL)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: DType = DType.INT16

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.elements)


@dataclass(frozen=True)
class InputAccess:
    """How a task reads one input when it is fed by a stream.

    ``lead``: fraction of the input that must have arrived before the first output (0 = element-granular stream,
    1 = the whole tensor, e.g. the ``K`` operand of ``Q K^T``). ``window``: bytes kept on chip to consume the stream
    (line buffer, row buffer, accumulators; the whole tensor when ``lead`` is 1).
    """

    lead: float
    window: int


@dataclass(frozen=True)
class Task:
    name: str
    kind: TaskKind
    op: str
    inputs: tuple[str, ...]
    output: str
    access: tuple[InputAccess, ...]
    parallel: int = 0  # MAC tasks: independent dot products
    reduction: int = 0  # MAC tasks: MACs per dot product
    elements: int = 0  # vector tasks: output elements
    ops_per_element: int = 1  # vector tasks: vector operations per output element
    weight_elements: int = 0
    weight_dtype: DType = DType.INT16
    fused: tuple[str, ...] = ()  # element-wise ops folded into this task's epilogue

    @property
    def macs(self) -> int:
        return self.parallel * self.reduction

    @property
    def vector_ops(self) -> int:
        return self.elements * self.ops_per_element

    @property
    def weight_bytes(self) -> int:
        return self.weight_dtype.nbytes(self.weight_elements)

    @property
    def work(self) -> int:
        """A size measure for allocation: MACs for MAC tasks, vector operations otherwise."""
        return self.macs if self.kind.uses_macs else self.vector_ops


@dataclass(frozen=True)
class TaskGraph:
    """Tasks in a topological order plus the tensors they exchange."""

    name: str
    tasks: tuple[Task, ...]
    tensors: dict[str, Tensor]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    producer: dict[str, int] = field(init=False, repr=False, compare=False)
    consumers: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, t in enumerate(self.tasks):
            for name in (*t.inputs, t.output):
                if name not in self.tensors:
                    raise BackendError(f"task graph {self.name!r}: task {t.name!r} uses unknown tensor {name!r}")
            for name in t.inputs:
                if name not in producer and name not in self.inputs:
                    raise BackendError(
                        f"task graph {self.name!r}: task {t.name!r} reads {name!r} before any task writes it "
                        "(tasks must be in topological order)"
                    )
                consumers.setdefault(name, []).append(i)
            if t.output in producer or t.output in self.inputs:
                raise BackendError(f"task graph {self.name!r}: tensor {t.output!r} is written twice")
            if len(t.access) != len(t.inputs):
                raise BackendError(f"task {t.name!r}: one InputAccess per input is required")
            producer[t.output] = i
        for name in self.outputs:
            if name not in producer and name not in self.inputs:
                raise BackendError(f"task graph {self.name!r}: output {name!r} is never written")
        object.__setattr__(self, "producer", producer)
        object.__setattr__(self, "consumers", {k: tuple(v) for k, v in consumers.items()})

    def __len__(self) -> int:
        return len(self.tasks)

    def tensor_bytes(self, name: str) -> int:
        return self.tensors[name].nbytes

    @property
    def total_macs(self) -> int:
        return sum(t.macs for t in self.tasks)

    @property
    def weight_bytes(self) -> int:
        return sum(t.weight_bytes for t in self.tasks)


# ---------------------------------------------------------------------------------------------- builders


class GraphBuilder:
    """Builds a :class:`TaskGraph` task by task, computing shapes, work and access patterns.

    Shapes are NCHW for feature maps and (rows, features) for matrices; ``batch`` is part of every shape.
    """

    def __init__(self, name: str, weight_dtype: DType = DType.INT16) -> None:
        self.name = name
        self.weight_dtype = weight_dtype
        self._tasks: list[Task] = []
        self._tensors: dict[str, Tensor] = {}
        self._inputs: list[str] = []
        self._views: dict[str, tuple[str, tuple[int, ...]]] = {}

    # -- tensors
    def input(self, name: str, shape: Sequence[int]) -> str:
        self._tensors[name] = Tensor(name, tuple(int(s) for s in shape))
        self._inputs.append(name)
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._views:
            return self._views[name][1]
        return self._tensors[name].shape

    def view(self, name: str, x: str, shape: Sequence[int]) -> str:
        """A reshape: no task, only a new shape for the same bytes."""
        self._views[name] = (self._src(x), tuple(int(s) for s in shape))
        return name

    def _src(self, name: str) -> str:
        return self._views[name][0] if name in self._views else name

    def _add(self, task: Task, out_shape: Sequence[int]) -> str:
        if any(int(s) <= 0 for s in out_shape):
            raise BackendError(f"task {task.name!r} would produce an empty tensor of shape {tuple(out_shape)}")
        self._tensors[task.output] = Tensor(task.output, tuple(int(s) for s in out_shape))
        self._tasks.append(task)
        return task.output

    def _bytes(self, name: str) -> int:
        return self._tensors[self._src(name)].nbytes

    @staticmethod
    def _row_lead(rows: int, height: int) -> float:
        return min(1.0, rows / max(height, 1))

    # -- MAC tasks
    def conv(
        self,
        name: str,
        x: str,
        cout: int,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        groups: int = 1,
        dilation: tuple[int, int] = (1, 1),
        op: str = "conv",
    ) -> str:
        n, cin, h, w = self.shape(x)
        kh, kw = kernel
        eff_h, eff_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
        ho = (h + pads[0] + pads[2] - eff_h) // stride[0] + 1
        wo = (w + pads[1] + pads[3] - eff_w) // stride[1] + 1
        red = (cin // groups) * kh * kw
        window = eff_h * w * cin * 2
        task = Task(
            name=name,
            kind=TaskKind.CONV,
            op=op,
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(InputAccess(lead=self._row_lead(eff_h, h), window=window),),
            parallel=n * cout * ho * wo,
            reduction=red,
            weight_elements=cout * red,
            weight_dtype=self.weight_dtype,
        )
        return self._add(task, (n, cout, ho, wo))

    def conv_transpose(
        self,
        name: str,
        x: str,
        cout: int,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        output_padding: tuple[int, int] = (0, 0),
        groups: int = 1,
    ) -> str:
        n, cin, h, w = self.shape(x)
        kh, kw = kernel
        ho = (h - 1) * stride[0] - pads[0] - pads[2] + kh + output_padding[0]
        wo = (w - 1) * stride[1] - pads[1] - pads[3] + kw + output_padding[1]
        true_macs = n * h * w * cin * (cout // groups) * kh * kw
        parallel = n * cout * ho * wo
        rows = math.ceil(kh / stride[0])
        task = Task(
            name=name,
            kind=TaskKind.CONV_TRANSPOSE,
            op="conv_transpose",
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(InputAccess(lead=self._row_lead(rows, h), window=rows * w * cin * 2),),
            parallel=parallel,
            reduction=max(1, math.ceil(true_macs / parallel)),
            weight_elements=cin * (cout // groups) * kh * kw,
            weight_dtype=self.weight_dtype,
        )
        return self._add(task, (n, cout, ho, wo))

    def linear(self, name: str, x: str, out_features: int) -> str:
        """``y[rows, out] = x[rows, in] @ W^T`` (output-stationary: the input streams along ``in``)."""
        *lead_dims, k = self.shape(x)
        rows = math.prod(lead_dims)
        task = Task(
            name=name,
            kind=TaskKind.LINEAR,
            op="linear",
            inputs=(self._src(x),),
            output=f"{name}:out",
            # One output row needs its whole input row; partial sums of all out_features stay on chip (int32).
            access=(InputAccess(lead=0.0, window=out_features * 4 + k * 2),),
            parallel=rows * out_features,
            reduction=k,
            weight_elements=k * out_features,
            weight_dtype=self.weight_dtype,
        )
        return self._add(task, (*lead_dims, out_features))

    def matmul(self, name: str, a: str, b: str, transpose_b: bool = False) -> str:
        """Activation x activation: ``a`` streams by rows; ``b`` must be complete (held on chip) before use."""
        *lead_a, m, k = self.shape(a)
        *_, kb, nb = self.shape(b)
        if transpose_b:
            kb, nb = nb, kb
        if kb != k:
            raise BackendError(f"matmul {name!r}: inner sizes differ ({k} vs {kb})")
        batch = math.prod(lead_a)
        task = Task(
            name=name,
            kind=TaskKind.MATMUL,
            op="matmul",
            inputs=(self._src(a), self._src(b)),
            output=f"{name}:out",
            access=(
                InputAccess(lead=self._row_lead(1, m), window=k * 2 * 2),
                InputAccess(lead=1.0, window=self._bytes(b)),
            ),
            parallel=batch * m * nb,
            reduction=k,
        )
        return self._add(task, (*lead_a, m, nb))

    # -- vector tasks
    def pool(
        self,
        name: str,
        x: str,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        op: str = "maxpool",
    ) -> str:
        n, c, h, w = self.shape(x)
        ho = (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
        wo = (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
        task = Task(
            name=name,
            kind=TaskKind.POOL,
            op=op,
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(InputAccess(lead=self._row_lead(kernel[0], h), window=kernel[0] * w * c * 2),),
            elements=n * c * ho * wo,
            ops_per_element=kernel[0] * kernel[1],
        )
        return self._add(task, (n, c, ho, wo))

    def global_pool(self, name: str, x: str) -> str:
        n, c, h, w = self.shape(x)
        task = Task(
            name=name,
            kind=TaskKind.POOL,
            op="global_avgpool",
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(InputAccess(lead=0.0, window=c * 4),),  # running sums, one per channel
            elements=n * c * h * w,  # one accumulate per input element
            ops_per_element=1,
        )
        return self._add(task, (n, c, 1, 1))

    def upsample(self, name: str, x: str, scale: tuple[int, int]) -> str:
        n, c, h, w = self.shape(x)
        task = Task(
            name=name,
            kind=TaskKind.UPSAMPLE,
            op="upsample_nearest",
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(InputAccess(lead=self._row_lead(1, h), window=w * c * 2),),
            elements=n * c * h * scale[0] * w * scale[1],
            ops_per_element=1,
        )
        return self._add(task, (n, c, h * scale[0], w * scale[1]))

    def elementwise(self, name: str, inputs: Sequence[str], op: str, out_shape: Sequence[int] | None = None) -> str:
        shape = tuple(out_shape) if out_shape is not None else self.shape(inputs[0])
        task = Task(
            name=name,
            kind=TaskKind.ELEMENTWISE,
            op=op,
            inputs=tuple(self._src(i) for i in inputs),
            output=f"{name}:out",
            access=tuple(InputAccess(lead=0.0, window=64) for _ in inputs),
            elements=math.prod(shape),
            ops_per_element=1,
        )
        return self._add(task, shape)

    def special(self, name: str, x: str, op: str, row: int | None = None) -> str:
        """Special functions on SFUs. ``softmax`` and ``layernorm`` read each row twice (statistics, then
        normalise): three vector operations per element and a row of lead; others are one op per element."""
        shape = self.shape(x)
        row_len = row if row is not None else shape[-1]
        rowwise = op in ("softmax", "layernorm")
        rows_total = math.prod(shape) // max(row_len, 1)
        task = Task(
            name=name,
            kind=TaskKind.SPECIAL,
            op=op,
            inputs=(self._src(x),),
            output=f"{name}:out",
            access=(
                InputAccess(lead=1.0 / rows_total, window=2 * row_len * 2)
                if rowwise
                else InputAccess(lead=0.0, window=64),
            ),
            elements=math.prod(shape),
            ops_per_element=3 if rowwise else 1,
        )
        return self._add(task, shape)

    def build(self, outputs: Iterable[str]) -> TaskGraph:
        return TaskGraph(
            name=self.name,
            tasks=tuple(self._tasks),
            tensors=dict(self._tensors),
            inputs=tuple(self._inputs),
            outputs=tuple(self._src(o) for o in outputs),
        )


# ---------------------------------------------------------------------------------------------- passes

FUSABLE_OPS = frozenset({"relu", "clip", "leaky_relu"})


def fuse_activations(graph: TaskGraph) -> TaskGraph:
    """Fold unary element-wise activations (ReLU, Clip) into the task that produces their input.

    Applies when the activation is the only consumer of that tensor and the tensor is not a graph output: the
    activation then runs in the producer's write-back stage at no extra cycles or traffic. The same pass is applied
    before every schedule (InTAR and both baselines), so it favours none of them.
    """
    tasks = list(graph.tasks)
    alive = [True] * len(tasks)
    owner = {t.output: i for i, t in enumerate(tasks)}
    dropped: set[str] = set()
    for j, act in enumerate(graph.tasks):
        if act.op not in FUSABLE_OPS or len(act.inputs) != 1:
            continue
        src = act.inputs[0]
        if src not in owner or src in graph.outputs or len(graph.consumers.get(src, ())) != 1:
            continue
        host = owner[src]
        tasks[host] = replace(tasks[host], output=act.output, fused=(*tasks[host].fused, act.op))
        owner[act.output] = host
        alive[j] = False
        dropped.add(src)
    return TaskGraph(
        name=graph.name,
        tasks=tuple(t for t, keep in zip(tasks, alive, strict=True) if keep),
        tensors={k: v for k, v in graph.tensors.items() if k not in dropped},
        inputs=graph.inputs,
        outputs=graph.outputs,
    )
