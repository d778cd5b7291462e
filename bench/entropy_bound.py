"""How many bytes a better entropy coder could save per mode, and what that would do to the 10x target.

The shipped codec quantizes a frame per tensor, packs the bits and keeps the smallest of the packed bits, zlib
and the bundle's learned per-channel huffman code (``slimsplit.codec``). This bench measures, on the shipped
sample images through the real ONNX encoder, per mode:

* ``codec_bytes_mean``: what the shipped codec sends (header included; with the bundle's learned huffman tables);
* ``codec_without_tables_bytes_mean``: the same codec without the learned tables (packed bits or DEFLATE);
* ``adaptive_bytes_mean``: header + the code length of an *adaptive order-0 arithmetic coder* with one context per
  channel (Krichevsky-Trofimov estimator: symbol ``s`` after ``n`` symbols of which ``c_s`` were ``s`` costs
  ``-log2((c_s + 1/2) / (n + L/2))`` bits, ``L = 2**bits``), i.e. what such a coder would send, to within a few bytes
  of termination. Nothing is learned offline: it is a per-frame bound a decoder could reproduce.

Then, with the input-codec points of ``bench/results/rate_accuracy.json`` (``--rate-accuracy``), the target
"at equal or better accuracy, >= 10x fewer bytes than the input codec": for every codec point, the cheapest mode at
least as accurate (manifest accuracy on the full test set) and the ratio, with today's codec and with the bound.

    python -m bench.entropy_bound --out bench/results/entropy_bound.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bench.results_io import recorded_path
from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.codec import encode_features
from slimsplit.codec.header import header_size
from slimsplit.codec.quantize import quantize
from slimsplit.edge.runtime import EncoderRuntime


def adaptive_bits(symbols: npt.NDArray[np.integer[Any]], levels: int) -> float:
    """Code length (bits) of ``symbols`` under an adaptive order-0 model with the KT estimator."""
    counts = np.zeros(levels)
    total = 0.0
    for n, s in enumerate(symbols.tolist()):
        total -= math.log2((counts[s] + 0.5) / (n + 0.5 * levels))
        counts[s] += 1
    return total


def frame_bound(features: npt.NDArray[np.float32], bits: int) -> float:
    """Header + per-channel adaptive code length of one frame [C, H, W], in bytes."""
    q = quantize(features, bits)[0]
    levels = 1 << bits
    payload = sum(adaptive_bits(q[c].ravel(), levels) for c in range(q.shape[0])) / 8.0
    c, h, w = q.shape
    return header_size((c, h, w), math.ceil(payload)) + payload


def ten_x(modes: list[dict[str, Any]], codecs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per codec point: the cheapest mode (by ``key`` bytes) with accuracy >= the point's, and the ratio."""
    out = []
    for c in codecs:
        ok = [m for m in modes if m["accuracy"] >= c["accuracy"]]
        best = min(ok, key=lambda m: m[key]) if ok else None
        out.append(
            {
                "codec": c["codec"],
                "quality": c["quality"],
                "codec_bytes": c["bytes_mean"],
                "codec_accuracy": c["accuracy"],
                "mode": best["mode"] if best else None,
                "mode_bytes": best[key] if best else None,
                "ratio": c["bytes_mean"] / best[key] if best else None,
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("out/entropy_bound.json"), help="JSON results")
    p.add_argument("--bundle", type=Path, default=default_bundle_path())
    p.add_argument("--rate-accuracy", type=Path, default=Path("bench/results/rate_accuracy.json"))
    p.add_argument("--images", type=int, default=160, help="sample images to encode (at most 160)")
    args = p.parse_args()
    bundle = Bundle.open(args.bundle)
    runtime = EncoderRuntime(bundle)
    images = np.load(default_samples_path())["images"][: args.images]
    modes: list[dict[str, Any]] = []
    for spec in tqdm(bundle.manifest.modes, desc="modes"):
        runtime.set_mode(spec.name)
        feats = runtime.features_batch(images)
        modes.append(
            {
                "mode": spec.name,
                "accuracy": spec.accuracy,
                "codec_bytes_mean": float(
                    np.mean([len(encode_features(f, spec.bits, tables=runtime.codec_tables(spec.name))) for f in feats])
                ),
                "has_table": runtime.codec_tables(spec.name) is not None,
                "codec_without_tables_bytes_mean": float(np.mean([len(encode_features(f, spec.bits)) for f in feats])),
                "adaptive_bytes_mean": float(np.mean([frame_bound(f, spec.bits) for f in feats])),
            }
        )
    doc: dict[str, Any] = {"bundle": recorded_path(args.bundle), "images": len(images), "modes": modes}
    if args.rate_accuracy.is_file():
        codecs = json.loads(args.rate_accuracy.read_text())["baselines"]["input_codecs"]
        doc["ten_x"] = {
            "codec": ten_x(modes, codecs, "codec_bytes_mean"),
            "adaptive": ten_x(modes, codecs, "adaptive_bytes_mean"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")

    console = Console()
    t = Table(title=f"bytes per frame on {len(images)} sample images (header included)")
    cols = ("mode", "accuracy", "without tables", "shipped codec", "table saves", "adaptive order-0 bound", "saving")
    for col in cols:
        t.add_column(col, justify="right")
    for m in modes:
        saving = 1 - m["adaptive_bytes_mean"] / m["codec_bytes_mean"]
        table_saving = 1 - m["codec_bytes_mean"] / m["codec_without_tables_bytes_mean"]
        t.add_row(
            m["mode"],
            f"{m['accuracy']:.4f}",
            f"{m['codec_without_tables_bytes_mean']:.1f}",
            f"{m['codec_bytes_mean']:.1f}",
            f"{100 * table_saving:.0f}%" if m["has_table"] else "(no table)",
            f"{m['adaptive_bytes_mean']:.1f}",
            f"{100 * saving:+.0f}%",
        )
    console.print(t)
    if "ten_x" in doc:
        r = Table(title="10x target: cheapest mode at >= the codec point's accuracy")
        for col in ("codec", "q", "bytes", "acc", "mode", "ratio (shipped)", "mode (bound)", "ratio (bound)"):
            r.add_column(col, justify="right")
        for a, b in zip(doc["ten_x"]["codec"], doc["ten_x"]["adaptive"], strict=True):
            r.add_row(
                a["codec"],
                str(a["quality"] or "lossless"),
                f"{a['codec_bytes']:.0f}",
                f"{a['codec_accuracy']:.4f}",
                a["mode"] or "-",
                f"{a['ratio']:.1f}x" if a["ratio"] else "no mode",
                b["mode"] or "-",
                f"{b['ratio']:.1f}x" if b["ratio"] else "no mode",
            )
        console.print(r)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
