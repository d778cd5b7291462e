"""What every run records, whatever ran it (the live edge, the simulator, the load generator, the load tester).

* :class:`FrameRecord` - what happened to one frame; :func:`summarize` - the :class:`RunSummary` of a run's records;
  :class:`RunTally` - the same summary built frame by frame in bounded memory (a run of any length).
* :func:`in_time` / :func:`in_time_array` - the one rule for "answered by the deadline" (a scalar and a vectorised
  form, with the one tolerance :data:`DEADLINE_TOLERANCE_MS`).
* :class:`ServerTiming` - the server's own account of a frame, the wire's ``slimsplit.v1.ServerTiming`` as a value
  (:meth:`ServerTiming.from_pb` checks a reply's, :meth:`ServerTiming.to_pb` builds one).

All plain dataclasses, JSON-ready through ``to_dict`` (non-finite floats become ``None``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from slimsplit.errors import InvalidFrame
from slimsplit.quantiles import EXACT_LIMIT, QuantileSketch, percentile
from slimsplit.v1 import slimsplit_pb2 as pb

OK: Final = "OK"
SKIPPED: Final = "SKIPPED"
DEADLINE_EXCEEDED: Final = "DEADLINE_EXCEEDED"
STALE: Final = "stale"
"""The reason kind (:func:`reason_kind`) of a live source's frame that a newer one replaced before the edge could
take it: recorded ``SKIPPED`` with a reason ``"stale: ..."``."""

# ---------------------------------------------------------------------------------------------- the deadline rule

DEADLINE_TOLERANCE_MS: Final = 1e-6
"""How far past its deadline a latency still counts as in time: float rounding only. One instant computed two ways
(a capture time plus the deadline, a reply's arrival through the link model) differs by far less than a nanosecond,
and nothing real happens within one."""


def in_time(latency_ms: float, deadline_ms: float) -> bool:
    """Answered by the deadline: ``latency_ms <= deadline_ms`` up to :data:`DEADLINE_TOLERANCE_MS` (NaN: no)."""
    return latency_ms <= deadline_ms + DEADLINE_TOLERANCE_MS


def in_time_array(latency_ms: npt.ArrayLike, deadline_ms: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """:func:`in_time` element-wise (broadcasting ``latency_ms`` against ``deadline_ms``)."""
    lat = np.asarray(latency_ms, dtype=np.float64)
    out: npt.NDArray[np.bool_] = lat <= np.asarray(deadline_ms, dtype=np.float64) + DEADLINE_TOLERANCE_MS
    return out


# ---------------------------------------------------------------------------------------------- server timing

_TIMING_MS = ("queue_ms", "decode_ms", "tail_ms", "total_ms", "device_ms")


@dataclass(frozen=True, slots=True)
class ServerTiming:
    """The server's own account of where it spent its time on a frame (milliseconds; ``device_cycles`` and
    ``device_ms`` from an accelerator, 0 without one; ``batch_size``: frames the tail ran together)."""

    queue_ms: float = 0.0
    decode_ms: float = 0.0
    tail_ms: float = 0.0
    total_ms: float = 0.0
    device_ms: float = 0.0
    device_cycles: int = 0
    backend: str = ""
    batch_size: int = 0

    @classmethod
    def from_pb(cls, timing: pb.ServerTiming) -> ServerTiming:
        """The timing of a reply. A reply is untrusted: :class:`~slimsplit.errors.InvalidFrame` (naming the field)
        when a time is negative, NaN or infinite."""
        for name in _TIMING_MS:
            value = getattr(timing, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise InvalidFrame(
                    f"the server's reply has ServerTiming.{name} = {value!r} (expected a finite number >= 0)",
                    field=f"timing.{name}",
                )
        return cls(
            queue_ms=timing.queue_ms,
            decode_ms=timing.decode_ms,
            tail_ms=timing.tail_ms,
            total_ms=timing.total_ms,
            device_ms=timing.device_ms,
            device_cycles=timing.device_cycles,
            backend=timing.backend,
            batch_size=timing.batch_size,
        )

    def to_pb(self) -> pb.ServerTiming:
        return pb.ServerTiming(
            queue_ms=self.queue_ms,
            decode_ms=self.decode_ms,
            tail_ms=self.tail_ms,
            total_ms=self.total_ms,
            device_ms=self.device_ms,
            device_cycles=self.device_cycles,
            backend=self.backend,
            batch_size=self.batch_size,
        )


# ---------------------------------------------------------------------------------------------- one frame


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What happened to one frame.

    ``status`` is ``"OK"``, ``"SKIPPED"`` (the controller chose no mode; ``mode`` is empty) or the status name of
    why it was not answered (``"DEADLINE_EXCEEDED"`` for a frame given up at its deadline). ``label`` is the ground
    truth when the source knows it.

    Times in milliseconds: ``encoder_ms``/``codec_ms`` on the edge; ``rtt_ms`` from handing the frame to the
    transport to its reply; ``transfer_ms`` = ``rtt_ms`` - server total (link and transport, both directions);
    ``latency_ms`` from the frame's capture to its reply, or to when it failed (paced sources; unpaced: from when
    an in-flight slot freed up for it), so it includes waiting for a slot and encoding. ``t_s`` and ``sent_s``:
    when it was captured and handed to the transport, seconds on the run's clock (the link's time 0 on an emulated
    link; ``sent_s`` is ``None`` for a frame never sent). ``hit``: answered within ``deadline_ms`` of its capture
    (:func:`in_time`).
    """

    frame_id: int
    index: int  # the frame's place in its source (the simulator's frame number)
    mode: str
    status: str = OK
    error: str = ""
    label: int | None = None
    classes: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    payload_bytes: int = 0
    encoder_ms: float = 0.0
    codec_ms: float = 0.0
    rtt_ms: float = math.nan
    transfer_ms: float = math.nan
    latency_ms: float = math.nan
    response_ms: float = 0.0  # client-side reply handling (parse + bookkeeping)
    server: ServerTiming | None = None
    attempt: int = 0  # which (re)connection of the stream carried it; 0 for unary calls
    reason: str = ""  # the controller's reason for the mode (or for skipping the frame)
    estimate_bps: float | None = None  # the controller's bandwidth estimate when it decided
    predicted_ms: float | None = None  # the controller's predicted capture-to-result latency of the mode
    deadline_ms: float | None = None  # the latency target the frame was held to (capture -> prediction)
    t_s: float = math.nan
    sent_s: float | None = None
    source: str = ""  # the frame's name in its source (a folder source's file), when it has one
    planes: int = 0  # bit planes of its code the server ran the tail on (plane-coded frames; 0 = a whole frame)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def skipped(self) -> bool:
        return self.status == SKIPPED

    @property
    def sent(self) -> bool:
        """A mode was chosen for the frame and it went to the encoder and the transport (not skipped)."""
        return self.status != SKIPPED and bool(self.mode)

    @property
    def hit(self) -> bool | None:
        """Answered by its deadline (:func:`in_time`; ``None`` when the frame had no deadline)."""
        if self.deadline_ms is None:
            return None
        return self.ok and in_time(self.latency_ms, self.deadline_ms)

    @property
    def server_ms(self) -> float:
        """The server's total time on the frame (0 when there is no reply)."""
        return self.server.total_ms if self.server is not None else 0.0

    @property
    def top1(self) -> int | None:
        return self.classes[0] if self.classes else None

    @property
    def top1_name(self) -> str:
        return self.class_names[0] if self.class_names else ""

    @property
    def correct(self) -> bool | None:
        if not self.ok or self.label is None or not self.classes:
            return None
        return self.classes[0] == self.label

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["top1"] = self.top1
        d["correct"] = self.correct
        d["hit"] = self.hit
        for key, value in list(d.items()):
            if isinstance(value, float) and not math.isfinite(value):
                d[key] = None
        # nested figures too (JSON has no NaN): a record must always be writable, whatever it holds
        if not all(math.isfinite(v) for v in self.scores):
            d["scores"] = tuple(v if math.isfinite(v) else None for v in self.scores)
        if d["server"] is not None:
            d["server"] = _finite(d["server"])
        return d


