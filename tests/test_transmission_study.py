"""bench/transmission_study.py: its baseline sender reproduces bench/controller.py's simulation exactly, its other
senders do what their docstrings say, and the script writes its JSON, table and plot; bench/nested_planes.py runs
on the shipped bundle."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from slimsplit.link.shaping import LinkDirection
from slimsplit.link.trace import Trace


@pytest.fixture(scope="module")
def study() -> ModuleType:
    return importlib.import_module("bench.transmission_study")


@pytest.fixture(scope="module")
def bench_controller(study: ModuleType) -> ModuleType:
    return importlib.import_module("bench.controller")


def _truth(bench_controller: ModuleType, trace_name: str, seconds: float, scenario: int = 0) -> tuple:  # type: ignore[type-arg]
    (trace,) = bench_controller.load_traces([], seconds, [trace_name])
    sc = bench_controller.rpi4_scenarios()[scenario]
    n = math.floor(trace.period_s * sc.fps + 1e-9)
    return sc, trace, bench_controller.ground_truth(sc, trace, 10.0, n)


@pytest.mark.parametrize("policy", ["fixed-lightest", "mpc"])
def test_single_sender_reproduces_the_controller_bench(
    study: ModuleType, bench_controller: ModuleType, policy: str
) -> None:
    sc, trace, truth = _truth(bench_controller, "ge-outages", 60.0)
    row, _ = bench_controller.run_controller(policy, sc, trace, truth, "captured", timed=False)
    mine = study.run_design(sc, trace, truth, "single", "whole", policy)
    assert mine["feasible_hit_rate"] == row["feasible_hit_rate"]
    assert mine["hit_rate"] == row["hit_rate"]
    assert mine["mean_accuracy"] == pytest.approx(row["mean_accuracy"], abs=1e-12)
    assert mine["bytes_sent"] == row["bytes_sent"]


def test_dropping_stale_bytes_in_the_link_hits_every_feasible_frame(
    study: ModuleType, bench_controller: ModuleType
) -> None:
    sc, trace, truth = _truth(bench_controller, "ge-outages", 30.0)
    for payload, policy in (("whole", "fixed-lightest"), ("planes", "m1")):
        single = study.run_design(sc, trace, truth, "single", payload, policy)
        dropped = study.run_design(sc, trace, truth, "drop-at-deadline", payload, policy)
        assert single["feasible_hit_rate"] < 1.0  # the outages leave a frame's bytes ahead of the next one
        # the lightest piece alone on the link is what makes a frame feasible; with no stale bytes it always fits
        assert dropped["feasible_hit_rate"] == 1.0
        assert dropped["bytes_withheld"] > 0
    # bit planes get more than the lightest mode out of the same frames, without losing any
    planes = study.run_design(sc, trace, truth, "drop-at-deadline", "planes", "m1")
    lightest = study.run_design(sc, trace, truth, "drop-at-deadline", "whole", "fixed-lightest")
    assert planes["mean_accuracy"] > lightest["mean_accuracy"]


def test_a_window_caps_throughput_and_the_sender_withholds_what_cannot_make_it(study: ModuleType) -> None:
    fast = Trace.constant(100e6, name="100mbit", period_ms=10_000)
    total = 4 * study.PLANE_BYTES

    def send(kind: str, due: float) -> tuple[list[float], object]:
        sender = study.Sender(LinkDirection(fast, delay_s=0.010), kind)
        return sender.send(0.0, [study.PLANE_BYTES] * 4, due), sender

    free, s_free = send("window-1000000", 10.0)
    single, s_single = send("single", 10.0)
    assert free == pytest.approx(single)  # a window larger than the frame changes nothing
    assert s_free.bytes_sent == s_single.bytes_sent == total  # type: ignore[attr-defined]
    # 3000 B per 20 ms round trip: 27,648 B need about 10 round trips, far longer than on the open link
    capped, s_capped = send("window-3000", 10.0)
    assert capped[-1] > 9 * 0.020 > single[-1]
    assert s_capped.bytes_withheld == 0  # type: ignore[attr-defined]
    # with a 100 ms deadline the sender stops when a byte could no longer reach the server and answer in time
    late, s_late = send("window-3000", 0.100)
    assert 0 < s_late.bytes_withheld < total  # type: ignore[attr-defined]
    assert s_late.bytes_sent + s_late.bytes_withheld == total  # type: ignore[attr-defined]
    assert late[0] < 0.100 and math.isinf(late[-1])


@pytest.mark.parametrize("rate_bps", [1e6, 2e6, 4e6])
def test_the_adaptive_window_follows_the_link(study: ModuleType, rate_bps: float) -> None:
    link = Trace.constant(rate_bps, name="const", period_ms=10_000)
    sender = study.Sender(LinkDirection(link, delay_s=0.010), "window-bdp")
    assert sender.window == study.INITIAL_WINDOW_BYTES
    for k in range(5):
        sender.send(k * 1.0, [study.PLANE_BYTES] * 4, k * 1.0 + 1.0)
    # twice the bandwidth-delay product: rate x 20 ms round trip x 2 (1 Mbit/s: 5 kB, below the initial 15 kB)
    assert sender.window == pytest.approx(2 * rate_bps / 8 * 0.020, rel=0.05)


def test_unknown_sender_is_refused(study: ModuleType) -> None:
    with pytest.raises(ValueError, match="no sender"):
        study.Sender(LinkDirection(None), "window-10")


def test_script_writes_json_table_and_plot(
    study: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study.json"
    assert study.main(["--only", "step-collapse", "--seconds", "15", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert {r["scenario"] for r in rows} == {"rpi4-300ms", "rpi4-600ms"}
    assert len(rows) == 2 * len(study.SENDERS) * len(study.DESIGNS)
    for r in rows:
        assert 0.0 <= r["feasible_hit_rate"] <= 1.0 and 0.0 <= r["mean_accuracy"] <= 1.0
        assert r["gap_pts"] == pytest.approx((r["oracle_mean_accuracy"] - r["mean_accuracy"]) * 100)
    assert len(doc["worst_cases"]) == 2 * len(study.SENDERS) * len(study.DESIGNS)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "feasible-frame hit rate" in capsys.readouterr().out


def test_nested_planes_bench_on_the_shipped_sample(tmp_path: Path) -> None:
    """bench/nested_planes.py on the shipped bundle and sample: the top bit of every code is the 1-bit code (the
    quantizer's levels are symmetric about the midpoint), so the 1-bit tail must score the same on both."""
    nested = importlib.import_module("bench.nested_planes")
    out = tmp_path / "nested.json"
    assert nested.main(["--samples", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["k"], r["of_bits"]) for r in rows} == {(1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8)}
    assert len({r["width"] for r in rows}) == 4
    for r in rows:
        assert r["delta_pts"] == pytest.approx((r["top_k_accuracy"] - r["direct_accuracy"]) * 100)
        if r["k"] == 1:
            assert r["codes_equal_fraction"] > 0.999
            assert r["top_k_accuracy"] == r["direct_accuracy"]
        else:  # other bin edges than the k-bit quantizer: most codes agree, not all
            assert 0.5 < r["codes_equal_fraction"] < 1.0
    assert out.with_suffix(".png").stat().st_size > 10_000
