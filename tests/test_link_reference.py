"""The link model against delivery times computed without it: by hand, and by a plain reference of Mahimahi's link.

``tests/test_link_agreement.py`` compares the simulator with the proxy, but both use :mod:`slimsplit.link.shaping`,
so a wrong model would pass it. Here the expected times come from outside that module: small cases worked out by
hand (the reasoning beside the numbers) and :func:`mahimahi_reference`, a message-by-message loop over the trace's
opportunities that shares no code with :mod:`slimsplit.link`. Both are compared with the model
(:class:`~slimsplit.link.shaping.LinkDirection`), with the simulator (:func:`~slimsplit.evaluation.sim.simulate`) and
with the real proxy on loopback.

Send times lie between trace milliseconds: at an exact instant the model lets the bytes use it, Mahimahi (whose
clock counts whole milliseconds) does not.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence

import pytest
from control_helpers import FixedMode

from slimsplit.control.base import ModeOption
from slimsplit.evaluation.sim import SimConfig, simulate
from slimsplit.link.proxy import ProxyConfig, ShapingProxy
from slimsplit.link.shaping import LinkConfig, LinkDirection
from slimsplit.link.trace import Trace, parse_mahimahi

PACKET = 1500  # bytes per trace line (Mahimahi)


def mahimahi_reference(
    lines_ms: Sequence[int], sends: Sequence[tuple[float, int]], queue_bytes: float = math.inf
) -> list[float]:
    """When each message (send time in ms, bytes; in send order) is delivered, in ms, by Mahimahi's link.

    Each trace line is an opportunity to deliver 1500 bytes at that millisecond; the trace repeats every last-line
    milliseconds. Messages wait in one FIFO; an opportunity carries bytes of the messages sent before it, oldest
    first (the tail of one and the head of the next), and a message is delivered at the opportunity that carries its
    last byte. The queue holds at most ``queue_bytes``: what does not fit waits at the sender, in order, and moves
    into the queue after each instant's opportunities, as far as they made room."""
    period = lines_ms[-1]
    done = [math.nan] * len(sends)
    queue: deque[list[float]] = deque()  # [message, bytes not yet carried] in the bottleneck
    held: deque[list[float]] = deque()  # [message, bytes not yet in the queue] at the sender
    queued = 0.0
    arrived = 0

    def admit() -> None:
        nonlocal queued
        while held and queued < queue_bytes:
            k = min(held[0][1], queue_bytes - queued)
            if queue and queue[-1][0] == held[0][0]:
                queue[-1][1] += k
            else:
                queue.append([held[0][0], k])
            queued += k
            held[0][1] -= k
            if held[0][1] == 0:
                held.popleft()

    # (instant, opportunities) in time order; a period's last line and the next period's lines at 0 are one instant
    lines = (cycle * period + ms for cycle in range(100_000) for ms in lines_ms)
    for at, group in itertools.groupby(lines):
        count = len(list(group))
        while arrived < len(sends) and sends[arrived][0] < at:
            held.append([arrived, sends[arrived][1]])
            arrived += 1
            admit()
        for _ in range(count):
            budget: float = PACKET
            while budget and queue:
                take = min(budget, queue[0][1])
                budget -= take
                queued -= take
                queue[0][1] -= take
                if queue[0][1] == 0:
                    message = int(queue.popleft()[0])
                    if not (held and held[0][0] == message):  # its last byte is carried
                        done[message] = float(at)
        admit()
        if arrived == len(sends) and not queue and not held:
            return done
    raise AssertionError("the reference did not finish")


def model_times(lines_ms: Sequence[int], sends: Sequence[tuple[float, int]], queue_bytes: int = 10**12) -> list[float]:
    """The same messages through :class:`LinkDirection`, in ms."""
    d = LinkDirection(Trace.from_timestamps(lines_ms), queue_bytes=queue_bytes)
    return [d.enqueue(t / 1000.0, n) * 1000.0 for t, n in sends]


# ---------------------------------------------------------------------------------------------- hand-computed

SMALL = [10, 10, 20, 40]  # 3000 B at 10 ms, 1500 B at 20 ms, 1500 B at 40 ms; repeats every 40 ms


