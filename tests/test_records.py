"""slimsplit.records: one rule for "answered by the deadline" (the simulator, the oracle and every record judge a
frame alike, at the boundary too), the server's timing on and off the wire (a reply's is checked), and one frame
record for live runs and simulations."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedController, FixedOptions
from slimsplit.control.loop import ControlLoop
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.pipeline import PipelineConfig, RunReport, run_frames
from slimsplit.edge.sources import SourceFrame
from slimsplit.edge.transport import Connection, Done, FrameTransport, InFlight
from slimsplit.errors import InvalidFrame
from slimsplit.evaluation.oracle import feasible_in_isolation, plan_oracle
from slimsplit.evaluation.sim import SimConfig, figures, simulate
from slimsplit.link.shaping import LinkConfig
from slimsplit.quantiles import QuantileSketch, percentile
from slimsplit.records import (
    DEADLINE_TOLERANCE_MS,
    FrameRecord,
    RunTally,
    ServerTiming,
    in_time,
    in_time_array,
    summarize,
)
from slimsplit.v1 import slimsplit_pb2 as pb

# 10 ms encoder + 35 ms each way + 20 ms server = exactly the 100 ms deadline on an unshaped link
EXACT = ModeOption("exact", 1, 8, 0.8, 1000.0, 10.0, 20.0)
LINK = LinkConfig(delay_ms=35.0)


# ---------------------------------------------------------------------------------------------- the deadline rule


def test_the_deadline_rule_at_its_boundary() -> None:
    assert in_time(100.0, 100.0)  # at the deadline: in time
    assert in_time(100.0 + DEADLINE_TOLERANCE_MS / 2, 100.0)  # float rounding past it: in time
    assert not in_time(100.0 + 2 * DEADLINE_TOLERANCE_MS, 100.0)
    assert not in_time(math.nan, 100.0) and not in_time(math.inf, 100.0)
    lat = np.asarray([99.0, 100.0, 100.0 + DEADLINE_TOLERANCE_MS / 2, 100.0 + 2 * DEADLINE_TOLERANCE_MS, math.nan])
    assert in_time_array(lat, 100.0).tolist() == [in_time(float(v), 100.0) for v in lat]
    assert in_time_array([[100.0], [101.0]], [100.0, 101.0]).tolist() == [[True, True], [False, True]]


def test_a_frame_answered_at_its_deadline_is_a_hit_everywhere() -> None:
    """Simulator, oracle, feasibility and the record's ``hit`` apply the one rule: a frame whose latency is the
    deadline (up to float rounding) is in time for all of them."""
    cfg = SimConfig(fps=10, deadline_ms=100, duration_s=1.0, max_in_flight=2, reply_bytes=0, expiry="captured")
    run = cfg.run
    res = simulate(FixedController([EXACT], run, FixedOptions("exact")), [EXACT], LINK, cfg)
    assert [r.latency_ms for r in res.records] == pytest.approx([100.0] * 10, abs=1e-9)
    assert all(r.hit for r in res.records) and figures(res.records, [EXACT])["hit_rate"] == 1.0
    assert feasible_in_isolation([EXACT], 100.0, LINK, 10, 10, reply_bytes=0).all()
    assert plan_oracle([EXACT], 100.0, LINK, 10, 10, reply_bytes=0).hits == 10
    tighter = SimConfig(fps=10, deadline_ms=99.999, duration_s=1.0, max_in_flight=2, reply_bytes=0, expiry="reply")
    late = simulate(FixedController([EXACT], tighter.run, FixedOptions("exact")), [EXACT], LINK, tighter)
    assert not any(r.hit for r in late.records)
    assert not feasible_in_isolation([EXACT], 99.999, LINK, 10, 10, reply_bytes=0).any()
    assert plan_oracle([EXACT], 99.999, LINK, 10, 10, reply_bytes=0).hits == 0


def test_a_reply_at_the_next_capture_frees_its_slot_for_it() -> None:
    """One frame at a time with period == deadline, every reply exactly at the deadline (up to float rounding): the
    next capture sees it, so every frame is sent and in time, as the oracle plans."""
    mode = ModeOption("m", 1, 8, 0.8, 1000.0, 7.0, 13.0)  # 7 + 140 + 13 + 140 = 300 ms
    link = LinkConfig(delay_ms=140.0)
    cfg = SimConfig(fps=1000 / 300, deadline_ms=300, duration_s=60.0, max_in_flight=1, reply_bytes=0, expiry="captured")
    res = simulate(FixedController([mode], cfg.run, FixedOptions("m")), [mode], link, cfg)
    assert len(res.records) == 200 and all(r.hit for r in res.records), [r.reason for r in res.records if not r.hit]
    assert plan_oracle([mode], 300.0, link, 1000 / 300, 200, 1, reply_bytes=0).hits == 200


def test_a_record_judges_its_latency_by_the_rule() -> None:
    at = FrameRecord(1, 0, "m", latency_ms=100.0 + DEADLINE_TOLERANCE_MS / 2, deadline_ms=100.0)
    past = FrameRecord(2, 1, "m", latency_ms=100.0 + 2 * DEADLINE_TOLERANCE_MS, deadline_ms=100.0)
    failed = FrameRecord(3, 2, "m", status="DEADLINE_EXCEEDED", latency_ms=50.0, deadline_ms=100.0)
    assert at.hit is True and past.hit is False and failed.hit is False
    assert FrameRecord(4, 3, "m", latency_ms=1.0).hit is None  # no deadline, no verdict
    s = summarize([at, past, failed], 1.0)
    assert (s.hits, s.late, s.dropped) == (1, 1, {"DEADLINE_EXCEEDED": 1})


# ---------------------------------------------------------------------------------------------- server timing

TIMING = ServerTiming(
    queue_ms=0.5,
    decode_ms=1.25,
    tail_ms=3.0,
    total_ms=5.0,
    device_ms=2.5,
    device_cycles=12345,
    backend="x",
    batch_size=4,
)


def test_server_timing_round_trips_through_the_wire() -> None:
    wire = TIMING.to_pb()
    assert isinstance(wire, pb.ServerTiming) and wire.total_ms == 5.0 and wire.device_cycles == 12345
    assert ServerTiming.from_pb(wire) == TIMING
    back = pb.ServerTiming()
    back.ParseFromString(wire.SerializeToString())
    assert ServerTiming.from_pb(back) == TIMING
    assert ServerTiming.from_pb(pb.ServerTiming()) == ServerTiming()  # an empty timing is all zeros
    assert {f.name for f in fields(ServerTiming)} == {f.name for f in pb.ServerTiming.DESCRIPTOR.fields}


@pytest.mark.parametrize("name", ["queue_ms", "decode_ms", "tail_ms", "total_ms", "device_ms"])
@pytest.mark.parametrize("value", [-1.0, -1e-6, math.nan, math.inf, -math.inf])
def test_a_reply_with_a_bad_time_is_refused(name: str, value: float) -> None:
    wire = TIMING.to_pb()
    setattr(wire, name, value)
    with pytest.raises(InvalidFrame, match=f"ServerTiming.{name}") as info:
        ServerTiming.from_pb(wire)
    assert info.value.context["field"] == f"timing.{name}"


# ---------------------------------------------------------------------------------------------- live and simulated


@dataclass(frozen=True)
class _Encoded:
    payload: bytes
    mode: str
    encoder_ms: float = 1.0
    codec_ms: float = 0.5


class _Encoder:
    def set_mode(self, name: str) -> None:
        self.mode = name

    def encode(self, image: npt.NDArray[np.uint8]) -> _Encoded:
        return _Encoded(b"\x01" * 100, self.mode)


class _Answering(FrameTransport):
    """Answers every frame at once with a prediction whose timing is ``timing``."""

    def __init__(self, timing: pb.ServerTiming) -> None:
        self.timing = timing
        self.pending = InFlight()

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        self.pending.add(frame.frame_id, 1, done, deadline_s)
        prediction = pb.Prediction(frame_id=frame.frame_id, classes=[3], scores=[0.9], labels=["c"], timing=self.timing)
        asyncio.get_running_loop().call_soon(self.pending.answer, frame.frame_id, _now(), prediction, None)

    async def drain(self, timeout_s: float | None = None) -> bool:
        return await self.pending.wait_idle(timeout_s)

    async def aclose(self) -> None:
        return None


def _now() -> float:
    return time.perf_counter()


class _Server(Connection):
    def __init__(self, timing: pb.ServerTiming) -> None:
        super().__init__(ClientConfig(max_in_flight=1, deadline_ms=1000.0))
        self.timing = timing

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        return None

    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        return pb.DescribeResponse()

    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        return _Answering(self.timing)


class _Fixed(Controller):
    name = "fixed-test"

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        return Decision("exact", "fixed", estimate_bps=1e6, predicted_ms=50.0)

    def observe(self, feedback: FrameFeedback) -> None:
        return None


def _live(timing: pb.ServerTiming, n: int = 3) -> RunReport:
    frames: Sequence[SourceFrame] = [SourceFrame(i, np.zeros((2, 2, 3), np.uint8), label=3) for i in range(n)]
    return asyncio.run(
        run_frames(_Server(timing), _Encoder(), _Fixed(), [EXACT], frames, PipelineConfig(model="m", fps=0.0))
    )


def test_a_live_reply_with_a_bad_timing_fails_its_frame() -> None:
    good = _live(TIMING.to_pb())
    assert [r.status for r in good.results] == ["OK"] * 3 and good.results[0].server == TIMING
    bad = TIMING.to_pb()
    bad.total_ms = math.nan
    report = _live(bad)
    assert [r.status for r in report.results] == ["INVALID_ARGUMENT"] * 3
    assert all("ServerTiming.total_ms" in r.error and r.server is None and not r.classes for r in report.results)


def test_live_and_simulated_records_carry_the_same_fields() -> None:
    live = _live(TIMING.to_pb()).results[0]
    cfg = SimConfig(fps=10, deadline_ms=1000, duration_s=0.3, max_in_flight=1, reply_bytes=0)
    sim = simulate(FixedController([EXACT], cfg.run, FixedOptions("exact")), [EXACT], LINK, cfg).records[0]
    assert type(live) is type(sim) is FrameRecord
    assert live.to_dict().keys() == sim.to_dict().keys()
    for r in (live, sim):  # what both kinds of run fill in
        assert r.ok and r.hit and r.mode == "exact" and r.reason and r.deadline_ms == 1000.0
        assert r.payload_bytes > 0 and r.server is not None and r.server.total_ms > 0
        assert math.isfinite(r.t_s) and r.sent_s is not None and r.sent_s >= r.t_s
        assert 0 < r.rtt_ms <= r.latency_ms and r.transfer_ms == pytest.approx(r.rtt_ms - r.server_ms)
    loop = ControlLoop(_Fixed(), [EXACT], RunConfig(deadline_ms=1000.0, max_in_flight=1))
    loop.decide(7, 0.0)
    assert loop.decide(8, 0.01).mode is None  # the limit: skipped, recorded at once
    loop.sent(7, 120, 0.002)
    rec = loop.completed(7, 0.05, 2.0)
    assert rec.to_dict().keys() == live.to_dict().keys()
    assert (rec.estimate_bps, rec.predicted_ms, rec.sent_s, rec.payload_bytes) == (1e6, 50.0, 0.002, 120)
    skipped = loop.records[1]
    assert skipped.skipped and skipped.mode == "" and skipped.sent_s is None and skipped.hit is False


# ---------------------------------------------------------------------------------------------- bounded summaries


class _Reversing(_Answering):
    """Holds frames until ``batch`` are pending, then answers them newest first (out of order, as replicas may)."""

    def __init__(self, timing: pb.ServerTiming, batch: int) -> None:
        super().__init__(timing)
        self.batch = batch
        self.held: list[int] = []

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        self.pending.add(frame.frame_id, 1, done, deadline_s)
        self.held.append(frame.frame_id)
        if len(self.held) == self.batch:
            held, self.held = self.held, []
            for fid in reversed(held):
                prediction = pb.Prediction(frame_id=fid, classes=[3], scores=[0.9], labels=["c"], timing=self.timing)
                self.pending.answer(fid, _now(), prediction, None)


class _ReversingServer(_Server):
    def __init__(self, timing: pb.ServerTiming, batch: int) -> None:
        Connection.__init__(self, ClientConfig(max_in_flight=batch, deadline_ms=1000.0))
        self.timing = timing
        self.batch = batch

    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        return _Reversing(self.timing, self.batch)


class _Pattern(Controller):
    """Mode ``a`` or ``b`` by frame number, in a pattern whose switches depend on the order frames are counted."""

    name = "pattern-test"

    def __init__(self) -> None:
        self.n = 0

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        self.n += 1
        return Decision("a" if self.n % 6 < 2 else "b", "pattern", estimate_bps=1e6, predicted_ms=50.0)

    def observe(self, feedback: FrameFeedback) -> None:
        return None


def test_the_pipeline_tallies_out_of_order_replies_in_frame_order_without_keeping_records() -> None:
    modes = [replace(EXACT, name="a"), replace(EXACT, name="b", width=2)]
    frames = [SourceFrame(i, np.zeros((2, 2, 3), np.uint8), label=i % 4) for i in range(24)]

    def run(keep: bool) -> RunReport:
        config = PipelineConfig(model="m", fps=0.0, keep_records=keep)
        return asyncio.run(
            run_frames(_ReversingServer(TIMING.to_pb(), 4), _Encoder(), _Pattern(), modes, frames, config)
        )

    kept, lean = run(True), run(False)
    assert len(kept.results) == 24 and lean.results == []
    assert [r.index for r in kept.results] == list(range(24))
    exact = summarize(kept.results, kept.wall_s)  # from the records in frame order
    tallied = kept.summary()
    assert exact.switches == 8  # a b b b b a a b b b b a ...: counted as answered (each 4 reversed) it is 12
    for summary in (tallied, lean.summary()):
        assert (summary.frames, summary.ok, summary.switches, summary.chosen, summary.accuracy) == (
            exact.frames,
            exact.ok,
            exact.switches,
            exact.chosen,
            exact.accuracy,
        )
    assert tallied.latency_ms == exact.latency_ms
    assert list(lean.run_tally().by_mode(1.0)) == ["a", "b"]
    assert lean.run_tally().by_mode(1.0)["b"].frames == 16


def _record(i: int, rng: np.random.Generator) -> FrameRecord:
    status = ("OK", "OK", "OK", "SKIPPED", "DEADLINE_EXCEEDED")[int(rng.integers(5))]
    mode = "" if status == "SKIPPED" else ("w4b4", "w16b8")[int(rng.integers(2))]
    latency = float(rng.lognormal(3.5, 0.6))
    return FrameRecord(
        frame_id=i,
        index=i,
        mode=mode,
        status=status,
        label=int(rng.integers(3)) if rng.random() < 0.8 else None,
        classes=(int(rng.integers(3)),) if status == "OK" else (),
        payload_bytes=int(rng.integers(50, 500)) if mode else 0,
        encoder_ms=float(rng.uniform(0.1, 2)),
        rtt_ms=latency * 0.8,
        transfer_ms=latency * 0.8 - 1.0,
        latency_ms=latency,
        server=TIMING if status == "OK" else None,
        reason="in-flight limit (4 frames)" if status == "SKIPPED" else "greedy",
        deadline_ms=100.0 if rng.random() < 0.9 else 150.0,
    )


def test_a_tally_is_the_summary_of_its_records() -> None:
    rng = np.random.default_rng(5)
    records = [_record(i, rng) for i in range(3000)]
    summary = summarize(records, 60.0)
    tally = RunTally(by_mode=True)
    for r in records:
        tally.add(r)
    assert tally.summary(60.0) == summary
    sent = [r for r in records if r.sent]
    assert summary.switches == sum(1 for a, b in itertools.pairwise(sent) if a.mode != b.mode)
    by_mode = tally.by_mode(60.0)
    assert list(by_mode) == list(dict.fromkeys(r.mode for r in records if r.mode))
    for mode, sub in by_mode.items():
        mine = [r for r in records if r.mode == mode]
        assert sub.frames == len(mine) and sub.accuracy == summarize(mine, 60.0).accuracy
        assert sub.latency_ms.p50 == pytest.approx(summarize(mine, 60.0).latency_ms.p50, rel=0.005)


def test_a_long_run_is_tallied_in_bounded_memory_within_half_a_percent() -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.lognormal(3.0, 1.5, 60_000), -rng.lognormal(0.0, 1.0, 2_000), np.zeros(500)])
    rng.shuffle(values)
    sketch = QuantileSketch(exact_limit=1000)
    sketch.extend(values.tolist())
    assert not sketch.exact and sketch.count == len(values)
    assert sketch.held < 4000  # buckets, not values
    ordered = np.sort(values)
    for q in (0.1, 1, 5, 25, 50, 75, 95, 99, 99.9):
        truth = ordered[round((len(values) - 1) * q / 100)]
        assert sketch.percentile(q) == pytest.approx(truth, rel=0.005, abs=1e-6), q
    assert sketch.mean == pytest.approx(values.mean())
    assert (sketch.percentile(0), sketch.percentile(100)) == (ordered[0], ordered[-1])
    sketch.extend([1e300, 1e-300, -1e300, math.inf, math.nan])  # clamped into the end buckets, never more of them
    assert sketch.held < 4000 and sketch.count == len(values) + 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=60), st.floats(0, 100))
def test_a_sketch_is_exact_while_it_holds_every_value(values: list[float], q: float) -> None:
    sketch = QuantileSketch()
    sketch.extend(values)
    assert sketch.exact
    got, want = sketch.percentile(q), percentile(values, q)
    assert got == want or (math.isnan(got) and math.isnan(want))
