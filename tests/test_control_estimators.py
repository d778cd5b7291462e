"""Throughput samples from frame feedback, and the EWMA / robust harmonic-mean estimators."""

from __future__ import annotations

import pytest

from slimsplit.edge.control.base import FrameFeedback
from slimsplit.edge.control.estimators import (
    EwmaEstimator,
    RobustHarmonicEstimator,
    TransferSampler,
    make_estimator,
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


def test_harmonic_mean_with_error_discount() -> None:
    h = RobustHarmonicEstimator(window=5)
    h.update(100.0)
    assert h.estimate() == pytest.approx(100.0)  # no error history yet
    h.update(300.0)
    hm = 2 / (1 / 100 + 1 / 300)
    err = abs(100 - 300) / 300  # the prediction before the sample (100) against the sample
    assert h.estimate() == pytest.approx(hm / (1 + err))
    assert h.peak() == 300.0


def test_harmonic_window_and_error_clip() -> None:
    h = RobustHarmonicEstimator(window=2, max_error=1.0)
    for x in (100.0, 100.0, 100.0):
        h.update(x)
    assert h.estimate() == pytest.approx(100.0)
    h.update(1.0)  # a sample across an outage: relative error 99, clipped to 1
    assert h.max_recent_error() == 1.0
    assert h.estimate() == pytest.approx((2 / (1 / 100 + 1 / 1)) / 2)


def test_quantile_bound() -> None:
    h = RobustHarmonicEstimator(window=2, quantile=0.1, quantile_window=10)
    for x in (50.0, 1000.0, 1000.0):
        h.update(x)
    est = h.estimate()
    assert est is not None and est <= 50.0


def test_make_estimator() -> None:
    assert isinstance(make_estimator("ewma", alpha=0.5), EwmaEstimator)
    assert isinstance(make_estimator("harmonic", window=3), RobustHarmonicEstimator)
    with pytest.raises(ConfigError):
        make_estimator("kalman")
