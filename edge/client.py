"""The edge's gRPC client: a reconnecting frame stream over ``InferStream`` and the unary ``Infer`` path.

Why ``grpc.aio`` rather than the threaded API: the sync API's bidirectional stream consumes the request
iterator on a gRPC-owned thread and hands every reply to another one, so each frame pays two thread hand-offs
under the GIL and the bookkeeping (in-flight table, deadlines, reconnection) needs locks. With ``grpc.aio``
one event loop owns all state: a write is one awaited batch op, replies are read by one task, per-frame
deadlines are ``call_later`` timers (cancelled on reply, a few microseconds each) and 64 concurrent unary
calls are 64 cheap tasks instead of 64 threads. The ONNX encoder runs in a one-thread executor (ONNX Runtime
releases the GIL), so replies are read and time-stamped while the next frame is being encoded.

Results are delivered through callbacks (:class:`Outcome`), never exceptions: a frame that fails, misses its
deadline or is in flight when the stream breaks is *reported*, and the stream goes on. Only giving up on the
server entirely (``ReconnectPolicy.max_attempts`` consecutive failures) raises
:class:`~slimsplit.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from slimsplit.edge.channel import insecure_channel
from slimsplit.edge.config import PROTOCOL_VERSION, ClientConfig, ReconnectPolicy
from slimsplit.edge.status import error_from_rpc, error_from_status
from slimsplit.errors import Unavailable
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

OK = "OK"
#: Bytes a frame costs on the wire besides its ``FeatureFrame`` message: the gRPC length prefix (5), the HTTP/2
#: DATA frame header (9) and the send timestamp, which is set when the frame is written (10).
WIRE_FRAMING_BYTES = 5 + 9 + 10
_perf = time.perf_counter
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one submitted frame: a prediction (``status == "OK"``) or why there is none.

    ``sent_at``/``received_at`` are ``time.perf_counter()`` seconds: handed to gRPC, and answered (or given
    up). ``attempt`` numbers the stream (re)connection that carried the frame (1 = first stream; 0 = unary
    call).
    """

    frame_id: int
    status: str
    message: str
    prediction: pb.Prediction | None
    sent_at: float
    received_at: float
    attempt: int

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def rtt_ms(self) -> float:
        return (self.received_at - self.sent_at) * 1e3


Done = Callable[[Outcome], None]


@dataclass(slots=True)
class _Pending:
    sent_at: float
    attempt: int
    done: Done
    timer: asyncio.TimerHandle | None


