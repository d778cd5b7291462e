"""The shaping model on hand-computed cases, and the discrete-event simulator built on it."""

from __future__ import annotations

import dataclasses

import pytest

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.registry import make_controller
from slimsplit.errors import ConfigError
from slimsplit.evaluation.sim import SimConfig, figures, simulate
from slimsplit.link.shaping import LinkConfig, LinkDirection
from slimsplit.link.synth import PiecewiseModel
from slimsplit.link.trace import Trace, parse_mahimahi
from slimsplit.records import reason_kind


def small() -> Trace:
    return parse_mahimahi("10\n10\n20\n40\n", "small.up")  # 3000 B at 10 ms, 1500 at 20, 1500 at 40; period 40


def test_per_byte_accounting_shares_an_opportunity() -> None:
    d = LinkDirection(small(), delay_s=0.005)
    assert d.enqueue(0.0, 1000) == pytest.approx(0.015)  # leaves at 10 ms, +5 ms
    # the next message uses the rest of the same 10-ms opportunity (2000 B) and 500 B of the 20-ms one
    assert d.enqueue(0.001, 2500) == pytest.approx(0.025)
    assert d.backlog(0.0105) == pytest.approx(500.0)
    assert d.backlog(0.020) == 0.0


def test_unused_opportunities_are_lost() -> None:
    d = LinkDirection(small())
    d.enqueue(0.0, 3500)  # ends 500 B into the 20-ms opportunity
    # at 30 ms the rest of the 20-ms opportunity is gone: the next byte goes at 40 ms
    assert d.enqueue(0.030, 100) == pytest.approx(0.040)
    # at 41 ms the rest of the 40-ms opportunity is gone too: the trace wraps, next instant 50 ms
    assert d.enqueue(0.041, 1500) == pytest.approx(0.050)


def test_departure_time_is_a_pure_query() -> None:
    d = LinkDirection(small())
    assert d.departure_time(0.0, 3001) == pytest.approx(0.020)
    assert d.departure_time(0.0, 3001) == pytest.approx(0.020)
    assert d.backlog(0.0) == 0.0


def test_withdraw_takes_back_the_tail_of_the_queue() -> None:
    d = LinkDirection(small(), delay_s=0.005)
    d.enqueue(0.0, 5000)  # 3000 B leave at 10 ms, 1500 at 20 ms, 500 would leave at 40 ms
    assert d.backlog(0.015) == pytest.approx(2000.0)
    assert d.withdraw(0.015, keep_bytes=1500) == pytest.approx(500.0)  # the last 500 B go back to the sender
    assert d.backlog(0.015) == pytest.approx(1500.0)
    assert d.withdraw(0.015, keep_bytes=1500) == 0.0  # nothing beyond the kept bytes is left
    # the next message starts where the kept bytes end: its first byte uses the 40-ms opportunity
    assert d.enqueue(0.021, 1000) == pytest.approx(0.045)
    assert d.withdraw(0.050) == 0.0  # an empty queue gives nothing back


def test_space_is_the_room_left_in_the_queue() -> None:
    d = LinkDirection(small(), queue_bytes=2000)
    d.enqueue(0.0, 1500)
    assert d.backlog(0.0) == pytest.approx(1500.0)
    assert d.space(0.0) == pytest.approx(500.0)
    assert d.space(0.011) == pytest.approx(2000.0)  # the 10-ms opportunity drained the queue


def test_drain_time() -> None:
    d = LinkDirection(small())
    d.enqueue(0.0, 4000)
    assert d.drain_time(0.0, 1000.0) == pytest.approx(0.010)  # 3000 B leave at 10 ms
    assert d.drain_time(0.0, 0.0) == pytest.approx(0.020)
    assert d.drain_time(0.030, 0.0) == 0.030


def test_segments_release_per_instant() -> None:
    d = LinkDirection(small(), delay_s=0.001)
    ends, times = d.enqueue_segments(0.0, 5000)
    # bytes 1..3000 at 10 ms, 3001..4500 at 20 ms, 4501..5000 at 40 ms
    assert ends == [3000, 4500, 5000]
    assert times == pytest.approx([0.011, 0.021, 0.041])


