"""Misbehaving clients, each run in a process of its own so that its work never shares a GIL with the good client:
``python -m bench.faults.worker KIND --target HOST:PORT --seconds S [--n N] ...``; the last stdout line is a JSON
object of counts.

Kinds: ``raw-fuzz`` (random and mutated bytes as the body of every RPC, identity serializers), ``frame-fuzz``
(hypothesis-generated ``FeatureFrame`` fields and codec headers on streams and unary calls), ``unary-flood``,
``stream-flood``, ``unread`` (streams that write and never read), ``idle-tcp`` (connections that never send the
HTTP/2 preface), ``idle-channels`` (gRPC channels that connect and stay idle), ``slow`` (streams that read replies
slowly, and connections that trickle their preface), ``load`` (well-behaved streams that count their replies) and
``mixed`` (a random mix of all of the bad, for the soak).

Every reply is classified: ``server_errors`` counts UNKNOWN, INTERNAL and DATA_LOSS statuses and any status text
that leaks internals (a Python class, a traceback); ``unanswered`` counts frames that were read by the server (the
stream went on after them) and got no reply before the stream ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

SERVICE = "/slimsplit.v1.SplitInference/"
UNARY_METHODS = (SERVICE + "Infer", SERVICE + "Describe", "/grpc.health.v1.Health/Check")
STREAM_METHODS = (SERVICE + "InferStream", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
SERVER_ERROR_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
LEAKS = ("<class", "Traceback", "Exception calling application", "Unexpected ")
CLIENT_CORE_INTERNAL = "Internal error from Core"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class Tally:
    """What one worker tried and saw."""

    counts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    server_errors_by: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    examples: list[str] = field(default_factory=list)

    def status(self, code: grpc.StatusCode, details: str | None, where: str) -> None:
        text = details or ""
        if code is grpc.StatusCode.INTERNAL and text == CLIENT_CORE_INTERNAL:
            # the client's own gRPC core: the server ended the stream (with its status) while this client was still
            # writing; the server's status is lost to the client, not wrong
            self.statuses[f"{where}:INTERNAL (client core: stream ended while writing)"] += 1
            return
        self.statuses[f"{where}:{code.name}"] += 1
        bad = code in SERVER_ERROR_CODES or any(leak in text for leak in LEAKS)
        if "metadata size exceeds" in text:
            bad = True  # our own error trailer overflowed the metadata limit
        if bad:
            self.server_errors += 1
            self.server_errors_by[f"{where}:{code.name}"] += 1
            if len(self.examples) < 8:
                self.examples.append(f"{where}: {code.name} {text[:160]!r}")

    def frame_error(self, err: pb.FrameError, where: str) -> None:
        try:
            code = grpc.StatusCode[err.status] if err.status else grpc.StatusCode.UNKNOWN
        except KeyError:
            code = grpc.StatusCode.UNKNOWN
        self.status(code, err.message, where)

    def doc(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "statuses": dict(self.statuses),
            "server_errors": self.server_errors,
            "server_errors_by": dict(self.server_errors_by),
            "unanswered": self.unanswered,
            "examples": self.examples,
        }


class Frames:
    """Valid frames of the shipped bundle's modes from random features (tails answer them; classes unchecked)."""

    def __init__(self, seed: int = 0) -> None:
        m = Bundle.open(default_bundle_path()).manifest
        self.model = m.name
        self.modes = [(mode.name, mode.width, mode.bits) for mode in m.modes]
        self.hw = (m.feature.height, m.feature.width)
        rng = np.random.default_rng(seed)
        self.payloads: list[tuple[str, bytes]] = []
        for name, width, bits in self.modes:
            for _ in range(4):
                x = np.maximum(rng.normal(size=(width, *self.hw)), 0).astype(np.float32)
                self.payloads.append((name, encode_features(x, bits)))
        self._next = 0

    def frame(self, frame_id: int) -> pb.FeatureFrame:
        self._next = (self._next + 1) % len(self.payloads)
        mode, payload = self.payloads[self._next]
        return pb.FeatureFrame(
            protocol_version=PROTOCOL_VERSION, frame_id=frame_id, model=self.model, mode=mode, features=payload
        )


def reply_id(r: pb.StreamReply) -> int:
    return int(r.prediction.frame_id if r.HasField("prediction") else r.error.frame_id)


