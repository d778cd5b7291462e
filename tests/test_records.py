"""slimsplit.records: one rule for "answered by the deadline" (the simulator, the oracle and every record judge a
frame alike, at the boundary too), the server's timing on and off the wire (a reply's is checked), and one frame
record for live runs and simulations."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import pytest

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
from slimsplit.records import (
    DEADLINE_TOLERANCE_MS,
    FrameRecord,
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

    def open_transport(self, *, unary: bool = False, seed: int | None = None) -> FrameTransport:
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
