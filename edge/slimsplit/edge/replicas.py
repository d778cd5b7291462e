"""Frames over several replicas of one service: :class:`ReplicaTransport`, a transport over a few frame transports.

The channel balances calls over the replicas (gRPC's ``round_robin``, :mod:`slimsplit.edge.channel`), but a stream is
one call: every frame on it goes to the replica it was opened on. So a run over a target that names several replicas
keeps several streams open (``ClientConfig.stream_count``; round robin places each new stream on the next ready
replica) and hands each frame to the next stream that is ready, skipping one that is down and waiting to reconnect.

A replica that dies breaks its stream: its frames in flight fail with ``UNAVAILABLE``. Frames are idempotent (the
same frame id, and the server answers by frame id), so such a frame is **re-sent once** on another stream that is
ready, when its give-up time still leaves :data:`MIN_RESEND_S`; when no stream is ready yet it waits for one, at
most until that time. A frame that cannot be re-sent (no time left, no stream ready in time, or its second attempt
failed too) is reported with the reason, its first failure named. Its callback is called exactly once whatever
happens: a reply that comes on a broken stream after its frame moved on is one of that stream's stray replies
(:class:`~slimsplit.edge.transport.InFlight`), never a second answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.edge.status import restated, status_of
from slimsplit.edge.transport import Done, FrameTransport, Outcome, wait_set
from slimsplit.errors import SlimsplitError, Unavailable
from slimsplit.v1 import slimsplit_pb2 as pb

_perf = time.perf_counter

MIN_RESEND_S = 0.01
"""The least time before its give-up time a frame must have left to be re-sent on another replica."""
_POLL_S = 0.01  # how often a re-send waiting for a ready transport looks again (when one cannot say when)
RESENDABLE = frozenset({"UNAVAILABLE"})
"""The statuses after which a frame is re-sent: its stream broke (the replica went away) or the replica said it is
unavailable; a replica's answer (an error for the frame itself) is never re-sent."""


@dataclass(slots=True)
class _Frame:
    frame: pb.FeatureFrame
    done: Done
    give_up_at: float | None  # time.perf_counter() instant; None: no deadline
    resent: bool = False


