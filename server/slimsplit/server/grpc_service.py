"""The gRPC adapter: ``slimsplit.v1.SplitInference`` over :class:`~slimsplit.server.core.InferenceCore`.

Wire <-> core conversions live here and nowhere else; status codes come from :mod:`slimsplit.server.status`.

``InferStream`` reads frames while earlier ones are being served, up to ``stream_max_in_flight`` frames read but
not yet answered; then it stops reading and HTTP/2 flow control slows the client down (a client that does not read
its replies is slowed down the same way). Every frame read is answered, with a Prediction or a FrameError carrying
its frame id; the stream itself only fails for transport reasons. When the server shuts down, a stream stops
reading, answers the frames it already read, and ends with UNAVAILABLE: frames the client sent after that were not
accepted and should be sent again (elsewhere). A client that goes away cancels the handler, which cancels its
reader and frame tasks.

With device authentication on (:mod:`slimsplit.server.security`), every frame is first checked against its
device's allowed models and rate limits: a refused frame is answered at once with its error (``PERMISSION_DENIED``,
``RESOURCE_EXHAUSTED`` with ``retry_after_ms``) and costs the server nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from typing import Any, Final

import grpc
import grpc.aio

from slimsplit.bundle import Manifest
from slimsplit.errors import SlimsplitError, Unavailable
from slimsplit.protocol import ERROR_CLASS_KEY, PROTOCOL_VERSION, package_version
from slimsplit.server.core import InferenceCore, InferRequest, InferResult
from slimsplit.server.security.interceptor import current_device
from slimsplit.server.status import abort, frame_error, status_for
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


# ---------------------------------------------------------------------------------------------- conversions


def frame_to_request(frame: pb.FeatureFrame) -> InferRequest:
    return InferRequest(
        model=frame.model,
        mode=frame.mode,
        features=frame.features,
        model_version=frame.model_version,
        frame_id=frame.frame_id,
        top_k=frame.top_k,
        protocol_version=frame.protocol_version,
    )


def result_to_prediction(result: InferResult, total_ms: float | None = None) -> pb.Prediction:
    """The wire form of ``result``; ``total_ms``: the server's total time when the adapter measured it itself."""
    timing = result.timing if total_ms is None else replace(result.timing, total_ms=total_ms)
    return pb.Prediction(
        frame_id=result.frame_id,
        classes=result.classes,
        scores=result.scores,
        labels=result.labels,
        timing=timing.to_pb(),
        model=result.model,
        model_version=result.model_version,
        mode=result.mode,
    )


def manifest_to_model_info(m: Manifest) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=m.name,
        version=m.version,
        classes=m.classes,
        modes=[
            pb.ModeInfo(
                name=s.name,
                width=s.width,
                bits=s.bits,
                accuracy=s.accuracy or 0.0,
                payload_bytes_mean=s.payload_bytes_mean or 0.0,
                encoder_ms_p50=s.encoder_ms_p50 or 0.0,
                tail_ms_p50=s.tail_ms_p50 or 0.0,
            )
            for s in m.modes
        ],
        feature_shape=[m.feature.max_channels, m.feature.height, m.feature.width],
        manifest_json=m.to_json(),
    )


def describe_response(core: InferenceCore, model: str = "") -> pb.DescribeResponse:
    """The ``Describe`` answer: the core's models (``model``'s versions only when given; UnknownModel if none)."""
    return pb.DescribeResponse(
        protocol_version=PROTOCOL_VERSION,
        server_version=package_version(),
        backend=core.backend_name,
        models=[manifest_to_model_info(m) for m in core.describe(model)],
    )


def _since_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


_EOF: Final = object()
_SHUTDOWN: Final = object()


class _ReadFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


# ---------------------------------------------------------------------------------------------- servicer


