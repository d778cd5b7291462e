"""A token bucket: ``rate`` tokens per second, at most ``capacity`` held.

:meth:`TokenBucket.take` takes ``amount`` tokens if the bucket has them and otherwise says how long until it would,
so whatever a bucket refuses costs nothing. The per-device frame and byte limits, the audit log and the server's
log-line limit each hold buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` held (it starts full). Not thread-safe: one event loop."""

    __slots__ = ("_clock", "_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"a token bucket needs rate > 0 and capacity > 0, got {rate} and {capacity}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def take(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens: 0.0 when taken, else the seconds until they would be there (nothing taken).
        An amount above the capacity is taken from a full bucket (a frame larger than the burst still passes when
        the device has been quiet for a burst's time)."""
        wait = self.wait(amount)
        if wait == 0.0:
            self._tokens -= min(amount, self.capacity)
        return wait

    def wait(self, amount: float = 1.0) -> float:
        """The seconds until ``amount`` tokens would be there (0.0: they are now), taking nothing; an amount above
        the capacity needs a full bucket, as with :meth:`take`."""
        need = min(amount, self.capacity)
        tokens = self._refill()
        return 0.0 if tokens >= need else (need - tokens) / self.rate

    def give(self, amount: float) -> None:
        """Put back ``amount`` tokens taken for something that did not happen after all."""
        self._tokens = min(self.capacity, self._tokens + amount)

    def set_rate(self, rate: float, capacity: float) -> None:
        """New limits, keeping what is in the bucket (cut to the new capacity)."""
        self._refill()
        self.rate = rate
        self.capacity = capacity
        self._tokens = min(self._tokens, capacity)


__all__ = ["Clock", "TokenBucket"]
