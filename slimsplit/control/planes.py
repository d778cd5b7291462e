"""Progressive transmission on the edge: how many of a frame's bit planes go into the link, and at which width.

A frame sent as planes (``slimsplit.codec.planes``, most significant first) is useful with any prefix of them, so
the edge decides the bits of a frame *after* the fact, from what the link carries, and only the width before it:

* :class:`DeliveryWindow`: the bytes the edge may have in the network, sized as BBR sizes its congestion window:
  ``gain`` x bandwidth x minimum round trip, the bandwidth being the largest of the last ``rate_samples``
  delivery-rate samples (the bytes acknowledged while a unit was in flight, over that time), the round trip the
  smallest seen; ``initial_bytes`` before the first sample.
* :class:`PlaneSender`: for one unit of a frame, :meth:`~PlaneSender.decide` says ``SEND`` (there is room in the
  window and it can still arrive by the time the server must use it), ``WAIT`` (no room yet: ask again when an
  acknowledgement frees some) or ``DROP`` (it can no longer arrive in time: withhold it and every later plane of
  its frame; a frame's first plane is dropped only when it could not arrive even on an empty link). A unit is due
  at the server at ``deadline - rtt / 2 - tail``, and is expected there after the bytes already in flight and its
  own at the estimated bandwidth, plus half the round trip: what the edge put in the link it cannot take back, so
  it puts in only what can still make it.
* :class:`PlaneController`: the :class:`~slimsplit.control.base.Controller` of ``--transmission planes``: it picks
  the width whose expected planes give the best accuracy (the mode table's accuracy at that many bits) from the
  harmonic mean of the last frames' goodputs, and always the highest bit depth of that width: the planes after
  the first are sent while they fit.

Everything here is a pure function of the calls made, on the caller's clock (seconds): the live edge and the
simulator drive the same objects.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.errors import ConfigError
from slimsplit.settings import check

#: Bytes of a plane unit's own header (``slimsplit.codec.planes.PLANE_HEADER_SIZE``), counted in a plane's size.
PLANE_UNIT_HEADER_BYTES = 20


@dataclass(frozen=True)
class WindowConfig:
    """The sender's window: ``gain`` bandwidth-delay products (BBR's cwnd gain), the bandwidth the largest of
    ``rate_samples`` delivery-rate samples, ``initial_bytes`` before the first one, never below ``min_bytes``."""

    gain: float = 2.0
    rate_samples: int = 10
    initial_bytes: int = 15_000
    min_bytes: int = 3_000

    def __post_init__(self) -> None:
        check(math.isfinite(self.gain) and self.gain >= 1.0, "gain", f"expected a number >= 1, got {self.gain!r}")
        check(self.rate_samples >= 1, "rate_samples", f"expected an integer >= 1, got {self.rate_samples!r}")
        check(self.min_bytes >= 1, "min_bytes", f"expected an integer >= 1, got {self.min_bytes!r}")
        check(
            self.initial_bytes >= self.min_bytes,
            "initial_bytes",
            f"expected at least min_bytes ({self.min_bytes}), got {self.initial_bytes!r}",
        )


@dataclass(slots=True)
class _Unacked:
    nbytes: int
    sent_at: float
    delivered: int  # bytes delivered when it was sent
    delivered_at: float  # time of the last delivery when it was sent


class DeliveryWindow:
    """Bytes in flight, delivery-rate samples and the window they size (see the module docstring). Units are
    keyed by whatever the caller uses (e.g. ``(frame_id, plane)``)."""

    def __init__(self, config: WindowConfig | None = None, *, rtt_s: float = 0.0) -> None:
        self.config = config or WindowConfig()
        self._unacked: dict[Hashable, _Unacked] = {}
        self.in_flight = 0
        self.delivered = 0
        self._delivered_at = -math.inf
        self._rates: deque[float] = deque(maxlen=self.config.rate_samples)
        self.min_rtt_s = rtt_s if rtt_s > 0 else math.inf

    @property
    def bandwidth(self) -> float | None:
        """Bytes per second: the largest recent delivery-rate sample (``None`` before the first)."""
        return max(self._rates) if self._rates else None

    @property
    def rtt_s(self) -> float:
        """The smallest round trip seen (0 while none is known)."""
        return 0.0 if math.isinf(self.min_rtt_s) else self.min_rtt_s

    @property
    def window(self) -> float:
        bw = self.bandwidth
        cfg = self.config
        if bw is None or self.rtt_s <= 0:
            return float(cfg.initial_bytes)
        return max(float(cfg.min_bytes), cfg.gain * bw * self.rtt_s)

    def has_room(self, nbytes: int) -> bool:
        """``nbytes`` more fit in the window (one unit always fits an empty network)."""
        return self.in_flight == 0 or self.in_flight + nbytes <= self.window

    def sent(self, key: Hashable, nbytes: int, now: float) -> None:
        self._unacked[key] = _Unacked(nbytes, now, self.delivered, self._delivered_at)
        self.in_flight += nbytes

    def acked(self, key: Hashable, now: float) -> float | None:
        """The unit ``key`` arrived (its acknowledgement came at ``now``): its delivery-rate sample in bytes per
        second (``None`` for a key not in flight, or the first delivery)."""
        u = self._unacked.pop(key, None)
        if u is None:
            return None
        self.in_flight -= u.nbytes
        self.delivered += u.nbytes
        rtt = now - u.sent_at
        if rtt > 0:
            self.min_rtt_s = min(self.min_rtt_s, rtt)
        rate = None
        start = max(u.sent_at, u.delivered_at) if u.delivered_at > -math.inf else u.sent_at
        if now > start:
            rate = (self.delivered - u.delivered) / (now - start)
            self._rates.append(rate)
        self._delivered_at = now
        return rate

    def forget(self, key: Hashable) -> None:
        """The unit ``key`` will never be acknowledged (its stream broke): it no longer counts as in flight."""
        u = self._unacked.pop(key, None)
        if u is not None:
            self.in_flight -= u.nbytes

    def forget_all(self) -> None:
        """No unit in flight will be acknowledged (the transport broke)."""
        self._unacked.clear()
        self.in_flight = 0

    def arrival_s(self, nbytes: int, now: float) -> float:
        """When ``nbytes`` sent now are expected at the server: after what is in flight, at the bandwidth
        estimate, plus half the round trip (``now`` + half the round trip while the bandwidth is unknown)."""
        bw = self.bandwidth
        queued = 0.0 if bw is None else (self.in_flight + nbytes) / bw
        return now + queued + self.rtt_s / 2


class Verdict(Enum):
    SEND = "send"
    WAIT = "wait"
    DROP = "drop"


class PlaneSender:
    """Decides, unit by unit, what of a frame goes into the link (see the module docstring). ``margin_s``: kept
    free before every deadline, for what the estimates miss (the server's event loop, the reply's write)."""

    def __init__(self, window: DeliveryWindow, *, margin_s: float = 0.020) -> None:
        self.window = window
        self.margin_s = margin_s
        self.bytes_sent = 0
        self.bytes_withheld = 0

    def due_s(self, deadline_at: float, tail_s: float) -> float:
        """When a unit must be at the server for a frame whose answer is due back at ``deadline_at``."""
        return deadline_at - self.margin_s - self.window.rtt_s / 2 - tail_s

    def budget_s(self, time_left_s: float, now: float) -> float:
        """The budget to open a frame with whose answer is due back in ``time_left_s``: counted from the open's
        arrival, which waits behind the bytes in flight, so less that wait (estimated, and never taken as more
        than half the time left: an estimate that low after an outage would have the server answer before any
        plane could come), the reply's way back and the margin. At least 1 ms."""
        rtt = self.window.rtt_s
        way_up = min(self.window.arrival_s(0, now) - now, max(rtt / 2, (time_left_s - rtt) / 2))
        return max(0.001, time_left_s - way_up - rtt / 2 - self.margin_s)

    def decide(self, nbytes: int, now: float, due_at: float, *, first: bool = False) -> Verdict:
        """``SEND``, ``WAIT`` or ``DROP`` for a unit of ``nbytes`` that must be at the server by ``due_at``.
        ``first``: the frame's first plane, dropped only once it could not arrive even on an empty link (without
        it the frame is lost for sure, so a pessimistic estimate does not decide it)."""
        if first:
            if now + self.window.rtt_s / 2 > due_at:
                return Verdict.DROP
        elif self.window.arrival_s(nbytes, now) > due_at:
            return Verdict.DROP
        if not self.window.has_room(nbytes):
            return Verdict.WAIT
        return Verdict.SEND

    def sent(self, key: Hashable, nbytes: int, now: float) -> None:
        self.window.sent(key, nbytes, now)
        self.bytes_sent += nbytes

    def withheld(self, nbytes: int) -> None:
        self.bytes_withheld += nbytes


