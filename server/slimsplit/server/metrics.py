"""Prometheus metrics of the serving path, registered on a caller-supplied ``CollectorRegistry`` (no globals).

Names (all prefixed ``slimsplit_``):

* ``frames_total{model,mode,status}``: frames answered, by gRPC status name (``OK``, ``INVALID_ARGUMENT``,
  ...)
* ``frame_latency_seconds{model,mode}``: receipt to answer, per frame
* ``queue_seconds{model,mode}`` / ``tail_seconds{model,mode}``: waiting for a batch / the tail's share of a
  batch
* ``batch_size{model,mode}``: frames per tail call
* ``payload_bytes{model,mode}``: encoded feature bytes per frame
* ``in_flight``: frames being served right now
* ``device_frames_total{device,status}`` / ``device_bytes_total{device}`` / ``device_streams{device}``: per device
  (with device authentication on; ``device`` is a device id of the devices file or a client certificate, never a
  token, and their number is bounded by ``auth.max_device_labels``)
* ``auth_failures_total{reason}``: calls refused by authentication or authorization
* ``devices_reloads_total{result}``: reloads of the devices file (``ok``, ``error``)
* ``log_lines_dropped_total``: warnings and errors not logged because of the log rate limit
* ``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``, ...: the serving process
  (prometheus-client's process collector)

With several workers (``[server] workers``) each worker records into prometheus-client's multiprocess files (the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a private folder) and the supervisor serves one endpoint
(:func:`pool_registry`): counters and histograms summed over the workers (a dead worker's counts stay, so they never
go down), the gauges ``in_flight`` and ``device_streams`` summed over the live ones; ``process_*`` is then the
supervisor itself, and each worker's process figures, read from ``/proc``, are labelled ``worker`` (its index) and
``pid``:

* ``worker_cpu_seconds_total{worker,pid}``, ``worker_resident_memory_bytes``, ``worker_open_fds``,
  ``worker_start_time_seconds``: per worker process
* ``workers{state}``: worker processes ``serving`` / ``starting``
* ``worker_restarts_total{worker}``: workers that died and were started again
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_LATENCY_BUCKETS: Sequence[float] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS: Sequence[float] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BYTES_BUCKETS: Sequence[float] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536, 262144, 1048576)


@dataclass(frozen=True)
class _ModeMetrics:
    latency: Histogram
    queue: Histogram
    tail: Histogram
    batch: Histogram
    payload: Histogram


class DeviceMetrics:
    """One device's instruments (children cached per status)."""

    def __init__(self, frames: Counter, nbytes: Counter, streams: Gauge, label: str) -> None:
        self._frames = frames
        self._label = label
        self._by_status: dict[str, Any] = {}
        self.bytes = nbytes.labels(label)
        self.streams = streams.labels(label)

    def frame(self, status: str) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._frames.labels(self._label, status)
        child.inc()


