"""The per-device limits on frames/s and bytes/s, each a token bucket.

A refused frame costs nothing, so a device over its limit is answered at once and no other device waits for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slimsplit.errors import RateLimited
from slimsplit.server.token_bucket import Clock, TokenBucket


@dataclass(frozen=True)
class Limits:
    """A device's effective limits (0 = none)."""

    frames_per_s: float = 0.0
    bytes_per_s: float = 0.0
    max_streams: int = 0


class RateLimiter:
    """The frames/s and bytes/s buckets of one device; ``burst_s`` seconds of each rate may come at once."""

    def __init__(self, limits: Limits, burst_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._burst_s = burst_s
        self.frames: TokenBucket | None = None
        self.bytes: TokenBucket | None = None
        self.limits = Limits()
        self.update(limits)

    def _bucket(self, old: TokenBucket | None, rate: float, floor: float) -> TokenBucket | None:
        if rate <= 0:
            return None
        capacity = max(rate * self._burst_s, floor)
        if old is None:
            return TokenBucket(rate, capacity, self._clock)
        old.set_rate(rate, capacity)
        return old

    def update(self, limits: Limits) -> None:
        """Apply new limits (a reloaded devices file); the buckets keep their fill."""
        self.limits = limits
        self.frames = self._bucket(self.frames, limits.frames_per_s, 1.0)
        self.bytes = self._bucket(self.bytes, limits.bytes_per_s, 1.0)

    def admit(self, device_id: str, nbytes: int) -> None:
        """Take one frame of ``nbytes``; :class:`RateLimited` with ``retry_after_s`` when over a limit (then
        nothing is taken from either bucket)."""
        frames, size = self.frames, self.bytes
        if frames is not None:
            wait = frames.take(1.0)
            if wait > 0:
                raise _limited(device_id, f"{frames.rate:g} frames/s", wait)
        if size is not None:
            wait = size.take(float(nbytes))
            if wait > 0:
                if frames is not None:
                    frames.give(1.0)
                raise _limited(device_id, f"{size.rate:g} bytes/s", wait)

    def admit_bytes(self, device_id: str, nbytes: int) -> None:
        """Take ``nbytes`` more of a frame already admitted (a plane of a plane-coded frame); :class:`RateLimited`
        when over the bytes limit."""
        if self.bytes is not None:
            wait = self.bytes.take(float(nbytes))
            if wait > 0:
                raise _limited(device_id, f"{self.bytes.rate:g} bytes/s", wait)


def _limited(device_id: str, limit: str, wait_s: float) -> RateLimited:
    ms = max(1, round(wait_s * 1000))
    return RateLimited(
        f"device {device_id!r} is over its limit of {limit}: retry in {ms} ms",
        device=device_id,
        retry_after_s=wait_s,
    )


__all__ = ["Limits", "RateLimiter"]
