"""Dump real bottleneck features (widest mode, float32 [N,16,8,8]) of the shipped sample for bench/codec.py."""

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
    a = p.parse_args()
    rt = EncoderRuntime(Bundle.open(a.bundle))
    widest = max(rt.modes, key=lambda m: (m.width, m.bits))
    rt.set_mode(widest.name)
    feats = rt.features_batch(np.load(default_samples_path())["images"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(a.out, feats.astype(np.float32))
    print(f"wrote {a.out}: {feats.shape}")


if __name__ == "__main__":
    main()
