"""What a new user hits: busy ports, damaged bundles, the README's commands, ``slimsplit-link`` help and
defaults, file names of folder frames, the accuracy line when nothing was answered, and a setup that shows
its progress."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_bundle import write_tiny_bundle

from slimsplit.apps.link_cli import build_parser as link_parser
from slimsplit.apps.link_cli import main as link_main
from slimsplit.apps.loadtest.server_process import free_port
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.errors import BundleError, ConfigError
from slimsplit.records import FrameRecord, summarize
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, MetricsConfig, ServerConfig

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0


def _listening_socket() -> socket.socket:
    """A socket bound and listening on a free loopback port (the port is busy while it lives)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


# ------------------------------------------------------------------------------------------- busy ports


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimsplit.server.cli", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny").root


def test_a_busy_metrics_port_is_a_clean_cli_error(tiny_root: Path) -> None:
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        done = _server_cli("--models", str(tiny_root), "--port", "0", "--metrics-port", str(port))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    assert "never awaited" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("slimsplit-server: ") and f":{port}" in line and "--metrics-port" in line, line
    assert "in use" in line.lower(), line


def test_a_busy_grpc_port_is_a_clean_cli_error(tiny_root: Path) -> None:
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        done = _server_cli("--models", str(tiny_root), "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("slimsplit-server: ") and f":{port}" in line and "--port" in line, line
    assert "in use" in line.lower(), line


def test_a_failed_start_releases_the_grpc_port(tiny_root: Path) -> None:
    """The gRPC port bound before the metrics port failed is free again afterwards (nothing leaks)."""
    grpc_port = free_port()
    with _listening_socket() as busy:
        config = ServerConfig(
            models=(tiny_root,),
            grpc=GrpcConfig(port=grpc_port),
            metrics=MetricsConfig(port=busy.getsockname()[1]),
            log_level="warning",
        )
        with pytest.raises(ConfigError, match="metrics"):
            ServerThread(config).start()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", grpc_port))  # raises EADDRINUSE if the failed server still held it
    with ServerThread(replace(config, metrics=MetricsConfig(port=None))) as srv:
        assert srv.port == grpc_port


# ------------------------------------------------------------------------------------------ damaged bundles


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), dst)
    return dst


BUNDLE_FILES = ["encoder.onnx", "tails/w4.onnx", "codec_tables.npz", "model.pt", "baseline/backbone.onnx"]


@pytest.mark.parametrize("rel", BUNDLE_FILES)
def test_a_truncated_bundle_file_is_refused_at_open(shipped_copy: Path, rel: str) -> None:
    Bundle.open(shipped_copy)  # the copy is whole
    _truncate(shipped_copy / rel)
    with pytest.raises(BundleError, match=re.escape(rel)):
        Bundle.open(shipped_copy)


@pytest.mark.parametrize("rel", BUNDLE_FILES)
def test_an_empty_bundle_file_is_refused_at_open(shipped_copy: Path, rel: str) -> None:
    (shipped_copy / rel).write_bytes(b"")
    with pytest.raises(BundleError, match=re.escape(rel)):
        Bundle.open(shipped_copy)