# ---------------------------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class LatencyStats:
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    mean: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        sketch = QuantileSketch(exact_limit=len(values))
        sketch.extend(values)
        return cls.of_sketch(sketch)

    @classmethod
    def of_sketch(cls, sketch: QuantileSketch) -> LatencyStats:
        return cls(sketch.percentile(50), sketch.percentile(95), sketch.percentile(99), sketch.mean)


@dataclass(frozen=True)
class RunSummary:
    """Aggregate of a run: counts, accuracy over labelled OK frames, latency, bytes and rate; and, when the frames
    had a deadline, the deadline accounting.

    ``hit_rate`` = frames answered within the deadline / all frames (skipped and dropped ones count as misses);
    ``late`` = answered, but after the deadline; ``skipped`` = frames never sent, by the kind of reason
    (:func:`reason_kind`); ``dropped`` = frames sent and never answered, by status; ``chosen`` = frames sent per
    mode and ``switches`` = mode changes between consecutive sent frames; ``bytes_sent`` = payload bytes of every
    sent frame; ``timely_accuracy`` = labelled frames answered correctly *and* in time / labelled frames (what the
    application gets: a late or missing answer is no answer)."""

    frames: int
    ok: int
    wall_s: float
    fps: float
    accuracy: float | None
    labelled: int
    latency_ms: LatencyStats
    rtt_ms: LatencyStats
    transfer_ms: LatencyStats
    server_ms: LatencyStats
    encoder_ms: LatencyStats
    codec_ms: LatencyStats
    bytes_per_frame: float
    errors: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    deadline_ms: float | None = None
    hits: int = 0
    hit_rate: float | None = None
    late: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    chosen: dict[str, int] = field(default_factory=dict)
    switches: int = 0
    switches_per_min: float | None = None
    timely_accuracy: float | None = None
    bytes_sent: int = 0
    labelled_frames: int = 0  # frames the source gave a label, answered or not (``labelled``: answered ones)
    planes: dict[int, int] = field(default_factory=dict)  # answered plane-coded frames by planes used

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _finite(asdict(self))
        return out


