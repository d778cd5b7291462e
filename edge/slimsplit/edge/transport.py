"""How the edge reaches a server: the interface the pipeline and the run use, whatever carries the frames.

* :class:`Connection` - one server: wait until it is ready, ``Describe`` it, measure the round trip, build frames,
  and open a :class:`FrameTransport` per run. :class:`~slimsplit.edge.client.EdgeClient` is one over a gRPC
  channel; ``slimsplit.apps.inprocess.InProcessConnection`` one over an inference core in the same process.
* :class:`FrameTransport` - carries frames: ``submit`` hands one over and returns; the frame's :class:`Outcome`
  arrives later through its callback, exactly once (a prediction, the server's error for it, its deadline passing,
  or the transport failing with it in flight). ``drain`` waits until nothing is in flight, ``aclose`` ends it.
  The gRPC ones are in :mod:`slimsplit.edge.grpc_transport` (``InferStream`` and unary ``Infer``).

Failures are exceptions of :mod:`slimsplit.errors` inside the outcome (``Outcome.error``), never status strings;
``Outcome.status`` is the status name the error stands for (``"OK"`` for a prediction), as results record it.
:class:`InFlight` is the bookkeeping every transport shares: callbacks, send times and deadline timers.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from slimsplit.edge.config import ClientConfig
from slimsplit.edge.status import status_of
from slimsplit.errors import DeadlineExceeded, SlimsplitError
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.v1 import slimsplit_pb2 as pb

OK = "OK"
_perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one submitted frame: a prediction, or the error why there is none.

    ``sent_at``/``received_at`` are ``time.perf_counter()`` seconds: handed to the transport, and answered (or
    given up). ``attempt`` numbers the stream (re)connection that carried the frame (1 = first stream; 0 = unary
    call).
    """

    frame_id: int
    prediction: pb.Prediction | None
    error: SlimsplitError | None
    sent_at: float
    received_at: float
    attempt: int

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def status(self) -> str:
        """``"OK"``, or the status name of the error (``"NOT_FOUND"``, ``"DEADLINE_EXCEEDED"``, ...)."""
        return OK if self.error is None else status_of(self.error)

    @property
    def message(self) -> str:
        return "" if self.error is None else str(self.error)

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