def test_every_cut_of_an_onnx_file_is_refused(tiny_root: Path, tmp_path: Path) -> None:
    """However an ONNX file is cut (inside a field or on a field boundary), the check notices."""
    dst = tmp_path / "b"
    shutil.copytree(tiny_root, dst)
    whole = (tiny_root / "encoder.onnx").read_bytes()
    for cut in sorted({1, 2, 3, 5, 8, 13, *range(0, len(whole), max(1, len(whole) // 97)), len(whole) - 1}):
        (dst / "encoder.onnx").write_bytes(whole[:cut])
        with pytest.raises(BundleError, match=r"encoder\.onnx"):
            Bundle.open(dst)
    (dst / "encoder.onnx").write_bytes(whole)
    Bundle.open(dst)


def test_a_missing_checkpoint_is_still_allowed(shipped_copy: Path) -> None:
    (shipped_copy / "model.pt").unlink()
    assert Bundle.open(shipped_copy).checkpoint_path is None


def test_the_server_refuses_a_truncated_encoder(shipped_copy: Path) -> None:
    _truncate(shipped_copy / "encoder.onnx")
    done = _server_cli("--models", str(shipped_copy), "--port", "0")
    assert done.returncode != 0
    assert "encoder.onnx" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "loaded" not in done.stderr


def test_the_edge_refuses_a_truncated_encoder(shipped_copy: Path) -> None:
    from slimsplit.edge.cli import main as edge_main

    _truncate(shipped_copy / "encoder.onnx")
    out, err = io.StringIO(), io.StringIO()
    code = edge_main(["--bundle", str(shipped_copy), "--frames", "1"], stdout=out, stderr=err)
    assert code == 2 and "encoder.onnx" in err.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------ README


def _readme_commands() -> list[list[str]]:
    """The shell commands in the README's code blocks (continuation lines joined, comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_commands_use_traces_a_clone_has() -> None:
    from slimsplit.link.trace import load_trace_spec

    text = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        assert "../shared" not in block, block
    specs: list[str] = []
    for argv in _readme_commands():
        for i, arg in enumerate(argv):
            if arg in ("--link", "--uplink"):
                specs += itertools.takewhile(lambda a: not a.startswith("-"), argv[i + 1 :])
    assert specs, "the README shows no --link example"
    for spec in specs:
        load_trace_spec(spec)  # a shipped trace, a file of the clone or a rate: each one loads


def test_readme_documents_metrics() -> None:
    from slimsplit.server.metrics import ServerMetrics

    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--metrics-port" in text and "/metrics" in text
    families = list(ServerMetrics().registry.collect())
    assert len(families) >= 7
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in text, f"README.md does not list the metric {name}"


def test_shipped_trace_specs() -> None:
    from slimsplit.errors import TraceError
    from slimsplit.link.synth import shipped_traces_dir
    from slimsplit.link.trace import load_mahimahi, load_trace_spec

    got = load_trace_spec("shipped:ge-outages")
    assert got is not None
    want = load_mahimahi(shipped_traces_dir() / "ge-outages.trace")
    assert got.period_s == want.period_s and got.mean_bps == want.mean_bps
    with pytest.raises(TraceError, match="ge-outages"):  # the error lists the shipped names
        load_trace_spec("shipped:nope")


# ------------------------------------------------------------------------------------------ slimsplit-link


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no sub-commands")


def test_every_link_option_has_help_and_shows_its_default() -> None:
    subs = _subparsers(link_parser())
    assert set(subs) == {"proxy", "stats", "synth", "simulate"}
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.required or action.default is None or action.default is False:
                continue
            block = sub._get_formatter()._format_action(action)
            assert "default" in block.lower(), f"{name} {action.dest}: the default is not shown: {block}"


def test_simulate_defaults_to_the_shipped_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    trace = "shipped:ge-outages"
    assert link_main(["simulate", "--link", trace]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert link_main(["simulate", "--link", trace, "--modes", "rpi4"]) == 0
    rpi4 = json.loads(capsys.readouterr().out)
    assert link_main(["simulate", "--link", trace, "--modes", str(default_bundle_path())]) == 0
    folder = json.loads(capsys.readouterr().out)
    assert bundle == folder
    assert "fashion64-resnet" in bundle["mode_table"] and "Raspberry Pi" in rpi4["mode_table"]
    assert bundle["hit_rate"] > 0.9 > 0.1 > rpi4["hit_rate"]
    help_text = " ".join(_subparsers(link_parser())["simulate"].format_help().split())
    assert "rpi4" in help_text and "Raspberry Pi" in help_text and "default: bundle" in help_text


# --------------------------------------------------------------------------------------- folder frame names


@pytest.fixture(scope="module")
def null_server() -> Iterator[ServerThread]:
    from slimsplit.server.backends.null_backend import NullBackend

    config = ServerConfig(grpc=GrpcConfig(port=0, grace_s=0.2), log_level="warning")
    srv = ServerThread(config, backend=NullBackend()).start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)


def _image_folder(root: Path) -> list[str]:
    from PIL import Image

    names = []
    for cls in ("Bag", "Trouser"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 40 * i + 10, dtype=np.uint8)).save(root / cls / f"img{i}.png")
            names.append(f"{cls}/img{i}.png")
    return names


def test_folder_frames_carry_their_file_name(null_server: ServerThread, tmp_path: Path) -> None:
    from slimsplit.edge.cli import main as edge_main

    pytest.importorskip("PIL")
    names = _image_folder(tmp_path / "images")
    out_path = tmp_path / "run.json"
    out, err = io.StringIO(), io.StringIO()
    argv = ["--server", null_server.address, "--source", str(tmp_path / "images"), "--mode", "w2b1", "--plain"]
    code = edge_main([*argv, "--json-out", str(out_path)], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    doc = json.loads(out_path.read_text())
    assert [f["source"] for f in doc["frames"]] == names
    frame_lines = [line for line in out.getvalue().splitlines() if line.startswith("#")]
    assert len(frame_lines) == len(names)
    for line, name in zip(sorted(frame_lines), names, strict=True):
        assert line.rstrip().endswith(name), line


def test_frame_lines_name_the_source_file() -> None:
    from slimsplit.edge.display import format_frame

    ok = FrameRecord(1, 0, "w2b1", classes=(3,), scores=(0.9,), payload_bytes=12, source="cats/a.png")
    failed = FrameRecord(2, 1, "w2b1", status="UNAVAILABLE", payload_bytes=12, source="cats/b.png")
    assert format_frame(ok).rstrip().endswith("cats/a.png")
    assert format_frame(failed).rstrip().endswith("cats/b.png")
    assert ok.to_dict()["source"] == "cats/a.png"
    assert not format_frame(replace(ok, source="")).rstrip().endswith("png")


# -------------------------------------------------------------------------------------------- accuracy line


def test_accuracy_is_undefined_when_no_labelled_frame_was_answered() -> None:
    from slimsplit.edge.display import format_summary

    dropped = [FrameRecord(i, i, "w2b1", status="UNAVAILABLE", label=i % 3) for i in range(4)]
    text = format_summary(summarize(dropped, 1.0))
    assert "no labels" not in text
    assert re.search(r"accuracy +undefined: none of the 4 labelled frames was answered", text), text
    unlabelled = [FrameRecord(i, i, "w2b1", classes=(1,), scores=(0.5,)) for i in range(3)]
    assert "accuracy     - (the source has no labels)" in format_summary(summarize(unlabelled, 1.0))
    answered = [*dropped, FrameRecord(9, 9, "w2b1", label=1, classes=(1,), scores=(0.5,))]
    assert "100.0 % top-1 over 1 labelled frames" in format_summary(summarize(answered, 1.0))


# ------------------------------------------------------------------------------------------------- setup


def _fake_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/setup-venv.sh beside a fake ``.venv/bin/python`` that logs its arguments."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup-venv.sh", root / "scripts" / "setup-venv.sh")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log = tmp_path / "calls.log"
    fake = root / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return root, log


def _run_setup(root: Path, ci: str, tty: bool) -> tuple[int, str]:
    """Run the copied setup script (stdout on a pseudo-terminal when ``tty``); its exit code and output."""
    env = {**os.environ, "CI": ci}
    argv = ["bash", str(root / "scripts" / "setup-venv.sh"), "edge,server"]
    if not tty:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=env, check=False, stdin=subprocess.DEVNULL
        )
        return done.returncode, done.stdout
    leader, follower = os.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the script closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    finally:
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(
    ("ci", "tty", "bars"), [("true", False, "off"), ("", False, "off"), ("", True, "on"), ("true", True, "off")]
)
def test_setup_venv_says_what_it_installs_and_lets_pip_show_progress(
    tmp_path: Path, ci: str, tty: bool, bars: str
) -> None:
    root, log = _fake_setup(tmp_path)
    code, out = _run_setup(root, ci, tty)
    assert code == 0, out
    assert "edge,server" in out and "minutes" in out  # says what comes and that it takes a while
    calls = log.read_text().splitlines()
    main_install = [c for c in calls if "-e" in c.split()]
    assert len(main_install) == 1, calls
    args = main_install[0].split()
    assert "-q" not in args and "--quiet" not in args  # pip reports each package it collects and installs
    assert args[args.index("--progress-bar") + 1] == bars  # download bars on a terminal only, never in CI logs
    code, _out = _run_setup(root, ci, tty)  # a second run finds the stamp and installs nothing
    assert code == 0 and log.read_text().splitlines() == calls
