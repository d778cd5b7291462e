"""PlaneStream end to end on 127.0.0.1 with real ONNX Runtime tails: frames opened, their planes acknowledged, the
tail run on the planes there when the budget says so (or all of them), late planes discarded and counted, bad input
answered per frame while the stream goes on."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from fixtures_bundle import TinyBundle, write_tiny_bundle

from slimsplit.codec.planes import decode_planes, encode_planes
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

TIMEOUT = 20.0
MODE = "w4b8"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def server(tiny: TinyBundle) -> Iterator[ServerThread]:
    config = ServerConfig(models=(tiny.root,), grpc=GrpcConfig(port=0, grace_s=5.0, stream_max_in_flight=4))
    with ServerThread(config) as srv:
        yield srv


class Stream:
    """One PlaneStream the test feeds message by message; replies are collected on a thread."""

    def __init__(self, srv: ServerThread) -> None:
        self._out: queue.Queue[pb.PlaneMessage | None] = queue.Queue()
        self.replies: queue.Queue[pb.PlaneReply | BaseException | None] = queue.Queue()
        self._channel = grpc.insecure_channel(srv.address)
        stub = pb_grpc.SplitInferenceStub(self._channel)
        self.call = stub.PlaneStream(self._messages(), timeout=TIMEOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _messages(self) -> Iterator[pb.PlaneMessage]:
        while (m := self._out.get()) is not None:
            yield m

    def _read(self) -> None:
        try:
            for r in self.call:
                self.replies.put(r)
        except grpc.RpcError as exc:
            self.replies.put(exc)
        self.replies.put(None)

    def open(self, tiny: TinyBundle, frame_id: int, *, planes: int = 8, budget_ms: int = 0, **kw: Any) -> None:
        fields: dict[str, Any] = {
            "protocol_version": 1,
            "frame_id": frame_id,
            "model": tiny.manifest.name,
            "mode": MODE,
            "planes": planes,
            "budget_ms": budget_ms,
            "top_k": 3,
        }
        fields.update(kw)
        self._out.put(pb.PlaneMessage(open=pb.PlaneOpen(**fields)))

    def plane(self, frame_id: int, unit: bytes) -> None:
        self._out.put(pb.PlaneMessage(plane=pb.PlaneData(frame_id=frame_id, unit=unit)))

    def close(self) -> None:
        self._out.put(None)

    def next(self, kind: str | None = None) -> pb.PlaneReply:
        """The next reply (of ``kind`` when given: acks before it are skipped)."""
        while True:
            r = self.replies.get(timeout=TIMEOUT)
            assert isinstance(r, pb.PlaneReply), f"the stream ended: {r!r}"
            if kind is None or r.WhichOneof("kind") == kind:
                return r

    def result(self) -> pb.PlaneReply:
        """The next prediction or error (acks skipped)."""
        while True:
            r = self.next()
            if r.WhichOneof("kind") != "ack":
                return r

    def end(self) -> list[pb.PlaneReply]:
        self.close()
        rest = []
        while (r := self.replies.get(timeout=TIMEOUT)) is not None:
            assert not isinstance(r, BaseException), r
            rest.append(r)
        self._channel.close()
        return rest


def units_of(tiny: TinyBundle, frame_id: int, seed: int = 0) -> list[bytes]:
    return encode_planes(tiny.features(MODE, seed), 8, frame_id=frame_id)


def top1(tiny: TinyBundle, units: list[bytes]) -> int:
    x = decode_planes(units)
    w, b = tiny.weights[tiny.mode(MODE).width]
    return int(np.argmax(x.reshape(1, -1) @ w + b))


def test_all_planes_are_acknowledged_and_served_at_once(server: ServerThread, tiny: TinyBundle) -> None:
    s = Stream(server)
    units = units_of(tiny, 5)
    t0 = time.perf_counter()
    s.open(tiny, 5, planes=8, budget_ms=5_000)
    for u in units:
        s.plane(5, u)
    acks = [s.next("ack").ack for _ in units]
    assert [(a.frame_id, a.plane, a.bytes, a.late) for a in acks] == [
        (5, p, len(u), False) for p, u in enumerate(units)
    ]
    r = s.result()
    assert time.perf_counter() - t0 < 4.0, "served at the budget, not when all planes were there"
    assert r.prediction.frame_id == 5 and r.prediction.planes_used == 8
    assert r.prediction.classes[0] == top1(tiny, units)
    s.end()


def test_the_budget_serves_the_planes_that_arrived_and_later_ones_are_late(
    server: ServerThread, tiny: TinyBundle
) -> None:
    s = Stream(server)
    units = units_of(tiny, 7, seed=3)
    s.open(tiny, 7, planes=8, budget_ms=300)
    for u in units[:3]:
        s.plane(7, u)
    t0 = time.perf_counter()
    r = s.result()
    waited = time.perf_counter() - t0
    assert r.prediction.planes_used == 3
    assert r.prediction.classes[0] == top1(tiny, units[:3])
    assert waited > 0.05, "the frame was served before its budget with planes missing"
    s.plane(7, units[3])
    late = s.next("ack").ack
    assert (late.frame_id, late.plane, late.late) == (7, 3, True)
    s.end()


def test_no_plane_in_time_is_deadline_exceeded_and_the_stream_goes_on(server: ServerThread, tiny: TinyBundle) -> None:
    s = Stream(server)
    s.open(tiny, 1, planes=8, budget_ms=50)
    r = s.result()
    assert (r.error.frame_id, r.error.status) == (1, "DEADLINE_EXCEEDED")
    units = units_of(tiny, 2)
    s.open(tiny, 2, planes=2)
    s.plane(2, units[0])
    s.plane(2, units[1])
    assert s.result().prediction.planes_used == 2
    s.end()


def test_bad_opens_and_units_fail_their_frame_only(server: ServerThread, tiny: TinyBundle) -> None:
    s = Stream(server)
    s.open(tiny, 1, mode="w4b9")
    r = s.result()
    assert (r.error.frame_id, r.error.status) == (1, "NOT_FOUND")
    s.open(tiny, 2, planes=9)
    r = s.result()
    assert (r.error.status, "planes" in r.error.message) == ("INVALID_ARGUMENT", True)
    s.open(tiny, 3)
    s.plane(3, encode_planes(tiny.features("w2b8"), 8, frame_id=3)[0])  # another width's shape
    r = s.result()
    assert (r.error.frame_id, r.error.status) == (3, "INVALID_ARGUMENT")
    s.open(tiny, 4)
    s.plane(4, units_of(tiny, 99)[0])  # another frame's unit
    r = s.result()
    assert (r.error.frame_id, r.error.status, "frame" in r.error.message) == (4, "INVALID_ARGUMENT", True)
    s.open(tiny, 5, planes=1)
    s.plane(5, units_of(tiny, 5)[0])
    assert s.result().prediction.planes_used == 1
    s.plane(12345, b"junk")  # a frame that is not open: discarded and counted as late
    assert s.next("ack").ack.late
    s.end()


def test_half_close_serves_the_open_frames_with_what_they_have(server: ServerThread, tiny: TinyBundle) -> None:
    s = Stream(server)
    units = units_of(tiny, 9)
    s.open(tiny, 9, planes=8)  # no budget: it would wait for all planes
    s.plane(9, units[0])
    s.plane(9, units[1])
    rest = s.end()
    predictions = [r.prediction for r in rest if r.WhichOneof("kind") == "prediction"]
    assert [(p.frame_id, p.planes_used) for p in predictions] == [(9, 2)]


def test_too_many_open_frames_are_refused(server: ServerThread, tiny: TinyBundle) -> None:
    s = Stream(server)
    for i in range(5):  # stream_max_in_flight = 4
        s.open(tiny, i, planes=8)
    r = s.result()
    assert (r.error.frame_id, r.error.status) == (4, "RESOURCE_EXHAUSTED")
    rest = s.end()
    assert sorted(r.error.frame_id for r in rest if r.WhichOneof("kind") == "error") == [0, 1, 2, 3]
