"""slimsplit-server against NVIDIA Triton (2.51, from the ``nvidia-pytriton`` wheel) on the same tail, same cores.

Both servers serve the shipped bundle's tail of one mode (default: the most accurate, w16b8) with 1 ONNX Runtime
thread: Triton through a model repository generated from the bundle (bench/peer_repo.py: a Python-backend model
running onnxruntime, or Triton's ONNX Runtime backend where the server has one, with dynamic batching), slimsplit
with ``python -m slimsplit.server.cli`` (plus ``--slimsplit-args``). Both servers and the load generator are
pinned to the same cores (``--cpus``). Each point (transport x frames in flight) runs on Triton and slimsplit in
turn, ``--reps`` times (order swapped every rep), so a drift of the machine hits both alike; figures are the
medians over reps.

The load generator (bench/peer_load.py) is several processes (``--clients``) sending precomputed, serialized
requests over raw gRPC: the same real feature tensors (the shipped samples through the edge encoder, then the
codec); slimsplit receives the codec frames, Triton the float32 features the codec frames decode to (what
slimsplit's tail sees). Measured per point: throughput, p50/p99 round trip, server CPU per inference
(utime+stime of the server's process tree from /proc, children included), load-generator CPU per inference,
request/reply message bytes per inference, mean batch size (Triton: Δnv_inference_count / Δnv_inference_exec_count
from its metrics endpoint; slimsplit: Δslimsplit_batch_size_sum / Δ_count from its metrics), errors, and crashes
(a server that dies is restarted and the crash counted).

    python -m bench.peer --setup          # once: .venv-triton/ with nvidia-pytriton, onnxruntime, numpy, tritonclient
    python -m bench.peer                  # full: 1/4/16/64/256 in flight, unary and stream, 3 reps
    python -m bench.peer --quick          # short form
    python -m bench.peer --slimsplit-args "--workers 2"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.peer_repo import RepoOptions, tail_models, write_repository
from bench.procs import tree_cpu_seconds
from bench.results_io import REPOSITORY, recorded_text, write_results
from slimsplit.apps.loadtest.server_process import free_port

TRITON_VENV = REPOSITORY / ".venv-triton"
SETUP_PACKAGES = ("nvidia-pytriton", "numpy", "tritonclient[grpc]")
DEFAULT_OUT = REPOSITORY / "bench" / "results" / "peer.json"


class PeerError(Exception):
    """The benchmark cannot run as asked (no Triton installed, a server that does not start, bad flags)."""


# ------------------------------------------------------------------------------------------------ setup


@dataclass(frozen=True)
class TritonInstall:
    """Where the Triton server of ``.venv-triton`` lies, and how it must be started."""

    venv: Path
    python: Path
    server_dir: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server_dir / "backends"

    def has_backend(self, name: str) -> bool:
        return (self.backends / name).is_dir()

    def env(self) -> dict[str, str]:
        """The environment tritonserver needs: its bundled libraries, and the venv first on PATH (the Python
        backend's stub finds the venv's onnxruntime through it)."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.libs), env.get("LD_LIBRARY_PATH", "")]))
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        return env


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise PeerError(f"{venv} has no lib/python3*/site-packages: run `python -m bench.peer --setup`")
    return found[0]


