"""A sweep: the load points (``--sweep clients=1,2,4`` or ``--sweep rate=50,100``), what one point came to
(:class:`PointResult`, around the shared :class:`~slimsplit.records.RunSummary`), the SLO a point must meet
(:class:`Slo`) and the largest load that meets it (:func:`best_point`).

``clients=N``: a closed loop of N clients, each with one frame in flight, the next sent when the reply (or the
give-up) comes. ``rate=R``: an open loop offering R frames per second in all, whatever the replies do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from slimsplit.errors import ConfigError
from slimsplit.records import OK, FrameRecord, RunSummary, in_time_array, percentile

Kind = Literal["clients", "rate"]
KINDS: Final = ("clients", "rate")
MAX_POINTS: Final = 64
MAX_SWEEP_CLIENTS: Final = 4096
MAX_RATE: Final = 1e6


@dataclass(frozen=True)
class Sweep:
    """The load points of a sweep, in the order given: ``kind`` = what varies, ``values`` = its values."""

    kind: Kind
    values: tuple[float, ...]

    def label(self, value: float) -> str:
        return f"{int(value)} clients" if self.kind == "clients" else f"{value:g} frames/s"


def parse_sweep(spec: str) -> Sweep:
    """``clients=1,2,4,8`` or ``rate=50,100,200`` (ConfigError naming what is wrong)."""
    kind, sep, rest = spec.partition("=")
    kind = kind.strip()
    if not sep or kind not in KINDS:
        raise ConfigError(f"--sweep {spec!r}: expected clients=N,N,... or rate=R,R,... (offered frames/s)")
    values: list[float] = []
    for item in rest.split(","):
        text = item.strip()
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--sweep {spec!r}: {text!r} is not a number") from None
        if kind == "clients":
            if not (value.is_integer() and 1 <= value <= MAX_SWEEP_CLIENTS):
                raise ConfigError(f"--sweep {spec!r}: clients must be whole numbers in 1..{MAX_SWEEP_CLIENTS}")
        elif not (math.isfinite(value) and 0 < value <= MAX_RATE):
            raise ConfigError(f"--sweep {spec!r}: a rate must be > 0 and <= {MAX_RATE:g} frames/s")
        values.append(value)
    if not 1 <= len(values) <= MAX_POINTS:
        raise ConfigError(f"--sweep {spec!r}: give 1..{MAX_POINTS} points")
    if len(set(values)) != len(values):
        raise ConfigError(f"--sweep {spec!r}: a point is given twice")
    return Sweep(kind, tuple(values))  # type: ignore[arg-type]  # kind is one of KINDS, checked above


@dataclass(frozen=True)
class Slo:
    """What a point must meet: latency p99 of the answered frames <= ``p99_ms`` and a share >= ``in_time`` of all
    frames answered by the deadline."""

    p99_ms: float
    in_time: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p99_ms) and self.p99_ms > 0):
            raise ConfigError(f"--slo-p99-ms must be > 0, got {self.p99_ms}")
        if not 0.0 <= self.in_time <= 1.0:
            raise ConfigError(f"--slo-in-time must be in [0, 1], got {self.in_time}")

    def failure(self, summary: RunSummary) -> str | None:
        """Why ``summary`` misses the SLO (``None``: it meets it)."""
        p99 = summary.latency_ms.p99
        if summary.ok == 0 or not math.isfinite(p99):
            return "no frame answered"
        if p99 > self.p99_ms:
            return f"p99 {p99:.2f} ms > {self.p99_ms:g} ms"
        rate = summary.hit_rate if summary.hit_rate is not None else 0.0
        if rate < self.in_time:
            return f"in time {100 * rate:.2f}% < {100 * self.in_time:g}%"
        return None


@dataclass(frozen=True)
class Second:
    """One second of a point's run (frames by the second they were sent in)."""

    t_s: int
    sent: int
    ok: int
    in_time: int
    errors: int
    p50_ms: float
    p99_ms: float
    bytes: int


def timeline(records: Sequence[FrameRecord], seconds: float) -> tuple[Second, ...]:
    """Per-second figures of ``records`` over ``[0, seconds)`` (by each frame's ``t_s``; earlier and later ones
    count in the first and last second)."""
    n = max(1, math.ceil(seconds))
    by_second: list[list[FrameRecord]] = [[] for _ in range(n)]
    for r in records:
        t = 0.0 if math.isnan(r.t_s) else min(max(r.t_s, 0.0), n - 1.0)
        by_second[int(t)].append(r)
    out = []
    for s, chosen in enumerate(by_second):
        ok = [r for r in chosen if r.status == OK]
        lat = [r.latency_ms for r in ok]
        hits = in_time_array(lat, [r.deadline_ms or math.inf for r in ok])
        out.append(
            Second(
                t_s=s,
                sent=len(chosen),
                ok=len(ok),
                in_time=int(hits.sum()) if len(ok) else 0,
                errors=len(chosen) - len(ok),
                p50_ms=percentile(lat, 50),
                p99_ms=percentile(lat, 99),
                bytes=sum(r.payload_bytes for r in chosen),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class PointResult:
    """One load point: its load, the :class:`RunSummary` of its frames, what the summary does not hold (p90,
    the per-second timeline, the offered rate), and whether it met the SLO (``slo_failure``: why not)."""

    kind: Kind
    load: float
    summary: RunSummary
    p90_ms: float
    offered_fps: float
    timeline: tuple[Second, ...]
    slo_failure: str | None
    procs: int

    @property
    def meets_slo(self) -> bool:
        return self.slo_failure is None

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "kind": self.kind,
            "load": self.load,
            "procs": self.procs,
            "offered_fps": self.offered_fps,
            "throughput_fps": s.fps,
            "frames": s.frames,
            "ok": s.ok,
            "latency_ms": {
                "p50": s.latency_ms.p50,
                "p90": self.p90_ms,
                "p95": s.latency_ms.p95,
                "p99": s.latency_ms.p99,
                "mean": s.latency_ms.mean,
            },
            "in_time_rate": s.hit_rate,
            "errors_by_status": s.errors,
            "modes": s.modes,
            "bytes_sent": s.bytes_sent,
            "bytes_per_frame": s.bytes_per_frame,
            "meets_slo": self.meets_slo,
            "slo_failure": self.slo_failure,
            "timeline": [asdict(x) for x in self.timeline],
            "summary": s.to_dict(),
        }


def point_result(
    kind: Kind, load: float, records: Sequence[FrameRecord], seconds: float, slo: Slo, procs: int
) -> PointResult:
    """A point's result from its frames (sent over ``seconds``)."""
    from slimsplit.records import summarize

    summary = summarize(records, seconds)
    ok = [r.latency_ms for r in records if r.status == OK]
    return PointResult(
        kind=kind,
        load=load,
        summary=summary,
        p90_ms=percentile(ok, 90),
        offered_fps=len(records) / seconds if seconds > 0 else math.nan,
        timeline=timeline(records, seconds),
        slo_failure=slo.failure(summary),
        procs=procs,
    )


def best_point(points: Sequence[PointResult]) -> PointResult | None:
    """The largest load that met the SLO (``None``: none did)."""
    passing = [p for p in points if p.meets_slo]
    return max(passing, key=lambda p: p.load) if passing else None


__all__ = [
    "KINDS",
    "Kind",
    "PointResult",
    "Second",
    "Slo",
    "Sweep",
    "best_point",
    "parse_sweep",
    "point_result",
    "timeline",
]
