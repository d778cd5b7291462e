"""Servers that come and go (issue 16, section 3): several replicas behind one ``--server``, one killed mid-run, and
the only server killed and restarted on its port.

The servers are real ``python -m slimsplit.server.cli`` processes on loopback (``--backend null``), killed with
SIGKILL. Every frame must be accounted for (one record per frame: answered, skipped, or failed with a reason), a
frame in flight on a replica that dies is re-sent once on another, and a server that comes back is used again
within one re-dial period of the channel.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from slimsplit.apps.loadtest.server_process import free_port
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.control.base import Controller, Decision, FrameFeedback
from slimsplit.edge.channel import service_config
from slimsplit.edge.cli_common import AddressesAction
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import (
    ChannelConfig,
    ClientConfig,
    ServerSettings,
    balanced,
    first_address,
    parse_targets,
    replica_count,
)
from slimsplit.edge.display import TickerDisplay, format_summary
from slimsplit.edge.pipeline import NOT_CONNECTED, PipelineConfig, RunReport, run_frames
from slimsplit.edge.replicas import ReplicaTransport
from slimsplit.edge.run import mode_options
from slimsplit.edge.sources import SourceFrame
from slimsplit.edge.transport import Done, FrameTransport, Outcome
from slimsplit.errors import ConfigError, Unavailable
from slimsplit.records import OK, SKIPPED, FrameRecord
from slimsplit.v1 import slimsplit_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0  # a server process's start on a loaded machine (imports, the bundle)
MODE = "w8b4"


# ----------------------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "target", "first"),
    [
        ("127.0.0.1:5001", "127.0.0.1:5001", "127.0.0.1:5001"),
        ("127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002", "127.0.0.1:5001"),
        (" 127.0.0.2:5001 , 127.0.0.1 ", "ipv4:127.0.0.2:5001,127.0.0.1:50051", "127.0.0.2:5001"),
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002", "127.0.0.1:5001"),
        ("[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002", "[::1]:5001"),
        ("dns:///slimsplit.lan:5001", "dns:///slimsplit.lan:5001", "slimsplit.lan:5001"),
        ("dns:///slimsplit.lan", "dns:///slimsplit.lan:50051", "slimsplit.lan:50051"),
    ],
)
def test_several_addresses_become_one_balanced_target(text: str, target: str, first: str) -> None:
    assert parse_targets(text) == target
    assert balanced(target) == (target != "127.0.0.1:5001")
    assert first_address(target) == first  # what the TLS diagnosis and the certificate's name check look at


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1:5001,", "empty address"),
        ("127.0.0.1:5001,127.0.0.1:5001", "twice"),
        ("127.0.0.1:5001,[::1]:5002", "one family"),
        ("a.lan:5001,b.lan:5002", "dns:///"),
        ("dns:///a.lan:1,b.lan:2", "one host"),
        ("dns:///a.lan:99999", "outside"),
    ],
)
def test_bad_address_lists_are_refused_naming_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_targets(text)
    with pytest.raises(ConfigError, match="address"):
        ServerSettings(address=text)


def test_replicas_get_round_robin_and_one_stream_each() -> None:
    assert json.loads(service_config(ChannelConfig(), balance=True))["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "loadBalancingConfig" not in json.loads(service_config(ChannelConfig()))
    three = ClientConfig(target=parse_targets("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"))
    assert replica_count(three.target) == 3 and three.stream_count == 3
    assert ClientConfig(target="dns:///x.lan:1").stream_count == 2
    assert ClientConfig(target="127.0.0.1:1").stream_count == 1


def test_server_flag_repeats_and_the_first_replaces_the_default() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="127.0.0.1:50051", action=AddressesAction)
    assert p.parse_args([]).server == "127.0.0.1:50051"
    assert p.parse_args(["--server", "127.0.0.1:1"]).server == "127.0.0.1:1"
    args = p.parse_args(["--server", "127.0.0.1:1", "--server", "127.0.0.1:2,127.0.0.1:3"])
    assert parse_targets(args.server) == "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"


# ----------------------------------------------------------------------------------------------- re-sending (unit)


class _FakeStream(FrameTransport):
    """A transport that answers (or breaks with) what the test says, by hand."""

    def __init__(self) -> None:
        self.pending: dict[int, Done] = {}
        self.is_ready = True

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    @property
    def ready(self) -> bool:
        return self.is_ready

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        self.pending[frame.frame_id] = done

    def answer(self, fid: int) -> None:
        now = time.perf_counter()
        self.pending.pop(fid)(Outcome(fid, pb.Prediction(frame_id=fid), None, now, now, 1))

    def break_(self) -> None:
        self.is_ready = False
        now = time.perf_counter()
        for fid, done in list(self.pending.items()):
            done(Outcome(fid, None, Unavailable("stream broke with the frame in flight"), now, now, 1))
        self.pending.clear()

    async def drain(self, timeout_s: float | None = None) -> bool:
        return not self.pending

    async def aclose(self) -> None:
        return None


def test_a_frame_on_a_broken_stream_is_resent_once_on_another_and_reported_once() -> None:
    async def go() -> tuple[list[Outcome], ReplicaTransport, _FakeStream, _FakeStream]:
        a, b = _FakeStream(), _FakeStream()
        t = ReplicaTransport([a, b])
        got: list[Outcome] = []
        for fid in (1, 2, 3, 4):
            await t.submit(pb.FeatureFrame(frame_id=fid), 5.0, got.append)
        assert set(a.pending) == {1, 3} and set(b.pending) == {2, 4}  # round robin
        a.break_()  # frames 1 and 3 go to b
        await asyncio.sleep(0.01)
        assert set(b.pending) == {1, 2, 3, 4} and not got
        b.answer(1)
        b.answer(2)
        b.break_()  # 3 and 4: 3 was re-sent once already (reported); 4 waits for a stream that is ready
        await asyncio.sleep(0.01)
        a.is_ready = True
        await asyncio.sleep(0.05)  # the waiting re-send polls each transport's wait_ready
        assert set(a.pending) == {4}
        a.answer(4)
        await t.drain(1.0)
        await t.aclose()
        return got, t, a, b

    got, t, _, _ = asyncio.run(go())
    by_id = {o.frame_id: o for o in got}
    assert len(got) == 4 == len(by_id)  # every frame once
    assert by_id[1].ok and by_id[2].ok and by_id[4].ok
    assert not by_id[3].ok and "failed again" in by_id[3].message
    assert t.resent == 3 and t.resent_ok == 2 and t.in_flight == 0


def test_a_frame_is_not_resent_past_its_deadline() -> None:
    async def go() -> list[Outcome]:
        a, b = _FakeStream(), _FakeStream()
        t = ReplicaTransport([a, b])
        got: list[Outcome] = []
        await t.submit(pb.FeatureFrame(frame_id=1), 0.005, got.append)
        await asyncio.sleep(0.006)
        a.break_()
        await t.aclose()
        return got

    (outcome,) = asyncio.run(go())
    assert outcome.status == "UNAVAILABLE" and "not re-sent" in outcome.message


# ----------------------------------------------------------------------------------------------- real servers


@dataclass
class ServerProcess:
    """``python -m slimsplit.server.cli --backend null`` on a port with ``workers`` serving processes;
    ``serving_at``: when it said it serves."""

    port: int
    workers: int = 1
    proc: subprocess.Popen[str] | None = None
    serving_at: float | None = None
    lines: list[str] = field(default_factory=list)
    _serving: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self._serving.clear()
        self.serving_at = None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "edge", "server", "apps"))}
        cmd = [
            sys.executable,
            "-m",
            "slimsplit.server.cli",
            "--backend",
            "null",
            "--workers",
            str(self.workers),
            "--port",
            str(self.port),
        ]
        cmd += ["--grace", "0", "--log-level", "info"]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            if " serving " in line and not self._serving.is_set():
                self.serving_at = time.perf_counter()
                self._serving.set()

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        if not self._serving.wait(timeout_s):
            raise AssertionError(f"server on {self.address} did not start:\n{''.join(self.lines[-20:])}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (and reap) the process, if it runs."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for s in started:
        s.kill()


def _start(servers: list[ServerProcess], count: int, workers: int = 1) -> list[ServerProcess]:
    new = [ServerProcess(free_port(), workers).start() for _ in range(count)]
    servers.extend(new)
    for s in new:
        s.wait_serving()
    return new


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


@dataclass(frozen=True)
class _Encoded:
    payload: bytes
    mode: str
    encoder_ms: float = 0.0
    codec_ms: float = 0.0


class _Encoder:
    """A real payload of one mode (the server decodes it), without running the encoder."""

    def __init__(self, bundle: Bundle) -> None:
        m = bundle.manifest
        spec = m.mode(MODE)
        shape = (spec.width, m.feature.height, m.feature.width)
        self.payload = encode_features(np.ones(shape, np.float32), spec.bits)

    def set_mode(self, name: str) -> None:
        return None

    def encode(self, image: npt.NDArray[np.uint8]) -> _Encoded:
        return _Encoded(self.payload, MODE)


class _Fixed(Controller):
    name = "fixed-test"

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        return Decision(MODE, "fixed")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


def _frames(count: int) -> Iterator[SourceFrame]:
    image = np.zeros((64, 64, 3), np.uint8)
    for i in range(count):
        yield SourceFrame(i, image, None, name=f"f{i}")


async def _run(
    bundle: Bundle,
    target: str,
    count: int,
    fps: float,
    *,
    during: Callable[[], None],
    at_s: float,
    deadline_ms: float = 2000.0,
    on_result: Callable[[FrameRecord], None] | None = None,
    max_in_flight: int = 8,
) -> tuple[RunReport, float]:
    """Stream ``count`` frames at ``fps`` to ``target``; ``during`` runs in a thread ``at_s`` into the frames. The
    report, and the instant its records' ``t_s`` count from."""
    config = ClientConfig(
        target=target, deadline_ms=deadline_ms, max_in_flight=max_in_flight, connect_timeout_s=START_TIMEOUT_S
    )
    async with EdgeClient(config) as client:
        await client.wait_ready()
        await client.measure_rtt(bundle.manifest.name, 5)
        await asyncio.sleep(0.5)  # every replica's connection is up: round robin puts each stream on another
        timer = threading.Timer(at_s, during)
        origin = time.perf_counter()
        timer.start()
        try:
            report = await run_frames(
                client,
                _Encoder(bundle),
                _Fixed(),
                mode_options(bundle.manifest),
                _frames(count),
                PipelineConfig(
                    model=bundle.manifest.name, model_version=bundle.manifest.version, fps=fps, origin=origin
                ),
                on_result,
            )
        finally:
            timer.join()
    return report, origin