# ---------------------------------------------------------------------------------------------- the controller


@dataclass(frozen=True)
class PlanesOptions:
    """``samples``: goodputs in the harmonic mean; ``margin``: the fraction of it planned with; ``fixed_width``:
    always this width (0 = choose); ``bits_tolerance``: a width sends the code of its fewest bits whose accuracy is
    within this of the width's best (a fraction: 0.005 = half a point), so no plane is sent that buys nothing."""

    samples: int = 5
    margin: float = 0.8
    fixed_width: int = 0
    bits_tolerance: float = 0.005

    def __post_init__(self) -> None:
        check(self.samples >= 1, "samples", f"expected an integer >= 1, got {self.samples!r}")
        check(0 < self.margin <= 1, "margin", f"expected a number in (0, 1], got {self.margin!r}")
        check(self.fixed_width >= 0, "fixed_width", f"expected an integer >= 0, got {self.fixed_width!r}")
        check(
            0 <= self.bits_tolerance < 1, "bits_tolerance", f"expected a number in [0, 1), got {self.bits_tolerance!r}"
        )


@dataclass(frozen=True)
class PlaneWidth:
    """One width as the plane controller sees it: the mode it sends (the width's highest bit depth), its bytes per
    plane and encoder time, and its accuracy with 1..bits planes."""

    mode: str
    width: int
    bits: int
    plane_bytes: float
    encoder_ms: float
    server_ms: float
    accuracy: tuple[float, ...]  # accuracy[k - 1]: with the top k planes