def find_triton(venv: Path = TRITON_VENV) -> TritonInstall:
    """The Triton install in ``venv``; :class:`PeerError` naming ``--setup`` when there is none."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise PeerError(f"no {venv}: run `python -m bench.peer --setup` first (installs Triton there)")
    site = _site_packages(venv)
    server_dir = site / "pytriton" / "tritonserver"
    install = TritonInstall(venv=venv, python=python, server_dir=server_dir, libs=site / "nvidia_pytriton.libs")
    if not install.binary.exists():
        raise PeerError(f"{install.binary} is missing: run `python -m bench.peer --setup` (nvidia-pytriton)")
    stub = install.backends / "python" / "triton_python_backend_stub"
    if not stub.exists():
        raise PeerError(f"{stub} is missing: run `python -m bench.peer --setup` (copies the 3.11 stub there)")
    return install


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def say(text: str) -> None:
    print(f"[setup] {text}", flush=True)


def setup(venv: Path = TRITON_VENV, python: str = sys.executable) -> TritonInstall:
    """Create ``venv`` (never the project's .venv), install Triton's wheel and the client there, and put the
    Python backend stub for this Python where tritonserver looks for it."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (venv / "bin" / "python").exists():
        say(f"creating {venv} with {python} (Python {version})")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    ort_package = "onnxruntime-gpu" if _has_gpu() else "onnxruntime"  # the Python-backend model's engine
    packages = [*SETUP_PACKAGES, ort_package]
    say(f"pip install {' '.join(packages)} (nvidia-pytriton is ~0.5 GB)")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *packages], check=True)
    site = _site_packages(venv)
    server_dir = site / "pytriton" / "tritonserver"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise PeerError(f"nvidia-pytriton ships no Python backend stub for Python {version} ({stub})")
    target = server_dir / "backends" / "python" / "triton_python_backend_stub"
    say(f"copying the Python {version} backend stub to {target}")
    shutil.copy2(stub, target)
    install = find_triton(venv)
    say(f"checking {install.binary} starts")
    out = subprocess.run(
        [str(install.binary), "--help"], env=install.env(), capture_output=True, text=True, timeout=60, check=False
    )
    if "model-repository" not in out.stdout + out.stderr:
        raise PeerError(f"tritonserver --help failed:\n{(out.stdout + out.stderr)[-2000:]}")
    say("done: python -m bench.peer --quick")
    return install


# ------------------------------------------------------------------------------------------------ /proc


# ------------------------------------------------------------------------------------------------ metrics


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def metric_sum(text: str, name: str, label: str = "") -> float:
    """The sum of the samples of ``name`` (exact metric name, any labels; ``label``: only samples whose labels
    contain it, e.g. ``model="w16"``) in Prometheus text ``text``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric = head.split("{", 1)[0]
        if metric == name and (not label or label in head):
            try:
                total += float(value)
            except ValueError:
                continue
    return total


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Workload:
    """The precomputed inputs of a run, written to ``path`` for the load-generator processes."""

    path: Path
    model: str
    mode: str
    triton_model: str
    count: int
    frame_bytes_mean: float
    feature_bytes: int


def make_workload(folder: Path, mode_name: str = "") -> Workload:
    """The shipped samples through the edge encoder and the codec for ``mode_name`` (default: the bundle's
    default mode); the codec frames and what they decode to."""
    from slimsplit.bundle import Bundle, default_bundle_path
    from slimsplit.codec import decode_features, encode_features
    from slimsplit.edge.run import default_mode
    from slimsplit.edge.runtime import EncoderRuntime
    from slimsplit.edge.sources import load_sample

    bundle_path = default_bundle_path()
    bundle = Bundle.open(bundle_path)
    manifest = bundle.manifest
    spec = manifest.mode(mode_name) if mode_name else default_mode(manifest)
    runtime = EncoderRuntime(bundle)
    runtime.set_mode(spec.name)
    tables = runtime.codec_tables(spec.name)
    frames, decoded = [], []
    for frame in load_sample(manifest.input):
        payload = encode_features(runtime.features(frame.image), spec.bits, tables=tables)
        frames.append(payload)
        decoded.append(decode_features(payload, tables=tables).array)
    features = np.stack(decoded).astype(np.float32)
    (triton_model,) = [m.name for m in tail_models(Path(bundle_path)) if spec.name in m.modes]
    offsets = np.cumsum([0, *[len(f) for f in frames]])
    path = folder / "workload.npz"
    np.savez(
        path,
        frame_bytes=np.frombuffer(b"".join(frames), dtype=np.uint8),
        frame_offsets=offsets,
        features=features,
        model=np.array(manifest.name),
        mode=np.array(spec.name),
        triton_model=np.array(triton_model),
    )
    return Workload(
        path=path,
        model=manifest.name,
        mode=spec.name,
        triton_model=triton_model,
        count=len(frames),
        frame_bytes_mean=float(np.mean([len(f) for f in frames])),
        feature_bytes=int(features[0].nbytes),
    )


# ------------------------------------------------------------------------------------------------ servers


def _pin(cpus: Sequence[int]) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


@dataclass
class Server:
    """One server process under test: how to (re)start it, its gRPC target and metrics URL; ``protocol``: what it
    speaks (``triton`` or ``slimsplit``; empty: its ``name``)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    target: str
    metrics_url: str
    ready_url: str | None
    cpus: tuple[int, ...]
    log: Path
    protocol: str = ""
    proc: subprocess.Popen[bytes] | None = None
    crashes: int = 0
    starts: int = 0
    crash_logs: list[str] = field(default_factory=list)  # the log's last lines at each crash
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 180.0) -> None:
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(self.cpus),  # the parent runs no threads
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        host, port = self.target.rsplit(":", 1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerError(f"{self.name} exited with {self.proc.returncode} at start; log: {self.log}")
            try:
                if self.ready_url is not None:
                    with urllib.request.urlopen(self.ready_url, timeout=2) as reply:
                        if reply.status == 200:
                            return
                else:
                    with socket.create_connection((host, int(port)), timeout=2):
                        scrape(self.metrics_url)
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise PeerError(f"{self.name} was not ready within {timeout_s:.0f} s; log: {self.log}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart_if_dead(self) -> bool:
        """Restart the server if it died (a crash, counted); whether it had."""
        if self.alive():
            return False
        self.crashes += 1
        code = self.proc.returncode if self.proc is not None else None
        self.stop()
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-8:]
        except OSError:
            tail = []
        self.crash_logs.append(recorded_text(f"exit {code}: " + " | ".join(tail)))
        self.start()
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def speaks(self) -> str:
        return self.protocol or self.name

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid) if self.alive() and self.proc is not None else float("nan")

    def batch_counters(self, workload: Workload) -> tuple[float, float]:
        """(frames, tail calls) so far, from the server's metrics (NaN when they cannot be read)."""
        try:
            text = scrape(self.metrics_url)
        except OSError:
            return float("nan"), float("nan")
        if self.speaks == "triton":
            label = f'model="{workload.triton_model}"'
            return metric_sum(text, "nv_inference_count", label), metric_sum(text, "nv_inference_exec_count", label)
        label = f'mode="{workload.mode}"'
        return metric_sum(text, "slimsplit_batch_size_sum", label), metric_sum(
            text, "slimsplit_batch_size_count", label
        )