class ServerMetrics:
    """The server's instruments. Thread-safe; children per model/mode are cached to keep the per-frame cost
    low."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        """``process``: also export this process' CPU, memory and file descriptors (``process_*``)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        labels = ("model", "mode")
        self.frames = Counter("slimsplit_frames", "Frames answered, by status", (*labels, "status"), registry=r)
        self.latency = Histogram(
            "slimsplit_frame_latency_seconds",
            "Receipt to answer",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "slimsplit_queue_seconds", "Wait for a batch", labels, buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tail = Histogram(
            "slimsplit_tail_seconds",
            "Tail compute share per frame",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "slimsplit_batch_size", "Frames per tail call", labels, buckets=_BATCH_BUCKETS, registry=r
        )
        self.payload = Histogram(
            "slimsplit_payload_bytes",
            "Encoded feature bytes per frame",
            labels,
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("slimsplit_in_flight", "Frames being served", registry=r, multiprocess_mode="livesum")
        self.device_frames = Counter(
            "slimsplit_device_frames", "Frames answered per device, by status", ("device", "status"), registry=r
        )
        self.device_bytes = Counter(
            "slimsplit_device_bytes", "Feature bytes received per device", ("device",), registry=r
        )
        self.device_streams = Gauge(
            "slimsplit_device_streams", "Open streams per device", ("device",), registry=r, multiprocess_mode="livesum"
        )
        self.auth_failures = Counter(
            "slimsplit_auth_failures", "Calls refused by authentication or authorization", ("reason",), registry=r
        )
        self.reloads = Counter("slimsplit_devices_reloads", "Reloads of the devices file", ("result",), registry=r)
        self.log_dropped = Counter(
            "slimsplit_log_lines_dropped", "Warnings and errors dropped by the log rate limit", registry=r
        )
        self._devices: dict[str, DeviceMetrics] = {}
        self._children: dict[tuple[str, str], _ModeMetrics] = {}
        self._lock = threading.Lock()

    def _mode(self, model: str, mode: str) -> _ModeMetrics:
        key = (model, mode)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = _ModeMetrics(
                        latency=self.latency.labels(model, mode),
                        queue=self.queue.labels(model, mode),
                        tail=self.tail.labels(model, mode),
                        batch=self.batch.labels(model, mode),
                        payload=self.payload.labels(model, mode),
                    )
                    self._children[key] = child
        return child

    def frame_ok(self, model: str, mode: str, *, total_s: float, queue_s: float, tail_s: float, payload: int) -> None:
        c = self._mode(model, mode)
        self.frames.labels(model, mode, "OK").inc()
        c.latency.observe(total_s)
        c.queue.observe(queue_s)
        c.tail.observe(tail_s)
        c.payload.observe(payload)

    def frame_failed(self, model: str, mode: str, status: str) -> None:
        # model/mode come from the client: unknown names are folded so a client cannot grow the label set.
        self.frames.labels(model, mode, status).inc()

    def device(self, label: str) -> DeviceMetrics:
        """The instruments of the device labelled ``label`` (the caller bounds the number of labels)."""
        found = self._devices.get(label)
        if found is None:
            with self._lock:
                found = self._devices.get(label)
                if found is None:
                    found = DeviceMetrics(self.device_frames, self.device_bytes, self.device_streams, label)
                    self._devices[label] = found
        return found

    def batch_ran(self, model: str, mode: str, size: int) -> None:
        self._mode(model, mode).batch.observe(size)


# ---------------------------------------------------------------------------------------------- worker pool


@dataclass(frozen=True)
class WorkerSample:
    """One worker process as the supervisor sees it."""

    index: int
    pid: int
    serving: bool


class WorkerPoolCollector:
    """The supervisor's own figures: workers by state, restarts, and each worker's process figures from ``/proc``
    (psutil), labelled by index and pid. ``workers`` and ``restarts`` are read at every scrape."""

    def __init__(
        self, workers: Callable[[], Sequence[WorkerSample]], restarts: Callable[[], Mapping[int, int]]
    ) -> None:
        self._workers = workers
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        import psutil

        workers = list(self._workers())
        state = GaugeMetricFamily("slimsplit_workers", "Worker processes, by state", labels=("state",))
        state.add_metric(("serving",), sum(w.serving for w in workers))
        state.add_metric(("starting",), sum(not w.serving for w in workers))
        yield state
        restarts = CounterMetricFamily(
            "slimsplit_worker_restarts", "Workers that died and were started again", labels=("worker",)
        )
        for index, count in sorted(self._restarts().items()):
            restarts.add_metric((str(index),), count)
        yield restarts
        labels = ("worker", "pid")
        cpu = CounterMetricFamily("slimsplit_worker_cpu_seconds", "Worker CPU time (user + system)", labels=labels)
        rss = GaugeMetricFamily("slimsplit_worker_resident_memory_bytes", "Worker resident memory", labels=labels)
        fds = GaugeMetricFamily("slimsplit_worker_open_fds", "Worker open file descriptors", labels=labels)
        start = GaugeMetricFamily(
            "slimsplit_worker_start_time_seconds", "Worker start, seconds since the epoch", labels=labels
        )
        for w in workers:
            try:
                proc = psutil.Process(w.pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    values = (times.user + times.system, proc.memory_info().rss, proc.num_fds(), proc.create_time())
            except (psutil.Error, OSError):
                continue  # it just exited: the supervisor will see it
            key = (str(w.index), str(w.pid))
            families: tuple[CounterMetricFamily | GaugeMetricFamily, ...] = (cpu, rss, fds, start)
            for family, value in zip(families, values, strict=True):
                family.add_metric(key, float(value))
        yield from (cpu, rss, fds, start)


def pool_registry(multiproc_dir: Path, pool: WorkerPoolCollector) -> CollectorRegistry:
    """What the supervisor serves: the workers' metrics from ``multiproc_dir`` (summed), its own process metrics and
    the pool's figures."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    ProcessCollector(registry=registry)
    registry.register(pool)
    return registry
