"""Admission and fair shares: how many frames the server serves at once, and whose come first when it is full.

Two bounds hold for frames being served (decoded, queued for a tail, in a tail):

* at most ``client_limit`` of one client, over all its calls. A client is a device when devices authenticate (its
  id), else a connection (gRPC's peer string: clients behind one carrier NAT share an address, so an address is no
  client);
* at most ``total_limit`` in all. Beyond it frames wait for a slot, and a freed slot goes to the waiting client
  with the fewest frames being served (on a tie, clients take turns, longest waiting first): max-min fairness, so
  a client that asks for less than its share (a camera at 10 frames/s) is served ahead of the ones that flood.

The total limit adapts (:class:`AdaptiveLimit`, the idea of adaptive concurrency limiters): while the event loop
runs late (a timer fires more than ``target_lag_s`` after it is due: the loop is what every frame waits for, reading,
answering, writing), the limit shrinks by a tenth per sample, down to ``min_limit``; while it is on time it grows by
one (only while more than one client has calls open: a client alone may load the loop as it likes). Under a flood
the server so sheds the flood's frames instead of its own latency, and with max-min fairness the
slots it keeps go to the clients that ask for least: a flood cannot take the event loop from a camera.

A limit on frames at once does not bound the loop's work when frames are cheap (a slot freed after 0.1 ms is taken
again at once: measured, a 200-stream flood of cheap frames kept the loop 40 ms late with the limit at 4, and the
camera's frames waited 60-90 ms to be read). So while the loop runs late the limit also paces: at most
:attr:`AdaptiveLimit.rate` frames per second are admitted (a token bucket), starting a fifth below the rate admitted
when the lag began, a fifth lower again per late sample and 2 % higher per sample on time, unpaced again once the
frames asked for stay well below it for a second. A frame waiting for a token holds its stream's reader, so that
stream reads nothing more: its client's further frames stay in HTTP/2 flow control (the kernel and gRPC core),
costing the loop nothing.

A stream waits for its slot after reading the frame and reads no further meanwhile (HTTP/2 flow control then holds
its client back); a unary call at its client's limit is refused at once with ``Overloaded`` (RESOURCE_EXHAUSTED) and
a retry hint, and otherwise waits for a slot like a stream, within its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from slimsplit.errors import Overloaded
from slimsplit.server.token_bucket import TokenBucket

#: Samples in a row (on time, asking well below the pace) after which the pace is lifted.
UNPACE_AFTER = 50

#: The retry hint of a refused unary call: about one frame's time on a busy server.
RETRY_AFTER_S = 0.01


class Share:
    """One client's frames being served and its frames waiting for a slot. The event loop's: not thread-safe."""

    __slots__ = ("_waiters", "in_flight", "key", "refs")

    def __init__(self, key: str) -> None:
        self.key = key
        self.in_flight = 0
        self.refs = 0  # open calls of this client
        self._waiters: deque[asyncio.Future[None]] = deque()


class AdaptiveLimit:
    """The total limit between ``min_limit`` and ``max_limit``, adjusted from the event loop's lag (how late a timer
    of ``interval_s`` fires): above ``target_lag_s`` it shrinks by a tenth, below it grows by one, once per sample.
    The lag is what every frame waits for before and after the server's own timing sees it (reading the message,
    running its callbacks, writing the reply), so it is the measure of an overloaded loop."""

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 4,
        target_lag_s: float = 0.005,
        interval_s: float = 0.02,
        min_rate: float = 50.0,
    ) -> None:
        self.max_limit = max_limit
        self.min_limit = min(min_limit, max_limit)
        self.target_lag_s = target_lag_s
        self.interval_s = interval_s
        self.limit = max_limit
        self.lag_s = 0.0
        self.min_rate = min_rate
        self.rate: float | None = None  # frames/s admitted at most while pacing; None: not pacing
        self.granted = 0  # frames admitted since the last sample (Shares counts them)
        self.admitted_rate = 0.0  # frames/s admitted, a moving average over the samples
        self._slack = 0  # samples in a row on time with the pace well above the frames asked for

    def observe(self, lag_s: float, dt_s: float | None = None) -> bool:
        """One lag sample (``dt_s``: seconds since the previous one); True when the limit or the rate changed."""
        self.lag_s = lag_s
        dt = max(dt_s if dt_s is not None else self.interval_s, 1e-3)
        measured = self.granted / dt
        self.granted = 0
        self.admitted_rate = 0.7 * self.admitted_rate + 0.3 * measured
        old = (self.limit, self.rate)
        if lag_s > self.target_lag_s:
            self.limit = max(self.min_limit, int(self.limit * 0.9))
            start = self.rate if self.rate is not None else max(self.admitted_rate, measured)
            self.rate = max(self.min_rate, start * 0.8)
            self._slack = 0
        else:
            self.limit = min(self.max_limit, self.limit + 1)
            if self.rate is not None:
                self.rate *= 1.02
                slack = self.rate > 2 * self.admitted_rate + self.min_rate
                self._slack = self._slack + 1 if slack else 0
                if self._slack >= UNPACE_AFTER:
                    self.rate = None  # the frames asked for stayed well below the pace: unpaced again
        return (self.limit, self.rate) != old

    async def watch(self, shares: Shares) -> None:
        """Sample the running loop's lag forever (cancel to stop), feeding ``shares``."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            lag = max(0.0, now - due)
            # one client alone has nobody to be protected from: it may load the loop as it likes
            if self.observe(lag if len(shares) > 1 else 0.0, now - last):
                shares._dispatch()
            last = now


