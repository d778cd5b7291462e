"""InTAR benchmark: the paper's multi-task kernels on the Alveo U280 model, and the bundle's tails per mode.

For each kernel (CNN-4L, MLP, VAE, self-attention, gating network; int16, 16-wide vectors) this models the
all-dataflow design, the all-sequential design and the InTAR schedule, and reports cycles, latency, off-chip bytes,
DSP/BRAM/URAM use and the speedups, beside the on-board figures published in the InTAR repository.

Two design budgets are modelled on the same U280 description:

* ``paper`` (the ``kernels`` list): each kernel gets the DSP count of its published InTAR build, 202 BRAM36
  (the block-RAM use reported for the CNN-4L build), no URAM and 4 HBM channels — so modelled cycles are
  comparable with the published on-board cycle counts;
* ``device`` (``kernels_full_device``): the whole U280 (8,192 DSPs of PE template, all BRAM/URAM, 32 channels).

A sensitivity table relaxes the model's two most optimistic assumptions (32-byte burst ports to HBM; a perfectly
balanced MAC split inside dataflow groups) to show how far they explain the gap to the paper's speedups.

Then, when the default bundle exists, every mode's tail is compiled, quantized and scheduled on the U280
(``fpga-emu`` defaults) and its modelled latency is printed beside the measured ONNX Runtime CPU latency (1 thread,
batch 1) and the fixed-point emulator's top-1 agreement with ONNX Runtime.

    python -m bench.intar --out out/intar.json                 # full
    python -m bench.intar --quick --out out/intar-quick.json   # fewer CPU timing repetitions / frames
"""

from __future__ import annotations

import argparse
import json
import math
import platform as host_platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.intar_kernels import (
    KERNELS,
    PAPER_GEOMEAN_VS_DATAFLOW,
    PAPER_GEOMEAN_VS_SEQUENTIAL,
    PUBLISHED,
    PUBLISHED_SOURCE,
)
from bench.results_io import recorded_args, recorded_path
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.server.backends.fpga import (
    FixedPointProgram,
    FpgaConfig,
    ResourceBudget,
    compare,
    compile_onnx,
    load_platform,
    plot_timelines,
    schedule_intar,
    to_task_graph,
)
from slimsplit.server.backends.fpga.calibration import calibration_features
from slimsplit.server.backends.fpga.platform import Platform
from slimsplit.server.backends.fpga.scheduler import Comparison, Schedule
from slimsplit.server.backends.fpga.tasks import DType, fuse_activations

PAPER_BRAM36 = 202  # RAMB36 tiles of the published CNN-4L build's utilisation report
PAPER_CHANNELS = 4


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def paper_budget(kernel: str, port_bytes: int | None = None) -> ResourceBudget:
    return ResourceBudget(
        dsp=PUBLISHED[kernel].dsp[0],
        bram36=PAPER_BRAM36,
        uram=0,
        offchip_channels=PAPER_CHANNELS,
        offchip_port_bytes=port_bytes,
    )


# (label, off-chip port bytes or None for the platform's, balanced dataflow allocation)
SENSITIVITY: tuple[tuple[str, int | None, bool], ...] = (
    ("model defaults (32-byte ports, balanced dataflow)", None, True),
    ("16-bit element-wide off-chip ports", 2, True),
    ("equal MAC split in dataflow groups", None, False),
    ("both: 16-bit ports + equal split", 2, False),
)


def run_sensitivity(plat: Platform) -> list[dict[str, Any]]:
    """How the geomean speedups move when the model's two most optimistic assumptions are relaxed."""
    out: list[dict[str, Any]] = []
    for label, ports, balanced in SENSITIVITY:
        per: dict[str, dict[str, float | None]] = {}
        for name, build in KERNELS.items():
            design = plat.design(paper_budget(name, ports))
            comp = compare(fuse_activations(build(DType.INT16)), design, balanced=balanced)
            per[name] = {"vs_dataflow": comp.speedup_vs_dataflow, "vs_sequential": comp.speedup_vs_sequential}
        out.append(
            {
                "variant": label,
                "offchip_port_bytes": ports,
                "balanced_dataflow": balanced,
                "kernels": per,
                "geomean_speedup_vs_dataflow": geomean([v["vs_dataflow"] or 0.0 for v in per.values()]),
                "geomean_speedup_vs_sequential": geomean([v["vs_sequential"] or 0.0 for v in per.values()]),
            }
        )
    return out


