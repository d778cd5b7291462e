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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from slimsplit.bundle import Manifest
from slimsplit.errors import DeadlineExceeded, InvalidFrame, MessageTooLarge, SlimsplitError, Unavailable
from slimsplit.protocol import PROTOCOL_VERSION, SERVICE_NAME, package_version
from slimsplit.server.admission import AdaptiveLimit, Share, Shares
from slimsplit.server.core import InferenceCore, InferRequest, InferResult
from slimsplit.server.planes import PlaneFrames, PlaneOpenRequest
from slimsplit.server.security.guard import DeviceState
from slimsplit.server.security.interceptor import current_device
from slimsplit.server.status import abort, frame_error, status_for, trailing_metadata
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


def open_to_request(message: pb.PlaneOpen) -> PlaneOpenRequest:
    request = InferRequest(
        model=message.model,
        mode=message.mode,
        features=b"",
        model_version=message.model_version,
        frame_id=message.frame_id,
        top_k=message.top_k,
        protocol_version=message.protocol_version,
    )
    return PlaneOpenRequest(request, planes=message.planes, budget_s=message.budget_ms / 1000.0)


def result_to_prediction(result: InferResult, total_ms: float | None = None, planes_used: int = 0) -> pb.Prediction:
    """The wire form of ``result``; ``total_ms``: the server's total time when the adapter measured it itself;
    ``planes_used``: the planes a plane-coded frame ran on."""
    timing = result.timing if total_ms is None else replace(result.timing, total_ms=total_ms)
    return pb.Prediction(
        planes_used=planes_used,
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


class _End:
    """End the stream with the status of ``exc`` once the frames read before are answered."""

    def __init__(self, exc: SlimsplitError) -> None:
        self.exc = exc


M = TypeVar("M", pb.FeatureFrame, pb.DescribeRequest, pb.PlaneMessage)


def parse_request(raw: bytes | M, message: type[M], limit: int, what: str = "message") -> M:
    """The request ``raw`` (the body gRPC received, not yet parsed) as a ``message``: :class:`MessageTooLarge` above
    ``limit`` bytes, :class:`InvalidFrame` when it is not that message (a parsed message passes through)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        return raw
    if len(raw) > limit:
        raise MessageTooLarge(
            f"the {what} is {len(raw)} bytes, more than this server accepts ({limit}; --max-message-bytes)",
            size=len(raw),
            limit=limit,
        )
    try:
        return message.FromString(bytes(raw))
    except DecodeError:
        raise InvalidFrame(
            f"the {what} is not a {message.DESCRIPTOR.full_name} protobuf message ({len(raw)} bytes)"
        ) from None


def add_to_server(service: SplitInferenceService, server: grpc.aio.Server) -> None:
    """Register ``service`` on ``server`` with request bodies left as bytes: the service parses them itself, so an
    undecodable or oversized one is a clear INVALID_ARGUMENT / RESOURCE_EXHAUSTED (in a stream: after the frames
    read before it are answered) instead of gRPC's UNKNOWN."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            service.Infer, response_serializer=pb.Prediction.SerializeToString
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            service.InferStream, response_serializer=pb.StreamReply.SerializeToString
        ),
        "PlaneStream": grpc.stream_stream_rpc_method_handler(
            service.PlaneStream, response_serializer=pb.PlaneReply.SerializeToString
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            service.Describe, response_serializer=pb.DescribeResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]  # not in grpc-stubs


# ---------------------------------------------------------------------------------------------- servicer