def _status_name(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name, exc.details() or exc.code().name
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        name = code().name if callable(code) else "UNKNOWN"
        return name, str(exc)
    return "UNAVAILABLE", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class FrameStream:
    """One logical ``InferStream`` that survives reconnections.

    ``submit`` writes a frame and returns once it is handed to gRPC; its :class:`Outcome` arrives later
    through the ``done`` callback, called exactly once: with the prediction, a per-frame error from the
    server, at the frame's deadline (``DEADLINE_EXCEEDED``, its late reply is then dropped), or when the
    stream breaks while the frame is in flight (the call's status, e.g. ``UNAVAILABLE``). After a break the
    next ``submit`` re-opens the stream once the backoff delay has passed; frames submitted before that fail
    at once with ``UNAVAILABLE`` (a live source cannot wait), so a dead server costs microseconds per frame,
    not a hang.
    """

    def __init__(self, stub: Any, policy: ReconnectPolicy, *, seed: int | None = None) -> None:
        self._stub = stub
        self._policy = policy
        self._rng = random.Random(seed)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, _Pending] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._write_lock = asyncio.Lock()
        self._attempt = 0
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False
        self.late_replies = 0  # replies that came after their frame's deadline (already reported)
        self.reconnects = 0

    # ----------------------------------------------------------------------------------------------- state
    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def attempt(self) -> int:
        """How many times the underlying call has been opened."""
        return self._attempt

    @property
    def connected(self) -> bool:
        return self._call is not None

    # ----------------------------------------------------------------------------------------------- sending
    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        """Send ``frame`` (its ``frame_id`` must be unique among frames in flight)."""
        if self._closed:
            raise Unavailable("the frame stream is closed")
        fid = frame.frame_id
        if self._call is None:
            now = _perf()
            if self._failures and now < self._retry_at:
                wait_ms = (self._retry_at - now) * 1e3
                done(
                    Outcome(
                        fid,
                        "UNAVAILABLE",
                        f"not connected ({self._last_error}); reconnecting in {wait_ms:.0f} ms",
                        None,
                        now,
                        now,
                        self._attempt,
                    )
                )
                return
            self._open()
        if fid in self._pending:
            raise ValueError(f"frame id {fid} is already in flight")
        call = self._call
        frame.client_send_unix_ns = time.time_ns()
        pending = _Pending(_perf(), self._attempt, done, None)
        if deadline_s is not None:
            pending.timer = asyncio.get_running_loop().call_later(deadline_s, self._expire, fid, deadline_s)
        self._pending[fid] = pending
        self._idle.clear()
        try:
            async with self._write_lock:
                await call.write(frame)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            self._broken(call, exc)

    def _open(self) -> None:
        if self._policy.max_attempts is not None and self._failures >= self._policy.max_attempts:
            raise Unavailable(
                f"gave up after {self._failures} failed attempts to (re)open the stream: {self._last_error}",
                attempts=self._failures,
            )
        self._attempt += 1
        if self._attempt > 1:
            self.reconnects += 1
        call = self._stub.InferStream(wait_for_ready=False)
        self._call = call
        self._reader = asyncio.get_running_loop().create_task(self._read(call, self._attempt))

    # -----------------------------------------------------------------------------------------------
    # receiving
    async def _read(self, call: Any, attempt: int) -> None:
        pending = self._pending
        error: BaseException | str
        try:
            while True:
                reply = await call.read()
                if reply is _EOF:
                    code = await call.code()
                    details = await call.details()
                    error = f"server ended the stream ({code.name}{': ' + details if details else ''})"
                    break
                received = _perf()
                if self._failures:
                    self._failures = 0
                if reply.HasField("prediction"):
                    prediction = reply.prediction
                    p = pending.pop(prediction.frame_id, None)
                    if p is None:
                        self.late_replies += 1
                        continue
                    if p.timer is not None:
                        p.timer.cancel()
                    if not pending:
                        self._idle.set()
                    p.done(Outcome(prediction.frame_id, OK, "", prediction, p.sent_at, received, attempt))
                else:
                    err = reply.error
                    p = pending.pop(err.frame_id, None)
                    if p is None:
                        self.late_replies += 1
                        continue
                    if p.timer is not None:
                        p.timer.cancel()
                    if not pending:
                        self._idle.set()
                    p.done(
                        Outcome(
                            err.frame_id,
                            err.status or "UNKNOWN",
                            err.message,
                            None,
                            p.sent_at,
                            received,
                            attempt,
                        )
                    )
        except asyncio.CancelledError:
            raise
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            error = exc
        self._broken(call, error)

    def _expire(self, fid: int, deadline_s: float) -> None:
        p = self._pending.pop(fid, None)
        if p is None:
            return
        if not self._pending:
            self._idle.set()
        now = _perf()
        p.done(
            Outcome(
                fid,
                "DEADLINE_EXCEEDED",
                f"no reply within {deadline_s * 1e3:.0f} ms",
                None,
                p.sent_at,
                now,
                p.attempt,
            )
        )

    def _broken(self, call: Any, error: BaseException | str, status: str = "UNAVAILABLE") -> None:
        """The call ``call`` ended or failed: report its frames in flight and schedule the reconnection."""
        if call is not self._call:
            return  # an older call; its frames were reported when it broke
        message = error if isinstance(error, str) else ""
        if not isinstance(error, str):
            status, message = _status_name(error)
        self._call = None
        self._failures += 1
        now = _perf()
        self._retry_at = now + self._policy.delay(self._failures, self._rng.random())
        self._last_error = f"{status}: {message}"
        if not call.done():
            call.cancel()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._reader = None
        failed = list(self._pending.items())
        self._pending.clear()
        self._idle.set()
        for fid, p in failed:
            if p.timer is not None:
                p.timer.cancel()
            p.done(
                Outcome(
                    fid,
                    status,
                    f"stream broke with the frame in flight: {message}",
                    None,
                    p.sent_at,
                    now,
                    p.attempt,
                )
            )

    # ----------------------------------------------------------------------------------------------- closing
    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until no frame is in flight (replies, deadlines or a break settle them). False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Half-close and let the server answer what is in flight and end the call (at most ``timeout_s``;
        then the call is cancelled and what is left is reported ``CANCELLED``)."""
        if self._closed:
            return
        self._closed = True
        call, reader = self._call, self._reader
        if call is not None:
            try:
                async with self._write_lock:
                    await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass
        if reader is not None and not reader.done():
            # the reader ends by itself once the server closes its side (EOF after the last reply)
            done, _ = await asyncio.wait({reader}, timeout=timeout_s)
            if not done:
                if call is not None and self._call is call:
                    self._broken(call, "the client closed the stream before every reply came", "CANCELLED")
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        self._reader = None


def wire_bytes(frame: pb.FeatureFrame) -> int:
    """What ``frame`` puts on the uplink (before TCP/IP headers), measured before it is sent."""
    size: int = frame.ByteSize() + WIRE_FRAMING_BYTES
    return size


def frame_overhead_bytes(model: str, model_version: str = "", top_k: int = 5) -> int:
    """Bytes a frame of ``model`` costs on the uplink beyond its payload (message fields, gRPC and HTTP/2 framing):
    about 60 with the default bundle, as much as a 1-bit payload, so the controllers plan with it."""
    probe = pb.FeatureFrame(
        protocol_version=PROTOCOL_VERSION,
        frame_id=10_000,
        model=model,
        model_version=model_version,
        mode="w00b0",
        features=b"\0" * 256,
        top_k=top_k,
    )
    return wire_bytes(probe) - 256


class EdgeClient:
    """A connection to one slimsplit server (``async with EdgeClient(config) as client: ...``)."""

    def __init__(self, config: ClientConfig, *, target: str | None = None) -> None:
        self.config = config
        self.target = target or config.target
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> EdgeClient:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        if self._channel is None:
            self._channel = insecure_channel(self.target, self.config.channel)
            self._stub = pb_grpc.SplitInferenceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub = None

    @property
    def stub(self) -> Any:
        if self._stub is None:
            raise Unavailable("the client is not open (use 'async with EdgeClient(...)')")
        return self._stub

    def next_frame_id(self) -> int:
        return next(self._ids)

    # ----------------------------------------------------------------------------------------------- calls
    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the channel is connected; :class:`Unavailable` naming the address otherwise."""
        self.open()
        assert self._channel is not None
        timeout = self.config.connect_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(
                f"cannot reach a server at {self.target} within {timeout:g} s (is slimsplit-server running there?)",
                target=self.target,
            ) from None

    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        try:
            response: pb.DescribeResponse = await self.stub.Describe(pb.DescribeRequest(model=model), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, target=self.target) from None
        return response

    async def measure_rtt(self, model: str = "", pings: int = 5, timeout_s: float = 5.0) -> float:
        """The round-trip time to the server, milliseconds: the fastest of ``pings`` ``Describe`` calls made one
        after another over this channel (through the link emulator when there is one). The minimum filters out
        scheduling noise and queueing; the server's own work in a ``Describe`` is negligible."""
        if pings < 1:
            raise ValueError(f"pings must be >= 1, got {pings}")
        best = math.inf
        for _ in range(pings):
            t0 = _perf()
            await self.describe(model, timeout_s)
            best = min(best, _perf() - t0)
        return best * 1e3

    def make_frame(
        self, *, mode: str, payload: bytes, model: str, model_version: str = "", frame_id: int | None = None
    ) -> pb.FeatureFrame:
        """A :class:`FeatureFrame` (a fresh frame id unless given; the send timestamp is set when it is sent)."""
        return pb.FeatureFrame(
            protocol_version=PROTOCOL_VERSION,
            frame_id=self.next_frame_id() if frame_id is None else frame_id,
            model=model,
            model_version=model_version,
            mode=mode,
            features=payload,
            top_k=self.config.top_k,
        )

    async def infer_outcome(self, frame: pb.FeatureFrame, deadline_s: float | None) -> Outcome:
        """One unary ``Infer``; failures come back as the outcome's status (gRPC retries UNAVAILABLE)."""
        frame.client_send_unix_ns = time.time_ns()
        sent = _perf()
        try:
            prediction: pb.Prediction = await self.stub.Infer(frame, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return Outcome(frame.frame_id, exc.code().name, exc.details() or "", None, sent, _perf(), 0)
        return Outcome(frame.frame_id, OK, "", prediction, sent, _perf(), 0)

    async def infer(self, frame: pb.FeatureFrame, deadline_s: float | None = None) -> pb.Prediction:
        """One unary ``Infer``; raises the :mod:`slimsplit.errors` class of the status on failure."""
        outcome = await self.infer_outcome(frame, deadline_s)
        if outcome.prediction is None:
            raise error_from_status(outcome.status, outcome.message, frame_id=frame.frame_id)
        return outcome.prediction

    def open_stream(self, *, seed: int | None = None) -> FrameStream:
        """A reconnecting frame stream on this channel (opened lazily by the first ``submit``)."""
        return FrameStream(self.stub, self.config.reconnect, seed=seed)


__all__ = [
    "OK",
    "WIRE_FRAMING_BYTES",
    "Done",
    "EdgeClient",
    "FrameStream",
    "Outcome",
    "frame_overhead_bytes",
    "wire_bytes",
]