class Shares:
    """The server's slots and the clients' shares of them (see the module docstring)."""

    def __init__(
        self, client_limit: int, total_limit: int | None = None, *, adaptive: AdaptiveLimit | None = None
    ) -> None:
        if client_limit < 1 or (total_limit is not None and total_limit < 1):
            raise ValueError(f"limits must be >= 1, got {client_limit} and {total_limit}")
        self.limit = client_limit
        self.adaptive = adaptive
        self._fixed_total = total_limit if total_limit is not None else 1 << 30
        self.in_flight = 0
        self._shares: dict[str, Share] = {}
        self._waiting: dict[Share, None] = {}  # clients with a frame waiting, in the order they began to wait
        self._pace: TokenBucket | None = None  # the pacing bucket (see the module docstring) while pacing
        self._wakeup: asyncio.TimerHandle | None = None  # a dispatch due when the next token comes

    def __len__(self) -> int:
        return len(self._shares)

    @property
    def total_limit(self) -> int:
        """Frames being served at once in all, now."""
        return self.adaptive.limit if self.adaptive is not None else self._fixed_total

    # ------------------------------------------------------------------------------------------ calls
    def open(self, key: str) -> Share:
        """The share of client ``key`` for a call; :meth:`close` it when the call ends."""
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = Share(key)
        share.refs += 1
        return share

    def close(self, share: Share) -> None:
        share.refs -= 1
        self._forget(share)

    def _forget(self, share: Share) -> None:
        if share.refs <= 0 and share.in_flight <= 0 and not share._waiters:
            self._shares.pop(share.key, None)

    # ------------------------------------------------------------------------------------------ slots
    def _free_for(self, share: Share) -> bool:
        return (
            share.in_flight < self.limit
            and self.in_flight < self.total_limit
            and not self._waiting
            and self._token_wait() <= 0.0
        )

    def _token_wait(self) -> float:
        """Seconds until the pace admits a frame (0: now, or not pacing); the pacing bucket follows the adaptive
        limit's rate, holding bursts of one sampling interval's frames."""
        adaptive = self.adaptive
        if adaptive is None or adaptive.rate is None:
            self._pace = None
            return 0.0
        rate = adaptive.rate
        burst = max(1.0, rate * adaptive.interval_s)
        if self._pace is None:
            self._pace = TokenBucket(rate, burst)
        elif self._pace.rate != rate:
            self._pace.set_rate(rate, burst)
        return self._pace.wait()

    def _grant(self, share: Share) -> None:
        share.in_flight += 1
        self.in_flight += 1
        if self.adaptive is not None:
            self.adaptive.granted += 1
        if self._pace is not None:
            self._pace.take()

    def at_limit(self, share: Share) -> bool:
        """Whether the client already has its whole share being served (or waiting)."""
        return share.in_flight + len(share._waiters) >= self.limit

    def refuse(self, share: Share) -> Overloaded:
        return Overloaded(
            f"this client already has {share.in_flight} frames being served, its share of the server "
            f"(grpc.client_max_in_flight = {self.limit}): retry later",
            retry_after_s=RETRY_AFTER_S,
        )

    def try_take(self, share: Share) -> bool:
        """A slot for one frame of ``share``'s client if one is free now (nobody waiting for it)."""
        if self._free_for(share):
            self._grant(share)
            return True
        return False

    async def take(self, share: Share) -> None:
        """A slot for one frame of ``share``'s client, waiting (see the module docstring) while there is none."""
        if self._free_for(share):
            self._grant(share)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        share._waiters.append(waiter)
        self._waiting.setdefault(share, None)
        self._dispatch()  # a slot may be free for this client although others wait (they are at their limit)
        try:
            await waiter  # _dispatch() granted the slot: the counts include this frame already
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(share)  # the slot came as the wait was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    share._waiters.remove(waiter)
                if not share._waiters:
                    self._waiting.pop(share, None)
                self._forget(share)
            raise

    def give(self, share: Share) -> None:
        """One of ``share``'s frames is answered: its slot goes to the next frame (see the module docstring)."""
        share.in_flight -= 1
        self.in_flight -= 1
        self._dispatch()
        self._forget(share)

    def _dispatch(self) -> None:
        """Hand free slots to waiting frames: the client with the fewest being served first."""
        while self.in_flight < self.total_limit and self._waiting:
            wait = self._token_wait()
            if wait > 0.0:
                self._wake_in(wait)
                return
            best: Share | None = None
            for share in self._waiting:
                if share.in_flight < self.limit and (best is None or share.in_flight < best.in_flight):
                    best = share
            if best is None:
                return  # every waiting client is at its own limit
            waiter = best._waiters.popleft()
            del self._waiting[best]
            if best._waiters:  # to the back of the line: on a tie, a client with many waiting frames takes turns
                self._waiting[best] = None
            if waiter.done():  # cancelled meanwhile
                continue
            self._grant(best)
            waiter.set_result(None)

    def _wake_in(self, seconds: float) -> None:
        """Dispatch again in ``seconds`` (when the next token comes), once."""
        if self._wakeup is not None and not self._wakeup.cancelled():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: nothing waits on one either
            return

        def wake() -> None:
            self._wakeup = None
            self._dispatch()

        self._wakeup = loop.call_later(seconds, wake)


__all__ = ["RETRY_AFTER_S", "AdaptiveLimit", "Share", "Shares"]
