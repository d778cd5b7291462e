"""What an emulated link allowed during a run (``slimsplit.evaluation.link_check``): the per-frame feasibility at real
capture times that the edge CLI and the demo print under their summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimsplit.control.base import ModeOption
from slimsplit.errors import ConfigError
from slimsplit.evaluation.link_check import LinkCheck, check_link, format_link_check
from slimsplit.evaluation.oracle import isolated_latencies, isolated_latencies_at
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.synth import gilbert_elliott
from slimsplit.link.trace import Trace
from slimsplit.records import FrameRecord

HI = ModeOption("hi", 16, 8, 0.91, 4000.0, 1.0, 1.0)
LO = ModeOption("lo", 2, 1, 0.75, 100.0, 1.0, 1.0)


def outage_trace() -> Trace:
    """12 Mbit/s (one 1500-byte opportunity per ms) except a full outage from 1.0 s to 2.0 s; period 3 s."""
    stamps = [t for t in range(1, 3001) if not 1000 <= t < 2000]
    return Trace.from_timestamps(stamps, name="outage")


def frame(index: int, t_s: float, *, hit: bool, deadline_ms: float | None = 100.0) -> FrameRecord:
    latency = 50.0 if hit else math.nan
    return FrameRecord(
        frame_id=index,
        index=index,
        mode="lo",
        status="OK" if hit else "DEADLINE_EXCEEDED",
        latency_ms=latency,
        deadline_ms=deadline_ms,
        t_s=t_s,
    )


def test_latencies_at_regular_captures_equal_the_per_fps_latencies() -> None:
    trace = gilbert_elliott(1.5e6, 0.2e6, 3.0, 2.0, outage_s=0.8, p_outage=0.5, duration_s=20.0, seed=3).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0, start_offset_s=2.5)
    regular = isolated_latencies([HI, LO], link, 30, 300, t0=0.25)
    at = isolated_latencies_at([HI, LO], link, 0.25 + np.arange(300) / 30)
    np.testing.assert_allclose(at, regular, rtol=0, atol=1e-12)


def test_latencies_at_refuse_non_finite_capture_times() -> None:
    with pytest.raises(ConfigError, match="finite"):
        isolated_latencies_at([LO], LinkConfig(uplink=Trace.constant(1e6)), [0.0, math.nan])


def test_frames_in_an_outage_are_not_allowed_and_hits_are_split_by_it() -> None:
    link = LinkConfig(uplink=outage_trace(), delay_ms=10.0)
    # 0.5 s: link up; 1.2 and 1.5 s: inside the outage (nothing leaves before 2.0 s, far past a 100 ms deadline);
    # 2.5 s: up again. The 2.5-s frame missed although the link allowed it; the 1.5-s one "hit" (a clock skew
    # between the live run and the trace would look like that): it counts as a hit, not as an allowed hit.
    results = [
        frame(0, 0.5, hit=True),
        frame(1, 1.2, hit=False),
        frame(2, 1.5, hit=True),
        frame(3, 2.5, hit=False),
        frame(4, 2.6, hit=True, deadline_ms=None),  # no deadline: not judged
        frame(5, math.nan, hit=True),  # no capture time: not judged
    ]
    check = check_link(results, [HI, LO], link)
    assert check == LinkCheck(frames=4, allowed=2, hits=2, hits_allowed=1)
    assert check.hit_rate_allowed == pytest.approx(0.5)
    assert check.to_dict()["hit_rate_allowed"] == pytest.approx(0.5)
    text = format_link_check(check)
    assert "allowed 2 of 4 frames" in text and "2 fell in outages" in text
    assert "in time: 1 of those 2 (50.0 %), and 1 more" in text


def test_the_deadline_and_the_modes_decide_what_the_link_allows() -> None:
    """1 Mbit/s and 10 ms each way: HI (4000 B) needs ~53 ms, LO (100 B) ~22 ms."""
    link = LinkConfig(uplink=Trace.constant(1e6), delay_ms=10.0)
    results = [frame(i, 0.1 * i, hit=False, deadline_ms=40.0) for i in range(5)]
    assert check_link(results, [HI], link) == LinkCheck(frames=5, allowed=0, hits=0, hits_allowed=0)
    assert check_link(results, [HI, LO], link) == LinkCheck(frames=5, allowed=5, hits=0, hits_allowed=0)
    none_allowed = check_link(results, [HI], link)
    assert none_allowed is not None and none_allowed.hit_rate_allowed is None
    assert "in time:" not in format_link_check(none_allowed)


def test_nothing_to_judge_gives_none() -> None:
    link = LinkConfig(uplink=Trace.constant(1e6))
    assert check_link([], [LO], link) is None
    assert check_link([frame(0, 0.0, hit=True, deadline_ms=None)], [LO], link) is None
    assert check_link([frame(0, 0.0, hit=True)], [], link) is None


def test_only_the_usable_modes_count() -> None:
    link = LinkConfig(uplink=Trace.constant(1e6), delay_ms=10.0)
    results = [frame(i, 0.1 * i, hit=False, deadline_ms=40.0) for i in range(3)]
    assert check_link(results, [HI, LO], link, {"hi"}) == LinkCheck(frames=3, allowed=0, hits=0, hits_allowed=0)
    assert check_link(results, [HI, LO], link, {"lo", "hi"}) == LinkCheck(frames=3, allowed=3, hits=0, hits_allowed=0)
    assert check_link(results, [HI, LO], link, {"other"}) is None
