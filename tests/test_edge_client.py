"""The edge client against a real server on 127.0.0.1: per-frame errors, deadlines, in-flight bounds,
reconnection after a restart on the same port, and giving up with a clear error."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from slimsplit import errors
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.control.base import Controller, Decision, FrameFeedback
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig, ReconnectPolicy
from slimsplit.edge.grpc_transport import StreamTransport
from slimsplit.edge.pipeline import PipelineConfig, run_frames
from slimsplit.edge.run import mode_options
from slimsplit.edge.sources import SourceFrame
from slimsplit.edge.status import status_of
from slimsplit.edge.transport import Outcome
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb


class SlowModeBackend(Backend):
    """Zero logits at once, except for one mode whose tail takes ``delay_s`` (to make deadlines pass)."""

    name = "slow-mode"

    def __init__(self, slow_mode: str, delay_s: float) -> None:
        self.slow_mode = slow_mode
        self.delay_s = delay_s

    def load(self, bundle: Bundle) -> TailRunner:
        inner = NullBackend().load(bundle)
        slow_mode, delay_s = self.slow_mode, self.delay_s

        class Runner(TailRunner):
            def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
                if mode == slow_mode:
                    time.sleep(delay_s)
                return inner.run(mode, features)

        return Runner()

    def describe(self) -> dict[str, str]:
        return {"backend": self.name}


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


def start(bundle: Bundle, backend: Backend | None = None, port: int = 0) -> ServerThread:
    config = ServerConfig(models=(bundle.root,), grpc=GrpcConfig(port=port, grace_s=0.2), log_level="warning")
    return ServerThread(config, backend=backend or NullBackend()).start()


@pytest.fixture(scope="module")
def slow_server(bundle: Bundle) -> Iterator[ServerThread]:
    srv = start(bundle, SlowModeBackend(bundle.manifest.modes[0].name, 0.4))
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)


def payload(bundle: Bundle, mode: str) -> bytes:
    spec = bundle.manifest.mode(mode)
    f = bundle.manifest.feature
    return encode_features(np.ones((spec.width, f.height, f.width), np.float32), spec.bits)


def frame(client: EdgeClient, bundle: Bundle, mode: str, **overrides: object) -> pb.FeatureFrame:
    m = bundle.manifest
    msg = client.make_frame(mode=mode, payload=payload(bundle, mode) if mode in m.mode_names else b"", model=m.name)
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


class Collector:
    def __init__(self) -> None:
        self.outcomes: dict[int, Outcome] = {}
        self.calls = 0

    def __call__(self, outcome: Outcome) -> None:
        self.calls += 1
        assert outcome.frame_id not in self.outcomes, "an outcome was reported twice"
        self.outcomes[outcome.frame_id] = outcome


def test_stream_errors_travel_per_frame_and_the_stream_goes_on(slow_server: ServerThread, bundle: Bundle) -> None:
    fast = bundle.manifest.modes[-1].name

    async def go() -> tuple[list[str], list[int], list[str]]:
        async with EdgeClient(ClientConfig(target=slow_server.address)) as client:
            stream = client.open_stream()
            got = Collector()
            sent = [
                frame(client, bundle, fast),
                frame(client, bundle, fast, features=b"garbage, not a codec header"),
                frame(client, bundle, "w999b3"),
                frame(client, bundle, fast, model="no-such-model"),
                frame(client, bundle, fast, protocol_version=99),
                frame(client, bundle, fast),
            ]
            for msg in sent:
                await stream.submit(msg, 5.0, got)
            assert await stream.drain(5.0)
            await stream.aclose()
            order = [got.outcomes[m.frame_id] for m in sent]
            return [o.status for o in order], [o.attempt for o in order], [o.message for o in order]

    statuses, attempts, messages = asyncio.run(go())
    assert statuses == ["OK", "INVALID_ARGUMENT", "NOT_FOUND", "NOT_FOUND", "FAILED_PRECONDITION", "OK"]
    assert set(attempts) == {1}  # one stream carried them all
    assert "w999b3" in messages[2] and "no-such-model" in messages[3]


def test_unary_errors_raise_the_mapped_exception_classes(slow_server: ServerThread, bundle: Bundle) -> None:
    fast = bundle.manifest.modes[-1].name

    async def go() -> None:
        async with EdgeClient(ClientConfig(target=slow_server.address)) as client:
            prediction = await client.infer(frame(client, bundle, fast))
            assert prediction.mode == fast and len(prediction.classes) == 5
            with pytest.raises(errors.InvalidFrame) as bad:
                await client.infer(frame(client, bundle, fast, features=b"\x00" * 40))
            assert status_of(bad.value) == "INVALID_ARGUMENT"
            with pytest.raises(errors.SlimsplitError, match="w999b3") as unknown:
                await client.infer(frame(client, bundle, "w999b3"))
            assert status_of(unknown.value) == "NOT_FOUND"
            with pytest.raises(errors.UnsupportedVersion):
                await client.infer(frame(client, bundle, fast, protocol_version=99))
            info = await client.describe()
            assert [m.name for m in info.models] == [bundle.manifest.name]

    asyncio.run(go())


ERROR_CASES: dict[str, tuple[dict[str, Any], type[errors.SlimsplitError], str]] = {
    "unknown model": ({"model": "no-such-model"}, errors.UnknownModel, "NOT_FOUND"),
    "unknown mode": ({"mode": "w999b3"}, errors.UnknownMode, "NOT_FOUND"),
    "invalid frame": ({"bits_of": 0}, errors.InvalidFrame, "INVALID_ARGUMENT"),  # the header of another mode
    "unsupported version": ({"protocol_version": 99}, errors.UnsupportedVersion, "FAILED_PRECONDITION"),
}


def bad_frame(client: EdgeClient, bundle: Bundle, case: str) -> pb.FeatureFrame:
    overrides = dict(ERROR_CASES[case][0])
    mode = str(overrides.pop("mode", bundle.manifest.modes[-1].name))
    if "bits_of" in overrides:
        other = next(m for m in bundle.manifest.modes if m.bits != bundle.manifest.mode(mode).bits)
        overrides = {"features": payload(bundle, other.name)}
    return frame(client, bundle, mode, **overrides)


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_the_edge_gets_the_exact_error_class_the_server_names(
    slow_server: ServerThread, bundle: Bundle, case: str
) -> None:
    """Unknown model and unknown mode share NOT_FOUND: the class the server names tells them apart, in a stream
    (FrameError.error_class) and over Infer (trailing metadata)."""
    _, cls, status = ERROR_CASES[case]

    async def go() -> tuple[Outcome, BaseException]:
        async with EdgeClient(ClientConfig(target=slow_server.address)) as client:
            stream = client.open_stream()
            got = Collector()
            msg = bad_frame(client, bundle, case)
            await stream.submit(msg, 5.0, got)
            assert await stream.drain(5.0)
            await stream.aclose()
            with pytest.raises(errors.SlimsplitError) as raised:
                await client.infer(bad_frame(client, bundle, case))
            return got.outcomes[msg.frame_id], raised.value

    streamed, unary = asyncio.run(go())
    assert type(streamed.error) is cls and streamed.status == status and not streamed.ok
    assert type(unary) is cls and status_of(unary) == status
    assert str(unary) == streamed.message  # the same message both ways


def test_a_frame_past_its_deadline_is_reported_and_the_stream_goes_on(
    slow_server: ServerThread, bundle: Bundle
) -> None:
    slow, fast = bundle.manifest.modes[0].name, bundle.manifest.modes[-1].name

    async def go() -> tuple[list[str], int, str]:
        async with EdgeClient(ClientConfig(target=slow_server.address)) as client:
            stream = client.open_stream()
            got = Collector()
            sent = [frame(client, bundle, slow), frame(client, bundle, fast), frame(client, bundle, fast)]
            for msg in sent:
                await stream.submit(msg, 0.15, got)
            assert await stream.drain(5.0)
            statuses = [got.outcomes[m.frame_id].status for m in sent]
            # the slow frame's reply still arrives later; it is counted, not reported a second time
            for _ in range(100):
                if stream.late_replies:
                    break
                await asyncio.sleep(0.02)
            late = stream.late_replies
            # ... and the stream still serves
            after = frame(client, bundle, fast)
            await stream.submit(after, 5.0, got)
            assert await stream.drain(5.0)
            await stream.aclose()
            unary = await client.infer_outcome(frame(client, bundle, slow), 0.1)
            return [*statuses, got.outcomes[after.frame_id].status], late, unary.status

    statuses, late, unary_status = asyncio.run(go())
    assert statuses == ["DEADLINE_EXCEEDED", "OK", "OK", "OK"]
    assert late == 1
    assert unary_status == "DEADLINE_EXCEEDED"


class RecordingController(Controller):
    name = "recording"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.in_flight: list[int] = []
        self.observed: list[FrameFeedback] = []

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        self.in_flight.append(in_flight_frames)
        return Decision(self.mode, "test")

    def observe(self, feedback: FrameFeedback) -> None:
        self.observed.append(feedback)


class ConstantEncoder:
    """Stands in for EncoderRuntime: a fixed payload per mode, no ONNX Runtime needed."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.mode = ""

    def set_mode(self, name: str) -> None:
        self.mode = name

    def encode(self, image: npt.NDArray[np.uint8]) -> object:
        from slimsplit.edge.runtime import EncodedFrame

        return EncodedFrame(payload(self.bundle, self.mode), self.mode, 0.0, 0.0)