@pytest.mark.parametrize(
    ("sends", "queue_bytes", "expected"),
    [
        # 1000 B at 0.5 ms: the first 10-ms opportunity carries it -> 10. 2500 B at 1.5 ms: the rest of that
        # opportunity (500 B) and the second one at 10 ms (1500 B) carry 2000, the 20-ms one the last 500 -> 20
        ([(0.5, 1000), (1.5, 2500)], math.inf, [10.0, 20.0]),
        # 3500 B at 0.5 ms end 500 B into the 20-ms opportunity -> 20; 100 B at 30.5 ms: the rest of the 20-ms
        # opportunity is past and lost, the next is 40 -> 40; 1500 B at 41.5 ms: 40 is past, the trace repeats,
        # the next instant is 40 + 10 -> 50
        ([(0.5, 3500), (30.5, 100), (41.5, 1500)], math.inf, [20.0, 40.0, 50.0]),
        # 6000 B at 0.5 ms through a 1500-B queue: 1500 enter, the rest waits at the sender. 10 ms carries those
        # 1500 (its other 1500 B find the queue empty: lost); after each instant the sender refills 1500 B: they
        # leave at 20, 40 and 50 ms (the next period's 10 ms) -> 50. An unbounded queue: 40
        ([(0.5, 6000)], 1500, [50.0]),
        ([(0.5, 6000)], math.inf, [40.0]),
        # then 100 B at 30.5 ms wait behind the held bytes; the last 1500 of those enter after 40 ms, 50 ms carries
        # them, the 100 B enter after it and go at 60 ms (the next period's 20)
        ([(0.5, 6000), (30.5, 100)], 1500, [50.0, 60.0]),
        # a 3000-B queue holds the biggest instant: nothing is lost, 6000 B leave by 40 ms as in an unbounded one
        ([(0.5, 6000)], 3000, [40.0]),
    ],
)
def test_hand_computed_cases(sends: list[tuple[float, int]], queue_bytes: float, expected: list[float]) -> None:
    assert mahimahi_reference(SMALL, sends, queue_bytes) == expected
    q = 10**12 if math.isinf(queue_bytes) else int(queue_bytes)
    assert model_times(SMALL, sends, q) == pytest.approx(expected)


def test_two_packets_per_instant_through_a_one_packet_queue_is_half_the_capacity() -> None:
    # two 1500-B opportunities every 10 ms (2.4 Mbit/s); 240,000 B given at 0.5 ms. Unbounded queue: 3000 B per
    # instant, 80 instants -> 800 ms. A 1500-B queue holds one packet when an instant comes: 1500 B per instant,
    # 160 instants -> 1600 ms, half the capacity (Mahimahi's link with a 1500-byte drop-tail queue does the same)
    lines = [t for t in range(10, 1001, 10) for _ in range(2)]
    assert mahimahi_reference(lines, [(0.5, 240_000)]) == [800.0]
    assert mahimahi_reference(lines, [(0.5, 240_000)], 1500) == [1600.0]
    assert model_times(lines, [(0.5, 240_000)]) == pytest.approx([800.0])
    assert model_times(lines, [(0.5, 240_000)], 1500) == pytest.approx([1600.0])


# ---------------------------------------------------------------------------------------------- random cases


def random_trace(rng: random.Random) -> list[int]:
    """Up to 12 instants in the first 60 ms, 1-4 opportunities each (some periods end on an instant of their own)."""
    times = sorted(rng.sample(range(0, 60), rng.randint(1, 12)))
    lines = [t for t in times for _ in range(rng.randint(1, 4))]
    if lines[-1] == 0 or rng.random() < 0.5:
        lines.append(lines[-1] + rng.randint(1, 20))
    return lines


@pytest.mark.parametrize("seed", range(40))
def test_the_model_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    lines = random_trace(rng)
    t = 0.0
    sends = []
    for _ in range(rng.randint(1, 25)):
        t = math.floor(t + rng.expovariate(1 / 15.0)) + 0.5  # between milliseconds, non-decreasing
        sends.append((t, rng.choice([1, 100, 1400, 1500, 1501, 3000]) if rng.random() < 0.5 else rng.randint(1, 9000)))
    for queue_bytes in (math.inf, 1500, 2000, 4500):
        q = 10**12 if math.isinf(queue_bytes) else int(queue_bytes)
        expected = mahimahi_reference(lines, sends, queue_bytes)
        assert model_times(lines, sends, q) == pytest.approx(expected), (lines, sends, queue_bytes)


# ---------------------------------------------------------------------------------------------- simulator


@pytest.mark.parametrize("queue_bytes", [10**12, 1500])
def test_the_simulator_matches_the_reference(queue_bytes: int) -> None:
    # one 2600-B frame every 40 ms, encoded in 1.3 ms (handed over at 1.7, 41.7, ... ms: between milliseconds); no
    # server time, replies unshaped and undelayed, so a frame's reply arrives when its last uplink byte does
    rng = random.Random(7)
    lines = sorted(t for t in rng.sample(range(1, 200), 25) for _ in range(rng.randint(1, 3)))
    mode = ModeOption("m", 1, 8, 0.9, 2600.0, 1.3, 0.0)
    cfg = SimConfig(fps=25.0, deadline_ms=10_000.0, duration_s=2.0, max_in_flight=64, t0=0.0004)
    link = LinkConfig(uplink=Trace.from_timestamps(lines), queue_bytes=queue_bytes)
    records = simulate(FixedMode("m"), [mode], link, cfg).records
    assert len(records) == 50 and all(r.ok and r.sent_s is not None for r in records)
    sends = [(r.sent_s * 1000.0, r.payload_bytes) for r in records if r.sent_s is not None]
    arrived = [r.t_s * 1000.0 + r.latency_ms for r in records]
    expected = mahimahi_reference(lines, sends, math.inf if queue_bytes == 10**12 else queue_bytes)
    assert arrived == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------- the real proxy


