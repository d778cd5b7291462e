"""Dump real bottleneck features (float32 [N, width, 8, 8]; widest width unless --width) of the shipped sample for
bench/codec.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.edge.runtime import EncoderRuntime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundle", type=Path, default=default_bundle_path())
    p.add_argument("--width", type=int, default=None, help="bottleneck width (default: the widest)")
    a = p.parse_args()
    rt = EncoderRuntime(Bundle.open(a.bundle))
    widths = sorted({m.width for m in rt.modes})
    if a.width is not None and a.width not in widths:
        raise SystemExit(f"--width {a.width}: the bundle has widths {widths}")
    width = widths[-1] if a.width is None else a.width
    rt.set_mode(max((m for m in rt.modes if m.width == width), key=lambda m: m.bits).name)
    feats = rt.features_batch(np.load(default_samples_path())["images"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(a.out, feats.astype(np.float32))
    print(f"wrote {a.out}: {feats.shape}")


if __name__ == "__main__":
    main()
