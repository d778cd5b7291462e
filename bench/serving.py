"""Serving benchmark: where a frame's time goes, the gRPC + codec overhead, and throughput under concurrency.

The server runs in its own process (as in production: client and server do not share a GIL), on 127.0.0.1,
with the shipped bundle; the client is the real edge client (``slimsplit.edge``). Four measurements:

1. **Latency breakdown** (ONNX Runtime tail, one frame in flight, the real encoder): p50 per frame of
   ``edge_encode`` (preprocess + ONNX encoder), ``codec_encode`` (quantize + pack + entropy code),
   ``transfer`` (round trip - server total: gRPC + loopback, both ways), ``server_queue_decode`` (validation,
   decoding, batcher queue), ``tail`` (the tail's compute), ``response`` (server top-k and reply building =
   server total - queue - decode - tail, plus the client's reply handling).
2. **overhead_ms_p50** with a null tail (zero logits, no compute; the server's ``null`` backend, which
   implements ``server/backends/base.py``): per frame, ``codec_encode`` + the round trip, i.e. everything
   except encoder and tail compute, one frame in flight; for ``unary`` (``Infer``) and ``stream`` (``InferStream``).
3. **Concurrency sweep**: throughput and p50/p99 round-trip latency with 1, 4, 16, 64 frames outstanding, for
   unary (that many concurrent ``Infer`` calls on one channel) and stream (one ``InferStream`` with that many
   frames in flight), with the ONNX Runtime tail and with the null tail. Payloads are pre-encoded.
4. **Security** (what TLS costs): the null-tail overhead of 2. (one frame in flight, unary and stream), the time
   from a new client to its first answer, and the throughput at 16 frames in flight (unary and stream), side by
   side for four servers running at once: ``plaintext``, ``tls`` (server certificate only), ``mtls`` (client
   certificate required) and ``mtls+token`` (that and a devices file: every call carries the device's bearer
   token; what the demo and the load tester run), with certificates and token from a temporary development PKI
   (``slimsplit.apps.certs.make_dev_pki``). Every point runs on the four in turn, in several rounds, so a drift of
   the machine's speed hits them alike.

Targets: overhead <= 1 ms p50 per frame, stream throughput >= unary throughput at concurrency 16.

    python -m bench.serving --out out/serving.json             # full: 2000 frames per point
    python -m bench.serving --quick --out out/serving-quick.json
    python -m bench.serving --security-only --out bench/results/serving_security.json   # 4. alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bench.results_io import recorded_args
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedOptions
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import AuthSettings, ClientConfig, TlsSettings
from slimsplit.edge.pipeline import PipelineConfig, run_frames
from slimsplit.edge.run import bundle_controller, default_mode
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import SourceFrame, load_sample
from slimsplit.edge.transport import Outcome
from slimsplit.records import FrameRecord, percentile

COMPONENTS = ("edge_encode", "codec_encode", "transfer", "server_queue_decode", "tail", "response")


@dataclass(frozen=True)
class BenchConfig:
    breakdown_frames: int = 400
    overhead_frames: int = 2000
    point_frames: int = 2000
    warmup: int = 50
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    mode: str = ""  # empty = the bundle's default mode (the most accurate)
    backends: tuple[str, ...] = ("onnxruntime", "null")
    security: bool = True  # section 4
    main: bool = True  # sections 1-3 (False: --security-only)
    connects: int = 20  # new clients timed per security variant
    security_rounds: int = 3  # section 4 repeats its points this often, the variants in turn each time


QUICK = BenchConfig(
    breakdown_frames=100, overhead_frames=300, point_frames=300, warmup=20, connects=5, security_rounds=2
)
#: The security variants of section 4, in the order of the tables.
SECURITY = ("plaintext", "tls", "mtls", "mtls+token")
#: Frames in flight of the security section's throughput points.
SECURITY_CONCURRENCY = 16
#: The device the security section's client authenticates as.
BENCH_DEVICE = "bench-edge"


# --------------------------------------------------------------------------------------------- server process


ECHO = "grpc-echo"
"""A pseudo-backend: a bare ``grpc.aio`` server with the same service that answers every frame with a fixed
prediction (no validation, decoding or tail): the floor that Python gRPC itself costs on this machine."""


async def _serve_echo(conn: Connection) -> None:
    from slimsplit.v1 import slimsplit_pb2 as pb
    from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

    def answer(frame: Any) -> Any:
        return pb.Prediction(frame_id=frame.frame_id, classes=[0, 1, 2, 3, 4], scores=[0.2] * 5, mode=frame.mode)

    class Echo(pb_grpc.SplitInferenceServicer):  # type: ignore[misc]
        async def Infer(self, frame: Any, context: Any) -> Any:
            return answer(frame)

        async def InferStream(self, frames: Any, context: Any) -> Any:
            async for frame in frames:
                yield pb.StreamReply(prediction=answer(frame))

    server = grpc.aio.server()
    pb_grpc.add_SplitInferenceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    await server.wait_for_termination()


@dataclass(frozen=True)
class ServerSecurity:
    """A bench server's TLS and auth files (paths as strings: they cross to the spawned process): ``cert``/``key``
    = TLS, with ``client_ca`` also mTLS, with ``devices_file`` also tokens. All empty: plaintext."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    devices_file: str = ""