def test_segments_follow_the_instants_not_the_chunk() -> None:
    # one opportunity at 300 ms, the next at 1300 ms; 100 B already wait, so a chunk given at 50 ms starts at
    # trace byte 101: its first 1400 B (positions 101..1500) go at 300 ms, the rest at 1300 ms. Cutting the chunk in
    # 1500-byte pieces instead held a 1400-B message at its start until 1300 ms (the piece ended at position 1600)
    d = LinkDirection(parse_mahimahi("300\n1300\n", "sparse.up"))
    assert d.enqueue(0.0, 100) == pytest.approx(0.300)
    ends, times = d.enqueue_segments(0.050, 2400)
    assert ends == [1400, 2400]
    assert times == pytest.approx([0.300, 1.300])


def test_segments_of_a_fluid_trace_are_one_per_millisecond() -> None:
    d = LinkDirection(Trace.constant(1e6))  # 125 B per ms
    ends, times = d.enqueue_segments(0.0005, 300)
    assert ends == [125, 250, 300]
    assert times == pytest.approx([0.001, 0.002, 0.003])


def test_a_queue_smaller_than_an_instant_loses_its_excess() -> None:
    # queue 1500 B on small(): 3000 B at 10 ms, 1500 at 20, 1500 at 40, period 40. 6000 B given at 0:
    # 1500 enter (the rest waits at the sender); 10 ms serves them, its other 1500 B find the queue empty and are
    # lost; the sender refills 1500 after each instant: they leave at 20, 40 and 50 ms (the next period's 10 ms).
    # An unbounded queue would carry all 6000 B by 40 ms
    d = LinkDirection(small(), queue_bytes=1500)
    assert d.departure_time(0.0, 6000) == pytest.approx(0.050)
    assert LinkDirection(small()).departure_time(0.0, 6000) == pytest.approx(0.040)
    assert d.enqueue(0.0, 6000) == pytest.approx(0.050)
    assert d.space(0.001) == 0.0  # the sender still holds bytes
    # 100 B given at 30 ms wait behind the held ones: the last of those enters after 40 ms and fills the queue;
    # 50 ms serves them (1500 of its 3000 B), the 100 B enter after it and leave at 60 ms
    assert d.enqueue(0.030, 100) == pytest.approx(0.060)


def test_a_queue_that_holds_every_instant_only_delays_the_hand_over() -> None:
    # queue 3000 B on small(): 6000 B at 0 leave as in an unbounded queue (by 40 ms); the last of them enters the
    # queue only after 10 ms, when the first 3000 B leave
    d = LinkDirection(small(), queue_bytes=3000)
    assert d.enqueue(0.0, 6000) == pytest.approx(0.040)
    assert d.backlog(0.005) == pytest.approx(6000.0) and d.space(0.005) == 0.0
    assert d.space(0.011) == 0.0 and d.space(0.041) == pytest.approx(3000.0)
    assert d.enqueue(0.005, 100) == pytest.approx(0.050)  # behind them: the next period's 10 ms


def test_queue_warnings() -> None:
    assert LinkConfig(uplink=small(), queue_bytes=3000).queue_warnings() == []
    (line,) = LinkConfig(uplink=small(), downlink=Trace.constant(1e6), queue_bytes=1500).queue_warnings()
    assert "uplink queue (1500 B)" in line and "75%" in line


def test_idle_capacity() -> None:
    d = LinkDirection(small())
    d.enqueue(0.0, 1000)  # leaves at 10 ms
    assert d.idle_capacity(0.0, 0.015) == pytest.approx(2000.0)  # the rest of the 10-ms instant
    assert d.idle_capacity(0.011, 0.045) == pytest.approx(3000.0)  # 20 and 40 ms found the queue empty
    assert d.idle_capacity(0.02, 0.01) == 0.0


def test_unshaped_direction_only_delays() -> None:
    d = LinkDirection(None, delay_s=0.02)
    assert d.enqueue(1.0, 10**9) == pytest.approx(1.02)
    assert d.backlog(1.0) == 0.0


def test_start_offset_shifts_into_the_trace() -> None:
    d = LinkDirection(small(), offset_s=0.015)  # link time 0 = trace time 15 ms
    assert d.enqueue(0.0, 100) == pytest.approx(0.005)  # first instant at/after 15 ms is 20 ms


def test_out_of_order_use_is_an_error() -> None:
    d = LinkDirection(small())
    d.enqueue(0.02, 1)
    with pytest.raises(ConfigError, match="out of time order"):
        d.enqueue(0.01, 1)


