"""A server outage seen from the edge (issue 15, item 9): a real server on 127.0.0.1 is stopped and restarted on the
same port while the edge streams frames.

* The stream reopens as soon as the channel is connected again, not when the rest of its backoff has passed (the
  issue's run: a 3.6 s outage cost 6.6 s of frames, the edge waiting out a 3.2 s backoff after the server was back).
* No frame is encoded for nothing while the transport is down: an unpaced source waits (the issue's ``--fps 0`` run
  encoded 8,959 of 20,000 frames only to fail them in microseconds during a ~4 s outage), a paced one skips its
  frames without encoding them (``SKIPPED``, reason ``not connected``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
from control_helpers import FixedMode

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ChannelConfig, ClientConfig, ReconnectPolicy
from slimsplit.edge.pipeline import NOT_CONNECTED, PipelineConfig, RunReport, run_frames
from slimsplit.edge.run import mode_options
from slimsplit.edge.sources import SourceFrame
from slimsplit.edge.transport import Outcome
from slimsplit.records import FrameRecord
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb

OUTAGE_S = 1.5
#: the channel re-dials a server that went away at most this far apart (ChannelConfig's default, 1 s, plus gRPC's
#: 20 % jitter), so a server that is back answers within this (and the stream's own backoff does not add to it)
REDIAL_S = 1.2 + 0.3


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


def start(bundle: Bundle, port: int = 0) -> ServerThread:
    config = ServerConfig(models=(bundle.root,), grpc=GrpcConfig(port=port, grace_s=0.0), log_level="error")
    return ServerThread(config, backend=NullBackend()).start()


@dataclass(frozen=True)
class _Encoded:
    payload: bytes
    mode: str
    encoder_ms: float = 0.0
    codec_ms: float = 0.0


class CountingEncoder:
    """A real payload of one mode (the server decodes it); the instant of every call."""

    def __init__(self, bundle: Bundle, mode: str) -> None:
        m = bundle.manifest
        spec = m.mode(mode)
        self.payload = encode_features(np.ones((spec.width, m.feature.height, m.feature.width), np.float32), spec.bits)
        self.mode = mode
        self.calls: list[float] = []

    def set_mode(self, name: str) -> None:
        self.mode = name

    def encode(self, image: npt.NDArray[np.uint8]) -> _Encoded:
        self.calls.append(time.perf_counter())
        return _Encoded(self.payload, self.mode)


@dataclass
class Outage:
    """Stops ``server`` ``after_s`` into the run and starts a new one on its port ``OUTAGE_S`` later."""

    server: ServerThread
    bundle: Bundle
    after_s: float = 0.6
    stopped: float = 0.0
    back: float = 0.0
    servers: list[ServerThread] = field(default_factory=list)

    def run(self) -> None:
        time.sleep(self.after_s)
        port = self.server.port
        self.server.stop(0.0)
        self.stopped = time.perf_counter()
        time.sleep(OUTAGE_S)
        self.servers.append(start(self.bundle, port))
        self.back = time.perf_counter()

    def close(self) -> None:
        for srv in [self.server, *self.servers]:
            srv.stop(0.0)


def frames_for(seconds: float) -> Iterator[SourceFrame]:
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        yield SourceFrame(i, np.zeros((2, 2, 3), np.uint8), label=0)
        i += 1


def run_through_outage(
    bundle: Bundle, fps: float
) -> tuple[RunReport, list[tuple[float, FrameRecord]], Outage, list[float]]:
    mode = bundle.manifest.modes[-1].name
    outage = Outage(start(bundle), bundle)
    encoder = CountingEncoder(bundle, mode)
    events: list[tuple[float, FrameRecord]] = []
    config = ClientConfig(target=outage.server.address, deadline_ms=1000.0)
    pipeline = PipelineConfig(model=bundle.manifest.name, fps=fps)

    async def go() -> RunReport:
        async with EdgeClient(config) as client:
            await client.wait_ready()
            threading.Thread(target=outage.run, daemon=True).start()
            return await run_frames(
                client,
                encoder,
                FixedMode(mode),
                mode_options(bundle.manifest, strict=False),
                frames_for(outage.after_s + OUTAGE_S + REDIAL_S + 0.8),
                pipeline,
                lambda r: events.append((time.perf_counter(), r)),
            )

    try:
        report = asyncio.run(go())
    finally:
        outage.close()
    return report, events, outage, encoder.calls


def _first_ok_after(events: list[tuple[float, FrameRecord]], t: float) -> float:
    return min(at for at, r in events if r.ok and at > t)


def test_an_unpaced_source_waits_out_an_outage_instead_of_encoding_frames_to_fail(bundle: Bundle) -> None:
    report, events, outage, calls = run_through_outage(bundle, fps=0.0)
    back_at = _first_ok_after(events, outage.stopped)
    encoded = sum(1 for t in calls if outage.stopped <= t < back_at)
    failed = [r for at, r in events if outage.stopped <= at < back_at and not r.ok]
    # one frame per reconnection attempt the backoff allows (0.1, 0.2, 0.4, 0.8 s apart), where the old edge encoded
    # and failed frames as fast as it could (thousands in 1.5 s)
    assert encoded <= 12, f"{encoded} frames encoded while the server was down"
    assert all(r.status == "UNAVAILABLE" and r.error for r in failed)
    assert not any(r.skipped for r in report.results)  # an unpaced source waits, it does not skip
    assert back_at - outage.back < REDIAL_S, f"answers resumed {back_at - outage.back:.2f} s after the server was back"
    assert report.results[-1].ok


def test_a_paced_source_skips_its_frames_without_encoding_them_while_disconnected(bundle: Bundle) -> None:
    report, events, outage, calls = run_through_outage(bundle, fps=40.0)
    back_at = _first_ok_after(events, outage.stopped)
    encoded = sum(1 for t in calls if outage.stopped <= t < back_at)
    during = [r for at, r in events if outage.stopped <= at < back_at]
    skipped = [r for r in during if r.skipped]
    assert len(skipped) >= 0.6 * len(during) and all(r.reason == NOT_CONNECTED and not r.mode for r in skipped)
    assert encoded <= 12, f"{encoded} frames encoded while the server was down ({len(during)} frames captured)"
    assert back_at - outage.back < REDIAL_S, f"answers resumed {back_at - outage.back:.2f} s after the server was back"
    assert sum(r.ok for r in report.results) > 0.3 * len(report.results)  # the share the outage leaves (load-bound)


def test_the_stream_reopens_once_the_channel_is_ready_not_when_its_backoff_ends(bundle: Bundle) -> None:
    """A backoff of 3 s would keep the stream closed 3 s after the break; the channel's connectivity reopens it as
    soon as the server is back."""
    mode = bundle.manifest.modes[-1].name
    payload = CountingEncoder(bundle, mode).payload
    first = start(bundle)
    port = first.port
    servers = [first]
    policy = ReconnectPolicy(initial_s=3.0, max_s=3.0, jitter=0.0)
    channel = ChannelConfig(initial_reconnect_backoff_ms=100, max_reconnect_backoff_ms=200)

    async def go() -> tuple[float, float, list[Outcome]]:
        async with EdgeClient(ClientConfig(target=first.address, reconnect=policy, channel=channel)) as client:
            stream = client.open_stream(seed=1)
            outcomes: list[Outcome] = []

            async def send() -> Outcome:
                got: list[Outcome] = []
                msg = client.make_frame(mode=mode, payload=payload, model=bundle.manifest.name)
                await stream.submit(msg, 2.0, got.append)
                assert await stream.drain(5.0)
                outcomes.append(got[0])
                return got[0]

            assert (await send()).ok
            await asyncio.to_thread(first.stop, 0.0)
            assert not (await send()).ok  # the break: the backoff (3 s) starts
            assert not stream.ready
            await asyncio.sleep(0.3)
            servers.append(await asyncio.to_thread(start, bundle, port))
            back = time.perf_counter()
            assert await stream.wait_ready(5.0)
            ready = time.perf_counter()
            assert (await send()).ok
            await stream.aclose()
            return back, ready, outcomes

    try:
        back, ready, outcomes = asyncio.run(go())
    finally:
        for srv in servers:
            srv.stop(0.0)
    assert ready - back < 1.0, f"the stream was ready {ready - back:.2f} s after the server was back (backoff 3 s)"
    assert [o.ok for o in outcomes] == [True, False, True]


def test_without_a_channel_to_watch_the_backoff_still_decides(bundle: Bundle) -> None:
    """A transport given no channel (as before) is ready again when its backoff has passed, and not sooner."""
    srv = start(bundle)
    address = srv.address
    srv.stop(0.0)

    async def go() -> tuple[bool, bool, float]:
        policy = ReconnectPolicy(initial_s=0.3, max_s=0.3, jitter=0.0)
        async with EdgeClient(ClientConfig(target=address, reconnect=policy)) as client:
            from slimsplit.edge.grpc_transport import StreamTransport

            stream = StreamTransport(client.stub, policy, target=address)
            assert stream.ready  # nothing has failed yet
            got: list[Outcome] = []
            await stream.submit(pb.FeatureFrame(frame_id=1), 2.0, got.append)
            assert await stream.drain(5.0)
            assert got and not got[0].ok
            t0 = time.perf_counter()
            before = stream.ready
            timed_out = await stream.wait_ready(0.05)
            waited = await stream.wait_ready(2.0)
            await stream.aclose()
            return before or timed_out, waited, time.perf_counter() - t0

    early, waited, took = asyncio.run(go())
    assert not early and waited
    assert 0.2 < took < 1.0
