"""Progressive transmission: accuracy with the top ``k`` bit planes of each frame, and bytes per plane.

    .venv/bin/python -m bench.planes --out bench/results/planes.json          # 10,000 test images
    .venv/bin/python -m bench.planes --quick --out /tmp/planes.json           # 1,000

The real path per width: encoder ONNX (``widest_features``, sliced to the width) -> ``slimsplit.codec.planes``
(encode every frame as ``B`` plane units, ``B`` the widest bit depth the bundle has at that width; decode the first
``k`` units, missing bits at the midpoint) -> the ``B``-bit tail ONNX. Bytes are the mean size of plane unit ``k``
(header included) and the cumulative mean of planes ``1..k``; top-1 accuracy over the images given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bench.nested_planes import accuracy
from bench.results_io import write_results
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec.planes import decode_planes, encode_planes, parse_plane_header
from slimsplit.server.export.bundle_writer import widest_features


def measure(bundle: Bundle, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> list[dict[str, Any]]:
    from rich.progress import track

    manifest = bundle.manifest
    feats = widest_features(bundle.root, manifest, images)
    rows: list[dict[str, Any]] = []
    for width in sorted({m.width for m in manifest.modes}):
        mode = max((m for m in manifest.modes if m.width == width), key=lambda m: m.bits)
        bits = mode.bits
        tail = ort.InferenceSession(str(bundle.tail_path(mode)), providers=["CPUExecutionProvider"])
        units = [encode_planes(feats[i, :width], bits, frame_id=i) for i in track(range(len(feats)), f"w={width}")]
        sizes = np.array([[len(u) for u in us] for us in units], np.float64)
        zlib_share = np.array([[parse_plane_header(u).coder == "zlib" for u in us] for us in units]).mean(0)
        for k in range(1, bits + 1):
            x = np.stack([decode_planes(us[:k]) for us in units])
            rows.append(
                {
                    "width": width,
                    "bits": bits,
                    "mode": mode.name,
                    "k": k,
                    "accuracy": accuracy(tail, x, labels),
                    "plane_bytes": float(sizes[:, k - 1].mean()),
                    "cumulative_bytes": float(sizes[:, :k].sum(1).mean()),
                    "zlib_fraction": float(zlib_share[k - 1]),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="top-k bit planes through the B-bit tail")
    for c in ("width", "B", "k", "accuracy %", "plane B", "cum. B", "zlib %"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(
            str(r["width"]),
            str(r["bits"]),
            str(r["k"]),
            f"{r['accuracy'] * 100:.2f}",
            f"{r['plane_bytes']:.1f}",
            f"{r['cumulative_bytes']:.1f}",
            f"{r['zlib_fraction'] * 100:.0f}",
        )
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bundle", type=Path, default=default_bundle_path())
    p.add_argument("--out", type=Path, default=Path("bench/results/planes.json"))
    p.add_argument("--quick", action="store_true", help="1,000 test images")
    args = p.parse_args(argv)
    from slimsplit.server.training.data import fashion_test_set

    bundle = Bundle.open(args.bundle)
    t = fashion_test_set(limit=1000 if args.quick else None)
    t0 = time.perf_counter()
    rows = measure(bundle, t.images, t.labels)
    print_table(rows)
    fields = {
        "bundle": f"{bundle.manifest.name} v{bundle.manifest.version}",
        "images": f"rendered Fashion-MNIST test set ({len(t)} images)",
        "wall_seconds": time.perf_counter() - t0,
        "results": rows,
    }
    write_results(args.out, "planes", argv, fields, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
