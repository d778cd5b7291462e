"""Soak: a real server (ONNX Runtime tails) on 127.0.0.1 under a mix of good frames, every kind of bad frame,
streams cancelled half-way and unary calls, from several clients at once, for a while.

What must hold throughout: every frame read on a stream that was not cancelled gets exactly one reply with its
frame id, a good frame the reference prediction and a bad one its status; every unary call its prediction or its
status; afterwards the server serves a fresh client correctly and holds no frame in flight. ``SLIMSPLIT_SOAK=short``
(CI) runs a few seconds; without it, a minute and a half.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from fixtures_bundle import TinyBundle, write_tiny_bundle
from test_server_grpc import BAD_CASES, TIMEOUT, assert_serving, channel, config_for, expected_top1, frame, wait_until

from slimsplit.server.app import ServerThread
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

SOAK_SECONDS = 6.0 if os.environ.get("SLIMSPLIT_SOAK") == "short" else 90.0
STREAM_CLIENTS = 4
UNARY_CLIENTS = 2
GOOD_MODES = ("w2b2", "w2b8", "w4b2", "w4b8")
CANCEL_SHARE = 0.2  # of the streams: cancelled after reading part of the replies


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def server(tiny: TinyBundle) -> Iterator[ServerThread]:
    with ServerThread(config_for(tiny, stream_max_in_flight=8)) as srv:
        yield srv


@dataclass
class Tally:
    """What the clients saw; ``problems`` must stay empty."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    frames: int = 0
    good: int = 0
    bad: int = 0
    streams: int = 0
    cancelled: int = 0
    unary: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, n in counts.items():
                setattr(self, key, getattr(self, key) + n)

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 20:
                self.problems.append(text)


Expect = grpc.StatusCode | None  # None: a prediction with the reference top-1


def random_frame(tiny: TinyBundle, rng: random.Random, frame_id: int) -> tuple[pb.FeatureFrame, Expect]:
    if rng.random() < 0.6:
        f = frame(tiny, rng.choice(GOOD_MODES), rng.randrange(1 << 30))
        expect: Expect = None
    else:
        make, expect = BAD_CASES[rng.choice(list(BAD_CASES))]
        f = make(tiny)
    f.frame_id = frame_id
    return f, expect


def check_reply(tiny: TinyBundle, sent: pb.FeatureFrame, expect: Expect, reply: pb.StreamReply) -> str | None:
    if reply.HasField("prediction"):
        if expect is not None:
            return f"frame {sent.frame_id}: a prediction, expected {expect.name}"
        if reply.prediction.classes[0] != expected_top1(tiny, sent):
            return f"frame {sent.frame_id}: top-1 {reply.prediction.classes[0]} is not the reference"
        return None
    err = reply.error
    if expect is None:
        return f"good frame {sent.frame_id} failed: {err.status} {err.message}"
    if (err.code, err.status) != (expect.value[0], expect.name) or not err.message:
        return f"frame {sent.frame_id}: {err.status} ({err.message!r}), expected {expect.name}"
    return None


def stream_client(srv: ServerThread, tiny: TinyBundle, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    next_id = seed * 10_000_000
    with channel(srv) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        while time.monotonic() < until:
            batch = []
            for _ in range(rng.randint(10, 60)):
                batch.append(random_frame(tiny, rng, next_id))
                next_id += 1
            sent = {f.frame_id: (f, expect) for f, expect in batch}
            call = stub.InferStream(iter([f for f, _ in batch]), timeout=TIMEOUT)
            cancel_after = rng.randint(0, len(batch) - 1) if rng.random() < CANCEL_SHARE else None
            seen: set[int] = set()
            try:
                for reply in call:
                    fid = reply.prediction.frame_id if reply.HasField("prediction") else reply.error.frame_id
                    if fid not in sent or fid in seen:
                        tally.problem(f"reply for frame {fid}: unknown or answered twice")
                        continue
                    seen.add(fid)
                    problem = check_reply(tiny, *sent[fid], reply)
                    if problem:
                        tally.problem(problem)
                    if cancel_after is not None and len(seen) > cancel_after:
                        call.cancel()
                        break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED or cancel_after is None:
                    tally.problem(f"stream failed: {exc.code().name} {exc.details()}")
            if cancel_after is None and seen != set(sent):
                tally.problem(f"stream answered {len(seen)} of {len(sent)} frames")
            good = sum(1 for fid in seen if sent[fid][1] is None)
            tally.add(frames=len(seen), good=good, bad=len(seen) - good, streams=1, cancelled=cancel_after is not None)


def unary_client(srv: ServerThread, tiny: TinyBundle, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    with channel(srv) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        while time.monotonic() < until:
            f, expect = random_frame(tiny, rng, rng.randrange(1 << 40))
            try:
                pred = stub.Infer(f, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                if expect is None or exc.code() != expect or not exc.details():
                    tally.problem(f"Infer: {exc.code().name} {exc.details()!r}, expected {expect}")
            else:
                if expect is not None:
                    tally.problem(f"Infer: a prediction, expected {expect.name}")
                elif pred.classes[0] != expected_top1(tiny, f):
                    tally.problem("Infer: top-1 is not the reference")
            tally.add(unary=1, good=expect is None, bad=expect is not None)


def test_the_server_survives_a_soak_of_good_bad_and_cancelled_traffic(server: ServerThread, tiny: TinyBundle) -> None:
    tally = Tally()
    until = time.monotonic() + SOAK_SECONDS
    workers: list[tuple[Callable[..., None], int]] = [(stream_client, i + 1) for i in range(STREAM_CLIENTS)]
    workers += [(unary_client, 100 + i) for i in range(UNARY_CLIENTS)]
    threads = [threading.Thread(target=fn, args=(server, tiny, seed, until, tally)) for fn, seed in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOAK_SECONDS + 4 * TIMEOUT)
        assert not t.is_alive(), "a client hung"
    assert tally.problems == []
    assert tally.streams >= STREAM_CLIENTS and tally.cancelled >= 1
    assert tally.good > 100 and tally.bad > 50 and tally.unary > 20
    # afterwards: nothing left in flight, and a fresh client is served correctly
    wait_until(lambda: server.core.in_flight == 0, "the server to finish every frame")
    assert server.running.service.active_streams == 0
    assert_serving(server, tiny)