async def _through_proxy(
    lines: Sequence[int], writes: Sequence[tuple[float, Sequence[int]]], queue_bytes: int
) -> tuple[list[tuple[float, int]], list[float], float]:
    """Write each group of messages (link time in ms, sizes) in one write at that time through a real proxy; return
    the messages (actual send time, bytes), when the upstream server had each one's last byte (ms), and the worst
    lateness of the event loop meanwhile (ms: how far a busy host may have delayed a release)."""
    loop = asyncio.get_running_loop()
    received: list[tuple[float, int]] = []  # (link time ms, bytes) as the upstream server reads them
    clock = [lambda: 0.0]
    lag = [0.0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append((clock[0](), len(data)))
        writer.close()

    async def watch() -> None:
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.002)
            lag[0] = max(lag[0], (loop.time() - t0 - 0.002) * 1000.0)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[:2]
    link = LinkConfig(uplink=parse_mahimahi("".join(f"{t}\n" for t in lines)), queue_bytes=queue_bytes)
    sends: list[tuple[float, int]] = []
    watcher = asyncio.ensure_future(watch())
    async with ShapingProxy(ProxyConfig(upstream=(str(upstream[0]), int(upstream[1])), link=link)) as proxy:
        clock[0] = lambda: proxy.link_time() * 1000.0
        assert proxy.address is not None
        _, w = await asyncio.open_connection(*proxy.address)
        for at_ms, sizes in writes:
            await asyncio.sleep(max(0.0, at_ms / 1000.0 - proxy.link_time()))
            now = proxy.link_time() * 1000.0
            sends.extend((now, n) for n in sizes)
            w.write(b"x" * sum(sizes))
            await w.drain()
        total = sum(n for _, n in sends)
        while sum(n for _, n in received) < total:
            await asyncio.sleep(0.002)
        w.close()
    watcher.cancel()
    server.close()
    await server.wait_closed()
    done, got, ends = [], 0, 0
    it = iter(received)
    for _, n in sends:
        ends += n
        while got < ends:
            at, k = next(it)
            got += k
        done.append(at)
    return sends, done, lag[0]


def check_proxy(lines: Sequence[int], writes: Sequence[tuple[float, Sequence[int]]], q: int) -> list[float]:
    """Run :func:`_through_proxy` and compare each message's arrival with the reference's; returns the reference's
    times. A run on a host too busy to tell (a send time near an instant, or the event loop held up by more than the
    gap between instants) is run again, up to three times."""
    for _ in range(3):
        sends, done, lag = asyncio.run(asyncio.wait_for(_through_proxy(lines, writes, q), 30))
        # a send near an instant could fall on either side of it; instants here are >= 50 ms apart
        clear = all(min(abs(t - x) for x in range(0, 2000, 50)) > 3.0 for t, _ in sends)
        if clear and lag < 30.0:
            break
    else:
        pytest.skip(f"the host is too busy to time the proxy (event loop {lag:.0f} ms late)")
    expected = mahimahi_reference(lines, sends, q)
    for got, want in zip(done, expected, strict=True):
        # the proxy releases up to half a millisecond early; timers and loopback add a few ms, a busy host its lag
        # (instants are >= 50 ms apart: a wrong model is off by 50 ms or more)
        assert want - 1.0 <= got <= want + 5.0 + lag, (done, expected, lag)
    return expected


def test_the_proxy_matches_the_reference() -> None:
    # two opportunities at 100 ms, one at 150, three at 300, one at 400; repeats every 400 ms.
    #  20 ms: 1400 B -> 100 (the first 100-ms opportunity);  30 ms: 1000 B -> 100 (100 B of the first, 900 of the
    #  second; 600 B lost); 120 ms: 4000 B -> 300 (1500 at 150, 2500 at 300); 160 ms: 500 B -> 300 (the rest of the
    #  second 300-ms opportunity); 310 ms: 100 B -> 400; 320 ms, one write: 1400 B -> 400 (the rest of the 400-ms
    #  opportunity: it must not wait for the bytes after it) and 3000 B -> 500 (the next period's 100 ms)
    lines = [100, 100, 150, 300, 300, 300, 400]
    writes = [(20.0, [1400]), (30.0, [1000]), (120.0, [4000]), (160.0, [500]), (310.0, [100]), (320.0, [1400, 3000])]
    assert check_proxy(lines, writes, 10**6) == [100.0, 100.0, 300.0, 300.0, 400.0, 400.0, 500.0]


@pytest.mark.parametrize(("queue_bytes", "expected"), [(1500, [300.0, 350.0]), (3000, [150.0, 200.0])])
def test_the_proxy_queue_bound_matches_the_reference(queue_bytes: int, expected: list[float]) -> None:
    # two opportunities every 50 ms (3000 B); 9000 B at 10 ms, 1000 B at 60 ms. A 1500-B queue: 1500 B per instant,
    # the 9000 B by 300 ms, the 1000 B after them at 350. A 3000-B queue loses nothing: 150 and 200 ms
    lines = [t for t in range(50, 201, 50) for _ in range(2)]
    assert check_proxy(lines, [(10.0, [9000]), (60.0, [1000])], queue_bytes) == expected