def _accounted(report: RunReport, count: int) -> None:
    """One record per frame, none twice, each answered, skipped or failed with a reason."""
    results = report.results
    assert len(results) == count and sorted(r.index for r in results) == list(range(count))
    ids = [r.frame_id for r in results]
    assert len(set(ids)) == count, "a frame was recorded twice"
    for r in results:
        assert r.status == OK or r.error or r.reason, r


def test_a_killed_replica_loses_no_frame(bundle: Bundle, servers: list[ServerProcess]) -> None:
    """Three replicas; one is stopped (its frames pile up in flight), then SIGKILLed: its frames are re-sent on the
    others, every frame is answered."""
    a, b, c = _start(servers, 3)
    target = parse_targets(",".join(s.address for s in (a, b, c)))

    def kill_b() -> None:
        b.signal(signal.SIGSTOP)
        time.sleep(0.4)
        b.signal(signal.SIGKILL)

    _nothing_lost(bundle, target, kill_b)


def _nothing_lost(bundle: Bundle, target: str, kill: Callable[[], None]) -> None:
    """120 frames at 40 frames/s, ``kill`` at 1 s: every frame sent is answered, some after a re-send."""
    count, fps = 120, 40.0
    report, _ = asyncio.run(_run(bundle, target, count, fps, during=kill, at_s=1.0))
    _accounted(report, count)
    sent = [r for r in report.results if r.sent]
    lost = [r for r in sent if r.status != OK]
    assert not lost, [(r.status, r.error) for r in lost[:5]]
    assert report.resent >= 1  # frames were in flight on the killed replica, and went to another
    assert report.stray_replies == 0 and report.late_replies == 0
    assert len(sent) >= count * 0.8  # a few may be skipped at the in-flight limit while the replica is stopped
    skipped = [r for r in report.results if not r.sent]
    assert all(r.status == SKIPPED and r.reason for r in skipped)
    print(f"\n{count} frames: {len(sent)} sent, all answered, {report.resent} re-sent, {len(skipped)} skipped")


