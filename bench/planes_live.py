"""Live: frames sent whole (``mpc``) against frames sent as bit planes (``--transmission planes``), the real edge over
the real shaping proxy, one segment of each trace, interleaved per trace.

    .venv/bin/python -m bench.planes_live --out bench/results/planes_live.json   # 8 traces x 2 x 30 s (~9 min)
    .venv/bin/python -m bench.planes_live --seconds 10 --traces ge-outages --out /tmp/pl.json

One server (the shipped bundle, ONNX Runtime) on loopback; per trace and design one ``slimsplit-edge`` process
(30 frames/s, 100 ms deadline, the shipped sample images) through ``--link TRACE`` from ``--offset-s`` in. Figures
per run: the frames the link allowed in time in some mode, each alone on it (the edge's own link check: the
feasible set), how many of those were answered in time, the top-1 accuracy of the answered frames, the useful rate
(right and in time, of all labelled frames), bytes per frame, and the planes used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results_io import recorded_path, write_results
from slimsplit.link.synth import shared_traces_dir, shipped_traces_dir

DESIGNS = {
    "frames-mpc": ("--transmission", "frames", "--controller", "mpc"),
    "planes": ("--transmission", "planes", "--controller", "planes"),
}


def trace_specs(only: Sequence[str]) -> list[tuple[str, str]]:
    """(name, --link value) of the real traces beside the repository, the shipped ones and a constant 1 Mbit/s."""
    shared = shared_traces_dir()
    specs = [(p.stem, str(p)) for p in sorted(shared.glob("*.up"))] if shared.is_dir() else []
    specs += [(p.stem, f"shipped:{p.stem}") for p in sorted(shipped_traces_dir().glob("*.trace"))]
    specs.append(("const-1mbit", "1mbit"))
    if only:
        specs = [s for s in specs if any(o in s[0] for o in only)]
    return specs


def run_edge(address: str, link: str, design: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    frames = int(args.seconds * args.fps)
    argv = [
        sys.executable, "-m", "slimsplit.edge.cli", "--server", address, *DESIGNS[design],
        "--deadline-ms", str(args.deadline_ms), "--fps", str(args.fps), "--frames", str(frames),
        "--link", link, "--link-offset-s", str(args.offset_s), "--quiet", "--json-out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds * 3 + 120)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"slimsplit-edge exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    doc = json.loads(out.read_text())
    s, check = doc["summary"], doc["meta"]["link_check"]
    feasible = check["allowed"]
    answered = sum(1 for f in doc["frames"] if f["ok"])
    return {
        "design": design,
        "frames": s["frames"],
        "feasible_frames": feasible,
        "feasible_in_time": check["hits_allowed"],
        "feasible_hit_rate": check["hit_rate_allowed"],
        "hit_rate": s["hit_rate"],
        "accuracy_answered": s["accuracy"],
        "useful_rate": s["timely_accuracy"],
        "bytes_per_frame": s["bytes_per_frame"],
        "answered": answered,
        "planes": s.get("planes", {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.planes_live", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/planes_live.json"))
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--offset-s", type=float, default=6.0, help="where in each trace the segment starts")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--traces", nargs="*", default=(), help="only traces whose name contains one of these")
    args = p.parse_args(argv)
    from slimsplit.server.app import ServerThread
    from slimsplit.server.config import GrpcConfig, ServerConfig

    specs = trace_specs(args.traces)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    config = ServerConfig(grpc=GrpcConfig(port=0, grace_s=0.5), log_level="warning")
    with ServerThread(config) as srv, tempfile.TemporaryDirectory() as tmp:
        for i, (name, link) in enumerate(specs, 1):
            for design in DESIGNS:
                print(f"[{i}/{len(specs)}] {name}: {design} ({args.seconds:g} s) ...", flush=True)
                row = run_edge(srv.address, link, design, args, Path(tmp) / f"{name}-{design}.json")
                rows.append({"trace": name, "link": recorded_path(link), **row})
    print_table(rows)
    write_results(
        args.out,
        "planes_live",
        argv,
        {
            "seconds": args.seconds,
            "offset_s": args.offset_s,
            "fps": args.fps,
            "deadline_ms": args.deadline_ms,
            "wall_seconds": time.perf_counter() - t0,
            "results": rows,
        },
    )
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'trace':<24s} {'design':<11s} {'feasible':>8s} {'in time %':>9s} {'acc %':>6s} {'useful %':>8s} "
        f"{'B/frame':>8s}"
    )
    for r in rows:
        print(
            f"{r['trace']:<24.24s} {r['design']:<11s} {r['feasible_frames']:8d} {_pct(r['feasible_hit_rate']):>9s} "
            f"{_pct(r['accuracy_answered']):>6s} {_pct(r['useful_rate']):>8s} {r['bytes_per_frame']:8.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
