"""bench/server_ab.py (two server configurations side by side): its TOML settings, its B / A table and its
argument checks (the measurement loop is bench.peer's, tested with bench.batching)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench import server_ab

ROOT = Path(__file__).resolve().parents[1]


def test_settings_become_a_toml_document_the_server_reads() -> None:
    text = server_ab.toml_text(["grpc.target_loop_lag_ms = 0", "batching.max_wait_us=500", "grpc.insecure=true"])
    want = {"grpc": {"target_loop_lag_ms": 0, "insecure": True}, "batching": {"max_wait_us": 500}}
    assert tomllib.loads(text) == want
    from slimsplit.server.config import load_config

    assert load_config(None, tomllib.loads(text)).grpc.target_loop_lag_ms == 0
    assert server_ab.toml_text([]) == ""
    for bad in ("target_loop_lag_ms=0", "grpc.x", "grpc.=1", ".x=1", "grpc.x="):
        with pytest.raises(ValueError, match=r"SECTION\.KEY=VALUE"):
            server_ab.toml_text([bad])


def test_ratios_are_b_over_a_at_the_same_point() -> None:
    def point(server: str, throughput: float) -> dict[str, object]:
        return {"server": server, "transport": "stream", "in_flight": 16, "throughput": throughput, "p50_ms": 10.0,
                "p99_ms": 20.0, "server_cpu_ms_per_frame": 1.0}  # fmt: skip

    (r,) = server_ab.ratios([point("A", 800.0), point("B", 1000.0)])
    assert r["throughput_ratio"] == pytest.approx(1.25) and r["p99_ms_ratio"] == 1.0
    assert server_ab.ratios([point("B", 1000.0)]) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "the same configuration"), (["--b-toml", "nodot=1"], "SECTION.KEY=VALUE"), (["--reps", "0"], ">= 1")],
)
def test_bad_arguments_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.server_ab", *args, "--out", str(tmp_path / "ab.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "ab.json").exists()
