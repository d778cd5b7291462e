"""A real Prometheus (Debian's ``prometheus``) scraping a real ``python -m slimsplit.server.cli`` process (shipped
bundle, loopback, plaintext): frames sent by the real edge client show up in Prometheus's HTTP API as the frame
counter, and the process metrics are exported."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from slimsplit.apps.loadtest.server_process import free_port
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedOptions
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.pipeline import PipelineConfig, run_frames
from slimsplit.edge.run import bundle_controller
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import load_sample

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
FRAMES = 6
WAIT_S = 60.0

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not answer {url} within {WAIT_S:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "edge", "server", "apps"))}
    cmd = [sys.executable, "-m", "slimsplit.server.cli", "--insecure", "--port", str(port)]
    cmd += ["--metrics-port", str(metrics_port), "--workers", "1", "--grace", "0", "--log-level", "warning"]
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", proc, "slimsplit-server")
        yield port, metrics_port
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def prometheus(tmp_path: Path, server: tuple[int, int]) -> Iterator[str]:
    assert PROMETHEUS is not None
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: slimsplit\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server[1]}']\n"
    )
    cmd = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"]
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{web}"
        _wait_http(f"{url}/-/ready", proc, "prometheus")
        yield url
    finally:
        _stop(proc)
        log.close()


def _query(base: str, promql: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def _wait_value(base: str, promql: str, at_least: float) -> float:
    end, last = time.monotonic() + WAIT_S, None
    while time.monotonic() < end:
        result = _query(base, promql)
        if result:
            last = float(result[0]["value"][1])  # type: ignore[index]
            if last >= at_least:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{promql} stayed at {last} (wanted >= {at_least}) for {WAIT_S:.0f} s")


def _send_frames(port: int) -> int:
    bundle = Bundle.open(default_bundle_path())
    frames = list(load_sample(bundle.manifest.input).take(FRAMES))
    mode = bundle.manifest.modes[0].name

    async def go() -> int:
        config = ClientConfig(target=f"127.0.0.1:{port}", max_in_flight=2, deadline_ms=20_000)
        async with EdgeClient(config) as client:
            await client.wait_ready(30)
            run = RunConfig(deadline_ms=config.deadline_ms, max_in_flight=config.max_in_flight)
            controller, table = bundle_controller("fixed", bundle.manifest, run, FixedOptions(mode))
            report = await run_frames(
                client,
                EncoderRuntime(bundle),
                controller,
                table,
                frames,
                PipelineConfig(model=bundle.manifest.name, model_version=bundle.manifest.version),
            )
        return sum(1 for r in report.results if r.ok)

    return asyncio.run(go())


def test_prometheus_scrapes_frames_and_process_metrics(server: tuple[int, int], prometheus: str) -> None:
    assert _wait_value(prometheus, 'up{job="slimsplit"}', 1) == 1
    ok = _send_frames(server[0])
    assert ok == FRAMES
    seen = _wait_value(prometheus, 'sum(slimsplit_frames_total{job="slimsplit",status="OK"})', FRAMES)
    assert seen == FRAMES, "every answered frame counted once"
    assert _wait_value(prometheus, 'process_resident_memory_bytes{job="slimsplit"}', 1) > 10e6
    assert _wait_value(prometheus, 'process_cpu_seconds_total{job="slimsplit"}', 0) >= 0
    assert _query(prometheus, 'slimsplit_in_flight{job="slimsplit"}'), "in-flight gauge exported"
