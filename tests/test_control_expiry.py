"""Frames the edge gives up on (the live client's per-frame deadline timer): the simulator's expiry rules, and how
the MPC keeps the bytes of expired frames in its queue model, detects outages and stays out of a blind backlog."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from slimsplit.control.base import FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import MpcConfig, MpcController
from slimsplit.control.registry import make_controller
from slimsplit.errors import ConfigError
from slimsplit.evaluation.oracle import feasible_in_isolation, isolated_latencies, plan_oracle
from slimsplit.evaluation.sim import SimConfig, figures, simulate
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.synth import PiecewiseModel, gilbert_elliott
from slimsplit.link.trace import Trace

ONE = ModeOption("one", 1, 8, 0.8, 18750.0, 0.0, 0.0)  # 150 ms at 1 Mbit/s
HI = ModeOption("hi", 16, 8, 0.91, 4000.0, 1.0, 1.0)
LO = ModeOption("lo", 2, 1, 0.75, 100.0, 1.0, 1.0)
RUN = RunConfig(deadline_ms=100, fps=30, max_in_flight=8)


def test_sim_expiry_frees_the_slot_but_keeps_the_bytes_in_the_link() -> None:
    """1 Mbit/s, 18.75 kB frames (150 ms each) every 100 ms, 80 ms deadline, one frame in flight: every frame is
    late. Waiting for replies, every other capture finds the slot taken; with the live client's rule the slot is
    freed 80 ms after sending, so every frame goes out, and their bytes queue behind the expired ones."""
    link = LinkConfig(uplink=Trace.constant(1e6), delay_ms=0.0)
    base = SimConfig(fps=10.0, deadline_ms=80.0, duration_s=1.0, max_in_flight=1, reply_bytes=0)
    reply = simulate(make_controller("fixed", [ONE], base.run), [ONE], link, base)
    sent_cfg = dataclasses.replace(base, expiry="sent")
    sent = simulate(make_controller("fixed", [ONE], sent_cfg.run), [ONE], link, sent_cfg)
    n_reply = sum(r.sent for r in reply.records)
    n_sent = sum(r.sent for r in sent.records)
    assert n_reply == 5 and n_sent == 10
    lat = [r.latency_ms for r in reply.records if math.isfinite(r.latency_ms)]
    assert lat == pytest.approx([150.0] * 5, abs=2.0)  # waiting for the reply: the link drains between frames
    assert reply.late_replies == 0 and sent.late_replies > 0
    expired = [r for r in sent.records if r.sent and not r.ok]
    assert expired and all(r.status == "DEADLINE_EXCEEDED" for r in expired)
    assert all(r.t_s + r.latency_ms / 1e3 - (r.sent_s or 0.0) == pytest.approx(0.080, abs=1e-6) for r in expired)
    s = figures(sent.records, [ONE])
    assert s["hits"] == 0 and s["late"] == n_sent
    with pytest.raises(ConfigError, match="expiry"):
        SimConfig(expiry="never")


def test_sim_expiry_from_capture_drops_a_frame_still_waiting_for_the_encoder() -> None:
    slow = ModeOption("slow", 1, 8, 0.8, 100.0, 60.0, 0.0)  # a 60 ms encoder at 20 frames/s: frames queue for it
    link = LinkConfig(uplink=Trace.constant(10e6))
    cfg = SimConfig(fps=20, deadline_ms=50, duration_s=1.0, max_in_flight=8, expiry="captured", reply_bytes=0)
    res = simulate(make_controller("fixed", [slow], cfg.run), [slow], link, cfg)
    never_sent = [r for r in res.records if r.sent and r.sent_s is None]
    assert never_sent and all(not r.ok for r in never_sent)


def _feed(ctl: MpcController, bps: float, n: int = 8) -> None:
    t = 0.0
    for i in range(n):
        dur = 8 * 1000 / bps
        ctl.observe(FrameFeedback(i, "hi", 1000, t, t + dur, 0.0))
        t += dur + 1.0


def test_mpc_keeps_expired_bytes_queued_until_a_later_frame_confirms_them() -> None:
    ctl = MpcController([HI, LO], RUN, MpcConfig(packet_bytes=0))
    _feed(ctl, 1e6)
    ctl.on_sent(100, "hi", 4000, 100.0)
    ctl.observe(FrameFeedback(100, "hi", 4000, 100.0, 100.1, 0.0, ok=False))  # expired at its deadline
    assert ctl.unconfirmed_frames == 1  # the edge stopped waiting; the bytes did not go away
    d = ctl.choose(100.101, 0, 0)  # nothing in flight for the loop, but an expired frame ahead: cautious
    assert d.mode == "lo" and "outage" in d.reason
    assert ctl.last_cap_bps == pytest.approx(8 * 4000 / 0.099)  # its 4 kB had not left 99 ms after sending
    ctl.on_sent(101, "lo", 100, 100.101)
    ctl.observe(FrameFeedback(101, "lo", 100, 100.101, 100.110, 1.0))  # FIFO: frame 100 has left too
    assert ctl.unconfirmed_frames == 0
    after = ctl.choose(100.2, 0, 0)
    assert "outage" not in after.reason
    # the sample credits frame 100's bytes: 4100 B in the 109 ms since frame 100 was sent, ~0.3 Mbit/s (not the
    # 100 B / 8 ms of frame 101 alone, which would be 0.1 Mbit/s and blame the link for the wait)
    est = ctl.estimate_bps()
    assert est is not None and est < 1e6


def test_mpc_expired_frames_merge_into_one_queue_entry() -> None:
    ctl = MpcController([HI, LO], RUN)
    _feed(ctl, 1e6)
    for i in range(50):  # a long outage: every frame expires unanswered
        t = 100.0 + i / 30
        ctl.on_sent(100 + i, "lo", 100, t)
        ctl.observe(FrameFeedback(100 + i, "lo", 100, t, t + 0.1, 0.0, ok=False))
    assert ctl.unconfirmed_frames == 1  # bounded: the decision stays O(frames in flight)
    d = ctl.choose(102.0, 0, 0)
    assert d.mode in ("lo", None)


def test_mpc_sees_an_outage_from_the_age_of_the_oldest_unanswered_frame() -> None:
    ctl = MpcController([HI, LO], RUN, MpcConfig(packet_bytes=0), rtt_ms=20)
    _feed(ctl, 2e6)
    ctl.on_sent(100, "hi", 4000, 100.0)  # 16 ms at 2 Mbit/s, reply after 20 ms more
    early = ctl.choose(100.02, 4000, 1)
    assert early.mode == "hi" and "outage" not in early.reason
    late = ctl.choose(100.2, 4000, 1)  # 160 ms overdue: more than half a deadline
    assert late.mode in ("lo", None) and "outage" in late.reason
    assert ctl.last_cap_bps < 8 * 4000 / 0.17
    off = MpcController([HI, LO], RUN, MpcConfig(packet_bytes=0, outage_after=None), rtt_ms=20)
    _feed(off, 2e6)
    off.on_sent(100, "hi", 4000, 100.0)
    assert "outage" not in off.choose(100.2, 4000, 1).reason


@pytest.mark.parametrize("expiry", ["reply", "sent"])
def test_mpc_recovers_after_an_outage_under_both_expiry_rules(expiry: str) -> None:
    modes = [HI, LO]
    trace = PiecewiseModel(((5.0, 1e6), (3.0, 0.0), (5.0, 1e6))).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0)
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=13.0, max_in_flight=4, expiry=expiry)
    res = simulate(make_controller("mpc", modes, cfg.run, rtt_ms=20), modes, link, cfg)
    during = [r for r in res.records if 5.3 <= r.t_s < 7.9]
    assert sum(r.mode == "hi" for r in during) <= 3  # the outage is probed with the lightest mode
    after = [bool(r.hit) for r in res.records if 8.5 <= r.t_s < 13.0]
    assert np.mean(after) > 0.95


def test_feasible_in_isolation_contains_the_oracle_plan() -> None:
    modes = [HI, ModeOption("mid", 8, 4, 0.88, 800.0, 1.0, 1.0), LO]
    trace = gilbert_elliott(1.5e6, 0.2e6, 3.0, 2.0, outage_s=0.8, p_outage=0.5, duration_s=30.0, seed=4).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0)
    n = 900
    plan = plan_oracle(modes, 100, link, 30, n, 8)
    alone = feasible_in_isolation(modes, 100, link, 30, n)
    assert alone.shape == (n,) and bool(np.all(alone[plan.feasible]))  # the joint plan delivers no frame alone
    assert 0 < alone.sum() < n
    lat = isolated_latencies(modes, link, 30, n)
    assert lat.shape == (n, 3) and bool(np.all(lat[:, 0] >= lat[:, 2] - 1e-9))  # more bytes never arrive sooner
    # one frame at a time (period = deadline, K = 1): the feasible frames never compete, so the sets agree
    plan1 = plan_oracle(modes, 100, link, 10, 300, 1)
    assert np.array_equal(plan1.feasible, feasible_in_isolation(modes, 100, link, 10, 300))
    assert math.isfinite(float(lat.max()))