def test_a_killed_pool_of_workers_loses_no_frame(bundle: Bundle, servers: list[ServerProcess]) -> None:
    """Two replicas of two serving processes each; one replica's workers are stopped (its frames pile up in
    flight), then its supervisor is SIGKILLed (the kernel kills the workers with it: PR_SET_PDEATHSIG): its frames
    are re-sent on the other replica, no frame is lost, and nothing of the killed replica serves any more."""
    import psutil

    a, b = _start(servers, 2, workers=2)
    target = parse_targets(f"{a.address},{b.address}")
    assert b.proc is not None
    workers = psutil.Process(b.proc.pid).children()
    assert len(workers) == 2

    def kill_b() -> None:
        for w in workers:
            w.send_signal(signal.SIGSTOP)
        time.sleep(0.4)
        b.signal(signal.SIGKILL)

    _nothing_lost(bundle, target, kill_b)
    assert b.proc.wait(5) == -signal.SIGKILL
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive and len(gone) == 2  # the workers died with their supervisor


def test_the_only_server_killed_and_restarted_on_its_port(bundle: Bundle, servers: list[ServerProcess]) -> None:
    """SIGKILL the one server, start it again 3 s later on the same port: the edge reconnects within one re-dial
    period of the channel once it serves, the per-second display says the server is down, and the summary
    separates those frames (skipped ``not connected``, failed ``UNAVAILABLE``)."""
    (server,) = _start(servers, 1)
    killed: list[float] = []

    def outage() -> None:
        server.kill()
        killed.append(time.perf_counter())
        time.sleep(3.0)
        server.start()

    out = io.StringIO()
    ticker = TickerDisplay(out, every=1.0)
    ticker.start("replicas")
    count, fps = 200, 20.0  # 10 s of frames; the restarted server serves after 3 s and its start-up
    report, origin = asyncio.run(
        _run(bundle, server.address, count, fps, during=outage, at_s=1.5, deadline_ms=500.0, on_result=ticker.frame)
    )
    server.wait_serving()
    _accounted(report, count)
    summary = report.summary()
    ticker.finish(summary, report.run_tally().by_mode(report.wall_s))
    assert server.serving_at is not None and killed
    t0 = killed[0]
    after = [r for r in report.results if r.status == OK and origin + r.t_s > server.serving_at]
    assert after, "no frame was answered after the server came back"
    reconnect_s = origin + after[0].t_s - server.serving_at
    # the channel re-dials at most 1 s apart (+20 % jitter); a loaded machine adds scheduling
    assert reconnect_s < ChannelConfig().max_reconnect_backoff_ms / 1e3 * 1.2 + 1.5, reconnect_s
    down = [r for r in report.results if origin + r.t_s > t0 and origin + r.t_s < server.serving_at]
    not_connected = [r for r in down if r.status == SKIPPED and r.reason == NOT_CONNECTED]
    assert len(not_connected) >= 0.5 * len(down) > 0
    assert summary.skipped.get("not connected", 0) >= len(not_connected)
    text = out.getvalue()
    assert "server DOWN" in text, text
    assert "not connected" in format_summary(summary)
    print(f"\nreconnected {reconnect_s:.2f} s after the server served again; {len(not_connected)} frames skipped")