def sensitivity_table(rows: list[dict[str, Any]]) -> Table:
    title = "sensitivity (paper-size budgets): InTAR speedup vs dataflow / vs sequential"
    table = Table(title=title, title_justify="left")
    table.add_column("variant")
    for name in KERNELS:
        table.add_column(name, justify="right")
    table.add_column("geomean", justify="right")
    for r in rows:
        cells = []
        for name in KERNELS:
            v = r["kernels"][name]
            df = "-" if v["vs_dataflow"] is None else f"{v['vs_dataflow']:.2f}"
            cells.append(f"{df} / {v['vs_sequential']:.2f}")
        gm = f"{r['geomean_speedup_vs_dataflow']:.2f} / {r['geomean_speedup_vs_sequential']:.2f}"
        table.add_row(r["variant"], *cells, gm)
    table.caption = f"paper: {PAPER_GEOMEAN_VS_DATAFLOW} / {PAPER_GEOMEAN_VS_SEQUENTIAL}"
    return table


def _sched(s: Schedule | None) -> dict[str, Any] | None:
    return None if s is None else s.to_dict()


def kernel_row(name: str, comp: Comparison, budget: str) -> dict[str, Any]:
    pub = PUBLISHED[name]
    i, d, s = comp.intar, comp.dataflow, comp.sequential
    return {
        "name": name,
        "budget": budget,
        "dataflow_cycles": None if d is None else d.total_cycles,
        "sequential_cycles": s.total_cycles,
        "intar_cycles": i.total_cycles,
        "dataflow_ms": None if d is None else d.latency_ms,
        "sequential_ms": s.latency_ms,
        "intar_ms": i.latency_ms,
        "speedup_vs_dataflow": comp.speedup_vs_dataflow,
        "speedup_vs_sequential": comp.speedup_vs_sequential,
        "offchip_bytes": {
            "intar": i.offchip_bytes,
            "dataflow": None if d is None else d.offchip_bytes,
            "sequential": s.offchip_bytes,
        },
        "dsp": {"intar": i.dsp, "dataflow": None if d is None else d.dsp, "sequential": s.dsp},
        "bram36": {"intar": i.bram36, "dataflow": None if d is None else d.bram36, "sequential": s.bram36},
        "uram": {"intar": i.uram, "dataflow": None if d is None else d.uram, "sequential": s.uram},
        "design_dsp": i.design.dsp,
        "patterns": i.patterns(),
        "total_macs": i.graph.total_macs,
        "published": {
            "intar_cycles": pub.cycles[0],
            "dataflow_cycles": pub.cycles[1],
            "sequential_cycles": pub.cycles[2],
            "intar_ms": pub.latency_ms[0],
            "dataflow_ms": pub.latency_ms[1],
            "sequential_ms": pub.latency_ms[2],
            "dsp": {"intar": pub.dsp[0], "dataflow": pub.dsp[1], "sequential": pub.dsp[2]},
        },
        "modelled_over_published_cycles": {
            "intar": i.total_cycles / pub.cycles[0],
            "dataflow": None if d is None else d.total_cycles / pub.cycles[1],
            "sequential": s.total_cycles / pub.cycles[2],
        },
        "schedules": {"intar": _sched(i), "dataflow": _sched(d), "sequential": _sched(s)},
    }


def run_kernels(plat: Platform, budget: str) -> tuple[list[dict[str, Any]], dict[str, Comparison]]:
    rows: list[dict[str, Any]] = []
    comps: dict[str, Comparison] = {}
    for name in track(list(KERNELS), description=f"kernels ({budget} budget)", transient=True):
        graph = fuse_activations(KERNELS[name](DType.INT16))
        design = plat.design(paper_budget(name) if budget == "paper" else ResourceBudget())
        comp = compare(graph, design)
        comps[name] = comp
        rows.append(kernel_row(name, comp, budget))
    return rows, comps


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    vs_df = [r["speedup_vs_dataflow"] for r in rows if r["speedup_vs_dataflow"] is not None]
    vs_seq = [r["speedup_vs_sequential"] for r in rows]
    pub_df = [r["published"]["dataflow_ms"] / r["published"]["intar_ms"] for r in rows]
    pub_seq = [r["published"]["sequential_ms"] / r["published"]["intar_ms"] for r in rows]
    return {
        "geomean_speedup_vs_dataflow": geomean(vs_df),
        "geomean_speedup_vs_sequential": geomean(vs_seq),
        "paper_geomean_vs_dataflow": PAPER_GEOMEAN_VS_DATAFLOW,
        "paper_geomean_vs_sequential": PAPER_GEOMEAN_VS_SEQUENTIAL,
        "published_latency_geomean_vs_dataflow": geomean(pub_df),
        "published_latency_geomean_vs_sequential": geomean(pub_seq),
        "intar_never_slower": all(
            r["intar_cycles"] <= r["sequential_cycles"]
            and (r["dataflow_cycles"] is None or r["intar_cycles"] <= r["dataflow_cycles"])
            for r in rows
        ),
    }


