"""Several serving processes on one port (``slimsplit-server --workers N``) under a supervisor.

* :func:`resolve_workers` - how many: ``[server] workers``, 0 = one per core this process may use (CPU affinity and
  cgroup quota), or one per GPU when the tails run on GPUs.
* :class:`Supervisor` / :func:`run_pool` - start the workers, watch them, restart the dead, drain them on SIGTERM;
  the exit status of ``slimsplit-server``.
* :func:`worker_main` - one worker (``python -m slimsplit.server.workers``, started by the supervisor only).

The port: the supervisor checks that ``grpc.port`` is free with a plain bind (a busy port is the same
:class:`~slimsplit.errors.ConfigError` as for a single server, exit 2), then keeps it bound with ``SO_REUSEPORT``
for its whole life (port 0: the free port picked once, for every worker, and nobody else can take it while a worker
restarts). Every worker binds it with ``SO_REUSEPORT`` as well, and the kernel spreads new connections over the
listening workers; a connection stays with its worker for its life.

A worker is its own process with its own event loop, backend, batchers, admission limits and
:class:`~slimsplit.server.security.Guard` (so every limit holds per worker; see ``AuthConfig``). It records its
metrics in prometheus-client's multiprocess files, in a private folder the supervisor creates
(``PROMETHEUS_MULTIPROC_DIR``) and removes at exit; with GPUs each worker sees one (``CUDA_VISIBLE_DEVICES``). It
tells the supervisor it serves by writing one byte to a pipe, whose end-of-file then tells it the worker exited,
and the kernel kills it if the supervisor dies (``PR_SET_PDEATHSIG``; a ``kill -9`` of the server kills it all).

The supervisor serves ``--metrics-port`` (:func:`~slimsplit.server.metrics.pool_registry`: the workers' metrics
summed, each worker's process figures, restarts) and ``--health-port`` (SERVING while at least one worker serves and
the pool is not stopping); the main port's health service is each worker's own. A worker that dies is started again
after a back-off (``restart_backoff_s``, doubled for each of its restarts within ``restart_window_s``), counted in
``slimsplit_worker_restarts_total`` and logged; more than ``restart_limit`` restarts within the window and the
supervisor gives up (stops the rest, exit 1). A worker that fails before it ever served, at the first start, fails
the whole server with its exit status (a bad bundle: 1, a bad setting: 2).

SIGTERM/SIGINT: the health port turns NOT_SERVING and every worker gets SIGTERM and drains as a single server does
(in-flight frames answered within ``grpc.grace_s``); a worker still running ``grace_s`` + 10 s later is killed. Exit
0 when every worker exited 0, else 1; a second SIGINT kills them at once (exit 130). SIGHUP is passed on to every
worker (each reloads the devices file); one still starting gets it once it serves (before, it has no handler).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import math
import os
import pickle
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slimsplit.errors import ConfigError
from slimsplit.server.config import ServerConfig

log = logging.getLogger("slimsplit.server.workers")

MAX_BACKOFF_S = 30.0
KILL_AFTER_GRACE_S = 10.0
_DIR_PREFIX = "slimsplit-workers-"
_GPU_BACKENDS = ("onnxruntime", "torch")


# ---------------------------------------------------------------------------------------------- how many


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a container's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The cgroup's CPU quota in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def gpu_ids(config: ServerConfig) -> list[str]:
    """The GPUs the tails would run on (``CUDA_VISIBLE_DEVICES`` ids, or NVIDIA's driver's list), [] for CPU."""
    backend = config.backend
    if backend.device == "cpu" or backend.name not in _GPU_BACKENDS:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        ids = [] if ids[:1] == ["-1"] else ids
    else:
        try:
            ids = [str(i) for i in range(len(list(Path("/proc/driver/nvidia/gpus").iterdir())))]
        except OSError:
            ids = []
    if ids and backend.device == "auto" and backend.name == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            return []
        from slimsplit.server.backends.onnxruntime_backend import CUDA, choose_providers

        if CUDA not in choose_providers("auto", list(onnxruntime.get_available_providers())):
            return []  # a CPU build of ONNX Runtime: "auto" runs on the CPU
    return ids


def resolve_workers(config: ServerConfig) -> int:
    """``[server] workers``, or with 0 one per GPU the tails run on, else one per available core."""
    if config.server.workers > 0:
        return config.server.workers
    gpus = gpu_ids(config)
    return len(gpus) if gpus else available_cpus()


# ---------------------------------------------------------------------------------------------- supervisor


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    pipe: int  # the read end of its ready pipe: one byte once it serves, end-of-file when it exited
    started: float
    first: bool  # started with the pool (a failure before serving then fails the server)
    serving: bool = False
    reload_due: bool = False  # a SIGHUP came while it was starting: passed on once it serves


@dataclass
class _State:
    workers: dict[int, _Worker] = field(default_factory=dict)
    restarts: dict[int, int] = field(default_factory=dict)
    recent: dict[int, collections.deque[float]] = field(default_factory=dict)
    pending: dict[int, float] = field(default_factory=dict)  # index -> when to start it again
    all_restarts: collections.deque[float] = field(default_factory=collections.deque)
    pool_up: bool = False
    stopping: bool = False
    stop_deadline: float = math.inf
    exit_code: int = 0
    killed: bool = False


class Supervisor:
    """N workers serving ``config``'s port (see the module docstring). :meth:`run` blocks until they all exited and
    returns the exit status; call it from the main thread (it installs the signal handlers, and the kernel's
    parent-death signal is tied to the thread that started a worker)."""

    def __init__(self, config: ServerConfig, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"server.workers: must be >= 1, got {workers}", key="server.workers")
        self.config = config
        self.count = workers
        self.gpus = gpu_ids(config)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self._state = _State()
        self._selector = selectors.DefaultSelector()
        self._dir: Path | None = None
        self._reserved: socket.socket | None = None
        self._httpd: Any = None
        self._health_server: Any = None
        self._health: Any = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # ------------------------------------------------------------------------------------------ public
    def run(self) -> int:
        previous = self._install_signals()
        try:
            self._setup()
            self._state.restarts = dict.fromkeys(range(self.count), 0)
            for index in range(self.count):
                self._spawn(index, first=True)
            return self._loop()
        finally:
            self._teardown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def samples(self) -> list[Any]:
        """The live workers (index, pid, serving), for the metrics."""
        from slimsplit.server.metrics import WorkerSample

        return [WorkerSample(w.index, w.proc.pid, w.serving) for w in list(self._state.workers.values()) if w.pipe >= 0]

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from slimsplit.server.app import check_transport_policy

        cfg = self.config
        check_transport_policy(cfg)
        self.port = self._reserve_port()
        _remove_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        (self._dir / "metrics").mkdir()
        worker_config = replace(
            cfg,
            grpc=replace(cfg.grpc, port=self.port, health_port=None),
            metrics=replace(cfg.metrics, port=None),
        )
        with (self._dir / "config.pickle").open("wb") as f:
            pickle.dump(worker_config, f)
        if cfg.metrics.port is not None:
            self._start_metrics()
        if cfg.grpc.health_port is not None:
            self._start_health(cfg.grpc.health_port)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    def _reserve_port(self) -> int:
        from slimsplit.server.app import bind_problem, cannot_listen, format_address

        host, port = self.config.grpc.host, self.config.grpc.port
        why = bind_problem(host, port) if port else None
        if why is not None:
            raise cannot_listen(format_address(host, port), why)
        try:
            family, kind, proto, _name, sockaddr = socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            raise cannot_listen(format_address(host, port), (exc.strerror or str(exc)).lower()) from None
        self._reserved = sock  # bound, never listening: it takes no connection
        return int(sock.getsockname()[1])

    def _start_metrics(self) -> None:
        from slimsplit.server.app import format_address, start_metrics_http
        from slimsplit.server.metrics import WorkerPoolCollector, pool_registry

        assert self._dir is not None and self.config.metrics.port is not None
        pool = WorkerPoolCollector(self.samples, lambda: dict(self._state.restarts))
        registry = pool_registry(self._dir / "metrics", pool)
        self._httpd = start_metrics_http(self.config.metrics.host, self.config.metrics.port, registry)
        self.metrics_port = int(self._httpd.server_port)
        log.info(
            "metrics (all workers) on http://%s/metrics", format_address(self.config.metrics.host, self.metrics_port)
        )

    def _start_health(self, port: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from grpc_health.v1 import health, health_pb2_grpc

        from slimsplit.server.app import bind_health_port, format_address

        host = self.config.grpc.host
        self._health = health.HealthServicer()
        server = grpc.server(ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.health_port = bind_health_port(server, host, port)
        server.start()
        self._health_server = server
        self._set_health(False)
        log.info("health service (only) in plaintext on %s", format_address(host, self.health_port))

    def _set_health(self, serving: bool) -> None:
        if self._health is None:
            return
        from grpc_health.v1 import health_pb2

        from slimsplit.protocol import SERVICE_NAME

        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self._health.set(name, status)

    def _teardown(self) -> None:
        for w in list(self._state.workers.values()):
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            self._close_pipe(w)
        if self._health_server is not None:
            self._health_server.stop(None)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._reserved is not None:
            self._reserved.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------------------------------------ signals
    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            self._signals.append(signum)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"s")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        signals, self._signals[:] = list(self._signals), []
        for sig in signals:
            if sig == signal.SIGHUP:
                log.info("SIGHUP: passed on to the workers")
                self._reload_all()
            elif self._state.stopping and sig == signal.SIGINT:
                log.warning("second SIGINT: killing the workers")
                self._signal_all(signal.SIGKILL)
                self._state.exit_code = 130
                self._state.killed = True
            elif not self._state.stopping:
                log.info(
                    "%s: stopping %d worker(s) (grace %.1f s)",
                    signal.Signals(sig).name,
                    self.count,
                    self.config.grpc.grace_s,
                )
                self._stop(0)

    def _reload_all(self) -> None:
        """SIGHUP to every serving worker; one still starting gets it once it serves (its handler is installed only
        then, and SIGHUP's default action would end it)."""
        for w in self._state.workers.values():
            if w.serving:
                self._signal(w, signal.SIGHUP)
            else:
                w.reload_due = True

    def _signal(self, w: _Worker, sig: int) -> None:
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)

    def _signal_all(self, sig: int) -> None:
        for w in self._state.workers.values():
            self._signal(w, sig)

    def _stop(self, code: int) -> None:
        st = self._state
        st.stopping = True
        st.exit_code = max(st.exit_code, code)
        st.pending.clear()
        st.stop_deadline = time.monotonic() + self.config.grpc.grace_s + KILL_AFTER_GRACE_S
        self._set_health(False)
        self._signal_all(signal.SIGTERM)

    # ------------------------------------------------------------------------------------------ workers
    def _spawn(self, index: int, *, first: bool) -> None:
        assert self._dir is not None
        read_end, write_end = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "slimsplit.server.workers",
            "--index",
            str(index),
            "--config",
            str(self._dir / "config.pickle"),
            "--ready-fd",
            str(write_end),
            "--parent",
            str(os.getpid()),
        ]
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self._dir / "metrics"))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        try:
            proc = subprocess.Popen(cmd, env=env, pass_fds=(write_end,), stdin=subprocess.DEVNULL)
        finally:
            os.close(write_end)
        worker = _Worker(index=index, proc=proc, pipe=read_end, started=time.monotonic(), first=first)
        self._state.workers[index] = worker
        self._selector.register(read_end, selectors.EVENT_READ, worker)
        log.debug("worker %d started (pid %d)", index, proc.pid)

    def _close_pipe(self, w: _Worker) -> None:
        if w.pipe >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(w.pipe)
            os.close(w.pipe)
            w.pipe = -1

    def _on_pipe(self, w: _Worker) -> None:
        try:
            data = os.read(w.pipe, 64)
        except OSError:
            data = b""
        if data:
            self._on_serving(w)
        else:
            self._on_exit(w)

    def _on_serving(self, w: _Worker) -> None:
        st = self._state
        w.serving = True
        if w.reload_due and not st.stopping:
            w.reload_due = False
            self._signal(w, signal.SIGHUP)
        if not st.pool_up and all(x.serving for x in st.workers.values()) and len(st.workers) == self.count:
            st.pool_up = True
            from slimsplit.server.app import format_address

            pids = ", ".join(str(x.proc.pid) for x in sorted(st.workers.values(), key=lambda x: x.index))
            log.info(
                "%d workers serving on %s (pids %s)",
                self.count,
                format_address(self.config.grpc.host, self.port or 0),
                pids,
            )
        elif st.pool_up and st.restarts.get(w.index):
            log.info("worker %d serving again (pid %d)", w.index, w.proc.pid)
        if not st.stopping:
            self._set_health(True)

    def _on_exit(self, w: _Worker) -> None:
        from prometheus_client import multiprocess

        self._close_pipe(w)
        try:
            code = w.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it closed the pipe itself and lives on: not a worker any more
            w.proc.kill()
            code = w.proc.wait()
        assert self._dir is not None
        multiprocess.mark_process_dead(w.proc.pid, str(self._dir / "metrics"))  # type: ignore[no-untyped-call]
        st = self._state
        del st.workers[w.index]
        if not any(x.serving for x in st.workers.values()):
            self._set_health(False)
        how = _how_it_ended(code)
        if st.stopping:
            # one still starting has no handler yet: SIGTERM ends it at once, which is a clean stop too
            clean = code == 0 or (code == -signal.SIGTERM and not w.serving)
            log.log(logging.INFO if clean else logging.WARNING, "worker %d (pid %d) %s", w.index, w.proc.pid, how)
            if not clean and not st.killed:
                st.exit_code = max(st.exit_code, 1)
            return
        if w.first and not w.serving:
            log.error("worker %d (pid %d) %s before it served: stopping", w.index, w.proc.pid, how)
            self._stop(code if code in (1, 2) else 1)
            return
        now = time.monotonic()
        window = self.config.server.restart_window_s
        st.all_restarts.append(now)
        while st.all_restarts and st.all_restarts[0] < now - window:
            st.all_restarts.popleft()
        if len(st.all_restarts) > self.config.server.restart_limit:
            log.error(
                "worker %d (pid %d) %s: more than %d restarts within %.0f s, giving up",
                w.index,
                w.proc.pid,
                how,
                self.config.server.restart_limit,
                window,
            )
            self._stop(1)
            return
        recent = st.recent.setdefault(w.index, collections.deque())
        recent.append(now)
        while recent and recent[0] < now - window:
            recent.popleft()
        delay = min(MAX_BACKOFF_S, self.config.server.restart_backoff_s * 2 ** (len(recent) - 1))
        st.restarts[w.index] = st.restarts.get(w.index, 0) + 1
        st.pending[w.index] = now + delay
        log.warning("worker %d (pid %d) %s; starting it again in %.1f s", w.index, w.proc.pid, how, delay)

    def _timers(self, now: float) -> None:
        st = self._state
        for index, when in list(st.pending.items()):
            if when <= now and not st.stopping:
                del st.pending[index]
                self._spawn(index, first=False)
        for w in list(st.workers.values()):
            if not w.serving and now - w.started > self.config.server.start_timeout_s and w.proc.poll() is None:
                log.error(
                    "worker %d (pid %d) did not serve within %.0f s: killing it",
                    w.index,
                    w.proc.pid,
                    self.config.server.start_timeout_s,
                )
                w.proc.kill()
        if st.stopping and now > st.stop_deadline:
            for w in st.workers.values():
                if w.proc.poll() is None:
                    log.error(
                        "worker %d (pid %d) still running after the grace period: killing it", w.index, w.proc.pid
                    )
                    w.proc.kill()
            st.exit_code = max(st.exit_code, 1)
            st.stop_deadline = math.inf

    def _next_timeout(self, now: float) -> float:
        st = self._state
        times = [*st.pending.values(), st.stop_deadline]
        times += [w.started + self.config.server.start_timeout_s for w in st.workers.values() if not w.serving]
        return max(0.0, min(min(times) - now, 1.0))

    def _loop(self) -> int:
        st = self._state
        while not (st.stopping and not st.workers):
            for key, _mask in self._selector.select(self._next_timeout(time.monotonic())):
                if key.data is None:
                    self._on_signals()
                else:
                    worker: _Worker = key.data
                    if worker.pipe >= 0:
                        self._on_pipe(worker)
            if self._signals:
                self._on_signals()
            self._timers(time.monotonic())
        log.info("stopped")
        return st.exit_code