class ReplicaTransport(FrameTransport):
    """Frames over ``transports`` (streams on one balanced channel, see the module docstring): each frame goes to
    the next one that is :attr:`~FrameTransport.ready`, a frame whose stream broke is re-sent once on another."""

    def __init__(self, transports: Sequence[FrameTransport]) -> None:
        if not transports:
            raise ValueError("a replica transport needs at least one transport")
        self._transports = tuple(transports)
        self._next = 0
        self._frames: dict[int, _Frame] = {}
        self._waiting: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._resent = 0
        self.resent_ok = 0
        """Re-sent frames that were answered."""

    # ----------------------------------------------------------------------------------------------- state
    @property
    def transports(self) -> tuple[FrameTransport, ...]:
        return self._transports

    @property
    def in_flight(self) -> int:
        return len(self._frames)

    @property
    def resent(self) -> int:
        """Frames re-sent on another replica after their stream broke (``resent_ok``: those then answered)."""
        return self._resent

    @property
    def reconnects(self) -> int:
        return sum(t.reconnects for t in self._transports)

    @property
    def late_replies(self) -> int:
        return sum(t.late_replies for t in self._transports)

    @property
    def stray_replies(self) -> int:
        return sum(t.stray_replies for t in self._transports)

    @property
    def ready(self) -> bool:
        return any(t.ready for t in self._transports)

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until one of the transports is ready (at most ``timeout_s``); whether one is."""
        end = None if timeout_s is None else _perf() + timeout_s
        while not self.ready and not self._closed:
            left = None if end is None else end - _perf()
            if left is not None and left <= 0:
                break
            waits = [asyncio.ensure_future(t.wait_ready(left)) for t in self._transports]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            if not self.ready:  # a transport that cannot wait said no at once: look again a little later
                await asyncio.sleep(_POLL_S if left is None else min(_POLL_S, max(left, 0.0)))
        return self.ready

    def _pick(self, avoid: int | None = None) -> int | None:
        """The index of the next ready transport (round robin), other than ``avoid`` when there is another."""
        n = len(self._transports)
        fallback = None
        for step in range(n):
            i = (self._next + step) % n
            if self._transports[i].ready:
                if i == avoid and n > 1:
                    fallback = i
                    continue
                self._next = (i + 1) % n
                return i
        return fallback

    # ----------------------------------------------------------------------------------------------- sending
    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        if self._closed:
            raise Unavailable("the replica transport is closed")
        fid = frame.frame_id
        if fid in self._frames:
            raise ValueError(f"frame id {fid} is already in flight")
        index = self._pick()
        if index is None:  # nothing ready: the first transport reports it (at once) as it would alone
            index = self._next
        give_up_at = None if deadline_s is None else _perf() + deadline_s
        item = _Frame(frame, done, give_up_at)
        self._frames[fid] = item
        self._idle.clear()
        try:
            await self._send(item, index, deadline_s)
        except SlimsplitError:
            self._frames.pop(fid, None)
            self._settle()
            raise

    async def _send(self, item: _Frame, index: int, deadline_s: float | None) -> None:
        await self._transports[index].submit(item.frame, deadline_s, lambda o: self._outcome(item, index, o))

    def _outcome(self, item: _Frame, index: int, outcome: Outcome) -> None:
        fid = item.frame.frame_id
        if self._frames.get(fid) is not item:
            return  # reported already (cannot happen: each transport reports a frame once; kept as a guard)
        error = outcome.error
        if error is not None and not item.resent and not self._closed and status_of(error) in RESENDABLE:
            left = None if item.give_up_at is None else item.give_up_at - _perf()
            if left is None or left >= MIN_RESEND_S:
                item.resent = True
                task = asyncio.get_running_loop().create_task(self._resend(item, index, left, outcome))
                self._waiting.add(task)
                task.add_done_callback(self._waiting.discard)
                return
            outcome = _with(outcome, f"{error}; not re-sent: {max(left, 0.0) * 1e3:.0f} ms left before its deadline")
        elif error is not None and item.resent:
            outcome = _with(outcome, f"re-sent after its stream broke, and failed again: {error}")
        elif item.resent:
            self.resent_ok += 1
        self._report(item, outcome)

    async def _resend(self, item: _Frame, failed: int, left: float | None, first: Outcome) -> None:
        """Re-send ``item`` on a ready transport other than ``failed`` (waiting at most ``left`` s for one)."""
        index = self._pick(avoid=failed)
        if index is None:
            await self.wait_ready(left)
            index = self._pick(avoid=failed)
        remaining = None if item.give_up_at is None else item.give_up_at - _perf()
        if index is None or self._closed or (remaining is not None and remaining < MIN_RESEND_S):
            why = "the run ended" if self._closed else "no replica was ready again before its deadline"
            self._report(item, _with(first, f"{first.error}; not re-sent: {why}"))
            return
        self._resent += 1
        if remaining is not None and item.frame.deadline_ms:
            item.frame.deadline_ms = max(1, math.ceil(remaining * 1e3))  # the server never starts it after that
        try:
            await self._send(item, index, remaining)
        except SlimsplitError as exc:
            self._report(item, _with(first, f"{first.error}; not re-sent: {exc}"))

    def _report(self, item: _Frame, outcome: Outcome) -> None:
        if self._frames.pop(item.frame.frame_id, None) is None:
            return
        self._settle()
        item.done(outcome)

    def _settle(self) -> None:
        if not self._frames:
            self._idle.set()

    # ----------------------------------------------------------------------------------------------- closing
    async def drain(self, timeout_s: float | None = None) -> bool:
        return await wait_set(self._idle, timeout_s)

    async def aclose(self) -> None:
        """Close every transport (each lets its frames in flight be answered for a while); a frame still waiting to
        be re-sent is reported ``CANCELLED``. Idempotent."""
        if self._closed:
            return
        self._closed = True  # from now on a failed frame is reported, not re-sent
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(*self._waiting, return_exceptions=True)
        await asyncio.gather(*(t.aclose() for t in self._transports), return_exceptions=True)
        now = _perf()
        for item in list(self._frames.values()):  # a frame whose re-send was waiting: never leave one unreported
            error = SlimsplitError("the client closed the transport before the frame was re-sent", status="CANCELLED")
            self._report(item, Outcome(item.frame.frame_id, None, error, now, now, 0))


def _with(outcome: Outcome, message: str) -> Outcome:
    """``outcome`` with its error restated as ``message``."""
    assert outcome.error is not None
    return Outcome(
        outcome.frame_id,
        None,
        restated(outcome.error, message),
        outcome.sent_at,
        outcome.received_at,
        outcome.attempt,
    )


__all__ = ["MIN_RESEND_S", "RESENDABLE", "ReplicaTransport"]
