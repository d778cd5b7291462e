"""The gRPC frame transports: a reconnecting ``InferStream`` and one unary ``Infer`` call per frame.

Both run on ``grpc.aio``: the sync API's bidirectional stream consumes the request iterator on a gRPC-owned thread
and hands every reply to another one, so each frame would pay two thread hand-offs under the GIL and the bookkeeping
(in-flight table, deadlines, reconnection) would need locks. With ``grpc.aio`` one event loop owns all state: a write
is one awaited batch op, replies are read by one task, per-frame deadlines are ``call_later`` timers (cancelled on
reply, a few microseconds each) and 64 concurrent unary calls are 64 cheap tasks instead of 64 threads.

Outcomes are delivered through callbacks (:class:`~slimsplit.edge.transport.Outcome`), never raised: a frame that
fails, misses its deadline or is in flight when the stream breaks is *reported*, and the stream goes on. Only giving
up on the server entirely (``ReconnectPolicy.max_attempts`` consecutive failures) raises
:class:`~slimsplit.errors.Unavailable`, and so does the server refusing this device: once a call or a frame ends
with ``UNAUTHENTICATED`` or ``PERMISSION_DENIED`` (a wrong token, a revoked device) the transport does not reconnect
or send again, and the next ``submit`` raises that error, restated to say so (a CLI prints it and exits 3). A refusal
by a per-device limit with a retry hint (``RateLimited``, ``retry_after_s``) delays the next reconnection that long.

Replies are untrusted input: a prediction that breaks the wire's rules
(:func:`~slimsplit.edge.replies.check_prediction`) is its frame's failure (``INVALID_REPLY``), never an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import grpc
import grpc.aio

from slimsplit.edge.config import ReconnectPolicy
from slimsplit.edge.replies import check_prediction, invalid_reply, printable
from slimsplit.edge.status import (
    error_from_frame_error,
    error_from_rpc,
    error_from_status,
    refusal,
    refused,
    restated,
    status_of,
)
from slimsplit.edge.transport import Done, FrameTransport, InFlight, Outcome, wait_set
from slimsplit.errors import SlimsplitError, Unavailable
from slimsplit.v1 import slimsplit_pb2 as pb

_perf = time.perf_counter
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


def _call_error(exc: BaseException) -> SlimsplitError:
    """The exception a broken call stands for: a gRPC status's class, else ``Unavailable``."""
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    return Unavailable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class StreamTransport(FrameTransport):
    """One logical ``InferStream`` that survives reconnections.

    ``submit`` writes a frame and returns once it is handed to gRPC; its outcome arrives later through the
    ``done`` callback, called exactly once: with the prediction, a per-frame error from the server, at the frame's
    deadline (``DeadlineExceeded``, its late reply is then dropped), or when the stream breaks while the frame is in
    flight (the call's error, e.g. ``Unavailable``). After a break the next ``submit`` re-opens the stream once the
    backoff delay has passed; frames submitted before that fail at once with ``Unavailable`` (a live source cannot
    wait), so a dead server costs microseconds per frame, not a hang; :attr:`ready` says so beforehand, and
    :meth:`wait_ready` waits for it, so that a caller need not encode a frame only to see it fail. A refusal of this
    device ends it for good (see the module docstring); ``target``: the server's address, for that error's message.

    With ``channel`` (the stub's channel) the transport watches its connectivity after a break: once the channel is
    ``READY`` again after being down, the backoff ends at once and the next ``submit`` reopens the stream, so a
    server that comes back is used as soon as the channel has reconnected (the channel re-dials by its own
    backoff, :class:`~slimsplit.edge.config.ChannelConfig`), not after the rest of the stream's backoff delay.
    ``top_k``: the classes a frame asks for, the most a reply may carry.
    """

    def __init__(
        self,
        stub: Any,
        policy: ReconnectPolicy,
        *,
        seed: int | None = None,
        target: str = "",
        channel: grpc.aio.Channel | None = None,
        top_k: int = 0,
    ) -> None:
        self._stub = stub
        self._channel = channel
        self._top_k = top_k
        self._watcher: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._target = target or "?"
        self._refused: SlimsplitError | None = None
        self._policy = policy
        self._rng = random.Random(seed)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._frames = InFlight()
        self._write_lock = asyncio.Lock()
        self._attempt = 0
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: SlimsplitError | None = None
        self._closed = False
        self._reconnects = 0

    # ----------------------------------------------------------------------------------------------- state
    @property
    def in_flight(self) -> int:
        return len(self._frames)

    @property
    def late_replies(self) -> int:
        return self._frames.late_replies

    @property
    def stray_replies(self) -> int:
        return self._frames.stray_replies

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def ready(self) -> bool:
        """False while the stream is broken and its backoff delay has not passed (a ``submit`` now would fail the
        frame at once); True otherwise, also when the transport is closed or refused (``submit`` raises then)."""
        if self._call is not None or not self._failures or self._closed or self._refused is not None:
            return True
        return _perf() >= self._retry_at

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until :attr:`ready`: the backoff delay has passed, or the channel is connected again (at most
        ``timeout_s``); whether it is ready."""
        end = None if timeout_s is None else _perf() + timeout_s
        while not self.ready:
            now = _perf()
            step = self._retry_at - now
            if end is not None:
                if now >= end:
                    return False
                step = min(step, end - now)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(step, 0.0))
        return True

    @property
    def attempt(self) -> int:
        """How many times the underlying call has been opened."""
        return self._attempt

    @property
    def connected(self) -> bool:
        return self._call is not None

    @property
    def refused(self) -> SlimsplitError | None:
        """The server's refusal of this device that ended the transport, or ``None``."""
        return self._refused

    def _refuse(self, error: SlimsplitError) -> None:
        if self._refused is None:
            self._refused = refused(error, self._target)

    # ----------------------------------------------------------------------------------------------- sending
    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        """Send ``frame`` (its ``frame_id`` must be unique among frames in flight)."""
        if self._closed:
            raise Unavailable("the frame stream is closed")
        if self._refused is not None:
            raise self._refused
        fid = frame.frame_id
        if self._call is None:
            now = _perf()
            if self._failures and now < self._retry_at:
                wait_ms = (self._retry_at - now) * 1e3
                error = Unavailable(
                    f"not connected ({self._last_reason()}); reconnecting in {wait_ms:.0f} ms", frame_id=fid
                )
                done(Outcome(fid, None, error, now, now, self._attempt))
                return
            self._open()
        call = self._call
        frame.client_send_unix_ns = time.time_ns()
        self._frames.add(fid, self._attempt, done, deadline_s)
        try:
            await self._send(call, frame, deadline_s)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            self._broken(call, _call_error(exc))

    async def _send(self, call: Any, frame: pb.FeatureFrame, deadline_s: float | None) -> None:
        """Write ``frame`` on ``call`` (the frame is in flight already)."""
        async with self._write_lock:
            await call.write(frame)

    def _new_call(self) -> Any:
        return self._stub.InferStream(wait_for_ready=False)

    def _last_reason(self) -> str:
        last = self._last_error
        return f"{status_of(last)}: {last}" if last is not None else ""

    def _open(self) -> None:
        if self._policy.max_attempts is not None and self._failures >= self._policy.max_attempts:
            raise Unavailable(
                f"gave up after {self._failures} failed attempts to (re)open the stream: {self._last_reason()}",
                attempts=self._failures,
            )
        self._attempt += 1
        if self._attempt > 1:
            self._reconnects += 1
        call = self._new_call()
        self._call = call
        self._reader = asyncio.get_running_loop().create_task(self._read(call))

    # ----------------------------------------------------------------------------------------------- receiving
    async def _read(self, call: Any) -> None:
        error: SlimsplitError
        try:
            while True:
                reply = await call.read()
                if reply is _EOF:
                    code = await call.code()
                    details = await call.details()
                    if code is grpc.StatusCode.OK:
                        said = f": {printable(details)}" if details else ""
                        error = Unavailable(f"server ended the stream ({code.name}{said})")
                    else:
                        error = error_from_status(code, details or "")
                    break
                received = _perf()
                if self._failures:
                    self._failures = 0
                self._handle(reply, received)
        except asyncio.CancelledError:
            raise
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            error = _call_error(exc)
        self._broken(call, error)

    def _handle(self, reply: Any, received: float) -> None:
        """One reply of the stream (a ``StreamReply``), read at ``received``."""
        frames = self._frames
        if reply.HasField("prediction"):
            prediction = reply.prediction
            sent_at = frames.sent_at(prediction.frame_id)
            rtt_ms = None if sent_at is None else (received - sent_at) * 1e3
            try:
                check_prediction(prediction, self._top_k, rtt_ms)
            except SlimsplitError as exc:
                frames.answer(prediction.frame_id, received, None, exc)
            else:
                frames.answer(prediction.frame_id, received, prediction, None)
        else:
            err = reply.error
            frame_error = error_from_frame_error(err, frame_id=err.frame_id)
            if refusal(frame_error):
                self._refuse(frame_error)
            frames.answer(err.frame_id, received, None, frame_error)

    def _broken(self, call: Any, error: SlimsplitError) -> None:
        """The call ``call`` ended or failed with ``error``: report its frames in flight and schedule the
        reconnection."""
        if call is not self._call:
            return  # an older call; its frames were reported when it broke
        self._call = None
        self._failures += 1
        now = _perf()
        self._retry_at = now + self._policy.delay(self._failures, self._rng.random())
        retry_after = error.context.get("retry_after_s")
        if isinstance(retry_after, int | float) and retry_after > 0:
            self._retry_at = max(self._retry_at, now + float(retry_after))
        self._last_error = error
        if refusal(error):
            self._refuse(error)
        if not call.done():
            call.cancel()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._reader = None
        self._watch()
        self._frames.fail_all(restated(error, f"stream broke with the frame in flight: {error}"))

    # ----------------------------------------------------------------------------------------------- connectivity
    def _watch(self) -> None:
        """Follow the channel's connectivity from the first break on (one watcher for the transport's life, none
        without a channel; :meth:`aclose` ends it)."""
        if self._channel is None or self._closed or (self._watcher is not None and not self._watcher.done()):
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch_channel(self._channel))

    async def _watch_channel(self, channel: grpc.aio.Channel) -> None:
        """Follow ``channel``'s connectivity (asking it to connect when idle); when it is ``READY`` after having
        been down, end the backoff of a broken stream and wake :meth:`wait_ready`. A channel that stays ``READY``
        (the server ended the stream, the connection is fine) leaves the backoff as it is."""
        ready = grpc.ChannelConnectivity.READY
        seen_down = False
        try:
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.SHUTDOWN:
                if state is not ready:
                    seen_down = True
                elif seen_down:
                    seen_down = False
                    if self._call is None:
                        self._retry_at = min(self._retry_at, _perf())
                    self._changed.set()
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # a closed channel: nothing left to watch
            return

    # ----------------------------------------------------------------------------------------------- closing
    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until no frame is in flight (replies, deadlines or a break settle them). False on timeout."""
        return await self._frames.wait_idle(timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Half-close and let the server answer what is in flight and end the call (at most ``timeout_s``;
        then the call is cancelled and what is left is reported ``CANCELLED``)."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
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
                    cancelled = SlimsplitError(
                        "the client closed the stream before every reply came", status="CANCELLED"
                    )
                    self._broken(call, cancelled)
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        self._reader = None


class UnaryTransport(FrameTransport):
    """One unary ``Infer`` call per frame, each a task; a failure is the call's status as the outcome's error (gRPC
    retries ``UNAVAILABLE`` by the channel's retry policy). The deadline travels with the call, so the server does
    not run a frame its client gave up on. A call the server refuses (``UNAUTHENTICATED``, ``PERMISSION_DENIED``)
    is that frame's outcome, and every later ``submit`` raises it (restated; ``target``: the server's address)."""

    def __init__(self, stub: Any, *, target: str = "", top_k: int = 0) -> None:
        self._stub = stub
        self._top_k = top_k
        self._target = target or "?"
        self._refused: SlimsplitError | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def call(self, frame: pb.FeatureFrame, deadline_s: float | None) -> Outcome:
        """One ``Infer`` call, awaited: its outcome."""
        frame.client_send_unix_ns = time.time_ns()
        sent = _perf()
        try:
            prediction: pb.Prediction = await self._stub.Infer(frame, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return Outcome(frame.frame_id, None, error_from_rpc(exc, frame_id=frame.frame_id), sent, _perf(), 0)
        received = _perf()
        try:
            check_prediction(prediction, frame.top_k or self._top_k, (received - sent) * 1e3)
            if prediction.frame_id != frame.frame_id:
                raise invalid_reply(
                    f"the server's reply is for frame {prediction.frame_id}, the call sent frame {frame.frame_id}",
                    frame_id=frame.frame_id,
                )
        except SlimsplitError as exc:
            return Outcome(frame.frame_id, None, exc, sent, received, 0)
        return Outcome(frame.frame_id, prediction, None, sent, received, 0)

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        if self._closed:
            raise Unavailable("the unary transport is closed")
        if self._refused is not None:
            raise self._refused
        task = asyncio.get_running_loop().create_task(self._run(frame, deadline_s, done))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)

    @property
    def refused(self) -> SlimsplitError | None:
        """The server's refusal of this device that ended the transport, or ``None``."""
        return self._refused

    async def _run(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        outcome = await self.call(frame, deadline_s)
        if outcome.error is not None and self._refused is None and refusal(outcome.error):
            self._refused = refused(outcome.error, self._target)
        done(outcome)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def drain(self, timeout_s: float | None = None) -> bool:
        return await wait_set(self._idle, timeout_s)

    async def aclose(self) -> None:
        """Cancel the calls still running (their frames get no outcome: the caller has stopped waiting)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["StreamTransport", "UnaryTransport"]
