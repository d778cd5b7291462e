"""Batching: what the server's dynamic batcher buys on the shipped tail, and the most it could buy.

1. **The tail alone** (the server's own ONNX Runtime backend, 1 thread, the mode's tail, the real feature tensors
   of the shipped samples): time per frame of one tail call at batch sizes 1..64, median of ``--tail-reps`` calls.
   ``t(1) / t(b)`` is the compute bound of batching: no batcher can make the tail cheaper than that per frame.
2. **The server, batching on vs off**: three ``slimsplit-server`` processes on the same pinned cores, one worker
   each: ``batch-64`` (``--max-batch-size 64``, the default of taking what is queued), ``batch-64-wait``
   (the same, and the first frame of a batch waits ``--wait-us`` for company) and ``batch-1``
   (``--max-batch-size 1``), measured in turn (order rotated every rep) with the load generator of ``bench.peer``
   (several processes, precomputed requests, raw gRPC): throughput, p50/p99 round trip, server CPU per frame,
   frames per tail call, at each frames-in-flight count, unary and stream.

    python -m bench.batching --out bench/results/batching.json           # 16/64/256 in flight, 3 reps
    python -m bench.batching --quick --out /tmp/batching.json            # 1 rep, short points
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.peer import (
    Config,
    Server,
    add_point_flags,
    against,
    interleave,
    machine,
    make_workload,
    points_config,
    ratio,
    slimsplit_server,
)
from bench.results_io import write_results

DEFAULT_OUT = Path("bench/results/batching.json")
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
ON, WAIT, OFF = "batch-64", "batch-64-wait", "batch-1"
TARGET_GAIN = 2.0  # issue 17: >= 2x the throughput at >= 16 in flight with p99 no worse


def tail_curve(features: np.ndarray, mode: str, reps: int) -> list[dict[str, Any]]:
    """Per-frame time of one tail call at each batch size (the server's ONNX Runtime backend, 1 thread)."""
    from slimsplit.bundle import Bundle, default_bundle_path
    from slimsplit.server.backends.onnxruntime_backend import OnnxRuntimeBackend
    from slimsplit.server.config import BackendConfig

    runner = OnnxRuntimeBackend(BackendConfig(device="cpu", intra_op_threads=1)).load(
        Bundle.open(default_bundle_path())
    )
    rows = []
    try:
        for b in BATCH_SIZES:
            idx = np.arange(b) % len(features)
            x = np.ascontiguousarray(features[idx])
            for _ in range(max(3, reps // 10)):  # warm-up
                runner.run(mode, x)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                runner.run(mode, x)
                times.append(time.perf_counter() - t0)
            call_us = statistics.median(times) * 1e6
            rows.append({"batch": b, "call_us": call_us, "us_per_frame": call_us / b})
    finally:
        runner.close()
    base = rows[0]["us_per_frame"]
    for row in rows:
        row["bound_speedup"] = base / row["us_per_frame"]
    return rows


def gains(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batching on / off at each (transport, in flight)."""
    return [
        {
            "server": on["server"],
            "transport": on["transport"],
            "in_flight": on["in_flight"],
            "throughput_gain": ratio(on, off, "throughput"),
            "p99_ratio": ratio(on, off, "p99_ms"),
            "cpu_ratio": ratio(on, off, "server_cpu_ms_per_frame"),
            "mean_batch": on["mean_batch"],
        }
        for on, off in against(points, OFF)
    ]


def run(config: Config, tail_reps: int, wait_us: int, folder: Path) -> dict[str, Any]:
    cpus = config.cpus or tuple(sorted(os.sched_getaffinity(0)))[:2]
    print(f"[batching] encoding the shipped samples ({config.mode or 'default mode'})", flush=True)
    workload = make_workload(folder, config.mode)
    features = np.load(workload.path)["features"]
    print(f"[batching] the tail alone at batch {', '.join(map(str, BATCH_SIZES))} ({tail_reps} calls each)")
    curve = tail_curve(features, workload.mode, tail_reps)
    for row in curve:
        print(f"[batching]   batch {row['batch']:3d}: {row['us_per_frame']:7.1f} us/frame  x{row['bound_speedup']:.2f}")
    servers: dict[str, Server] = {}
    for name, limit, extra in ((ON, 64, ()), (WAIT, 64, (f"--max-wait-us={wait_us}",)), (OFF, 1, ())):
        server = slimsplit_server(cpus, limit, (*config.slimsplit_args, *extra), folder, config.device)
        servers[name] = replace(server, name=name, protocol="slimsplit", log=folder / f"{name}.log")
    started = time.monotonic()
    raw, summary = interleave(servers, None, workload, config, folder, "batching")
    return {
        "machine": machine(cpus),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "config": asdict(config) | {"cpus": list(cpus), "tail_reps": tail_reps, "wait_us": wait_us},
        "workload": {"model": workload.model, "mode": workload.mode, "inputs": workload.count},
        "tail_curve": curve,
        "definitions": {
            "us_per_frame": "median time of one tail call at that batch size / the batch size (ONNX Runtime, 1 thread)",
            "bound_speedup": "us_per_frame at batch 1 / at this batch: the most batching can save in tail compute",
            "throughput_gain": f"a server's / {OFF}'s throughput at the same point (target {TARGET_GAIN:g}x at >= 16)",
        },
        "results": summary,
        "gains": gains(summary),
        "raw": raw,
        "wall_seconds": time.monotonic() - started,
    }


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    curve = Table(title="the tail alone: time per frame by batch size (1 thread)")
    for col in ("batch", "call us", "us/frame", "bound on the speed-up"):
        curve.add_column(col, justify="right")
    for row in doc["tail_curve"]:
        curve.add_row(
            str(row["batch"]), f"{row['call_us']:.0f}", f"{row['us_per_frame']:.1f}", f"{row['bound_speedup']:.2f}x"
        )
    console.print(curve)
    by = {(p["server"], p["transport"], p["in_flight"]): p for p in doc["results"]}
    table = Table(title=f"batching on vs off ({OFF}), same cores, interleaved")
    for col in ("server", "transport", "in flight", "f/s", "off f/s", "gain", "p99 / off ms", "cpu / off", "batch"):
        table.add_column(col, justify="right")
    for g in doc["gains"]:
        on, off = by[(g["server"], g["transport"], g["in_flight"])], by[(OFF, g["transport"], g["in_flight"])]
        table.add_row(
            g["server"],
            g["transport"],
            str(g["in_flight"]),
            f"{on['throughput']:.0f}",
            f"{off['throughput']:.0f}",
            f"{g['throughput_gain']:.2f}x",
            f"{on['p99_ms']:.1f} / {off['p99_ms']:.1f}",
            f"{on['server_cpu_ms_per_frame']:.3f} / {off['server_cpu_ms_per_frame']:.3f}",
            f"{g['mean_batch']:.1f}",
        )
    console.print(table)


def plot(path: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    curve = doc["tail_curve"]
    a.plot([r["batch"] for r in curve], [r["us_per_frame"] for r in curve], marker="o")
    a.set_xscale("log", base=2)
    a.set_ylim(bottom=0)
    a.set_xlabel("batch size")
    a.set_ylabel("tail time per frame, us")
    a.set_title("the tail alone (ONNX Runtime, 1 thread)")
    a.grid(alpha=0.3)
    for server, style in ((ON, "-"), (WAIT, "--")):
        for transport, marker in (("unary", "o"), ("stream", "s")):
            gs = [g for g in doc["gains"] if g["transport"] == transport and g["server"] == server]
            b.plot(
                [g["in_flight"] for g in gs],
                [g["throughput_gain"] for g in gs],
                ls=style,
                marker=marker,
                label=f"{server} {transport}",
            )
    b.axhline(TARGET_GAIN, color="red", ls="--", lw=0.8, label=f"target {TARGET_GAIN:g}x")
    b.axhline(1.0, color="grey", lw=0.6)
    b.set_xscale("log", base=2)
    b.set_xlabel("frames in flight")
    b.set_ylabel(f"throughput / {OFF}'s")
    b.set_title("the server: batching on vs off")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    add_point_flags(p, (16, 64, 256))
    p.add_argument("--tail-reps", type=int, default=400, help="tail calls per batch size (default 400)")
    p.add_argument("--wait-us", type=int, default=2000, help=f"{WAIT}'s --max-wait-us (default 2000)")
    p.add_argument("--slimsplit-args", default="", help='extra slimsplit-server flags for both, e.g. "--workers 1"')
    args = p.parse_args(argv)
    config = replace(
        points_config(p, args, (16, 64, 256)),
        slimsplit_args=("--workers=1", *shlex.split(args.slimsplit_args)),
    )
    if args.tail_reps < 1 or args.wait_us < 1:
        p.error("--tail-reps and --wait-us must be >= 1")
    with tempfile.TemporaryDirectory(prefix="slimsplit-batching-") as tmp:
        doc = run(config, args.tail_reps, args.wait_us, Path(tmp))
    print_table(doc)
    write_results(args.out, "batching", argv, doc, lambda png: plot(png, doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
