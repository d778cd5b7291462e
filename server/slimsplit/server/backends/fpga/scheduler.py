"""The InTAR scheduler and the two fixed baselines.

The schedule is fixed before the circuit is built, from the resource limits and the problem sizes (as in InTAR):
tasks are cut into consecutive segments of the graph's topological order and each segment gets one execution
pattern. A dynamic programme over cut points finds the segmentation with the least modelled latency::

    best[0] = 0
    best[j] = min over i < j, pattern p applicable to tasks[i:j] of
              best[i] + cost(tasks[i:j], p) + (reconfiguration if i > 0)

``sequential`` applies to single tasks, ``dataflow`` to weakly connected groups of two or more, ``task-parallel`` to
groups without internal edges. Because the all-sequential chain is one of the paths of the programme and the
all-dataflow design is evaluated explicitly and compared, the InTAR schedule is never slower than either baseline
(under this model). Segment costs are independent of each other (residency of intermediates is decided once per
graph, see :mod:`.cost`), so the programme is exact for the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.errors import ResourceLimitError
from slimsplit.server.backends.fpga.cost import (
    CostModel,
    SegmentCost,
    TaskTiming,
    dsp_for_macs,
    memory_blocks,
)
from slimsplit.server.backends.fpga.platform import Design
from slimsplit.server.backends.fpga.tasks import TaskGraph

DEFAULT_MAX_GROUP = 12


@dataclass(frozen=True)
class Schedule:
    """A complete schedule of one task graph on one design."""

    name: str  # "intar", "dataflow" or "sequential"
    graph: TaskGraph
    design: Design
    segments: tuple[SegmentCost, ...]
    starts: tuple[int, ...]  # start cycle of each segment
    total_cycles: int
    reconfigurations: int

    @property
    def latency_ms(self) -> float:
        return self.design.cycles_to_ms(self.total_cycles)

    @property
    def offchip_bytes(self) -> int:
        return sum(s.offchip_bytes for s in self.segments)

    @property
    def dsp(self) -> int:
        """DSP slices of the design: the largest MAC allocation of any segment."""
        return dsp_for_macs(max((s.macs_used for s in self.segments), default=0), self.design)

    @property
    def onchip_bytes(self) -> int:
        """Working buffers of the largest segment plus the intermediate pool actually occupied."""
        return max((s.buffer_bytes for s in self.segments), default=0) + self.intermediate_pool_bytes

    @property
    def intermediate_pool_bytes(self) -> int:
        model_resident = self._resident_onchip()
        g = self.graph
        peak = 0
        for k in range(1, len(self.segments)):
            cut = self.segments[k].lo
            live = sum(
                g.tensor_bytes(name)
                for name in model_resident
                if g.producer.get(name, -1) < cut and any(c >= cut for c in g.consumers.get(name, ()))
            )
            peak = max(peak, live)
        return peak

    def _resident_onchip(self) -> list[str]:
        model = CostModel(self.graph, self.design)
        return [name for name, off in model.offchip_resident.items() if not off]

    @property
    def bram36(self) -> int:
        return memory_blocks(self.onchip_bytes, self.design)[0]

    @property
    def uram(self) -> int:
        return memory_blocks(self.onchip_bytes, self.design)[1]

    @property
    def timeline(self) -> tuple[TaskTiming, ...]:
        out: list[TaskTiming] = []
        for k, (seg, s0) in enumerate(zip(self.segments, self.starts, strict=True)):
            for t in seg.timings:
                out.append(
                    TaskTiming(
                        t.index,
                        t.name,
                        t.op,
                        t.pattern,
                        k,
                        s0 + t.start,
                        s0 + t.finish,
                        t.macs,
                        t.sfu_units,
                        t.compute_cycles,
                    )
                )
        return tuple(sorted(out, key=lambda t: t.index))

    def patterns(self) -> dict[str, int]:
        """How many tasks run under each pattern."""
        counts: dict[str, int] = {}
        for seg in self.segments:
            counts[seg.pattern.value] = counts.get(seg.pattern.value, 0) + (seg.hi - seg.lo)
        return counts

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cycles": self.total_cycles,
            "latency_ms": self.latency_ms,
            "offchip_bytes": self.offchip_bytes,
            "dsp": self.dsp,
            "bram36": self.bram36,
            "uram": self.uram,
            "reconfigurations": self.reconfigurations,
            "segments": [
                {
                    "pattern": s.pattern.value,
                    "tasks": [self.graph.tasks[i].name for i in range(s.lo, s.hi)],
                    "start": st,
                    "cycles": s.cycles,
                    "offchip_bytes": s.offchip_bytes,
                    "buffer_bytes": s.buffer_bytes,
                    "spilled": list(s.spilled),
                }
                for s, st in zip(self.segments, self.starts, strict=True)
            ],
        }


def _assemble(name: str, graph: TaskGraph, design: Design, segments: Sequence[SegmentCost]) -> Schedule:
    starts: list[int] = []
    t = 0
    for k, seg in enumerate(segments):
        if k > 0:
            t += design.reconfig_cycles
        starts.append(t)
        t += seg.cycles
    return Schedule(
        name=name,
        graph=graph,
        design=design,
        segments=tuple(segments),
        starts=tuple(starts),
        total_cycles=t,
        reconfigurations=max(0, len(segments) - 1),
    )


def _check_capacity(graph: TaskGraph, design: Design) -> None:
    """Off-chip memory must hold the weights plus every tensor (a conservative upper bound)."""
    need = graph.weight_bytes + sum(t.nbytes for t in graph.tensors.values())
    cap = int(design.platform.offchip.capacity_gib * 2**30)
    if need > cap:
        raise ResourceLimitError(
            f"graph {graph.name!r} needs {need} bytes of off-chip memory but the "
            f"{design.platform.offchip.kind} holds {cap}",
            resource=f"off-chip memory ({design.platform.offchip.kind})",
            requested=need,
            available=cap,
        )


def schedule_sequential(graph: TaskGraph, design: Design, model: CostModel | None = None) -> Schedule:
    """Baseline: every task alone on every core. Raises ResourceLimitError if a task cannot run at all."""
    model = model or CostModel(graph, design)
    segs = [model.sequential(i) for i in range(len(graph))]
    for seg in segs:
        if not seg.feasible:
            raise ResourceLimitError(seg.reason, resource="on-chip memory (BRAM/URAM)")
    return _assemble("sequential", graph, design, segs)


def schedule_dataflow(graph: TaskGraph, design: Design, model: CostModel | None = None) -> Schedule | None:
    """Baseline: the whole graph as one task pipeline; None when it cannot be built (too few MACs)."""
    model = model or CostModel(graph, design)
    if len(graph) == 1:
        seg = model.sequential(0)
        return _assemble("dataflow", graph, design, [seg]) if seg.feasible else None
    seg = model.dataflow(0, len(graph))
    return _assemble("dataflow", graph, design, [seg]) if seg.feasible else None


def schedule_intar(
    graph: TaskGraph, design: Design, model: CostModel | None = None, max_group: int = DEFAULT_MAX_GROUP
) -> Schedule:
    """The InTAR schedule: the cheapest segmentation with one pattern per segment (see the module docstring)."""
    _check_capacity(graph, design)
    model = model or CostModel(graph, design)
    n = len(graph)
    best = [math.inf] * (n + 1)
    choice: list[SegmentCost | None] = [None] * (n + 1)
    best[0] = 0.0
    for j in range(1, n + 1):
        for i in range(max(0, j - max_group), j):
            if best[i] == math.inf:
                continue
            for seg in _candidates(model, i, j):
                if not seg.feasible:
                    continue
                cand = best[i] + seg.cycles + (design.reconfig_cycles if i > 0 else 0)
                if cand < best[j]:
                    best[j] = cand
                    choice[j] = seg
    if best[n] == math.inf:
        reasons = [model.sequential(i).reason for i in range(n) if not model.sequential(i).feasible]
        raise ResourceLimitError(
            reasons[0] if reasons else f"no schedule of {graph.name!r} fits the design",
            resource="on-chip memory (BRAM/URAM)",
        )
    segs: list[SegmentCost] = []
    j = n
    while j > 0:
        picked = choice[j]
        assert picked is not None
        segs.append(picked)
        j = picked.lo
    dp = _assemble("intar", graph, design, list(reversed(segs)))
    whole = schedule_dataflow(graph, design, model)
    if whole is not None and whole.total_cycles < dp.total_cycles:
        return _assemble("intar", graph, design, whole.segments)
    return dp


def _candidates(model: CostModel, i: int, j: int) -> list[SegmentCost]:
    if j - i == 1:
        return [model.sequential(i)]
    out: list[SegmentCost] = []
    if model.connected(i, j):
        out.append(model.dataflow(i, j))
    if model.internal_edges(i, j) == 0:
        out.append(model.task_parallel(i, j))
    return out


@dataclass(frozen=True)
class Comparison:
    """The InTAR schedule beside both baselines for one graph on one design."""

    intar: Schedule
    dataflow: Schedule | None
    sequential: Schedule

    @property
    def speedup_vs_dataflow(self) -> float | None:
        if self.dataflow is None:
            return None
        return self.dataflow.total_cycles / max(1, self.intar.total_cycles)

    @property
    def speedup_vs_sequential(self) -> float:
        return self.sequential.total_cycles / max(1, self.intar.total_cycles)


def compare(graph: TaskGraph, design: Design, max_group: int = DEFAULT_MAX_GROUP, balanced: bool = True) -> Comparison:
    """InTAR and both baselines under one cost model (``balanced``: see :class:`~.cost.CostModel`)."""
    model = CostModel(graph, design, balanced=balanced)
    return Comparison(
        intar=schedule_intar(graph, design, model, max_group=max_group),
        dataflow=schedule_dataflow(graph, design, model),
        sequential=schedule_sequential(graph, design, model),
    )