def kernel_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (
        "kernel",
        "DSP",
        "dataflow cyc",
        "sequential cyc",
        "InTAR cyc",
        "InTAR ms",
        "vs DF",
        "vs SEQ",
        "off-chip MB (I/D/S)",
        "BRAM36 I",
        "URAM I",
        "patterns",
        "published cyc (I/D/S)",
        "model/pub I",
    ):
        table.add_column(col, justify="left" if col in ("kernel", "patterns") else "right")
    for r in rows:
        off = r["offchip_bytes"]
        mb = "/".join("-" if off[k] is None else f"{off[k] / 1e6:.2f}" for k in ("intar", "dataflow", "sequential"))
        pub = r["published"]
        df = r["dataflow_cycles"]
        table.add_row(
            r["name"],
            str(r["design_dsp"]),
            "infeasible" if df is None else f"{df:,}",
            f"{r['sequential_cycles']:,}",
            f"{r['intar_cycles']:,}",
            f"{r['intar_ms']:.4f}",
            "-" if r["speedup_vs_dataflow"] is None else f"{r['speedup_vs_dataflow']:.2f}x",
            f"{r['speedup_vs_sequential']:.2f}x",
            mb,
            str(r["bram36"]["intar"]),
            str(r["uram"]["intar"]),
            " ".join(f"{k}:{v}" for k, v in r["patterns"].items()),
            f"{pub['intar_cycles']:,}/{pub['dataflow_cycles']:,}/{pub['sequential_cycles']:,}",
            f"{r['modelled_over_published_cycles']['intar']:.2f}",
        )
    return table


