"""The per-frame control loop around a :class:`Controller`: in-flight accounting, the hard in-flight limit and a
record of every frame (decision, reason, timings, hit or miss).

The live edge client and the discrete-event simulator drive the same three calls, in time order, on one clock::

    d = loop.decide(frame_id, captured_at)         # None mode = skipped (d.reason says why)
    loop.sent(frame_id, payload_bytes, sent_at)    # payload handed to the transport
    rec = loop.completed(frame_id, completed_at, server_ms, ok)   # prediction (or error) arrived

``decide`` never admits more than ``max_in_flight`` frames (K) whatever the controller says, so frames that cannot
make the deadline are not queued without bound; skipped frames are recorded with their reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.edge.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.errors import ConfigError


@dataclass
class FrameRecord:
    """Everything known about one frame. Times are seconds on the loop's clock."""

    frame_id: int
    captured_at: float
    deadline_s: float
    mode: str | None = None
    reason: str = ""
    estimate_bps: float | None = None
    predicted_ms: float | None = None
    payload_bytes: int = 0
    sent_at: float | None = None
    completed_at: float | None = None
    server_ms: float = 0.0
    ok: bool = False

    @property
    def skipped(self) -> bool:
        return self.mode is None

    @property
    def latency_s(self) -> float | None:
        return None if self.completed_at is None else self.completed_at - self.captured_at

    @property
    def hit(self) -> bool:
        """Delivered successfully within the deadline."""
        lat = self.latency_s
        return self.ok and lat is not None and lat <= self.deadline_s + 1e-9


class ControlLoop:
    """In-flight accounting and the K limit around a controller (see the module docstring)."""

    def __init__(
        self,
        controller: Controller,
        modes: Sequence[ModeOption],
        deadline_ms: float,
        max_in_flight: int = 4,
        keep_records: bool = True,
        time_decisions: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.controller = controller
        self.deadline_s = deadline_ms / 1000.0
        self.max_in_flight = max_in_flight
        self.keep_records = keep_records
        self.time_decisions = time_decisions
        self.decision_ns: list[int] = []
        self.records: list[FrameRecord] = []
        self._payload = {m.name: round(m.payload_bytes) for m in modes}
        self._open: dict[int, FrameRecord] = {}
        self._in_flight_bytes = 0

    @property
    def in_flight_frames(self) -> int:
        return len(self._open)

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight_bytes

    def decide(self, frame_id: int, now: float) -> Decision:
        rec = FrameRecord(frame_id, now, self.deadline_s)
        if len(self._open) >= self.max_in_flight:
            d = Decision(None, f"in-flight limit ({self.max_in_flight} frames)")
        elif self.time_decisions:
            t = time.perf_counter_ns()
            d = self.controller.choose(now, self._in_flight_bytes, len(self._open))
            self.decision_ns.append(time.perf_counter_ns() - t)
        else:
            d = self.controller.choose(now, self._in_flight_bytes, len(self._open))
        rec.mode, rec.reason, rec.estimate_bps, rec.predicted_ms = d.mode, d.reason, d.estimate_bps, d.predicted_ms
        if d.mode is not None:
            if d.mode not in self._payload:
                raise ConfigError(f"controller {self.controller.name!r} chose unknown mode {d.mode!r}")
            rec.payload_bytes = self._payload[d.mode]
            self._open[frame_id] = rec
            self._in_flight_bytes += rec.payload_bytes
        if self.keep_records:
            self.records.append(rec)
        return d

    def sent(self, frame_id: int, payload_bytes: int, sent_at: float) -> None:
        rec = self._open[frame_id]
        self._in_flight_bytes += payload_bytes - rec.payload_bytes
        rec.payload_bytes = payload_bytes
        rec.sent_at = sent_at
        assert rec.mode is not None
        self.controller.on_sent(frame_id, rec.mode, payload_bytes, sent_at)

    def completed(self, frame_id: int, completed_at: float, server_ms: float, ok: bool = True) -> FrameRecord:
        rec = self._open.pop(frame_id)
        self._in_flight_bytes -= rec.payload_bytes
        rec.completed_at, rec.server_ms, rec.ok = completed_at, server_ms, ok
        assert rec.mode is not None
        sent_at = rec.sent_at if rec.sent_at is not None else completed_at
        self.controller.observe(
            FrameFeedback(frame_id, rec.mode, rec.payload_bytes, sent_at, completed_at, server_ms, ok)
        )
        return rec


__all__ = ["ControlLoop", "FrameRecord"]
