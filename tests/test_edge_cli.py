"""``slimsplit-edge`` and ``slimsplit-demo``: user errors are one clear line and an exit code, a run
against a real server works end to end, and the edge imports no torch."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slimsplit.apps.demo import SweepController, demo_modes
from slimsplit.apps.demo import main as demo_main
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge.cli import main
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import GrpcConfig, ServerConfig


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = ServerConfig(grpc=GrpcConfig(port=0, grace_s=0.2), log_level="warning")
    srv = ServerThread(config, backend=NullBackend()).start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)


@pytest.fixture(scope="module")
def dead_address() -> str:
    srv = ServerThread(ServerConfig(grpc=GrpcConfig(port=0), log_level="warning"), backend=NullBackend()).start()
    address = srv.address
    srv.stop()
    return address


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--server", "localhost:http"], "port 'http' is not a number"),
        (["--server", "http://127.0.0.1:1"], "without a scheme"),
        (["--mode", "w99b9"], "has no mode 'w99b9'; known modes: w"),
        (["--bundle", "/nonexistent/bundle"], "bundle folder /nonexistent/bundle does not exist"),
        (["--source", "/nonexistent/frames.npz"], "does not exist"),
        (["--max-in-flight", "0"], "--max-in-flight: expected an integer >= 1, got 0"),
        (["--frames", "0"], "--frames: expected an integer >= 1, got 0"),
        (["--threads", "-1"], "--threads: expected an integer >= 0, got -1"),
        (["--config", "/nonexistent/edge.toml"], "configuration file /nonexistent/edge.toml does not exist"),
    ],
)
def test_usage_errors_are_one_clear_line_and_exit_2(argv: list[str], fragment: str) -> None:
    code, out, err = run_cli(*argv)
    assert code == 2
    assert err.startswith("slimsplit-edge: error: ") and fragment in err
    assert "Traceback" not in err + out


def test_an_unreachable_server_is_named_and_exits_3(dead_address: str) -> None:
    code, _out, err = run_cli("--server", dead_address, "--connect-timeout", "0.3", "--frames", "2")
    assert code == 3
    assert f"cannot reach a server at {dead_address}" in err


def test_a_run_streams_frames_and_writes_json(server: ServerThread, tmp_path: Path) -> None:
    out_path = tmp_path / "run.json"
    mode = Bundle.open(default_bundle_path()).manifest.modes[1].name
    code, out, err = run_cli(
        "--server", server.address, "--mode", mode, "--frames", "7", "--plain", "--json-out", str(out_path)
    )
    assert code == 0, err
    assert out.count(f" {mode} ") >= 7  # one line per frame
    assert "Summary" in out and "latency" in out and "bytes/frame" in out
    doc = json.loads(out_path.read_text())
    assert doc["summary"]["frames"] == 7 and doc["summary"]["ok"] == 7
    assert [f["index"] for f in doc["frames"]] == list(range(7))
    assert all(f["ok"] and f["mode"] == mode and f["payload_bytes"] > 0 for f in doc["frames"])
    assert doc["meta"]["target"] == server.address


def test_unary_quiet_run_prints_only_the_summary(server: ServerThread) -> None:
    code, out, _err = run_cli("--server", server.address, "--frames", "3", "--unary", "--quiet")
    assert code == 0
    assert out.startswith("Summary") and "3 total, 3 answered" in out


def test_an_adaptive_controller_plugs_in(server: ServerThread, tmp_path: Path) -> None:
    out_path = tmp_path / "mpc.json"
    code, _out, err = run_cli(
        "--server", server.address, "--controller", "mpc", "--frames", "12", "--quiet", "--json-out", str(out_path)
    )
    assert code == 0, err
    doc = json.loads(out_path.read_text())
    names = set(Bundle.open(default_bundle_path()).manifest.mode_names)
    assert doc["summary"]["frames"] == 12
    assert all(f["mode"] in names and f["reason"] for f in doc["frames"] if f["status"] != "SKIPPED")
    code, _out, err = run_cli("--controller", "mpc", "--mode", "w2b1")
    assert code == 2 and "cannot be combined" in err


def test_the_server_not_serving_the_mode_is_a_clear_error(tmp_path: Path, server: ServerThread) -> None:
    # an edge bundle whose manifest lists an extra mode the server does not have
    src = default_bundle_path()
    manifest = json.loads((src / "manifest.json").read_text())
    extra = dict(manifest["modes"][0], name="extra-mode")
    manifest["modes"].append(extra)
    bundle = tmp_path / "bundle"
    shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("manifest.json"))  # links out of a bundle are refused
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, _out, err = run_cli("--server", server.address, "--bundle", str(bundle), "--mode", "extra-mode")
    assert code == 3
    assert "does not serve mode 'extra-mode'" in err


def test_console_entry_has_no_traceback_for_user_errors() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slimsplit.edge.cli", "--server", "nohost:99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "port 99999 is outside 1-65535" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_edge_imports_no_torch_and_no_server() -> None:
    code = (
        "import sys\n"
        "import slimsplit.edge.cli, slimsplit.edge.client, slimsplit.edge.runtime, slimsplit.edge.pipeline\n"
        "import slimsplit.edge.sources, slimsplit.edge.display, slimsplit.edge.run, slimsplit.edge.status\n"
        "from slimsplit.bundle import Bundle, default_bundle_path\n"
        "from slimsplit.edge.runtime import EncoderRuntime\n"
        "EncoderRuntime(Bundle.open(default_bundle_path()))\n"
        "slimsplit.edge.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'PIL', 'rich', 'tqdm'}\n"
        "             or m.startswith('slimsplit.server'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


def test_the_demo_sweep_without_a_link_runs_end_to_end_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    out, err = io.StringIO(), io.StringIO()
    code = demo_main(["--link", "none", "--controller", "sweep", "--frames", "12", "--plain"], stdout=out, stderr=err)
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert "\x1b[" not in text  # CI: plain lines
    assert "Summary" in text and "12 total, 12 answered" in text
    assert "per mode" in text and "link: none" in text
    for mode in demo_modes(Bundle.open(default_bundle_path()).manifest):
        assert text.count(f" {mode} ") >= 4  # 4 frames each, one line per frame


def test_sweep_controller_and_demo_modes() -> None:
    manifest = Bundle.open(default_bundle_path()).manifest
    modes = demo_modes(manifest, 3)
    assert len(set(modes)) == 3 and set(modes) <= set(manifest.mode_names)
    sizes = [manifest.mode(m).payload_bytes_mean or 0 for m in modes]
    assert sizes == sorted(sizes)
    c = SweepController(["a", "b"], 2)
    assert [c.choose(0.0, 0, 0).mode for _ in range(6)] == ["a", "a", "b", "b", "a", "a"]


def test_a_video_file_is_a_source_of_the_cli(tmp_path: Path, server: ServerThread) -> None:
    """``--source VIDEO`` end to end: played as fast as it decodes with --fps 0, every frame answered."""
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 72))
    for i in range(12):
        frame = np.full((72, 96, 3), (i * 20) % 256, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    out_json = tmp_path / "run.json"
    code, _out, err = run_cli(
        "--server", server.address, "--source", str(video), "--fps", "0", "--json-out", str(out_json)
    )
    assert code == 0, err
    frames = json.loads(out_json.read_text())["frames"]
    assert len(frames) == 12 and all(f["status"] == "OK" for f in frames)
