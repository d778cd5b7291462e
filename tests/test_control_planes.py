"""The plane sender's window and verdicts, and the plane controller's width choice (pure: driven on a fake clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsplit.control.base import FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.planes import (
    DeliveryWindow,
    PlaneController,
    PlaneSender,
    PlanesOptions,
    Verdict,
    WindowConfig,
    plane_widths,
)
from slimsplit.control.registry import make_controller
from slimsplit.errors import ConfigError


def test_window_sizes_itself_from_delivery_rate_samples() -> None:
    w = DeliveryWindow(WindowConfig(gain=2.0, initial_bytes=10_000, min_bytes=1_000))
    assert w.bandwidth is None and w.window == 10_000
    # a 100 kB/s link with a 20 ms round trip: units of 1000 B, one delivered every 10 ms
    t = 0.0
    for i in range(10):
        w.sent(i, 1000, t)
    for i in range(10):
        assert w.acked(i, 0.020 + 0.010 * i) is not None or i == 0
    assert w.in_flight == 0
    assert w.rtt_s == pytest.approx(0.020)
    assert w.bandwidth == pytest.approx(100_000, rel=0.15)
    assert w.window == pytest.approx(2 * (w.bandwidth or 0.0) * 0.020)
    assert w.acked(99, 1.0) is None  # not in flight: no sample


def test_window_forgets_units_of_a_broken_stream() -> None:
    w = DeliveryWindow()
    w.sent("a", 500, 0.0)
    w.sent("b", 700, 0.0)
    w.forget("a")
    assert w.in_flight == 700
    w.forget_all()
    assert w.in_flight == 0 and w.acked("b", 1.0) is None


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(20, 3000), min_size=1, max_size=40),
    rate=st.floats(1e3, 1e7),
    rtt=st.floats(0.001, 0.3),
    budget=st.floats(0.0, 1.0),
)
def test_sender_never_exceeds_the_window_nor_sends_what_it_expects_late(
    sizes: list[int], rate: float, rtt: float, budget: float
) -> None:
    w = DeliveryWindow(rtt_s=rtt)
    # seed one rate sample so the estimate is known
    w.sent("seed", 1000, 0.0)
    w.acked("seed", rtt + 1000 / rate)
    sender = PlaneSender(w)
    now = 1.0
    due = now + budget
    for i, n in enumerate(sizes):
        verdict = sender.decide(n, now, due, first=i == 0)
        if verdict is Verdict.SEND:
            assert w.in_flight == 0 or w.in_flight + n <= w.window
            if i > 0:
                assert w.arrival_s(n, now) <= due
            sender.sent(i, n, now)
        elif verdict is Verdict.DROP:
            if i == 0:
                assert now + w.rtt_s / 2 > due
            else:
                assert w.arrival_s(n, now) > due
            sender.withheld(n)
            break
        else:
            assert w.in_flight > 0 and w.in_flight + n > w.window
            break
    assert sender.bytes_sent == w.in_flight


def test_first_plane_is_sent_on_a_pessimistic_estimate_but_not_past_the_deadline() -> None:
    w = DeliveryWindow(rtt_s=0.05)
    w.sent("seed", 100, 0.0)
    w.acked("seed", 1.0)  # a dismal sample: 100 B/s
    sender = PlaneSender(w)
    assert sender.decide(1000, 2.0, 2.1) is Verdict.DROP  # a later plane: expected 10 s late
    assert sender.decide(1000, 2.0, 2.1, first=True) is Verdict.SEND
    assert sender.decide(1000, 2.09, 2.1, first=True) is Verdict.DROP  # half a round trip is more than is left
    assert sender.due_s(3.0, 0.01) == pytest.approx(3.0 - 0.02 - 0.025 - 0.01)  # margin, half the rtt, the tail


def _modes() -> list[ModeOption]:
    acc = {(2, 1): 0.60, (2, 2): 0.70, (2, 4): 0.75, (2, 8): 0.751, (8, 1): 0.62, (8, 2): 0.74, (8, 4): 0.80}
    acc[(8, 8)] = 0.82
    return [
        ModeOption(f"w{w}b{b}", w, b, a, payload_bytes=20 + 10 * w * b, encoder_ms=1.0, server_ms=1.0)
        for (w, b), a in acc.items()
    ]


def test_plane_widths_send_the_fewest_bits_that_buy_accuracy() -> None:
    widths = {w.width: w for w in plane_widths(_modes(), bits_tolerance=0.005)}
    assert widths[2].mode == "w2b4"  # w2b8 is 0.1 points better: not worth 4 more planes
    assert widths[8].mode == "w8b8"  # w8b8 is 2 points better
    assert widths[2].accuracy == (0.60, 0.70, 0.70, 0.75)  # 3 planes: the 2-bit code's accuracy
    assert widths[8].accuracy[4:] == (0.80, 0.80, 0.80, 0.82)
    assert widths[2].plane_bytes == pytest.approx((20 + 80 - 20) / 4 + 20)


def test_the_controller_picks_the_width_the_link_can_carry() -> None:
    run = RunConfig(deadline_ms=100.0, fps=10.0, max_in_flight=2)
    ctl = make_controller("planes", _modes(), run, samples=3, margin=1.0)
    assert isinstance(ctl, PlaneController)
    assert ctl.choose(0.0, 0, 0).mode == "w2b4"  # nothing measured: the narrowest
    for i in range(3):  # fast: 10 Mbit/s
        ctl.observe(FrameFeedback(i, "w2b4", 10_000, 0.0, 0.008 + 0.001, 1.0))
    assert ctl.choose(1.0, 0, 0).mode == "w8b8"
    for i in range(3):  # slow: 8 kbit/s, ~98 B in the budget: 2 planes of width 2 (0.70) beat 1 of width 8 (0.62)
        ctl.observe(FrameFeedback(i, "w8b8", 50, 0.0, 0.05 + 0.001, 1.0))
    d = ctl.choose(2.0, 0, 0)
    assert (d.mode, d.reason) == ("w2b4", "2 planes expected")
    assert d.estimate_bps == pytest.approx(8000, rel=0.01)
    ctl.observe(FrameFeedback(9, "w8b8", 0, 0.0, 0.1, 0.0, ok=False))
    assert math.isfinite(ctl.choose(3.0, 0, 0).estimate_bps or math.nan)


def test_the_controller_refuses_a_width_it_does_not_have() -> None:
    with pytest.raises(ConfigError, match="fixed_width"):
        PlaneController(_modes(), RunConfig(), PlanesOptions(fixed_width=3))
    assert PlaneController(_modes(), RunConfig(), PlanesOptions(fixed_width=8)).choose(0, 0, 0).mode == "w8b8"
    with pytest.raises(ConfigError, match="margin"):
        PlanesOptions(margin=0.0)


def test_the_budget_leaves_the_way_up_the_way_back_and_the_margin() -> None:
    w = DeliveryWindow(rtt_s=0.02)
    sender = PlaneSender(w, margin_s=0.01)
    assert sender.budget_s(0.1, 0.0) == pytest.approx(0.1 - 0.01 - 0.01 - 0.01)  # nothing in flight
    w.sent("seed", 1000, 0.0)
    w.acked("seed", 0.02 + 0.01)  # 100 kB/s
    w.sent("big", 3000, 1.0)  # 30 ms of queue ahead of the open
    assert sender.budget_s(0.1, 1.0) == pytest.approx(0.1 - (0.03 + 0.01) - 0.01 - 0.01, rel=0.05)
    w.sent("huge", 100_000, 1.0)  # an estimate of a second of queue: never more than half the time left
    assert sender.budget_s(0.1, 1.0) == pytest.approx(0.1 - 0.04 - 0.01 - 0.01)
    assert sender.budget_s(0.001, 1.0) == 0.001
