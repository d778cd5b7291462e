"""The shaping TCP proxy: bytes intact both ways, delayed as the trace says, bounded queue, clean stop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest

from slimsplit.link.proxy import ProxyConfig, ShapingProxy, proxy_in_thread
from slimsplit.link.shaping import LinkConfig, LinkDirection
from slimsplit.link.trace import Trace, parse_mahimahi

TOL = 0.002  # the proxy releases up to half a millisecond early (timer rounding); allow a little more


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


class Sink:
    """Upstream server: records (link time, bytes) of everything it receives; optionally echoes it back."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.received: list[tuple[float, bytes]] = []
        self.clock: Callable[[], float] = lambda: 0.0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received.append((self.clock(), data))
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _roundtrip(link: LinkConfig, payload: bytes) -> bytes:
    sink = Sink(echo=True)
    up = await sink.start()
    async with ShapingProxy(ProxyConfig(upstream=up, link=link)) as proxy:
        assert proxy.address is not None
        reader, writer = await asyncio.open_connection(*proxy.address)
        got = bytearray()

        async def collect() -> None:
            while len(got) < len(payload):
                chunk = await reader.read(65536)
                if not chunk:
                    return
                got.extend(chunk)

        collector = asyncio.ensure_future(collect())
        writer.write(payload)
        await writer.drain()
        await collector
        writer.close()
        assert proxy.stats.bytes_up == len(payload) and proxy.stats.bytes_down == len(payload)
    await sink.stop()
    return bytes(got)


