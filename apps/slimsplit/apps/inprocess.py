"""The edge's transport over a server core in the same process: no gRPC, no sockets, the same answers.

:class:`InProcessConnection` is a :class:`~slimsplit.edge.transport.Connection` to an
:class:`~slimsplit.server.core.InferenceCore` running on the caller's event loop. A frame goes through the same
conversions the gRPC service applies (``frame_to_request``, ``result_to_prediction``, ``describe_response``) and its
error through the same status mapping (``FrameError`` there, ``slimsplit.edge.status`` back), so predictions, error
classes, statuses and messages are what a client of a gRPC server on loopback gets. It behaves as ``InferStream``
does: frames are served concurrently, the deadline is the edge's own timer (a later answer is a late reply), and
``unary`` makes no difference. Tests and the load tester use it to run the edge pipeline against a core without a
network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from slimsplit.edge.config import ClientConfig
from slimsplit.edge.status import error_from_frame_error
from slimsplit.edge.transport import Connection, Done, FrameTransport, InFlight
from slimsplit.errors import ConfigError, SlimsplitError, Unavailable
from slimsplit.server.config import BackendConfig, BatchingConfig, ServerConfig
from slimsplit.server.core import InferenceCore, InferResult
from slimsplit.server.grpc_service import describe_response, frame_to_request, result_to_prediction
from slimsplit.server.status import frame_error
from slimsplit.v1 import slimsplit_pb2 as pb

#: What an in-process connection reports as its address.
IN_PROCESS_TARGET = "in-process"
_perf = time.perf_counter


class InProcessTransport(FrameTransport):
    """Frames straight into ``core.start``; each outcome comes back on a later turn of the event loop."""

    def __init__(self, core: InferenceCore) -> None:
        self._core = core
        self._frames = InFlight()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._frames)

    @property
    def late_replies(self) -> int:
        return self._frames.late_replies

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        if self._closed:
            raise Unavailable("the in-process transport is closed")
        frame.client_send_unix_ns = time.time_ns()
        self._frames.add(frame.frame_id, 1, done, deadline_s)
        received = _perf()
        fut = self._core.start(frame_to_request(frame), received=received)
        # a done future (a frame served inline, or refused) still calls back on the next turn of the loop
        fut.add_done_callback(partial(self._answered, frame.frame_id, received))

    def _answered(self, frame_id: int, received: float, fut: asyncio.Future[InferResult]) -> None:
        now = _perf()
        if fut.cancelled():
            self._frames.answer(frame_id, now, None, Unavailable("the core stopped serving the frame"))
            return
        exc = fut.exception()
        if exc is not None:
            # the wire's mapping both ways: the class, status and (bounded) message a gRPC client would get
            error: SlimsplitError = error_from_frame_error(frame_error(frame_id, exc), frame_id=frame_id)
            self._frames.answer(frame_id, now, None, error)
            return
        prediction = result_to_prediction(fut.result(), (now - received) * 1e3)
        self._frames.answer(frame_id, now, prediction, None)

    async def drain(self, timeout_s: float | None = None) -> bool:
        return await self._frames.wait_idle(timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the frames in flight; what is left is reported ``CANCELLED``."""
        if self._closed:
            return
        self._closed = True
        if not await self._frames.wait_idle(timeout_s):
            cancelled = SlimsplitError("the client closed the transport before every reply came", status="CANCELLED")
            self._frames.fail_all(cancelled)


class InProcessConnection(Connection):
    """A connection to ``core`` (which must run on the event loop the connection is used on)."""

    def __init__(self, core: InferenceCore, config: ClientConfig | None = None, target: str | None = None) -> None:
        super().__init__(config or ClientConfig(), target or IN_PROCESS_TARGET)
        self.core = core

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Nothing to wait for: the core is here (one that stopped refuses each frame with Unavailable)."""

    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        try:
            return describe_response(self.core, model)
        except SlimsplitError as exc:
            raise error_from_frame_error(frame_error(0, exc), target=self.target) from None

    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        if planes:
            raise ConfigError("the in-process connection carries whole frames only: planes need a gRPC server")
        return InProcessTransport(self.core)


def start_core(bundle: Path, *, backend: str = "onnxruntime", max_batch_size: int = 8) -> InferenceCore:
    """An inference core serving ``bundle`` on ``backend`` (blocking while it loads the tails)."""
    config = ServerConfig(
        models=(bundle,),
        batching=BatchingConfig(max_batch_size=max_batch_size),
        backend=BackendConfig(name=backend),
    )
    return InferenceCore.from_config(config)


def connector(core: InferenceCore) -> Callable[[ClientConfig, str], InProcessConnection]:
    """An ``EdgeRun.connect`` that talks to ``core`` whatever address it is given."""

    def connect(config: ClientConfig, target: str) -> InProcessConnection:
        return InProcessConnection(core, config)

    return connect


__all__ = ["IN_PROCESS_TARGET", "InProcessConnection", "InProcessTransport", "connector", "start_core"]