def triton_server(install: TritonInstall, repo: Path, cpus: tuple[int, ...], logs: Path) -> Server:
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        str(install.binary),
        f"--model-repository={repo}",
        f"--backend-directory={install.backends}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=false",
        "--log-verbose=0",
    ]
    return Server(
        name="triton",
        argv=argv,
        env=install.env(),
        target=f"127.0.0.1:{grpc_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        ready_url=f"http://127.0.0.1:{http_port}/v2/health/ready",
        cpus=cpus,
        log=logs / "triton.log",
    )


def slimsplit_argv(
    port: int, metrics_port: int, max_batch: int, extra: Sequence[str], device: str = "cpu"
) -> list[str]:
    """slimsplit-server's command line: the shipped bundle, 1 ORT thread, ``device`` (cpu or gpu), the same batch
    limit as Triton, stream and queue limits above the bench's largest in-flight count, then ``extra`` (which may
    override)."""
    return [
        sys.executable,
        "-m",
        "slimsplit.server.cli",
        "--host=127.0.0.1",
        f"--port={port}",
        "--insecure",
        "--threads=1",
        f"--device={'cuda' if device == 'gpu' else 'cpu'}",
        f"--max-batch-size={max(1, max_batch)}",
        "--stream-in-flight=1024",
        "--queue-capacity=4096",
        f"--metrics-port={metrics_port}",
        "--log-level=warning",
        *extra,
    ]


def slimsplit_server(
    cpus: tuple[int, ...], max_batch: int, extra: Sequence[str], logs: Path, device: str = "cpu"
) -> Server:
    port, metrics_port = free_port(), free_port()
    return Server(
        name="slimsplit",
        argv=slimsplit_argv(port, metrics_port, max_batch, extra, device),
        env=dict(os.environ),
        target=f"127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        ready_url=None,
        cpus=cpus,
        log=logs / "slimsplit.log",
    )


