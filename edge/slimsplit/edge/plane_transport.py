"""The plane transport: frames as bit planes over ``PlaneStream``, never more in the link than can arrive in time.

A frame submitted here carries plane units laid end to end in ``features`` (``EncoderRuntime(planes=True)``; the
units' frame id is set to the frame's). The transport opens the frame (``PlaneOpen``: its mode, how many planes,
and its budget: the time left to its deadline less the round trip), then hands its planes to the link one by one
as :class:`~slimsplit.control.planes.PlaneSender` allows: a plane goes out only while the window of
:class:`~slimsplit.control.planes.DeliveryWindow` (sized from the server's acknowledgements, as BBR sizes its
congestion window) has room, and only while it can still reach the server before the server must use it (the
frame's deadline less half the round trip and the server's time for the mode); the frame's remaining planes are
withheld from then on. Planes of several frames go earliest deadline first, so a new frame never waits behind a
stale one's planes. The server's acknowledgements free the window; its prediction says how many planes it used
(``Prediction.planes_used``).

Everything else (reconnection, deadlines, refusals, untrusted replies) is :class:`StreamTransport`'s.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import grpc

from slimsplit.codec.planes import split_units
from slimsplit.control.planes import DeliveryWindow, PlaneSender, Verdict, WindowConfig
from slimsplit.edge.config import ReconnectPolicy
from slimsplit.edge.grpc_transport import StreamTransport, _call_error
from slimsplit.errors import SlimsplitError
from slimsplit.v1 import slimsplit_pb2 as pb

_perf = time.perf_counter
_FRAME_ID = struct.Struct(">I")
_FRAME_ID_AT = 4  # byte offset of a plane unit's frame id
_SERVE_ALPHA = 0.2  # weight of a new server-time sample in its moving average


@dataclass(slots=True)
class _Job:
    frame_id: int
    units: list[bytes]
    deadline_at: float | None  # perf_counter seconds the answer is due back (None: no deadline)
    next: int = 0  # the next plane to send


class PlaneTransport(StreamTransport):
    """A reconnecting ``PlaneStream`` with a deadline-aware plane sender (see the module docstring).

    ``rtt_s``: the round trip measured before the run (until acknowledgements measure it); ``serve_s``: the
    server's time for a frame until its replies say (queue + tail); ``margin_s``: kept free before the deadline
    (for what the estimates miss: the server's event loop, the reply's write)."""

    def __init__(
        self,
        stub: Any,
        policy: ReconnectPolicy,
        *,
        window: WindowConfig | None = None,
        rtt_s: float = 0.0,
        serve_s: float = 0.002,
        margin_s: float = 0.020,
        **kw: Any,
    ) -> None:
        super().__init__(stub, policy, **kw)
        self.window = DeliveryWindow(window, rtt_s=rtt_s)
        self.sender = PlaneSender(self.window, margin_s=margin_s)
        self.serve_s = serve_s
        self._jobs: dict[int, _Job] = {}
        self._pumping = False
        self._again = False
        self._pumps: set[asyncio.Task[None]] = set()
        self.planes_sent = 0
        self.planes_withheld = 0
        self.planes_late = 0  # acknowledged as discarded by the server (they came after it answered)

    def _new_call(self) -> Any:
        return self._stub.PlaneStream(wait_for_ready=False)

    async def _send(self, call: Any, frame: pb.FeatureFrame, deadline_s: float | None) -> None:
        fid = frame.frame_id
        try:
            units = split_units(frame.features)
        except SlimsplitError as exc:
            self._frames.answer(fid, _perf(), None, exc)
            return
        stamp = _FRAME_ID.pack(fid & 0xFFFFFFFF)
        units = [u[:_FRAME_ID_AT] + stamp + u[_FRAME_ID_AT + 4 :] for u in units]
        now = _perf()
        deadline_at = None if deadline_s is None else now + deadline_s
        budget_ms = 0 if deadline_s is None else max(1, int(self.sender.budget_s(deadline_s, now) * 1e3))
        opened = pb.PlaneOpen(
            protocol_version=frame.protocol_version,
            frame_id=fid,
            model=frame.model,
            model_version=frame.model_version,
            mode=frame.mode,
            planes=len(units),
            budget_ms=budget_ms,
            top_k=frame.top_k,
            client_send_unix_ns=frame.client_send_unix_ns,
        )
        async with self._write_lock:
            await call.write(pb.PlaneMessage(open=opened))
        self._jobs[fid] = _Job(fid, units, deadline_at)
        await self._pump(call)

    async def _pump(self, call: Any) -> None:
        """Send what the sender allows, earliest deadline first (one pump at a time; a request during one runs it
        again after)."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                await self._pump_once(call)
                if not self._again:
                    return
        finally:
            self._pumping = False

    async def _pump_once(self, call: Any) -> None:
        sender = self.sender
        jobs = sorted(self._jobs.values(), key=lambda j: (j.deadline_at is None, j.deadline_at or 0.0))
        for job in jobs:
            while job.next < len(job.units):
                unit = job.units[job.next]
                now = _perf()
                due = math.inf if job.deadline_at is None else sender.due_s(job.deadline_at, self.serve_s)
                verdict = sender.decide(len(unit), now, due, first=job.next == 0)
                if verdict is Verdict.WAIT:
                    return  # the window is full: an acknowledgement pumps again
                if verdict is Verdict.DROP:
                    rest = job.units[job.next :]
                    for u in rest:
                        sender.withheld(len(u))
                    self.planes_withheld += len(rest)
                    job.next = len(job.units)
                    break
                sender.sent((job.frame_id, job.next), len(unit), now)
                job.next += 1
                self.planes_sent += 1
                async with self._write_lock:
                    await call.write(pb.PlaneMessage(plane=pb.PlaneData(frame_id=job.frame_id, unit=unit)))
            if job.next >= len(job.units):
                self._jobs.pop(job.frame_id, None)

    def _handle(self, reply: Any, received: float) -> None:
        kind = reply.WhichOneof("kind")
        if kind == "ack":
            ack = reply.ack
            self.window.acked((ack.frame_id, ack.plane), received)
            if ack.late:
                self.planes_late += 1
            call = self._call
            if call is not None and (self._jobs or self._pumping):
                task = asyncio.get_running_loop().create_task(self._pump_safely(call))
                self._pumps.add(task)
                task.add_done_callback(self._pumps.discard)
            return
        if kind == "prediction":
            timing = reply.prediction.timing
            sample = (timing.queue_ms + timing.tail_ms) / 1e3
            self.serve_s += _SERVE_ALPHA * (sample - self.serve_s)
            self._finish(reply.prediction.frame_id)
        elif kind == "error":
            self._finish(reply.error.frame_id)
        super()._handle(reply, received)

    def _finish(self, frame_id: int) -> None:
        """The server answered: the frame's planes not sent yet are withheld."""
        job = self._jobs.pop(frame_id, None)
        if job is not None and job.next < len(job.units):
            for u in job.units[job.next :]:
                self.sender.withheld(len(u))
            self.planes_withheld += len(job.units) - job.next

    async def _pump_safely(self, call: Any) -> None:
        try:
            await self._pump(call)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:  # the call broke while writing
            self._broken(call, _call_error(exc))

    def _broken(self, call: Any, error: SlimsplitError) -> None:
        if call is self._call:
            self.window.forget_all()  # their acknowledgements will never come
            self._jobs.clear()
        super()._broken(call, error)


__all__ = ["PlaneTransport"]
