"""Rate-accuracy of the shipped bundle against sending the image itself (PNG / JPEG / WebP).

Measures on the rendered Fashion-MNIST test set (10k images; a subset with --quick; the shipped 160-image sample
with --samples when the data set is not installed):

* per mode: top-1 through the real edge path (ORT encoder -> codec -> ORT tail), mean payload bytes at batch 1
  (header included), encoder latency p50 at batch 1 with 1 thread (a Raspberry-Pi-like budget) and all threads;
* baselines: the unsplit backbone on the original images, and on images sent through PNG/JPEG/WebP (Pillow);
* mode switching: p99 of ``EncoderRuntime.set_mode`` on a warm runtime beside p50 of creating the encoder
  session from disk (what a non-slimmable design pays per switch), and the resident-memory ratio of a process
  that has run every mode over one that loaded and ran only the widest mode;
* a rate-accuracy plot (PNG).

    python -m bench.rate_accuracy --out bench/results/rate_accuracy.json [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.results_io import recorded_args
from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.codec import encode_features
from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime
from slimsplit.server.export import evaluate_mode, preprocess, widest_features

INPUT_CODECS: list[tuple[str, int | None]] = [
    ("PNG", None),
    *[("JPEG", q) for q in (10, 30, 50, 70, 90, 95)],
    *[("WebP", q) for q in (10, 30, 50, 70, 90, 100)],
]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _timed(fn: Any, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    if args.samples:
        s = np.load(default_samples_path())
        return s["images"], s["labels"], "shipped sample (160 rendered test images)"
    from slimsplit.server.training.data import fashion_test_set

    limit = 1000 if args.quick else None
    t = fashion_test_set(limit=limit)
    return t.images, t.labels, f"rendered Fashion-MNIST test set ({len(t)} images)"


def logits_batched(sess: ort.InferenceSession, feed_name: str, x: np.ndarray, bs: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(None, {feed_name: x[i : i + bs]})[0] for i in range(0, len(x), bs)])


def measure_modes(bundle: Bundle, images: np.ndarray, labels: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    m = bundle.manifest
    feats = widest_features(bundle.root, m, images)
    rt1 = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=1))
    rtn = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=0))
    one = images[0]
    tails: dict[str, ort.InferenceSession] = {}
    rows = []
    for mode in track(m.modes, description="modes"):
        tail = tails.setdefault(mode.tail, _session(bundle.tail_path(mode), 0))
        tables = rt1.codec_tables(mode.name)
        quality = evaluate_mode(tail, feats, mode, labels, tables)
        rt1.set_mode(mode.name)
        rtn.set_mode(mode.name)
        enc1 = _timed(lambda: rt1.features(one), repeats)
        encn = _timed(lambda: rtn.features(one), repeats)
        f = rt1.features(one)
        codec = _timed(lambda f=f, b=mode.bits, t=tables: encode_features(f, b, tables=t), repeats)
        rows.append(
            {
                "mode": mode.name,
                "width": mode.width,
                "bits": mode.bits,
                "accuracy": quality.accuracy,
                "payload_bytes_mean": quality.payload_bytes_mean,
                "encoder_ms_p50": {
                    "threads_1": statistics.median(enc1),
                    "threads_all": statistics.median(encn),
                },
                "codec_encode_ms_p50": statistics.median(codec),
            }
        )
    return rows


def measure_input_codecs(bundle: Bundle, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    m = bundle.manifest
    if m.baseline_model is None:
        raise SystemExit("the bundle has no baseline_model (unsplit backbone); re-export it with slimsplit-train")
    base = _session(bundle.path(m.baseline_model), 0)
    unsplit = float((logits_batched(base, "image", preprocess(images, m.input)).argmax(1) == labels).mean())
    points = []
    for codec, q in track(INPUT_CODECS, description="input codecs"):
        sizes = np.empty(len(images))
        decoded = np.empty_like(images)
        for i, img in enumerate(images):
            buf = io.BytesIO()
            pil = Image.fromarray(img)
            if codec == "PNG":
                pil.save(buf, "PNG", optimize=True)
            elif codec == "JPEG":
                pil.save(buf, "JPEG", quality=q)
            else:
                pil.save(buf, "WEBP", quality=q, lossless=(q == 100), method=6)
            sizes[i] = buf.tell()
            decoded[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        acc = float((logits_batched(base, "image", preprocess(decoded, m.input)).argmax(1) == labels).mean())
        points.append({"codec": codec, "quality": q, "bytes_mean": float(sizes.mean()), "accuracy": acc})
    return {"unsplit_accuracy": unsplit, "input_codecs": points}


_MEMORY_PROBE = """
import gc, json, sys, numpy as np, psutil
from slimsplit.bundle import Bundle
from slimsplit.edge.runtime import EncoderRuntime, EncoderConfig
b = Bundle.open(sys.argv[1]); which = sys.argv[2]
img = np.zeros((64, 64, 3), np.uint8)
rt = EncoderRuntime(b, EncoderConfig(intra_op_threads=1))
widest = max(b.manifest.modes, key=lambda m: (m.width, m.bits)).name
modes = [m.name for m in b.manifest.modes] if which == "all" else [widest]
for _ in range(20):
    for name in modes:
        rt.set_mode(name); rt.encode(img)
