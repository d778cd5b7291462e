"""``slimsplit-edge --transmission planes`` against a real server (ONNX Runtime tails, the shipped bundle): frames
sent as bit planes give exactly the whole frame's predictions when every plane arrives, the plane transport copes
with an emulated slow link, and misuse is one clear line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slimsplit.edge.cli import main
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, ServerConfig


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(grpc=GrpcConfig(port=0, grace_s=0.5), log_level="warning")
    with ServerThread(config) as srv:
        yield srv


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_json(tmp_path: Path, name: str, *argv: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    code, out, err = run_cli(*argv, "--plain", "--json-out", str(path))
    assert code == 0, err + out
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_all_planes_give_the_whole_frames_predictions(server: ServerThread, tmp_path: Path) -> None:
    common = ("--server", server.address, "--controller", "fixed", "--mode", "w8b4", "--frames", "12")
    whole = run_json(tmp_path, "whole", *common)
    planes = run_json(tmp_path, "planes", *common, "--transmission", "planes")
    assert [f["planes"] for f in whole["frames"]] == [0] * 12
    assert [f["planes"] for f in planes["frames"]] == [4] * 12  # no deadline: every plane, then served at once
    assert [f["classes"] for f in planes["frames"]] == [f["classes"] for f in whole["frames"]]
    for a, b in zip(planes["frames"], whole["frames"], strict=True):
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-5)
    assert planes["summary"]["planes"] == {"4": 12}


def test_planes_over_a_slow_emulated_link(server: ServerThread, tmp_path: Path) -> None:
    doc = run_json(
        tmp_path,
        "slow",
        *("--server", server.address, "--transmission", "planes", "--controller", "planes"),
        *("--deadline-ms", "150", "--fps", "20", "--frames", "60", "--link", "150kbit"),
    )
    frames, summary = doc["frames"], doc["summary"]
    assert len(frames) == 60
    answered = [f for f in frames if f["ok"]]
    assert answered, "no frame was answered over a 150 kbit/s link with a 150 ms deadline"
    for f in answered:
        bits = int(f["mode"].split("b")[1])
        assert 1 <= f["planes"] <= bits
    assert sum(summary["planes"].values()) == len(answered)
    assert all(f["status"] in ("OK", "DEADLINE_EXCEEDED") for f in frames)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--controller", "planes"], "use it with --transmission planes"),
        (["--transmission", "planes", "--unary"], "travel on a stream"),
    ],
)
def test_misuse_is_one_clear_line(argv: list[str], fragment: str) -> None:
    code, out, err = run_cli(*argv)
    assert code == 2
    assert fragment in err and "Traceback" not in err + out