# --------------------------------------------------------------------------------------------------- fuzzing
def random_body(rng: random.Random, frames: Frames) -> bytes:
    """Random bytes, a mutated valid message, an oversized one, or a valid message with huge strings."""
    pick = rng.random()
    if pick < 0.35:
        return rng.randbytes(rng.choice((0, 1, 2, 5, 10, 40, 200, 1000)))
    if pick < 0.75:
        body = bytearray(frames.frame(rng.randrange(1 << 30)).SerializeToString())
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and body:
                body[rng.randrange(len(body))] = rng.randrange(256)
            elif op < 0.75 and body:
                del body[rng.randrange(len(body)) :]
            else:
                body[rng.randrange(len(body) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
        return bytes(body)
    if pick < 0.85:
        f = frames.frame(1)
        setattr(f, rng.choice(("model", "mode", "model_version")), "x" * rng.choice((300, 20_000, 60_000)))
        return f.SerializeToString()
    if pick < 0.9:
        return rng.randbytes(rng.choice((100_000, 300_000)))  # over the server's message limit
    return struct.pack("<B", rng.randrange(256)) * rng.randint(1, 64)


async def raw_fuzz(args: argparse.Namespace, t: Tally) -> None:
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds
    async with grpc.aio.insecure_channel(args.target) as ch:
        unary = {m: ch.unary_unary(m, request_serializer=_ident, response_deserializer=_ident) for m in UNARY_METHODS}
        stream = {
            m: ch.stream_stream(m, request_serializer=_ident, response_deserializer=_ident) for m in STREAM_METHODS
        }

        async def one_unary(rng: random.Random) -> None:
            method = rng.choice(UNARY_METHODS)
            t.counts[f"unary {method.rsplit('/', 1)[1]}"] += 1
            try:
                await unary[method](random_body(rng, frames), timeout=5)
                t.statuses[f"{method.rsplit('/', 1)[1]}:OK"] += 1
            except grpc.aio.AioRpcError as exc:
                t.status(exc.code(), exc.details(), method.rsplit("/", 1)[1])

        async def one_stream(rng: random.Random) -> None:
            method = rng.choice(STREAM_METHODS)
            name = method.rsplit("/", 1)[1]
            bodies = [random_body(rng, frames) for _ in range(rng.randint(1, 20))]
            t.counts[f"stream {name} messages"] += len(bodies)
            t.counts[f"stream {name}"] += 1
            call = stream[method](iter(bodies), timeout=5)
            try:
                async for _ in call:
                    pass
                t.statuses[f"{name}:OK"] += 1
            except grpc.aio.AioRpcError as exc:
                t.status(exc.code(), exc.details(), name)

        async def good_then_garbage(rng: random.Random) -> None:
            """Good frames, then one undecodable message: every good frame read before it must be answered."""
            n = 50
            msgs = [frames.frame(i + 1).SerializeToString() for i in range(n)]
            garbage = rng.choice((b"\xff" * 7, rng.randbytes(30), b"x" * 200_000))
            t.counts["stream good frames then garbage"] += 1
            call = stream[SERVICE + "InferStream"](iter([*msgs, garbage]), timeout=10)
            seen = set()
            try:
                async for body in call:
                    seen.add(reply_id(pb.StreamReply.FromString(body)))
                t.statuses["garbage-after-good:OK"] += 1
            except grpc.aio.AioRpcError as exc:
                t.status(exc.code(), exc.details(), "garbage-after-good")
            lost = n - len(seen & set(range(1, n + 1)))
            t.counts["good frames before garbage"] += n
            t.counts["good frames before garbage unanswered"] += lost
            t.unanswered += lost

        async def task(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < until:
                pick = rng.random()
                await (one_unary(rng) if pick < 0.7 else one_stream(rng) if pick < 0.97 else good_then_garbage(rng))

        await asyncio.gather(*(task(args.seed * 100 + i) for i in range(args.concurrency)))


def frame_strategy(frames: Frames) -> Any:
    """Hypothesis strategy over FeatureFrame fields and codec headers (version 2 layout, see slimsplit.codec.header)."""
    from hypothesis import strategies as st

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    f16 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 65504.0, float("inf"), float("-inf"), float("nan"), 1e-8, 3.5])
    dims = st.one_of(st.integers(0, 20), st.sampled_from([127, 128, 255, 65535, 65536, 2**21]))
    header = st.builds(
        lambda mv, coder, bits, c, h, w, lo, hi, plen, extra: bytes([mv, (coder << 4) | bits])
        + varint(c) + varint(h) + varint(w) + struct.pack(">ee", lo, hi) + varint(plen) + extra,
        st.sampled_from([0xA2, 0xA1, 0xA3, 0xAF, 0x00, 0xFF, 0x2A]),
        st.integers(0, 15),
        st.integers(0, 15),
        dims, dims, dims, f16, f16,
        st.one_of(st.integers(0, 300), st.sampled_from([65535, 2**20])),
        st.binary(max_size=600),
    )  # fmt: skip
    valid = st.sampled_from(frames.payloads).map(lambda p: p[1])

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(valid))
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=4)):
            data[pos] = val
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)

    modes = [m[0] for m in frames.modes]
    text_odd = st.sampled_from(["", "x", "../../etc", "\x1b[31mred\x1b[0m", "w2b2\x00", "W2B2", "é" * 40, "m" * 20_000])
    return st.builds(
        lambda pv, model, mode, feats, top_k: pb.FeatureFrame(
            protocol_version=pv, model=model, mode=mode, features=feats, top_k=top_k
        ),
        st.one_of(st.just(PROTOCOL_VERSION), st.integers(0, 2**32 - 1)),
        st.one_of(st.just(frames.model), text_odd),
        st.one_of(st.sampled_from(modes), text_odd),
        st.one_of(header, mutated(), valid, st.binary(max_size=2000)),
        st.one_of(st.integers(0, 10), st.integers(0, 2**32 - 1)),
    )


