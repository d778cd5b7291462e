"""Discrete-event simulation of the edge pipeline over an emulated link, in virtual time.

Per frame (``fps`` captures per second, frame ``i`` at ``t0 + i / fps``)::

    capture --decide--> encode (enc_m; one encoder, frames queue for it) --send--> uplink FIFO (trace, delay)
            --> server (server_m; frames are served independently) --> downlink (rate/trace, delay) --> complete

The link is the same :class:`~slimsplit.link.shaping.LinkDirection` code the proxy uses; the controller is plugged in
unchanged behind a :class:`~slimsplit.control.loop.ControlLoop` (so the in-flight limit and the records are the
same as on the live edge) and sees the virtual clock. Events at the same instant are handled completions first,
then sends, then captures, so a reply that arrives exactly at a capture is known to that capture's decision (for a
capture, replies and give-up timers within the deadline tolerance of :func:`~slimsplit.records.in_time` are at the
same instant: two computations of one instant differ by float rounding).

When the edge stops waiting for a frame is :attr:`SimConfig.expiry`: ``"reply"`` (default) only when its reply
arrives (the model of :mod:`slimsplit.evaluation.loadgen`); ``"captured"`` also ``deadline_ms`` after its capture,
which is what the live edge client does (a per-frame timer reports ``DEADLINE_EXCEEDED`` and frees the in-flight
slot); ``"sent"`` ``deadline_ms`` after its payload was handed to the transport. An expired frame completes as
failed (``ok=False``) at that instant, unless its reply is due at that same instant (up to the tolerance of
:func:`~slimsplit.records.in_time`: then it is answered); one that expires while it waits for the encoder is never
sent. A sent one's bytes stay in the uplink queue (they were handed to the transport: neither a gRPC cancel nor a
timer can take them back) and its late reply is ignored (counted in :attr:`SimResult.late_replies`).

:func:`figures` gives a run's figures (hit rates, accuracy per frame, bytes, switches, drops, latency) from its
:class:`~slimsplit.records.RunSummary`.

A 1000-second trace at 30 frames/s (30,000 frames) runs in about a second.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.loop import ControlLoop
from slimsplit.errors import ConfigError
from slimsplit.link.shaping import LinkConfig
from slimsplit.records import DEADLINE_TOLERANCE_MS, FrameRecord, summarize

_COMPLETE, _EXPIRE, _SERVER_DONE, _SEND, _CAPTURE = 0, 1, 2, 3, 4
#: Instants closer than the deadline tolerance are one instant (capture and deadline times computed two ways differ
#: by float rounding).
_SAME_INSTANT_S: Final = DEADLINE_TOLERANCE_MS * 1e-3
EXPIRY_RULES = ("reply", "sent", "captured")


@dataclass(frozen=True)
class SimConfig:
    fps: float = 30.0
    deadline_ms: float = 100.0
    duration_s: float = 60.0  # frames captured in [t0, t0 + duration_s)
    max_in_flight: int = 4  # K
    reply_bytes: int = 64  # prediction size on the downlink
    overhead_bytes: int = 0  # transport framing added to every payload on the uplink
    t0: float = 0.0  # virtual time of the first capture (link time: trace time minus the link's offset)
    expiry: str = "reply"  # when the edge stops waiting for a frame: "reply", "sent" or "captured" (+ deadline)

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.deadline_ms <= 0 or self.duration_s <= 0 or self.max_in_flight < 1:
            raise ConfigError(f"bad simulation config: {self}")
        if self.expiry not in EXPIRY_RULES:
            raise ConfigError(f"simulation expiry must be one of {', '.join(EXPIRY_RULES)}; got {self.expiry!r}")

    @property
    def n_frames(self) -> int:
        return math.floor(self.duration_s * self.fps + 1e-9)

    @property
    def run(self) -> RunConfig:
        """The run configuration of the control loop (build the controller with the same one)."""
        return RunConfig(deadline_ms=self.deadline_ms, fps=self.fps, max_in_flight=self.max_in_flight)


@dataclass
class SimResult:
    config: SimConfig
    records: list[FrameRecord]
    decision_ns: list[int] = field(default_factory=list)
    late_replies: int = 0  # replies that arrived after their frame had expired (see SimConfig.expiry)


def simulate(
    controller: Controller,
    modes: Sequence[ModeOption],
    link: LinkConfig,
    config: SimConfig,
    time_decisions: bool = False,
) -> SimResult:
    """Run ``config.n_frames`` frames through ``controller`` over a fresh instance of ``link``."""
    by_name = {m.name: m for m in modes}
    state = link.make()
    loop = ControlLoop(controller, modes, config.run, True, time_decisions)
    period = 1.0 / config.fps
    n = config.n_frames
    heap: list[tuple[float, int, int, int]] = []  # (time, kind, frame id, payload) ; kind orders equal times
    if n:
        heap.append((config.t0, _CAPTURE, 0, 0))
    enc_free = -math.inf
    server_ms: dict[int, float] = {}
    deadline_s = config.deadline_ms / 1000.0
    expired: set[int] = set()
    reply_at: dict[int, float] = {}  # frames whose reply is on its way back: when it arrives
    answered: set[int] = set()  # frames answered at their give-up instant (their reply was due then)
    late_replies = 0

    def give_up(efid: int, due: float, now: float) -> None:
        """The give-up timer of ``efid``, due at ``due``, fires at ``now``: a reply due by then (up to the deadline
        tolerance: the same instant) answers the frame in time; otherwise the frame fails."""
        if efid not in server_ms or efid in expired:
            return
        reply = reply_at.get(efid)
        if reply is not None and reply <= due + _SAME_INSTANT_S:
            answered.add(efid)
            loop.completed(efid, now, server_ms.pop(efid))
        else:
            expired.add(efid)
            loop.completed(efid, now, 0.0, ok=False)

    def arrive(rfid: int, now: float) -> None:
        """The reply to ``rfid`` arrives at ``now`` (ignored when the frame was given up or answered already)."""
        nonlocal late_replies
        del reply_at[rfid]
        if rfid in answered:
            answered.discard(rfid)
        elif rfid in expired:
            expired.discard(rfid)
            server_ms.pop(rfid)
            late_replies += 1
        else:
            loop.completed(rfid, now, server_ms.pop(rfid))

    while heap:
        t, kind, fid, nbytes = heapq.heappop(heap)
        if kind == _CAPTURE:
            # replies and give-up timers due at this very instant (up to the tolerance: capture times and deadlines
            # computed two ways differ by float rounding) come before this capture's decision, replies first: one
            # frame at a time with period == deadline frees its slot for the next frame
            while heap and heap[0][1] <= _EXPIRE and heap[0][0] <= t + _SAME_INSTANT_S:
                due, due_kind, efid, _ = heapq.heappop(heap)
                if due_kind == _EXPIRE:
                    give_up(efid, due, t)
                else:
                    arrive(efid, t)
            if fid + 1 < n:
                heapq.heappush(heap, (config.t0 + (fid + 1) * period, _CAPTURE, fid + 1, 0))
            d = loop.decide(fid, t)
            if d.mode is None:
                continue
            mode = by_name[d.mode]
            size = round(mode.payload_bytes)
            enc_free = max(enc_free, t) + mode.encoder_ms / 1000.0
            server_ms[fid] = mode.server_ms
            heapq.heappush(heap, (enc_free, _SEND, fid, size))
            if config.expiry == "captured":  # at the deadline (a reply at that instant is handled first: a hit)
                heapq.heappush(heap, (t + deadline_s, _EXPIRE, fid, 0))
        elif kind == _SEND:
            if fid in expired:  # expired while waiting for the encoder: never handed to the transport
                expired.discard(fid)
                server_ms.pop(fid)
                continue
            arrival = state.up.enqueue(t, nbytes + config.overhead_bytes)
            loop.sent(fid, nbytes, t)
            heapq.heappush(heap, (arrival + server_ms[fid] / 1000.0, _SERVER_DONE, fid, 0))
            if config.expiry == "sent":
                heapq.heappush(heap, (t + deadline_s + _SAME_INSTANT_S, _EXPIRE, fid, 0))
        elif kind == _SERVER_DONE:
            reply_at[fid] = state.down.enqueue(t, config.reply_bytes)
            heapq.heappush(heap, (reply_at[fid], _COMPLETE, fid, 0))
        elif kind == _EXPIRE:
            give_up(fid, t, t)
        else:
            arrive(fid, t)
    return SimResult(config, loop.records, loop.decision_ns, late_replies)


# ---------------------------------------------------------------------------------------------- metrics


def figures(
    records: Sequence[FrameRecord],
    modes: Sequence[ModeOption],
    feasible: npt.NDArray[np.bool_] | None = None,
    oracle_hits: int | None = None,
) -> dict[str, Any]:
    """Figures of one run (records in frame order), from its :func:`~slimsplit.records.summarize` over the span of
    its captures and the mode table ``modes``.

    * ``hit_rate``: frames delivered within the deadline / all frames;
    * ``feasible_hit_rate``: hits among the *feasible* frames (``feasible[i]``: the oracle delivers frame ``i`` in
      time) / feasible frames; ``oracle_hit_ratio``: hits / the oracle's hits (the oracle maximises that count);
    * ``mean_accuracy``: the accuracy the application gets per frame, a fraction: the chosen mode's accuracy for a
      frame delivered in time, 0 for a frame that is late or skipped (a late answer is no answer), averaged over
      all frames. ``accuracy_of_hits``: the mean accuracy of the frames delivered in time only (it rewards
      sending big modes and missing: a controller can beat the oracle on it, so it is reported, not targeted);
    * ``bytes_sent``, ``switches_per_min`` (changes of mode between consecutive sent frames), ``dropped`` (frames
      never sent: the summary's ``skipped``) with ``drop_reasons``, ``late`` (sent but not in time: the summary's
      ``late`` and ``dropped``), latency statistics of completed frames (answered or given up).
    """
    n = len(records)
    span = records[-1].t_s - records[0].t_s if n > 1 else 0.0
    s = summarize(records, max(span, 1e-9) if n > 1 else 0.0)
    acc: Mapping[str, float] = {m.name: m.accuracy for m in modes}
    hits = [bool(r.hit) for r in records]
    acc_hits = [acc[r.mode] for r, h in zip(records, hits, strict=True) if h]
    lat = np.asarray([r.latency_ms for r in records if math.isfinite(r.latency_ms)], dtype=np.float64)
    out: dict[str, Any] = {
        "frames": s.frames,
        "hits": s.hits,
        "hit_rate": s.hits / n if n else 0.0,
        "mean_accuracy": float(np.sum(acc_hits)) / n if n else 0.0,
        "accuracy_of_hits": float(np.mean(acc_hits)) if acc_hits else 0.0,
        "bytes_sent": s.bytes_sent,
        "switches_per_min": s.switches_per_min if n > 1 and s.switches_per_min is not None else 0.0,
        "dropped": sum(s.skipped.values()),
        "drop_reasons": dict(sorted(s.skipped.items())),
        "late": s.late + sum(s.dropped.values()),
        "mean_latency_ms": float(lat.mean()) if lat.size else None,
        "p95_latency_ms": float(np.percentile(lat, 95)) if lat.size else None,
    }
    if feasible is not None:
        if feasible.size != n:
            raise ConfigError(f"feasible mask has {feasible.size} entries for {n} frames")
        nf = int(feasible.sum())
        out["feasible_frames"] = nf
        out["feasible_hit_rate"] = sum(1 for h, f in zip(hits, feasible, strict=True) if h and f) / nf if nf else 1.0
    if oracle_hits is not None:
        out["oracle_hit_ratio"] = s.hits / oracle_hits if oracle_hits else 1.0
    return out


__all__ = ["EXPIRY_RULES", "SimConfig", "SimResult", "figures", "simulate"]
