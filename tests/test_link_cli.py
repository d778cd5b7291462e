"""``slimsplit-link``: stats, synth, simulate, and the proxy command's argument handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimsplit.apps.link_cli import build_parser, main
from slimsplit.link.synth import shipped_traces_dir
from slimsplit.link.trace import load_mahimahi


def test_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(shipped_traces_dir() / "step-collapse.trace")]) == 0
    out = capsys.readouterr().out
    assert "step-collapse" in out and "90s" in out


def test_synth_writes_a_seeded_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.trace", tmp_path / "b.trace"
    for p in (a, b):
        assert main(["synth", "--out", str(p), "--seed", "3", "--duration-s", "20", "--p-outage", "0.5"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert load_mahimahi(a).period_s == 20.0
    assert main(["synth", "--shipped", str(tmp_path / "shipped")]) == 0
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == sorted(
        p.name for p in shipped_traces_dir().glob("*.trace")
    )


def test_synth_needs_an_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth"]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_simulate_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(shipped_traces_dir() / "markov-fading.trace")
    args = ["simulate", "--link", trace, "--delay-ms", "10", "--deadline-ms", "300", "--fps", "3.3333"]
    assert main([*args, "--duration-s", "30", "--controller", "mpc"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["frames"] == 99 and 0.0 <= s["hit_rate"] <= 1.0
    assert main([*args, "--duration-s", "30", "--controller", "oracle"]) == 0
    assert json.loads(capsys.readouterr().out)["late"] == 0


def test_bad_link_spec_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.up"
    bad.write_text("10\nx\n")
    assert main(["simulate", "--link", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_proxy_arguments() -> None:
    args = build_parser().parse_args(["proxy", "--upstream", "127.0.0.1:50051", "--uplink", "2mbit"])
    assert args.upstream == ("127.0.0.1", 50051) and args.listen == ("127.0.0.1", 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proxy", "--upstream", "nowhere"])


def test_stats_reports_a_bad_trace_before_printing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path)]) == 2  # a folder given as a trace
    out = capsys.readouterr()
    assert out.out == "" and f"{tmp_path}: is a directory" in out.err
    big = tmp_path / "big.up"
    big.write_text("10\n10000000000\n")  # 10^10 ms: refused, not summarised for ever
    assert main(["stats", str(big)]) == 2
    assert f"{big}:2: timestamp 10000000000 ms is too large" in capsys.readouterr().err