gc.collect()
print(json.dumps({"rss": psutil.Process().memory_info().rss}))
"""


def measure_switching(bundle: Bundle, repeats: int) -> dict[str, Any]:
    rt = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=1))
    names = [m.name for m in bundle.manifest.modes]
    img = np.zeros((64, 64, 3), np.uint8)
    rt.encode(img)
    switch = []
    for i in range(repeats * 20):
        name = names[i % len(names)]
        t0 = time.perf_counter()
        rt.set_mode(name)
        switch.append((time.perf_counter() - t0) * 1e3)
    reload = _timed(lambda: EncoderRuntime(bundle, EncoderConfig(intra_op_threads=1)), max(10, repeats // 5), 2)
    rss = {}
    for which in ("all", "widest"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(bundle.root), which],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        rss[which] = json.loads(out.stdout)["rss"]
    return {
        "switch_ms_p99": float(np.percentile(switch, 99)),
        "switch_ms_p50": float(np.percentile(switch, 50)),
        "reload_ms_p50": statistics.median(reload),
        "rss_all_modes_bytes": rss["all"],
        "rss_widest_only_bytes": rss["widest"],
        "memory_ratio": rss["all"] / rss["widest"],
    }


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    modes, base = result["modes"], result["baselines"]
    best = max(modes, key=lambda r: r["accuracy"])
    codecs = base["input_codecs"]
    best_codec = max(codecs, key=lambda p: (p["accuracy"], -p["bytes_mean"]))

    def cheapest_at(acc: float) -> dict[str, Any] | None:
        ok = [r for r in modes if r["accuracy"] >= acc]
        return min(ok, key=lambda r: r["payload_bytes_mean"]) if ok else None

    match = cheapest_at(best_codec["accuracy"])
    ratios = []
    per_point = []  # every codec point: the cheapest mode at least as accurate, and the bytes ratio
    for p in codecs:
        mm = cheapest_at(p["accuracy"])
        if mm is not None:
            ratios.append(p["bytes_mean"] / mm["payload_bytes_mean"])
        per_point.append(
            {
                "codec": p["codec"],
                "quality": p["quality"],
                "bytes_mean": p["bytes_mean"],
                "accuracy": p["accuracy"],
                "mode": None if mm is None else mm["mode"],
                "mode_accuracy": None if mm is None else mm["accuracy"],
                "mode_bytes": None if mm is None else mm["payload_bytes_mean"],
                "ratio": None if mm is None else p["bytes_mean"] / mm["payload_bytes_mean"],
            }
        )
    payloads = [r["payload_bytes_mean"] for r in modes]
    sw = result["switching"]
    return {
        "best_mode": best["mode"],
        "best_mode_gap_points": 100 * (base["unsplit_accuracy"] - best["accuracy"]),
        "best_input_codec": f"{best_codec['codec']} q={best_codec['quality']}",
        "mode_matching_best_codec": None if match is None else match["mode"],
        "bytes_ratio_vs_best_codec": None if match is None else best_codec["bytes_mean"] / match["payload_bytes_mean"],
        "bytes_ratio_min_over_codec_points": min(ratios) if ratios else None,
        "per_codec_point": per_point,
        "codec_points_no_mode_matches": [f"{p['codec']} q={p['quality']}" for p in per_point if p["mode"] is None],
        "payload_span": max(payloads) / min(payloads),
        "switch_vs_reload": sw["reload_ms_p50"] / max(sw["switch_ms_p99"], 1e-9),
        "targets_met": {
            "best_mode_within_1_point": 100 * (base["unsplit_accuracy"] - best["accuracy"]) <= 1.0,
            # the most accurate codec point (lossless: the teacher's own accuracy) at equal or better accuracy
            "10x_fewer_bytes_than_most_accurate_codec": match is not None
            and best_codec["bytes_mean"] / match["payload_bytes_mean"] >= 10,
            # every codec point that some mode matches in accuracy: the cheapest such mode sends >= 10x fewer bytes
            "10x_fewer_bytes_at_every_matched_codec_point": bool(ratios) and min(ratios) >= 10,
            "payload_span_8x": max(payloads) / min(payloads) >= 8,
            "switch_p99_le_0.1ms": sw["switch_ms_p99"] <= 0.1,
            "switch_100x_below_reload": sw["reload_ms_p50"] >= 100 * sw["switch_ms_p99"],
            "memory_ratio_le_1.3": sw["memory_ratio"] <= 1.3,
        },
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    modes = result["modes"]
    for bits in sorted({r["bits"] for r in modes}):
        rs = sorted((r for r in modes if r["bits"] == bits), key=lambda r: r["payload_bytes_mean"])
        ax.plot(
            [r["payload_bytes_mean"] for r in rs],
            [100 * r["accuracy"] for r in rs],
            "o-",
            label=f"split, {bits}-bit (widths {', '.join(str(r['width']) for r in rs)})",
        )
    for codec, marker in (("PNG", "s"), ("JPEG", "^"), ("WebP", "v")):
        ps = [p for p in result["baselines"]["input_codecs"] if p["codec"] == codec]
        ax.plot(
            [p["bytes_mean"] for p in ps],
            [100 * p["accuracy"] for p in ps],
            marker + "--",
            label=f"image {codec}",
        )
    ax.axhline(100 * result["baselines"]["unsplit_accuracy"], color="k", lw=0.8, ls=":", label="unsplit backbone")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per frame (log)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Rate-accuracy: {result['bundle']} on {result['images']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=default_bundle_path())
    p.add_argument("--out", type=Path, default=Path("bench/results/rate_accuracy.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    p.add_argument("--quick", action="store_true", help="1,000 test images and fewer timing repeats")
    p.add_argument("--samples", action="store_true", help="use the shipped 160-image sample (no data set needed)")
    args = p.parse_args(argv)
    console = Console()
    bundle = Bundle.open(args.bundle)
    images, labels, desc = load_images(args)
    repeats = 30 if args.quick else 200
    console.print(f"[bold]rate_accuracy[/]: {bundle.manifest.name} v{bundle.manifest.version} on {desc}")
    result: dict[str, Any] = {
        "bundle": f"{bundle.manifest.name} v{bundle.manifest.version}",
        "images": desc,
        "n_images": len(images),
        "machine": {"cpus": os.cpu_count(), "onnxruntime": ort.__version__},
        "command": "python -m bench.rate_accuracy "
        + " ".join(recorded_args(argv if argv is not None else sys.argv[1:])),
    }
    result["modes"] = measure_modes(bundle, images, labels, repeats)
    result["baselines"] = measure_input_codecs(bundle, images, labels)
    result["switching"] = measure_switching(bundle, repeats)
    result["summary"] = evaluate_targets(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(result, plot_path)

    t = Table(title="modes (split)")
    for col in ("mode", "accuracy", "bytes", "enc ms 1T", "enc ms all", "codec ms"):
        t.add_column(col, justify="right")
    for r in result["modes"]:
        t.add_row(
            r["mode"],
            f"{r['accuracy']:.4f}",
            f"{r['payload_bytes_mean']:.1f}",
            f"{r['encoder_ms_p50']['threads_1']:.3f}",
            f"{r['encoder_ms_p50']['threads_all']:.3f}",
            f"{r['codec_encode_ms_p50']:.3f}",
        )
    console.print(t)
    t2 = Table(title=f"input codecs (unsplit backbone: {result['baselines']['unsplit_accuracy']:.4f})")
    for col in ("codec", "quality", "bytes", "accuracy"):
        t2.add_column(col, justify="right")
    for c in result["baselines"]["input_codecs"]:
        t2.add_row(c["codec"], str(c["quality"]), f"{c['bytes_mean']:.0f}", f"{c['accuracy']:.4f}")
    console.print(t2)
    console.print({"switching": result["switching"], "summary": result["summary"]})
    console.print(f"wrote {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