def generate_frames(frames: Frames, n: int, seed: int) -> list[pb.FeatureFrame]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    out: list[pb.FeatureFrame] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frame_strategy(frames))
    def collect(f: pb.FeatureFrame) -> None:
        out.append(f)

    collect()
    return out


async def frame_fuzz(args: argparse.Namespace, t: Tally) -> None:
    frames = Frames(args.seed)
    generated = generate_frames(frames, args.n, args.seed)
    t.counts["frames generated (hypothesis)"] = len(generated)
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for start in range(0, len(generated), 50):
            batch = generated[start : start + 50]
            for i, f in enumerate(batch):
                f.frame_id = start + i + 1
            call = stub.InferStream(iter(batch), timeout=20)
            seen: Counter[int] = Counter()
            try:
                async for reply in call:
                    seen[reply_id(reply)] += 1
                    if reply.HasField("prediction"):
                        p = reply.prediction
                        t.statuses["stream:prediction"] += 1
                        if not all(0 <= s <= 1 for s in p.scores) or any(c >= 10 for c in p.classes):
                            t.server_errors += 1
                            t.server_errors_by["insane prediction"] += 1
                            t.examples.append(f"insane prediction for frame {p.frame_id}: {p}")
                    else:
                        t.frame_error(reply.error, "stream")
            except grpc.aio.AioRpcError as exc:
                t.status(exc.code(), exc.details(), "stream-call")
            t.counts["stream frames"] += len(batch)
            ids = {f.frame_id for f in batch}
            t.unanswered += len(ids - set(seen))
            t.counts["replies twice"] += sum(1 for v in seen.values() if v > 1)
            for f in batch[::5]:
                t.counts["unary frames"] += 1
                try:
                    await stub.Infer(f, timeout=10)
                    t.statuses["unary:prediction"] += 1
                except grpc.aio.AioRpcError as exc:
                    t.status(exc.code(), exc.details(), "unary")


