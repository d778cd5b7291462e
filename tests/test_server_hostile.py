"""A careless or hostile client against a real server on loopback: undecodable and oversized messages, huge and
escape-laden names, idle streams and connections, clients that leave mid-call. Each gets a clear status; the frames
read before a bad message are still answered; nothing is logged as an error with a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.protocol import PROTOCOL_VERSION, SERVICE_NAME
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

LIMIT = 32 << 10


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


def config(bundle: Bundle, **grpc_options: Any) -> ServerConfig:
    grpc_config = GrpcConfig(port=0, grace_s=0.2, max_receive_message_bytes=LIMIT)
    return ServerConfig(models=(bundle.root,), grpc=replace(grpc_config, **grpc_options), log_level="warning")


@pytest.fixture(scope="module")
def server(bundle: Bundle) -> Iterator[ServerThread]:
    with ServerThread(config(bundle), backend=NullBackend()) as srv:
        yield srv


def frame(bundle: Bundle, frame_id: int = 1, **fields: Any) -> pb.FeatureFrame:
    mode = bundle.manifest.modes[0]
    f = bundle.manifest.feature
    payload = encode_features(np.ones((mode.width, f.height, f.width), np.float32), mode.bits)
    msg = pb.FeatureFrame(
        protocol_version=PROTOCOL_VERSION,
        frame_id=frame_id,
        model=bundle.manifest.name,
        mode=mode.name,
        features=payload,
    )
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def raw_unary(ch: grpc.Channel, method: str) -> Any:
    """``method`` with the request sent as the bytes given (no serializer)."""
    return ch.unary_unary(f"/{SERVICE_NAME}/{method}", None, None)


def raw_stream(ch: grpc.Channel) -> Any:
    return ch.stream_stream(f"/{SERVICE_NAME}/InferStream", None, pb.StreamReply.FromString)


GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 3]


@pytest.mark.parametrize("body", GARBAGE)
@pytest.mark.parametrize("method", ["Infer", "Describe"])
def test_an_undecodable_request_is_invalid_argument_without_internals(
    server: ServerThread, method: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as info:
        raw_unary(ch, method)(body, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "protobuf message" in details and "DecodeError" not in details and "Unexpected" not in details
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("bad", [GARBAGE[0], b"\x0a" + b"x" * (LIMIT + 100)], ids=["undecodable", "oversized"])
def test_a_bad_message_in_a_stream_ends_it_after_every_frame_read_before_is_answered(
    server: ServerThread, bundle: Bundle, bad: bytes
) -> None:
    good = [frame(bundle, i).SerializeToString() for i in range(1, 201)]
    with grpc.insecure_channel(server.address) as ch:
        call = raw_stream(ch)(iter([*good, bad, *good[:5]]), timeout=20)
        replies: list[pb.StreamReply] = []
        with pytest.raises(grpc.RpcError) as info:
            replies.extend(call)
    assert sorted(r.prediction.frame_id for r in replies) == list(range(1, 201))
    expected = grpc.StatusCode.INVALID_ARGUMENT if bad is GARBAGE[0] else grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.code() == expected
    assert "message 201 of the stream" in (info.value.details() or "")


def test_a_message_beyond_the_core_limit_is_refused_by_grpc_itself(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as info:
        raw_unary(ch, "Infer")(b"\x0a" + b"x" * (300 << 10), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("field", ["model", "mode"])
def test_huge_and_escape_laden_names_get_a_bounded_clean_not_found(
    server: ServerThread, bundle: Bundle, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = "\x1b[31m\nevil" + "n" * 20_000
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        fields: dict[str, Any] = {field: name}
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(frame(bundle, 1, **fields), timeout=10)
        (reply,) = list(stub.InferStream(iter([frame(bundle, 9, **fields)]), timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for text in (info.value.details() or "", reply.error.message):
        assert len(text) <= 1000 and "\x1b" not in text and "\n" not in text
    assert reply.error.status == "NOT_FOUND" and reply.error.frame_id == 9
    assert all(len(r.getMessage()) < 2000 and "\x1b" not in r.getMessage() for r in caplog.records)


def test_an_idle_stream_is_closed(bundle: Bundle) -> None:
    with ServerThread(config(bundle, stream_idle_timeout_s=0.4), backend=NullBackend()) as srv:
        with grpc.insecure_channel(srv.address) as ch:

            def frames() -> Iterator[pb.FeatureFrame]:
                yield frame(bundle, 1)
                time.sleep(30)  # idle: the server closes the stream long before

            call = pb_grpc.SplitInferenceStub(ch).InferStream(frames(), timeout=20)
            t0 = time.monotonic()
            replies: list[pb.StreamReply] = []
            with pytest.raises(grpc.RpcError) as info:
                replies.extend(call)
            took = time.monotonic() - t0
        assert [r.prediction.frame_id for r in replies] == [1]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "no frame for 0.4 s" in (info.value.details() or "")
        assert took < 10
        assert srv.running.service.active_streams == 0


def test_a_connection_that_never_sends_the_http2_preface_is_closed(bundle: Bundle) -> None:
    with (
        ServerThread(config(bundle, handshake_timeout_s=0.5), backend=NullBackend()) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn,
    ):
        t0 = time.monotonic()
        received = b""
        while chunk := conn.recv(4096):  # the server's SETTINGS, then GOAWAY and the close
            received += chunk
        took = time.monotonic() - t0
    assert b"handshake timeout" in received.lower() or b"timeout" in received.lower()
    assert 0.3 < took < 8


def test_connections_beyond_the_cap_are_refused_and_the_others_keep_working(bundle: Bundle) -> None:
    with ServerThread(config(bundle, max_connections=3), backend=NullBackend()) as srv:
        # each channel its own connection (channels to one target share one by default)
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.insecure_channel(srv.address, options=options) for _ in range(3)]
        try:
            for ch in channels:
                assert pb_grpc.SplitInferenceStub(ch).Describe(pb.DescribeRequest(), timeout=10).models
            with grpc.insecure_channel(srv.address, options=options) as extra, pytest.raises(grpc.RpcError) as info:
                pb_grpc.SplitInferenceStub(extra).Describe(pb.DescribeRequest(), timeout=3)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert pb_grpc.SplitInferenceStub(channels[0]).Describe(pb.DescribeRequest(), timeout=10).models
        finally:
            for ch in channels:
                ch.close()


def test_clients_that_leave_mid_call_log_no_errors(
    server: ServerThread, bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for i in range(50):
            future = stub.Infer.future(frame(bundle, i), timeout=10)
            future.cancel()
            call = stub.InferStream(iter([frame(bundle, j) for j in range(20)]), timeout=10)
            next(call, None)
            call.cancel()
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_errors_are_rate_limited_and_counted(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    """A backend that fails every frame: each failure is an INTERNAL answer, but only a burst of them is logged."""
    from prometheus_client import generate_latest

    from slimsplit.server.backends.base import TailOutput, TailRunner
    from slimsplit.server.backends.null_backend import NullTailRunner

    class FailingRunner(NullTailRunner):
        def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
            raise RuntimeError("the tail broke")

    class Failing(NullBackend):
        def load(self, bundle: Bundle) -> TailRunner:
            m = bundle.manifest
            return FailingRunner(frozenset(m.mode_names), len(m.classes))

    caplog.set_level(logging.WARNING, logger="slimsplit.server")
    cfg = replace(config(bundle), log_lines_per_s=0.5, log_burst=3)
    with ServerThread(cfg, backend=Failing()) as srv, grpc.insecure_channel(srv.address) as ch:
        replies = list(
            pb_grpc.SplitInferenceStub(ch).InferStream(iter([frame(bundle, i) for i in range(40)]), timeout=20)
        )
        limit = srv.running.log_limit
        assert limit is not None
        metrics = generate_latest(srv.running.metrics.registry).decode()
    assert len(replies) == 40 and all(r.error.status == "INTERNAL" for r in replies)
    logged = [r for r in caplog.records if r.name == "slimsplit.server" and r.levelno >= logging.ERROR]
    assert 1 <= len(logged) <= 4 and limit.dropped >= 36
    assert f"slimsplit_log_lines_dropped_total {float(limit.dropped)}" in metrics
    assert limit not in logging.getLogger("slimsplit.server").filters  # detached when the server stopped


# ---------------------------------------------------------------------------------------------- fair shares


def test_a_flooding_clients_excess_unary_calls_are_refused_at_once_and_another_client_is_served(
    bundle: Bundle,
) -> None:
    from server_helpers import GateBackend

    backend = GateBackend(open_=False)
    options = [("grpc.use_local_subchannel_pool", 1)]  # two connections: two clients
    with (
        ServerThread(config(bundle, client_max_in_flight=4), backend=backend) as srv,
        grpc.insecure_channel(srv.address, options=options) as flood_ch,
        grpc.insecure_channel(srv.address, options=options) as good_ch,
    ):
        flood = pb_grpc.SplitInferenceStub(flood_ch)
        calls = [flood.Infer.future(frame(bundle, i), timeout=20) for i in range(12)]
        deadline = time.monotonic() + 10
        while sum(c.done() for c in calls) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [c for c in calls if c.done()]
        assert len(refused) == 8
        for call in refused:
            err = call.exception()
            assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "its share of the server" in (err.details() or "")
        good = pb_grpc.SplitInferenceStub(good_ch).Infer.future(frame(bundle, 99), timeout=20)
        time.sleep(0.2)
        assert not good.done()  # admitted: waiting for the gate like the flood's four, not refused
        backend.gate.set()
        assert good.result().frame_id == 99
        answered = [c.result().frame_id for c in calls if c not in refused]  # the four admitted (in any order)
        assert len(answered) == 4 and set(answered) <= set(range(12))
        assert _eventually(lambda: len(srv.running.service.shares) == 0)


def test_a_stream_over_its_clients_share_waits_instead_of_failing(bundle: Bundle) -> None:
    from server_helpers import GateBackend

    backend = GateBackend(open_=False)
    with (
        ServerThread(config(bundle, client_max_in_flight=4), backend=backend) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        call = pb_grpc.SplitInferenceStub(ch).InferStream(iter([frame(bundle, i) for i in range(20)]), timeout=20)
        time.sleep(0.5)
        (share,) = srv.running.service.shares._shares.values()
        assert share.in_flight == 4  # the stream stopped reading at its client's share
        backend.gate.set()
        replies = list(call)
    assert sorted(r.prediction.frame_id for r in replies) == list(range(20))


def _eventually(cond: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_server_whose_describe_answer_would_not_fit_refuses_to_start(bundle: Bundle) -> None:
    from slimsplit.errors import ConfigError

    with pytest.raises(ConfigError, match="max_send_message_bytes"):
        ServerThread(config(bundle, max_send_message_bytes=2048), backend=NullBackend()).start()


def test_a_freed_slot_goes_to_the_waiting_client_with_the_fewest_frames_served() -> None:
    import asyncio

    from slimsplit.server.admission import Shares

    async def go() -> list[str]:
        shares = Shares(client_limit=8, total_limit=3)
        flood, camera = shares.open("flood"), shares.open("camera")
        order: list[str] = []
        for _ in range(3):
            assert shares.try_take(flood)  # the flood holds every slot

        async def frame(share_name: str) -> None:
            share = flood if share_name == "flood" else camera
            await shares.take(share)
            order.append(share_name)

        waiting = [asyncio.ensure_future(frame("flood")) for _ in range(4)]
        await asyncio.sleep(0)
        waiting.append(asyncio.ensure_future(frame("camera")))  # begins to wait last
        await asyncio.sleep(0)
        assert shares.at_limit(camera) is False and not order
        shares.give(flood)  # one slot frees: the camera (0 being served) before the flood (2)
        await asyncio.sleep(0)
        assert order == ["camera"]
        for _ in range(4):
            shares.give(flood)
            await asyncio.sleep(0)
        await asyncio.gather(*waiting)
        assert order == ["camera", "flood", "flood", "flood", "flood"]
        assert shares.in_flight == 3 and camera.in_flight == 1
        return order

    asyncio.run(go())


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
def test_undecodable_requests_to_health_and_reflection_are_invalid_argument(
    server: ServerThread, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with grpc.insecure_channel(server.address) as ch:
        if "Reflection" in method:
            call: Any = ch.stream_stream(method, None, None)(iter([GARBAGE[0]]), timeout=10)
        elif method.endswith("Watch"):
            call = ch.unary_stream(method, None, None)(GARBAGE[0], timeout=10)
        else:
            call = None
        with pytest.raises(grpc.RpcError) as info:
            if call is None:
                ch.unary_unary(method, None, None)(GARBAGE[0], timeout=10)
            else:
                list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "not a valid message" in (info.value.details() or "")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_adaptive_limit_shrinks_while_the_loop_runs_late_and_grows_back() -> None:
    from slimsplit.server.admission import AdaptiveLimit

    limit = AdaptiveLimit(128, min_limit=4, target_lag_s=0.005)
    assert not any(limit.observe(0.001) for _ in range(10))  # on time: at its maximum already
    for _ in range(40):
        limit.observe(0.030)  # 30 ms late
    assert limit.limit == 4
    for _ in range(10):
        limit.observe(0.001)
    assert limit.limit == 14


def test_while_the_loop_runs_late_admission_is_paced_and_the_pace_lifts_once_demand_falls() -> None:
    from slimsplit.server.admission import UNPACE_AFTER, AdaptiveLimit

    limit = AdaptiveLimit(128, target_lag_s=0.005, interval_s=0.02, min_rate=50.0)
    limit.granted = 40  # 2,000 frames/s admitted over the last 20 ms sample
    limit.observe(0.001, 0.02)
    assert limit.rate is None  # on time: no pace
    limit.granted = 40
    limit.observe(0.030, 0.02)  # late: paced below what was admitted
    assert limit.rate is not None and limit.rate < 2000
    paced = limit.rate
    limit.granted = 30
    limit.observe(0.030, 0.02)
    assert limit.rate is not None and limit.rate < paced  # still late: slower
    for _ in range(UNPACE_AFTER - 1):
        limit.granted = 0  # nobody asks any more
        limit.observe(0.001, 0.02)
    assert limit.rate is not None  # not yet: a second of slack is needed
    for _ in range(2):
        limit.observe(0.001, 0.02)
    assert limit.rate is None


def test_a_paced_server_admits_at_its_rate_and_clients_take_turns() -> None:
    import asyncio
    import time

    from slimsplit.server.admission import AdaptiveLimit, Shares

    async def go() -> tuple[list[str], float]:
        adaptive = AdaptiveLimit(1000, interval_s=0.02)
        adaptive.rate = 200.0  # 200 frames/s, bursts of at most 4
        shares = Shares(client_limit=1000, total_limit=1000, adaptive=adaptive)
        flood, camera = shares.open("flood"), shares.open("camera")
        order: list[str] = []

        async def frame(name: str) -> None:
            await shares.take(flood if name == "flood" else camera)
            order.append(name)

        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(frame("flood")) for _ in range(20)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(frame("camera")))
        await asyncio.gather(*tasks)
        return order, time.monotonic() - t0

    order, took = asyncio.run(go())
    assert len(order) == 21 and took >= 16 / 200  # 21 frames at 200/s after a burst of 4: not all at once
    assert order.index("camera") <= 5  # the camera's one frame is not queued behind the flood's twenty