def _remove_stale_dirs() -> None:
    """Remove the private folders of supervisors that were killed (SIGKILL leaves them): this user's
    ``slimsplit-workers-<pid>-*`` in the temporary folder whose pid is gone."""
    import psutil

    for folder in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*-*"):
        pid = folder.name[len(_DIR_PREFIX) :].split("-", 1)[0]
        try:
            mine = folder.is_dir() and folder.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _how_it_ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run_pool(config: ServerConfig, workers: int) -> int:
    """Serve ``config`` from ``workers`` processes until SIGTERM/SIGINT; the exit status (``slimsplit-server``'s)."""
    from slimsplit.server.app import exit_status

    return exit_status(lambda: Supervisor(config, workers).run())


# ---------------------------------------------------------------------------------------------- worker


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the supervisor dies (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(1)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """One worker: the configuration the supervisor wrote, served with ``SO_REUSEPORT`` until SIGTERM."""
    p = argparse.ArgumentParser(prog="slimsplit.server.workers", description="one worker of slimsplit-server --workers")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    with args.config.open("rb") as f:
        config = pickle.load(f)  # written by the supervisor into its private (0700) folder
    if not isinstance(config, ServerConfig):
        print(f"slimsplit-server worker: {args.config} holds no server configuration", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args.index}]: %(message)s",
        stream=sys.stderr,
    )
    from slimsplit.server.app import RunningServer, run_server

    def ready(_running: RunningServer) -> None:
        os.write(args.ready_fd, b"R")

    return run_server(config, ready=ready, reuse_port=True)


if __name__ == "__main__":
    sys.exit(worker_main())
