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

This is Mahimahi's link (``LinkQueue::rationalize``): each trace line is an opportunity of 1500 bytes, an
opportunity may finish one packet and start the next, and a packet leaves at the opportunity that carries its last
byte. Here a *message* (the simulator's frame, or each byte of a proxied stream) plays the packet. One convention
differs, at exact instants only: bytes given at the very instant of an opportunity may use it (Mahimahi's
millisecond clock puts a packet that arrives during millisecond ``T`` after the opportunities of ``T``).

Times given to a direction are *link time* in seconds (the simulator's virtual clock, or the proxy's monotonic clock
minus its epoch); ``offset_s`` shifts them into trace time, so a run can start anywhere in a trace.

The queue holds at most ``queue_bytes``. A TCP byte stream cannot lose bytes, so the bound is back-pressure: bytes
beyond the room wait at the sender (the proxy reads from a socket only as many bytes as the queue has room for,
:meth:`LinkDirection.space`, and the sender's TCP stack holds the rest; the simulator's sender holds them in the
model) and enter after later instants, each as it makes room. An instant serves only bytes queued before it, as in
Mahimahi, so where one instant carries more than the queue holds (``--queue-bytes 1500`` on a trace with two
packets in a millisecond) a sender that always has bytes uses at most ``queue_bytes`` of that instant
(:meth:`Trace.usable_fraction`; :meth:`LinkConfig.queue_warnings` says so). A queue that holds every instant's
capacity loses nothing to the bound: the bytes take the positions they would take in an unbounded queue, and only
the time the sender hands them over moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slimsplit.errors import ConfigError
from slimsplit.link.trace import Trace

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

    def queue_warnings(self) -> list[str]:
        """One line per direction whose queue is smaller than one instant of its trace (it cannot use all of it)."""
        out = []
        for name, trace in (("uplink", self.uplink), ("downlink", self.downlink)):
            if trace is None or trace.max_instant_bytes <= self.queue_bytes:
                continue
            out.append(
                f"the {name} queue ({self.queue_bytes} B) is smaller than the largest instant of {trace.name!r} "
                f"({trace.max_instant_bytes:.0f} B): an instant serves only bytes queued before it, so at most "
                f"{trace.usable_fraction(self.queue_bytes):.0%} of the trace's capacity can be used"
            )
        return out

    def make(self) -> Link:
        """Fresh mutable link state for one run."""
        return Link(
            up=LinkDirection(self.uplink, self.delay_ms / 1000.0, self.queue_bytes, self.start_offset_s),
            down=LinkDirection(self.downlink, self.delay_ms / 1000.0, self.queue_bytes, self.start_offset_s),
        )


class LinkDirection:
    """One direction: bottleneck queue served by a trace (or unshaped), then a propagation delay.

    Calls must come in non-decreasing time order (it is a FIFO in time)."""

    __slots__ = (
        "_free_pos",
        "_held_until",
        "_last_t",
        "_lossless_refill",
        "delay_s",
        "offset_s",
        "queue_bytes",
        "trace",
    )

    def __init__(
        self, trace: Trace | None, delay_s: float = 0.0, queue_bytes: int = DEFAULT_QUEUE_BYTES, offset_s: float = 0.0
    ) -> None:
        self.trace = trace
        self.delay_s = delay_s
        self.queue_bytes = queue_bytes
        self.offset_s = offset_s
        self._free_pos = 0.0
        self._held_until = -math.inf  # link time of the instant after which the sender's last held byte enters
        self._last_t = -math.inf
        # a queue that holds any one instant's capacity is full before every instant while the sender holds bytes:
        # the refills lose nothing, and the held bytes take the positions they would take in an unbounded queue
        self._lossless_refill = trace is None or trace.max_instant_bytes <= queue_bytes

    # ------------------------------------------------------------------ state queries
    def backlog(self, t: float) -> float:
        """Bytes given to this direction and not through the bottleneck at link time ``t``: those in the queue and
        those the sender still holds back because the queue is full."""
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
        _, end, _ = self._plan(t, nbytes)
        return self.trace.time_of_byte(end) - self.offset_s

    def drain_time(self, t: float, backlog_bytes: float) -> float:
        """The earliest link time ``>= t`` at which the backlog is at most ``backlog_bytes``."""
        if self.trace is None or self.backlog(t) <= backlog_bytes:
            return t
        # backlog(u) = free_pos - bytes_through(u) <= target  <=>  the byte at free_pos - target has left
        return max(t, self.trace.time_of_byte(self._free_pos - backlog_bytes) - self.offset_s)

    def idle_capacity(self, t0: float, t1: float) -> float:
        """Capacity of the instants after ``t0`` and before ``t1`` that find the queue empty, bytes (what a sender
        that could not refill the queue in that time loses)."""
        if self.trace is None or t1 <= t0:
            return 0.0
        off = self.offset_s
        return max(0.0, self.trace.bytes_before(t1 + off) - max(self._free_pos, self.trace.bytes_through(t0 + off)))

    # ------------------------------------------------------------------ state changes
    def enqueue(self, t: float, nbytes: float) -> float:
        """Give ``nbytes`` to the direction at ``t``; return when the last byte arrives at the far end (departure +
        delay). Bytes beyond the queue's room wait at the sender (see the module docstring)."""
        self._advance(t)
        if self.trace is None or nbytes <= 0:
            return t + self.delay_s
        _, self._free_pos, self._held_until = self._plan(t, nbytes)
        return self.trace.time_of_byte(self._free_pos) - self.offset_s + self.delay_s

    def enqueue_segments(self, t: float, nbytes: int) -> tuple[list[int], list[float]]:
        """Enqueue ``nbytes`` at ``t`` and say when each byte arrives: for consecutive pieces that arrive at the same
        instant, their end offsets within the chunk and arrival times, ``([end_1, end_2, ...], [t_1, t_2, ...])``.
        A piece is what one instant carries of the chunk: each byte arrives at the instant that carries it (plus the
        delay), so a message in the chunk arrives when the instant carrying its last byte comes, as
        :meth:`enqueue` says for a message given alone."""
        self._advance(t)
        trace = self.trace
        if trace is None or nbytes <= 0:
            return [nbytes], [t + self.delay_s]
        runs, self._free_pos, self._held_until = self._plan(t, nbytes)
        shift = self.delay_s - self.offset_s
        ends: list[int] = []
        times: list[float] = []

        def piece(end: int, at: float) -> None:
            if end <= (ends[-1] if ends else 0):  # no byte of its own: an earlier instant carries them all
                return
            if times and at == times[-1]:
                ends[-1] = end
            else:
                ends.append(end)
                times.append(at)

        offset = 0.0  # chunk offset of the current run's first position
        for lo, hi in runs:
            inner, inner_t = trace.instant_ends(lo, hi)
            # the bytes of the chunk whose positions are <= an instant's last position go with that instant
            cut = np.floor(offset + (inner - lo) + 1e-6)
            for end, at in zip(cut.tolist(), inner_t.tolist(), strict=True):
                piece(min(int(end), nbytes - 1), at + shift)
            offset += hi - lo
            piece(min(math.floor(offset + 1e-6), nbytes - 1), trace.time_of_byte(hi) + shift)
        piece(nbytes, trace.time_of_byte(self._free_pos) + shift)
        return ends, times

    def withdraw(self, t: float, keep_bytes: float = 0.0) -> float:
        """The sender takes back, at ``t``, the bytes waiting in the bottleneck beyond the first ``keep_bytes``
        (those at the tail: the newest messages); returns how many it took. A model of a sender that keeps bytes
        at home until the link can carry them (see BENCHMARKS.md section 4b): a real FIFO cannot give back
        bytes already in it."""
        self._advance(t)
        removed = max(0.0, self.backlog(t) - max(0.0, keep_bytes))
        self._free_pos -= removed
        if self.backlog(t) <= self.queue_bytes:
            self._held_until = -math.inf  # whatever is left is in the queue
        elif self._lossless_refill and self.trace is not None:
            self._held_until = self.trace.time_of_byte(self._free_pos - self.queue_bytes) - self.offset_s
        return removed

    def _plan(self, t: float, nbytes: float) -> tuple[list[tuple[float, float]], float, float]:
        """Where ``nbytes`` given at ``t`` go (no state change): the runs ``(lo, hi]`` of trace byte positions they
        take, in order; the new ``free_pos``; the link time of the instant after which the last of them enters the
        queue (``-inf`` when they all enter at ``t``).

        Bytes given at ``t`` arrive before the service of an instant at ``t`` and take the room there is. The rest
        wait at the sender, behind any bytes it still holds, and enter after the service of each later instant, as
        much as that instant made room for; an instant serves only bytes queued before it (Mahimahi), so an
        instant's capacity beyond what the queue holds is lost while the sender waits."""
        trace = self.trace
        assert trace is not None
        q, off = float(self.queue_bytes), self.offset_s
        free = self._free_pos
        refill = t <= self._held_until
        if refill:  # the sender still holds bytes: these join them, after that instant's service
            at = self._held_until
            served = trace.bytes_through(at + off)
        else:
            at = t
            served = trace.bytes_before(t + off)
        runs: list[tuple[float, float]] = []
        left = float(nbytes)

        def take(start: float, k: float) -> None:
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], start + k)
            else:
                runs.append((start, start + k))

        while True:
            room = q - max(0.0, free - served)
            if room > 0.0:
                k = min(room, left)
                start = max(free, served)
                take(start, k)
                free = start + k
                left -= k
            if left <= 0.0:
                return runs, free, at if refill else -math.inf
            refill = True
            if self._lossless_refill:  # each refill takes what the instant before it served: no gap, no loss
                take(free, left)
                free += left
                # the last byte enters after the instant that serves the byte a full queue ahead of it
                return runs, free, trace.time_of_byte(free - q) - off
            end, at_trace = trace.next_end(served)
            while end <= served:  # float rounding at a period boundary: step past it
                served += max(1e-6, abs(served) * 1e-13)
                end, at_trace = trace.next_end(served)
            # the instant's service (with an instant at the same time: a period's end and the next one's 0)
            served, at = max(end, trace.bytes_through(at_trace)), at_trace - off

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
