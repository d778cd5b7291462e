"""bench/serving.py's security section on a tiny configuration: plaintext, TLS, mTLS and mTLS + token side by side
in one run, in the JSON and the printed table (no timing is asserted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from bench import serving


def test_the_security_section_measures_every_variant_side_by_side(tmp_path: Path) -> None:
    config = serving.BenchConfig(
        overhead_frames=30, point_frames=30, warmup=5, connects=1, security_rounds=1, main=False
    )
    doc = serving._finite(serving.run(config, Console(file=io.StringIO())))
    sec = doc["security"]
    assert sec["variants"] == list(serving.SECURITY) == ["plaintext", "tls", "mtls", "mtls+token"]
    assert sec["concurrency"] == serving.SECURITY_CONCURRENCY == 16
    for name in serving.SECURITY:
        assert sec["errors"][name] == 0, name  # the TLS handshakes and the token were accepted
        assert sec["connect_ms_p50"][name] > 0
        for transport in ("unary", "stream"):
            assert sec["overhead_ms_p50"][name][transport] > 0
            assert sec["fps_at_16"][name][transport] > 0
            assert len(sec["fps_at_16_rounds"][name][transport]) == 1
    assert set(sec["vs_plaintext"]) == {"tls", "mtls", "mtls+token"}
    assert not doc["breakdown"] and not doc["concurrency"]  # sections 1-3 were not asked for
    json.dumps(doc, allow_nan=False)
    out = io.StringIO()
    serving.print_tables(Console(file=out, width=100), doc)
    table = out.getvalue()
    assert "What TLS costs" in table and all(name in table for name in serving.SECURITY)
    serving.plot(doc, tmp_path / "security.png")
    assert (tmp_path / "security.png").stat().st_size > 0