def _serve(backend: str, bundle: str, conn: Connection, security: ServerSecurity | None = None) -> None:
    """Child process: serve ``bundle`` with ``backend`` on a free port until SIGTERM; send the port back."""
    if backend == ECHO:
        asyncio.run(_serve_echo(conn))
        return
    from slimsplit.server.app import serve
    from slimsplit.server.config import AuthConfig, BackendConfig, GrpcConfig, ServerConfig, TlsConfig

    sec = security or ServerSecurity()

    def path(text: str) -> Path | None:
        return Path(text) if text else None

    config = ServerConfig(
        models=(Path(bundle),),
        log_level="warning",
        grpc=GrpcConfig(host="127.0.0.1", port=0, grace_s=0.5),
        backend=BackendConfig(name=backend),
        tls=TlsConfig(cert=path(sec.cert), key=path(sec.key), client_ca=path(sec.client_ca)),
        auth=AuthConfig(devices_file=path(sec.devices_file)),
    )
    asyncio.run(serve(config, ready=lambda running: conn.send(running.port)))


@contextmanager
def server_process(backend: str, bundle: Path, security: ServerSecurity | None = None) -> Iterator[str]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_serve, args=(backend, str(bundle), child, security), daemon=True, name=f"server-{backend}"
    )
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.2):
            if not proc.is_alive():
                raise RuntimeError(f"the {backend} server process exited with code {proc.exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {backend} server did not start within 120 s")
        port = parent.recv()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --------------------------------------------------------------------------------------------- measurements


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": float(np.mean(values)) if values else float("nan"),
    }


def _components(r: FrameRecord) -> dict[str, float]:
    s = r.server
    assert s is not None
    server_rest = max(0.0, s.total_ms - s.queue_ms - s.decode_ms - s.tail_ms)
    return {
        "edge_encode": r.encoder_ms,
        "codec_encode": r.codec_ms,
        "transfer": r.transfer_ms,
        "server_queue_decode": s.queue_ms + s.decode_ms,
        "tail": s.tail_ms,
        "response": server_rest + r.response_ms,
        "total": r.latency_ms,
    }


