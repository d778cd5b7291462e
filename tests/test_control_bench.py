"""bench/controller.py and bench/decision_ab.py run end to end on tiny configurations and write the JSON that
BENCHMARKS.md reports."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

REQUIRED = (
    "scenario",
    "trace",
    "controller",
    "hit_rate",
    "feasible_hit_rate",
    "mean_accuracy",
    "bytes_sent",
    "switches_per_min",
    "dropped",
)


def _load() -> ModuleType:
    return importlib.import_module("bench.controller")


def test_bench_writes_results_targets_and_miss_analysis(tmp_path: Path) -> None:
    out = tmp_path / "controller.json"
    args = ["--only", "step-collapse", "--seconds", "12", "--scenarios", "rpi4-300ms", "--plot-seconds", "12"]
    assert _load().main([*args, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["expiry"] == "captured" and doc["seconds"] == 12
    rows = doc["results"]
    assert {(r["trace"], r["controller"]) for r in rows} == {
        ("step-collapse", c) for c in ("fixed", "fixed-lightest", "ewma-greedy", "mpc", "oracle")
    }
    for r in rows:
        for key in REQUIRED:
            assert key in r, key
        assert 0.0 <= r["feasible_hit_rate"] <= 1.0 and 0.0 <= r["mean_accuracy"] <= 1.0
        assert r["feasible_frames"] == r["feasible_frames_plan"]  # one frame at a time: both definitions agree
        misses = sum(r["feasible_misses"].values())
        assert misses == sum(r["feasible_miss_timing"].values())
        assert misses == round((1 - r["feasible_hit_rate"]) * r["feasible_frames"])
    oracle = next(r for r in rows if r["controller"] == "oracle")
    assert oracle["feasible_hit_rate"] == 1.0 and oracle["feasible_misses"] == {}
    (target,) = doc["targets"]
    assert target["scenario"] == "rpi4-300ms" and "beats_ewma_greedy" in target
    assert {s["expiry"] for s in doc["sensitivity"]} == {"sent", "reply"}
    assert doc["decision_time_us"]["mpc"]["p50_median_us"] > 0
    ref = doc["decision_time_us"]["reference"]  # the machine's own spread, beside mpc's decision times
    assert ref["target_us"] == doc["decision_time_us"]["mpc"]["p50_median_us"]
    assert ref["iterations"] >= 1 and 0 < ref["p50_us"] <= ref["p99_us"]
    assert ref["p99_over_p50"] == ref["p99_us"] / ref["p50_us"]
    # own cost: the fastest of 3 timings per decision, never above the first run's (the same decisions)
    mpc_row = next(r for r in rows if r["controller"] == "mpc")
    assert 0 < mpc_row["decision_us_own_p50"] <= mpc_row["decision_us_p50"]
    assert mpc_row["decision_us_own_p99"] <= mpc_row["decision_us_p99"]
    assert oracle["decision_us_own_p50"] is None  # a replayed plan is timed once
    assert doc["decision_time_us"]["mpc"]["own_p99_max_us"] >= doc["decision_time_us"]["mpc"]["own_p99_median_us"]
    assert 0 < ref["own_p50_us"] <= ref["p50_us"]
    # the risk frontier: mpc at every other margin, on the same scenario x trace
    assert [f["margin"] for f in doc["frontier"]] == [0.8, 0.65, 0.5]
    (lag,) = doc["lagged_oracle"]  # the oracle's choice one frame late: how fast the right choice changes
    assert lag["controller"] == "oracle-lag1" and 0.0 <= lag["feasible_hit_rate"] <= 1.0
    # one frame at a time the oracle's frames do not interact, so it is the most accurate schedule as well
    assert lag["mean_accuracy"] <= oracle["mean_accuracy"] + 1e-12
    assert all(0.0 <= f["feasible_hit_rate"] <= 1.0 for f in doc["frontier"])
    assert len(doc["plots"]) == 2 and all(Path(p).stat().st_size > 10_000 for p in doc["plots"])


def test_decision_ab_compares_two_revisions_side_by_side(tmp_path: Path) -> None:
    """bench/decision_ab.py loads the controller module of a git revision beside the current one (here HEAD against
    the working tree: the same decisions), times both, and refuses a revision it cannot read."""
    ab = importlib.import_module("bench.decision_ab")
    out = tmp_path / "ab.json"
    args = ["--base", "HEAD", "--only", "step-collapse", "--seconds", "10", "--passes", "2", "--out", str(out)]
    assert ab.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["base"] == "HEAD" and doc["passes"] == 2
    assert [(r["scenario"], r["trace"]) for r in doc["results"]] == [
        (sc, "step-collapse") for sc in ("bundle-30fps-100ms", "rpi4-300ms", "rpi4-600ms")
    ]
    for r in doc["results"]:
        assert r["decisions"] > 0 and 0 < r["current_own_p50_us"] <= r["current_own_p99_us"]
        assert r["p50_ratio"] == r["current_own_p50_us"] / r["base_own_p50_us"]
    with pytest.raises(SystemExit, match="cannot read"):
        ab.main(["--base", "no-such-revision", "--out", str(out)])


def test_decision_ab_reads_the_controller_module_where_the_revision_has_it() -> None:
    """Older revisions keep it at edge/control/controllers.py (and import slimsplit.edge.control.*), later ones at
    slimsplit/control/controllers.py: the bench reads the path the revision has and points moved imports at where
    the modules are now."""
    ab = importlib.import_module("bench.decision_ab")
    old = "21bf757"  # a revision of the old layout
    if subprocess.run(["git", "-C", str(ab.REPO), "cat-file", "-e", f"{old}^{{commit}}"], check=False).returncode:
        pytest.skip(f"revision {old} is not in this clone")
    assert ab.module_path(old) == "edge/control/controllers.py"
    assert (ab.REPO / ab.MODULE_PATHS[0]).is_file()  # the newest layout is the working tree's
    source = "from slimsplit.edge.control.base import X\nfrom slimsplit.edge.control.oracle import plan_oracle\n"
    assert ab.current_imports(source) == (
        "from slimsplit.control.base import X\nfrom slimsplit.evaluation.oracle import plan_oracle\n"
    )
    base = ab.load_base(old)
    assert base.MpcController.__module__ == "slimsplit_controllers_base"