def plot_kernels(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    series = [
        ("dataflow", "dataflow_cycles", "#55A868"),
        ("sequential", "sequential_cycles", "#4C72B0"),
        ("InTAR", "intar_cycles", "#C44E52"),
    ]
    for k, (label, key, color) in enumerate(series):
        vals = [r[key] or 0 for r in rows]
        ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=f"{label} (model)", color=color)
        pub_key = key.replace("_cycles", "")
        pubs = [r["published"][f"{pub_key}_cycles"] for r in rows]
        ax.scatter(x + (k - 1) * 0.27, pubs, marker="_", s=300, color="black", zorder=3)
    ax.scatter([], [], marker="_", s=300, color="black", label="published on-board")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("cycles (log)")
    ax.set_title("InTAR kernels on the U280 model (paper-size budgets) vs published on-board cycles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- bundle tails


def ort_latency_ms(path: Path, features: np.ndarray, reps: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = features[:1]
    for _ in range(5):
        sess.run(None, {name: x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_bundle(bundle_path: Path, plat: Platform, quick: bool) -> dict[str, Any]:
    import onnxruntime as ort

    if not (bundle_path / "manifest.json").is_file():
        return {"skipped": f"no bundle at {recorded_path(bundle_path)} (train/export the default bundle first)"}
    bundle = Bundle.open(bundle_path)
    config = FpgaConfig(calibration_samples=256)  # all shipped samples: half calibrate, half test
    design = plat.design(config.budget)
    reps = 50 if quick else 300
    modes: list[dict[str, Any]] = []
    cache: dict[str, dict[str, Any]] = {}
    for mode in track(list(bundle.manifest.modes), description="bundle tails", transient=True):
        if mode.tail not in cache:
            tail = compile_onnx(bundle.tail_path(mode))
            feats, source = calibration_features(bundle, mode.width, tuple(tail.input_shape), config)
            half = max(1, len(feats) // 2)
            program = FixedPointProgram.calibrate(tail, feats[:half], config.weight_bits, config.headroom)
            test = feats[half:] if len(feats) > 1 else feats
            sess = ort.InferenceSession(str(bundle.tail_path(mode)), providers=["CPUExecutionProvider"])
            ref = sess.run(None, {sess.get_inputs()[0].name: test})[0]
            emu = program.run(test)
            sched = schedule_intar(to_task_graph(tail, 1, config.weight_bits), design)
            cache[mode.tail] = {
                "fpga_cycles": sched.total_cycles,
                "fpga_ms": sched.latency_ms,
                "fpga_patterns": sched.patterns(),
                "cpu_ort_ms_p50": ort_latency_ms(bundle.tail_path(mode), feats, reps),
                "emulator_top1_agreement": float(np.mean(emu.logits.argmax(1) == ref.argmax(1))),
                "emulator_frames": len(test),
                "calibration": source,
                "saturated_fraction": emu.saturated_fraction,
            }
        modes.append({"mode": mode.name, "width": mode.width, "bits": mode.bits, "tail": mode.tail, **cache[mode.tail]})
    return {
        "bundle": recorded_path(bundle_path),
        "platform": plat.name,
        "weight_bits": config.weight_bits,
        "cpu": host_platform.processor() or host_platform.machine(),
        "modes": modes,
    }


def bundle_table(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"bundle tails: modelled FPGA ({result['platform']}) vs measured CPU ONNX Runtime", title_justify="left"
    )
    for col in ("mode", "FPGA cycles", "FPGA ms", "CPU ORT ms (p50)", "emu top-1 agree", "calibration"):
        table.add_column(col, justify="left" if col in ("mode", "calibration") else "right")
    for m in result["modes"]:
        table.add_row(
            m["mode"],
            f"{m['fpga_cycles']:,}",
            f"{m['fpga_ms']:.4f}",
            f"{m['cpu_ort_ms_p50']:.3f}",
            f"{m['emulator_top1_agreement'] * 100:.1f}% of {m['emulator_frames']}",
            m["calibration"],
        )
    return table


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("out/intar.json"), help="JSON results")
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions and calibration frames")
    parser.add_argument("--platform", default="u280", help="platform name or TOML path (default u280)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--no-bundle", action="store_true", help="skip the bundle-tail part")
    parser.add_argument("--plots", type=Path, default=None, help="folder for PNGs (default: beside --out)")
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    plat = load_platform(args.platform)
    plots = args.plots or args.out.parent

    paper_rows, paper_comps = run_kernels(plat, "paper")
    device_rows, _ = run_kernels(plat, "device")
    summary = {"paper_budget": summarize(paper_rows), "full_device": summarize(device_rows)}
    sensitivity = run_sensitivity(plat)

    console.print(kernel_table(paper_rows, f"InTAR kernels on {plat.name} — paper-size budgets (published DSPs)"))
    console.print(kernel_table(device_rows, f"InTAR kernels on {plat.name} — whole device"))
    for label, s in summary.items():
        console.print(
            f"[bold]{label}[/]: geomean speedup vs dataflow {s['geomean_speedup_vs_dataflow']:.2f}x "
            f"(paper {PAPER_GEOMEAN_VS_DATAFLOW}x), vs sequential {s['geomean_speedup_vs_sequential']:.2f}x "
            f"(paper {PAPER_GEOMEAN_VS_SEQUENTIAL}x); InTAR never slower: {s['intar_never_slower']}"
        )
    console.print(sensitivity_table(sensitivity))
    s = summary["paper_budget"]
    console.print(
        f"published on-board latencies give {s['published_latency_geomean_vs_dataflow']:.2f}x / "
        f"{s['published_latency_geomean_vs_sequential']:.2f}x ({PUBLISHED_SOURCE})"
    )

    pngs = [plots / "intar_kernels.png"]
    plot_kernels(paper_rows, pngs[0])
    for name, comp in paper_comps.items():
        scheds = [x for x in (comp.intar, comp.dataflow, comp.sequential) if x is not None]
        pngs.append(plot_timelines(scheds, plots / f"intar_timeline_{name}.png", title=f"{name} (paper budget)"))

    if args.no_bundle:
        bundle_result: dict[str, Any] = {"skipped": "--no-bundle"}
    else:
        bundle_result = run_bundle(args.bundle or default_bundle_path(), plat, args.quick)
    if "skipped" in bundle_result:
        console.print(f"[yellow]bundle tails skipped:[/] {bundle_result['skipped']}")
    else:
        console.print(bundle_table(bundle_result))

    result = {
        "benchmark": "intar",
        "command": " ".join(["python -m bench.intar", *recorded_args(sys.argv[1:] if argv is None else argv)]),
        "platform": plat.name,
        "clock_mhz": plat.clock_mhz,
        "paper_budget": {"bram36": PAPER_BRAM36, "uram": 0, "offchip_channels": PAPER_CHANNELS, "dsp": "published"},
        "kernels": paper_rows,
        "kernels_full_device": device_rows,
        "summary": summary,
        "sensitivity": sensitivity,
        "published_source": PUBLISHED_SOURCE,
        "bundle": bundle_result,
        "plots": [str(p) for p in pngs],
        "quick": args.quick,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out} and {len(pngs)} PNGs under {plots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
