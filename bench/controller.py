"""Mode-selection controllers over emulated links driven by real and synthetic traces (discrete-event simulation).

    .venv/bin/python bench/controller.py --out out/bench_controller.json            # full traces (~2-4 min)
    .venv/bin/python bench/controller.py --quick --out out/bench_controller.json    # first 120 s of each trace
    .venv/bin/python bench/controller.py --traces my.up other.up --out ...         # evaluate more trace files

Scenarios:

* ``bundle-30fps-100ms``: the default bundle's measured mode table (``slimsplit.bundle.default_bundle_path()``),
  30 frames/s, 100 ms deadline, at most 8 frames in flight. Without a usable bundle manifest the bench refuses to
  run unless ``--allow-placeholder-modes`` is given; it then uses :data:`PLACEHOLDER_MODES` (clearly labelled in
  the JSON and the table).
* ``rpi4-300ms`` / ``rpi4-600ms``: the published slimmable-ensemble Raspberry Pi 4 operating points
  (:func:`slimsplit.edge.control.modes.rpi4_ensemble_modes`, 4 x 4 grid, mAP interpolated), one frame at a time:
  one frame per deadline period (3.33 / 1.67 frames/s) and at most one frame in flight.

Traces: every file in ``/work/shared/traces`` (real cellular uplinks, read in place), the project's synthetic traces
(``slimsplit/assets/traces``), a constant 1 Mbit/s link, and ``--traces`` files. Link: the trace as uplink, an
unshaped downlink, ``--delay-ms`` (default 10) each way; the controllers are told the round-trip time, as the edge
client measures it with pings.

Controllers: ``fixed`` (the most accurate mode), ``fixed-lightest`` (the lightest mode: the least exposure to the
link, a reference for the best hit rate a causal controller can get), ``ewma-greedy`` (the published baseline),
``mpc`` (this project's) and ``oracle`` (knows the trace; its in-time frames define the *feasible* frames).

Metrics per scenario x trace x controller (``results`` in the JSON): ``hit_rate`` (in time / all frames),
``feasible_hit_rate`` (in time among the frames the oracle delivers in time), ``mean_accuracy`` (accuracy per frame,
0 for a late or skipped frame: a fraction), ``accuracy_of_hits``, ``bytes_sent``, ``switches_per_min``,
``dropped`` (never sent) with ``drop_reasons``, ``late``, latency statistics, and the controller's decision time
(p50/p99 microseconds, measured around every ``choose`` call).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimsplit.bundle import default_bundle_path, read_manifest
from slimsplit.edge.control.base import ModeOption
from slimsplit.edge.control.controllers import make_controller
from slimsplit.edge.control.loop import FrameRecord
from slimsplit.edge.control.modes import modes_from_manifest, rpi4_ensemble_modes
from slimsplit.edge.control.oracle import plan_oracle
from slimsplit.errors import SlimsplitError
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.sim import SimConfig, simulate, summarize
from slimsplit.link.synth import shipped_traces_dir
from slimsplit.link.trace import Trace, load_mahimahi

SHARED_TRACES = Path("/work/shared/traces")
QUICK_SECONDS = 120.0

# PLACEHOLDER figures (not measured!): the shape of the default bundle (8 x 8 bottleneck, widths 2-16, 1-8 bits,
# payload = width * 64 * bits / 8 + a 30-byte header) with made-up accuracies. Used only with
# --allow-placeholder-modes, and labelled "PLACEHOLDER" wherever results are shown.
PLACEHOLDER_MODES: tuple[ModeOption, ...] = tuple(
    ModeOption(
        name=f"w{w}b{b}",
        width=w,
        bits=b,
        accuracy=round({2: 0.78, 4: 0.85, 8: 0.89, 16: 0.91}[w] + {1: -0.06, 2: -0.02, 4: -0.003, 8: 0.0}[b], 3),
        payload_bytes=float(w * 64 * b // 8 + 30),
        encoder_ms=0.4,
        server_ms=0.3,
    )
    for w in (2, 4, 8, 16)
    for b in (1, 2, 4, 8)
)


@dataclass(frozen=True)
class Scenario:
    name: str
    modes: tuple[ModeOption, ...]
    fps: float
    deadline_ms: float
    max_in_flight: int
    source: str


CONTROLLERS = ("fixed", "fixed-lightest", "ewma-greedy", "mpc", "oracle")


def bundle_scenario(allow_placeholder: bool) -> Scenario:
    path = default_bundle_path()
    try:
        manifest = read_manifest(path)
        modes = modes_from_manifest(manifest)
        source = f"bundle {manifest.name} v{manifest.version} ({path})"
    except SlimsplitError as exc:
        if not allow_placeholder:
            raise SystemExit(
                f"bench/controller.py: no usable bundle manifest at {path} ({exc}); refusing to use placeholder "
                "mode figures. Pass --allow-placeholder-modes to run with them (results are labelled PLACEHOLDER)."
            ) from exc
        modes, source = PLACEHOLDER_MODES, "PLACEHOLDER mode table (not measured)"
    return Scenario("bundle-30fps-100ms", tuple(modes), 30.0, 100.0, 8, source)


def rpi4_scenarios() -> list[Scenario]:
    modes = rpi4_ensemble_modes()
    src = "published slimmable-ensemble Raspberry Pi 4 points (4x4 grid, mAP interpolated)"
    return [Scenario(f"rpi4-{d}ms", modes, 1000.0 / d, float(d), 1, src) for d in (300, 600)]


def load_traces(extra: Sequence[Path], quick: bool) -> list[Trace]:
    files = sorted(SHARED_TRACES.glob("*.up")) if SHARED_TRACES.is_dir() else []
    files += sorted(shipped_traces_dir().glob("*.trace"))
    files += list(extra)
    traces = [load_mahimahi(f) for f in files]
    traces.append(Trace.constant(1e6, name="const-1mbit", period_ms=120_000))
    if quick:
        traces = [t.segment(0.0, min(QUICK_SECONDS, t.period_s), name=t.name) for t in traces]
    return traces


def controller_options(name: str, sc: Scenario, link: LinkConfig, n_frames: int) -> tuple[str, dict[str, Any]]:
    rtt_ms = link.base_rtt_s * 1000.0
    k = sc.max_in_flight
    if name == "fixed":
        return "fixed", {"max_in_flight": k}
    if name == "fixed-lightest":
        lightest = min(sc.modes, key=lambda m: (m.payload_bytes, m.encoder_ms))
        return "fixed", {"max_in_flight": k, "mode": lightest.name}
    if name == "ewma-greedy":
        return "ewma-greedy", {"max_in_flight": k, "rtt_ms": rtt_ms}
    if name == "mpc":
        return "mpc", {"max_in_flight": k, "rtt_ms": rtt_ms, "fps": sc.fps}
    return "oracle", {"link": link, "fps": sc.fps, "n_frames": n_frames, "max_in_flight": k}


def run_one(sc: Scenario, trace: Trace, delay_ms: float) -> tuple[list[dict[str, Any]], dict[str, list[FrameRecord]]]:
    link = LinkConfig(uplink=trace, delay_ms=delay_ms)
    cfg = SimConfig(fps=sc.fps, deadline_ms=sc.deadline_ms, duration_s=trace.period_s, max_in_flight=sc.max_in_flight)
    t0 = time.perf_counter()
    plan = plan_oracle(sc.modes, sc.deadline_ms, link, sc.fps, cfg.n_frames, sc.max_in_flight)
    plan_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    records: dict[str, list[FrameRecord]] = {}
    for label in CONTROLLERS:
        kind, opts = controller_options(label, sc, link, cfg.n_frames)
        ctl = make_controller(kind, sc.modes, sc.deadline_ms, **opts)
        t0 = time.perf_counter()
        res = simulate(ctl, sc.modes, link, cfg, time_decisions=True)
        wall = time.perf_counter() - t0
        s = summarize(res.records, sc.modes, plan.feasible, plan.hits)
        ns = np.asarray(res.decision_ns, dtype=np.float64)
        row: dict[str, Any] = {
            "scenario": sc.name,
            "trace": trace.name,
            "controller": label,
            **s,
            "decision_us_p50": float(np.percentile(ns, 50)) / 1e3 if ns.size else None,
            "decision_us_p99": float(np.percentile(ns, 99)) / 1e3 if ns.size else None,
            "sim_seconds": wall + (plan_s if label == "oracle" else 0.0),
            "trace_seconds": trace.period_s,
        }
        rows.append(row)
        records[label] = res.records
    return rows, records


def evaluate_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets per scenario x trace: mpc feasible hit rate >= 99%; mpc mean accuracy within 2 points
    of the oracle's; mpc beats ewma-greedy on feasible hit rate at equal or better mean accuracy."""
    out = []
    keyed = {(r["scenario"], r["trace"], r["controller"]): r for r in results}
    for sc, tr in sorted({(r["scenario"], r["trace"]) for r in results}):
        mpc, ewma, oracle = (keyed[(sc, tr, c)] for c in ("mpc", "ewma-greedy", "oracle"))
        light = keyed[(sc, tr, "fixed-lightest")]
        out.append(
            {
                "scenario": sc,
                "trace": tr,
                "mpc_feasible_hit_rate": mpc["feasible_hit_rate"],
                "lightest_feasible_hit_rate": light["feasible_hit_rate"],
                "feasible_ge_99": mpc["feasible_hit_rate"] >= 0.99,
                "accuracy_gap_to_oracle_points": 100.0 * (oracle["mean_accuracy"] - mpc["mean_accuracy"]),
                "accuracy_within_2_points": oracle["mean_accuracy"] - mpc["mean_accuracy"] <= 0.02,
                "beats_ewma_greedy": mpc["feasible_hit_rate"] > ewma["feasible_hit_rate"]
                and mpc["mean_accuracy"] >= ewma["mean_accuracy"],
            }
        )
    return out


