"""``slimsplit-server --workers N``: real supervisor and worker processes on loopback (``--backend null`` on the
shipped bundle): one port answered by every worker, one metrics endpoint summed over them, a killed worker started
again and counted, SIGTERM draining every worker with its in-flight frames answered."""

from __future__ import annotations

import functools
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.protocol import SERVICE_NAME
from slimsplit.server.config import ServerConfig, WorkersConfig, load_config
from slimsplit.server.workers import available_cpus, resolve_workers
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

TIMEOUT = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING


@functools.cache
def _payload() -> tuple[str, str, bytes]:
    manifest = Bundle.open(default_bundle_path()).manifest
    spec = manifest.modes[0]
    shape = (spec.width, manifest.feature.height, manifest.feature.width)
    return manifest.name, spec.name, encode_features(np.ones(shape, np.float32), spec.bits)


def _frame(frame_id: int) -> pb.FeatureFrame:
    model, mode, features = _payload()
    return pb.FeatureFrame(protocol_version=1, frame_id=frame_id, model=model, mode=mode, top_k=3, features=features)


class Pool:
    """``python -m slimsplit.server.cli --workers N`` with a free port and metrics port; stderr collected."""

    def __init__(
        self,
        tmp_path: Path,
        workers: int = 2,
        delay_ms: float = 0.0,
        toml: str = "",
        flags: Sequence[str] = (),
        while_starting: Callable[[Pool], None] | None = None,
    ) -> None:
        """``while_starting(pool)``: called once the process runs, before waiting for every worker to serve."""
        path = tmp_path / "server.toml"
        path.write_text(
            f'log_level = "info"\n{toml}\n[backend]\nname = "null"\n[backend.options]\ndelay_ms = {delay_ms}\n'
        )
        cmd = [sys.executable, "-m", "slimsplit.server.cli", "--config", str(path), "--workers", str(workers)]
        cmd += ["--port", "0", "--metrics-port", "0", "--grace", "10", *flags]
        self.workers = workers
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if while_starting is not None:
            while_starting(self)
        up = self.wait_for(rf"{workers} workers serving on (127\.0\.0\.1:\d+) \(pids ([\d, ]+)\)")
        self.address = up.group(1)
        self.pids = [int(p) for p in up.group(2).split(", ")]
        self.metrics_port = int(self.wait_for(r"metrics \(all workers\) on http://127\.0\.0\.1:(\d+)/").group(1))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)}")

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=TIMEOUT).read()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        return sum(v for lab, v in self.metrics().get(name, []) if all(lab.get(k) == x for k, x in labels.items()))

    def worker_pids(self) -> set[int]:
        return {int(lab["pid"]) for lab, _ in self.metrics().get("slimsplit_worker_resident_memory_bytes", [])}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self._reader.join(5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(tmp_path)
    try:
        yield p
    finally:
        p.close()


def channels(address: str, count: int) -> list[grpc.Channel]:
    """``count`` channels with a TCP connection each (no subchannel sharing between them)."""
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def wait_until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _port(addr: Any) -> int | None:
    return getattr(addr, "port", None)


def connected_pids(port: int) -> set[int]:
    """The worker processes holding an established connection on ``port``."""
    found = set()
    for proc in psutil.process_iter():
        try:
            conns = proc.net_connections("tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_ESTABLISHED and _port(c.laddr) == port for c in conns):
            found.add(proc.pid)
    return found


# ----------------------------------------------------------------------------------------------- tests


def test_two_workers_answer_on_one_port_and_the_metrics_sum_their_frames(pool: Pool) -> None:
    assert len(set(pool.pids)) == 2 and pool.worker_pids() == set(pool.pids)
    port = int(pool.address.rsplit(":", 1)[1])
    listeners = {
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and _port(c.laddr) == port
    }
    assert listeners == set(pool.pids)  # every worker listens on the one port, the supervisor only holds it bound
    chans = channels(pool.address, 16)
    try:
        per_channel = 5
        for i, ch in enumerate(chans):
            stub = pb_grpc.SplitInferenceStub(ch)
            for k in range(per_channel):
                reply = stub.Infer(_frame(i * per_channel + k), timeout=TIMEOUT)
                assert reply.frame_id == i * per_channel + k
        # 16 connections spread by the kernel: both workers hold some (all on one: probability 2**-15)
        assert connected_pids(port) == set(pool.pids)
        assert pool.value("slimsplit_frames_total", status="OK") == 16 * per_channel
        assert pool.value("slimsplit_in_flight") == 0
        assert pool.value("slimsplit_workers", state="serving") == 2
    finally:
        for ch in chans:
            ch.close()
    assert pool.stop() == 0


def test_a_killed_worker_is_started_again_and_counted(pool: Pool) -> None:
    assert pool.value("slimsplit_worker_restarts_total") == 0
    victim = pool.pids[0]
    with channels(pool.address, 1)[0] as ch:
        pb_grpc.SplitInferenceStub(ch).Infer(_frame(1), timeout=TIMEOUT)
    psutil.Process(victim).kill()
    wait_until(lambda: pool.value("slimsplit_worker_restarts_total", worker="0") == 1, "the restart to be counted")
    wait_until(lambda: pool.value("slimsplit_workers", state="serving") == 2, "the new worker to serve")
    pids = pool.worker_pids()
    assert victim not in pids and len(pids) == 2 and pool.pids[1] in pids
    pool.wait_for(rf"worker 0 \(pid {victim}\) was killed by SIGKILL; starting it again")
    pool.pids = sorted(pids)
    chans = channels(pool.address, 8)
    try:
        for i, ch in enumerate(chans):
            assert pb_grpc.SplitInferenceStub(ch).Infer(_frame(i), timeout=TIMEOUT).frame_id == i
    finally:
        for ch in chans:
            ch.close()
    # the dead worker's frame is still counted: counters never go down across restarts
    assert pool.value("slimsplit_frames_total", status="OK") == 9
    assert pool.stop() == 0


def test_sigterm_drains_every_worker_answering_the_frames_in_flight(tmp_path: Path) -> None:
    pool = Pool(tmp_path, delay_ms=1500)
    chans = channels(pool.address, 12)
    try:
        port = int(pool.address.rsplit(":", 1)[1])
        with ThreadPoolExecutor(len(chans)) as ex:
            calls = [
                ex.submit(pb_grpc.SplitInferenceStub(ch).Infer, _frame(i), timeout=TIMEOUT)
                for i, ch in enumerate(chans)
            ]
            wait_until(lambda: pool.value("slimsplit_in_flight") == len(chans), "every frame in flight")
            assert connected_pids(port) == set(pool.pids)  # both workers have frames in flight
            pool.proc.send_signal(signal.SIGTERM)
            replies = [c.result(TIMEOUT) for c in calls]
        assert sorted(r.frame_id for r in replies) == list(range(len(chans)))
        assert pool.proc.wait(TIMEOUT) == 0
        for pid in pool.pids:
            pool.wait_for(rf"worker \d \(pid {pid}\) exited with status 0")
            assert not psutil.pid_exists(pid)
        assert "stopped" in pool.lines[-1]
    finally:
        for ch in chans:
            ch.close()
        pool.close()


def test_a_sighup_while_the_workers_start_reaches_each_once_it_serves(tmp_path: Path) -> None:
    """A worker still loading has no SIGHUP handler yet (the default action would end it, and a worker that ends
    before it ever served fails the pool): the supervisor passes SIGHUP on to it once it serves."""
    done = threading.Event()

    def hup_until_up(pool: Pool) -> None:
        def send() -> None:
            pool.wait_for(r"metrics \(all workers\) on")  # the supervisor's own handlers are installed by then
            while not done.is_set() and pool.proc.poll() is None:
                pool.proc.send_signal(signal.SIGHUP)
                time.sleep(0.02)

        threading.Thread(target=send, daemon=True).start()

    pool = Pool(tmp_path, while_starting=hup_until_up)
    try:
        done.set()
        for index in range(pool.workers):
            pool.wait_for(rf"\[worker {index}\]: SIGHUP: reloading the devices file")
        assert pool.stop() == 0
    finally:
        done.set()
        pool.close()


def test_a_crash_loop_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        health_port = probe.getsockname()[1]
    toml = "[server]\nrestart_limit = 1\nrestart_backoff_s = 0.1\n"
    pool = Pool(tmp_path, toml=toml, flags=["--health-port", str(health_port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            assert check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT).status == SERVING
        first = pool.pids[0]
        psutil.Process(first).kill()
        wait_until(lambda: pool.value("slimsplit_worker_restarts_total") == 1, "the restart to be counted")
        wait_until(lambda: pool.value("slimsplit_workers", state="serving") == 2, "the restarted worker to serve")
        second = next(pid for pid in pool.worker_pids() if pid not in pool.pids)
        psutil.Process(second).kill()  # the second restart within the window: more than restart_limit = 1
        assert pool.proc.wait(TIMEOUT) == 1
        pool.wait_for(r"more than 1 restarts within 60 s, giving up")
        assert not psutil.pid_exists(pool.pids[1])
    finally:
        pool.close()


def test_a_worker_that_cannot_start_fails_the_server_with_its_status(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    cmd = [sys.executable, "-m", "slimsplit.server.cli", "--workers", "2", "--port", "0", "--models"]
    done = subprocess.run([*cmd, str(tmp_path / "models")], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert "before it served: stopping" in done.stderr


def test_a_busy_port_is_refused_before_any_worker_starts(pool: Pool) -> None:
    cmd = [sys.executable, "-m", "slimsplit.server.cli", "--workers", "2", "--backend", "null"]
    port = pool.address.rsplit(":", 1)[1]
    done = subprocess.run([*cmd, "--port", port], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "worker" not in done.stderr
    assert pool.stop() == 0  # the first pool still serves, undisturbed


def test_a_killed_supervisors_folder_is_removed_by_the_next_one(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Path(tempfile.gettempdir()) / f"slimsplit-workers-{int(dead.stdout)}-test"
    (stale / "metrics").mkdir(parents=True)
    pool = Pool(tmp_path)
    try:
        assert not stale.exists()
        mine = list(Path(tempfile.gettempdir()).glob(f"slimsplit-workers-{pool.proc.pid}-*"))
        assert len(mine) == 1 and (mine[0] / "metrics").is_dir()
        assert pool.stop() == 0
        assert not mine[0].exists()
    finally:
        pool.close()


def test_the_number_of_workers() -> None:
    assert resolve_workers(load_config(None, {"server": {"workers": 3}})) == 3
    cpu = load_config(None, {"backend": {"name": "null"}})
    assert resolve_workers(cpu) == available_cpus() >= 1
    assert ServerConfig().server == WorkersConfig(workers=0)
    with pytest.raises(Exception, match=r"server\.workers"):
        load_config(None, {"server": {"workers": -1}})


def test_the_gpus_a_pool_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from slimsplit.server.workers import gpu_ids

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 1")
    auto = load_config(None, {"backend": {"name": "onnxruntime", "device": "auto"}})
    cuda = load_config(None, {"backend": {"name": "onnxruntime", "device": "cuda"}})
    cpu = load_config(None, {"backend": {"name": "onnxruntime", "device": "cpu"}})
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert gpu_ids(auto) == (["0", "1"] if has_cuda else [])  # a CPU build runs "auto" on the CPU
    assert gpu_ids(cuda) == ["0", "1"] and gpu_ids(cpu) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_ids(cuda) == []