def plane_widths(modes: Sequence[ModeOption], bits_tolerance: float = 0.0) -> tuple[PlaneWidth, ...]:
    """Per width of ``modes``: its plane mode (the fewest bits within ``bits_tolerance`` of the width's best
    accuracy) and the accuracy of each prefix (that of the width's mode with the most bits not above the prefix:
    the top ``k`` planes of a code are taken at the ``k``-bit code's accuracy)."""
    by_width: dict[int, list[ModeOption]] = {}
    for m in modes:
        by_width.setdefault(m.width, []).append(m)
    widths = []
    for width, options in sorted(by_width.items()):
        options.sort(key=lambda m: m.bits)
        best = max(m.accuracy for m in options)
        top = next(m for m in options if m.accuracy >= best - bits_tolerance)
        options = [m for m in options if m.bits <= top.bits]
        accuracy = []
        for k in range(1, top.bits + 1):
            below = [m for m in options if m.bits <= k]
            accuracy.append(below[-1].accuracy if below else 0.0)
        plane_bytes = max(1.0, (top.payload_bytes - PLANE_UNIT_HEADER_BYTES) / top.bits) + PLANE_UNIT_HEADER_BYTES
        widths.append(
            PlaneWidth(top.name, width, top.bits, plane_bytes, top.encoder_ms, top.server_ms, tuple(accuracy))
        )
    if not widths:
        raise ConfigError("the plane controller needs at least one mode", key="modes")
    return tuple(widths)


class PlaneController(Controller):
    """Chooses the width of each plane-coded frame (see the module docstring); never skips a frame (the
    in-flight limit of the control loop still does)."""

    name = "planes"

    def __init__(
        self, modes: Sequence[ModeOption], run: RunConfig, options: PlanesOptions | None = None, rtt_ms: float = 0.0
    ) -> None:
        self.run = run
        self.deadline_s = run.deadline_s
        self.options = options or PlanesOptions()
        self.widths = plane_widths(modes, self.options.bits_tolerance)
        if self.options.fixed_width:
            chosen = [w for w in self.widths if w.width == self.options.fixed_width]
            if not chosen:
                known = ", ".join(str(w.width) for w in self.widths)
                raise ConfigError(
                    f"fixed_width {self.options.fixed_width} is not a width of the modes ({known})", key="fixed_width"
                )
            self.widths = tuple(chosen)
        self.rtt_s = rtt_ms / 1000.0
        self._goodputs: deque[float] = deque(maxlen=self.options.samples)

    def expected_planes(self, w: PlaneWidth, bps: float) -> int:
        """Planes of width ``w`` expected in time at ``bps`` bits per second (at least 1: the first is sent)."""
        budget_s = self.deadline_s - (w.encoder_ms + w.server_ms) / 1000.0 - self.rtt_s
        fit = int(max(0.0, budget_s) * bps / 8 / w.plane_bytes)
        return max(1, min(w.bits, fit))

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        widths = self.widths
        if len(widths) == 1 or not self._goodputs:
            w = widths[0]
            return Decision(w.mode, "narrowest width until the link is measured" if len(widths) > 1 else "")
        g = self._goodputs
        bps = len(g) / sum(1.0 / x for x in g) * self.options.margin
        best = max(widths, key=lambda w: (w.accuracy[self.expected_planes(w, bps) - 1], -w.width))
        k = self.expected_planes(best, bps)
        return Decision(best.mode, f"{k} planes expected", estimate_bps=bps)

    def observe(self, feedback: FrameFeedback) -> None:
        """A frame's goodput: the bytes the server took over its transfer time (0 bytes count as a slow link)."""
        transfer_s = feedback.completed_at - feedback.sent_at - feedback.server_ms / 1000.0 - self.rtt_s
        if not feedback.ok or feedback.payload_bytes <= 0:
            self._goodputs.append(1e3)
            return
        self._goodputs.append(feedback.payload_bytes * 8 / max(transfer_s, 1e-3))


__all__ = [
    "DeliveryWindow",
    "PlaneController",
    "PlaneSender",
    "PlaneWidth",
    "PlanesOptions",
    "Verdict",
    "WindowConfig",
    "plane_widths",
]