def test_constant_rate_fluid() -> None:
    d = LinkDirection(Trace.constant(1e6))
    assert d.enqueue(0.0, 12500) == pytest.approx(0.100)  # 125 B per ms


def test_link_config_validation() -> None:
    with pytest.raises(ConfigError):
        LinkConfig(delay_ms=-1)
    with pytest.raises(ConfigError):
        LinkConfig(queue_bytes=0)
    assert LinkConfig(delay_ms=10).base_rtt_s == pytest.approx(0.02)


# ---------------------------------------------------------------------------------------------- simulator

ONE = ModeOption("big", 1, 8, 0.9, 12500.0, 10.0, 5.0)


def test_sim_latency_is_hand_computed() -> None:
    link = LinkConfig(uplink=Trace.constant(1e6), delay_ms=10.0)
    cfg = SimConfig(fps=10, deadline_ms=200, duration_s=0.3, max_in_flight=2, reply_bytes=0)
    res = simulate(make_controller("fixed", [ONE], cfg.run), [ONE], link, cfg)
    # frame 0: sent at 10 ms; 1125 B of capacity passed before; its last byte (13625) leaves at 109 ms;
    # +10 ms delay, +5 ms server, +10 ms back = 134 ms. Frame 1 continues where frame 0 ended: also 134 ms.
    lat = [r.latency_ms / 1e3 for r in res.records]
    assert lat == pytest.approx([0.134, 0.134, 0.134])
    assert all(r.hit for r in res.records)
    assert res.records[0].sent_s == pytest.approx(0.010)


def ge_link() -> LinkConfig:
    model = PiecewiseModel(((5.0, 2e6), (3.0, 0.1e6), (2.0, 0.0), (5.0, 1.5e6)), poisson=True, seed=3)
    return LinkConfig(uplink=model.trace(), delay_ms=10.0)


MODES = [
    ModeOption("hi", 16, 8, 0.91, 1024.0, 1.0, 1.0),
    ModeOption("mid", 8, 4, 0.88, 300.0, 0.8, 1.0),
    ModeOption("lo", 2, 1, 0.75, 40.0, 0.5, 1.0),
]


def test_sim_is_deterministic() -> None:
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=15.0, max_in_flight=6)
    runs = [simulate(make_controller("mpc", MODES, cfg.run, rtt_ms=20), MODES, ge_link(), cfg) for _ in range(2)]
    a, b = ([dataclasses.astuple(r) for r in run.records] for run in runs)
    assert a == b
    assert len(a) == 450


class _Greedy(Controller):
    """Always the biggest mode: tries to exceed the in-flight limit."""

    name = "greedy-test"

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        return Decision("hi")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


def test_in_flight_limit_is_enforced_and_recorded() -> None:
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=15.0, max_in_flight=3)
    res = simulate(_Greedy(), MODES, ge_link(), cfg)
    sent = [r for r in res.records if r.sent_s is not None]
    for r in res.records:  # at every capture, at most K frames admitted and not yet completed
        t = r.t_s
        in_flight = sum(1 for s in sent if s.t_s <= t and s.t_s + s.latency_ms / 1e3 > t)
        assert in_flight <= cfg.max_in_flight
    limited = [r for r in res.records if r.skipped]
    assert limited and all(reason_kind(r.reason) == "in-flight limit" for r in limited)
    s = figures(res.records, MODES)
    assert s["dropped"] == len(limited) and s["drop_reasons"] == {"in-flight limit": len(limited)}


def test_figures() -> None:
    link = LinkConfig(uplink=Trace.constant(1e6), delay_ms=10.0)
    cfg = SimConfig(fps=10, deadline_ms=130, duration_s=1.0, max_in_flight=1, reply_bytes=0)
    res = simulate(make_controller("fixed", [ONE], cfg.run), [ONE], link, cfg)
    s = figures(res.records, [ONE])
    # 134 ms per frame > 130 ms: every frame is late; with K = 1 every other capture finds a frame in flight
    assert s["hit_rate"] == 0.0 and s["late"] == 5 and s["dropped"] == 5
    assert s["mean_accuracy"] == 0.0 and s["bytes_sent"] == 5 * 12500
    assert s["mean_latency_ms"] == pytest.approx(134.0)
