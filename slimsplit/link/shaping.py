"""The shaping model shared by the TCP proxy and the discrete-event simulator.

One direction of a link (:class:`LinkDirection`) is a FIFO bottleneck whose service schedule is a :class:`Trace`,
followed by a fixed propagation delay::

    sender --> [ bottleneck queue (bytes, bounded) | served by the trace's opportunities ] --> delay --> receiver

State is one number, ``free_pos``: the cumulative trace byte position up to which capacity is already taken by
queued bytes. A message of ``n`` bytes entering at time ``t`` occupies positions
``(max(free_pos, bytes_before(t)), ... + n]``; its last byte leaves the bottleneck at ``time_of_byte(end)`` and
reaches the far end ``delay`` later. Opportunities that found the queue empty are lost (``bytes_before(t)``), an
opportunity partly used by one message carries the head of the next one (per-byte accounting). The backlog at
time ``t`` is ``max(0, free_pos - bytes_through(t))``.

Times given to a direction are *link time* in seconds (the simulator's virtual clock, or the proxy's monotonic clock
minus its epoch); ``offset_s`` shifts them into trace time, so a run can start anywhere in a trace.

The queue holds at most ``queue_bytes``. A TCP byte stream cannot lose bytes, so the proxy applies the bound as
back-pressure: it reads from a socket only as many bytes as the queue has room for (:meth:`LinkDirection.space`),
and the sender's TCP stack holds the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slimsplit.errors import ConfigError
from slimsplit.link.trace import FloatArray, Trace

DEFAULT_QUEUE_BYTES = 256 * 1024


@dataclass(frozen=True)
class LinkConfig:
    """A two-way emulated link. ``None`` for a direction means unshaped (only the delay applies)."""

    uplink: Trace | None = None
    downlink: Trace | None = None
    delay_ms: float = 0.0  # one-way propagation delay, applied in each direction
    queue_bytes: int = DEFAULT_QUEUE_BYTES  # bottleneck queue bound, each direction
    start_offset_s: float = 0.0  # where in the traces link time 0 falls

    def __post_init__(self) -> None:
        if not math.isfinite(self.delay_ms) or self.delay_ms < 0:
            raise ConfigError(f"link delay_ms must be >= 0, got {self.delay_ms}")
        if self.queue_bytes < 1:
            raise ConfigError(f"link queue_bytes must be >= 1, got {self.queue_bytes}")
        if not math.isfinite(self.start_offset_s) or self.start_offset_s < 0:
            raise ConfigError(f"link start_offset_s must be >= 0, got {self.start_offset_s}")

    @property
    def base_rtt_s(self) -> float:
        """Round-trip propagation delay (no transmission time)."""
        return 2.0 * self.delay_ms / 1000.0

    def make(self) -> Link:
        """Fresh mutable link state for one run."""
        return Link(
            up=LinkDirection(self.uplink, self.delay_ms / 1000.0, self.queue_bytes, self.start_offset_s),
            down=LinkDirection(self.downlink, self.delay_ms / 1000.0, self.queue_bytes, self.start_offset_s),
        )


class LinkDirection:
    """One direction: bottleneck queue served by a trace (or unshaped), then a propagation delay.

    Calls must come in non-decreasing time order (it is a FIFO in time)."""

    __slots__ = ("_free_pos", "_last_t", "delay_s", "offset_s", "queue_bytes", "trace")

    def __init__(
        self, trace: Trace | None, delay_s: float = 0.0, queue_bytes: int = DEFAULT_QUEUE_BYTES, offset_s: float = 0.0
    ) -> None:
        self.trace = trace
        self.delay_s = delay_s
        self.queue_bytes = queue_bytes
        self.offset_s = offset_s
        self._free_pos = 0.0
        self._last_t = -math.inf

    # ------------------------------------------------------------------ state queries
    def backlog(self, t: float) -> float:
        """Bytes waiting in the bottleneck at link time ``t``."""
        if self.trace is None:
            return 0.0
        return max(0.0, self._free_pos - self.trace.bytes_through(t + self.offset_s))

    def space(self, t: float) -> float:
        """Free room in the bottleneck queue at ``t``, bytes."""
        return max(0.0, self.queue_bytes - self.backlog(t))

    def departure_time(self, t: float, nbytes: float) -> float:
        """When the last of ``nbytes`` entering at ``t`` would leave the bottleneck (no state change)."""
        if self.trace is None or nbytes <= 0:
            return t
        start = max(self._free_pos, self.trace.bytes_before(t + self.offset_s))
        return self.trace.time_of_byte(start + nbytes) - self.offset_s

    def drain_time(self, t: float, backlog_bytes: float) -> float:
        """The earliest link time ``>= t`` at which the backlog is at most ``backlog_bytes``."""
        if self.trace is None or self.backlog(t) <= backlog_bytes:
            return t
        # backlog(u) = free_pos - bytes_through(u) <= target  <=>  the byte at free_pos - target has left
        return max(t, self.trace.time_of_byte(self._free_pos - backlog_bytes) - self.offset_s)

    # ------------------------------------------------------------------ state changes
    def enqueue(self, t: float, nbytes: float) -> float:
        """Put ``nbytes`` into the queue at ``t`` (the caller respects the bound); return when the last byte
        arrives at the far end (departure + delay)."""
        self._advance(t)
        if self.trace is None or nbytes <= 0:
            return t + self.delay_s
        start = max(self._free_pos, self.trace.bytes_before(t + self.offset_s))
        self._free_pos = start + nbytes
        return self.trace.time_of_byte(self._free_pos) - self.offset_s + self.delay_s

    def enqueue_segments(self, t: float, nbytes: int, segment_bytes: int = 1500) -> tuple[list[int], list[float]]:
        """Enqueue ``nbytes`` at ``t`` and return, for consecutive pieces that arrive at the same instant, their
        end offsets within the chunk and arrival times: ``([end_1, end_2, ...], [t_1, t_2, ...])``.
        Pieces are at most ``segment_bytes`` long before merging (the proxy releases them one instant at a time)."""
        self._advance(t)
        if self.trace is None or nbytes <= 0:
            return [nbytes], [t + self.delay_s]
        start = max(self._free_pos, self.trace.bytes_before(t + self.offset_s))
        self._free_pos = start + nbytes
        ends = np.minimum(np.arange(1, math.ceil(nbytes / segment_bytes) + 1) * segment_bytes, nbytes)
        times: FloatArray = self.trace.times_of_bytes(start + ends.astype(np.float64)) - self.offset_s + self.delay_s
        # keep the last piece of each run of equal arrival times
        keep = np.ones(times.size, dtype=bool)
        keep[:-1] = times[1:] != times[:-1]
        return [int(e) for e in ends[keep]], [float(x) for x in times[keep]]

    def withdraw(self, t: float, keep_bytes: float = 0.0) -> float:
        """The sender takes back, at ``t``, the bytes waiting in the bottleneck beyond the first ``keep_bytes``
        (those at the tail: the newest messages); returns how many it took. A model of a sender that keeps bytes
        at home until the link can carry them (see BENCHMARKS.md section 4b): a real FIFO cannot give back
        bytes already in it."""
        self._advance(t)
        removed = max(0.0, self.backlog(t) - max(0.0, keep_bytes))
        self._free_pos -= removed
        return removed

    def _advance(self, t: float) -> None:
        if t < self._last_t - 1e-9:
            raise ConfigError(f"link direction used out of time order ({t} after {self._last_t})")
        self._last_t = max(self._last_t, t)


@dataclass
class Link:
    """Both directions of one emulated link (mutable run state)."""

    up: LinkDirection
    down: LinkDirection


__all__ = ["DEFAULT_QUEUE_BYTES", "Link", "LinkConfig", "LinkDirection"]