class SplitInferenceService(pb_grpc.SplitInferenceServicer):  # type: ignore[misc]
    """The servicer. ``begin_shutdown`` makes streams finish their in-flight frames and end with
    UNAVAILABLE."""

    def __init__(self, core: InferenceCore, *, stream_max_in_flight: int = 32) -> None:
        self.core = core
        self.stream_max_in_flight = stream_max_in_flight
        self._shutting_down = False
        self._streams: set[asyncio.Queue[object]] = set()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def begin_shutdown(self) -> None:
        """Refuse new calls with UNAVAILABLE and tell open streams to wind down."""
        self._shutting_down = True
        for replies in self._streams:
            replies.put_nowait(_SHUTDOWN)

    def _unavailable(self) -> Unavailable:
        return Unavailable("the server is shutting down; retry later or on another server")

    async def Infer(self, request: pb.FeatureFrame, context: Context) -> pb.Prediction:
        received = time.perf_counter()
        if self._shutting_down:
            await abort(context, self._unavailable())
        device = current_device.get()
        try:
            if device is not None:
                device.admit(request.model, len(request.features))
            result = await self.core.infer(
                frame_to_request(request), timeout=context.time_remaining(), received=received
            )
        except Exception as exc:
            if device is not None:
                device.count(exc.grpc_status if isinstance(exc, SlimsplitError) else "INTERNAL")
            await abort(context, exc)
        if device is not None:
            device.count("OK")
        return result_to_prediction(result, _since_ms(received))

    async def Describe(self, request: pb.DescribeRequest, context: Context) -> pb.DescribeResponse:
        try:
            return describe_response(self.core, request.model)
        except Exception as exc:
            await abort(context, exc)

    async def InferStream(
        self, request_iterator: AsyncIterator[pb.FeatureFrame], context: Context
    ) -> AsyncIterator[pb.StreamReply]:
        if self._shutting_down:
            await abort(context, self._unavailable())
        device = current_device.get()
        replies: asyncio.Queue[object] = asyncio.Queue()
        slots = asyncio.Semaphore(self.stream_max_in_flight)
        tasks: set[asyncio.Future[InferResult]] = set()  # frames waiting in the batcher
        core = self.core

        def reply(frame_id: int, received: float, fut: asyncio.Future[InferResult]) -> pb.StreamReply:
            if fut.cancelled():
                return failed(frame_id, self._unavailable())
            exc = fut.exception()
            if exc is not None:
                return failed(frame_id, exc)
            if device is not None:
                device.count("OK")
            return pb.StreamReply(prediction=result_to_prediction(fut.result(), _since_ms(received)))

        def failed(frame_id: int, exc: BaseException) -> pb.StreamReply:
            error = frame_error(frame_id, exc)
            if device is not None:
                device.count(error.status)
            return pb.StreamReply(error=error)

        def answered(frame_id: int, received: float, fut: asyncio.Future[InferResult]) -> None:
            tasks.discard(fut)
            replies.put_nowait(reply(frame_id, received, fut))

        async def read() -> None:
            try:
                async for frame in request_iterator:
                    received = time.perf_counter()
                    await slots.acquire()  # released once the reply is written: a slow reader slows the stream
                    if device is not None:
                        try:
                            device.admit(frame.model, len(frame.features))
                        except SlimsplitError as exc:
                            replies.put_nowait(failed(frame.frame_id, exc))
                            continue
                    # Eager: a cheap frame is fully served inside start() and answered without a task.
                    fut = core.start(frame_to_request(frame), timeout=context.time_remaining(), received=received)
                    if fut.done():
                        replies.put_nowait(reply(frame.frame_id, received, fut))
                    else:
                        tasks.add(fut)
                        fut.add_done_callback(partial(answered, frame.frame_id, received))
            except Exception as exc:
                replies.put_nowait(_ReadFailed(exc))
                return
            while tasks:  # the client finished sending: answer what is in flight, then end the stream
                await asyncio.wait(set(tasks))
            replies.put_nowait(_EOF)

        self._streams.add(replies)
        reader = asyncio.create_task(read())
        try:
            while True:
                item = await replies.get()
                if isinstance(item, pb.StreamReply):
                    yield item
                    slots.release()
                elif item is _EOF:
                    return
                elif item is _SHUTDOWN:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    while tasks:
                        await asyncio.wait(set(tasks))
                    while not replies.empty():
                        late = replies.get_nowait()
                        if isinstance(late, pb.StreamReply):
                            yield late
                    info = status_for(self._unavailable())
                    context.set_code(info.code)
                    context.set_details(info.message)
                    context.set_trailing_metadata(((ERROR_CLASS_KEY, info.error_class),))
                    return
                elif isinstance(item, _ReadFailed):
                    raise item.exc
        finally:
            self._streams.discard(replies)
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            pending: list[asyncio.Future[Any]] = [reader, *tasks]
            await asyncio.gather(*pending, return_exceptions=True)


__all__ = [
    "SplitInferenceService",
    "describe_response",
    "frame_to_request",
    "manifest_to_model_info",
    "result_to_prediction",
]