# --------------------------------------------------------------------------------------------------- overload
async def unary_flood(args: argparse.Namespace, t: Tally) -> None:
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds
    interval = args.concurrency / args.rate  # each task's pace
    ids = iter(range(1, 1 << 62))
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)

        async def task(offset: float) -> None:
            next_at = time.monotonic() + offset
            while time.monotonic() < until:
                t.counts["calls"] += 1
                try:
                    await stub.Infer(frames.frame(next(ids)), timeout=1.0)
                    t.statuses["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    t.status(exc.code(), exc.details(), "Infer")
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.monotonic()

        await asyncio.gather(*(task(i * interval / args.concurrency) for i in range(args.concurrency)))
    t.counts["calls_per_s"] = int(t.counts["calls"] / args.seconds)


async def _stream_worker(
    stub: Any, frames: Frames, t: Tally, until: float, in_flight: int, base_id: int, read_delay_s: float = 0.0
) -> None:
    """One stream with at most ``in_flight`` frames unanswered; counts frames, replies and frames lost."""
    sem = asyncio.Semaphore(in_flight)
    call = stub.InferStream(timeout=max(1.0, until - time.monotonic() + 10))
    sent: set[int] = set()
    answered: set[int] = set()
    stopped = asyncio.Event()

    async def reader() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for reply in call:
                answered.add(reply_id(reply))
                if reply.HasField("prediction"):
                    t.statuses["stream:OK"] += 1
                else:
                    t.frame_error(reply.error, "stream")
                sem.release()
                if read_delay_s:
                    await asyncio.sleep(read_delay_s)
        stopped.set()

    rt = asyncio.create_task(reader())
    fid = base_id
    try:
        while time.monotonic() < until and not stopped.is_set():
            await sem.acquire()
            fid += 1
            sent.add(fid)
            t.counts["frames"] += 1
            await call.write(frames.frame(fid))
        await call.done_writing()
        await asyncio.wait_for(rt, 15)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
        pass
    finally:
        rt.cancel()
        call.cancel()
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        code = await call.code()
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            t.status(code, await call.details(), "stream-call")
    t.counts["frames unanswered at the end"] += len(sent - answered)


async def stream_flood(args: argparse.Namespace, t: Tally) -> None:
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        t.counts["streams"] = args.n
        await asyncio.gather(*(_stream_worker(stub, frames, t, until, args.in_flight, i << 32) for i in range(args.n)))


async def load(args: argparse.Namespace, t: Tally) -> None:
    """Well-behaved streams at ``--rate`` frames/s in all: every frame must be answered."""
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)

        async def paced(i: int) -> None:
            while time.monotonic() < until:
                end = min(until, time.monotonic() + 5)
                base = (i << 40) + t.counts["frames"]
                await _stream_worker(stub, frames, t, end, 4, base, read_delay_s=args.n / args.rate)

        await asyncio.gather(*(paced(i) for i in range(args.n)))
    t.unanswered = t.counts["frames unanswered at the end"]


async def unread(args: argparse.Namespace, t: Tally) -> None:
    """``--n`` streams that write frames as fast as flow control lets them and never read a reply."""
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)

        async def one(i: int) -> None:
            call = stub.InferStream(timeout=args.seconds + 30)
            fid = i << 32
            try:
                while time.monotonic() < until:
                    fid += 1
                    await asyncio.wait_for(call.write(frames.frame(fid)), max(0.01, until - time.monotonic()))
                    t.counts["frames written"] += 1
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                t.counts["streams ended by the server"] += 1
                if isinstance(exc, grpc.aio.AioRpcError):
                    t.status(exc.code(), exc.details(), "unread")
            except TimeoutError:
                t.counts["streams blocked by flow control at the end"] += 1
            call.cancel()

        t.counts["streams"] = args.n
        await asyncio.gather(*(one(i) for i in range(args.n)))


async def slow(args: argparse.Namespace, t: Tally) -> None:
    """``--n`` streams writing 100 frames/s and reading 5 replies/s, and ``--n`` connections that send the HTTP/2
    preface one byte per second."""
    frames = Frames(args.seed)
    until = time.monotonic() + args.seconds

    async def trickle() -> None:
        try:
            reader, writer = await asyncio.open_connection(*_hostport(args.target))
        except OSError:
            t.counts["trickle connect failed"] += 1
            return
        t.counts["trickle connections"] += 1
        try:
            for b in H2_PREFACE:
                if time.monotonic() >= until:
                    break
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(1.0)
                if reader.at_eof():
                    t.counts["trickle closed by the server"] += 1
                    break
        except OSError:
            t.counts["trickle closed by the server"] += 1
        writer.close()

    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)

        async def reader_stream(i: int) -> None:
            call = stub.InferStream(timeout=args.seconds + 30)
            got = 0

            async def read() -> None:
                nonlocal got
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    async for _ in call:
                        got += 1
                        await asyncio.sleep(0.2)

            rt = asyncio.create_task(read())
            fid = i << 32
            try:
                while time.monotonic() < until:
                    fid += 1
                    await asyncio.wait_for(call.write(frames.frame(fid)), max(0.01, until - time.monotonic()))
                    t.counts["frames written"] += 1
                    await asyncio.sleep(0.01)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                pass
            rt.cancel()
            call.cancel()
            t.counts["replies read"] += got

        t.counts["slow-reading streams"] = args.n
        await asyncio.gather(*(reader_stream(i) for i in range(args.n)), *(trickle() for _ in range(args.n)))


