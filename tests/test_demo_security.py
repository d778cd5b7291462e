"""``slimsplit-demo`` runs with TLS + mTLS + a device token by default (a temporary development PKI, removed at the
end) and in plaintext with ``--no-tls``; one line of its output says which."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from slimsplit.apps.demo import DEMO_DEVICE, PROG
from slimsplit.apps.demo import main as demo_main

#: A short run without emulation and with a null tail: what the security line and the JSON say, not the link.
FLAGS = ("--link", "none", "--backend", "null", "--frames", "6", "--fps", "30", "--plain", "--quiet")


def run_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[int, str, dict[str, Any]]:
    """The demo with its temporary folders under ``tmp_path/tmp``; exit status, stdout and the JSON."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "demo.json"
    out, err = io.StringIO(), io.StringIO()
    code = demo_main([*FLAGS, *extra, "--json-out", str(path)], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert not list(scratch.glob("slimsplit-demo-pki-*")), "the temporary PKI was not removed"
    return code, out.getvalue(), json.loads(path.read_text(encoding="utf-8"))


def security_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{PROG}: security: ")]


def test_the_demo_runs_over_mtls_with_a_device_token_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _code, out, doc = run_demo(tmp_path, monkeypatch)
    (line,) = security_lines(out)
    assert "TLS + mTLS + bearer token" in line and DEMO_DEVICE in line
    assert doc["meta"]["security"] == "mtls+token" and doc["meta"]["device_id"] == DEMO_DEVICE
    assert doc["summary"]["ok"] > 0  # the token and the certificate were accepted


def test_no_tls_runs_in_plaintext_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _code, out, doc = run_demo(tmp_path, monkeypatch, "--no-tls")
    (line,) = security_lines(out)
    assert "plaintext" in line and "--no-tls" in line
    assert doc["meta"]["security"] == "plaintext" and doc["meta"]["device_id"] is None
    assert doc["summary"]["ok"] > 0
