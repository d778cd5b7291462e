"""What a fault scenario reports, and the figures that must hold (pure data: no processes, no I/O).

A :class:`ScenarioResult` holds what was tried (``inputs``: counts), what happened (``outcomes``), what the good
client saw (:class:`GoodTally`) and what the server's process did (crashes, peak RSS, growth over a soak).
:func:`evaluate` turns it into :class:`Figure` rows, each with its bound and ``passed``; a figure that does not
apply to a scenario is not listed. The figures (issue 15):

* ``server crashes`` = 0: the server process died without being told to;
* ``wrong answers`` = 0: a prediction for a good frame whose top-1 is not the one a quiet server gives;
* ``frames unanswered`` = 0: sent but neither answered nor failed with a reason (a status and a message);
* ``server errors`` = 0: replies with UNKNOWN or INTERNAL, or that leak internals (a Python class or traceback);
* ``peak RSS`` <= the bound (MB);
* ``good in-time rate`` >= 99 %, in scenarios where the good client shares the server with one misbehaving client
  (not where the fault is the server's or the link's own, where frames are lost by design);
* ``RSS growth`` and ``FD growth`` < 5 % over the soak, after warm-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RSS_BOUND_MB = 300.0
IN_TIME_MIN = 0.99
GROWTH_MAX = 0.05


@dataclass
class GoodTally:
    """What the good client saw. ``failed``: status name -> frames failed with it (each with a message)."""

    sent: int = 0
    ok: int = 0
    wrong: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    no_reason: int = 0  # failed with an empty message, or an "OK" status without a prediction
    unanswered: int = 0  # no outcome at all by the end
    late_replies: int = 0
    reconnects: int = 0
    rtt_p50_ms: float = 0.0
    rtt_p99_ms: float = 0.0

    @property
    def in_time(self) -> int:
        """Correct predictions within the deadline (a prediction after it is reported DEADLINE_EXCEEDED)."""
        return self.ok - self.wrong

    @property
    def in_time_rate(self) -> float:
        return self.in_time / self.sent if self.sent else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "in_time": self.in_time, "in_time_rate": round(self.in_time_rate, 5)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GoodTally:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class Growth:
    """Growth of a gauge over the soak after warm-up: the median of the first samples after warm-up against the
    median of the last ones."""

    start: float
    end: float

    @property
    def fraction(self) -> float:
        return (self.end - self.start) / self.start if self.start > 0 else 0.0


@dataclass
class ScenarioResult:
    """One scenario's counts and outcomes (see the module docstring)."""

    name: str
    description: str
    backend: str = "null"
    inputs: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, Any] = field(default_factory=dict)
    crashes: int = 0
    server_errors: int = 0
    attacker_unanswered: int = 0
    good: GoodTally | None = None
    needs_in_time: bool = False
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_bound_mb: float | None = RSS_BOUND_MB
    rss_growth: Growth | None = None
    fd_growth: Growth | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # a few offending replies, for the report
    wall_s: float = 0.0
    error: str | None = None  # the harness itself failed (the scenario did not run to its end)

    @property
    def unanswered(self) -> int:
        good = self.good.unanswered + self.good.no_reason if self.good is not None else 0
        return good + self.attacker_unanswered

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["good"] = self.good.to_json() if self.good is not None else None
        for key in ("rss_growth", "fd_growth"):
            g = getattr(self, key)
            doc[key] = None if g is None else {"start": g.start, "end": g.end, "fraction": round(g.fraction, 5)}
        doc["unanswered"] = self.unanswered
        doc["figures"] = [asdict(f) for f in evaluate(self)]
        doc["passed"] = passed(self)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScenarioResult:
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in doc.items() if k in names}
        kw["good"] = GoodTally.from_json(doc["good"]) if doc.get("good") else None
        for key in ("rss_growth", "fd_growth"):
            g = doc.get(key)
            kw[key] = Growth(g["start"], g["end"]) if g else None
        return cls(**kw)


@dataclass(frozen=True)
class Figure:
    """One figure of one scenario: its value against its bound."""

    name: str
    value: float
    bound: str  # how it must compare, e.g. "= 0", "<= 300 MB", ">= 99 %"
    passed: bool


def evaluate(r: ScenarioResult) -> list[Figure]:
    """The figures that apply to ``r``, each passed or failed."""
    out = [Figure("server crashes", r.crashes, "= 0", r.crashes == 0)]
    if r.error is not None:
        out.append(Figure("harness completed", 0, "= 1", False))
    if r.good is not None:
        out.append(Figure("wrong answers", r.good.wrong, "= 0", r.good.wrong == 0))
    out.append(Figure("frames unanswered", r.unanswered, "= 0", r.unanswered == 0))
    out.append(Figure("server errors (UNKNOWN/INTERNAL/leaks)", r.server_errors, "= 0", r.server_errors == 0))
    if r.rss_bound_mb is not None and r.rss_peak_mb > 0:
        out.append(
            Figure(
                "peak RSS (MB)", round(r.rss_peak_mb, 1), f"<= {r.rss_bound_mb:g} MB", r.rss_peak_mb <= r.rss_bound_mb
            )
        )
    if r.good is not None and r.needs_in_time:
        rate = r.good.in_time_rate
        out.append(
            Figure("good in-time rate (%)", round(100 * rate, 2), f">= {100 * IN_TIME_MIN:g} %", rate >= IN_TIME_MIN)
        )
    for label, g in (("RSS growth (%)", r.rss_growth), ("FD growth (%)", r.fd_growth)):
        if g is not None:
            out.append(Figure(label, round(100 * g.fraction, 2), f"< {100 * GROWTH_MAX:g} %", g.fraction < GROWTH_MAX))
    return out


def passed(r: ScenarioResult) -> bool:
    return all(f.passed for f in evaluate(r))


def growth(values: list[float], warmup: int, window: int = 3) -> Growth | None:
    """:class:`Growth` of ``values`` after the first ``warmup`` samples (``None`` when too few remain)."""
    rest = values[warmup:]
    if len(rest) < 2:
        return None
    k = max(1, min(window, len(rest) // 2))

    def median(xs: list[float]) -> float:
        s = sorted(xs)
        return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2

    return Growth(median(rest[:k]), median(rest[-k:]))