def test_in_flight_frames_stay_bounded_and_every_frame_is_observed(slow_server: ServerThread, bundle: Bundle) -> None:
    slow = bundle.manifest.modes[0].name
    controller = RecordingController(slow)
    images = [SourceFrame(i, np.zeros((64, 64, 3), np.uint8)) for i in range(5)]

    async def go() -> list[str]:
        cfg = ClientConfig(target=slow_server.address, max_in_flight=2, deadline_ms=5000)
        async with EdgeClient(cfg) as client:
            report = await run_frames(
                client,
                ConstantEncoder(bundle),  # type: ignore[arg-type]
                controller,
                mode_options(bundle.manifest),
                images,
                PipelineConfig(model=bundle.manifest.name),
            )
        return [r.status for r in report.results]

    statuses = asyncio.run(go())
    assert statuses == ["OK"] * 5
    assert max(controller.in_flight) == 1  # decided with one frame in flight: the second slot of two
    assert controller.in_flight[0] == 0
    assert sorted(f.frame_id for f in controller.observed) == sorted({f.frame_id for f in controller.observed})
    assert len(controller.observed) == 5 and all(f.ok and f.payload_bytes > 0 for f in controller.observed)


def test_frames_in_flight_when_the_server_dies_are_reported_with_the_reason(bundle: Bundle) -> None:
    slow = bundle.manifest.modes[0].name
    srv = start(bundle, SlowModeBackend(slow, 1.0))

    async def go() -> Outcome:
        async with EdgeClient(ClientConfig(target=srv.address)) as client:
            stream = client.open_stream()
            got = Collector()
            msg = frame(client, bundle, slow)
            await stream.submit(msg, 10.0, got)
            await asyncio.sleep(0.2)  # the frame is now being served
            stopper = threading.Thread(target=srv.stop, kwargs={"grace": 0.0})
            stopper.start()
            assert await stream.drain(10.0)
            await asyncio.to_thread(stopper.join)
            await stream.aclose()
            assert got.calls == 1
            return got.outcomes[msg.frame_id]

    try:
        outcome = asyncio.run(go())
    finally:
        srv.stop()
    assert not outcome.ok
    assert outcome.status in {"UNAVAILABLE", "CANCELLED"}
    assert "in flight" in outcome.message


