"""The adaptive controllers live: ``slimsplit-edge --controller ... --link ...`` and ``slimsplit-demo`` against a
real server on 127.0.0.1 (ONNX Runtime on both sides), through a real shaping proxy.

Nothing here asserts a timing: the assertions are on what the controller chose (modes, payload bytes, skips and
their reasons) and on the accounting being consistent."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from slimsplit.apps.demo import DEMO_TRACE
from slimsplit.apps.demo import main as demo_main
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge.cli import main as edge_main
from slimsplit.server.app import ServerThread, serve_in_thread
from slimsplit.server.config import GrpcConfig, ServerConfig

MODES = set(Bundle.open(default_bundle_path()).manifest.mode_names)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(models=(default_bundle_path(),), grpc=GrpcConfig(port=0, grace_s=0.2), log_level="warning")
    srv = serve_in_thread(config)
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = edge_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def check_accounting(doc: dict[str, Any], deadline_ms: float) -> None:
    """The summary agrees with the frames, and every frame carries its decision."""
    frames, summary = doc["frames"], doc["summary"]
    assert summary["deadline_ms"] == deadline_ms
    assert all(f["deadline_ms"] == deadline_ms for f in frames)
    hits = [f for f in frames if f["hit"]]
    assert summary["hits"] == len(hits) and summary["hit_rate"] == pytest.approx(len(hits) / len(frames))
    assert all(f["ok"] and f["latency_ms"] <= deadline_ms for f in hits)
    assert summary["late"] == sum(1 for f in frames if f["ok"] and not f["hit"])
    sent = [f for f in frames if f["status"] != "SKIPPED"]
    skipped = [f for f in frames if f["status"] == "SKIPPED"]
    assert all(f["mode"] in MODES and f["payload_bytes"] > 0 and f["reason"] for f in sent)
    assert all(f["mode"] == "" and f["payload_bytes"] == 0 and f["reason"] for f in skipped)  # skips say why
    assert sum(summary["chosen"].values()) == len(sent)
    assert sum(summary["skipped"].values()) == len(skipped)
    assert sum(summary["dropped"].values()) == sum(1 for f in sent if not f["ok"])
    modes = [f["mode"] for f in sent]
    assert summary["switches"] == sum(1 for a, b in pairwise(modes) if a != b)


def test_mpc_over_a_rate_limited_link_runs_end_to_end(server: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    code, out, err = run_cli(
        "--server", server.address, "--controller", "mpc", "--link", "2mbit", "--link-delay-ms", "10",
        "--fps", "30", "--deadline-ms", "150", "--frames", "45", "--plain", "--json-out", str(path),
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in out + err
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    assert meta["controller"] == "mpc" and meta["link"]["uplink"] == "2mbit"
    assert meta["link"]["uplink_mean_bps"] == pytest.approx(2e6)
    # measured through the proxy, which delays each direction by 10 ms: a lower bound whatever the load
    assert meta["rtt_ms"] >= 20.0 and doc["rtt_ms"] == meta["rtt_ms"]
    assert len(doc["frames"]) == 45
    check_accounting(doc, 150.0)
    answered = [f for f in doc["frames"] if f["ok"]]
    assert len(answered) >= 30
    assert sum(1 for f in answered if f["estimate_bps"] is not None) >= len(answered) // 2
    # the live lines show the mode, the latency against the deadline and the estimate; the summary the accounting
    assert any(" hit " in line or " MISS" in line for line in out.splitlines())
    assert "est " in out and "link: uplink constant 2.00 Mbit/s" in out
    assert "deadline     150 ms:" in out and "modes sent" in out
    # a constant 2 Mbit/s link allows every frame in some mode; the check splits the hits by what it allowed
    check = meta["link_check"]
    hits = sum(1 for f in doc["frames"] if f["ok"] and f["latency_ms"] <= 150.0)
    assert check["frames"] == check["allowed"] == 45
    assert check["hits"] == check["hits_allowed"] == hits
    assert "link check   the link allowed 45 of 45 frames" in out


def write_collapse_trace(path: Path, high_ms: int = 2000, low_gap_ms: int = 200, total_ms: int = 30_000) -> None:
    """Mahimahi: one 1500-byte opportunity per millisecond (12 Mbit/s) for ``high_ms``, then one every
    ``low_gap_ms`` (60 kbit/s at 200 ms: less than the most accurate mode needs at 30 frames/s)."""
    stamps = list(range(1, high_ms + 1)) + list(range(high_ms + low_gap_ms, total_ms + 1, low_gap_ms))
    path.write_text("".join(f"{t}\n" for t in stamps), encoding="ascii")


def test_mpc_moves_to_lighter_modes_after_the_link_collapses(server: ServerThread, tmp_path: Path) -> None:
    trace = tmp_path / "collapse.trace"
    write_collapse_trace(trace)
    path = tmp_path / "run.json"
    code, out, err = run_cli(
        "--server", server.address, "--controller", "mpc", "--link", str(trace), "--fps", "30",
        "--deadline-ms", "100", "--frames", "150", "--every", "1", "--json-out", str(path),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(path.read_text())
    check_accounting(doc, 100.0)
    frames = doc["frames"]
    # t_s is link time: the collapse is at 2 s; leave the controller time to see it
    before = [f for f in frames if f["t_s"] < 1.5]
    after = [f for f in frames if f["t_s"] > 3.0]
    assert len(before) >= 25 and len(after) >= 25

    def mean_payload(fs: list[dict[str, Any]]) -> float:
        sent = [int(f["payload_bytes"]) for f in fs if f["status"] != "SKIPPED"]
        return sum(sent) / len(sent)

    def bytes_per_frame(fs: list[dict[str, Any]]) -> float:
        return sum(int(f["payload_bytes"]) for f in fs) / len(fs)

    assert mean_payload(after) < mean_payload(before)  # lighter modes ...
    assert bytes_per_frame(after) < 0.6 * bytes_per_frame(before)  # ... and fewer bytes offered to the link
    assert all(f["reason"] for f in after if f["status"] == "SKIPPED")
    assert "link " in out and "est " in out  # the once-a-second lines
    # one 1500-byte opportunity per 200 ms after the collapse: a frame captured just after one waits too long
    check = doc["meta"]["link_check"]
    assert check["frames"] == len(frames) and 0 < check["allowed"] < check["frames"]
    assert check["hits_allowed"] <= check["hits"] and check["hits_allowed"] <= check["allowed"]
    assert "link check" in out


def test_one_frame_at_a_time_gives_up_at_the_deadline_and_never_skips(server: ServerThread, tmp_path: Path) -> None:
    """Period = deadline, one frame in flight, a link too slow for any frame: each frame is abandoned at its
    deadline, which frees the slot for the next capture (the capture-time expiry rule of bench/controller.py), so
    every frame is sent and none is skipped for the in-flight limit."""
    path = tmp_path / "run.json"
    code, _out, err = run_cli(
        "--server", server.address, "--mode", "w16b8", "--link", "10kbit", "--fps", "10", "--deadline-ms", "100",
        "--max-in-flight", "1", "--frames", "12", "--plain", "--json-out", str(path),
    )  # fmt: skip
    assert code in (0, 1), err  # 1: frames failed (they all miss their deadline here)
    doc = json.loads(path.read_text())
    frames = doc["frames"]
    assert len(frames) == 12
    assert [f["status"] for f in frames] == ["DEADLINE_EXCEEDED"] * 12, [f["reason"] for f in frames]
    check_accounting(doc, 100.0)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--controller", "oracle"], ["oracle", "slimsplit-link simulate --controller oracle"]),
        (["--controller", "pid"], ["--controller: unknown controller 'pid'", "mpc"]),
        (["--link", "/nonexistent/uplink.trace"], ["/nonexistent/uplink.trace", "not found"]),
        (["--link", "2mbit", "--downlink", "fast"], ["fast", "not found"]),
        (["--link", "2mbit", "--link-delay-ms", "-1"], ["--link-delay-ms: expected a number >= 0, got -1.0"]),
        (["--deadline-ms", "0"], ["--deadline-ms: expected a number > 0"]),
    ],
)
def test_usage_errors_are_one_clear_line_and_exit_2(argv: list[str], fragments: list[str]) -> None:
    code, out, err = run_cli("--server", "127.0.0.1:1", *argv)
    assert code == 2, err
    assert err.startswith("slimsplit-edge: error: ") and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in out + err


def test_a_bad_trace_file_is_named_with_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.trace"
    trace.write_text("1\n2\nthree\n4\n", encoding="ascii")
    code, out, err = run_cli("--server", "127.0.0.1:1", "--controller", "mpc", "--link", str(trace))
    assert code == 2
    assert f"{trace}:3" in err and "'three'" in err
    assert "Traceback" not in out + err
    trace.write_text("5\n3\n", encoding="ascii")
    code, _out, err = run_cli("--server", "127.0.0.1:1", "--link", str(trace))
    assert code == 2 and f"{trace}:2" in err and "non-decreasing" in err


def test_the_demo_runs_under_ci_over_the_shipped_trace_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CI", "true")
    path = tmp_path / "demo.json"
    out, err = io.StringIO(), io.StringIO()
    code = demo_main(["--json-out", str(path)], stdout=out, stderr=err)  # the defaults: mpc, 30 fps, 100 ms, 10 s
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert "\x1b[" not in text  # CI: plain lines
    assert f"link: uplink {DEMO_TRACE.removesuffix('.trace')}" in text and "controller mpc" in text
    ticks = [line for line in text.splitlines() if line.startswith("t ")]
    assert len(ticks) >= 4 and all("link " in t and "est " in t and "in time" in t for t in ticks)
    assert "Summary" in text and "deadline     100 ms:" in text and "modes sent" in text
    doc = json.loads(path.read_text())
    assert doc["meta"]["controller"] == "mpc" and doc["meta"]["rtt_ms"] >= 20.0
    assert len(doc["frames"]) == 300  # 10 s at 30 frames/s
    check_accounting(doc, 100.0)
    assert doc["summary"]["ok"] > 0 and doc["summary"]["chosen"]
    # the shipped window holds an outage: the link allows some frames, not all, and says so under the summary
    check = doc["meta"]["link_check"]
    assert 0 < check["allowed"] < check["frames"] == 300
    assert "link check   the link allowed" in text and "fell in outages or fades" in text


def test_the_demo_refuses_bad_flags_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.trace"
    bad.write_text("x\n", encoding="ascii")
    for argv, fragment in [
        (["--controller", "oracle"], "slimsplit-link simulate --controller oracle"),
        (["--link", str(bad)], f"{bad}:1"),
        (["--controller", "mpc", "--mode", "w2b1"], "cannot be combined"),
        (["--fps", "0"], "needs --frames"),
    ]:
        out, err = io.StringIO(), io.StringIO()
        assert demo_main(argv, stdout=out, stderr=err) == 2, argv
        assert fragment in err.getvalue() and "Traceback" not in err.getvalue()
