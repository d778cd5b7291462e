"""One load-generator process of bench/peer.py: precomputed requests to slimsplit or Triton over raw gRPC.

Runs under either virtual environment (``python -m bench.peer_load SPEC.json``): it needs only ``grpcio``,
``numpy`` and the server's protobuf module (``slimsplit.v1.slimsplit_pb2`` in the project's venv,
``tritonclient.grpc.service_pb2`` in ``.venv-triton``). Every request is serialized before the clock starts, and
the calls send and receive bytes (no per-call message building on the measured path).

Protocol with the parent: the worker builds its requests, connects, prints ``ready``; the parent writes
``go T_START T_END`` (``time.monotonic()`` seconds, shared by all processes of the machine); the worker loads the
server from then on, counts the answers that arrive inside ``[T_START, T_END]`` (their latencies and bytes),
stops sending at ``T_END``, drains, and prints one JSON line (:func:`run`'s result).

A ``check`` spec instead sends each request once, one at a time, and returns the top-1 class of every answer and
the scores it carries (Triton: the logits; slimsplit: its top-k probabilities).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

SLIMSPLIT_INFER = "/slimsplit.v1.SplitInference/Infer"
SLIMSPLIT_STREAM = "/slimsplit.v1.SplitInference/InferStream"
TRITON_INFER = "/inference.GRPCInferenceService/ModelInfer"
TRITON_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


@dataclass(frozen=True)
class Protocol:
    """How one server's requests are built and its answers read."""

    infer: str
    stream: str
    build: Callable[[dict[str, Any], int], list[bytes]]  # (data, first id) -> serialized requests
    stream_reply: Callable[[bytes], tuple[int, str]]  # reply -> (request id, error status or "")
    top1: Callable[[bytes], int]  # unary reply -> top-1 class
    logits: Callable[[bytes], list[float]]  # unary reply -> the scores it carries (Triton: logits; slimsplit: top-k)


def _slimsplit() -> Protocol:
    from slimsplit.v1 import slimsplit_pb2 as pb

    def build(data: dict[str, Any], first: int) -> list[bytes]:
        frames = data["frames"]
        count = data["count"]
        return [
            pb.FeatureFrame(
                protocol_version=1,
                frame_id=first + i,
                model=data["model"],
                mode=data["mode"],
                features=frames[i % len(frames)],
            ).SerializeToString()
            for i in range(count)
        ]

    def stream_reply(raw: bytes) -> tuple[int, str]:
        reply = pb.StreamReply.FromString(raw)
        if reply.HasField("error"):
            return int(reply.error.frame_id), reply.error.status or "ERROR"
        return int(reply.prediction.frame_id), ""

    def top1(raw: bytes) -> int:
        return int(pb.Prediction.FromString(raw).classes[0])

    def scores(raw: bytes) -> list[float]:
        return [float(v) for v in pb.Prediction.FromString(raw).scores]

    return Protocol(SLIMSPLIT_INFER, SLIMSPLIT_STREAM, build, stream_reply, top1, scores)


def _triton() -> Protocol:
    from tritonclient.grpc import service_pb2 as pb

    def build(data: dict[str, Any], first: int) -> list[bytes]:
        features = data["features"]
        count = data["count"]
        out = []
        for i in range(count):
            x = np.ascontiguousarray(features[i % len(features)][None], dtype=np.float32)
            req = pb.ModelInferRequest(model_name=data["triton_model"], id=str(first + i))
            tensor = req.inputs.add()
            tensor.name = "features"
            tensor.datatype = "FP32"
            tensor.shape.extend(x.shape)
            req.outputs.add().name = "logits"
            req.raw_input_contents.append(x.tobytes())
            out.append(req.SerializeToString())
        return out

    def stream_reply(raw: bytes) -> tuple[int, str]:
        reply = pb.ModelStreamInferResponse.FromString(raw)
        rid = int(reply.infer_response.id) if reply.infer_response.id else -1
        return rid, ("ERROR: " + reply.error_message[:80]) if reply.error_message else ""

    def logits(raw: bytes) -> list[float]:
        reply = pb.ModelInferResponse.FromString(raw)
        return [float(v) for v in np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)]

    def top1(raw: bytes) -> int:
        return int(np.argmax(logits(raw)))

    return Protocol(TRITON_INFER, TRITON_STREAM, build, stream_reply, top1, logits)


PROTOCOLS: dict[str, Callable[[], Protocol]] = {"slimsplit": _slimsplit, "triton": _triton}


