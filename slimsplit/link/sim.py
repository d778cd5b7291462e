"""Discrete-event simulation of the edge pipeline over an emulated link, in virtual time.

Per frame (``fps`` captures per second, frame ``i`` at ``t0 + i / fps``)::

    capture --decide--> encode (enc_m; one encoder, frames queue for it) --send--> uplink FIFO (trace, delay)
            --> server (server_m; frames are served independently) --> downlink (rate/trace, delay) --> complete

The link is the same :class:`~slimsplit.link.shaping.LinkDirection` code the proxy uses; the controller is plugged in
unchanged behind a :class:`~slimsplit.edge.control.loop.ControlLoop` (so the in-flight limit and the records are the
same as on the live edge) and sees the virtual clock. Events at the same instant are handled completions first,
then sends, then captures, so a reply that arrives exactly at a capture is known to that capture's decision.

When the edge stops waiting for a frame is :attr:`SimConfig.expiry`: ``"reply"`` (default) only when its reply
arrives (the load generator of :mod:`slimsplit.link.loadgen` does that); ``"sent"`` also ``deadline_ms`` after its
payload was handed to the transport, which is what the live edge client does (a per-frame timer reports
``DEADLINE_EXCEEDED`` and frees the in-flight slot); ``"captured"`` ``deadline_ms`` after its capture. An expired
frame completes as failed (``ok=False``) at that instant, but its bytes stay in the uplink queue (they were handed to
the transport: neither a gRPC cancel nor a timer can take them back) and its late reply is ignored (counted in
:attr:`SimResult.late_replies`).

A 1000-second trace at 30 frames/s (30,000 frames) runs in about a second.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.edge.control.base import Controller, ModeOption
from slimsplit.edge.control.loop import ControlLoop, FrameRecord
from slimsplit.errors import ConfigError
from slimsplit.link.shaping import LinkConfig

_COMPLETE, _EXPIRE, _SERVER_DONE, _SEND, _CAPTURE = 0, 1, 2, 3, 4
_SAME_INSTANT_S = 1e-9  # capture and deadline times computed two ways may differ by float rounding
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
    loop = ControlLoop(controller, modes, config.deadline_ms, config.max_in_flight, True, time_decisions)
    period = 1.0 / config.fps
    n = config.n_frames
    heap: list[tuple[float, int, int, int]] = []  # (time, kind, frame id, payload) ; kind orders equal times
    if n:
        heap.append((config.t0, _CAPTURE, 0, 0))
    enc_free = -math.inf
    server_ms: dict[int, float] = {}
    deadline_s = config.deadline_ms / 1000.0
    expired: set[int] = set()
    late_replies = 0
    while heap:
        t, kind, fid, nbytes = heapq.heappop(heap)
        if kind == _CAPTURE:
            # a frame whose deadline is this very instant is given up before this capture's decision (the
            # capture-time rule: one frame at a time with period == deadline frees its slot for the next frame);
            # its reply, had it arrived at the deadline, was handled already (completions come first)
            while heap and heap[0][1] == _EXPIRE and heap[0][0] <= t + _SAME_INSTANT_S:
                _, _, efid, _ = heapq.heappop(heap)
                if efid in server_ms and efid not in expired:
                    expired.add(efid)
                    loop.completed(efid, t, 0.0, ok=False)
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
                heapq.heappush(heap, (t + deadline_s + 1e-9, _EXPIRE, fid, 0))
        elif kind == _SERVER_DONE:
            heapq.heappush(heap, (state.down.enqueue(t, config.reply_bytes), _COMPLETE, fid, 0))
        elif kind == _EXPIRE:
            if fid in server_ms and fid not in expired:  # still waiting for its reply
                expired.add(fid)
                loop.completed(fid, t, 0.0, ok=False)
        elif fid in expired:
            expired.discard(fid)
            server_ms.pop(fid)
            late_replies += 1
        else:
            loop.completed(fid, t, server_ms.pop(fid))
    return SimResult(config, loop.records, loop.decision_ns, late_replies)


# ---------------------------------------------------------------------------------------------- metrics


def reason_kind(reason: str) -> str:
    """The category of a skip reason (its text before any ':' or ' (')."""
    return reason.split(":")[0].split(" (")[0].strip() or "unspecified"


def summarize(
    records: Sequence[FrameRecord],
    modes: Sequence[ModeOption],
    feasible: npt.NDArray[np.bool_] | None = None,
    oracle_hits: int | None = None,
) -> dict[str, Any]:
    """Figures of one run.

    * ``hit_rate``: frames delivered within the deadline / all frames;
    * ``feasible_hit_rate``: hits among the *feasible* frames (``feasible[i]``: the oracle delivers frame ``i`` in
      time) / feasible frames; ``oracle_hit_ratio``: hits / the oracle's hits (the oracle maximises that count);
    * ``mean_accuracy``: the accuracy the application gets per frame, a fraction: the chosen mode's accuracy for a
      frame delivered in time, 0 for a frame that is late or skipped (a late answer is no answer), averaged over
      all frames. ``accuracy_of_hits``: the mean accuracy of the frames delivered in time only (it rewards
      sending big modes and missing: a controller can beat the oracle on it, so it is reported, not targeted);
    * ``bytes_sent``, ``switches_per_min`` (changes of mode between consecutive sent frames), ``dropped`` (frames
      never sent) with ``drop_reasons``, ``late`` (sent but not in time), latency statistics of completed frames.
    """
    acc: Mapping[str, float] = {m.name: m.accuracy for m in modes}
    n = len(records)
    hits = [r.hit for r in records]
    n_hit = sum(hits)
    acc_hits = [acc[r.mode] for r in records if r.hit and r.mode is not None]
    sent = [r for r in records if r.mode is not None]
    switches = sum(1 for a, b in itertools.pairwise(sent) if a.mode != b.mode)
    span = (records[-1].captured_at - records[0].captured_at) if n > 1 else 0.0
    minutes = max(span, 1e-9) / 60.0
    drop_reasons = Counter(reason_kind(r.reason) for r in records if r.mode is None)
    lat = np.asarray([r.latency_s for r in records if r.latency_s is not None], dtype=np.float64) * 1000.0
    out: dict[str, Any] = {
        "frames": n,
        "hits": n_hit,
        "hit_rate": n_hit / n if n else 0.0,
        "mean_accuracy": float(np.sum(acc_hits)) / n if n else 0.0,
        "accuracy_of_hits": float(np.mean(acc_hits)) if acc_hits else 0.0,
        "bytes_sent": int(sum(r.payload_bytes for r in sent)),
        "switches_per_min": switches / minutes if n > 1 else 0.0,
        "dropped": int(sum(drop_reasons.values())),
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "late": int(sum(1 for r in sent if not r.hit)),
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
        out["oracle_hit_ratio"] = n_hit / oracle_hits if oracle_hits else 1.0
    return out


__all__ = ["SimConfig", "SimResult", "reason_kind", "simulate", "summarize"]
