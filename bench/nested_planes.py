"""Do the shipped bundle's tails accept bit planes? The top ``k`` bits of a frame's ``b``-bit code, through the
``k``-bit tail, against the ``k``-bit code itself.

    .venv/bin/python -m bench.nested_planes --out bench/results/nested_planes.json            # 10,000 test images
    .venv/bin/python -m bench.nested_planes --quick --out /tmp/nested_planes.json             # 1,000
    .venv/bin/python -m bench.nested_planes --samples --out /tmp/nested_planes.json           # the shipped 160

Why: sending a frame as bit planes, most significant first, lets the link decide how many bits of each frame arrive
by the deadline (``bench/transmission_study.py`` measures what that would do on the Raspberry Pi table). It needs
the ``k``-bit view of a ``b``-bit code to be a code the ``k``-bit tail understands. With the codec's quantizer
(``slimsplit.codec.quantize``: ``q = round((x - lo) / (hi - lo) * (2**b - 1))``) the top ``k`` bits of ``q``,
``q >> (b - k)``, are a ``k``-bit code of the same frame over the same range, but with other bin edges than the
``k``-bit quantizer (floor-like instead of rounding; for ``k = 1`` they coincide except exactly at the midpoint).
The tails were trained on the ``k``-bit quantizer only. This bench measures the accuracy that costs, per width:

* ``direct``: the ``k``-bit code (what the mode sends today), dequantized, through the ``k``-bit tail;
* ``top k of b``: the ``b``-bit code's top ``k`` bits, dequantized on the ``k``-bit grid
  (``lo + q_k (hi - lo) / (2**k - 1)``), through the same ``k``-bit tail.

Quantize and dequantize are the codec's own functions; the entropy coding in between is lossless, so it is left
out. Accuracy is top-1 over the images given.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bench.results_io import write_results
from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.codec.quantize import dequantize, quantize
from slimsplit.server.export.bundle_writer import widest_features


def accuracy(tail: ort.InferenceSession, x: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    logits = np.concatenate([tail.run(None, {"features": x[i : i + 512]})[0] for i in range(0, len(x), 512)])
    return float((logits.argmax(1) == labels).mean())


def codes(feats: npt.NDArray[np.float32], bits: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per frame: the ``bits``-bit code and its (lo, hi)."""
    q = np.empty(feats.shape, np.int64)
    ranges = np.empty((len(feats), 2), np.float64)
    for i in range(len(feats)):
        qi, lo, hi = quantize(feats[i], bits)
        q[i], ranges[i] = qi, (lo, hi)
    return q, ranges


def decode(q: npt.NDArray[np.int64], ranges: npt.NDArray[np.float64], bits: int) -> npt.NDArray[np.float32]:
    out = np.empty(q.shape, np.float32)
    for i in range(len(q)):
        out[i] = dequantize(q[i], float(ranges[i, 0]), float(ranges[i, 1]), bits)
    return out


def measure(bundle: Bundle, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> list[dict[str, Any]]:
    from rich.progress import track

    manifest = bundle.manifest
    feats = widest_features(bundle.root, manifest, images)
    modes = {(m.width, m.bits): m for m in manifest.modes}
    widths = sorted({w for w, _ in modes})
    bit_depths = sorted({b for _, b in modes})
    sessions: dict[str, ort.InferenceSession] = {}
    rows: list[dict[str, Any]] = []
    for width in track(widths, description="widths"):
        f = feats[:, :width]
        per_bits = {b: codes(f, b) for b in bit_depths}
        for k in bit_depths:
            mode = modes.get((width, k))
            if mode is None:
                continue
            tail = sessions.setdefault(
                mode.tail, ort.InferenceSession(str(bundle.tail_path(mode)), providers=["CPUExecutionProvider"])
            )
            q_k, r_k = per_bits[k]
            direct = accuracy(tail, decode(q_k, r_k, k), labels)
            for b in (b for b in bit_depths if b > k):
                q_b, r_b = per_bits[b]
                top = q_b >> (b - k)
                same = float((top == q_k).mean())
                rows.append(
                    {
                        "width": width,
                        "k": k,
                        "of_bits": b,
                        "mode": mode.name,
                        "direct_accuracy": direct,
                        "top_k_accuracy": accuracy(tail, decode(top, r_b, k), labels),
                        "codes_equal_fraction": same,  # how often the top k bits equal the k-bit code
                    }
                )
    for r in rows:
        r["delta_pts"] = (r["top_k_accuracy"] - r["direct_accuracy"]) * 100.0
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="top k bits of the b-bit code through the k-bit tail, against the k-bit code (accuracy %)")
    for col in ("mode", "k of b", "direct", "top k of b", "Δ points", "codes equal"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["mode"],
            f"{r['k']} of {r['of_bits']}",
            f"{100 * r['direct_accuracy']:.2f}",
            f"{100 * r['top_k_accuracy']:.2f}",
            f"{r['delta_pts']:+.2f}",
            f"{100 * r['codes_equal_fraction']:.1f}%",
        )
    Console(width=120).print(table)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    all_b = sorted({r["of_bits"] for r in rows})
    colors = {b: plt.get_cmap("tab10")(j) for j, b in enumerate(all_b)}
    values = [100 * r[key] for r in rows for key in ("direct_accuracy", "top_k_accuracy")]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 4.0), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], ks, strict=True):
        sub = [r for r in rows if r["k"] == k]
        widths = sorted({r["width"] for r in sub})
        bs = sorted({r["of_bits"] for r in sub})
        step = 0.8 / (len(bs) + 1)
        x = np.arange(len(widths))
        direct = [next(r["direct_accuracy"] for r in sub if r["width"] == w) * 100 for w in widths]
        ax.bar(x, direct, step, label=f"{k}-bit code (today)", color="grey")
        for j, b in enumerate(bs):
            vals = [
                next((r["top_k_accuracy"] * 100 for r in sub if r["width"] == w and r["of_bits"] == b), 0.0)
                for w in widths
            ]
            ax.bar(x + (j + 1) * step, vals, step, label=f"top {k} of {b} bits", color=colors[b])
        ax.set_xticks(x + step * len(bs) / 2, [f"w{w}" for w in widths])
        ax.set_title(f"{k}-bit tail")
        ax.set_ylim(min(values) - 3, max(values) + 4)
        ax.legend(fontsize=7, loc="upper left", ncols=2)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bundle", type=Path, default=default_bundle_path())
    p.add_argument("--out", type=Path, default=Path("bench/results/nested_planes.json"))
    p.add_argument("--quick", action="store_true", help="1,000 test images")
    p.add_argument("--samples", action="store_true", help="the shipped 160-image sample (no data set needed)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    if args.samples:
        s = np.load(default_samples_path())
        images, labels, source = s["images"], s["labels"].astype(np.int64), "shipped sample (160 test images)"
    else:
        from slimsplit.server.training.data import fashion_test_set

        t = fashion_test_set(limit=1000 if args.quick else None)
        images, labels, source = t.images, t.labels, f"rendered Fashion-MNIST test set ({len(t)} images)"
    t0 = time.perf_counter()
    rows = measure(bundle, images, labels)
    wall = time.perf_counter() - t0
    print_table(rows)
    fields = {
        "bundle": f"{bundle.manifest.name} v{bundle.manifest.version}",
        "images": source,
        "wall_seconds": wall,
        "results": rows,
    }
    write_results(args.out, "nested_planes", argv, fields, None if args.no_plot else partial(plot, rows=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