class SplitInferenceService(pb_grpc.SplitInferenceServicer):  # type: ignore[misc]
    """The servicer. ``begin_shutdown`` makes streams finish their in-flight frames and end with
    UNAVAILABLE."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        stream_max_in_flight: int = 32,
        max_message_bytes: int = 1 << 20,
        stream_idle_timeout_s: float = 0.0,
        client_max_in_flight: int = 64,
        max_frames_in_flight: int | None = None,
        target_loop_lag_ms: float = 0.0,
    ) -> None:
        self.core = core
        adaptive = None
        if target_loop_lag_ms > 0 and max_frames_in_flight is not None:
            adaptive = AdaptiveLimit(max_frames_in_flight, target_lag_s=target_loop_lag_ms / 1000.0)
        self.shares = Shares(client_max_in_flight, max_frames_in_flight, adaptive=adaptive)
        self._watch: asyncio.Task[None] | None = None
        self.stream_max_in_flight = stream_max_in_flight
        self.max_message_bytes = max_message_bytes
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._shutting_down = False
        self._streams: set[asyncio.Queue[object]] = set()

    def start(self) -> None:
        """Start watching the event loop's lag (the adaptive limit); on the server's loop."""
        adaptive = self.shares.adaptive
        if adaptive is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(adaptive.watch(self.shares), name="slimsplit-lag")

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def begin_shutdown(self) -> None:
        """Refuse new calls with UNAVAILABLE and tell open streams to wind down."""
        self._shutting_down = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for replies in self._streams:
            replies.put_nowait(_SHUTDOWN)

    async def _slot(self, share: Share, timeout: float | None) -> None:
        """A slot for a unary call's frame: refused at once when its client is at its share, else waited for
        within the call's time (DeadlineExceeded when none frees)."""
        shares = self.shares
        if shares.try_take(share):
            return
        if shares.at_limit(share):
            raise shares.refuse(share)
        try:
            await asyncio.wait_for(shares.take(share), timeout)
        except TimeoutError:
            raise DeadlineExceeded("the server was full until the frame's deadline") from None

    def _unavailable(self) -> Unavailable:
        return Unavailable("the server is shutting down; retry later or on another server")

    async def Infer(self, raw: bytes | pb.FeatureFrame, context: Context) -> pb.Prediction:
        received = time.perf_counter()
        if self._shutting_down:
            await abort(context, self._unavailable())
        device = current_device.get()
        share = self.shares.open(_client_key(context, device))
        try:
            request = parse_request(raw, pb.FeatureFrame, self.max_message_bytes, "request")
            if device is not None:
                device.admit(request.model, len(request.features))
            await self._slot(share, _timeout(context, request))
            try:
                result = await self.core.infer(
                    frame_to_request(request), timeout=_timeout(context, request), received=received
                )
            finally:
                self.shares.give(share)
        except Exception as exc:
            if device is not None:
                device.count(exc.grpc_status if isinstance(exc, SlimsplitError) else "INTERNAL")
            await abort(context, exc)
        finally:
            self.shares.close(share)
        if device is not None:
            device.count("OK")
        return result_to_prediction(result, _since_ms(received))

    async def Describe(self, raw: bytes | pb.DescribeRequest, context: Context) -> pb.DescribeResponse:
        try:
            request = parse_request(raw, pb.DescribeRequest, self.max_message_bytes, "request")
            return describe_response(self.core, request.model)
        except Exception as exc:
            await abort(context, exc)

    async def InferStream(
        self, request_iterator: AsyncIterator[bytes | pb.FeatureFrame], context: Context
    ) -> AsyncIterator[pb.StreamReply]:
        if self._shutting_down:
            await abort(context, self._unavailable())
        device = current_device.get()
        shares = self.shares
        share = shares.open(_client_key(context, device))
        replies: asyncio.Queue[object] = asyncio.Queue()
        slots = asyncio.Semaphore(self.stream_max_in_flight)
        tasks: set[asyncio.Future[InferResult]] = set()  # frames waiting in the batcher
        core = self.core

        def reply(frame_id: int, received: float, fut: asyncio.Future[InferResult]) -> pb.StreamReply:
            shares.give(share)
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

        limit = self.max_message_bytes
        idle_s = self.stream_idle_timeout_s
        loop = asyncio.get_running_loop()
        last_frame = [loop.time()]

        async def read() -> None:
            ending: SlimsplitError | None = None
            count = 0
            try:
                async for raw in request_iterator:
                    received = time.perf_counter()
                    count += 1
                    try:
                        frame = parse_request(raw, pb.FeatureFrame, limit, f"message {count} of the stream")
                    except SlimsplitError as exc:
                        ending = exc  # stop reading; answer what was read, then end the stream with this status
                        break
                    last_frame[0] = loop.time()
                    await slots.acquire()  # released once the reply is written: a slow reader slows the stream
                    if device is not None:
                        try:
                            device.admit(frame.model, len(frame.features))
                        except SlimsplitError as exc:
                            replies.put_nowait(failed(frame.frame_id, exc))
                            continue
                    if not shares.try_take(share):
                        await shares.take(share)  # a slot of the server, fairly shared (waits while there is none)
                    # Eager: a cheap frame is fully served inside start() and answered without a task.
                    fut = core.start(frame_to_request(frame), timeout=_timeout(context, frame), received=received)
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
            replies.put_nowait(_EOF if ending is None else _End(ending))

        idle_timer: asyncio.TimerHandle | None = None

        def check_idle() -> None:
            """End a stream that sent no frame for ``idle_s`` and has none being served (checked every idle_s / 4)."""
            nonlocal idle_timer
            if not tasks and loop.time() - last_frame[0] >= idle_s:
                reader.cancel()
                replies.put_nowait(
                    _End(Unavailable(f"the stream sent no frame for {idle_s:g} s and was closed: open a new one"))
                )
                return
            idle_timer = loop.call_later(idle_s / 4, check_idle)

        self._streams.add(replies)
        reader = asyncio.create_task(read())
        idle_timer = loop.call_later(idle_s / 4, check_idle) if idle_s > 0 else None
        try:

            async def settle() -> None:
                while tasks:
                    await asyncio.wait(set(tasks))

            async for item in _write_replies(
                replies, pb.StreamReply, slots, reader, settle, context, self._unavailable
            ):
                yield item
        finally:
            if idle_timer is not None:
                idle_timer.cancel()
            self._streams.discard(replies)
            self.shares.close(share)
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            pending: list[asyncio.Future[Any]] = [reader, *tasks]
            await asyncio.gather(*pending, return_exceptions=True)

    async def PlaneStream(
        self, request_iterator: AsyncIterator[bytes | pb.PlaneMessage], context: Context
    ) -> AsyncIterator[pb.PlaneReply]:
        if self._shutting_down:
            await abort(context, self._unavailable())
        device = current_device.get()
        shares = self.shares
        share = shares.open(_client_key(context, device))
        # Every message read holds a slot until its reply is written (an open: its frame's answer; a plane: its
        # ack), so a client that does not read its replies stops being read.
        slots = asyncio.Semaphore(4 * self.stream_max_in_flight)
        replies: asyncio.Queue[object] = asyncio.Queue()
        waiting: set[asyncio.Future[InferResult]] = set()
        holding: set[int] = set()  # frames holding a server slot (from their open to their answer)

        def answer(frame_id: int, used: int, received: float, fut: asyncio.Future[InferResult]) -> pb.PlaneReply:
            if frame_id in holding:
                holding.discard(frame_id)
                shares.give(share)
            if fut.cancelled():
                return failed(frame_id, self._unavailable())
            exc = fut.exception()
            if exc is not None:
                return failed(frame_id, exc)
            if device is not None:
                device.count("OK")
            prediction = result_to_prediction(fut.result(), _since_ms(received), planes_used=used)
            return pb.PlaneReply(prediction=prediction)

        def failed(frame_id: int, exc: BaseException) -> pb.PlaneReply:
            if frame_id in holding:
                holding.discard(frame_id)
                shares.give(share)
            error = frame_error(frame_id, exc)
            if device is not None:
                device.count(error.status)
            return pb.PlaneReply(error=error)

        opened_at: dict[int, float] = {}

        def served(frame_id: int, used: int, fut: asyncio.Future[InferResult]) -> None:
            received = opened_at.pop(frame_id, time.perf_counter())
            if fut.done():
                replies.put_nowait(answer(frame_id, used, received, fut))
                return
            waiting.add(fut)

            def done(f: asyncio.Future[InferResult]) -> None:
                waiting.discard(f)
                replies.put_nowait(answer(frame_id, used, received, f))

            fut.add_done_callback(done)

        frames = PlaneFrames(self.core, served, max_open=self.stream_max_in_flight)
        limit = self.max_message_bytes

        async def read() -> None:
            ending: SlimsplitError | None = None
            count = 0
            try:
                async for raw in request_iterator:
                    received = time.perf_counter()
                    count += 1
                    try:
                        message = parse_request(raw, pb.PlaneMessage, limit, f"message {count} of the stream")
                    except SlimsplitError as exc:
                        ending = exc
                        break
                    await slots.acquire()
                    kind = message.WhichOneof("kind")
                    if kind == "open":
                        op = message.open
                        if not shares.try_take(share):
                            await shares.take(share)
                        refusal = _open_plane_frame(frames, op, received, context, device)
                        if refusal is None:
                            holding.add(op.frame_id)
                            opened_at[op.frame_id] = received
                        else:
                            shares.give(share)
                            replies.put_nowait(failed(op.frame_id, refusal))
                    elif kind == "plane":
                        frame_id = message.plane.frame_id
                        try:
                            if device is not None and frames.is_open(frame_id):
                                try:
                                    device.admit_bytes(len(message.plane.unit))
                                except SlimsplitError:
                                    frames.abandon(frame_id)
                                    raise
                            taken = frames.take(frame_id, message.plane.unit)
                        except SlimsplitError as exc:
                            opened_at.pop(frame_id, None)
                            slots.release()  # the frame's own slot: its answer is this error
                            replies.put_nowait(failed(frame_id, exc))
                            continue
                        ack = pb.PlaneAck(frame_id=frame_id, plane=taken.plane, bytes=taken.nbytes, late=taken.late)
                        replies.put_nowait(pb.PlaneReply(ack=ack))
                        if taken.complete:
                            frames.serve(frame_id)
                    else:
                        slots.release()
                        ending = InvalidFrame(f"message {count} of the stream is neither an open nor a plane")
                        break
            except Exception as exc:
                replies.put_nowait(_ReadFailed(exc))
                return
            frames.flush()  # no more planes will come: serve what is open with what it has
            while waiting:
                await asyncio.wait(set(waiting))
            replies.put_nowait(_EOF if ending is None else _End(ending))

        self._streams.add(replies)
        reader = asyncio.create_task(read())
        try:

            async def settle() -> None:
                frames.flush()
                while waiting:
                    await asyncio.wait(set(waiting))

            async for item in _write_replies(replies, pb.PlaneReply, slots, reader, settle, context, self._unavailable):
                yield item
        finally:
            self._streams.discard(replies)
            frames.close()
            for _ in range(len(holding)):
                shares.give(share)
            holding.clear()
            self.shares.close(share)
            reader.cancel()
            for fut in list(waiting):
                fut.cancel()
            await asyncio.gather(reader, *waiting, return_exceptions=True)