def reason_kind(reason: str) -> str:
    """The category of a controller's reason: its text before the first ``:`` or `` (`` (figures follow there)."""
    return reason.split(":")[0].split(" (")[0].strip() or "unspecified"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class RunTally:
    """A run's :class:`RunSummary` built record by record in bounded memory: counts are exact, latency figures come
    from one :class:`~slimsplit.quantiles.QuantileSketch` each (exact up to ``exact_limit`` frames, within 0.5 %
    after). Records must be added in frame order where order matters: the mode switches count between consecutive
    sent frames, and :meth:`by_mode` lists the modes in order of first use. With ``by_mode``, the tally keeps one
    of its own per mode (frames that have a mode)."""

    def __init__(self, *, by_mode: bool = False, exact_limit: int = EXACT_LIMIT) -> None:
        self._limit = exact_limit
        self._modes: dict[str, RunTally] | None = {} if by_mode else None
        self.frames = 0
        self._ok = 0
        self._judged = 0
        self._correct = 0
        self._errors: Counter[str] = Counter()
        self._answered_modes: Counter[str] = Counter()
        self._latency, self._rtt, self._transfer, self._server, self._encoder, self._codec = (
            QuantileSketch(exact_limit=exact_limit) for _ in range(6)
        )
        self._sent = 0
        self._sent_bytes = 0
        self._last_mode: str | None = None
        self._switches = 0
        self._deadline: float | None = None
        self._hits = 0
        self._late = 0
        self._labelled = 0
        self._timely = 0
        self._skipped: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._chosen: Counter[str] = Counter()
        self._bytes_sent = 0
        self._planes: Counter[int] = Counter()

    @classmethod
    def of(cls, records: Iterable[FrameRecord], *, by_mode: bool = False) -> RunTally:
        tally = cls(by_mode=by_mode)
        for r in records:
            tally.add(r)
        return tally

    def add(self, r: FrameRecord) -> None:
        self.frames += 1
        hit = r.hit
        if r.ok:
            self._ok += 1
            correct = r.correct
            if correct is not None:
                self._judged += 1
                self._correct += correct
            self._answered_modes[r.mode] += 1
            if r.planes:
                self._planes[r.planes] += 1
            self._latency.add(r.latency_ms)
            self._rtt.add(r.rtt_ms)
            self._transfer.add(r.transfer_ms)
            if r.server is not None:
                self._server.add(r.server.total_ms)
            if hit is False:
                self._late += 1
        else:
            self._errors[r.status] += 1
        if r.payload_bytes > 0:
            self._sent += 1
            self._sent_bytes += r.payload_bytes
            self._encoder.add(r.encoder_ms)
            self._codec.add(r.codec_ms)
        if r.sent:
            if self._last_mode is not None and r.mode != self._last_mode:
                self._switches += 1
            self._last_mode = r.mode
            self._chosen[r.mode] += 1
            self._bytes_sent += r.payload_bytes
            if not r.ok:
                self._dropped[r.status] += 1
        if r.deadline_ms is not None:
            self._deadline = r.deadline_ms if self._deadline is None else max(self._deadline, r.deadline_ms)
        if hit:
            self._hits += 1
        if r.label is not None:
            self._labelled += 1
            if hit and r.correct:
                self._timely += 1
        if r.status == SKIPPED:
            self._skipped[reason_kind(r.reason)] += 1
        if self._modes is not None and r.mode:
            sub = self._modes.get(r.mode)
            if sub is None:
                sub = self._modes[r.mode] = RunTally(exact_limit=min(self._limit, _MODE_EXACT_LIMIT))
            sub.add(r)

    def summary(self, wall_s: float) -> RunSummary:
        """The summary of the records added so far, of a run that took ``wall_s`` seconds."""
        frames, deadline = self.frames, self._deadline
        return RunSummary(
            frames=frames,
            ok=self._ok,
            wall_s=wall_s,
            fps=self._ok / wall_s if wall_s > 0 else math.nan,
            accuracy=self._correct / self._judged if self._judged else None,
            labelled=self._judged,
            latency_ms=LatencyStats.of_sketch(self._latency),
            rtt_ms=LatencyStats.of_sketch(self._rtt),
            transfer_ms=LatencyStats.of_sketch(self._transfer),
            server_ms=LatencyStats.of_sketch(self._server),
            encoder_ms=LatencyStats.of_sketch(self._encoder),
            codec_ms=LatencyStats.of_sketch(self._codec),
            bytes_per_frame=self._sent_bytes / self._sent if self._sent else 0.0,
            errors=dict(sorted(self._errors.items())),
            modes=dict(sorted(self._answered_modes.items())),
            deadline_ms=deadline,
            hits=self._hits,
            hit_rate=self._hits / frames if deadline is not None and frames else None,
            late=self._late,
            skipped=dict(self._skipped.most_common()),
            dropped=dict(self._dropped.most_common()),
            chosen=dict(self._chosen.most_common()),
            switches=self._switches,
            switches_per_min=self._switches / (wall_s / 60.0) if wall_s > 0 else None,
            timely_accuracy=self._timely / self._labelled if deadline is not None and self._labelled else None,
            bytes_sent=self._bytes_sent,
            labelled_frames=self._labelled,
            planes=dict(sorted(self._planes.items())),
        )

    def by_mode(self, wall_s: float) -> dict[str, RunSummary]:
        """One summary per mode of the frames that had one, in order of first use (empty without ``by_mode``)."""
        return {mode: sub.summary(wall_s) for mode, sub in (self._modes or {}).items()}


_MODE_EXACT_LIMIT: Final = 1024  # a per-mode tally's exact values (16 modes x 6 figures x 8 bytes x this at most)


def summarize(records: Iterable[FrameRecord], wall_s: float) -> RunSummary:
    """Summarize a run that took ``wall_s`` seconds (``records`` in frame order; see :class:`RunTally`)."""
    return RunTally.of(records).summary(wall_s)


__all__ = [
    "DEADLINE_EXCEEDED",
    "DEADLINE_TOLERANCE_MS",
    "OK",
    "SKIPPED",
    "STALE",
    "FrameRecord",
    "LatencyStats",
    "RunSummary",
    "RunTally",
    "ServerTiming",
    "in_time",
    "in_time_array",
    "percentile",
    "reason_kind",
    "summarize",
]
