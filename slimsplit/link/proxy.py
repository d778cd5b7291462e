"""A shaping TCP proxy on loopback (asyncio): a real network path with an emulated bottleneck for real clients.

Every accepted connection is joined to a fresh connection to the upstream server. Bytes from client to server
cross the *uplink* :class:`~slimsplit.link.shaping.LinkDirection`, bytes back cross the *downlink*; all connections
share the two directions (one link, as on a real device). Bytes are untouched (gRPC's HTTP/2 runs through
unchanged); only their timing changes:

* a reader task reads at most as many bytes as the bottleneck queue has room for (back-pressure into the sender's
  TCP stack when it is full) and computes, with the shared shaping model, the instant each byte leaves the
  bottleneck (the trace instant that carries it) and reaches the far end after the propagation delay;
* a writer task releases the bytes at those instants, in order: what one instant carries is written at once.

The emulation is only as good as the host's timing. When the event loop is held up (a stall) while the queue is
full and the sender has more bytes, the queue runs dry and the trace's opportunities in between are lost, as they
would be on a link whose sender stalled. The proxy counts such stalls and the capacity they cost in
:class:`ProxyStats` (``stalls``, ``stall_lost_up`` / ``stall_lost_down``) and logs a warning line (at most one a
second); a stall shorter than the time the queue takes to drain costs nothing.

Link time is ``loop.time() - epoch`` (the epoch is taken at :meth:`ShapingProxy.start`, or passed in); a trace is
read from ``LinkConfig.start_offset_s`` on. Use it as an async context manager, with :meth:`start` / :meth:`stop`,
or from synchronous code with :func:`proxy_in_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from slimsplit.errors import ConfigError, Unavailable
from slimsplit.link.shaping import LinkConfig, LinkDirection

# asyncio timers fire up to one millisecond late (the selector rounds timeouts up to whole ms): releasing pieces
# up to half a tick early centres the timing error on zero instead of biasing every release late.
_HALF_TICK = 0.0005
# a wake-up later than this after the queue made room is a stall of the host, not timer rounding
_STALL_TOLERANCE_S = 0.002
# a read that returns within this time found the sender's bytes already waiting
_READY_READ_S = 0.002
_WARN_EVERY_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyConfig:
    """Where to listen and where to forward. Addresses are host, port pairs; port 0 = any free port."""

    upstream: tuple[str, int]
    link: LinkConfig = field(default_factory=LinkConfig)
    listen: tuple[str, int] = ("127.0.0.1", 0)
    max_connections: int = 64
    read_bytes: int = 64 * 1024  # largest single read from a socket
    segment_bytes: int = 1500  # while the queue is full, wait for this much room before reading (when it is safe)
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.read_bytes < 1 or self.segment_bytes < 1:
            raise ConfigError(f"bad proxy config: {self}")


@dataclass
class ProxyStats:
    connections: int = 0
    active: int = 0
    refused: int = 0
    bytes_up: int = 0  # delivered across the link, each direction
    bytes_down: int = 0
    offered_up: int = 0  # read from the sender into the link (delivered or still on the way), each direction
    offered_down: int = 0
    stalls: int = 0  # host stalls that let a full queue run dry while the sender had bytes waiting
    stall_lost_up: int = 0  # link capacity those stalls lost, bytes, each direction
    stall_lost_down: int = 0

    def summary(self) -> str:
        """One line: connections, bytes each way, and the capacity host stalls lost."""
        text = (
            f"{self.connections} connections ({self.refused} refused); uplink {self.bytes_up} of {self.offered_up} B "
            f"delivered, downlink {self.bytes_down} of {self.offered_down} B"
        )
        if self.stalls:
            text += (
                f"; {self.stalls} host stalls lost {self.stall_lost_up} B of uplink and {self.stall_lost_down} B of "
                "downlink capacity"
            )
        return text


class ShapingProxy:
    """The shaping proxy (see the module docstring)."""

    def __init__(self, config: ProxyConfig, epoch: float | None = None) -> None:
        self.config = config
        link = config.link
        self._up = LinkDirection(link.uplink, link.delay_ms / 1000.0, link.queue_bytes, link.start_offset_s)
        self._down = LinkDirection(link.downlink, link.delay_ms / 1000.0, link.queue_bytes, link.start_offset_s)
        self._epoch = epoch
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # pump tasks (cancelled on stop)
        self._handlers: set[asyncio.Task[Any]] = set()  # connection handlers (they end when their sockets close)
        self._writers: set[asyncio.StreamWriter] = set()
        self.stats = ProxyStats()
        self.address: tuple[str, int] | None = None
        self._warned_at = -math.inf

    # ------------------------------------------------------------------ lifecycle
    @property
    def epoch(self) -> float:
        """Event-loop time that is link time 0."""
        if self._epoch is None:
            raise Unavailable("the proxy has not been started")
        return self._epoch

    def link_time(self) -> float:
        return asyncio.get_running_loop().time() - self.epoch

    async def start(self) -> tuple[str, int]:
        if self._server is not None:
            raise ConfigError("the proxy is already running")
        loop = asyncio.get_running_loop()
        if self._epoch is None:
            self._epoch = loop.time()
        host, port = self.config.listen
        self._server = await asyncio.start_server(self._accept, host, port)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        for line in self.config.link.queue_warnings():
            log.warning("shaping proxy: %s", line)
        return self.address

    async def stop(self) -> None:
        """Stop accepting, close every connection and wait for its tasks to finish."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        handlers = [t for t in self._handlers if t is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> ShapingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ connections
    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        self._writers.add(c_writer)
        if self.stats.active >= self.config.max_connections:
            self.stats.refused += 1
            self._writers.discard(c_writer)
            c_writer.close()
            return
        self.stats.connections += 1
        self.stats.active += 1
        s_writer: asyncio.StreamWriter | None = None
        try:
            host, port = self.config.upstream
            try:
                s_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), self.config.connect_timeout_s
                )
            except (OSError, TimeoutError):
                return
            s_writer = upstream_writer
            self._writers.add(upstream_writer)
            up = asyncio.ensure_future(self._pump(c_reader, upstream_writer, self._up, True))
            down = asyncio.ensure_future(self._pump(s_reader, c_writer, self._down, False))
            self._track(up)
            self._track(down)
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self.stats.active -= 1
            for w in (c_writer, s_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: LinkDirection, upstream: bool
    ) -> None:
        """Move bytes from ``src`` to ``dst`` through one direction of the link."""
        queue: deque[tuple[float, bytes | None]] = deque()
        ready = asyncio.Event()
        writer = asyncio.ensure_future(self._release(queue, ready, dst, upstream))
        self._track(writer)
        cfg = self.config
        min_room = _refill_bytes(link, cfg.segment_bytes)
        stall: tuple[float, float] | None = None  # (capacity lost, how late) after a late wake-up, until a read
        try:
            while True:
                t = self.link_time()
                room = int(link.space(t))
                if room < min_room:  # full: wait until the bottleneck has drained enough (back-pressure)
                    wake = link.drain_time(t, link.queue_bytes - min_room)
                    await asyncio.sleep(max(wake - t, 0.0005))
                    late = self.link_time() - max(wake, t)
                    if late > _STALL_TOLERANCE_S:
                        lost = link.idle_capacity(max(wake, t), self.link_time())
                        stall = (lost, late) if lost >= 1.0 else None
                    continue
                asked = self.link_time()
                data = await src.read(min(cfg.read_bytes, room))
                if not data:
                    break
                now = self.link_time()
                if stall is not None and now - asked <= _READY_READ_S:  # the sender's bytes were waiting
                    self._stalled(upstream, *stall)
                stall = None
                if upstream:
                    self.stats.offered_up += len(data)
                else:
                    self.stats.offered_down += len(data)
                ends, times = link.enqueue_segments(now, len(data))
                start = 0
                for end, at in zip(ends, times, strict=True):
                    queue.append((at, data[start:end]))
                    start = end
                ready.set()
        except (ConnectionError, OSError):
            pass
        finally:
            queue.append((-math.inf, None))  # end of stream, after everything already queued
            ready.set()
        await writer

    def _stalled(self, upstream: bool, lost: float, late: float) -> None:
        """Count a host stall that let the queue run dry while the sender had bytes waiting; warn about it."""
        st = self.stats
        st.stalls += 1
        if upstream:
            st.stall_lost_up += int(lost)
        else:
            st.stall_lost_down += int(lost)
        now = self.link_time()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "shaping proxy: the host stalled %.0f ms with the %s queue full, longer than the queue takes to drain: "
                "%d B of link capacity lost (%d stalls so far, %d B uplink and %d B downlink in all)",
                late * 1000.0,
                "uplink" if upstream else "downlink",
                int(lost),
                st.stalls,
                st.stall_lost_up,
                st.stall_lost_down,
            )

    async def _release(
        self,
        queue: deque[tuple[float, bytes | None]],
        ready: asyncio.Event,
        dst: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        try:
            while True:
                if not queue:
                    ready.clear()
                    await ready.wait()
                    continue
                at, data = queue[0]
                if data is None:
                    queue.popleft()
                    if dst.can_write_eof() and not dst.is_closing():
                        dst.write_eof()
                    return
                delay = at - self.link_time()
                if delay > _HALF_TICK:
                    await asyncio.sleep(delay - _HALF_TICK)
                    continue
                due = self.link_time() + _HALF_TICK
                parts = []
                while queue and queue[0][1] is not None and queue[0][0] <= due:
                    part = queue.popleft()[1]
                    assert part is not None
                    parts.append(part)
                blob = b"".join(parts)
                if upstream:
                    self.stats.bytes_up += len(blob)
                else:
                    self.stats.bytes_down += len(blob)
                dst.write(blob)
                await dst.drain()
        except (ConnectionError, OSError):
            return


def _refill_bytes(link: LinkDirection, segment_bytes: int) -> int:
    """The least room worth a read while the queue is full. Waiting for ``segment_bytes`` of room saves reads, but
    only while what is left in the queue covers the next instants (a timer fires up to a tick late): with a queue
    smaller than that, read as soon as any instant makes room, as the model's sender refills."""
    largest = link.trace.max_instant_bytes if link.trace is not None else 0.0
    if link.queue_bytes - segment_bytes >= 2.0 * largest:
        return max(1, segment_bytes)
    return 1


async def serve_forever(config: ProxyConfig) -> None:
    """Run a proxy until cancelled (the CLI's entry)."""
    async with ShapingProxy(config):
        await asyncio.Event().wait()


@contextlib.contextmanager
def proxy_in_thread(config: ProxyConfig, start_timeout_s: float = 10.0) -> Iterator[tuple[str, int]]:
    """Run a proxy on its own event loop in a background thread; yields its (host, port) and stops it on exit.
    For synchronous callers such as a ``grpc`` channel in a test."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        proxy = ShapingProxy(config)
        stop = asyncio.Event()
        box["stop"] = stop

        async def run() -> None:
            try:
                box["address"] = await proxy.start()
            except BaseException as exc:
                box["error"] = exc
                started.set()
                return
            started.set()
            await stop.wait()
            await proxy.stop()

        try:
            loop.run_until_complete(run())
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="slimsplit-proxy", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s):
        raise Unavailable("the shaping proxy did not start in time")
    if "error" in box:
        thread.join()
        raise Unavailable(f"the shaping proxy could not start: {box['error']}") from box["error"]
    try:
        yield box["address"]
    finally:
        loop: asyncio.AbstractEventLoop = box["loop"]
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10.0)


__all__ = ["ProxyConfig", "ProxyStats", "ShapingProxy", "proxy_in_thread", "serve_forever"]