async def breakdown(address: str, bundle: Bundle, mode: str, frames: list[SourceFrame], unary: bool) -> dict[str, Any]:
    """The pipeline with the real encoder, one frame in flight; p50/p99 of each component."""
    runtime = EncoderRuntime(bundle)
    cfg = ClientConfig(target=address, max_in_flight=1, deadline_ms=10_000)
    pipe = PipelineConfig(model=bundle.manifest.name, unary=unary)
    async with EdgeClient(cfg) as client:
        await client.wait_ready(30)
        run = RunConfig(deadline_ms=cfg.deadline_ms, fps=pipe.fps, max_in_flight=cfg.max_in_flight)
        controller, table = bundle_controller("fixed", bundle.manifest, run, FixedOptions(mode))
        await run_frames(client, runtime, controller, table, frames[:20], pipe)  # warm-up
        report = await run_frames(client, runtime, controller, table, frames, pipe)
    ok = [r for r in report.results if r.ok]
    per = [_components(r) for r in ok]
    keys = (*COMPONENTS, "total")
    return {
        "frames": len(report.results),
        "errors": len(report.results) - len(ok),
        "ms": {k: _stats([p[k] for p in per]) for k in keys},
    }


async def _stream_point(client: EdgeClient, msgs: list[Any], concurrency: int) -> list[Outcome]:
    stream = client.open_stream()
    slots = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        slots.release()

    for msg in msgs:
        await slots.acquire()
        await stream.submit(msg, 30.0, done)
    await stream.drain(60.0)
    await stream.aclose()
    return outcomes