# ------------------------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class Config:
    in_flight: tuple[int, ...] = (1, 4, 16, 64, 256)
    transports: tuple[str, ...] = ("unary", "stream")
    reps: int = 3
    duration_s: float = 4.0
    warmup_s: float = 1.0
    clients: int = 4  # load-generator processes (at most one per frame in flight)
    cpus: tuple[int, ...] = ()
    max_batch: int = 64
    mode: str = ""
    triton_kind: str = "auto"
    slimsplit_args: tuple[str, ...] = ()
    client_cpus: tuple[int, ...] = ()  # empty: the servers' cores (the load generator shares them)
    device: str = "cpu"  # cpu | gpu: where both servers run the tail


QUICK = Config(in_flight=(1, 16, 64), reps=1, duration_s=1.5, warmup_s=0.5)


def add_point_flags(p: argparse.ArgumentParser, in_flight: Sequence[int]) -> None:
    """The flags of a bench built on :func:`interleave`: ``--quick``, ``--in-flight`` (default ``in_flight``),
    ``--reps``, ``--clients``, ``--mode``; :func:`points_config` reads them."""
    p.add_argument("--quick", action="store_true", help="1 rep, 1.5-s points, 16/64 in flight")
    shown = " ".join(map(str, in_flight))
    p.add_argument("--in-flight", type=int, nargs="+", default=None, help=f"frames in flight (default {shown})")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions per point (default 3)")
    p.add_argument("--clients", type=int, default=4, help="load-generator processes (default 4)")
    p.add_argument("--mode", default="", help="bundle mode (default: the most accurate)")


def points_config(p: argparse.ArgumentParser, args: argparse.Namespace, in_flight: Sequence[int]) -> Config:
    """The :class:`Config` of :func:`add_point_flags`' flags (a usage error names a count below 1)."""
    base = Config(in_flight=(16, 64), reps=1, duration_s=1.5, warmup_s=0.5) if args.quick else Config()
    config = replace(
        base,
        in_flight=tuple(args.in_flight) if args.in_flight else base.in_flight if args.quick else tuple(in_flight),
        reps=args.reps if args.reps is not None else base.reps,
        clients=args.clients,
        mode=args.mode,
    )
    if any(c < 1 for c in config.in_flight) or config.reps < 1 or config.clients < 1:
        p.error("--in-flight, --reps and --clients must be >= 1")
    return config


def _worker_python(server: str, install: TritonInstall | None) -> str:
    if server != "triton":
        return sys.executable
    if install is None:
        raise PeerError("a Triton load generator needs the Triton install")
    return str(install.python)


def _worker_env(server: str, install: TritonInstall | None) -> dict[str, str]:
    env = dict(os.environ)
    if server == "triton":
        if install is None:
            raise PeerError("a Triton load generator needs the Triton install")
        env = install.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH", "")]))
    return env


