"""The gRPC server end to end on 127.0.0.1 with real ONNX Runtime tails.

Each bad input must get the right status while the server keeps serving other clients; streams survive bad
frames; disconnects, deadlines and shutdown are handled; health and reflection work as standard clients
expect.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
from fixtures_bundle import TinyBundle, rewrite_header, write_tiny_bundle
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from server_helpers import GateBackend

from slimsplit.errors import BackendError
from slimsplit.protocol import ERROR_CLASS_KEY, MAX_ERROR_MESSAGE_CHARS, SERVICE_NAME
from slimsplit.server.app import ServerThread, serve_in_thread
from slimsplit.server.config import DEFAULT_MAX_RECEIVE_BYTES, GrpcConfig, MetricsConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def config_for(tiny: TinyBundle, **grpc_kw: Any) -> ServerConfig:
    return ServerConfig(models=(tiny.root,), grpc=GrpcConfig(port=0, grace_s=5.0, **grpc_kw))


@pytest.fixture(scope="module")
def gate() -> GateBackend:
    return GateBackend()


@pytest.fixture(scope="module")
def server(tiny: TinyBundle, gate: GateBackend) -> Iterator[ServerThread]:
    with ServerThread(config_for(tiny, stream_max_in_flight=4), backend=gate) as srv:
        yield srv


@pytest.fixture()
def open_gate(gate: GateBackend) -> Iterator[GateBackend]:
    """The shared gate, restored to open and healthy after the test."""
    yield gate
    gate.fail_with = None
    gate.gate.set()


def channel(srv: ServerThread) -> grpc.Channel:
    return grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 8 << 20)])


def frame(tiny: TinyBundle, mode: str, seed: int = 0, **kw: Any) -> pb.FeatureFrame:
    fields: dict[str, Any] = {
        "protocol_version": 1,
        "frame_id": seed,
        "model": tiny.manifest.name,
        "mode": mode,
        "top_k": 3,
    }
    fields.update(kw)
    if "features" not in kw:
        fields["features"] = tiny.frame(mode, seed)
    return pb.FeatureFrame(**fields)


def expected_top1(tiny: TinyBundle, f: pb.FeatureFrame) -> int:
    return int(np.argmax(tiny.reference_logits(f.mode, f.features)))


class Requests:
    """A request iterator the test feeds frame by frame (for the synchronous stream API)."""

    def __init__(self) -> None:
        self._q: queue.Queue[pb.FeatureFrame | None] = queue.Queue()

    def send(self, f: pb.FeatureFrame) -> None:
        self._q.put(f)

    def close(self) -> None:
        self._q.put(None)

    def __iter__(self) -> Iterator[pb.FeatureFrame]:
        while True:
            item = self._q.get()
            if item is None:
                return
            yield item


def wait_until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def health_status(srv_address: str, service: str = "") -> int:
    with grpc.insecure_channel(srv_address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        return int(resp.status)


def assert_serving(srv: ServerThread, tiny: TinyBundle) -> None:
    """Another client, on its own connection, still gets correct predictions."""
    with channel(srv) as ch:
        f = frame(tiny, "w4b8", 77)
        pred = pb_grpc.SplitInferenceStub(ch).Infer(f, timeout=TIMEOUT)
        assert pred.classes[0] == expected_top1(tiny, f)


# ----------------------------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("mode", ["w2b2", "w2b8", "w4b2", "w4b8"])
def test_infer_and_stream_predictions_match_the_reference(server: ServerThread, tiny: TinyBundle, mode: str) -> None:
    frames = [frame(tiny, mode, seed) for seed in range(6)]
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for f in frames[:3]:
            pred = stub.Infer(f, timeout=TIMEOUT)
            assert pred.frame_id == f.frame_id and pred.mode == mode and pred.model == "tiny"
            assert pred.model_version == "1"
            assert pred.classes[0] == expected_top1(tiny, f)
            assert list(pred.labels) == [f"class{c}" for c in pred.classes]
            assert len(pred.scores) == 3 and pred.scores[0] >= pred.scores[1]
            t = pred.timing
            assert t.backend == "gate" and t.batch_size >= 1 and t.total_ms >= t.decode_ms >= 0
        replies = list(stub.InferStream(iter(frames), timeout=TIMEOUT))
    assert sorted(r.prediction.frame_id for r in replies) == [f.frame_id for f in frames]
    by_id = {r.prediction.frame_id: r.prediction for r in replies}
    for f in frames:
        ref = tiny.reference_logits(mode, f.features)
        assert by_id[f.frame_id].classes[0] == int(np.argmax(ref))
        e = np.exp(ref - ref.max())
        assert by_id[f.frame_id].scores[0] == pytest.approx(float((e / e.sum()).max()), rel=1e-5)


def test_describe(server: ServerThread, tiny: TinyBundle) -> None:
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        resp = stub.Describe(pb.DescribeRequest(), timeout=TIMEOUT)
        assert resp.protocol_version == 1 and resp.backend == "gate" and resp.server_version
        (model,) = resp.models
        assert (model.name, model.version) == ("tiny", "1")
        assert [m.name for m in model.modes] == list(tiny.manifest.mode_names)
        assert list(model.feature_shape) == [4, 4, 4]
        assert list(model.classes) == list(tiny.manifest.classes)
        assert '"name": "tiny"' in model.manifest_json
        with pytest.raises(grpc.RpcError) as info:
            stub.Describe(pb.DescribeRequest(model="nope"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ----------------------------------------------------------------------------------------------- bad input

BAD_CASES: dict[str, tuple[Callable[[TinyBundle], pb.FeatureFrame], grpc.StatusCode]] = {
    "unknown model": (lambda t: frame(t, "w4b8", model="nope"), grpc.StatusCode.NOT_FOUND),
    "unknown version": (lambda t: frame(t, "w4b8", model_version="9"), grpc.StatusCode.NOT_FOUND),
    "unknown mode": (lambda t: frame(t, "w9b9", features=t.frame("w4b8")), grpc.StatusCode.NOT_FOUND),
    "header lies about bits": (
        lambda t: frame(t, "w4b2", features=t.frame("w4b8")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "header lies about shape": (
        lambda t: frame(t, "w4b8", features=t.frame("w2b8")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "header lies about payload": (
        lambda t: frame(t, "w4b8", features=rewrite_header(t.frame("w4b8"), c=2)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "truncated payload": (
        lambda t: frame(t, "w4b8", features=t.frame("w4b8")[:-5]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "garbage payload": (
        # random bytes after a first byte that is no codec magic (0xA_ would read as "another codec version")
        lambda t: frame(t, "w4b8", features=b"\x5a" + os.urandom(79)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "no features": (lambda t: frame(t, "w4b8", features=b""), grpc.StatusCode.INVALID_ARGUMENT),
    "NaN in header": (
        lambda t: frame(t, "w4b8", features=rewrite_header(t.frame("w4b8"), lo=float("nan"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "Inf in header": (
        lambda t: frame(t, "w4b8", features=rewrite_header(t.frame("w4b8"), hi=float("inf"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong protocol version": (
        lambda t: frame(t, "w4b8", protocol_version=2),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    "newer codec version": (
        lambda t: frame(t, "w4b8", features=bytes([0xA3]) + t.frame("w4b8")[1:]),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
}


#: The slimsplit.errors class each case travels as (Infer: trailing metadata; InferStream: FrameError.error_class).
BAD_CLASSES = {
    "unknown model": "UnknownModel",
    "unknown version": "UnknownModel",
    "unknown mode": "UnknownMode",
    "header lies about bits": "InvalidFrame",
    "header lies about shape": "InvalidFrame",
    "header lies about payload": "CodecError",
    "truncated payload": "CodecError",
    "garbage payload": "CodecError",
    "no features": "CodecError",
    "NaN in header": "CodecError",
    "Inf in header": "CodecError",
    "wrong protocol version": "UnsupportedVersion",
    "newer codec version": "UnsupportedVersion",
}


def trailing_class(exc: grpc.RpcError) -> str | None:
    trailing: Any = exc.trailing_metadata()  # a grpc.Call as well
    return dict(trailing or ()).get(ERROR_CLASS_KEY)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_frame_over_infer_gets_its_status(server: ServerThread, tiny: TinyBundle, case: str) -> None:
    make, code = BAD_CASES[case]
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(make(tiny), timeout=TIMEOUT)
        assert info.value.code() == code, info.value.details()
        assert info.value.details()
        assert trailing_class(info.value) == BAD_CLASSES[case]
        # The same connection keeps working...
        assert stub.Infer(frame(tiny, "w2b8"), timeout=TIMEOUT).classes
    assert_serving(server, tiny)  # ...and so do other clients.


def test_bad_frames_in_a_stream_are_frame_errors_and_the_stream_goes_on(server: ServerThread, tiny: TinyBundle) -> None:
    frames: list[pb.FeatureFrame] = []
    expected: dict[int, grpc.StatusCode | None] = {}
    classes: dict[int, str] = {}
    for i, (case, (make, code)) in enumerate(BAD_CASES.items()):
        bad = make(tiny)
        bad.frame_id = 1000 + i
        good = frame(tiny, "w2b2", i)
        good.frame_id = 2000 + i
        frames += [bad, good]
        expected[bad.frame_id] = code
        expected[good.frame_id] = None
        classes[bad.frame_id] = BAD_CLASSES[case]
    with channel(server) as ch:
        replies = list(pb_grpc.SplitInferenceStub(ch).InferStream(iter(frames), timeout=TIMEOUT))
    assert len(replies) == len(frames)
    for r in replies:
        if r.WhichOneof("result") == "error":
            want = expected[r.error.frame_id]
            assert want is not None, f"good frame {r.error.frame_id} failed: {r.error.message}"
            assert (r.error.code, r.error.status) == (want.value[0], want.name)
            assert r.error.message
            assert r.error.error_class == classes[r.error.frame_id]
        else:
            assert expected[r.prediction.frame_id] is None
    assert {r.error.frame_id if r.HasField("error") else r.prediction.frame_id for r in replies} == set(expected)


def test_oversized_message_is_resource_exhausted(server: ServerThread, tiny: TinyBundle) -> None:
    big = frame(tiny, "w4b8", features=b"\xa1" * (DEFAULT_MAX_RECEIVE_BYTES + 1))
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(big, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            list(stub.InferStream(iter([frame(tiny, "w2b8"), big]), timeout=TIMEOUT))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(server, tiny)


def test_unexpected_backend_exception_is_internal(
    server: ServerThread, tiny: TinyBundle, open_gate: GateBackend
) -> None:
    open_gate.fail_with = ZeroDivisionError("bug in a backend")
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(frame(tiny, "w4b8"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        details = str(info.value.details())
        assert "ZeroDivisionError" in details and "log ref" in details
        assert trailing_class(info.value) is None  # not an error of the tree: no class to name
        (reply,) = list(stub.InferStream(iter([frame(tiny, "w4b8", 5)]), timeout=TIMEOUT))
        assert (reply.error.frame_id, reply.error.status, reply.error.error_class) == (5, "INTERNAL", "")
    open_gate.fail_with = None
    assert_serving(server, tiny)


class NamedBackendError(BackendError):
    """A backend's own error class, defined outside slimsplit.errors."""


