"""The controller interface: the edge asks it, once per frame, which operating mode to use.

Controllers see only what the edge can measure (completed transfers, server time reported in each prediction,
bytes still in flight) plus the bundle's mode table. Implementations live beside this module; the edge client
depends on this interface alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from slimsplit.control.config import RunConfig


@dataclass(frozen=True)
class ModeOption:
    """One operating mode as the controller sees it (from the manifest, or a published mode table)."""

    name: str
    width: int
    bits: int
    accuracy: float  # a fraction in [0, 1] (or a normalized score such as mAP/100)
    payload_bytes: float  # mean encoded bytes per frame, header included
    encoder_ms: float  # edge encoder latency (+ codec), milliseconds
    server_ms: float = 0.0  # expected server time (queue + decode + tail), milliseconds


@dataclass(frozen=True)
class FrameFeedback:
    """What the edge learned from one completed (or failed) frame. Times are seconds on a monotonic clock."""

    frame_id: int
    mode: str
    payload_bytes: int
    sent_at: float  # when the payload was handed to the transport
    completed_at: float  # when the prediction (or error) arrived
    server_ms: float  # server's reported total time for the frame
    ok: bool = True


@dataclass(frozen=True)
class Decision:
    """The controller's answer for the next frame: a mode name, or ``None`` to skip the frame (with a reason)."""

    mode: str | None
    reason: str = ""
    estimate_bps: float | None = None  # the bandwidth estimate it decided on, bits per second (for display)
    predicted_ms: float | None = None  # predicted capture-to-result latency of the chosen mode (for display)


class Controller(ABC):
    """Picks a mode per frame. ``choose`` must be cheap (target <= 50 microseconds). ``run``: the run
    configuration it was built for (``None``: it needs none); a control loop refuses a controller built for
    another."""

    name: str = "abstract"
    run: RunConfig | None = None

    @abstractmethod
    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        """Decide the mode of the frame captured at ``now`` (seconds, monotonic)."""

    @abstractmethod
    def observe(self, feedback: FrameFeedback) -> None:
        """Learn from a completed frame."""

    def on_sent(self, frame_id: int, mode: str, payload_bytes: int, sent_at: float) -> None:  # noqa: B027
        """The payload of a frame this controller admitted was handed to the transport at ``sent_at`` (same clock
        as ``choose``'s ``now``). Optional: queue-aware controllers use it to time the bytes still in flight;
        the default ignores it."""
