"""The live generator of a sweep point: precomputed requests over gRPC (unary ``Infer``) from several processes.

Each process (``multiprocessing`` *spawn*: no gRPC state crosses a fork) gets a :class:`WorkerSpec`: its share of
the clients (closed loop) or of the offered rate (open loop, its send times staggered against the others'), the
serialized requests, the channel's credentials and token. It connects, warms up with one call, says ready, waits
for ``go``, then sends bytes and receives bytes (no message is built on the measured path but the frame id's two
appended bytes), from ``go`` for ``seconds``, and returns one :data:`Row` per frame. The parent turns the rows of
all processes into :class:`~slimsplit.records.FrameRecord`\\ s on one time axis (``time.monotonic`` is one clock
for every process of the machine).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeAlias

from slimsplit.apps.loadtest.payloads import Payloads, with_frame_id
from slimsplit.apps.loadtest.sweep import Kind
from slimsplit.errors import SlimsplitError, Unavailable
from slimsplit.protocol import AUTHORIZATION_KEY, SERVICE_NAME
from slimsplit.records import OK, FrameRecord, ServerTiming

INFER = f"/{SERVICE_NAME}/Infer"
#: How long the processes may take to start, connect and warm up.
READY_TIMEOUT_S = 60.0
#: Slack beyond a point's seconds and give-up wait before its processes are given up.
RESULT_SLACK_S = 30.0
#: ``(sent s after go, latency ms, status, request index, queue ms, tail ms, total ms, batch size, backend)``
Row: TypeAlias = tuple[float, float, str, int, float, float, float, int, str]


@dataclass(frozen=True)
class WorkerSpec:
    """What one generator process does."""

    proc: int
    target: str
    kind: Kind
    share: float  # clients (closed loop) or frames/s (open loop) of this process
    phase_s: float  # open loop: this process's first send after go
    seconds: float
    timeout_s: float
    requests: tuple[bytes, ...]
    first_request: int  # this process starts at this request index (processes do not all send the same frame)
    ca: bytes | None = None
    key: bytes | None = None
    cert: bytes | None = None
    server_name: str | None = None
    token: str | None = None


def _channel(spec: WorkerSpec) -> Any:
    import grpc

    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", 64 << 20)]
    if spec.server_name:
        options.append(("grpc.ssl_target_name_override", spec.server_name))
    if spec.ca is not None or spec.cert is not None:
        creds = grpc.ssl_channel_credentials(spec.ca, spec.key, spec.cert)
        return grpc.aio.secure_channel(spec.target, creds, options=options)
    return grpc.aio.insecure_channel(spec.target, options=options)


def _answer(raw: bytes) -> tuple[str, float, float, float, int, str]:
    """A reply's status and timing (queue, tail, total ms, batch size, backend): ``OK`` and the timing, or the
    status of what breaks a rule (a body that is no ``Prediction``, a timing the edge refuses:
    :func:`~slimsplit.edge.replies.check_timing`: NaN, negative, absurd) and no timing, as the edge counts a reply
    it cannot trust."""
    from google.protobuf.message import DecodeError

    from slimsplit.edge.replies import INVALID_REPLY, check_timing
    from slimsplit.edge.status import status_of
    from slimsplit.v1 import slimsplit_pb2 as pb

    try:
        t = check_timing(pb.Prediction.FromString(raw).timing)
    except SlimsplitError as exc:
        return status_of(exc), 0.0, 0.0, 0.0, 0, ""
    except DecodeError:
        return INVALID_REPLY, 0.0, 0.0, 0.0, 0, ""
    return OK, t.queue_ms, t.tail_ms, t.total_ms, t.batch_size, t.backend


async def _load(spec: WorkerSpec, conn: Connection) -> list[Row]:
    import grpc

    channel = _channel(spec)
    call = channel.unary_unary(INFER)  # bytes in, bytes out: no (de)serializer
    meta = ((AUTHORIZATION_KEY, f"Bearer {spec.token}"),) if spec.token else None
    requests = spec.requests
    n = len(requests)
    counter = [spec.first_request]
    rows: list[Row] = []

    async def once(t0: float, k: int) -> None:
        request = with_frame_id(requests[k % n], spec.proc * 1_000_000_000 + counter[0])
        counter[0] += 1
        sent = time.monotonic()
        try:
            raw = await call(request, timeout=spec.timeout_s, metadata=meta)
        except grpc.aio.AioRpcError as exc:
            rows.append((sent - t0, (time.monotonic() - sent) * 1e3, exc.code().name, k % n, 0.0, 0.0, 0.0, 0, ""))
            return
        latency = (time.monotonic() - sent) * 1e3
        status, queue, tail, total, batch, backend = _answer(raw)
        rows.append((sent - t0, latency, status, k % n, queue, tail, total, batch, backend))

    try:
        await call(with_frame_id(requests[0], 0), timeout=max(spec.timeout_s, 10.0), metadata=meta)  # warm up
        conn.send("ready")
        t0 = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        end = t0 + spec.seconds
        if spec.kind == "clients":

            async def client(c: int) -> None:
                k = spec.first_request + c
                while time.monotonic() < end:
                    await once(t0, k)
                    k += int(spec.share)

            await asyncio.gather(*(client(c) for c in range(int(spec.share))))
        else:
            tasks = []
            i = 0
            while True:
                at = t0 + spec.phase_s + i / spec.share
                if at >= end:
                    break
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(once(t0, spec.first_request + i)))
                i += 1
            await asyncio.gather(*tasks)
    finally:
        await channel.close()
    return rows


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """A generator process: :func:`_load`, then its rows (or ``("error", text)``) on ``conn``."""
    try:
        rows = asyncio.run(_load(spec, conn))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("rows", rows))
    finally:
        conn.close()


def split(kind: Kind, load: float, procs: int) -> list[tuple[float, float]]:
    """Each process's ``(share, phase_s)``: clients split as evenly as whole clients go (processes left without
    one are not started); a rate split evenly with the processes' send times interleaved."""
    if kind == "clients":
        n = int(load)
        shares = [n // procs + (1 if p < n % procs else 0) for p in range(procs)]
        return [(float(s), 0.0) for s in shares if s > 0]
    return [(load / procs, p / load) for p in range(procs)]


def run_live_point(
    kind: Kind,
    load: float,
    payloads: Payloads,
    *,
    target: str,
    seconds: float,
    deadline_ms: float,
    give_up_ms: float,
    procs: int,
    credentials: Sequence[dict[str, Any]],
) -> list[FrameRecord]:
    """One point against ``target`` from ``procs`` processes (process ``p`` uses ``credentials[p % len]``: keys
    ``ca``/``key``/``cert`` bytes, ``server_name``, ``token``); the frames of all, by send time. Unavailable
    when a process could not connect or did not finish in time."""
    ctx = mp.get_context("spawn")
    shares = split(kind, load, procs)
    workers = []
    try:
        first = 0
        for p, (share, phase) in enumerate(shares):
            creds = credentials[p % len(credentials)] if credentials else {}
            spec = WorkerSpec(
                proc=p,
                target=target,
                kind=kind,
                share=share,
                phase_s=phase,
                seconds=seconds,
                timeout_s=give_up_ms / 1e3,
                requests=payloads.requests,
                first_request=first,
                **creds,
            )
            first += int(share) if kind == "clients" else 0
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
            process.start()
            child.close()
            workers.append((process, parent))
        for _, parent in workers:
            if not parent.poll(READY_TIMEOUT_S):
                raise Unavailable(f"a generator process did not connect to {target} in {READY_TIMEOUT_S:g} s")
            message = parent.recv()
            if message != "ready":
                raise Unavailable(f"a generator process could not load {target}: {message[1]}")
        t0 = time.monotonic() + 0.05
        for _, parent in workers:
            parent.send(t0)
        rows: list[tuple[int, Row]] = []
        for p, (_, parent) in enumerate(workers):
            if not parent.poll(seconds + give_up_ms / 1e3 + RESULT_SLACK_S):
                raise Unavailable(f"a generator process did not finish its {seconds:g} s against {target}")
            what, body = parent.recv()
            if what != "rows":
                raise Unavailable(f"a generator process failed against {target}: {body}")
            rows.extend((p, r) for r in body)
    finally:
        for process, parent in workers:
            parent.close()
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()
    rows.sort(key=lambda pr: (pr[1][0], pr[0]))
    records = []
    for i, (_, (t_s, latency, status, k, queue, tail, total, batch, backend)) in enumerate(rows):
        ok = status == OK
        records.append(
            FrameRecord(
                frame_id=i,
                index=k,
                mode=payloads.modes[k],
                status=status,
                payload_bytes=payloads.sizes[k],
                rtt_ms=latency if ok else math.nan,
                latency_ms=latency if ok else math.nan,
                server=ServerTiming(queue_ms=queue, tail_ms=tail, total_ms=total, backend=backend, batch_size=batch)
                if ok
                else None,
                deadline_ms=deadline_ms,
                t_s=t_s,
                sent_s=t_s,
            )
        )
    return records


__all__ = ["INFER", "Row", "WorkerSpec", "run_live_point", "split", "worker_main"]