def test_errors_name_their_public_class_and_echoed_strings_are_bounded(
    server: ServerThread, tiny: TinyBundle, open_gate: GateBackend
) -> None:
    open_gate.fail_with = NamedBackendError("the device fell over")
    huge = "m" * 50_000  # a client-chosen name the error message echoes
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(frame(tiny, "w4b8"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert trailing_class(info.value) == "BackendError"  # the public class it derives from
        open_gate.fail_with = None
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(frame(tiny, "w4b8", model=huge), timeout=TIMEOUT)
        details = str(info.value.details())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and trailing_class(info.value) == "UnknownModel"
        assert len(details) == MAX_ERROR_MESSAGE_CHARS and details.endswith("…")
        odd = frame(tiny, "w4b8", 7)
        odd.mode = huge
        (reply,) = list(stub.InferStream(iter([odd]), timeout=TIMEOUT))
        assert reply.error.error_class == "UnknownMode" and len(reply.error.message) == MAX_ERROR_MESSAGE_CHARS
    assert_serving(server, tiny)


# ----------------------------------------------------------------------------------------------- deadlines,
# disconnects


def test_expired_deadline_is_deadline_exceeded_and_the_server_stays_healthy(
    server: ServerThread, tiny: TinyBundle, open_gate: GateBackend
) -> None:
    open_gate.gate.clear()
    with channel(server) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(frame(tiny, "w4b8"), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
        open_gate.gate.set()
        assert stub.Infer(frame(tiny, "w4b8", 1), timeout=TIMEOUT).classes
    wait_until(lambda: server.core.in_flight == 0, "the expired frame to leave the core")


def _task_count(srv: ServerThread) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return srv.call(count)


def test_client_disconnect_mid_stream_leaks_nothing(
    server: ServerThread, tiny: TinyBundle, open_gate: GateBackend
) -> None:
    service = server.running.service
    baseline = _task_count(server)
    open_gate.gate.clear()
    requests = Requests()
    with channel(server) as ch:
        call = pb_grpc.SplitInferenceStub(ch).InferStream(iter(requests), timeout=TIMEOUT)
        for seed in range(10):
            requests.send(frame(tiny, "w2b8", seed))
        wait_until(lambda: open_gate.waiting >= 1 and server.core.in_flight == 4, "frames in flight (bounded at 4)")
        assert service.active_streams == 1
        call.cancel()  # the client goes away with frames in flight and more unread
        requests.close()
    wait_until(lambda: service.active_streams == 0, "the stream handler to finish")
    wait_until(lambda: server.core.in_flight == 0, "the cancelled frames to leave the core")
    open_gate.gate.set()
    wait_until(lambda: _task_count(server) <= baseline, "no leftover tasks")
    assert_serving(server, tiny)


def test_stream_in_flight_is_bounded(server: ServerThread, tiny: TinyBundle, open_gate: GateBackend) -> None:
    open_gate.gate.clear()
    requests = Requests()
    with channel(server) as ch:
        replies = pb_grpc.SplitInferenceStub(ch).InferStream(iter(requests), timeout=TIMEOUT)
        for seed in range(12):
            requests.send(frame(tiny, "w4b2", seed))
        wait_until(lambda: server.core.in_flight == 4, "4 frames in flight")
        time.sleep(0.05)
        assert server.core.in_flight == 4  # stream_max_in_flight: the rest stay unread
        open_gate.gate.set()
        got = {next(replies).prediction.frame_id for _ in range(12)}
        requests.close()
        assert list(replies) == []
    assert got == set(range(12))


# ----------------------------------------------------------------------------------------------- shutdown


def test_shutdown_during_a_stream_answers_in_flight_frames_then_unavailable(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    srv = serve_in_thread(config_for(tiny), backend=gate)
    requests = Requests()
    with channel(srv) as ch:
        replies = pb_grpc.SplitInferenceStub(ch).InferStream(iter(requests), timeout=TIMEOUT)
        for seed in range(3):
            requests.send(frame(tiny, "w4b8", seed))
        wait_until(lambda: srv.core.in_flight == 3, "3 frames in flight")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        wait_until(lambda: srv.running.service.shutting_down, "shutdown to begin")
        assert health_status_or_unavailable(srv.address) in {"NOT_SERVING", "UNAVAILABLE"}
        gate.gate.set()
        got = [next(replies) for _ in range(3)]
        assert sorted(r.prediction.frame_id for r in got) == [0, 1, 2]
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        requests.close()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SplitInferenceStub(ch).Infer(frame(tiny, "w4b8"), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def health_status_or_unavailable(address: str) -> str:
    try:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(health_status(address)))
    except grpc.RpcError as exc:
        return str(exc.code().name)


def test_sigterm_stops_the_cli_gracefully(tiny: TinyBundle) -> None:
    cmd = [
        sys.executable,
        "-m",
        "slimsplit.server.cli",
        "--models",
        str(tiny.root),
        "--port",
        "0",
        "--grace",
        "2",
    ]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            address = None
            lines = []
            while address is None:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                m = re.search(r"serving .* on (127\.0\.0\.1:\d+)", line)
                address = m.group(1) if m else None
            assert address, "".join(lines)
            assert health_status(address, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert "stopped" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


# ----------------------------------------------------------------------------------------------- health,
# reflection, metrics


def test_health_service(server: ServerThread) -> None:
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health_status(server.address, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        pool = DescriptorPool(db)
        svc = pool.FindServiceByName(SERVICE_NAME)
        assert {m.name for m in svc.methods} == {"Infer", "InferStream", "PlaneStream", "Describe"}
        assert pool.FindMessageTypeByName("slimsplit.v1.FeatureFrame").fields_by_name["features"].number == 6


def test_metrics_endpoint(tiny: TinyBundle) -> None:
    config = replace(config_for(tiny), metrics=MetricsConfig(port=0))
    with ServerThread(config) as srv, channel(srv) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        stub.Infer(frame(tiny, "w2b2"), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError):
            stub.Infer(frame(tiny, "w2b2", model="nope"), timeout=TIMEOUT)
        port = srv.running.metrics_port
        assert port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT).read().decode()
    assert 'slimsplit_frames_total{mode="w2b2",model="tiny",status="OK"} 1.0' in text
    assert 'slimsplit_frames_total{mode="_unknown",model="_unknown",status="NOT_FOUND"} 1.0' in text
    assert 'slimsplit_batch_size_count{mode="w2b2",model="tiny"} 1.0' in text


def test_a_busy_port_is_a_clear_error(server: ServerThread, tiny: TinyBundle) -> None:
    from slimsplit.errors import SlimsplitError

    with pytest.raises(SlimsplitError, match="cannot listen on"):
        serve_in_thread(config_for(tiny), port=server.port)
