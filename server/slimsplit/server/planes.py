"""Progressive transmission on the server: the open frames of one plane stream, assembled and served on time.

Transport-neutral (the gRPC adapter's ``PlaneStream`` drives it). Per frame::

    open(request, planes, budget)  ->  take(frame_id, unit) ...  ->  on_served(frame_id, planes_used, future)

A frame is served (its prefix of planes decoded, missing bits at their midpoint, and run through its mode's tail
like any frame) as soon as all its announced planes are there, or when its budget says it must: ``budget_s`` after
the open was received, less the time the mode's frames take to be served (:meth:`InferenceCore.serve_estimate_s`).
A frame with no plane 0 by then is answered ``DEADLINE_EXCEEDED``. A plane that comes after its frame was served
is discarded and counted (:attr:`PlaneFrames.late`), as is one for a frame that is not open; a bad unit fails its
frame (``INVALID_ARGUMENT`` naming the field) and the stream goes on.

``max_open`` bounds the frames open at once (an open beyond it is refused with ``RESOURCE_EXHAUSTED``); the ids of
the last ``4 x max_open`` served frames are remembered, to tell late planes from planes of frames never opened.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from slimsplit.codec import DecodeLimits
from slimsplit.codec.planes import PlaneAssembly, parse_plane_header
from slimsplit.errors import CodecError, DeadlineExceeded, InvalidFrame, Overloaded, SlimsplitError
from slimsplit.server.core import InferenceCore, InferRequest, InferResult

#: ``on_served(frame_id, planes_used, future)``: a frame was started (the future resolves to its result or error).
Served = Callable[[int, int, "asyncio.Future[InferResult]"], None]


@dataclass(frozen=True)
class PlaneOpenRequest:
    """A frame opened on a plane stream (mirrors ``slimsplit.v1.PlaneOpen``)."""

    request: InferRequest  # model, version, mode, frame id, top-k, protocol version; its features are not used
    planes: int  # planes the edge may send (1..the mode's bits)
    budget_s: float  # after the open's receipt, the reply must be handed to the transport (0 = no budget)


@dataclass(frozen=True)
class PlaneTaken:
    """What became of one unit: its plane index and size, whether it was discarded (late), and whether its frame
    now has every plane it announced (then the caller serves it, with :meth:`PlaneFrames.serve`, after its ack)."""

    frame_id: int
    plane: int
    nbytes: int
    late: bool
    complete: bool = False


@dataclass
class _Open:
    request: InferRequest
    planes: int
    assembly: PlaneAssembly
    received: float
    timeout: float | None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class PlaneFrames:
    """The open frames of one stream (see the module docstring). Use it on one event loop."""

    def __init__(self, core: InferenceCore, on_served: Served, *, max_open: int = 32) -> None:
        self.core = core
        self.on_served = on_served
        self.max_open = max_open
        self._open: dict[int, _Open] = {}
        self._served: OrderedDict[int, None] = OrderedDict()
        self.late = 0  # planes discarded: their frame was served already, or is not open
        self.planes_used = 0
        self.frames_served = 0

    @property
    def open_frames(self) -> int:
        return len(self._open)

    def open(self, opened: PlaneOpenRequest, *, received: float | None = None, timeout: float | None = None) -> None:
        """Open a frame (raises :class:`SlimsplitError`: unknown model/mode, planes out of range, an id already
        open, too many open). ``timeout``: seconds the call still has (the frame is never started after it)."""
        req = opened.request
        now = time.perf_counter() if received is None else received
        loaded, spec = self.core.resolve(req)
        if not 1 <= opened.planes <= spec.bits:
            raise InvalidFrame(
                f"planes must be 1..{spec.bits} for mode {spec.name}, got {opened.planes}",
                field="planes",
                value=opened.planes,
            )
        if req.frame_id in self._open:
            raise InvalidFrame(f"frame {req.frame_id} is open already", field="frame_id", value=req.frame_id)
        if len(self._open) >= self.max_open:
            raise Overloaded(
                f"{self.max_open} frames are open on this stream already (wait for their replies)",
                retry_after_s=0.01,
            )
        shape = loaded.manifest.feature.shape(spec.width)
        limits = DecodeLimits.for_shape(shape, (spec.bits,))
        frame = _Open(req, opened.planes, PlaneAssembly(limits, frame_id=req.frame_id, shape=shape), now, timeout)
        self._open[req.frame_id] = frame
        self._served.pop(req.frame_id, None)
        budget = opened.budget_s
        if timeout is not None:
            budget = min(budget, timeout) if budget > 0 else timeout
        if budget > 0:
            loop = asyncio.get_running_loop()
            fire_in = budget - self.core.serve_estimate_s(loaded, spec) - (time.perf_counter() - now)
            frame.timer = loop.call_later(max(0.0, fire_in), self._due, req.frame_id)

    def take(self, frame_id: int, unit: bytes) -> PlaneTaken:
        """One plane unit of frame ``frame_id``. A bad unit fails its frame: the error is raised (the frame is then
        closed; the caller answers it)."""
        frame = self._open.get(frame_id)
        if frame is None:
            self.late += 1
            try:
                plane = parse_plane_header(unit).plane
            except CodecError:
                plane = 0
            return PlaneTaken(frame_id, plane, len(unit), True)
        try:
            hd = frame.assembly.add(unit)
            if hd.plane >= frame.planes:
                raise InvalidFrame(
                    f"plane {hd.plane} is beyond the {frame.planes} planes the frame was opened with",
                    field="plane",
                    value=hd.plane,
                )
        except SlimsplitError:
            self._close(frame_id)
            raise
        return PlaneTaken(frame_id, hd.plane, len(unit), False, frame.assembly.received >= frame.planes)

    def abandon(self, frame_id: int) -> bool:
        """Close an open frame without serving it (the caller answers it); ``False`` when it was not open."""
        return self._close(frame_id) is not None

    def is_open(self, frame_id: int) -> bool:
        return frame_id in self._open

    def _due(self, frame_id: int) -> None:
        if frame_id in self._open:
            self.serve(frame_id)

    def _close(self, frame_id: int) -> _Open | None:
        frame = self._open.pop(frame_id, None)
        if frame is not None:
            if frame.timer is not None:
                frame.timer.cancel()
            self._served[frame_id] = None
            while len(self._served) > 4 * self.max_open:
                self._served.popitem(last=False)
        return frame

    def serve(self, frame_id: int) -> None:
        """Serve an open frame now with the planes it has (nothing when it is not open)."""
        frame = self._close(frame_id)
        if frame is None:
            return
        used = frame.assembly.prefix
        if used == 0:
            fut: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
            fut.set_exception(DeadlineExceeded(f"no plane 0 of frame {frame_id} arrived within its budget"))
            self.on_served(frame_id, 0, fut)
            return
        timeout = frame.timeout
        try:
            x = frame.assembly.decode()
        except SlimsplitError as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            self.on_served(frame_id, used, fut)
            return
        self.planes_used += used
        self.frames_served += 1
        started = self.core.start_decoded(
            frame.request, x, payload_bytes=frame.assembly.bytes, timeout=timeout, received=frame.received
        )
        self.on_served(frame_id, used, started)

    def flush(self) -> None:
        """Serve every open frame now with the planes it has (the client sent its last message)."""
        for frame_id in list(self._open):
            self.serve(frame_id)

    def close(self) -> list[int]:
        """End every open frame without serving it (the stream is going away); their ids."""
        ids = list(self._open)
        for frame_id in ids:
            self._close(frame_id)
        return ids


__all__ = ["PlaneFrames", "PlaneOpenRequest", "PlaneTaken", "Served"]
