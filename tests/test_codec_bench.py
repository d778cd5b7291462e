"""bench/codec.py runs end to end on a tiny configuration and writes the JSON that BENCHMARKS.md reports."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np


def _load() -> ModuleType:
    return importlib.import_module("bench.codec")


def test_bench_writes_json_for_synthetic_features(tmp_path: Path) -> None:
    out = tmp_path / "codec.json"
    args = ["--frames", "3", "--channels", "2,4", "--bits", "1,8", "--families", "relu", "--out", str(out)]
    assert _load().main([*args, "--plot", str(tmp_path / "codec.png")]) == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert {r["coder"] for r in rows} == {"none", "zlib", "lzma", "huffman", "auto", "max", "bz2 (ref)"}
    assert len(rows) == 2 * 2 * 7
    for r in rows:
        assert r["frames"] == 3
        header = r["bytes_mean"] - r["payload_bytes_mean"]
        assert 10 <= header <= 11  # version-2 header: one-byte shape varints, 1-2 bytes of payload length
        assert abs(r["header_share"] - header / r["bytes_mean"]) < 1e-9
        if r["coder"] == "none":
            assert r["payload_bytes_mean"] == r["packed_bytes"]
        if r["coder"] in ("auto", "max"):
            assert abs(sum(r["chosen"].values()) - 1) < 1e-9
            same = [x for x in rows if (x["channels"], x["bits"]) == (r["channels"], r["bits"])]
            assert r["bytes_mean"] <= min(x["bytes_mean"] for x in same if x["coder"] in ("none", "huffman"))
    assert len(result["summary"]) == 4


def test_bench_reads_real_features(tmp_path: Path) -> None:
    feats = np.maximum(np.random.default_rng(0).standard_normal((4, 3, 5, 6)), 0).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "real.json"
    assert _load().main(["--features", str(tmp_path / "f.npy"), "--bits", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    seen = {(r["channels"], r["height"], r["width"], r["bits"], r["frames"]) for r in rows}
    assert seen == {(3, 5, 6, 4, 4)}
