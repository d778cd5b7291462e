"""Bandwidth traces: schedules of delivery opportunities, with O(log n) "when is byte k delivered" queries.

A :class:`Trace` is one period of a schedule of *delivery opportunities*: at instant ``times_ms[i]`` (milliseconds,
strictly increasing, none after the period) the link can deliver ``cum_bytes[i] - cum_bytes[i-1]`` bytes.
After the period the schedule repeats: the opportunities of cycle ``k`` happen at ``k * period_ms + times_ms[i]``.
That is exactly Mahimahi's rule (the trace wraps at its last timestamp).

Accounting is per byte: an opportunity can carry the tail of one queued message and the head of the next; capacity
that finds the queue empty is lost. The cumulative array turns both directions of the question into one
``searchsorted``:

* ``bytes_before(t)`` / ``bytes_through(t)``: capacity of all opportunities at instants ``< t`` / ``<= t``;
* ``time_of_byte(pos)``: the instant of the opportunity that carries byte number ``pos`` (1-based cumulative position).

Formats:

* Mahimahi: one integer millisecond timestamp per line (decimal digits only, as Mahimahi's ``strtol`` reads them:
  no sign, no ``1_0``), one line per 1500-byte opportunity, repeated timestamps for several packets in one
  millisecond, non-decreasing, last timestamp > 0 and below :data:`MAX_TRACE_MS` (:func:`load_mahimahi`);
* constant rate: a fluid schedule with one opportunity per millisecond (:meth:`Trace.constant`);
* synthetic: see :mod:`slimsplit.link.synth`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from slimsplit.errors import TraceError

MAHIMAHI_PACKET_BYTES = 1500
#: Every instant of a trace, and its period, lies below this many milliseconds (10^9 ms: about 11.6 days; recorded
#: cellular traces last minutes). It keeps a trace's 1-s summary (``stats``) to at most a million bins and every
#: timestamp far inside 64 bits.
MAX_TRACE_MS = 10**9
_DIGITS_RE = re.compile(r"[0-9]+")
# query times are snapped to the nanosecond so that float sums such as 0.2 + 0.01 land on the millisecond
# opportunity they mean (0.21000000000000002 s must not count the 210-ms opportunity as already past)
_NS_DIGITS = 6

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Trace:
    """One period of a delivery-opportunity schedule (see the module docstring). Immutable; build with the
    classmethods or :func:`load_mahimahi`."""

    name: str
    times_ms: FloatArray  # strictly increasing instants in [0, period_ms]
    cum_bytes: FloatArray  # cumulative bytes through times_ms[i] (strictly increasing)
    period_ms: float  # the schedule repeats after this many ms (Mahimahi: the last timestamp)
    packet_bytes: int | None = MAHIMAHI_PACKET_BYTES  # opportunity size when the trace is packet-based

    def __post_init__(self) -> None:
        t, c = self.times_ms, self.cum_bytes
        if t.ndim != 1 or c.ndim != 1 or t.shape != c.shape or t.size == 0:
            raise TraceError(f"trace {self.name!r}: times and cumulative bytes must be equal-length 1-D arrays")
        if not self.period_ms > 0 or t[-1] > self.period_ms or not self.period_ms < MAX_TRACE_MS:
            raise TraceError(
                f"trace {self.name!r}: the period must be positive, not before the last instant and below "
                f"{MAX_TRACE_MS} ms (period {self.period_ms} ms, last instant {t[-1]} ms)"
            )
        if t[0] < 0 or (t.size > 1 and bool(np.any(np.diff(t) <= 0))):
            raise TraceError(f"trace {self.name!r}: instants must be non-negative and strictly increasing")
        if c[0] <= 0 or (c.size > 1 and bool(np.any(np.diff(c) <= 0))):
            raise TraceError(f"trace {self.name!r}: every instant must carry a positive number of bytes")
        t.setflags(write=False)
        c.setflags(write=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_timestamps(
        cls, timestamps_ms: Sequence[int] | npt.NDArray[np.int64], name: str = "trace", packet_bytes: int = 1500
    ) -> Trace:
        """A packet trace: one opportunity of ``packet_bytes`` per timestamp (repeats = several packets)."""
        try:
            ts = np.asarray(timestamps_ms, dtype=np.int64)
        except OverflowError:
            raise TraceError(f"trace {name!r}: a timestamp does not fit in 64 bits") from None
        if ts.ndim != 1 or ts.size == 0:
            raise TraceError(f"trace {name!r}: no timestamps")
        if ts[-1] >= MAX_TRACE_MS:
            raise TraceError(f"trace {name!r}: timestamps must be below {MAX_TRACE_MS} ms, got {int(ts[-1])}")
        if bool(np.any(np.diff(ts) < 0)) or ts[0] < 0:
            raise TraceError(f"trace {name!r}: timestamps must be non-negative and non-decreasing")
        if ts[-1] <= 0:
            raise TraceError(f"trace {name!r}: the last timestamp must be positive (it is the period)")
        uniq, counts = np.unique(ts, return_counts=True)
        cum = np.cumsum(counts.astype(np.float64) * float(packet_bytes))
        return cls(
            name=name,
            times_ms=uniq.astype(np.float64),
            cum_bytes=cum,
            period_ms=float(ts[-1]),
            packet_bytes=packet_bytes,
        )

    @classmethod
    def constant(cls, rate_bps: float, name: str | None = None, period_ms: int = 1000) -> Trace:
        """A fluid constant-rate link: every millisecond carries ``rate_bps / 8000`` bytes."""
        if not math.isfinite(rate_bps) or rate_bps <= 0:
            raise TraceError(f"constant-rate trace: rate must be a positive number of bits/s, got {rate_bps!r}")
        per_ms = rate_bps / 8000.0
        times = np.arange(1, period_ms + 1, dtype=np.float64)
        cum = per_ms * times
        return cls(
            name=name or f"const-{format_rate(rate_bps)}",
            times_ms=times,
            cum_bytes=cum,
            period_ms=float(period_ms),
            packet_bytes=None,
        )

    # ------------------------------------------------------------------ properties
    @property
    def period_s(self) -> float:
        return self.period_ms / 1000.0

    @property
    def total_bytes(self) -> float:
        """Capacity of one period, bytes."""
        return float(self.cum_bytes[-1])

    @property
    def mean_bps(self) -> float:
        return self.total_bytes * 8.0 / self.period_s

    def _instant_sizes(self) -> FloatArray:
        """Capacity of each distinct instant of a period, bytes. An instant at 0 and one at the period's end are the
        same instant once the trace repeats (Mahimahi's 0 and last timestamps): they count as one, at the end."""
        sizes: FloatArray = np.diff(self.cum_bytes, prepend=0.0)
        if sizes.size > 1 and self.times_ms[0] == 0.0 and self.times_ms[-1] == self.period_ms:
            sizes = sizes.copy()
            sizes[-1] += sizes[0]
            sizes = sizes[1:]
        return sizes

    @property
    def max_instant_bytes(self) -> float:
        """Capacity of the trace's largest instant, bytes (a queue smaller than this cannot use all of it)."""
        return float(np.max(self._instant_sizes()))

    def usable_fraction(self, queue_bytes: float) -> float:
        """The share of the capacity a sender that always has bytes can use through a queue of ``queue_bytes``:
        an instant carries only what is queued before it (Mahimahi), at most ``queue_bytes`` of its capacity."""
        return float(np.minimum(self._instant_sizes(), queue_bytes).sum() / self.total_bytes)

    # ------------------------------------------------------------------ queries (trace time, seconds)
    def bytes_through(self, t_s: float) -> float:
        """Capacity of every opportunity at an instant ``<= t_s`` (from trace time 0)."""
        if t_s < 0:
            return 0.0
        t = round(t_s * 1000.0, _NS_DIGITS)
        p = self.period_ms
        k = math.floor(t / p)
        r = t - k * p
        i = int(np.searchsorted(self.times_ms, r, side="right"))
        return k * self.total_bytes + (float(self.cum_bytes[i - 1]) if i > 0 else 0.0)

    def bytes_before(self, t_s: float) -> float:
        """Capacity of every opportunity at an instant ``< t_s``."""
        if t_s <= 0:
            return 0.0
        t = round(t_s * 1000.0, _NS_DIGITS)
        p = self.period_ms
        k = math.ceil(t / p) - 1
        r = t - k * p
        i = int(np.searchsorted(self.times_ms, r, side="left"))
        return k * self.total_bytes + (float(self.cum_bytes[i - 1]) if i > 0 else 0.0)

    def bytes_before_array(self, t_s: FloatArray) -> FloatArray:
        """Vectorised :meth:`bytes_before` (``t_s`` > 0)."""
        t = np.round(np.asarray(t_s, dtype=np.float64) * 1000.0, _NS_DIGITS)
        p = self.period_ms
        k = np.maximum(np.ceil(t / p) - 1.0, 0.0)
        r = t - k * p
        i = np.searchsorted(self.times_ms, r, side="left")
        inner = np.where(i > 0, self.cum_bytes[np.maximum(i - 1, 0)], 0.0)
        out: FloatArray = np.where(t > 0, k * self.total_bytes + inner, 0.0)
        return out

    def next_end(self, pos: float) -> tuple[float, float]:
        """The first instant whose last byte position is beyond ``pos``: that position and the instant's trace
        time (s). After the service of the instant that ends at ``pos``, this is the next instant that serves."""
        total = self.total_bytes
        k = math.floor(pos / total)
        i = int(np.searchsorted(self.cum_bytes, pos - k * total, side="right"))
        if i == self.cum_bytes.size:
            k, i = k + 1, 0
        return k * total + float(self.cum_bytes[i]), (k * self.period_ms + float(self.times_ms[i])) / 1000.0

    def instant_ends(self, lo: float, hi: float) -> tuple[FloatArray, FloatArray]:
        """The instants whose last byte position lies strictly inside ``(lo, hi)``: their last positions and their
        trace times (s), in order. A run of bytes at positions ``(lo, hi]`` is carried by these instants and, for
        the bytes after the last of them, by the instant of ``time_of_byte(hi)``."""
        total, m = self.total_bytes, self.cum_bytes.size

        def count(x: float, side: Literal["left", "right"]) -> int:  # last position <= x ("right"), < x ("left")
            k = math.floor(x / total)
            i = int(np.searchsorted(self.cum_bytes, x - k * total, side=side))
            return k * m + i

        g = np.arange(count(lo, "right"), count(hi, "left"), dtype=np.int64)
        k, i = np.divmod(g, m)
        ends: FloatArray = k * total + self.cum_bytes[i]
        times: FloatArray = (k * self.period_ms + self.times_ms[i]) / 1000.0
        return ends, times

    def time_of_byte(self, pos: float) -> float:
        """Trace time (s) of the opportunity that carries cumulative byte position ``pos`` (> 0)."""
        total = self.total_bytes
        k = math.ceil(pos / total) - 1
        r = pos - k * total
        i = min(int(np.searchsorted(self.cum_bytes, r, side="left")), self.cum_bytes.size - 1)
        return (k * self.period_ms + float(self.times_ms[i])) / 1000.0

    def times_of_bytes(self, pos: FloatArray) -> FloatArray:
        """Vectorised :meth:`time_of_byte`."""
        total = self.total_bytes
        k = np.ceil(pos / total) - 1.0
        r = pos - k * total
        i = np.minimum(np.searchsorted(self.cum_bytes, r, side="left"), self.cum_bytes.size - 1)
        out: FloatArray = (k * self.period_ms + self.times_ms[i]) / 1000.0
        return out

    def capacity_series(self, bin_s: float = 1.0, duration_s: float | None = None) -> FloatArray:
        """Capacity in bits/s of consecutive bins of ``bin_s`` seconds (default: one period)."""
        duration = self.period_s if duration_s is None else duration_s
        n = max(1, math.ceil(duration / bin_s - 1e-9))
        edges = self.bytes_before_array(np.arange(n + 1, dtype=np.float64) * bin_s)
        out: FloatArray = np.diff(edges) * 8.0 / bin_s
        return out

    def segment(self, start_s: float, duration_s: float, name: str | None = None) -> Trace:
        """A new trace made of the opportunities in ``[start_s, start_s + duration_s)`` (wrapping as needed),
        shifted to start at 0; it repeats with period ``duration_s``."""
        if duration_s <= 0 or start_s < 0:
            raise TraceError(f"trace {self.name!r}: bad segment start={start_s} duration={duration_s}")
        p = self.period_ms
        t0 = start_s * 1000.0
        t1 = t0 + duration_s * 1000.0
        k0, k1 = math.floor(t0 / p), math.floor(t1 / p)
        sizes = np.diff(np.concatenate(([0.0], self.cum_bytes)))
        times_l: list[FloatArray] = []
        sizes_l: list[FloatArray] = []
        for k in range(max(0, k0 - 1), k1 + 1):
            abs_t = self.times_ms + k * p
            sel = (abs_t >= t0) & (abs_t < t1)
            times_l.append(abs_t[sel] - t0)
            sizes_l.append(sizes[sel])
        times = np.concatenate(times_l)
        sz = np.concatenate(sizes_l)
        # merge equal instants (an instant at the wrap point of a trace whose first timestamp is 0)
        times, inv = np.unique(times, return_inverse=True)
        merged = np.zeros(times.size, dtype=np.float64)
        np.add.at(merged, inv, sz)
        if times.size == 0:
            raise TraceError(f"trace {self.name!r}: segment [{start_s}, {start_s + duration_s}) s has no capacity")
        cum = np.cumsum(merged)
        return Trace(
            name=name or f"{self.name}[{start_s:g}+{duration_s:g}s]",
            times_ms=times,
            cum_bytes=cum,
            period_ms=duration_s * 1000.0,
            packet_bytes=self.packet_bytes,
        )

    def describe(self) -> dict[str, float]:
        """Summary figures (as in the shared traces' README): duration, mean, p5/p50/p95 of 1-s capacity (Mbit/s)
        and seconds with zero capacity."""
        cap = self.capacity_series(1.0)
        return {
            "duration_s": self.period_s,
            "mean_mbps": self.mean_bps / 1e6,
            "p5_mbps": float(np.percentile(cap, 5)) / 1e6,
            "p50_mbps": float(np.percentile(cap, 50)) / 1e6,
            "p95_mbps": float(np.percentile(cap, 95)) / 1e6,
            "zero_s": float(np.sum(cap < 1.0)),
        }

    def __repr__(self) -> str:
        return f"Trace({self.name!r}, period={self.period_s:g}s, mean={format_rate(self.mean_bps)})"


# ---------------------------------------------------------------------------------------------- Mahimahi I/O


def parse_mahimahi(text: str, source: str = "<trace>", packet_bytes: int = MAHIMAHI_PACKET_BYTES) -> Trace:
    """Parse Mahimahi text. Blank lines are ignored; anything else must be a decimal integer (digits only) below
    :data:`MAX_TRACE_MS`, non-decreasing. Errors raise :class:`TraceError` naming ``source:line``."""
    stamps: list[int] = []
    prev = -1
    last_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("-") and _DIGITS_RE.fullmatch(s[1:]):
            raise TraceError(f"{source}:{lineno}: negative timestamp {s[:40]}", file=source, line=lineno)
        if not _DIGITS_RE.fullmatch(s):  # int() would also take "1_0", "+5" and non-ASCII digits: Mahimahi does not
            raise TraceError(
                f"{source}:{lineno}: expected an integer millisecond timestamp (decimal digits only), got {s[:40]!r}",
                file=source,
                line=lineno,
            )
        if len(s) > 18 or (v := int(s)) >= MAX_TRACE_MS:  # 18 digits: int() stays cheap, far inside 64 bits
            raise TraceError(
                f"{source}:{lineno}: timestamp {s[:40]} ms is too large (timestamps must be below {MAX_TRACE_MS} ms)",
                file=source,
                line=lineno,
            )
        if v < prev:
            raise TraceError(
                f"{source}:{lineno}: timestamp {v} is smaller than the previous one ({prev}); "
                "Mahimahi traces must be non-decreasing",
                file=source,
                line=lineno,
            )
        stamps.append(v)
        prev = v
        last_line = lineno
    if not stamps:
        raise TraceError(f"{source}:1: the trace is empty (no timestamps)", file=source, line=1)
    if stamps[-1] == 0:
        raise TraceError(
            f"{source}:{last_line}: the last timestamp must be positive (the trace repeats after it)",
            file=source,
            line=last_line,
        )
    name = Path(source).name if source != "<trace>" else "trace"
    for suffix in (".up", ".down", ".trace"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Trace.from_timestamps(stamps, name=name, packet_bytes=packet_bytes)


def load_mahimahi(path: str | Path, packet_bytes: int = MAHIMAHI_PACKET_BYTES) -> Trace:
    """Read a Mahimahi trace file (see :func:`parse_mahimahi`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TraceError(f"{p}: trace file not found", file=str(p)) from None
    except IsADirectoryError:
        raise TraceError(f"{p}: is a directory, not a trace file", file=str(p)) from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise TraceError(f"{p}:{line}: not an ASCII text file", file=str(p), line=line) from None
    except OSError as exc:
        raise TraceError(f"{p}: cannot read the trace file ({exc.strerror or exc})", file=str(p)) from None
    return parse_mahimahi(text, source=str(p), packet_bytes=packet_bytes)


def write_mahimahi(timestamps_ms: Sequence[int] | npt.NDArray[np.int64], path: str | Path) -> None:
    """Write packet-opportunity timestamps as a Mahimahi trace (one line per 1500-byte opportunity)."""
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    Path(path).write_text("".join(f"{int(v)}\n" for v in ts), encoding="ascii")


# ---------------------------------------------------------------------------------------------- rates / specs

_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG]?)(bit|bps|b)?(?:/s)?\s*$")
_RATE_MULT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str) -> float:
    """Parse a rate such as ``"1.5mbit"``, ``"800kbit"``, ``"2e6"``, ``"12Mbps"`` into bits per second."""
    m = _RATE_RE.match(text)
    if not m:
        raise TraceError(f"cannot parse rate {text!r}; use e.g. '1.5mbit', '800kbit' or '2000000'")
    value = float(m.group(1)) * _RATE_MULT[m.group(2).lower()]
    if value <= 0:
        raise TraceError(f"rate must be positive, got {text!r}")
    return value


def format_rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:g}mbit"
    if bps >= 1e3:
        return f"{bps / 1e3:g}kbit"
    return f"{bps:g}bit"


SHIPPED_PREFIX = "shipped:"


def shipped_trace_path(name: str) -> Path:
    """The file of the shipped synthetic trace ``name`` (``ge-outages``; see ``slimsplit/assets/traces``)."""
    from slimsplit.link.synth import shipped_traces_dir  # synth builds on this module

    folder = shipped_traces_dir()
    path = folder / f"{name.removesuffix('.trace')}.trace"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in folder.glob("*.trace"))) or "none"
        raise TraceError(f"no shipped trace {name!r} (shipped: {names})")
    return path


def load_trace_spec(spec: str) -> Trace | None:
    """A link specification as given on command lines: ``none`` (unshaped), a rate (``2mbit``), a shipped trace
    (``shipped:ge-outages``) or a trace file."""
    s = spec.strip()
    if s.lower() in {"none", "off", ""}:
        return None
    if s.startswith(SHIPPED_PREFIX):
        return load_mahimahi(shipped_trace_path(s.removeprefix(SHIPPED_PREFIX)))
    if _RATE_RE.match(s) and not Path(s).exists():
        return Trace.constant(parse_rate(s))
    return load_mahimahi(s)


__all__ = [
    "MAHIMAHI_PACKET_BYTES",
    "MAX_TRACE_MS",
    "SHIPPED_PREFIX",
    "Trace",
    "format_rate",
    "load_mahimahi",
    "load_trace_spec",
    "parse_mahimahi",
    "parse_rate",
    "shipped_trace_path",
    "write_mahimahi",
]
