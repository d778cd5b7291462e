"""Uplink throughput estimation from the frames themselves (no probing traffic).

Turning a completed frame into a throughput sample (:class:`TransferSampler`)
-----------------------------------------------------------------------------
For frame ``i`` the edge knows ``sent_i`` (payload handed to the transport), ``completed_i`` (prediction arrived),
``server_i`` (the server's reported time for the frame, ``server_ms``) and ``bytes_i``. With ``rtt`` the round-trip
propagation time (no transmission; measured by the client, e.g. from pings, or 0 when unknown) the time the last
payload byte left the uplink bottleneck is

    dep_i = completed_i - server_i - rtt

The uplink is a FIFO, so frame ``i`` could not start transmitting before the frames sent ahead of it had left:

    start_i    = max(sent_i, dep_prev)        dep_prev = latest dep_j of a completed frame j sent before i
    transfer_i = max(dep_i - start_i, min_transfer_s)
    sample_i   = 8 * (bytes_i + a_i) / transfer_i     (bits per second)
    a_i        = packet_bytes if frame i started on an idle link (sent_i >= dep_prev) else 0

(with the bytes of expired frames that provably left ahead of it counted too, see :meth:`TransferSampler.sample`),
so a frame that waited behind bytes already in flight is not mistaken for a slow link, and the server's time is
never counted as transfer time. ``packet_bytes`` (default 0 = pure fluid model) is the *packetisation
allowance*: on a link that delivers in packet-sized opportunities (Mahimahi: 1500 B), a frame that finds the link
idle first waits for the next opportunity, so its transfer time is about ``(bytes + packet) / capacity`` rather than
``bytes / capacity``; without the allowance, small frames make the link look many times slower than it is. Frames
queued behind others continue in the packets already flowing and get no allowance. Predictions must use the same
model (:class:`~slimsplit.control.controllers.MpcController` does). With ``rtt`` unknown (0) the sample is
conservative: an isolated frame's transfer time then includes the propagation delay; back-to-back frames are still
exact (``dep_i - dep_prev``).

Estimators (bits per second, ``None`` before the first sample)
--------------------------------------------------------------
* :class:`EwmaEstimator`: ``e <- alpha * sample + (1 - alpha) * e`` with ``alpha = 0.4`` (the slimmable-ensemble
  paper's choice); the first sample initialises ``e``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from slimsplit.control.base import FrameFeedback
from slimsplit.errors import ConfigError


@dataclass(frozen=True)
class ThroughputSample:
    frame_id: int
    payload_bytes: int
    transfer_s: float
    bps: float
    departed_at: float  # estimated time the last payload byte left the uplink bottleneck


class TransferSampler:
    """Computes throughput samples from frame feedback (formula in the module docstring).

    ``span`` > 1 measures over up to ``span`` departure instants of one busy period (frames queued back to back):
    the sample of frame ``i`` is the bytes of the frames that departed after a reference point, over the time since
    it, the reference being the departure instant ``span`` back (or the start of the busy period, with the packet
    allowance, if that is nearer); frames leaving at the same instant count as one. On a link
    that delivers in packet-sized opportunities, small frames queued together leave in the same opportunity: their
    per-frame intervals are zero or a whole opportunity gap, so per-frame samples swing by 100x; a few frames
    together measure the rate. ``span`` = 1 is the per-frame sample of the module docstring."""

    __slots__ = (
        "_cum",
        "_dep_prev",
        "_dep_prev_sent",
        "_window",
        "min_transfer_s",
        "packet_bytes",
        "rtt_s",
        "span",
    )

    def __init__(
        self, rtt_s: float = 0.0, min_transfer_s: float = 0.001, packet_bytes: float = 0.0, span: int = 1
    ) -> None:
        if rtt_s < 0 or min_transfer_s <= 0 or packet_bytes < 0 or span < 1:
            raise ConfigError(
                f"need rtt_s >= 0, min_transfer_s > 0, packet_bytes >= 0, span >= 1; "
                f"got {rtt_s}, {min_transfer_s}, {packet_bytes}, {span}"
            )
        self.rtt_s = rtt_s
        self.min_transfer_s = min_transfer_s
        self.packet_bytes = packet_bytes
        self.span = span
        self._dep_prev = -math.inf
        self._dep_prev_sent = -math.inf
        self._window: deque[tuple[float, float]] = deque()  # (time, cumulative bits) reference points
        self._cum = 0.0  # bits departed in the current busy period (after the packet allowance credit)

    @property
    def last_departure(self) -> float:
        """Estimated departure time of the most recent frame known to have left the uplink (-inf if none)."""
        return self._dep_prev

    def departure(self, fb: FrameFeedback) -> float:
        return fb.completed_at - fb.server_ms / 1000.0 - self.rtt_s

    def sample(
        self, fb: FrameFeedback, ahead_bytes: float = 0.0, ahead_sent: float = math.inf
    ) -> ThroughputSample | None:
        """The sample of one completed frame, or ``None`` (failed frame, empty payload).

        ``ahead_bytes`` (first of them handed to the transport at ``ahead_sent``): bytes of frames sent before this
        one whose departure was never observed (they expired or failed, so no reply timed them) and that have now
        provably left the uplink (FIFO: they were ahead of this frame). They crossed the bottleneck in the same
        interval, so they are counted with the frame's own bytes; without them a frame queued behind an expired
        one would make the link look slower than it is."""
        if not fb.ok or fb.payload_bytes <= 0:
            return None
        dep = self.departure(fb)
        first = fb.sent_at if fb.sent_at <= ahead_sent else ahead_sent
        ahead = self._dep_prev if self._dep_prev_sent <= first else -math.inf
        idle = first >= ahead
        bits = 8.0 * (fb.payload_bytes + (ahead_bytes if ahead_bytes > 0 else 0.0))
        window = self._window
        if idle or not window:  # a new busy period: its start is the reference, credited with the allowance
            window.clear()
            window.append((first if idle else ahead, -8.0 * self.packet_bytes if idle else 0.0))
            self._cum = 0.0
        self._cum += bits
        if dep < window[-1][0]:  # a reply overtaken by a later frame's: it left no later than that frame
            dep = window[-1][0]
        ref_t, ref_c = window[0]  # span frames back, or the start of the busy period
        transfer = max(dep - ref_t, self.min_transfer_s)
        if dep == window[-1][0]:  # the same delivery instant as the previous frame: one reference point
            window[-1] = (dep, self._cum)
        else:
            window.append((dep, self._cum))
            if len(window) > self.span:
                window.popleft()
        if dep > self._dep_prev:
            self._dep_prev = dep
            self._dep_prev_sent = fb.sent_at
        return ThroughputSample(fb.frame_id, fb.payload_bytes, transfer, (self._cum - ref_c) / transfer, dep)


class ThroughputEstimator(ABC):
    """A bandwidth predictor fed with throughput samples (bits per second)."""

    @abstractmethod
    def update(self, bps: float) -> None: ...

    @abstractmethod
    def estimate(self) -> float | None:
        """The prediction for the next transfer, bits/s (``None`` before any sample)."""


class EwmaEstimator(ThroughputEstimator):
    """Exponentially weighted moving average, ``alpha`` = weight of the newest sample."""

    __slots__ = ("_value", "alpha")

    def __init__(self, alpha: float = 0.4) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"EWMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._value: float | None = None

    def update(self, bps: float) -> None:
        self._value = bps if self._value is None else self.alpha * bps + (1.0 - self.alpha) * self._value

    def estimate(self) -> float | None:
        return self._value


__all__ = [
    "EwmaEstimator",
    "ThroughputEstimator",
    "ThroughputSample",
    "TransferSampler",
]