def load_data(path: str) -> dict[str, Any]:
    """The precomputed inputs bench/peer.py wrote: codec frames (for slimsplit) and float32 features (Triton)."""
    with np.load(path, allow_pickle=False) as z:
        blob = z["frame_bytes"].tobytes()
        offsets = z["frame_offsets"].tolist()
        frames = [blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        return {
            "frames": frames,
            "features": np.asarray(z["features"], dtype=np.float32),
            "model": str(z["model"]),
            "mode": str(z["mode"]),
            "triton_model": str(z["triton_model"]),
        }


@dataclass
class Tally:
    """What one worker saw inside the measured window."""

    latencies: list[float]
    req_bytes: int = 0
    resp_bytes: int = 0
    errors: Counter[str] | None = None

    def error(self, name: str) -> None:
        assert self.errors is not None
        self.errors[name] += 1


async def _unary(
    channel: grpc.aio.Channel, proto: Protocol, reqs: list[bytes], in_flight: int, t0: float, t1: float, tally: Tally
) -> None:
    call = channel.unary_unary(proto.infer, None, None)
    cursor = iter(range(1 << 62))

    async def loop() -> None:
        while True:
            start = time.monotonic()
            if start >= t1:
                return
            req = reqs[next(cursor) % len(reqs)]
            try:
                reply = await call(req, timeout=60.0)
            except grpc.aio.AioRpcError as exc:
                if t0 <= time.monotonic() <= t1:
                    tally.error(exc.code().name)
                continue
            end = time.monotonic()
            if t0 <= end <= t1:
                tally.latencies.append(end - start)
                tally.req_bytes += len(req)
                tally.resp_bytes += len(reply)

    await asyncio.gather(*(loop() for _ in range(in_flight)))


async def _stream(
    channel: grpc.aio.Channel,
    proto: Protocol,
    reqs: list[bytes],
    ids: list[int],
    in_flight: int,
    t0: float,
    t1: float,
    tally: Tally,
) -> None:
    call = channel.stream_stream(proto.stream, None, None)(None)
    slots = asyncio.Semaphore(in_flight)
    sent: dict[int, tuple[float, int]] = {}

    async def reader() -> None:
        async for raw in call:
            end = time.monotonic()
            rid, error = proto.stream_reply(raw)
            start, size = sent.pop(rid, (end, 0))
            slots.release()
            if not t0 <= end <= t1:
                continue
            if error:
                tally.error(error.split(":")[0])
            else:
                tally.latencies.append(end - start)
                tally.req_bytes += size
                tally.resp_bytes += len(raw)

    reading = asyncio.ensure_future(reader())
    i = 0
    while True:
        try:  # a server that stops answering ends the point at T_END, not never
            await asyncio.wait_for(slots.acquire(), max(0.001, t1 - time.monotonic()))
        except TimeoutError:
            break
        now = time.monotonic()
        if now >= t1 or reading.done():
            break
        k = i % len(reqs)
        sent[ids[k]] = (now, len(reqs[k]))
        await call.write(reqs[k])
        i += 1
    await call.done_writing()
    try:
        await asyncio.wait_for(reading, 60.0)
    except grpc.aio.AioRpcError as exc:
        tally.error("STREAM_" + exc.code().name)


async def _check(channel: grpc.aio.Channel, proto: Protocol, reqs: list[bytes]) -> dict[str, Any]:
    call = channel.unary_unary(proto.infer, None, None)
    replies = [await call(req, timeout=30.0) for req in reqs]
    return {"top1": [proto.top1(r) for r in replies], "scores": [proto.logits(r) for r in replies]}


async def _wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
    await asyncio.wait_for(channel.channel_ready(), timeout_s)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` (server, target, transport, in_flight, data, id_base, count, check) and return the tally."""
    proto = PROTOCOLS[spec["server"]]()
    data = load_data(spec["data"])
    data["count"] = int(spec["count"])
    reqs = proto.build(data, int(spec["id_base"]))
    ids = list(range(int(spec["id_base"]), int(spec["id_base"]) + len(reqs)))
    async with grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        await _wait_ready(channel, 60.0)
        if spec.get("check"):
            return await _check(channel, proto, reqs[: len(data["features"])])
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        _, start, end = line.split()
        t0, t1 = float(start), float(end)
        tally = Tally(latencies=[], errors=Counter())
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        if spec["transport"] == "unary":
            await _unary(channel, proto, reqs, int(spec["in_flight"]), t0, t1, tally)
        else:
            await _stream(channel, proto, reqs, ids, int(spec["in_flight"]), t0, t1, tally)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "latencies_s": tally.latencies,
        "req_bytes": tally.req_bytes,
        "resp_bytes": tally.resp_bytes,
        "errors": dict(tally.errors or {}),
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.peer_load SPEC.json (bench/peer.py runs it)", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = json.load(f)
    result = asyncio.run(run(spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
