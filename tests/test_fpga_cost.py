"""The InTAR cost model and scheduler: formulas on hand-computed cases, schedule invariants, the paper kernels."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.intar_kernels import KERNELS, PUBLISHED
from slimsplit.errors import BackendError, ResourceLimitError
from slimsplit.server.backends.fpga import (
    CostModel,
    DType,
    GraphBuilder,
    Pattern,
    ResourceBudget,
    TaskGraph,
    compare,
    load_platform,
    schedule_dataflow,
    schedule_intar,
    schedule_sequential,
)
from slimsplit.server.backends.fpga.cost import mac_cycles, memory_blocks, transfer_cycles, vector_cycles
from slimsplit.server.backends.fpga.platform import Design
from slimsplit.server.backends.fpga.tasks import fuse_activations

U280 = load_platform("u280")


def design(**budget: int) -> Design:
    return U280.design(ResourceBudget(**budget))


# ---------------------------------------------------------------------------------------------- formulas


def test_mac_cycles_tiling() -> None:
    # 32 MACs on 100 dot products of 9 terms: ten 3-wide lanes -> ceil(100 / 10) x 3 = 30
    # (two 16-wide lanes: 50; 32 one-wide lanes: 4 x 9 = 36; ideal 100 x 9 / 32 = 28.1).
    assert mac_cycles(parallel=100, reduction=9, macs=32, vector_width=16) == 30
    # 8 MACs on 10 products of 40 terms: one 8-wide lane, 10 x 5 = 50 (ideal).
    assert mac_cycles(parallel=10, reduction=40, macs=8, vector_width=16) == 50
    # 48 MACs on 10 products of 33 terms: five 9-wide lanes -> 2 x 4 = 8 (three 16-wide lanes: 4 x 3 = 12).
    assert mac_cycles(parallel=10, reduction=33, macs=48, vector_width=16) == 8
    # a big problem is compute-bound at m MACs per cycle
    assert mac_cycles(parallel=4096, reduction=256, macs=1024, vector_width=16) == 4096 * 256 // 1024
    assert mac_cycles(parallel=0, reduction=5, macs=16, vector_width=16) == 0


def test_vector_and_transfer_cycles() -> None:
    assert vector_cycles(ops=1000, units=2, vector_width=16) == 32  # ceil(1000 / 32)
    assert vector_cycles(ops=1000, units=2, vector_width=16, elements_per_cycle_cap=10) == 100
    d = design(offchip_channels=2)
    assert d.offchip_bytes_per_cycle == 64  # 2 channels x 32-byte ports
    assert transfer_cycles(1000, d) == 16  # ceil(1000 / 64)
    assert transfer_cycles(0, d) == 0


def test_memory_blocks_fill_bram_then_uram() -> None:
    d = design(bram36=10, uram=4)
    assert memory_blocks(4608 * 3, d) == (3, 0)
    assert memory_blocks(4608 * 10 + 1, d) == (10, 1)


def _conv_graph(h: int = 32, c: int = 4) -> TaskGraph:
    b = GraphBuilder("conv", DType.INT16)
    x = b.input("x", (1, c, h, h))
    y = b.conv("conv", x, c, (3, 3), pads=(1, 1, 1, 1))
    return b.build([y])


def test_sequential_task_by_hand() -> None:
    d = design(dsp=64, offchip_channels=1)
    g = _conv_graph()
    seg = CostModel(g, d).sequential(0)
    t = g.tasks[0]
    assert (t.parallel, t.reduction) == (4 * 32 * 32, 36)
    compute = 4096 * 36 // 64  # 64 one-wide lanes fit exactly: compute-bound
    traffic = 2 * (4 * 32 * 32 * 2) + 4 * 36 * 2  # read input + write output (int16) + weights
    assert seg.offchip_bytes == traffic
    assert seg.makespan == compute
    expected = max(compute, math.ceil(traffic / 32)) + d.pipeline_depth + d.offchip_latency_cycles
    assert seg.cycles == expected
    s = schedule_sequential(g, d)
    assert s.total_cycles == expected and s.reconfigurations == 0


def _chain(lead_full: bool) -> TaskGraph:
    """linear -> softmax (row lead) or linear -> matmul needing its whole operand."""
    b = GraphBuilder("chain", DType.INT16)
    x = b.input("x", (64, 64))
    y = b.linear("fc", x, 64)
    z = b.matmul("mm", x, y) if lead_full else b.special("sm", y, "softmax")  # mm: y is the full-access operand
    return b.build([z])


def test_dataflow_stage_timing_follows_the_documented_formula() -> None:
    d = design(dsp=256)
    g = _chain(lead_full=True)
    seg = CostModel(g, d).dataflow(0, 2)
    assert seg.feasible
    fc, mm = seg.timings
    depth = d.pipeline_depth
    assert fc.start == 0 and fc.finish == fc.compute_cycles + depth
    # lead = 1: the matmul starts once the whole producer ran: start = 0 + 1.0 * D_fc + depth
    assert mm.start == fc.compute_cycles + depth
    assert mm.finish == max(mm.start + mm.compute_cycles + depth, fc.finish + depth)
    assert fc.macs + mm.macs <= d.macs
    # row-granular softmax starts after one row of 64 out of 64 rows
    seg2 = CostModel(_chain(lead_full=False), d).dataflow(0, 2)
    fc2, sm = seg2.timings
    assert sm.start == math.ceil(fc2.compute_cycles / 64) + depth


def test_reconfiguration_is_charged_between_segments() -> None:
    d = design(dsp=256)
    s = schedule_sequential(_chain(lead_full=True), d)
    assert s.reconfigurations == 1
    assert s.total_cycles == sum(seg.cycles for seg in s.segments) + d.reconfig_cycles
    assert s.starts[1] == s.segments[0].cycles + d.reconfig_cycles


def test_fusion_folds_relu_into_its_producer() -> None:
    b = GraphBuilder("f", DType.INT16)
    x = b.input("x", (1, 2, 8, 8))
    y = b.conv("c", x, 2, (3, 3), pads=(1, 1, 1, 1))
    y = b.elementwise("r", [y], "relu")
    z = b.elementwise("add", [y, x], "add")
    g = fuse_activations(b.build([z]))
    assert [t.name for t in g.tasks] == ["c", "add"]
    assert g.tasks[0].fused == ("relu",) and g.tasks[0].output == "r:out"


def test_graph_validation() -> None:
    b = GraphBuilder("bad", DType.INT16)
    b.input("x", (4, 8))
    with pytest.raises(BackendError, match="inner sizes"):
        b.matmul("m", "x", "x")


# ---------------------------------------------------------------------------------------------- budgets & errors


def test_tail_that_does_not_fit_names_the_resource() -> None:
    g = _conv_graph(h=512, c=64)  # line buffer 3 x 512 x 64 x 2 B = 196 KB
    tiny = design(bram36=8, uram=0)
    with pytest.raises(ResourceLimitError, match=r"on-chip working buffers.*BRAM/URAM") as info:
        schedule_intar(g, tiny)
    assert "on-chip memory" in info.value.context["resource"]


def test_offchip_capacity_is_checked() -> None:
    b = GraphBuilder("huge", DType.INT16)
    x = b.input("x", (1, 1 << 16))
    y = b.linear("fc", x, 1 << 16)  # 8 GiB of int16 weights
    with pytest.raises(ResourceLimitError, match="off-chip memory"):
        schedule_intar(b.build([y]), design())


def test_dataflow_needs_a_mac_unit_per_mac_task() -> None:
    d = design(dsp=2)
    g = KERNELS["mlp"](DType.INT16)  # three MAC tasks, two MAC units
    assert schedule_dataflow(fuse_activations(g), d) is None
    assert schedule_intar(fuse_activations(g), d).total_cycles > 0


# ---------------------------------------------------------------------------------------------- scheduler properties


@st.composite
def random_graphs(draw: st.DrawFn) -> TaskGraph:
    b = GraphBuilder("random", DType.INT16)
    c = draw(st.sampled_from([1, 2, 8, 16]))
    h = draw(st.sampled_from([4, 8, 16, 32]))
    tensors = [b.input("x", (draw(st.integers(1, 2)), c, h, h))]
    for i in range(draw(st.integers(1, 6))):
        src = tensors[draw(st.integers(0, len(tensors) - 1))]
        _, cc, hh, _ = b.shape(src)
        kind = draw(st.sampled_from(["conv", "convt", "pool", "up", "relu", "add", "silu"]))
        if kind == "conv" or (kind == "pool" and hh < 2):
            out = b.conv(f"t{i}", src, draw(st.sampled_from([1, 4, 8])), (3, 3), pads=(1, 1, 1, 1))
        elif kind == "convt" and hh <= 32:
            out = b.conv_transpose(f"t{i}", src, cc, (2, 2), stride=(2, 2))
        elif kind == "pool":
            out = b.pool(f"t{i}", src, (2, 2), (2, 2))
        elif kind == "up" and hh <= 32:
            out = b.upsample(f"t{i}", src, (2, 2))
        elif kind == "add":
            same = [t for t in tensors if b.shape(t) == b.shape(src)]
            out = b.elementwise(f"t{i}", [src, same[draw(st.integers(0, len(same) - 1))]], "add")
        elif kind == "silu":
            out = b.special(f"t{i}", src, "silu")
        else:
            out = b.elementwise(f"t{i}", [src], "relu")
        tensors.append(out)
    return b.build([tensors[-1]])


budgets = st.builds(
    ResourceBudget,
    dsp=st.sampled_from([4, 16, 64, 439, 2048, None]),
    bram36=st.sampled_from([16, 64, 202, None]),
    uram=st.sampled_from([0, 8, None]),
    offchip_channels=st.sampled_from([1, 4, None]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), budget=budgets)
def test_intar_is_never_worse_than_either_baseline_and_respects_the_budget(
    graph: TaskGraph, budget: ResourceBudget
) -> None:
    d = U280.design(budget)
    try:
        comp = compare(graph, d)
    except ResourceLimitError:
        return  # a budget too small for some task: nothing to compare
    assert comp.intar.total_cycles <= comp.sequential.total_cycles
    if comp.dataflow is not None:
        assert comp.intar.total_cycles <= comp.dataflow.total_cycles
    for sched in (comp.intar, comp.sequential, comp.dataflow):
        if sched is None:
            continue
        covered = [i for seg in sched.segments for i in range(seg.lo, seg.hi)]
        assert covered == list(range(len(graph)))  # every task exactly once, in order
        assert sched.total_cycles == sum(s.cycles for s in sched.segments) + sched.reconfigurations * d.reconfig_cycles
        assert sched.dsp <= d.dsp
        for seg in sched.segments:
            assert seg.feasible and seg.macs_used <= d.macs
            assert seg.buffer_bytes <= d.working_bytes
            for t in seg.timings:
                assert 0 <= t.start <= t.finish <= seg.cycles
            if seg.pattern is Pattern.TASK_PARALLEL:
                assert CostModel(graph, d).internal_edges(seg.lo, seg.hi) == 0


# ---------------------------------------------------------------------------------------------- paper kernels


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("budget", ["paper", "device"])
def test_paper_kernels_intar_never_slower(name: str, budget: str) -> None:
    graph = fuse_activations(KERNELS[name](DType.INT16))
    b = ResourceBudget(dsp=PUBLISHED[name].dsp[0], bram36=202, uram=0, offchip_channels=4)
    comp = compare(graph, U280.design(b if budget == "paper" else ResourceBudget()))
    assert comp.intar.total_cycles <= comp.sequential.total_cycles
    assert comp.dataflow is not None and comp.intar.total_cycles <= comp.dataflow.total_cycles
    assert comp.intar.latency_ms == pytest.approx(comp.intar.total_cycles / 300e3)


def test_kernel_sizes_match_the_paper() -> None:
    cnn = KERNELS["cnn-4L"](DType.INT16)
    assert cnn.tensors[cnn.outputs[0]].shape == (1, 1, 448, 448)
    assert max(t.elements for t in cnn.tensors.values()) == 896 * 896
    vae = KERNELS["vae"](DType.INT16)
    latent = vae.tensors[vae.tasks[2].output].shape  # after the 4x4 encoder conv (tasks: conv, relu, conv)
    assert latent[2] * latent[3] == 324
    attn = KERNELS["self-attention"](DType.INT16)
    assert attn.total_macs == 3 * 256 * 1024 * 1024 + 2 * 256 * 256 * 1024
    gate = KERNELS["gating-net"](DType.INT16)
    assert gate.total_macs == 3 * 32 * 4096 * 11008
    mlp = KERNELS["mlp"](DType.INT16)
    assert mlp.total_macs == 256 * 1024 + 1024 * 2048 + 2048 * 256


def test_dataflow_spills_whole_tensor_operands_that_do_not_fit_on_chip() -> None:
    graph = fuse_activations(KERNELS["self-attention"](DType.INT16))
    d = design(dsp=43, bram36=202, uram=0, offchip_channels=4)  # 909 KB on chip, K and V are 512 KB each
    model = CostModel(graph, d)
    seg = model.dataflow(0, len(graph))
    assert seg.feasible and seg.spilled
    spilled_bytes = sum(2 * graph.tensor_bytes(n) for n in seg.spilled)
    roomy = CostModel(graph, U280.design()).dataflow(0, len(graph))
    assert not roomy.spilled
    assert seg.offchip_bytes >= spilled_bytes + graph.weight_bytes
    assert seg.buffer_bytes <= d.working_bytes