def _spawn_worker(
    server: Server,
    install: TritonInstall | None,
    spec: dict[str, Any],
    folder: Path,
    index: int,
    cpus: Sequence[int] = (),
) -> subprocess.Popen[str]:
    path = folder / f"spec-{server.name}-{index}.json"
    path.write_text(json.dumps(spec))
    return subprocess.Popen(
        [_worker_python(server.speaks, install), "-m", "bench.peer_load", str(path)],
        cwd=REPOSITORY,
        env=_worker_env(server.speaks, install),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(cpus or server.cpus),  # the parent runs no threads
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise PeerError(f"load generator failed ({proc.returncode}): {err[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def check_answers(server: Server, install: TritonInstall, workload: Workload, folder: Path) -> dict[str, Any]:
    """Top-1 class (``top1``) and scores (``scores``: Triton's logits, slimsplit's top-k probabilities) of every
    workload input, one request at a time (also: the server answers at all)."""
    spec = {
        "server": server.speaks,
        "target": server.target,
        "data": str(workload.path),
        "count": workload.count,
        "id_base": 1,
        "check": True,
    }
    return _finish(_spawn_worker(server, install, spec, folder, 0), 180.0)


def split_in_flight(in_flight: int, clients: int) -> list[int]:
    """Frames in flight per load-generator process: ``in_flight`` spread over at most ``clients`` processes."""
    procs = max(1, min(in_flight, clients))
    return [in_flight // procs + (1 if i < in_flight % procs else 0) for i in range(procs)]


def measure(
    server: Server,
    install: TritonInstall | None,
    workload: Workload,
    config: Config,
    transport: str,
    in_flight: int,
    folder: Path,
) -> dict[str, Any]:
    """One point on one server: load it for ``config.duration_s`` after ``config.warmup_s``."""
    shares = split_in_flight(in_flight, config.clients)
    workers = []
    for i, share in enumerate(shares):
        spec = {
            "server": server.speaks,
            "target": server.target,
            "transport": transport,
            "in_flight": share,
            "data": str(workload.path),
            "count": max(1024, 8 * share),
            "id_base": 1,
        }
        workers.append(_spawn_worker(server, install, spec, folder, i, config.client_cpus))
    for proc in workers:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            for other in workers:
                other.kill()
            raise PeerError(
                f"{server.name} load generator did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
    t0 = time.monotonic() + config.warmup_s
    t1 = t0 + config.duration_s
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(f"go {t0} {t1}\n")
        proc.stdin.flush()
    time.sleep(max(0.0, t0 - time.monotonic()))
    cpu0, (frames0, calls0) = server.cpu_seconds(), server.batch_counters(workload)
    time.sleep(max(0.0, t1 - time.monotonic()))
    cpu1, (frames1, calls1) = server.cpu_seconds(), server.batch_counters(workload)
    results = [_finish(proc, 120.0) for proc in workers]
    crashed = server.restart_if_dead()
    lat = np.array([v for r in results for v in r["latencies_s"]], dtype=np.float64) * 1e3
    n = len(lat)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + int(v)
    return {
        "server": server.name,
        "transport": transport,
        "in_flight": in_flight,
        "clients": len(shares),
        "frames": n,
        "throughput": n / config.duration_s,
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if n else float("nan"),
        "server_cpu_ms_per_frame": (cpu1 - cpu0) * 1e3 / n if n else float("nan"),
        "client_cpu_ms_per_frame": sum(r["cpu_s"] for r in results) * 1e3 / n if n else float("nan"),
        "request_bytes": sum(r["req_bytes"] for r in results) / n if n else float("nan"),
        "reply_bytes": sum(r["resp_bytes"] for r in results) / n if n else float("nan"),
        "mean_batch": (frames1 - frames0) / (calls1 - calls0) if calls1 > calls0 else float("nan"),
        "errors": errors,
        "crashed": crashed,
    }


MEDIAN_KEYS = (
    "throughput",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_frame",
    "client_cpu_ms_per_frame",
    "request_bytes",
    "reply_bytes",
    "mean_batch",
)


def summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the reps of one point on one server (NaN reps left out; reps in which the server crashed left
    out too while another rep completed), errors and crashes summed."""
    out: dict[str, Any] = {k: reps[0][k] for k in ("server", "transport", "in_flight", "clients")}
    usable = [r for r in reps if not r["crashed"]] or reps
    for key in MEDIAN_KEYS:
        values = [float(r[key]) for r in usable if np.isfinite(r[key])]
        out[key] = statistics.median(values) if values else float("nan")
    errors: dict[str, int] = {}
    for r in reps:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    out["errors"] = errors
    out["crashes"] = sum(1 for r in reps if r["crashed"])
    out["all_reps_crashed"] = all(r["crashed"] for r in reps)
    out["reps"] = [{k: r[k] for k in ("throughput", "p99_ms", "server_cpu_ms_per_frame", "mean_batch")} for r in reps]
    return out


def against(points: list[dict[str, Any]], base: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(a point of another server, ``base``'s point at the same transport and frames in flight), for every point of
    a server other than ``base`` that ``base`` was measured at too."""
    by = {(p["server"], p["transport"], p["in_flight"]): p for p in points}
    for (server, transport, in_flight), point in by.items():
        ref = by.get((base, transport, in_flight))
        if server != base and ref is not None:
            yield point, ref


def ratio(point: dict[str, Any], ref: dict[str, Any], key: str) -> float:
    """``point[key] / ref[key]`` (NaN where the reference is 0 or not finite)."""
    return float(point[key]) / float(ref[key]) if ref[key] and np.isfinite(ref[key]) else float("nan")


def ratios(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """slimsplit / Triton for each (transport, in flight) measured on both."""
    return [
        {
            "transport": s["transport"],
            "in_flight": s["in_flight"],
            "throughput": ratio(s, t, "throughput"),
            "p99": ratio(s, t, "p99_ms"),
            "server_cpu_per_frame": ratio(s, t, "server_cpu_ms_per_frame"),
            "request_bytes": ratio(s, t, "request_bytes"),
        }
        for s, t in against(points, "triton")
        if s["server"] == "slimsplit"
    ]


def interleave(
    servers: dict[str, Server],
    install: TritonInstall | None,
    workload: Workload,
    config: Config,
    folder: Path,
    tag: str,
    before: Callable[[dict[str, Server]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start ``servers``, call ``before`` with them, then measure every (transport, frames in flight) point of
    ``config`` on each server in turn, ``config.reps`` times (the order rotated every rep, so a drift of the machine
    hits them alike), printing a line a measurement; stop them. Every measurement, and the medians per server and
    point (:func:`summarize`)."""
    names = tuple(servers)
    points: list[tuple[str, int]] = [(t, c) for t in config.transports for c in config.in_flight]
    total = len(points) * config.reps * len(names)
    raw: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for server in servers.values():
            print(f"[{tag}] starting {server.name}: {shlex.join(server.argv)}", flush=True)
            server.start()
        if before is not None:
            before(servers)
        step = 0
        for transport, in_flight in points:
            for rep in range(config.reps):
                shift = rep % len(names)
                for name in names[shift:] + names[:shift]:
                    step += 1
                    m = measure(servers[name], install, workload, config, transport, in_flight, folder)
                    m["rep"] = rep
                    raw.append(m)
                    print(
                        f"[{tag} {step}/{total} {time.monotonic() - started:5.0f}s] {name:9s} {transport:6s} "
                        f"{in_flight:4d} in flight: {m['throughput']:7.0f} /s  p99 {m['p99_ms']:7.2f} ms  "
                        f"cpu {m['server_cpu_ms_per_frame']:.3f} ms each  batch {m['mean_batch']:.1f}"
                        + (f"  errors {m['errors']}" if m["errors"] else "")
                        + ("  CRASHED (restarted)" if m["crashed"] else ""),
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    summary = [
        summarize([m for m in raw if (m["server"], m["transport"], m["in_flight"]) == (name, t, c)])
        for t, c in points
        for name in names
    ]
    return raw, summary


def machine(cpus: Sequence[int]) -> dict[str, Any]:
    """The machine a run measured on, and how loaded it was at the start."""
    return {
        "cpus_total": os.cpu_count(),
        "pinned_cpus": list(cpus),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def run(config: Config, install: TritonInstall, folder: Path) -> dict[str, Any]:
    cpus = config.cpus or tuple(sorted(os.sched_getaffinity(0)))[:2]
    kind = config.triton_kind
    if kind == "auto":
        kind = "onnxruntime" if install.has_backend("onnxruntime") else "python"
    if kind == "onnxruntime" and not install.has_backend("onnxruntime"):
        raise PeerError(f"this Triton has no onnxruntime backend ({install.backends}); use --triton-kind python")
    print(f"[peer] encoding the shipped samples ({config.mode or 'default mode'})", flush=True)
    workload = make_workload(folder, config.mode)
    repo = folder / "models"
    options = RepoOptions(
        kind=kind,  # type: ignore[arg-type]
        max_batch_size=config.max_batch,
        threads=1,
        device=config.device,  # type: ignore[arg-type]
    )
    write_repository(_bundle_path(), repo, options)
    servers = {
        "triton": triton_server(install, repo, cpus, folder),
        "slimsplit": slimsplit_server(cpus, config.max_batch, config.slimsplit_args, folder, config.device),
    }
    started = time.monotonic()
    agreement = math.nan

    def check(running: dict[str, Server]) -> None:
        nonlocal agreement
        top1 = {name: check_answers(s, install, workload, folder)["top1"] for name, s in running.items()}
        agreement = float(np.mean(np.array(top1["triton"]) == np.array(top1["slimsplit"])))
        print(f"[peer] top-1 agreement triton vs slimsplit on {workload.count} inputs: {agreement:.3f}", flush=True)

    raw, summary = interleave(servers, install, workload, config, folder, "peer", before=check)
    return {
        "machine": machine(cpus),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "config": asdict(config) | {"cpus": list(cpus), "client_cpus": list(config.client_cpus or cpus)},
        "triton": {
            "version": _triton_version(install),
            "kind": kind,
            "crashes": servers["triton"].crashes,
            "crash_logs": servers["triton"].crash_logs,
        },
        "slimsplit": {
            "argv": servers["slimsplit"].argv[1:],
            "crashes": servers["slimsplit"].crashes,
            "crash_logs": servers["slimsplit"].crash_logs,
        },
        "workload": {
            "model": workload.model,
            "mode": workload.mode,
            "triton_model": workload.triton_model,
            "inputs": workload.count,
            "codec_frame_bytes_mean": workload.frame_bytes_mean,
            "float32_feature_bytes": workload.feature_bytes,
        },
        "top1_agreement": agreement,
        "definitions": {
            "throughput": "answers received inside the measured window / its length (inferences per second)",
            "server_cpu_ms_per_frame": "utime+stime of the server's process tree (procfs) in the window / answers",
            "request_bytes": "serialized request message per inference (gRPC/HTTP2 framing not counted)",
            "mean_batch": "frames per tail call over the window, from each server's metrics",
            "unary": "that many concurrent unary calls, spread over the load-generator processes",
            "stream": "one stream per load-generator process, that many frames in flight in all",
        },
        "results": summary,
        "ratios": ratios(summary),
        "raw": raw,
        "wall_seconds": time.monotonic() - started,
    }


def _bundle_path() -> Path:
    from slimsplit.bundle import default_bundle_path

    return Path(default_bundle_path())


def _triton_version(install: TritonInstall) -> str:
    for path in install.server_dir.parent.parent.glob("nvidia_pytriton-*.dist-info"):
        return f"tritonserver 2.51 via {path.name.removesuffix('.dist-info')}"
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------------------------ table


def _f(value: Any, digits: int = 0) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not np.isfinite(v) else f"{v:.{digits}f}"


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    by = {(p["server"], p["transport"], p["in_flight"]): p for p in doc["results"]}
    ratio_by = {(r["transport"], r["in_flight"]): r for r in doc["ratios"]}
    w = doc["workload"]
    table = Table(
        title=(
            f"slimsplit vs Triton ({doc['triton']['kind']} backend): {w['mode']} tail, "
            f"cpus {doc['machine']['pinned_cpus']}, "
            f"medians of {doc['config']['reps']}; ratio = slimsplit / Triton"
        )
    )
    for col in (
        "transport",
        "in flight",
        "Triton inf/s",
        "slimsplit inf/s",
        "ratio",
        "Triton p50/p99 ms",
        "slimsplit p50/p99 ms",
        "CPU ms/inf T / s",
        "ratio",
        "batch T / s",
        "req B T / s",
        "errors/crashes",
    ):
        table.add_column(col, justify="right")
    for transport in doc["config"]["transports"]:
        for c in doc["config"]["in_flight"]:
            t, s, r = (
                by.get(("triton", transport, c)),
                by.get(("slimsplit", transport, c)),
                ratio_by.get((transport, c)),
            )
            if t is None or s is None or r is None:
                continue
            bad = {name: (sum(p["errors"].values()), p["crashes"]) for name, p in (("T", t), ("s", s))}
            table.add_row(
                transport,
                str(c),
                _f(t["throughput"]),
                _f(s["throughput"]),
                _f(r["throughput"], 2),
                f"{_f(t['p50_ms'], 2)}/{_f(t['p99_ms'], 2)}",
                f"{_f(s['p50_ms'], 2)}/{_f(s['p99_ms'], 2)}",
                f"{_f(t['server_cpu_ms_per_frame'], 3)} / {_f(s['server_cpu_ms_per_frame'], 3)}",
                _f(r["server_cpu_per_frame"], 2),
                f"{_f(t['mean_batch'], 1)} / {_f(s['mean_batch'], 1)}",
                f"{_f(t['request_bytes'])} / {_f(s['request_bytes'])}",
                " ".join(f"{k}:{e}/{x}" for k, (e, x) in bad.items()),
            )
    Console(width=200).print(table)
    print(f"top-1 agreement Triton vs slimsplit: {doc['top1_agreement']:.3f}")


# ------------------------------------------------------------------------------------------------ main


def _int_list(minimum: int, what: str, in_range: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers, each at least ``minimum``; errors name them ``what``, or
    ``in_range`` when one is below the minimum."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from exc
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected {in_range}, got {text!r}")
        return values

    return parse


_ints = _int_list(1, "integers", "positive integers")
_cpus = _int_list(0, "core numbers", "core numbers >= 0")


def _transports(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or any(v not in ("unary", "stream") for v in values):
        raise argparse.ArgumentTypeError(f"transports are unary and/or stream, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", action="store_true", help="create --triton-venv with Triton and exit")
    p.add_argument("--triton-venv", type=Path, default=TRITON_VENV, help=f"default {TRITON_VENV.name}/")
    p.add_argument("--quick", action="store_true", help="short form: 1/16/64 in flight, 1 rep, 1.5 s points")
    p.add_argument("--in-flight", type=_ints, help="frames in flight per point, e.g. 1,4,16")
    p.add_argument("--transports", type=_transports, help="unary,stream (default both)")
    p.add_argument("--reps", type=int, help="interleaved repetitions per point (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="measured seconds per point (default 4; quick 1.5)")
    p.add_argument("--warmup", type=float, help="seconds of load before each measured window (default 1)")
    p.add_argument("--clients", type=int, default=4, help="load-generator processes (default 4)")
    p.add_argument(
        "--cpus",
        type=_cpus,
        help="cores both servers and the load generator are pinned to (default: the first 2 this process may use)",
    )
    p.add_argument("--client-cpus", type=_cpus, help="cores of the load generator (default: the servers' cores)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where both servers run the tail")
    p.add_argument("--max-batch", type=int, default=64, help="batch limit of both servers (default 64)")
    p.add_argument("--mode", default="", help="bundle mode (default: the most accurate)")
    p.add_argument(
        "--triton-kind",
        choices=("auto", "python", "onnxruntime"),
        default="auto",
        help="Triton backend for the tail (auto: onnxruntime where the server has it, else python)",
    )
    p.add_argument("--slimsplit-args", default="", help='extra slimsplit-server flags, e.g. "--workers 2"')
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.name})")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (model repository, server logs)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else Config()
    if (args.reps is not None and args.reps < 1) or (args.duration is not None and args.duration <= 0):
        p.error("--reps must be >= 1 and --duration > 0")
    if args.clients < 1 or args.max_batch < 1:
        p.error("--clients and --max-batch must be >= 1")
    cpus_ok = set(os.sched_getaffinity(0))
    for flag, cores in (("--cpus", args.cpus), ("--client-cpus", args.client_cpus)):
        if cores and not set(cores) <= cpus_ok:
            p.error(f"{flag} {','.join(map(str, cores))}: not all usable here (usable: {sorted(cpus_ok)})")
    config = Config(
        in_flight=args.in_flight or base.in_flight,
        transports=args.transports or base.transports,
        reps=args.reps or base.reps,
        duration_s=args.duration or base.duration_s,
        warmup_s=args.warmup if args.warmup is not None else base.warmup_s,
        clients=args.clients,
        cpus=args.cpus or (),
        client_cpus=args.client_cpus or (),
        device=args.device,
        max_batch=args.max_batch,
        mode=args.mode,
        triton_kind=args.triton_kind,
        slimsplit_args=tuple(shlex.split(args.slimsplit_args)),
    )
    return args, config


def main(argv: Sequence[str] | None = None) -> int:
    args, config = parse_args(argv)
    try:
        if args.setup:
            setup(args.triton_venv.absolute())
            return 0
        install = find_triton(args.triton_venv.absolute())
        folder = Path(tempfile.mkdtemp(prefix="slimsplit-peer-"))
        try:
            doc = run(config, install, folder)
        finally:
            if args.keep:
                print(f"[peer] kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    except (PeerError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_table(doc)
    write_results(args.out, "peer", argv, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