async def _unary_point(client: EdgeClient, msgs: list[Any], concurrency: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    it = iter(msgs)

    async def worker() -> None:
        for msg in it:
            outcomes.append(await client.infer_outcome(msg, 30.0))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def measure_point(
    address: str,
    model: str,
    mode: str,
    payloads: list[bytes],
    n: int,
    warmup: int,
    concurrency: int,
    unary: bool,
    client_config: ClientConfig | None = None,
) -> tuple[list[Outcome], float]:
    """``n`` frames with ``concurrency`` outstanding (after ``warmup`` frames) on a new client (``client_config``:
    its TLS and token; default: plaintext); outcomes and wall seconds."""
    cfg = replace(client_config or ClientConfig(), target=address, max_in_flight=max(concurrency, 1))
    async with EdgeClient(cfg) as client:
        await client.wait_ready(30)

        def msgs(count: int) -> list[Any]:
            return [
                client.make_frame(mode=mode, payload=payloads[i % len(payloads)], model=model) for i in range(count)
            ]

        point = _unary_point if unary else _stream_point
        await point(client, msgs(warmup), concurrency)
        batch = msgs(n)
        t0 = time.perf_counter()
        outcomes = await point(client, batch, concurrency)
        wall = time.perf_counter() - t0
    return outcomes, wall


def summarize_point(outcomes: list[Outcome], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    rtts = [o.rtt_ms for o in ok]
    return {
        "concurrency": concurrency,
        "frames": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "fps": len(ok) / wall if wall > 0 else float("nan"),
        "p50_ms": percentile(rtts, 50),
        "p99_ms": percentile(rtts, 99),
        "server_p50_ms": percentile([o.prediction.timing.total_ms for o in ok if o.prediction is not None], 50),
        "batch_mean": float(np.mean([o.prediction.timing.batch_size for o in ok if o.prediction is not None]))
        if ok
        else float("nan"),
    }


# --------------------------------------------------------------------------------------------- security


@dataclass(frozen=True)
class SecurityVariant:
    """One column of the security section: the server's files and the client's credentials."""

    name: str
    server: ServerSecurity
    client: ClientConfig


def security_variants(folder: Path) -> list[SecurityVariant]:
    """:data:`SECURITY`'s variants with a development PKI made in ``folder`` (one device, :data:`BENCH_DEVICE`)."""
    from slimsplit.apps import certs

    pki = certs.make_dev_pki(folder, [BENCH_DEVICE], devices=folder / "devices.toml")
    device = pki.devices[BENCH_DEVICE]
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca.cert)
    mtls = TlsSettings(ca=pki.ca.cert, cert=device.cert, key=device.key)
    variants = [
        SecurityVariant("plaintext", ServerSecurity(), ClientConfig()),
        SecurityVariant("tls", ServerSecurity(cert, key), ClientConfig(tls=TlsSettings(ca=pki.ca.cert))),
        SecurityVariant("mtls", ServerSecurity(cert, key, ca), ClientConfig(tls=mtls)),
        SecurityVariant(
            "mtls+token",
            ServerSecurity(cert, key, ca, str(pki.devices_file)),
            ClientConfig(tls=mtls, auth=AuthSettings(token_file=device.token)),
        ),
    ]
    assert tuple(v.name for v in variants) == SECURITY
    return variants


async def connect_times(address: str, client_config: ClientConfig, count: int) -> list[float]:
    """ms from a new client to its first answer (channel connected: TCP and any TLS handshake, then one
    ``Describe``, which carries the token), ``count`` times."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        async with EdgeClient(replace(client_config, target=address)) as client:
            await client.wait_ready(30)
            await client.describe()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def security_section(
    config: BenchConfig,
    bundle_path: Path,
    model: str,
    mode: str,
    payloads: list[bytes],
    codec_ms: list[float],
    progress: Any,
) -> dict[str, Any]:
    """Section 4: the :data:`SECURITY` servers (null tail) at once, each measurement on each in turn."""
    folder = Path(tempfile.mkdtemp(prefix="slimsplit-bench-pki-"))
    try:
        variants = security_variants(folder)
        names = [v.name for v in variants]
        out: dict[str, Any] = {
            "backend": "null",
            "device": BENCH_DEVICE,
            "concurrency": SECURITY_CONCURRENCY,
            "variants": names,
            "definitions": {
                "plaintext": "no TLS, no token",
                "tls": "TLS with the server's certificate; no client certificate, no token",
                "mtls": "TLS, client certificate required (the device's identity); no devices file, no token",
                "mtls+token": "TLS, client certificate required (mTLS), a devices file: every call carries the "
                "device's bearer token, checked by the server's auth interceptor",
                "overhead": "codec encode + round trip with a null tail, one frame in flight (as section 2)",
                "connect": "a new client until its first answer: connect (TCP + TLS handshake) and one Describe",
                "fps_at_16": f"frames/s with {SECURITY_CONCURRENCY} in flight on one channel (stream: one "
                "InferStream; unary: that many concurrent Infer calls); the median of the rounds "
                "(fps_at_16_rounds), as are p50_ms_at_16 and p99_ms_at_16",
                "rounds": f"{config.security_rounds}: every point ran once per round on each variant in turn; "
                "overhead percentiles pool the rounds' frames",
            },
            "overhead_ms_p50": {n: {} for n in names},
            "overhead_ms_p99": {n: {} for n in names},
            "rtt_ms_p50": {n: {} for n in names},
            "fps_at_16": {n: {} for n in names},
            "fps_at_16_rounds": {n: {} for n in names},
            "p50_ms_at_16": {n: {} for n in names},
            "p99_ms_at_16": {n: {} for n in names},
            "connect_ms_p50": {},
            "errors": dict.fromkeys(names, 0),
        }
        transports = ("unary", "stream")
        rtts: dict[tuple[str, str], list[float]] = {(v.name, t): [] for v in variants for t in transports}
        points: dict[tuple[str, str], list[dict[str, Any]]] = {(v.name, t): [] for v in variants for t in transports}
        with ExitStack() as stack:
            address = {v.name: stack.enter_context(server_process("null", bundle_path, v.server)) for v in variants}
            for v in variants:
                times = asyncio.run(connect_times(address[v.name], v.client, config.connects))
                out["connect_ms_p50"][v.name] = percentile(times, 50)
                progress.update()
            for _ in range(config.security_rounds):  # every round: each point on each server in turn
                for transport in transports:
                    for v in variants:
                        outcomes, _wall = asyncio.run(
                            measure_point(
                                address[v.name],
                                model,
                                mode,
                                payloads,
                                config.overhead_frames,
                                config.warmup,
                                1,
                                transport == "unary",
                                v.client,
                            )
                        )
                        ok = [o.rtt_ms for o in outcomes if o.ok]
                        rtts[v.name, transport] += ok
                        out["errors"][v.name] += len(outcomes) - len(ok)
                        progress.update()
                for transport in transports:
                    for v in variants:
                        outcomes, wall = asyncio.run(
                            measure_point(
                                address[v.name],
                                model,
                                mode,
                                payloads,
                                config.point_frames,
                                config.warmup,
                                SECURITY_CONCURRENCY,
                                transport == "unary",
                                v.client,
                            )
                        )
                        point = summarize_point(outcomes, wall, SECURITY_CONCURRENCY)
                        points[v.name, transport].append(point)
                        out["errors"][v.name] += point["errors"]
                        progress.update()
        for (name, transport), values in rtts.items():
            codec = [codec_ms[i % len(codec_ms)] for i in range(len(values))]
            totals = [c + r for c, r in zip(codec, values, strict=True)]
            out["overhead_ms_p50"][name][transport] = percentile(totals, 50)
            out["overhead_ms_p99"][name][transport] = percentile(totals, 99)
            out["rtt_ms_p50"][name][transport] = percentile(values, 50)
        for (name, transport), pts in points.items():
            out["fps_at_16"][name][transport] = float(np.median([p["fps"] for p in pts]))
            out["fps_at_16_rounds"][name][transport] = [p["fps"] for p in pts]
            out["p50_ms_at_16"][name][transport] = float(np.median([p["p50_ms"] for p in pts]))
            out["p99_ms_at_16"][name][transport] = float(np.median([p["p99_ms"] for p in pts]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = names[0]
    out["vs_plaintext"] = {
        n: {
            "overhead_ms_p50_added": {
                t: out["overhead_ms_p50"][n][t] - out["overhead_ms_p50"][base][t] for t in ("unary", "stream")
            },
            "connect_ms_p50_added": out["connect_ms_p50"][n] - out["connect_ms_p50"][base],
            "fps_at_16_ratio": {t: out["fps_at_16"][n][t] / out["fps_at_16"][base][t] for t in ("unary", "stream")},
        }
        for n in names[1:]
    }
    return out


def security_steps(config: BenchConfig) -> int:
    """Progress steps of the security section: connects, then 2 overhead and 2 throughput points per variant and
    round."""
    return len(SECURITY) * (1 + 4 * config.security_rounds)


# --------------------------------------------------------------------------------------------- report


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(console: Console, doc: dict[str, Any]) -> None:
    if doc["breakdown"]:
        _print_main(console, doc)
    if "security" in doc:
        print_security(console, doc["security"])


def print_security(console: Console, sec: dict[str, Any]) -> None:
    """Section 4 side by side: one column per variant (after plaintext: the difference to it in brackets)."""
    c, names, base = sec["concurrency"], sec["variants"], sec["variants"][0]
    table = Table(title=f"What TLS costs ({sec['backend']} tail): ms at 1 in flight, frames/s at {c}")
    table.add_column("", no_wrap=True)
    for n in names:
        table.add_column(n, justify="right")

    def ms_row(label: str, key: str, transport: str | None, digits: int = 2) -> None:
        def value(n: str) -> Any:
            return sec[key][n] if transport is None else sec[key][n][transport]

        cells = []
        for n in names:
            v, b = value(n), value(base)
            extra = f" ({v - b:+.{digits}f})" if n != base and v is not None and b is not None else ""
            cells.append(_f(v, digits) + extra)
        table.add_row(label, *cells)

    def fps_row(label: str, transport: str) -> None:
        cells = []
        for n in names:
            v, b = sec["fps_at_16"][n][transport], sec["fps_at_16"][base][transport]
            extra = f" (x{v / b:.2f})" if n != base and v is not None and b else ""
            cells.append(_f(v, 0) + extra)
        table.add_row(label, *cells)

    ms_row("overhead unary p50", "overhead_ms_p50", "unary")
    ms_row("overhead stream p50", "overhead_ms_p50", "stream")
    ms_row("overhead stream p99", "overhead_ms_p99", "stream")
    ms_row("connect p50", "connect_ms_p50", None, 1)
    fps_row(f"unary fps @{c}", "unary")
    fps_row(f"stream fps @{c}", "stream")
    ms_row(f"stream p50 @{c}", "p50_ms_at_16", "stream")
    table.add_row("errors", *(str(sec["errors"][n]) for n in names))
    console.print(table)


def _print_main(console: Console, doc: dict[str, Any]) -> None:
    bd = Table(title=f"Per-frame latency breakdown, ms p50 (ONNX Runtime tail, mode {doc['mode']}, 1 in flight)")
    bd.add_column("component")
    for transport in ("stream", "unary"):
        bd.add_column(transport, justify="right")
    for key in (*COMPONENTS, "total"):
        bd.add_row(key, *(_f(doc["breakdown"][t]["ms"][key]["p50"]) for t in ("stream", "unary")))
    console.print(bd)

    ov = Table(title="Serving overhead per frame with a null tail (codec encode + round trip), ms")
    ov.add_column("transport")
    ov.add_column("p50", justify="right")
    ov.add_column("p99", justify="right")
    ov.add_column("codec p50", justify="right")
    ov.add_column("round trip p50", justify="right")
    ov.add_column("bare gRPC rtt p50", justify="right")
    ov.add_column("<= 1 ms?", justify="center")
    for t in ("unary", "stream"):
        o = doc["overhead"][t]
        ov.add_row(
            t,
            _f(o["p50"]),
            _f(o["p99"]),
            _f(o["codec_p50"]),
            _f(o["rtt_p50"]),
            _f(o.get("grpc_floor_rtt_p50")),
            "yes" if o["p50"] is not None and o["p50"] <= 1.0 else "NO",
        )
    console.print(ov)

    for backend, sweep in doc["concurrency"].items():
        sw = Table(title=f"Concurrency sweep, {backend} tail (round trip ms; frames/s)")
        sw.add_column("in flight", justify="right")
        for transport in ("unary", "stream"):
            sw.add_column(f"{transport} fps", justify="right")
            sw.add_column(f"{transport} p50", justify="right")
            sw.add_column(f"{transport} p99", justify="right")
        for u, s in zip(sweep["unary"], sweep["stream"], strict=True):
            sw.add_row(
                str(u["concurrency"]),
                *(_f(p[k], 0 if k == "fps" else 2) for p in (u, s) for k in ("fps", "p50_ms", "p99_ms")),
            )
        console.print(sw)
    console.print("targets: " + json.dumps(doc["targets"]))


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not doc["concurrency"]:  # --security-only
        plot_security(doc, path)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for backend, sweep in doc["concurrency"].items():
        for transport, style in (("unary", "--"), ("stream", "-")):
            pts = sweep[transport]
            xs = [p["concurrency"] for p in pts]
            ax1.plot(xs, [p["fps"] for p in pts], style, marker="o", label=f"{transport}, {backend}")
            ax2.plot(xs, [p["p50_ms"] for p in pts], style, marker="o", label=f"{transport}, {backend}")
    for ax, label in ((ax1, "frames / s"), (ax2, "round trip p50, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames in flight")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle(f"slimsplit serving on loopback ({doc['machine']['cpus']} CPUs), mode {doc['mode']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_security(doc: dict[str, Any], path: Path) -> None:
    """Section 4 as bars: overhead p50 and throughput at 16 in flight, per variant and transport."""
    import matplotlib.pyplot as plt

    sec = doc["security"]
    names = sec["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = np.arange(len(names))
    for k, transport in enumerate(("unary", "stream")):
        off = (k - 0.5) * 0.38
        ax1.bar(xs + off, [sec["overhead_ms_p50"][n][transport] or 0 for n in names], 0.36, label=transport)
        ax2.bar(xs + off, [sec["fps_at_16"][n][transport] or 0 for n in names], 0.36, label=transport)
    for ax, label in ((ax1, "overhead p50 ms, 1 in flight"), (ax2, f"frames / s, {sec['concurrency']} in flight")):
        ax.set_xticks(xs, names)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"what TLS costs: slimsplit on loopback, {sec['backend']} tail ({doc['machine']['cpus']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main


def run(config: BenchConfig, console: Console) -> dict[str, Any]:
    bundle_path = default_bundle_path()
    bundle = Bundle.open(bundle_path)
    manifest = bundle.manifest
    mode = manifest.mode(config.mode).name if config.mode else default_mode(manifest).name
    spec = manifest.mode(mode)
    sample = load_sample(manifest.input)
    frames = list(sample.take(config.breakdown_frames, cycle=True))
    runtime = EncoderRuntime(bundle)
    runtime.set_mode(mode)
    features = [runtime.features(f.image) for f in sample]
    tables = runtime.codec_tables(mode)
    payloads = [encode_features(x, spec.bits, tables=tables) for x in features]
    codec_ms = []
    for i in range(config.overhead_frames):
        x = features[i % len(features)]
        t0 = time.perf_counter()
        encode_features(x, spec.bits, tables=tables)
        codec_ms.append((time.perf_counter() - t0) * 1e3)

    points = len(config.backends) * len(config.concurrency) * 2
    steps = (2 + 2 + 2 + points if config.main else 0) + (security_steps(config) if config.security else 0)
    progress = tqdm(total=steps, desc="serving bench", unit="step", file=sys.stderr)
    doc: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "onnxruntime": ort.__version__,
            "load_average_at_start": list(os.getloadavg()),
        },
        "config": asdict(config),
        "model": f"{manifest.name}:{manifest.version}",
        "mode": mode,
        "payload_bytes_mean": float(np.mean([len(p) for p in payloads])),
        "definitions": {
            "transfer": "round trip - server total (gRPC + loopback, both directions)",
            "response": "server total - queue - decode - tail (top-k, reply) + client reply handling",
            "overhead": "codec encode on the edge + round trip with a null tail, one frame in flight",
            "grpc_floor": "round trip to a bare grpc.aio echo of the same service (no slimsplit code on the server)",
            "stream concurrency": "one InferStream with that many frames in flight",
            "unary concurrency": "that many concurrent Infer calls on one channel",
        },
        "breakdown": {},
        "overhead": {},
        "grpc_floor": {},
        "concurrency": {},
    }
    if config.main:
        _main_sections(doc, config, bundle_path, bundle, mode, frames, payloads, codec_ms, progress)
    if config.security:
        doc["security"] = security_section(config, bundle_path, manifest.name, mode, payloads, codec_ms, progress)
    progress.close()
    return doc


def _main_sections(
    doc: dict[str, Any],
    config: BenchConfig,
    bundle_path: Path,
    bundle: Bundle,
    mode: str,
    frames: list[SourceFrame],
    payloads: list[bytes],
    codec_ms: list[float],
    progress: Any,
) -> None:
    """Sections 1-3 into ``doc``."""
    manifest = bundle.manifest
    with server_process("onnxruntime", bundle_path) as address:
        for transport in ("stream", "unary"):
            doc["breakdown"][transport] = asyncio.run(breakdown(address, bundle, mode, frames, transport == "unary"))
            progress.update()
        if "onnxruntime" in config.backends:
            doc["concurrency"]["onnxruntime"] = _sweep(address, manifest.name, mode, payloads, config, progress)

    def one_in_flight(address: str, transport: str) -> list[Outcome]:
        point = measure_point(
            address, manifest.name, mode, payloads, config.overhead_frames, config.warmup, 1, transport == "unary"
        )
        return asyncio.run(point)[0]

    with server_process(ECHO, bundle_path) as address:
        for transport in ("unary", "stream"):
            outcomes = one_in_flight(address, transport)
            doc["grpc_floor"][transport] = {"rtt_p50": percentile([o.rtt_ms for o in outcomes if o.ok], 50)}
            progress.update()
    with server_process("null", bundle_path) as address:
        for transport in ("unary", "stream"):
            outcomes = one_in_flight(address, transport)
            rtts = [o.rtt_ms for o in outcomes if o.ok]
            totals = [c + r for c, r in zip(codec_ms, rtts, strict=False)]
            rtt_p50 = percentile(rtts, 50)
            doc["overhead"][transport] = {
                "p50": percentile(totals, 50),
                "p99": percentile(totals, 99),
                "codec_p50": percentile(codec_ms, 50),
                "rtt_p50": rtt_p50,
                "server_p50": percentile(
                    [o.prediction.timing.total_ms for o in outcomes if o.prediction is not None], 50
                ),
                "grpc_floor_rtt_p50": doc["grpc_floor"][transport]["rtt_p50"],
                "slimsplit_added_p50": rtt_p50 - doc["grpc_floor"][transport]["rtt_p50"],
                "errors": len(outcomes) - len(rtts),
            }
            progress.update()
        if "null" in config.backends:
            doc["concurrency"]["null"] = _sweep(address, manifest.name, mode, payloads, config, progress)
    doc["overhead_ms_p50"] = {t: doc["overhead"][t]["p50"] for t in ("unary", "stream")}
    at16 = {
        backend: _at(sweep["stream"], 16)["fps"] >= _at(sweep["unary"], 16)["fps"]
        for backend, sweep in doc["concurrency"].items()
        if 16 in config.concurrency
    }
    doc["targets"] = {
        "overhead_le_1ms_p50": {t: doc["overhead_ms_p50"][t] <= 1.0 for t in ("unary", "stream")},
        "stream_fps_ge_unary_at_16": at16,
    }


def _at(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    return next(p for p in points if p["concurrency"] == concurrency)


def _sweep(
    address: str, model: str, mode: str, payloads: list[bytes], config: BenchConfig, progress: Any
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"unary": [], "stream": []}
    for c in config.concurrency:
        for transport in ("unary", "stream"):
            outcomes, wall = asyncio.run(
                measure_point(
                    address,
                    model,
                    mode,
                    payloads,
                    config.point_frames,
                    config.warmup,
                    c,
                    transport == "unary",
                )
            )
            out[transport].append(summarize_point(outcomes, wall, c))
            progress.update()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("out/serving.json"), help="JSON results (default %(default)s)")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot (default: --out with .png)")
    p.add_argument("--quick", action="store_true", help="a short run (300 frames per point)")
    p.add_argument("--mode", default="", help="operating mode (default: the bundle's most accurate)")
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help="frames in flight (default 1 4 16 64)")
    sections = p.add_mutually_exclusive_group()
    sections.add_argument(
        "--security-only", action="store_true", help="only section 4: plaintext vs TLS vs mTLS + token, side by side"
    )
    sections.add_argument("--no-security", action="store_true", help="sections 1-3 only (no TLS servers)")
    args = p.parse_args(argv)
    config = QUICK if args.quick else BenchConfig()
    config = replace(config, main=not args.security_only, security=not args.no_security)
    if args.mode:
        config = replace(config, mode=args.mode)
    if args.concurrency:
        config = replace(config, concurrency=tuple(args.concurrency))
    console = Console()
    doc = _finite(run(config, console))
    doc["command"] = "python -m bench.serving " + " ".join(recorded_args(sys.argv[1:] if argv is None else argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print_tables(console, doc)
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(doc, plot_path)
    console.print(f"wrote {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