R = TypeVar("R", pb.StreamReply, pb.PlaneReply)


async def _write_replies(
    replies: asyncio.Queue[object],
    reply_type: type[R],
    slots: asyncio.Semaphore,
    reader: asyncio.Task[None],
    settle: Callable[[], Awaitable[None]],
    context: Context,
    unavailable: Callable[[], SlimsplitError],
) -> AsyncIterator[R]:
    """A stream's replies as its reader queues them, each freeing its slot once written; the stream ends at the
    reader's end of input (``_EOF``) or with the status it asks for (``_End``), or raises its read failure. On
    shutdown the reader stops, ``settle`` answers what was read, those answers are written and the stream ends
    UNAVAILABLE."""
    while True:
        item = await replies.get()
        if isinstance(item, reply_type):
            yield item
            slots.release()
        elif item is _EOF:
            return
        elif item is _SHUTDOWN:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await settle()
            while not replies.empty():
                late = replies.get_nowait()
                if isinstance(late, reply_type):
                    yield late
            _end_with(context, unavailable())
            return
        elif isinstance(item, _End):
            _end_with(context, item.exc)
            return
        elif isinstance(item, _ReadFailed):
            raise item.exc


def _open_plane_frame(
    frames: PlaneFrames, message: pb.PlaneOpen, received: float, context: Context, device: DeviceState | None
) -> SlimsplitError | None:
    """Open a frame on a plane stream: ``None``, or why it was refused."""
    try:
        if device is not None:
            device.admit(message.model, 0)
        remaining: float | None = context.time_remaining()
        frames.open(open_to_request(message), received=received, timeout=remaining)
    except SlimsplitError as exc:
        return exc
    return None


def _client_key(context: Context, device: DeviceState | None) -> str:
    """Whose share a call uses: the device's when devices authenticate, else the connection's (peer address and
    port)."""
    return f"device:{device.device_id}" if device is not None else str(context.peer())


def _timeout(context: Context, frame: pb.FeatureFrame) -> float | None:
    """Seconds the frame may take: the sooner of the call's deadline and the frame's own ``deadline_ms``."""
    remaining: float | None = context.time_remaining()
    if frame.deadline_ms:
        own = frame.deadline_ms / 1000.0
        return own if remaining is None else min(remaining, own)
    return remaining


def _end_with(context: Context, exc: SlimsplitError) -> None:
    """Set the status a stream ends with (its replies are all written already)."""
    info = status_for(exc)
    context.set_code(info.code)
    context.set_details(info.message)
    context.set_trailing_metadata(trailing_metadata(info))


__all__ = [
    "SplitInferenceService",
    "add_to_server",
    "describe_response",
    "frame_to_request",
    "manifest_to_model_info",
    "parse_request",
    "result_to_prediction",
]
