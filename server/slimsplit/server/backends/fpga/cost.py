"""The cost model: cycles, off-chip traffic and on-chip buffers of a task group under one execution pattern.

Notation (all per run of the graph, i.e. per batch):

* ``d3`` = vector width of a dot-product lane (16), ``m`` = MAC units given to a task, ``P``/``R`` = a MAC task's
  independent dot products and their length, ``E``/``k`` = a vector task's output elements and operations each,
  ``V`` = SFU vector width (= ``d3``), ``B`` = off-chip bytes per cycle of the design, ``L`` = first-beat latency of
  off-chip memory in cycles, ``D`` = pipeline depth of a core in cycles.

Execution patterns (InTAR's vocabulary):

* **sequential** — one task at a time on every compute core (all ``m`` MACs / all SFUs); its inputs come from and
  its outputs go to the on-chip intermediate pool or off-chip memory.
* **dataflow** — a group of consecutive tasks runs as a task pipeline: the MACs are split among the group's tasks in
  proportion to their work and tensors between them stream through on-chip FIFOs/line buffers.
* **task-parallel** — a group of mutually independent tasks runs side by side on disjoint cores.

Assumptions, stated once:

1. Every unit has initiation interval 1; a lane of width ``w`` retires ``w`` MACs per cycle; lanes are at most
   ``d3`` wide and each task's lane width is picked for its shape (see :func:`mac_cycles`).
2. MAC tasks are compute-bound on chip (operand reuse inside the PE array is enough); off-chip transfers are
   double-buffered and overlap compute, so a segment takes ``max(compute, transfer)`` plus fill latencies.
3. Weights are read from off-chip memory once per run (never cached across runs) through a double-buffered tile.
4. Intermediates crossing a segment boundary stay in the on-chip pool when they fit next to the tensors still live
   (decided once, in graph order, independent of the schedule); otherwise they make an off-chip round trip.
   Graph inputs are read from and graph outputs written to off-chip memory.
5. The dataflow allocation is *ideal*: MACs split in proportion to work, then rebalanced towards the slowest stage.
   Real dataflow designs are rarely this balanced, so modelled speedups over dataflow are conservative.
6. A stage of a pipeline may start when the ``lead`` fraction of each streamed input exists (see
   :class:`~slimsplit.server.backends.fpga.tasks.InputAccess`) and cannot finish before its producers.
7. Switching between execution patterns (segments) costs ``reconfig_ns`` (InTAR: 10-20 ns).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from slimsplit.server.backends.fpga.platform import Design
from slimsplit.server.backends.fpga.tasks import InputAccess, Task, TaskGraph

SPILL_TILE_BYTES = 64 * 1024  # on-chip tile of a spilled whole-tensor operand (double-buffered 32 KB)
Edge = tuple[int, int, str, InputAccess]  # producer index, consumer index, tensor, consumer's access
UnitCost = Callable[[int, int], int]  # (task index, allocation units) -> cycles


class Pattern(StrEnum):
    SEQUENTIAL = "sequential"
    DATAFLOW = "dataflow"
    TASK_PARALLEL = "task-parallel"


# ---------------------------------------------------------------------------------------------- formulas


def mac_cycles(parallel: int, reduction: int, macs: int, vector_width: int) -> int:
    """Cycles of ``parallel`` dot products of length ``reduction`` on ``macs`` MAC units.

    The units form ``n = floor(m / w)`` lanes of width ``w <= min(d3, m)``; each lane finishes one ``w``-chunk of
    one dot product per cycle. The lane width is chosen per task (InTAR builds a task's PE arrangement into the
    circuit, and so does a dataflow stage), so::

        C = min over w in [1, min(d3, m)] of  ceil(P / floor(m / w)) * ceil(R / w)

    The ceilings are the tiling losses: e.g. 32 MACs on 100 dot products of 9 terms give 34 cycles (three 9-wide
    lanes), not the 100 * 9 / 32 = 28.1 of a perfect fit.
    """
    if parallel <= 0 or reduction <= 0:
        return 0
    best = 0
    for w in range(1, max(1, min(vector_width, macs)) + 1):
        n = max(1, macs // w)
        cycles = math.ceil(parallel / n) * math.ceil(reduction / w)
        if best == 0 or cycles < best:
            best = cycles
    return best


def vector_cycles(ops: int, units: int, vector_width: int, elements_per_cycle_cap: float | None = None) -> int:
    """Cycles of ``ops`` vector operations on ``units`` SFUs of ``V`` lanes: ``C = ceil(ops / min(units*V, cap))``.

    ``cap`` is the scratchpad-port limit in sequential mode (operands come from and results go back to the
    scratchpads): ``cap = scratchpad bytes per cycle / (2 bytes * (inputs + 1))``.
    """
    if ops <= 0:
        return 0
    rate = float(max(1, units) * vector_width)
    if elements_per_cycle_cap is not None:
        rate = max(1.0, min(rate, elements_per_cycle_cap))
    return math.ceil(ops / rate)


def transfer_cycles(nbytes: int, design: Design) -> int:
    """Off-chip transfer time: ``ceil(bytes / B)``, ``B = channels * min(port bytes, channel GB/s / clock)``."""
    if nbytes <= 0:
        return 0
    return math.ceil(nbytes / design.offchip_bytes_per_cycle)


def dsp_for_macs(macs: int, design: Design) -> int:
    """DSP slices for ``macs`` MAC units: ``ceil(m / MACs-per-DSP(weight type))``."""
    return math.ceil(macs / design.platform.macs_per_dsp(design.weight_dtype))


def memory_blocks(nbytes: int, design: Design) -> tuple[int, int]:
    """(BRAM36, URAM) blocks for ``nbytes`` of buffers: BRAM first (small, many ports), then URAM."""
    plat = design.platform
    bram = min(design.bram36, math.ceil(nbytes / plat.bram36_bytes))
    rest = max(0, nbytes - bram * plat.bram36_bytes)
    return bram, math.ceil(rest / plat.uram_bytes)


def task_cycles(task: Task, macs: int, units: int, design: Design, *, sequential: bool) -> int:
    """Compute cycles of one task given its MACs (MAC tasks) or SFUs (vector tasks)."""
    if task.kind.uses_macs:
        return mac_cycles(task.parallel, task.reduction, macs, design.vector_width)
    cap = None
    if sequential:
        cap = design.scratchpad_bytes_per_cycle / (2.0 * (len(task.inputs) + 1))
    return vector_cycles(task.vector_ops, units, design.vector_width, cap)


def weight_tile_bytes(task: Task, macs: int) -> int:
    """Double-buffered weight tile: ``2 * min(weight bytes, m weights)``."""
    if task.weight_elements == 0:
        return 0
    return 2 * min(task.weight_bytes, task.weight_dtype.nbytes(max(1, macs)))


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TaskTiming:
    """Where one task sits in a schedule (cycles are relative to the start of the run)."""

    index: int
    name: str
    op: str
    pattern: Pattern
    segment: int
    start: int
    finish: int
    macs: int
    sfu_units: int
    compute_cycles: int


@dataclass(frozen=True)
class SegmentCost:
    pattern: Pattern
    lo: int
    hi: int  # tasks[lo:hi]
    feasible: bool
    reason: str = ""
    cycles: int = 0  # compute/transfer overlap + fill latencies (reconfiguration excluded)
    makespan: int = 0  # compute only
    transfer_cycles: int = 0
    offchip_bytes: int = 0
    buffer_bytes: int = 0  # on-chip working buffers (line buffers, FIFOs, weight tiles, spilled-edge windows)
    macs_used: int = 0
    spilled: tuple[str, ...] = ()
    timings: tuple[TaskTiming, ...] = field(default=())  # relative to the segment start


# ---------------------------------------------------------------------------------------------- the model


class CostModel:
    """Costs of task groups of one graph on one design (memoises nothing; cheap enough for a DP over segments)."""

    def __init__(self, graph: TaskGraph, design: Design, balanced: bool = True) -> None:
        """``balanced=False`` splits a group's MACs equally among its MAC tasks (a naive dataflow design, for
        sensitivity studies) instead of in proportion to work with rebalancing (assumption 5)."""
        self.graph = graph
        self.design = design
        self.balanced = balanced
        self.offchip_resident = self._residency()

    # -- residency (assumption 4)
    def _residency(self) -> dict[str, bool]:
        """Decide, in graph order, which tensors live off chip between segments.

        Graph inputs and outputs are always off chip. An intermediate stays on chip if it fits in the intermediate
        pool next to the on-chip tensors still live when it is produced (live = some consumer not yet run).
        """
        g = self.graph
        resident: dict[str, bool] = {name: True for name in g.inputs}
        last_use: dict[str, int] = {}
        for name, cons in g.consumers.items():
            last_use[name] = max(cons)
        live: dict[str, int] = {}
        for i, t in enumerate(g.tasks):
            for name in [n for n, last in last_use.items() if last < i and n in live]:
                del live[name]
            nbytes = g.tensor_bytes(t.output)
            if t.output in g.outputs:
                resident[t.output] = True
                continue
            if nbytes + sum(live.values()) <= self.design.intermediate_bytes:
                resident[t.output] = False
                live[t.output] = nbytes
            else:
                resident[t.output] = True
        return resident

    # -- boundary traffic shared by all patterns
    def _boundary_bytes(self, lo: int, hi: int) -> int:
        """Off-chip bytes at a segment's boundary: reads of off-chip inputs made outside the segment (once each),
        writes of off-chip outputs used after it (or graph outputs), and every task's weights (assumption 3)."""
        g = self.graph
        inside = {g.tasks[i].output for i in range(lo, hi)}
        nbytes = 0
        seen: set[str] = set()
        for i in range(lo, hi):
            t = g.tasks[i]
            nbytes += t.weight_bytes
            for name in t.inputs:
                if name not in inside and name not in seen:
                    seen.add(name)
                    if self.offchip_resident.get(name, True):
                        nbytes += g.tensor_bytes(name)
        for name in inside:
            used_later = any(c >= hi for c in g.consumers.get(name, ()))
            if (used_later or name in g.outputs) and self.offchip_resident.get(name, True):
                nbytes += g.tensor_bytes(name)
        return nbytes

    def _fill(self, offchip_bytes: int) -> int:
        return self.design.offchip_latency_cycles if offchip_bytes > 0 else 0

    # -- sequential (one task, every core)
    def sequential(self, index: int) -> SegmentCost:
        d = self.design
        t = self.graph.tasks[index]
        buffer = sum(a.window for a in t.access if a.lead < 1.0) + weight_tile_bytes(t, d.macs)
        buffer += 2 * 2 * d.vector_width * max(1, d.macs // d.vector_width)  # output tile, double buffered
        if buffer > d.working_bytes:
            return SegmentCost(
                Pattern.SEQUENTIAL,
                index,
                index + 1,
                False,
                reason=(
                    f"task {t.name!r} needs {buffer} bytes of on-chip working buffers (line buffers, weight tile) "
                    f"but the design has {d.working_bytes} bytes of BRAM/URAM working memory"
                ),
                buffer_bytes=buffer,
            )
        compute = task_cycles(t, d.macs, d.sfu_units, d, sequential=True)
        traffic = self._boundary_bytes(index, index + 1)
        xfer = transfer_cycles(traffic, d)
        cycles = max(compute, xfer) + d.pipeline_depth + self._fill(traffic)
        used = d.macs if t.kind.uses_macs else 0
        timing = TaskTiming(index, t.name, t.op, Pattern.SEQUENTIAL, 0, 0, cycles, used, d.sfu_units, compute)
        return SegmentCost(
            Pattern.SEQUENTIAL,
            index,
            index + 1,
            True,
            cycles=cycles,
            makespan=compute,
            transfer_cycles=xfer,
            offchip_bytes=traffic,
            buffer_bytes=buffer,
            macs_used=used,
            timings=(timing,),
        )

    # -- allocation shared by dataflow and task-parallel
    def _allocate(self, members: Sequence[int]) -> tuple[dict[int, int], dict[int, int]] | str:
        """Split MACs among the MAC tasks and SFUs among the vector tasks of a group.

        Start proportional to work (at least one allocation unit each), then move units one at a time from the
        fastest to the slowest stage while that lowers the slowest stage (assumption 5). The allocation unit is a
        whole lane (``d3`` MACs) when there are enough for every MAC task, otherwise single MACs.
        """
        d = self.design
        g = self.graph
        mac_tasks = [i for i in members if g.tasks[i].kind.uses_macs]
        vec_tasks = [i for i in members if not g.tasks[i].kind.uses_macs]
        if len(mac_tasks) > d.macs:
            return f"{len(mac_tasks)} MAC tasks cannot each get a MAC unit out of {d.macs}"
        unit = d.vector_width if d.macs >= d.vector_width * len(mac_tasks) else 1

        def mac_cost(i: int, k: int) -> int:
            return task_cycles(g.tasks[i], k * unit, 1, d, sequential=False)

        def sfu_cost(i: int, k: int) -> int:
            return task_cycles(g.tasks[i], 0, k, d, sequential=False)

        macs = self._split(mac_tasks, d.macs // unit, mac_cost)
        mac_alloc = {i: k * unit for i, k in macs.items()}
        sfu_alloc = self._split(vec_tasks, max(d.sfu_units, len(vec_tasks)), sfu_cost)
        return mac_alloc, sfu_alloc

    def _split(self, members: Sequence[int], slots: int, cost: UnitCost) -> dict[int, int]:
        if not members:
            return {}
        works = {i: max(1, self.graph.tasks[i].work) if self.balanced else 1 for i in members}
        total = sum(works.values())
        alloc = {i: max(1, int(slots * works[i] / total)) for i in members}
        while sum(alloc.values()) > slots:  # the max(1, .) floors may overshoot
            j = max((i for i in members if alloc[i] > 1), key=lambda i: alloc[i])
            alloc[j] -= 1
        cyc = {i: cost(i, alloc[i]) for i in members}
        if not self.balanced:
            return alloc
        for _ in range(slots - sum(alloc.values())):  # hand out the rounding leftovers
            j = max(members, key=lambda i: cyc[i])
            alloc[j] += 1
            cyc[j] = cost(j, alloc[j])
        for _ in range(2 * len(members)):  # rebalance: fastest gives one unit to slowest
            slow = max(members, key=lambda i: cyc[i])
            donors = [i for i in members if i != slow and alloc[i] > 1]
            if not donors:
                break
            fast = min(donors, key=lambda i: cyc[i])
            new_slow, new_fast = cost(slow, alloc[slow] + 1), cost(fast, alloc[fast] - 1)
            if max(new_slow, new_fast) >= cyc[slow]:
                break
            alloc[slow] += 1
            alloc[fast] -= 1
            cyc[slow], cyc[fast] = new_slow, new_fast
        return alloc

    # -- dataflow (a task pipeline)
    def dataflow(self, lo: int, hi: int) -> SegmentCost:
        d = self.design
        g = self.graph
        members = list(range(lo, hi))
        got = self._allocate(members)
        if isinstance(got, str):
            return SegmentCost(Pattern.DATAFLOW, lo, hi, False, reason=got)
        mac_alloc, sfu_alloc = got
        dur = {
            i: task_cycles(g.tasks[i], mac_alloc.get(i, 0), sfu_alloc.get(i, 0), d, sequential=False) for i in members
        }
        # Internal edges: (producer, consumer, tensor, access).
        edges: list[Edge] = []
        for c in members:
            t = g.tasks[c]
            for name, acc in zip(t.inputs, t.access, strict=True):
                p = g.producer.get(name)
                if p is not None and lo <= p < hi:
                    edges.append((p, c, name, acc))
        spilled: set[str] = set()
        start, finish = self._pipeline_times(members, dur, edges, spilled)
        buffers = self._edge_buffers(edges, start, dur, spilled)
        fixed = sum(weight_tile_bytes(g.tasks[i], mac_alloc.get(i, 1)) for i in members)
        fixed += sum(2 * 2 * d.vector_width for _ in members)  # output FIFOs
        total = fixed + sum(buffers.values())
        if total > d.working_bytes:  # spill the largest edge buffers to off-chip memory
            for name, nbytes in sorted(buffers.items(), key=lambda kv: -kv[1]):
                if total <= d.working_bytes:
                    break
                spilled.add(name)
                total -= nbytes
            if fixed > d.working_bytes:
                return SegmentCost(
                    Pattern.DATAFLOW,
                    lo,
                    hi,
                    False,
                    reason=f"weight tiles and FIFOs need {fixed} bytes, more than {d.working_bytes} working bytes",
                )
            start, finish = self._pipeline_times(members, dur, edges, spilled)
            total = fixed + sum(self._edge_buffers(edges, start, dur, spilled).values())  # spilled: window only
            if total > d.working_bytes:
                return SegmentCost(
                    Pattern.DATAFLOW,
                    lo,
                    hi,
                    False,
                    reason=f"stream windows need {total} bytes even after spilling, more than {d.working_bytes}",
                )
        traffic = self._boundary_bytes(lo, hi) + sum(2 * g.tensor_bytes(n) for n in spilled)
        makespan = max(finish.values())
        xfer = transfer_cycles(traffic, d)
        cycles = max(makespan, xfer) + self._fill(traffic)
        timings = tuple(
            TaskTiming(
                i,
                g.tasks[i].name,
                g.tasks[i].op,
                Pattern.DATAFLOW,
                0,
                start[i],
                finish[i],
                mac_alloc.get(i, 0),
                sfu_alloc.get(i, 0),
                dur[i],
            )
            for i in members
        )
        return SegmentCost(
            Pattern.DATAFLOW,
            lo,
            hi,
            True,
            cycles=cycles,
            makespan=makespan,
            transfer_cycles=xfer,
            offchip_bytes=traffic,
            buffer_bytes=total,
            macs_used=sum(mac_alloc.values()),
            spilled=tuple(sorted(spilled)),
            timings=timings,
        )

    def _pipeline_times(
        self,
        members: Sequence[int],
        dur: dict[int, int],
        edges: Sequence[Edge],
        spilled: set[str],
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Stage times (assumption 6)::

            start_c  = max over producers p of  start_p + lead * D_p + depth      (0 without producers)
            finish_c = max(start_c + D_c,  max over producers p of finish_p + depth)

        A spilled edge has lead 1 (the consumer reads the tensor back after the producer wrote all of it).
        """
        depth = self.design.pipeline_depth
        start: dict[int, int] = {}
        finish: dict[int, int] = {}
        for c in members:
            s = 0
            f_floor = 0
            for p, cc, name, acc in edges:
                if cc != c:
                    continue
                lead = 1.0 if name in spilled else acc.lead
                s = max(s, start[p] + math.ceil(lead * dur[p]) + depth)
                f_floor = max(f_floor, finish[p] + depth)
            start[c] = s
            finish[c] = max(s + dur[c] + depth, f_floor)
        return start, finish

    def _edge_buffers(
        self,
        edges: Sequence[Edge],
        start: dict[int, int],
        dur: dict[int, int],
        spilled: set[str],
    ) -> dict[str, int]:
        """On-chip bytes per streamed tensor: the consumer's window, or what the producer emits before the consumer
        starts reading (``bytes * (start_c - start_p) / D_p``, capped at the tensor) — e.g. a residual branch.

        A spilled tensor is written to off-chip memory once and read back once (``2 * bytes`` of traffic); its
        consumer keeps only its window, or a :data:`SPILL_TILE_BYTES` tile of a whole-tensor operand (assuming the
        other operand can be walked again per tile — an approximation that does not charge re-reads)."""
        g = self.graph
        out: dict[str, int] = {}
        for p, c, name, acc in edges:
            nbytes = g.tensor_bytes(name)
            if name in spilled:  # read back from off-chip memory through a double-buffered tile
                need = min(nbytes, acc.window if acc.lead < 1.0 else SPILL_TILE_BYTES)
            elif acc.lead >= 1.0:
                need = nbytes
            else:
                lag = max(0, start[c] - start[p])
                need = min(nbytes, max(acc.window, math.ceil(nbytes * lag / max(1, dur[p]))))
            out[name] = max(out.get(name, 0), need)
        return out

    # -- task-parallel (independent tasks side by side)
    def task_parallel(self, lo: int, hi: int) -> SegmentCost:
        d = self.design
        g = self.graph
        members = list(range(lo, hi))
        got = self._allocate(members)
        if isinstance(got, str):
            return SegmentCost(Pattern.TASK_PARALLEL, lo, hi, False, reason=got)
        mac_alloc, sfu_alloc = got
        dur = {
            i: task_cycles(g.tasks[i], mac_alloc.get(i, 0), sfu_alloc.get(i, 0), d, sequential=False) for i in members
        }
        buffer = sum(
            sum(a.window for a in g.tasks[i].access if a.lead < 1.0)
            + weight_tile_bytes(g.tasks[i], mac_alloc.get(i, 1))
            + 4 * d.vector_width
            for i in members
        )
        if buffer > d.working_bytes:
            return SegmentCost(
                Pattern.TASK_PARALLEL, lo, hi, False, reason=f"buffers need {buffer} bytes > {d.working_bytes}"
            )
        traffic = self._boundary_bytes(lo, hi)
        makespan = max(dur.values()) + d.pipeline_depth
        xfer = transfer_cycles(traffic, d)
        timings = tuple(
            TaskTiming(
                i,
                g.tasks[i].name,
                g.tasks[i].op,
                Pattern.TASK_PARALLEL,
                0,
                0,
                dur[i] + d.pipeline_depth,
                mac_alloc.get(i, 0),
                sfu_alloc.get(i, 0),
                dur[i],
            )
            for i in members
        )
        return SegmentCost(
            Pattern.TASK_PARALLEL,
            lo,
            hi,
            True,
            cycles=max(makespan, xfer) + self._fill(traffic),
            makespan=makespan,
            transfer_cycles=xfer,
            offchip_bytes=traffic,
            buffer_bytes=buffer,
            macs_used=sum(mac_alloc.values()),
            timings=timings,
        )

    # -- structure helpers
    def internal_edges(self, lo: int, hi: int) -> int:
        g = self.graph
        return sum(
            1
            for c in range(lo, hi)
            for name in g.tasks[c].inputs
            if (p := g.producer.get(name)) is not None and lo <= p < hi
        )

    def connected(self, lo: int, hi: int) -> bool:
        """Whether tasks[lo:hi] form one weakly connected group (union-find over internal edges)."""
        parent = list(range(lo, hi))

        def find(x: int) -> int:
            while parent[x - lo] != x:
                parent[x - lo] = parent[parent[x - lo] - lo]
                x = parent[x - lo]
            return x

        g = self.graph
        for c in range(lo, hi):
            for name in g.tasks[c].inputs:
                p = g.producer.get(name)
                if p is not None and lo <= p < hi:
                    parent[find(c) - lo] = find(p)
        return len({find(i) for i in range(lo, hi)}) == 1