def test_the_stream_reconnects_after_the_server_restarts_on_the_same_port(bundle: Bundle) -> None:
    fast = bundle.manifest.modes[-1].name
    first = start(bundle)
    port = first.port
    servers = [first]

    async def go() -> tuple[list[Outcome], StreamTransport]:
        policy = ReconnectPolicy(initial_s=0.02, max_s=0.2)
        async with EdgeClient(ClientConfig(target=first.address, reconnect=policy)) as client:
            stream = client.open_stream(seed=1)
            got = Collector()
            outcomes: list[Outcome] = []

            async def send() -> Outcome:
                msg = frame(client, bundle, fast)
                await stream.submit(msg, 2.0, got)
                assert await stream.drain(5.0)
                outcomes.append(got.outcomes[msg.frame_id])
                return outcomes[-1]

            assert (await send()).ok
            await asyncio.to_thread(first.stop, 0.0)
            # the server is gone: frames fail fast with the reason, none is lost
            down = await send()
            assert down.status == "UNAVAILABLE" and down.message
            servers.append(await asyncio.to_thread(start, bundle, None, port))
            for _ in range(200):
                if (await send()).ok:
                    break
                await asyncio.sleep(0.02)
            await stream.aclose()
            return outcomes, stream

    try:
        outcomes, stream = asyncio.run(go())
    finally:
        for srv in servers:
            srv.stop()
    assert outcomes[-1].ok, outcomes[-1]
    assert outcomes[0].attempt == 1 and outcomes[-1].attempt >= 2
    assert stream.reconnects >= 1
    assert all(o.ok or o.status == "UNAVAILABLE" for o in outcomes)


