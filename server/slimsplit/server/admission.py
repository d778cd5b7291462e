"""Fair shares of the server between clients: at most ``limit`` frames of one client are being served at once.

A client is a device when devices authenticate (its id), else a connection (gRPC's peer string, address and port:
clients behind one carrier NAT share an address, so an address is no client). A stream whose client is at its limit
stops reading until one of that client's frames is answered (HTTP/2 flow control then holds the client back); a unary
call over the limit is refused at once with ``Overloaded`` (RESOURCE_EXHAUSTED) and a retry hint. Either way a client
that floods the server queues only ``limit`` frames of work, and every other client still finds the server's queues
and tails free for its own frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from slimsplit.errors import Overloaded

#: The retry hint of a refused unary call: about one frame's time on a busy server.
RETRY_AFTER_S = 0.01


class Share:
    """One client's frames being served, and the streams waiting for room. Not thread-safe: the event loop's."""

    __slots__ = ("_owner", "_waiters", "in_flight", "key", "refs")

    def __init__(self, owner: Shares, key: str) -> None:
        self._owner = owner
        self.key = key
        self.in_flight = 0
        self.refs = 0  # open streams and unary calls of this client
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.in_flight < self._owner.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def take(self) -> None:
        """Room for one more frame, waiting (first come, first served) while the client is at its limit."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # give() hands its slot over: in_flight already counts this frame
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # the slot arrived as the wait was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # already taken off by give()
                    self._waiters.remove(waiter)
                self._owner._forget(self)
            raise

    def give(self) -> None:
        """One of the client's frames is answered."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
        self._owner._forget(self)

    def refuse(self) -> Overloaded:
        return Overloaded(
            f"this client already has {self.in_flight} frames being served, its share of the server "
            f"(grpc.client_max_in_flight = {self._owner.limit}): retry later",
            retry_after_s=RETRY_AFTER_S,
        )


class Shares:
    """The clients' shares (see the module docstring); a client's entry exists while it has a call open."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a share needs limit >= 1, got {limit}")
        self.limit = limit
        self._shares: dict[str, Share] = {}

    def __len__(self) -> int:
        return len(self._shares)

    def open(self, key: str) -> Share:
        """The share of client ``key`` for a call; :meth:`close` it when the call ends."""
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = Share(self, key)
        share.refs += 1
        return share

    def close(self, share: Share) -> None:
        share.refs -= 1
        self._forget(share)

    def _forget(self, share: Share) -> None:
        if share.refs <= 0 and share.in_flight <= 0 and not share._waiters:
            self._shares.pop(share.key, None)


__all__ = ["RETRY_AFTER_S", "Share", "Shares"]
