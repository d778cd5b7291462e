"""Workers benchmark: throughput of ``slimsplit-server --workers N`` against 1 worker, side by side.

Both servers run at once (``python -m slimsplit.server.cli``, the shipped bundle, the ONNX Runtime tail, plaintext on
127.0.0.1), idle while the other is measured; every round measures each in turn at each load, so a drift of the
machine's speed hits them alike; the figures are medians over the rounds. The load: ``--clients`` processes, each
with its own channel (one TCP connection: the kernel gives each connection to one worker) and one ``InferStream`` with
in-flight / clients frames outstanding, sending the bundle's real features (encoded once, before the run) through the
real edge client; every client connects and warms up first, then all are measured at once. Server CPU per frame: the
CPU time of the server's processes (supervisor and workers, from /proc) over the frames answered.

    python -m bench.workers --out bench/results/workers.json                 # 1 vs 2 workers at 16 and 64 in flight
    python -m bench.workers --quick --workers 1 4 --in-flight 16 64 256      # e.g. on a bigger machine
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bench.procs import tree_cpu_seconds
from bench.results_io import write_results
from bench.serving import _stream_point
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.run import default_mode
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import load_sample


@dataclass(frozen=True)
class WorkersBench:
    workers: tuple[int, ...] = (1, 2)
    in_flight: tuple[int, ...] = (16, 64)
    clients: int = 4
    frames: int = 1500  # per client and point
    warmup: int = 100
    rounds: int = 3
    backend: str = "onnxruntime"


@contextmanager
def server(workers: int, backend: str) -> Iterator[tuple[str, psutil.Process]]:
    """``slimsplit-server --workers N`` on a free port; its address and process once every worker serves."""
    cmd = [sys.executable, "-m", "slimsplit.server.cli", "--workers", str(workers), "--port", "0"]
    cmd += ["--backend", backend, "--log-level", "info", "--grace", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    pattern = (
        re.compile(r"serving .* on (127\.0\.0\.1:\d+)")
        if workers == 1
        else re.compile(rf"{workers} workers serving on (127\.0\.0\.1:\d+)")
    )
    lines: list[str] = []
    assert proc.stderr is not None
    address = None
    for line in proc.stderr:
        lines.append(line)
        m = pattern.search(line)
        if m:
            address = m.group(1)
            break
    if address is None:
        proc.wait()
        raise RuntimeError(f"the server with {workers} worker(s) did not start:\n{''.join(lines)}")
    drain = threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True)
    drain.start()
    try:
        yield address, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        drain.join(5)
        proc.stderr.close()


async def _client_run(
    address: str, model: str, mode: str, payloads: list[bytes], n: int, warmup: int, c: int, ready: Any, go: Any
) -> dict[str, Any]:
    cfg = ClientConfig(target=address, max_in_flight=c)
    async with EdgeClient(cfg) as client:
        await client.wait_ready(30)

        def msgs(count: int) -> list[Any]:
            return [
                client.make_frame(mode=mode, payload=payloads[i % len(payloads)], model=model) for i in range(count)
            ]

        await _stream_point(client, msgs(warmup), c)
        batch = msgs(n)
        ready.put(None)
        await asyncio.to_thread(go.wait)
        t0, cpu0 = time.monotonic(), time.process_time()
        outcomes = await _stream_point(client, batch, c)
        t1, cpu1 = time.monotonic(), time.process_time()
    ok = [o.rtt_ms for o in outcomes if o.ok]
    return {"ok": len(ok), "frames": len(outcomes), "t0": t0, "t1": t1, "cpu_s": cpu1 - cpu0, "rtts": ok}


def _client(
    address: str, model: str, mode: str, payloads: list[bytes], n: int, warmup: int, c: int, q: Any, ready: Any, go: Any
) -> None:
    """One load process: its own channel, one stream with ``c`` frames in flight, warmed up; measures once ``go`` is
    set, then sends its figures."""
    q.put(asyncio.run(_client_run(address, model, mode, payloads, n, warmup, c, ready, go)))


def measure(
    address: str, proc: psutil.Process, model: str, mode: str, payloads: list[bytes], cfg: WorkersBench, in_flight: int
) -> dict[str, Any]:
    """One point: every client connected and warmed up, then all measure at once (CLOCK_MONOTONIC is one clock for
    every process); throughput = frames answered over the span from the first start to the last end."""
    ctx = mp.get_context("spawn")
    q, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = max(1, in_flight // cfg.clients)
    args = (address, model, mode, payloads, cfg.frames, cfg.warmup, per, q, ready, go)
    procs = [ctx.Process(target=_client, args=args, daemon=True) for _ in range(cfg.clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    cpu0 = tree_cpu_seconds(proc.pid)
    go.set()
    results = [q.get(timeout=600) for _ in procs]
    cpu = tree_cpu_seconds(proc.pid) - cpu0
    for p in procs:
        p.join(30)
    ok = sum(r["ok"] for r in results)
    span = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    rtts = sorted(x for r in results for x in r["rtts"])
    return {
        "in_flight": in_flight,
        "fps": ok / span if span > 0 else float("nan"),
        "frames": sum(r["frames"] for r in results),
        "errors": sum(r["frames"] - r["ok"] for r in results),
        "p50_ms": rtts[len(rtts) // 2] if rtts else float("nan"),
        "p99_ms": rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] if rtts else float("nan"),
        "server_cpu_ms_per_frame": 1e3 * cpu / max(1, ok),
        "client_cpu_ms_per_frame": 1e3 * sum(r["cpu_s"] for r in results) / max(1, ok),
        # cores busy with this point (server + clients) over its span: the machine's share in use
        "cores_busy": (cpu + sum(r["cpu_s"] for r in results)) / span if span > 0 else float("nan"),
        "span_s": span,
    }


_MEDIANS = ("fps", "p50_ms", "p99_ms", "server_cpu_ms_per_frame", "client_cpu_ms_per_frame", "cores_busy")


def run(cfg: WorkersBench) -> dict[str, Any]:
    load_at_start = list(os.getloadavg())
    bundle = Bundle.open(default_bundle_path())
    manifest = bundle.manifest
    mode = default_mode(manifest).name
    spec = manifest.mode(mode)
    runtime = EncoderRuntime(bundle)
    runtime.set_mode(mode)
    sample = load_sample(manifest.input)
    tables = runtime.codec_tables(mode)
    payloads = [encode_features(runtime.features(f.image), spec.bits, tables=tables) for f in sample]
    rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    with ExitStack() as stack:
        servers = {n: stack.enter_context(server(n, cfg.backend)) for n in cfg.workers}
        steps = cfg.rounds * len(cfg.workers) * len(cfg.in_flight)
        with tqdm(total=steps, desc="workers bench", unit="point", file=sys.stderr) as progress:
            for _round in range(cfg.rounds):
                for c in cfg.in_flight:
                    for n in cfg.workers:
                        address, proc = servers[n]
                        rows.setdefault((n, c), []).append(
                            measure(address, proc, manifest.name, mode, payloads, cfg, c)
                        )
                        progress.update()
    results = []
    for (n, c), reps in sorted(rows.items()):
        med = {k: statistics.median(r[k] for r in reps) for k in _MEDIANS}
        results.append({"workers": n, "in_flight": c, **med, "errors": sum(r["errors"] for r in reps), "reps": reps})
    base = {r["in_flight"]: r["fps"] for r in results if r["workers"] == min(cfg.workers)}
    for r in results:
        r["speedup"] = r["fps"] / base[r["in_flight"]] if base.get(r["in_flight"]) else float("nan")
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "config": asdict(cfg),
        "model": f"{manifest.name}:{manifest.version}",
        "mode": mode,
        "definitions": {
            "fps": "frames answered per second, the clients' rates summed (median over rounds)",
            "p50_ms/p99_ms": "round trip of every frame of the point's clients",
            "server_cpu_ms_per_frame": "CPU time of the server's processes (supervisor + workers) per frame",
            "client_cpu_ms_per_frame": "CPU time of the load processes per frame",
            "cores_busy": "server + client CPU seconds per second of the point: how much of the machine it used",
            "speedup": "fps over the fps of the fewest workers at the same load",
        },
        "results": results,
        "wall_seconds": time.perf_counter() - t0,
    }


def print_table(console: Console, doc: dict[str, Any]) -> None:
    t = Table(title=f"workers ({doc['config']['clients']} client processes, stream, {doc['config']['backend']} tail)")
    cols = ("workers", "in flight", "frames/s", "speedup", "p50 ms", "p99 ms", "server CPU ms/f", "client CPU ms/f")
    for col in (*cols, "cores busy", "errors"):
        t.add_column(col, justify="right")
    for r in doc["results"]:
        t.add_row(
            str(r["workers"]),
            str(r["in_flight"]),
            f"{r['fps']:.0f}",
            f"{r['speedup']:.2f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['server_cpu_ms_per_frame']:.3f}",
            f"{r['client_cpu_ms_per_frame']:.3f}",
            f"{r['cores_busy']:.2f}",
            str(r["errors"]),
        )
    console.print(t)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/workers.json"), help="JSON (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a short run (400 frames per client and point, 2 rounds)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    p.add_argument("--in-flight", type=int, nargs="+", default=[16, 64], help="frames in flight (default 16 64)")
    p.add_argument("--clients", type=int, default=4, help="load processes, one connection each (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--backend", default="onnxruntime", help="server tail backend (default onnxruntime)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.workers) or any(c < 1 for c in args.in_flight) or args.clients < 1:
        p.error("--workers, --in-flight and --clients must be >= 1")
    cfg = WorkersBench(
        workers=tuple(args.workers),
        in_flight=tuple(args.in_flight),
        clients=args.clients,
        frames=400 if args.quick else 1500,
        rounds=2 if args.quick else args.rounds,
        backend=args.backend,
    )
    doc = run(cfg)
    print_table(Console(width=max(130, Console().width)), doc)
    write_results(args.out, "workers", argv, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
