"""bench/intar.py runs end to end (kernels + a tiny bundle) and writes the JSON that BENCHMARKS.md reports."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from fixtures_bundle import write_tiny_bundle


def _load() -> ModuleType:
    return importlib.import_module("bench.intar")


def test_bench_writes_kernels_bundle_rows_and_plots(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "bundle", widths=(2,), bits=(4, 8))
    out = tmp_path / "intar.json"
    assert _load().main(["--quick", "--out", str(out), "--bundle", str(tmp_path / "bundle")]) == 0
    result = json.loads(out.read_text())
    names = [k["name"] for k in result["kernels"]]
    assert names == ["cnn-4L", "mlp", "vae", "self-attention", "gating-net"]
    for rows in (result["kernels"], result["kernels_full_device"]):
        for k in rows:
            assert {"dataflow_cycles", "sequential_cycles", "intar_cycles", "offchip_bytes", "dsp", "bram36"} <= set(k)
            assert k["intar_cycles"] <= k["sequential_cycles"]
            assert k["intar_cycles"] <= k["dataflow_cycles"]
            assert k["published"]["intar_cycles"] > 0
    summary = result["summary"]["paper_budget"]
    assert summary["intar_never_slower"] is True
    assert summary["paper_geomean_vs_dataflow"] == 1.8 and summary["paper_geomean_vs_sequential"] == 7.1
    modes = result["bundle"]["modes"]
    assert [m["mode"] for m in modes] == ["w2b4", "w2b8"]
    assert all(m["fpga_cycles"] > 0 and m["cpu_ort_ms_p50"] > 0 for m in modes)
    for png in result["plots"]:
        assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_bench_skips_a_missing_bundle_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "intar.json"
    assert _load().main(["--quick", "--out", str(out), "--bundle", str(tmp_path / "absent")]) == 0
    assert "no bundle at" in json.loads(out.read_text())["bundle"]["skipped"]
