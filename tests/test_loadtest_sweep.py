"""The load tester's sweep: SLO search, reproducible simulated reports, files written, the HTML rendered."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from slimsplit.apps.loadtest import main
from slimsplit.apps.loadtest.sweep import parse_sweep
from slimsplit.errors import ConfigError

SIM = ["--simulate", "--seconds", "2", "--deadline-ms", "4", "--sim-workers", "2", "--sim-server-ms", "1"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_same_seed_same_report_and_the_largest_load_meeting_the_slo(tmp_path: Path) -> None:
    docs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, out, _ = _run(["--sweep", "clients=1,2,4,8", *SIM, "--seed", str(seed), "--report-dir",
                             str(tmp_path / name)])  # fmt: skip
        assert code == 0, out
        doc = json.loads((tmp_path / name / "report.json").read_text())
        doc.pop("created")
        docs.append(json.dumps(doc, sort_keys=True))
    assert docs[0] == docs[1]
    assert docs[0] != docs[2]
    doc = json.loads(docs[0])
    # two simulated workers of ~1 ms: 8 clients queue past a 4 ms p99, 1 client does not
    meets = {p["load"]: p["meets_slo"] for p in doc["points"]}
    assert meets[1.0] and not meets[8.0]
    best = max(load for load, ok in meets.items() if ok)
    assert doc["best"]["load"] == best
    for p in doc["points"]:
        lat = p["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert sum(s["sent"] for s in p["timeline"]) == p["frames"]
    for name in ("points.csv", "timeline.csv", "sweep.png", "timeline.png", "report.html"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    html = (tmp_path / "a" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("clients=0", "whole numbers"), ("rate=-1", "> 0"), ("users=3", "expected"), ("clients=2,2", "twice")],
)
def test_bad_sweeps_are_named(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_sweep(spec)


def test_simulate_without_sweep_is_a_usage_error() -> None:
    code, _, err = _run(["--simulate"])
    assert code == 2 and "--sweep" in err


CHROMIUM = Path("/usr/bin/chromium")


def test_the_html_report_renders_its_plots_in_headless_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("needs headless Chromium: apt-get install chromium (the Debian package `chromium`)")
    code, _, _ = _run(["--sweep", "rate=200,600,1200,2400", *SIM, "--report-dir", str(tmp_path / "r")])
    assert code in (0, 1)
    shot = tmp_path / "shot.png"
    page = (tmp_path / "r" / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1280,2000", page],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1280
    # the plots are below the table: that region holds many distinct colours (a blank or broken image has few)
    region = image[300:1400].reshape(-1, 3)
    colours = len(np.unique(region, axis=0))
    assert colours > 200, colours
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", page], check=True, capture_output=True,
                         timeout=120, text=True).stdout  # fmt: skip
    assert dom.count("<img") == 2
