"""Throughput samples from frame feedback, and the EWMA estimator."""

from __future__ import annotations

import pytest

from slimsplit.control.base import FrameFeedback
from slimsplit.control.estimators import (
    EwmaEstimator,
    TransferSampler,
)
from slimsplit.errors import ConfigError


def fb(fid: int, nbytes: int, sent: float, done: float, server_ms: float = 0.0, ok: bool = True) -> FrameFeedback:
    return FrameFeedback(fid, "m", nbytes, sent, done, server_ms, ok)


def test_sample_excludes_server_time_and_rtt() -> None:
    s = TransferSampler(rtt_s=0.030)
    sample = s.sample(fb(1, 5000, 0.0, 0.100, server_ms=20.0))
    assert sample is not None
    # departure = 0.100 - 0.020 - 0.030 = 0.050; transfer 50 ms
    assert sample.departed_at == pytest.approx(0.050)
    assert sample.transfer_s == pytest.approx(0.050)
    assert sample.bps == pytest.approx(8 * 5000 / 0.050)


def test_sample_accounts_for_bytes_already_in_flight() -> None:
    s = TransferSampler()
    s.sample(fb(1, 10000, 0.0, 0.100))
    # frame 2 was sent at 10 ms but could only start when frame 1 had left (100 ms): transfer 50 ms, not 140
    second = s.sample(fb(2, 5000, 0.010, 0.150))
    assert second is not None and second.transfer_s == pytest.approx(0.050)
    assert s.last_departure == pytest.approx(0.150)


def test_packet_allowance_only_for_frames_that_found_the_link_idle() -> None:
    s = TransferSampler(packet_bytes=1500)
    first = s.sample(fb(1, 500, 0.0, 0.040))
    assert first is not None and first.bps == pytest.approx(8 * 2000 / 0.040)
    queued = s.sample(fb(2, 500, 0.030, 0.050))
    assert queued is not None and queued.bps == pytest.approx(8 * 500 / 0.010)


def test_failed_or_empty_frames_give_no_sample() -> None:
    s = TransferSampler()
    assert s.sample(fb(1, 5000, 0.0, 0.1, ok=False)) is None
    assert s.sample(fb(2, 0, 0.0, 0.1)) is None


def test_transfer_time_is_floored() -> None:
    s = TransferSampler(rtt_s=0.1, min_transfer_s=0.002)
    sample = s.sample(fb(1, 1000, 0.0, 0.05))  # rtt larger than the elapsed time: clamp, no division by <= 0
    assert sample is not None and sample.transfer_s == 0.002


def test_ewma_alpha() -> None:
    e = EwmaEstimator(0.4)
    assert e.estimate() is None
    e.update(100.0)
    e.update(200.0)
    assert e.estimate() == pytest.approx(0.4 * 200 + 0.6 * 100)
    with pytest.raises(ConfigError):
        EwmaEstimator(0.0)


def test_expired_bytes_ahead_are_credited_to_the_next_sample() -> None:
    s = TransferSampler()
    s.sample(fb(1, 1000, 0.0, 0.010))
    # frame 2 (4 kB, sent at 1.0) expired unanswered; frame 3 (1 kB) sent behind it departs at 1.050
    alone = TransferSampler()
    alone.sample(fb(1, 1000, 0.0, 0.010))
    naive = alone.sample(fb(3, 1000, 1.010, 1.050))
    credited = s.sample(fb(3, 1000, 1.010, 1.050), ahead_bytes=4000, ahead_sent=1.0)
    assert naive is not None and credited is not None
    assert naive.bps == pytest.approx(8 * 1000 / 0.040)  # blames the link for the wait behind frame 2
    assert credited.bps == pytest.approx(8 * 5000 / 0.050)  # both frames' bytes since frame 2 entered the link


def test_span_measures_frames_that_leave_in_the_same_opportunity_together() -> None:
    """Three 500-byte frames queued back to back on a link with 1500-byte opportunities every 12 ms: the second and
    third leave in the same opportunity as the first. Per frame that is 0 s (clamped to 1 ms: 4 Mbit/s) for two of
    them; over the span it is the rate of the opportunities."""
    per_frame = TransferSampler()
    spanned = TransferSampler(span=4)
    for sampler in (per_frame, spanned):
        sampler.sample(fb(0, 100, -1.0, -0.99))  # a previous busy period
    departures = [(1, 0.000, 0.012), (2, 0.001, 0.012), (3, 0.002, 0.012), (4, 0.003, 0.024), (5, 0.004, 0.024)]
    got: dict[str, list[float]] = {"per_frame": [], "spanned": []}
    for fid, sent, dep in departures:
        for name, sampler in (("per_frame", per_frame), ("spanned", spanned)):
            x = sampler.sample(fb(fid, 500, sent, dep))
            assert x is not None
            got[name].append(x.bps)
    assert max(got["per_frame"]) == pytest.approx(8 * 500 / 0.001)  # the artefact
    assert max(got["spanned"][1:]) < 8 * 2500 / 0.012 * 1.01  # never more than the frames' bytes per opportunity
    assert got["spanned"][-1] == pytest.approx(8 * 2500 / 0.024)  # all five over the 24 ms since frame 1 started
    with pytest.raises(ConfigError):
        TransferSampler(span=0)
