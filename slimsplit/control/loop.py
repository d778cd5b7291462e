"""The per-frame control loop around a :class:`Controller`: in-flight accounting, the hard in-flight limit and a
record of every frame (decision, reason, timings, hit or miss).

The live edge client and the discrete-event simulator drive the same three calls, in time order, on one clock::

    d = loop.decide(frame_id, captured_at)         # None mode = skipped (d.reason says why)
    loop.sent(frame_id, payload_bytes, sent_at)    # payload handed to the transport
    rec = loop.completed(frame_id, completed_at, server_ms, ok)   # prediction (or error) arrived

The loop and its controller share one :class:`~slimsplit.control.config.RunConfig` (deadline, frame rate, in-flight
limit K); ``decide`` never admits more than ``max_in_flight`` frames whatever the controller says, so frames that cannot
make the deadline are not queued without bound; skipped frames are recorded with their reason.

With ``keep_records`` the loop keeps a :class:`~slimsplit.records.FrameRecord` of every frame (``records``, in the
order of the decisions), made when the frame is skipped or completed; times on the loop's clock become the record's
``t_s``/``sent_s`` and its latency, the frame id its ``index``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.errors import ConfigError
from slimsplit.records import DEADLINE_EXCEEDED, OK, SKIPPED, FrameRecord, ServerTiming


@dataclass(slots=True)
class _Open:
    """A frame admitted and not completed yet: its decision, capture time (the loop's clock), payload, send time and
    its place in the records (-1 when none are kept)."""

    decision: Decision
    mode: str
    captured_at: float
    payload_bytes: int
    slot: int
    sent_at: float | None = None


class ControlLoop:
    """In-flight accounting and the K limit around a controller (see the module docstring)."""

    def __init__(
        self,
        controller: Controller,
        modes: Sequence[ModeOption],
        run: RunConfig,
        keep_records: bool = True,
        time_decisions: bool = False,
    ) -> None:
        built = controller.run
        if built is not None and built != run:
            name = built.differences(run)[0]
            raise ConfigError(
                f"{name}: controller {controller.name!r} was built for {getattr(built, name)!r}, the control loop "
                f"runs with {getattr(run, name)!r} (build both from one RunConfig)",
                key=name,
            )
        self.controller = controller
        self.run = run
        self.deadline_s = run.deadline_s
        self.max_in_flight = run.max_in_flight
        self.keep_records = keep_records
        self.time_decisions = time_decisions
        self.decision_ns: list[int] = []
        self._records: list[FrameRecord | None] = []  # None: a frame still in flight
        self._payload = {m.name: round(m.payload_bytes) for m in modes}
        self._open: dict[int, _Open] = {}
        self._in_flight_bytes = 0

    @property
    def records(self) -> list[FrameRecord]:
        """The record of every frame decided so far and skipped or completed, in the order of the decisions (empty
        unless ``keep_records``)."""
        return [r for r in self._records if r is not None]

    @property
    def in_flight_frames(self) -> int:
        return len(self._open)

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight_bytes

    def decide(self, frame_id: int, now: float) -> Decision:
        if len(self._open) >= self.max_in_flight:
            d = Decision(None, f"in-flight limit ({self.max_in_flight} frames)")
        elif self.time_decisions:
            t = time.perf_counter_ns()
            d = self.controller.choose(now, self._in_flight_bytes, len(self._open))
            self.decision_ns.append(time.perf_counter_ns() - t)
        else:
            d = self.controller.choose(now, self._in_flight_bytes, len(self._open))
        if d.mode is None:
            if self.keep_records:
                self._records.append(
                    FrameRecord(
                        frame_id,
                        frame_id,
                        "",
                        SKIPPED,
                        d.reason,
                        reason=d.reason,
                        estimate_bps=d.estimate_bps,
                        predicted_ms=d.predicted_ms,
                        deadline_ms=self.run.deadline_ms,
                        t_s=now,
                    )
                )
            return d
        if d.mode not in self._payload:
            raise ConfigError(f"controller {self.controller.name!r} chose unknown mode {d.mode!r}")
        payload = self._payload[d.mode]
        slot = -1
        if self.keep_records:
            slot = len(self._records)
            self._records.append(None)
        self._open[frame_id] = _Open(d, d.mode, now, payload, slot)
        self._in_flight_bytes += payload
        return d

    def sent(self, frame_id: int, payload_bytes: int, sent_at: float) -> None:
        o = self._open[frame_id]
        self._in_flight_bytes += payload_bytes - o.payload_bytes
        o.payload_bytes = payload_bytes
        o.sent_at = sent_at
        self.controller.on_sent(frame_id, o.mode, payload_bytes, sent_at)

    def completed(
        self,
        frame_id: int,
        completed_at: float,
        server_ms: float,
        ok: bool = True,
        status: str | None = None,
        delivered_bytes: int | None = None,
    ) -> FrameRecord:
        """The frame's prediction arrived at ``completed_at`` (``ok``), or it failed then: its record, whose
        ``status`` is ``status`` when given, else ``"OK"`` or ``"DEADLINE_EXCEEDED"`` (given up).
        ``delivered_bytes``: of its payload, what the server used (plane-coded frames; default: all of it), which
        is what the controller learns from."""
        o = self._open.pop(frame_id)
        self._in_flight_bytes -= o.payload_bytes
        sent_at = o.sent_at if o.sent_at is not None else completed_at
        used = o.payload_bytes if delivered_bytes is None else delivered_bytes
        self.controller.observe(FrameFeedback(frame_id, o.mode, used, sent_at, completed_at, server_ms, ok))
        rtt_ms = (completed_at - o.sent_at) * 1e3 if ok and o.sent_at is not None else math.nan
        d = o.decision
        rec = FrameRecord(
            frame_id,
            frame_id,
            o.mode,
            status if status is not None else OK if ok else DEADLINE_EXCEEDED,
            payload_bytes=o.payload_bytes,
            rtt_ms=rtt_ms,
            transfer_ms=rtt_ms - server_ms,
            latency_ms=(completed_at - o.captured_at) * 1e3,
            server=ServerTiming(total_ms=server_ms) if ok else None,
            reason=d.reason,
            estimate_bps=d.estimate_bps,
            predicted_ms=d.predicted_ms,
            deadline_ms=self.run.deadline_ms,
            t_s=o.captured_at,
            sent_s=o.sent_at,
        )
        if o.slot >= 0:
            self._records[o.slot] = rec
        return rec


__all__ = ["ControlLoop"]