def plot_timeline(
    path: Path, trace: Trace, sc: Scenario, records: dict[str, list[FrameRecord]], window_s: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {m.name: m.accuracy for m in sc.modes}
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    span = min(window_s, trace.period_s)
    cap = trace.capacity_series(0.25, span) / 1e6
    axes[0].step(np.arange(cap.size) * 0.25, cap, where="post", color="0.6", label="capacity (0.25 s)")
    styles = {"mpc": "tab:blue", "ewma-greedy": "tab:orange", "oracle": "tab:green"}
    for name in ("ewma-greedy", "mpc"):
        pts = [(r.captured_at, r.estimate_bps / 1e6) for r in records[name] if r.estimate_bps and r.captured_at < span]
        if pts:
            t, e = zip(*pts, strict=True)
            axes[0].plot(t, e, lw=0.8, color=styles[name], label=f"{name} estimate")
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(loc="upper right", fontsize=8)
    for name in ("oracle", "ewma-greedy", "mpc"):
        pts = [(r.captured_at, acc[r.mode]) for r in records[name] if r.mode is not None and r.captured_at < span]
        if pts:
            t, a = zip(*pts, strict=True)
            axes[1].plot(t, a, ".", ms=2, color=styles[name], label=name, alpha=0.7)
    axes[1].set_ylabel("accuracy of chosen mode")
    axes[1].legend(loc="lower right", fontsize=8)
    for name in ("ewma-greedy", "mpc"):
        recs = [r for r in records[name] if r.captured_at < span]
        when = [r.captured_at for r in recs if r.latency_s is not None]
        lat = [min(r.latency_s * 1e3, 5 * sc.deadline_ms) for r in recs if r.latency_s is not None]
        axes[2].plot(when, lat, ".", ms=2, color=styles[name], label=f"{name} latency", alpha=0.6)
        skipped = [r.captured_at for r in recs if r.mode is None]
        axes[2].plot(skipped, [0] * len(skipped), "|", ms=6, color=styles[name], alpha=0.5)
    axes[2].axhline(sc.deadline_ms, color="red", lw=1, label="deadline")
    axes[2].set_ylabel("latency ms (| = skipped)")
    axes[2].set_xlabel("time s")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{trace.name} - {sc.name} ({sc.source})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: list[dict[str, Any]], targets: list[dict[str, Any]], placeholder: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    table = Table(title="controllers over emulated links" + (" (PLACEHOLDER bundle modes)" if placeholder else ""))
    for col in (
        "scenario",
        "trace",
        "controller",
        "hit %",
        "feasible %",
        "mean acc",
        "acc of hits",
        "kB sent",
        "sw/min",
        "dropped",
        "late",
        "dec p50 us",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "trace", "controller") else "right")
    for r in results:
        table.add_row(
            r["scenario"],
            r["trace"],
            r["controller"],
            f"{100 * r['hit_rate']:.1f}",
            f"{100 * r['feasible_hit_rate']:.2f}",
            f"{r['mean_accuracy']:.4f}",
            f"{r['accuracy_of_hits']:.4f}",
            f"{r['bytes_sent'] / 1e3:.0f}",
            f"{r['switches_per_min']:.1f}",
            str(r["dropped"]),
            str(r["late"]),
            f"{r['decision_us_p50']:.1f}" if r["decision_us_p50"] is not None else "-",
        )
    console.print(table)
    tt = Table(title="targets (mpc)")
    for col in (
        "scenario",
        "trace",
        "feasible %",
        "lightest %",
        ">=99%",
        "gap to oracle (pts)",
        "<=2 pts",
        "beats ewma-greedy",
    ):
        tt.add_column(col)
    for t in targets:
        tt.add_row(
            t["scenario"],
            t["trace"],
            f"{100 * t['mpc_feasible_hit_rate']:.2f}",
            f"{100 * t['lightest_feasible_hit_rate']:.2f}",
            "yes" if t["feasible_ge_99"] else "no",
            f"{t['accuracy_gap_to_oracle_points']:.2f}",
            "yes" if t["accuracy_within_2_points"] else "no",
            "yes" if t["beats_ewma_greedy"] else "no",
        )
    console.print(tt)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("out/bench_controller.json"), help="JSON results")
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK_SECONDS:g} s of every trace")
    p.add_argument("--traces", type=Path, nargs="*", default=[], help="more Mahimahi trace files to evaluate")
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way propagation delay")
    p.add_argument("--allow-placeholder-modes", action="store_true", help="run without a bundle (labelled)")
    p.add_argument("--plot-seconds", type=float, default=120.0, help="time span shown in the timeline plots")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)

    from rich.progress import Progress

    scenarios = [bundle_scenario(args.allow_placeholder_modes), *rpi4_scenarios()]
    placeholder = scenarios[0].source.startswith("PLACEHOLDER")
    traces = load_traces(args.traces, args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = args.out.parent
    results: list[dict[str, Any]] = []
    plots: list[str] = []
    started = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("simulating", total=len(scenarios) * len(traces))
        for sc in scenarios:
            for tr in traces:
                progress.update(task, description=f"{sc.name} / {tr.name}")
                rows, records = run_one(sc, tr, args.delay_ms)
                results.extend(rows)
                if sc is scenarios[0] and not args.no_plots:
                    png = plot_dir / f"{args.out.stem}_{tr.name}.png"
                    plot_timeline(png, tr, sc, records, args.plot_seconds)
                    plots.append(str(png))
                progress.advance(task)
    targets = evaluate_targets(results)
    doc = {
        "benchmark": "controller",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "wall_seconds": time.perf_counter() - started,
        "link": {"delay_ms_each_way": args.delay_ms, "downlink": "unshaped", "queue": "FIFO (back-pressure)"},
        "scenarios": [
            {
                "name": s.name,
                "modes_source": s.source,
                "fps": s.fps,
                "deadline_ms": s.deadline_ms,
                "max_in_flight": s.max_in_flight,
                "modes": [m.__dict__ for m in s.modes],
            }
            for s in scenarios
        ],
        "placeholder_modes": placeholder,
        "results": results,
        "targets": targets,
        "plots": plots,
    }
    args.out.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    print_table(results, targets, placeholder)
    print(f"wrote {args.out} and {len(plots)} plots in {doc['wall_seconds']:.0f} s")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _json_default(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
