"""A real frame workload over real sockets: the live counterpart of :mod:`slimsplit.evaluation.sim`.

A tiny length-prefixed protocol over one TCP connection::

    request  = u32 length | u64 frame id | payload (length - 8 bytes)          (big-endian)
    reply    = u32 length | u64 frame id | f64 server ms                       (REPLY_BYTES = 20 bytes)

:class:`FrameEchoServer` answers every frame ``server_ms`` after it has fully arrived (frames are served
independently, as in the simulator). :func:`run_frames` plays a :class:`~slimsplit.evaluation.sim.SimConfig` workload
against it in real time: frame ``i`` is captured at ``epoch + t0 + i / fps``, decided by a controller through a
:class:`~slimsplit.control.loop.ControlLoop`, "encoded" by sleeping the mode's encoder time (one encoder), and
written to the socket. Put a :class:`~slimsplit.link.proxy.ShapingProxy` between the two and the result can be
compared frame for frame with the simulation of the same workload (``overhead_bytes=FRAME_HEADER_BYTES``,
``reply_bytes=REPLY_BYTES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Sequence

from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.loop import ControlLoop
from slimsplit.errors import InvalidFrame
from slimsplit.evaluation.sim import SimConfig
from slimsplit.records import FrameRecord

FRAME_HEADER_BYTES = 12
REPLY_BYTES = 20
MAX_FRAME_BYTES = 16 * 1024 * 1024
_HEAD = struct.Struct(">IQ")
_REPLY = struct.Struct(">IQd")


class FrameEchoServer:
    """Replies to every frame after ``server_ms`` (or ``server_ms_of(payload_len)`` when given)."""

    def __init__(
        self,
        server_ms: float = 0.0,
        server_ms_of: Callable[[int], float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server_ms = server_ms
        self.server_ms_of = server_ms_of
        self.host, self.port = host, port
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] | None = None
        self.frames = 0

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()  # the handlers see end of stream and return
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FrameEchoServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        self._writers.add(writer)
        lock = asyncio.Lock()
        pending: set[asyncio.Task[None]] = set()

        async def reply(fid: int, ms: float) -> None:
            await asyncio.sleep(ms / 1000.0)
            async with lock:
                writer.write(_REPLY.pack(REPLY_BYTES - 4, fid, ms))
                await writer.drain()

        try:
            while True:
                try:
                    head = await reader.readexactly(_HEAD.size)
                except asyncio.IncompleteReadError:
                    break
                length, fid = _HEAD.unpack(head)
                if not 8 <= length <= MAX_FRAME_BYTES:
                    raise InvalidFrame(f"frame length {length} out of range")
                await reader.readexactly(length - 8)
                self.frames += 1
                ms = self.server_ms_of(length - 8) if self.server_ms_of is not None else self.server_ms
                task = asyncio.ensure_future(reply(fid, ms))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending, return_exceptions=True)
        except (ConnectionError, OSError, InvalidFrame, asyncio.IncompleteReadError):
            pass
        finally:
            for t in pending:
                t.cancel()
            writer.close()
            self._writers.discard(writer)
            if me is not None:
                self._handlers.discard(me)


async def run_frames(
    address: tuple[str, int],
    controller: Controller,
    modes: Sequence[ModeOption],
    config: SimConfig,
    epoch: float | None = None,
    drain_s: float | None = None,
) -> list[FrameRecord]:
    """Play ``config``'s workload against a :class:`FrameEchoServer` (usually through a shaping proxy) in real
    time. ``epoch`` = event-loop time of link time 0 (the proxy's :attr:`~ShapingProxy.epoch`); default now.
    After the last capture it waits up to ``drain_s`` (default: 2 deadlines) for replies still in flight; those
    that do not arrive are recorded as failed."""
    loop = asyncio.get_running_loop()
    epoch = loop.time() if epoch is None else epoch
    by_name = {m.name: m for m in modes}
    ctl = ControlLoop(controller, modes, config.run)
    reader, writer = await asyncio.open_connection(*address)
    server_ms: dict[int, float] = {}
    done = asyncio.Event()

    def now() -> float:
        return loop.time() - epoch

    async def receive() -> None:
        try:
            while True:
                blob = await reader.readexactly(REPLY_BYTES)
                _, fid, ms = _REPLY.unpack(blob)
                if fid in server_ms:
                    server_ms.pop(fid)
                    ctl.completed(fid, now(), ms)
                if not server_ms and done.is_set():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return

    receiver = asyncio.ensure_future(receive())
    encoder_free = -1e18
    try:
        period = 1.0 / config.fps
        for i in range(config.n_frames):
            capture = config.t0 + i * period
            wait = capture - now()
            if wait > 0:
                await asyncio.sleep(wait)
            d = ctl.decide(i, capture)
            if d.mode is None:
                continue
            mode = by_name[d.mode]
            size = round(mode.payload_bytes)
            encoder_free = max(encoder_free, capture) + mode.encoder_ms / 1000.0
            wait = encoder_free - now()
            if wait > 0:
                await asyncio.sleep(wait)
            server_ms[i] = mode.server_ms
            writer.write(_HEAD.pack(size + 8, i) + bytes(size))
            ctl.sent(i, size, now())
            await writer.drain()
        done.set()
        if server_ms:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(receiver), drain_s or 2 * config.deadline_ms / 1000.0)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    for fid in list(server_ms):
        ctl.completed(fid, now(), 0.0, ok=False)  # DEADLINE_EXCEEDED: no reply by the end of the drain
    return ctl.records


__all__ = ["FRAME_HEADER_BYTES", "REPLY_BYTES", "FrameEchoServer", "run_frames"]
