"""The server under test: ``python -m slimsplit.server.cli`` in a child process on a free loopback port, and a
sampler of its RSS, open file descriptors, threads and in-flight gauge.

:class:`ServerProc` starts it (and again on the same port after :meth:`~ServerProc.kill`), waits for its health
check, tells a crash (the process died when nobody killed it) from a kill, and stops it with SIGTERM. A backend
that is not registered with the server (the stalling one of :mod:`bench.faults.stall`) is registered by a small
``python -c`` wrapper before the server's own ``main`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import grpc
import psutil

from slimsplit.apps.loadtest.server_process import free_port
from slimsplit.bundle import default_bundle_path
from slimsplit.protocol import SERVICE_NAME

READY_TIMEOUT_S = 90.0

#: Runs the server with extra backends registered: ``python -c WRAPPER NAME=MODULE:ATTR ... -- server flags``.
WRAPPER = """\
import sys
from slimsplit.server.backends import registry
args = sys.argv[1:]
split = args.index("--")
for spec in args[:split]:
    name, _, target = spec.partition("=")
    module, _, attr = target.partition(":")
    registry._BACKENDS[name] = (module, attr, False)
from slimsplit.server.cli import main
sys.exit(main(args[split + 1:]))
"""

#: Backends this harness adds to the server's registry (name -> module:attribute).
EXTRA_BACKENDS = {"stall": "bench.faults.stall:StallBackend"}


class ServerProc:
    """One server process (``with ServerProc(...) as srv``); see the module docstring."""

    def __init__(
        self,
        *,
        backend: str = "null",
        bundle: Path | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.bundle = bundle or default_bundle_path()
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._killed = False
        self.crashes = 0
        self.exit_codes: list[int] = []
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def argv(self) -> list[str]:
        # --workers 1: one process, which the faults hit, whose RSS is sampled and whose backends WRAPPER registers
        flags = [
            "--models", str(self.bundle), "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--backend", self.backend, "--grace", "1",
            "--log-level", "warning", "--workers", "1", *self.extra_args,
        ]  # fmt: skip
        if self.backend in EXTRA_BACKENDS:
            return [sys.executable, "-c", WRAPPER, f"{self.backend}={EXTRA_BACKENDS[self.backend]}", "--", *flags]
        return [sys.executable, "-m", "slimsplit.server.cli", *flags]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process (on this object's port) and wait until its health check says SERVING."""
        self._killed = False
        self.starts += 1
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True, env=self.env, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.check_alive() is not None:
                    raise RuntimeError(f"the server exited before it was ready:\n{self.stderr_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready within {timeout_s:g} s:\n{self.stderr_tail()}")
                time.sleep(0.05)

    def check_alive(self) -> int | None:
        """The exit code when the process has exited (counted as a crash unless it was killed), else ``None``."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and not self._killed:
            self._killed = True  # counted once
            self.crashes += 1
            self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        """SIGKILL (not a crash)."""
        if self.process is not None and self.process.poll() is None:
            self._killed = True
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (the graceful drain), then SIGKILL if it takes longer than 15 s."""
        if self.process is None:
            return
        self.check_alive()
        if self.process.poll() is None:
            self._killed = True
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def stderr_bytes(self) -> int:
        self._stderr.flush()
        return os.fstat(self._stderr.fileno()).st_size

    def stderr_text(self, limit: int = 1 << 20) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read(limit).decode("utf-8", "replace")

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self.stderr_text().rstrip().splitlines()[-lines:])

    def log_counts(self) -> dict[str, int]:
        """Lines the server logged, by level, and how many were tracebacks."""
        text = self.stderr_text()
        counts = {lvl: len(re.findall(rf" {lvl} ", text)) for lvl in ("WARNING", "ERROR", "CRITICAL")}
        counts["tracebacks"] = text.count("Traceback (most recent call last)")
        counts["bytes"] = self.stderr_bytes()
        return counts

    def close(self) -> None:
        self.stop()
        self._stderr.close()

    def __enter__(self) -> ServerProc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_flight_gauge(metrics_port: int, timeout_s: float = 1.0) -> float | None:
    """``slimsplit_in_flight`` from the server's Prometheus endpoint, ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(r"^slimsplit_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Sampler:
    """Samples the server every ``interval_s`` in a thread: RSS (MB), FDs, threads, connections, in-flight.
    Follows the server across restarts (by its current pid)."""

    def __init__(self, server: ServerProc, interval_s: float = 1.0, gauge: bool = True) -> None:
        self.server = server
        self.interval_s = interval_s
        self.gauge = gauge
        self.samples: list[dict[str, float]] = []
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-sampler", daemon=True)
        self._t0 = time.monotonic()

    def sample(self) -> dict[str, float] | None:
        pid = self.server.pid
        if pid is None:
            return None
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                row = {
                    "t_s": round(time.monotonic() - self._t0, 2),
                    "rss_mb": round(p.memory_info().rss / 2**20, 2),
                    "fds": float(p.num_fds()),
                    "threads": float(p.num_threads()),
                }
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        if self.gauge:
            g = in_flight_gauge(self.server.metrics_port)
            if g is not None:
                row["in_flight"] = g
        self.peak_rss_mb = max(self.peak_rss_mb, row["rss_mb"])
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def first_rss_mb(self) -> float:
        return self.samples[0]["rss_mb"] if self.samples else 0.0