async def wait_set(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until ``event`` is set; False when ``timeout_s`` passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


class InFlight:
    """Frames submitted and not yet answered: each one's callback, send time, attempt and deadline timer. Use it on
    one event loop. A frame's callback is called once: by :meth:`answer`, at its deadline (``DeadlineExceeded``;
    the first reply after that is counted in ``late_replies``), or by :meth:`fail_all`. A reply for no frame in
    flight that is not such a late one (a frame id never sent, a second reply to a frame) is counted in
    ``stray_replies`` and otherwise ignored: replies are untrusted input. The last :data:`GIVEN_UP_MEMORY` frames
    given up at their deadline are remembered to tell the two apart (a reply later than that counts as stray)."""

    GIVEN_UP_MEMORY = 4096

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._given_up: dict[int, None] = {}  # frame ids given up at their deadline, oldest first
        self._idle = asyncio.Event()
        self._idle.set()
        self.late_replies = 0
        self.stray_replies = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, frame_id: int, attempt: int, done: Done, deadline_s: float | None) -> None:
        """Track a frame handed over now; ``deadline_s``: seconds until it is given up (``None`` = never)."""
        if frame_id in self._pending:
            raise ValueError(f"frame id {frame_id} is already in flight")
        pending = _Pending(_perf(), attempt, done, None)
        if deadline_s is not None:
            pending.timer = asyncio.get_running_loop().call_later(deadline_s, self._expire, frame_id, deadline_s)
        self._pending[frame_id] = pending
        self._idle.clear()

    def sent_at(self, frame_id: int) -> float | None:
        """When the frame ``frame_id`` in flight was handed over (``time.perf_counter()``); ``None`` if it is not."""
        p = self._pending.get(frame_id)
        return None if p is None else p.sent_at

    def _pop(self, frame_id: int) -> _Pending | None:
        p = self._pending.pop(frame_id, None)
        if p is not None:
            if p.timer is not None:
                p.timer.cancel()
            if not self._pending:
                self._idle.set()
        return p

    def answer(
        self, frame_id: int, received: float, prediction: pb.Prediction | None, error: SlimsplitError | None
    ) -> None:
        """The reply to ``frame_id`` came at ``received``: report it (or count it late when it is not in flight)."""
        p = self._pop(frame_id)
        if p is None:
            if frame_id in self._given_up:
                del self._given_up[frame_id]
                self.late_replies += 1
            else:
                self.stray_replies += 1
            return
        p.done(Outcome(frame_id, prediction, error, p.sent_at, received, p.attempt))

    def _expire(self, frame_id: int, deadline_s: float) -> None:
        p = self._pop(frame_id)
        if p is None:
            return
        given_up = self._given_up
        given_up[frame_id] = None
        if len(given_up) > self.GIVEN_UP_MEMORY:
            del given_up[next(iter(given_up))]
        error = DeadlineExceeded(f"no reply within {deadline_s * 1e3:.0f} ms", frame_id=frame_id)
        p.done(Outcome(frame_id, None, error, p.sent_at, _perf(), p.attempt))

    def fail_all(self, error: SlimsplitError) -> None:
        """Report every frame in flight with ``error`` (the transport failed with them)."""
        now = _perf()
        failed = list(self._pending.items())
        self._pending.clear()
        self._idle.set()
        for frame_id, p in failed:
            if p.timer is not None:
                p.timer.cancel()
            p.done(Outcome(frame_id, None, error, p.sent_at, now, p.attempt))

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no frame is in flight; False when ``timeout_s`` passed first."""
        return await wait_set(self._idle, timeout_s)


class FrameTransport(ABC):
    """Carries one run's frames to a server (see the module docstring)."""

    @property
    def reconnects(self) -> int:
        """Times the transport re-opened its way to the server (a stream after a break)."""
        return 0

    @property
    def late_replies(self) -> int:
        """Replies that came after their frame's deadline (the frame was reported missed already)."""
        return 0

    @property
    def stray_replies(self) -> int:
        """Replies for no frame in flight that were not late ones: a frame id never sent, a second reply."""
        return 0

    @property
    def resent(self) -> int:
        """Frames sent a second time (on another replica, after the stream carrying them broke)."""
        return 0

    @property
    def ready(self) -> bool:
        """Whether a frame submitted now would be sent: False while the transport is known to be down and waiting
        to reconnect (a frame then fails at once, so a caller that has not encoded it yet should not)."""
        return True

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until :attr:`ready` (at most ``timeout_s``); whether it is."""
        return self.ready

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Frames submitted and not yet reported."""

    @abstractmethod
    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        """Hand ``frame`` over (its ``frame_id`` unique among frames in flight); ``done`` gets its outcome, within
        ``deadline_s`` seconds when given. Raises only when the transport cannot go on at all
        (:class:`~slimsplit.errors.Unavailable`)."""

    @abstractmethod
    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until no frame is in flight; False on timeout."""

    @abstractmethod
    async def aclose(self) -> None:
        """Let the frames in flight be answered (for a while), then release the transport; idempotent."""


class Connection(ABC):
    """One server the edge talks to (``async with connection: ...``); see the module docstring."""

    def __init__(self, config: ClientConfig, target: str | None = None) -> None:
        self.config = config
        self.target = target or config.target
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Connection:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:  # noqa: B027 - a connection that needs no set-up keeps this
        """Set up what calls need (the channel); the server is not contacted yet."""

    async def close(self) -> None:  # noqa: B027
        """Release what :meth:`open` set up."""

    def next_frame_id(self) -> int:
        return next(self._ids)

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

    @abstractmethod
    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the server can be reached (``None``: the config's connect timeout); Unavailable naming the
        address otherwise."""

    @abstractmethod
    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        """The server's ``Describe`` answer; raises the :mod:`slimsplit.errors` class of a failure."""

    async def measure_rtt(self, model: str = "", pings: int = 5, timeout_s: float = 5.0) -> float:
        """The round-trip time to the server, milliseconds: the fastest of ``pings`` ``Describe`` calls made one
        after another (through the link emulator when there is one). The minimum filters out scheduling noise and
        queueing; the server's own work in a ``Describe`` is negligible."""
        if pings < 1:
            raise ValueError(f"pings must be >= 1, got {pings}")
        best = math.inf
        for _ in range(pings):
            t0 = _perf()
            await self.describe(model, timeout_s)
            best = min(best, _perf() - t0)
        return best * 1e3

    @abstractmethod
    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        """A transport for one run's frames: a stream, or one call per frame (``unary``) where the connection
        tells the two apart, or a plane stream (``planes``: frames of plane units); ``seed`` seeds the
        reconnection jitter of one that reconnects. A connection that cannot carry planes raises ConfigError."""


__all__ = ["OK", "Connection", "Done", "FrameTransport", "InFlight", "Outcome", "wait_set"]