def test_bytes_pass_intact_both_ways() -> None:
    payload = os.urandom(300_000)
    link = LinkConfig(uplink=Trace.constant(80e6), downlink=Trace.constant(40e6), delay_ms=2.0)

    async def main() -> None:
        got = await _roundtrip(link, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    run(main())


def test_unshaped_proxy_is_transparent() -> None:
    payload = os.urandom(50_000)

    async def main() -> None:
        assert await _roundtrip(LinkConfig(), payload) == payload

    run(main())


def test_bytes_arrive_no_earlier_than_the_trace_allows() -> None:
    # opportunities only from 300 ms on, then one 1500-byte packet every 10 ms; 20 ms propagation delay
    trace = parse_mahimahi("".join(f"{t}\n" for t in range(300, 2001, 10)), "late-start.up")
    link = LinkConfig(uplink=trace, delay_ms=20.0)
    payload = os.urandom(15_000)  # ten packets

    async def main() -> None:
        sink = Sink(echo=False)
        up = await sink.start()
        async with ShapingProxy(ProxyConfig(upstream=up, link=link)) as proxy:
            sink.clock = proxy.link_time
            assert proxy.address is not None
            _, writer = await asyncio.open_connection(*proxy.address)
            t_send = proxy.link_time()
            writer.write(payload)
            await writer.drain()
            while sum(len(d) for _, d in sink.received) < len(payload):
                await asyncio.sleep(0.01)
            writer.close()
        await sink.stop()
        assert b"".join(d for _, d in sink.received) == payload
        model = LinkDirection(trace, 0.020)
        expected_last = model.enqueue(t_send, len(payload))  # 300 + 9 x 10 ms, + 20 ms
        assert expected_last >= 0.40
        first_at, _ = sink.received[0]
        last_at, _ = sink.received[-1]
        assert first_at >= 0.300 + 0.020 - TOL  # nothing before the first opportunity + delay
        assert last_at >= expected_last - TOL
        assert last_at < expected_last + 1.0  # and not absurdly late

    run(main())


def test_queue_bound_applies_back_pressure() -> None:
    link = LinkConfig(uplink=Trace.constant(2e6), queue_bytes=6000)
    payload = os.urandom(60_000)  # 240 ms at 2 Mbit/s

    async def main() -> None:
        sink = Sink(echo=False)
        up = await sink.start()
        async with ShapingProxy(ProxyConfig(upstream=up, link=link, read_bytes=4096)) as proxy:
            assert proxy.address is not None
            _, writer = await asyncio.open_connection(*proxy.address)
            writer.write(payload)
            peak = 0.0
            while sum(len(d) for _, d in sink.received) < len(payload):
                peak = max(peak, proxy._up.backlog(proxy.link_time()))
                await asyncio.sleep(0.002)
            writer.close()
        await sink.stop()
        assert peak <= link.queue_bytes
        assert b"".join(d for _, d in sink.received) == payload

    run(main())


def test_a_host_stall_that_empties_the_queue_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    # 2 Mbit/s = 250 B per ms; the 6000-B queue drains in 24 ms. The event loop is blocked for 200 ms while the
    # sender has bytes waiting: once the queue is empty (within 24 ms, less once it was refilled) the rest of the
    # 200 ms is lost, about 176-200 ms x 250 B = 44,000-50,000 B
    link = LinkConfig(uplink=Trace.constant(2e6), queue_bytes=6000)
    payload = os.urandom(100_000)  # 400 ms of the link
    before: list[int] = []

    async def main() -> tuple[ShapingProxy, float]:
        sink = Sink(echo=False)
        up = await sink.start()
        async with ShapingProxy(ProxyConfig(upstream=up, link=link)) as proxy:
            assert proxy.address is not None
            _, writer = await asyncio.open_connection(*proxy.address)
            writer.write(payload)
            await asyncio.sleep(0.1)
            before.extend((proxy.stats.stalls, proxy.stats.stall_lost_up))  # a busy host may have stalled already
            time.sleep(0.2)  # the host stalls
            while sum(len(d) for _, d in sink.received) < len(payload):
                await asyncio.sleep(0.005)
            elapsed = proxy.link_time()
            writer.close()
        await sink.stop()
        assert b"".join(d for _, d in sink.received) == payload
        return proxy, elapsed

    with caplog.at_level(logging.WARNING, logger="slimsplit.link.proxy"):
        proxy, elapsed = asyncio.run(asyncio.wait_for(main(), 30))
    st = proxy.stats
    assert st.stalls > before[0] and st.stall_lost_down == 0
    lost = st.stall_lost_up - before[1]
    assert 35_000 <= lost <= 250 * elapsed * 1000.0, (lost, elapsed)  # this stall, and no more than the link offered
    assert any("B of link capacity lost" in r.getMessage() for r in caplog.records)
    assert "host stalls lost" in st.summary()


def test_a_queue_smaller_than_an_instant_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    trace = parse_mahimahi("10\n10\n", "burst.up")  # 3000 B at once every 10 ms

    async def main() -> None:
        async with ShapingProxy(ProxyConfig(upstream=("127.0.0.1", 1), link=LinkConfig(trace, queue_bytes=1500))):
            pass

    with caplog.at_level(logging.WARNING, logger="slimsplit.link.proxy"):
        run(main())
    assert "at most 50% of the trace's capacity" in caplog.text


def test_stop_closes_open_connections() -> None:
    async def main() -> None:
        sink = Sink(echo=True)
        up = await sink.start()
        proxy = ShapingProxy(ProxyConfig(upstream=up, link=LinkConfig(uplink=Trace.constant(1e6))))
        addr = await proxy.start()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"hello")
        await writer.drain()
        assert await reader.readexactly(5) == b"hello"
        await asyncio.wait_for(proxy.stop(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the client sees the connection end
        assert proxy.stats.active == 0
        writer.close()
        await sink.stop()

    run(main())


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[:2]  # bound, never listening: connections are refused

        async def main() -> None:
            async with ShapingProxy(ProxyConfig(upstream=(dead[0], dead[1]))) as proxy:
                assert proxy.address is not None
                reader, writer = await asyncio.open_connection(*proxy.address)
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()

        run(main())


def test_connection_limit() -> None:
    async def main() -> None:
        sink = Sink(echo=True)
        up = await sink.start()
        async with ShapingProxy(ProxyConfig(upstream=up, max_connections=1)) as proxy:
            assert proxy.address is not None
            r1, w1 = await asyncio.open_connection(*proxy.address)
            w1.write(b"x")
            assert await r1.readexactly(1) == b"x"
            r2, w2 = await asyncio.open_connection(*proxy.address)
            assert await asyncio.wait_for(r2.read(), 5) == b""
            assert proxy.stats.refused == 1
            w1.close()
            w2.close()
        await sink.stop()

    run(main())


@contextmanager
def threaded_echo() -> Iterator[tuple[str, int]]:
    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_proxy_in_thread_for_synchronous_clients() -> None:
    payload = os.urandom(20_000)
    with threaded_echo() as up:
        cfg = ProxyConfig(upstream=up, link=LinkConfig(uplink=Trace.constant(20e6), delay_ms=1.0))
        with proxy_in_thread(cfg) as addr, socket.create_connection(addr, timeout=10) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk
                got += chunk
    assert got == payload


def test_proxy_config_validation() -> None:
    from slimsplit.errors import ConfigError

    with pytest.raises(ConfigError):
        ProxyConfig(upstream=("127.0.0.1", 1), segment_bytes=0)
