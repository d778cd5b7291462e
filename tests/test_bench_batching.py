"""bench/batching.py (batching on vs off, and the tail's own batch curve): the curve from the server's real ONNX
Runtime backend, the gains table, a real point against two real servers with the load generator of bench.peer
(a server's name is not its protocol), and the argument checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import batching, peer
from slimsplit.bundle import Bundle, default_bundle_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_tail_curve_times_every_batch_size_on_the_real_tail() -> None:
    bundle = Bundle.open(default_bundle_path())
    mode = bundle.manifest.modes[-1]
    shape = (mode.width, bundle.manifest.feature.height, bundle.manifest.feature.width)
    features = np.random.default_rng(0).random((5, *shape), dtype=np.float32)
    rows = batching.tail_curve(features, mode.name, reps=3)
    assert [r["batch"] for r in rows] == list(batching.BATCH_SIZES)
    assert rows[0]["bound_speedup"] == 1.0
    for r in rows:
        assert r["call_us"] > 0 and r["us_per_frame"] == pytest.approx(r["call_us"] / r["batch"])


def _point(server: str, transport: str, in_flight: int, throughput: float, p99: float) -> dict[str, object]:
    return {
        "server": server,
        "transport": transport,
        "in_flight": in_flight,
        "throughput": throughput,
        "p99_ms": p99,
        "server_cpu_ms_per_frame": 1000.0 / throughput,
        "mean_batch": 1.0 if server == batching.OFF else 4.0,
    }


def test_gains_compare_each_server_with_batching_off_at_the_same_point() -> None:
    points = [
        _point(batching.ON, "stream", 16, 1200.0, 20.0),
        _point(batching.WAIT, "stream", 16, 1500.0, 30.0),
        _point(batching.OFF, "stream", 16, 1000.0, 25.0),
        _point(batching.ON, "unary", 64, 900.0, 80.0),  # no batch-1 point here: no gain
    ]
    gains = {(g["server"], g["transport"], g["in_flight"]): g for g in batching.gains(points)}
    assert set(gains) == {(batching.ON, "stream", 16), (batching.WAIT, "stream", 16)}
    assert gains[(batching.ON, "stream", 16)]["throughput_gain"] == pytest.approx(1.2)
    assert gains[(batching.WAIT, "stream", 16)]["p99_ratio"] == pytest.approx(1.2)
    assert gains[(batching.WAIT, "stream", 16)]["cpu_ratio"] == pytest.approx(1000 / 1500)


def test_a_server_is_loaded_in_the_protocol_it_speaks_whatever_its_name(tmp_path: Path) -> None:
    workload = peer.make_workload(tmp_path)
    base = peer.slimsplit_server((0, 1), 1, ("--workers=1",), tmp_path)
    server = peer.Server(**{**base.__dict__, "name": batching.OFF, "protocol": "slimsplit", "proc": None})
    config = peer.Config(in_flight=(2,), reps=1, duration_s=0.5, warmup_s=0.2, clients=1)
    server.start()
    try:
        m = peer.measure(server, None, workload, config, "stream", 2, tmp_path)
    finally:
        server.stop()
    assert m["server"] == batching.OFF and m["frames"] > 0 and not m["errors"] and not m["crashed"]
    assert m["mean_batch"] == 1.0  # max batch 1: every tail call is one frame
    triton = peer.Server(**{**base.__dict__, "name": "triton", "proc": None})
    with pytest.raises(peer.PeerError, match="Triton install"):
        peer._spawn_worker(triton, None, {}, tmp_path, 0)


@pytest.mark.parametrize("args", [["--in-flight", "0"], ["--reps", "0"], ["--tail-reps", "0"], ["--wait-us", "0"]])
def test_bad_arguments_are_refused(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.batching", *args, "--out", str(tmp_path / "b.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "must be >= 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "b.json").exists()