def test_the_stream_gives_up_after_max_attempts(bundle: Bundle) -> None:
    srv = start(bundle)
    address = srv.address
    srv.stop()  # nothing listens there any more

    async def go() -> list[str]:
        policy = ReconnectPolicy(initial_s=0.01, max_s=0.01, max_attempts=2)
        async with EdgeClient(ClientConfig(target=address, reconnect=policy)) as client:
            stream = client.open_stream()
            got = Collector()
            statuses = []
            for _ in range(2):
                msg = frame(client, bundle, bundle.manifest.modes[0].name)
                await stream.submit(msg, 2.0, got)
                assert await stream.drain(5.0)
                statuses.append(got.outcomes[msg.frame_id].status)
                await asyncio.sleep(0.05)
            with pytest.raises(errors.Unavailable, match="gave up after 2"):
                await stream.submit(frame(client, bundle, bundle.manifest.modes[0].name), 2.0, got)
            await stream.aclose()
            return statuses

    assert asyncio.run(go()) == ["UNAVAILABLE", "UNAVAILABLE"]


def test_wait_ready_names_the_address_when_nothing_listens(bundle: Bundle) -> None:
    srv = start(bundle)
    address = srv.address
    srv.stop()

    async def go() -> None:
        async with EdgeClient(ClientConfig(target=address, connect_timeout_s=0.3)) as client:
            with pytest.raises(errors.Unavailable, match=address.replace("[", r"\[").replace("]", r"\]")):
                await client.wait_ready()

    asyncio.run(go())


def test_a_paced_source_skips_frames_at_the_in_flight_limit(slow_server: ServerThread, bundle: Bundle) -> None:
    slow = bundle.manifest.modes[0].name
    controller = RecordingController(slow)
    images = [SourceFrame(i, np.zeros((64, 64, 3), np.uint8)) for i in range(4)]

    async def go() -> list[tuple[str, str]]:
        cfg = ClientConfig(target=slow_server.address, max_in_flight=1, deadline_ms=5000)
        async with EdgeClient(cfg) as client:
            report = await run_frames(
                client,
                ConstantEncoder(bundle),  # type: ignore[arg-type]
                controller,
                mode_options(bundle.manifest),
                images,
                PipelineConfig(model=bundle.manifest.name, fps=200.0),  # a camera: frames do not wait
            )
        return [(r.status, r.reason) for r in report.results]

    results = asyncio.run(go())
    assert results[0][0] == "OK"  # the first frame holds the only slot for 0.4 s ...
    skipped = [reason for status, reason in results[1:] if status == "SKIPPED"]
    assert skipped and all("in-flight limit" in reason for reason in skipped)  # ... so the next ones are skipped
    assert len(controller.in_flight) == 1 + sum(1 for s, _ in results[1:] if s != "SKIPPED")


class BusySkipper(RecordingController):
    """Skips whenever a frame is in flight (what an adaptive controller does over a stalled link)."""

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        self.in_flight.append(in_flight_frames)
        return Decision(None, "busy: a frame is in flight") if in_flight_frames else Decision(self.mode, "idle")


def test_an_unpaced_source_waits_and_asks_again_instead_of_skipping(slow_server: ServerThread, bundle: Bundle) -> None:
    fast = bundle.manifest.modes[-1].name
    images = [SourceFrame(i, np.zeros((64, 64, 3), np.uint8)) for i in range(4)]

    async def go() -> tuple[list[str], BusySkipper]:
        controller = BusySkipper(fast)
        cfg = ClientConfig(target=slow_server.address, max_in_flight=4, deadline_ms=5000)
        async with EdgeClient(cfg) as client:
            report = await run_frames(
                client,
                ConstantEncoder(bundle),  # type: ignore[arg-type]
                controller,
                mode_options(bundle.manifest),
                images,
                PipelineConfig(model=bundle.manifest.name),  # unpaced
            )
        return [r.status for r in report.results], controller

    statuses, controller = asyncio.run(go())
    assert statuses == ["OK"] * 4  # a data set has no capture instant to miss: no frame is skipped
    assert len(controller.observed) == 4 and all(f.ok for f in controller.observed)
    # every admitted frame was decided with nothing in flight (the controller's own rule), after a completion
    assert controller.in_flight.count(0) == 4