def _hostport(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


async def idle_tcp(args: argparse.Namespace, t: Tally) -> None:
    """``--n`` TCP connections that never send a byte; how many the server closes, and when."""
    host, port = _hostport(args.target)
    socks: list[socket.socket] = []
    for _ in range(args.n):
        s = socket.socket()
        try:
            s.connect((host, port))
        except OSError:
            t.counts["connect failed"] += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    t.counts["connections"] = len(socks)
    t0 = time.monotonic()
    closed: set[int] = set()
    while time.monotonic() - t0 < args.seconds:
        await asyncio.sleep(1.0)
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                data = s.recv(65536)  # the server's SETTINGS or GOAWAY are read and dropped; b"" is its close
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data == b"":
                closed.add(i)
                if len(closed) == 1:
                    t.counts["first closed by the server after s"] = int(time.monotonic() - t0)
    t.counts["closed by the server"] = len(closed)
    t.counts["still open at the end"] = len(socks) - len(closed)
    for s in socks:
        s.close()


async def idle_channels(args: argparse.Namespace, t: Tally) -> None:
    """``--n`` gRPC channels (each its own connection) that connect, make one call, and stay idle."""
    chans = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(args.n)
    ]

    async def ready(ch: grpc.aio.Channel) -> bool:
        try:
            await asyncio.wait_for(ch.channel_ready(), 30)
            await ch.unary_unary(SERVICE + "Describe", request_serializer=_ident, response_deserializer=_ident)(
                b"", timeout=30
            )
            return True
        except (TimeoutError, grpc.aio.AioRpcError):
            return False

    ok = await asyncio.gather(*(ready(ch) for ch in chans))
    t.counts["channels"] = args.n
    t.counts["connected"] = sum(ok)
    await asyncio.sleep(max(0.0, args.seconds))
    states = Counter(ch.get_state(try_to_connect=False).name for ch in chans)
    for name, n in states.items():
        t.counts[f"state at the end: {name}"] = n
    await asyncio.gather(*(ch.close(None) for ch in chans))


# --------------------------------------------------------------------------------------------------- soak mix
async def mixed(args: argparse.Namespace, t: Tally) -> None:
    """A random mix of bad behaviour at a moderate rate, for the soak."""
    frames = Frames(args.seed)
    rng = random.Random(args.seed)
    until = time.monotonic() + args.seconds
    host, port = _hostport(args.target)
    async with grpc.aio.insecure_channel(args.target) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        raw_infer = ch.unary_unary(SERVICE + "Infer", request_serializer=_ident, response_deserializer=_ident)

        async def garbage() -> None:
            t.counts["garbage unary calls"] += 1
            try:
                await raw_infer(random_body(rng, frames), timeout=5)
            except grpc.aio.AioRpcError as exc:
                t.status(exc.code(), exc.details(), "garbage")

        async def cancelled_stream() -> None:
            t.counts["streams cancelled half-way"] += 1
            call = stub.InferStream(timeout=10)
            for i in range(20):
                await call.write(frames.frame(i + 1))
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call.read()
            call.cancel()

        async def unread_stream() -> None:
            t.counts["unread streams (2 s)"] += 1
            call = stub.InferStream(timeout=10)
            end = time.monotonic() + 2
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                i = 0
                while time.monotonic() < end:
                    i += 1
                    await asyncio.wait_for(call.write(frames.frame(i)), 1)
            call.cancel()

        async def idle_conn() -> None:
            t.counts["idle TCP connections (5 s)"] += 1
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, port)
                await asyncio.sleep(5)
                writer.close()

        actions: list[Callable[[], Coroutine[Any, Any, None]]] = [garbage] * 6 + [
            cancelled_stream,
            unread_stream,
            idle_conn,
        ]
        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            task = asyncio.create_task(rng.choice(actions)())
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(1.0 / args.rate)
        await asyncio.gather(*pending, return_exceptions=True)


KINDS: dict[str, Callable[[argparse.Namespace, Tally], Coroutine[Any, Any, None]]] = {
    "raw-fuzz": raw_fuzz,
    "frame-fuzz": frame_fuzz,
    "unary-flood": unary_flood,
    "stream-flood": stream_flood,
    "load": load,
    "unread": unread,
    "slow": slow,
    "idle-tcp": idle_tcp,
    "idle-channels": idle_channels,
    "mixed": mixed,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults.worker")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--target", required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t = Tally()
    t0 = time.monotonic()
    try:
        asyncio.run(KINDS[args.kind](args, t))
    except Exception as exc:  # the worker's own failure is reported, not hidden
        t.examples.append(f"worker failed: {type(exc).__name__}: {exc}")
        t.counts["worker failed"] = 1
    doc = t.doc()
    doc["wall_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
