"""Server configuration: frozen dataclasses with defaults, filled from an optional TOML file and CLI flags.

Precedence: defaults < TOML file < command-line flags. The TOML file mirrors the dataclasses::

    models = ["./models"]          # model repository folder(s) or bundle folder(s)
    default_top_k = 5
    log_level = "info"

    [grpc]
    host = "127.0.0.1"
    port = 50051

    [batching]
    max_batch_size = 8
    max_wait_us = 0
    inline_tail_max_us = 500

    [backend]
    name = "onnxruntime"
    device = "auto"

    [server]                       # serving processes on the one port (SO_REUSEPORT), see slimsplit.server.workers
    workers = 0                    # 0 = one per core (one per GPU when the tails run on GPUs); 1 = one process

    [metrics]
    port = 9464

    [tls]                          # TLS (off unless cert and key are given); paths relative to this file
    cert = "server.crt"
    key = "server.key"
    client_ca = "ca.crt"           # mTLS: verify client certificates against this CA bundle
    require_client_cert = true     # (the default when client_ca is given)

    [auth]                         # per-device tokens and limits (off unless devices_file is given)
    devices_file = "devices.toml"  # device id -> token hash, allowed models, limits (slimsplit-certs writes it)
    frames_per_s = 0               # default per-device limits (0 = none); a device's entry may set its own
    bytes_per_s = 0
    max_streams = 0

Every key is checked: an unknown key or a value of the wrong type is a :class:`~slimsplit.errors.ConfigError`
that names the key (the loader is :mod:`slimsplit.settings`, shared with the edge's configuration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimsplit import settings
from slimsplit.codec.header import MAX_HEADER_SIZE, MAX_PAYLOAD
from slimsplit.protocol import DEFAULT_PORT

# Room for a FeatureFrame's other fields (model and mode names, ids, timestamps) around the encoded features.
ENVELOPE_BYTES = 16 << 10
# The largest message the server accepts by default: the largest frame the codec can produce (header + a
# payload of at most 65535 bytes) plus the envelope. gRPC refuses anything larger with RESOURCE_EXHAUSTED
# before it reaches a handler, so a hostile client cannot make the server buffer megabytes.
DEFAULT_MAX_RECEIVE_BYTES = MAX_HEADER_SIZE + MAX_PAYLOAD + ENVELOPE_BYTES
BACKEND_DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")


_check = settings.check


@dataclass(frozen=True)
class GrpcConfig:
    """Network endpoint, message limits, keepalive and shutdown of the gRPC server."""

    host: str = "127.0.0.1"
    # 0 = pick a free port (tests, benchmarks); the bound port is reported by the running server.
    port: int = DEFAULT_PORT
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES
    max_send_message_bytes: int = 4 << 20
    # Server-initiated HTTP/2 pings on idle connections, and how long to wait for the ack.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Clients may ping at most this often (more often counts as a strike and ends the connection).
    min_client_ping_interval_s: float = 10.0
    # Streams at once on one connection (HTTP/2 SETTINGS), and calls (unary and streams) at once on the whole
    # server: beyond it a new call is refused with RESOURCE_EXHAUSTED by gRPC itself, before any handler runs.
    max_concurrent_streams: int = 256
    max_concurrent_rpcs: int = 1024
    # TCP connections at once (beyond it new ones are closed at accept), and how long one may take to finish its
    # TLS/HTTP2 handshake (a connection that never sends the HTTP/2 preface is closed after it).
    max_connections: int = 1024
    handshake_timeout_s: float = 10.0
    # A connection with no call for this long is closed (GOAWAY); one older than max_connection_age_s is asked to
    # reconnect, its calls given max_connection_age_grace_s to finish. 0 = no limit.
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 4 * 3600.0
    max_connection_age_grace_s: float = 30.0
    # A stream that sends no frame for this long (and has none being served) ends with UNAVAILABLE. 0 = never.
    stream_idle_timeout_s: float = 300.0
    # Bytes a client may send on one stream before the server reads them (the HTTP/2 stream window, fixed: no
    # bandwidth-delay probing), which bounds what a stream that is not read can make the server hold.
    stream_window_bytes: int = 65536
    # Frames of one InferStream being served at once; reading from the stream pauses beyond it (flow control).
    stream_max_in_flight: int = 32
    # Frames of one client (a device, else a connection) being served at once, over all its calls: its streams pause
    # beyond it, its unary calls are refused with RESOURCE_EXHAUSTED; one client's flood never fills the server.
    client_max_in_flight: int = 64
    # Frames being served at once in all; beyond it frames wait, and a freed slot goes to the client with the fewest
    # being served (max-min fairness: a camera asking for less than its share is served ahead of a flood).
    max_frames_in_flight: int = 128
    # ... adapted to keep the event loop's lag (how late a timer fires: what every frame waits for) under this: a
    # flood then gets fewer slots instead of the loop. 0 = a fixed limit.
    target_loop_lag_ms: float = 5.0
    # On SIGTERM/SIGINT: seconds to finish in-flight frames before open calls are cancelled.
    grace_s: float = 5.0
    reflection: bool = True
    # Plaintext on an address other than loopback is refused unless this is set (then the server says so at start).
    insecure: bool = False
    # A second, plaintext port that serves only grpc.health.v1.Health (for probes that cannot do TLS, such as
    # Kubernetes' gRPC probe); None = off. It tells nothing but SERVING / NOT_SERVING.
    health_port: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.host), "grpc.host", "must not be empty")
        _check(0 <= self.port <= 65535, "grpc.port", f"must be in [0, 65535], got {self.port}")
        _check(self.max_receive_message_bytes >= 1024, "grpc.max_receive_message_bytes", "must be >= 1024")
        _check(self.max_send_message_bytes >= 1024, "grpc.max_send_message_bytes", "must be >= 1024")
        for key in ("keepalive_time_s", "keepalive_timeout_s", "min_client_ping_interval_s"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value > 0, f"grpc.{key}", f"must be a positive number, got {value}")
        _check(math.isfinite(self.grace_s) and self.grace_s >= 0, "grpc.grace_s", "must be >= 0")
        _check(self.max_concurrent_streams >= 1, "grpc.max_concurrent_streams", "must be >= 1")
        _check(self.max_concurrent_rpcs >= 1, "grpc.max_concurrent_rpcs", "must be >= 1")
        _check(self.max_connections >= 1, "grpc.max_connections", "must be >= 1")
        for key in (
            "handshake_timeout_s",
            "max_connection_idle_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "stream_idle_timeout_s",
        ):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, f"grpc.{key}", f"must be a number >= 0, got {value}")
        _check(self.handshake_timeout_s > 0, "grpc.handshake_timeout_s", "must be > 0")
        _check(4096 <= self.stream_window_bytes <= 1 << 30, "grpc.stream_window_bytes", "must be in [4096, 1073741824]")
        _check(self.stream_max_in_flight >= 1, "grpc.stream_max_in_flight", "must be >= 1")
        _check(self.client_max_in_flight >= 1, "grpc.client_max_in_flight", "must be >= 1")
        _check(self.max_frames_in_flight >= 1, "grpc.max_frames_in_flight", "must be >= 1")
        _check(
            math.isfinite(self.target_loop_lag_ms) and self.target_loop_lag_ms >= 0,
            "grpc.target_loop_lag_ms",
            "must be a number >= 0",
        )
        if self.health_port is not None:
            _check(0 <= self.health_port <= 65535, "grpc.health_port", f"must be in [0, 65535], got {self.health_port}")
            _check(
                self.health_port == 0 or self.health_port != self.port, "grpc.health_port", "must differ from grpc.port"
            )


@dataclass(frozen=True)
class BatchingConfig:
    """The dynamic batcher in front of each model+mode."""

    # Frames of the same model+mode that may run in one tail call.
    max_batch_size: int = 8
    # How long the first frame of a batch may wait for company (0 = take only what is already queued).
    max_wait_us: int = 0
    # Frames waiting per model+mode; beyond it a frame is refused with RESOURCE_EXHAUSTED (Overloaded).
    queue_capacity: int = 256
    # Tail batches running at once per model+mode.
    workers_per_mode: int = 1
    # Threads that run tail batches (shared by all models and modes).
    executor_threads: int = 2
    # Run a frame's tail directly on the event loop (no queue, no thread hop) when nothing else of its
    # model+mode is queued or running and that tail's recent time is at most this many microseconds.
    # Saves ~0.3 ms per frame for cheap tails; 0 = always use the queue and the executor.
    inline_tail_max_us: int = 500
    # ... but only while tails keep the server less busy than this (tail seconds per second over the last 50 ms);
    # above it a tail on an executor thread beside the loop is worth more than the saved hop.
    inline_max_load: float = 0.25

    def __post_init__(self) -> None:
        _check(1 <= self.max_batch_size <= 4096, "batching.max_batch_size", "must be in [1, 4096]")
        _check(0 <= self.max_wait_us <= 10_000_000, "batching.max_wait_us", "must be in [0, 10000000]")
        _check(self.queue_capacity >= 1, "batching.queue_capacity", "must be >= 1")
        _check(1 <= self.workers_per_mode <= 64, "batching.workers_per_mode", "must be in [1, 64]")
        _check(1 <= self.executor_threads <= 256, "batching.executor_threads", "must be in [1, 256]")
        _check(0 <= self.inline_tail_max_us <= 1_000_000, "batching.inline_tail_max_us", "must be in [0, 1000000]")
        _check(0.0 <= self.inline_max_load <= 64.0, "batching.inline_max_load", "must be in [0, 64]")


@dataclass(frozen=True)
class BackendConfig:
    """Which engine runs the model tails, and its settings."""

    # onnxruntime | torch | fpga-emu | fpga | null (a zero-cost tail, for measuring serving overhead)
    name: str = "onnxruntime"
    # auto = CUDA when available, else CPU.
    device: str = "auto"
    # Threads inside one tail call (ONNX Runtime intra-op, torch.set_num_threads); 0 = the library's default.
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Backend-specific settings (e.g. the FPGA platform), passed through untouched.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "backend.name", "must not be empty")
        _check(self.device in BACKEND_DEVICES, "backend.device", f"must be one of {', '.join(BACKEND_DEVICES)}")
        _check(0 <= self.intra_op_threads <= 1024, "backend.intra_op_threads", "must be in [0, 1024]")
        _check(0 <= self.inter_op_threads <= 1024, "backend.inter_op_threads", "must be in [0, 1024]")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics over HTTP (off unless a port is given)."""

    port: int | None = None
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.port is not None:
            _check(0 <= self.port <= 65535, "metrics.port", f"must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class TlsConfig:
    """Transport security: TLS with ``cert`` and ``key`` (PEM); with ``client_ca`` also mTLS, client certificates
    verified against that CA bundle (required unless ``require_client_cert = false``). Off when no cert is given."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    require_client_cert: bool = True

    def __post_init__(self) -> None:
        _check((self.cert is None) == (self.key is None), "tls.cert", "tls.cert and tls.key go together")
        _check(self.client_ca is None or self.cert is not None, "tls.client_ca", "needs tls.cert and tls.key")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class AuthConfig:
    """Per-device authentication, authorization and limits (see :mod:`slimsplit.server.security`).

    With ``devices_file`` every call except the health service needs a device's bearer token; with mTLS the token
    must belong to the device of the client certificate. The limits here apply to every device whose entry in the
    devices file does not set its own (0 = no limit).

    With several serving processes (``[server] workers``) every limit here and in the devices file holds **per
    worker**: each worker has its own :class:`~slimsplit.server.security.Guard`. A device's connection is served by
    one worker for its whole life (the kernel picks the worker when it connects), so a device with one channel (what
    the edge client opens) gets exactly its limit; only a device that opens several connections can reach up to
    ``workers`` times it. Dividing the limits by the worker count would instead give every one-channel device a
    fraction of what it was granted."""

    devices_file: Path | None = None
    frames_per_s: float = 0.0
    bytes_per_s: float = 0.0
    max_streams: int = 0
    # Seconds of the rate a device may send at once (the token buckets' depth).
    burst_s: float = 1.0
    # How often the devices file is checked for changes (SIGHUP reloads it at once).
    reload_poll_s: float = 0.5
    # Authentication failures logged per second (at most ``audit_burst`` at once); the rest are counted.
    audit_lines_per_s: float = 5.0
    audit_burst: int = 20
    # Device ids that get their own metrics label; later ones (mTLS without a devices file) share "_other".
    max_device_labels: int = 1000

    def __post_init__(self) -> None:
        for key in ("frames_per_s", "bytes_per_s"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, f"auth.{key}", f"must be a number >= 0, got {value}")
        _check(self.max_streams >= 0, "auth.max_streams", f"must be >= 0, got {self.max_streams}")
        _check(math.isfinite(self.burst_s) and self.burst_s > 0, "auth.burst_s", "must be a number > 0")
        _check(
            math.isfinite(self.reload_poll_s) and 0.05 <= self.reload_poll_s <= 3600,
            "auth.reload_poll_s",
            "must be in [0.05, 3600]",
        )
        _check(
            math.isfinite(self.audit_lines_per_s) and self.audit_lines_per_s > 0,
            "auth.audit_lines_per_s",
            "must be > 0",
        )
        _check(self.audit_burst >= 1, "auth.audit_burst", "must be >= 1")
        _check(self.max_device_labels >= 1, "auth.max_device_labels", "must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.devices_file is not None


@dataclass(frozen=True)
class WorkersConfig:
    """The serving processes (``[server]`` in the TOML file): how many, and how the supervisor restarts them.

    With more than one, a supervisor (:mod:`slimsplit.server.workers`) starts that many processes that each serve
    ``grpc.port`` (``SO_REUSEPORT``: the kernel spreads new connections over them) with their own backend; it
    serves the metrics (summed over the workers) and the health port itself, restarts a worker that dies and
    drains them all on SIGTERM. 1 = a single process, no supervisor."""

    # 0 = one per core this process may run on (its CPU affinity and cgroup quota), or one per GPU when the tails
    # run on GPUs (each worker then sees one GPU).
    workers: int = 0
    # More than restart_limit restarts within restart_window_s: the supervisor gives up (stops every worker, exit 1).
    restart_limit: int = 5
    restart_window_s: float = 60.0
    # A dead worker is started again after this, doubled for each restart of it within the window (at most 30 s).
    restart_backoff_s: float = 0.5
    # A worker that does not serve within this long after its start is killed (and counts as a failed start).
    start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _check(0 <= self.workers <= 1024, "server.workers", f"must be in [0, 1024], got {self.workers}")
        _check(self.restart_limit >= 0, "server.restart_limit", "must be >= 0")
        for key in ("restart_window_s", "restart_backoff_s", "start_timeout_s"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, f"server.{key}", f"must be a number >= 0, got {value}")
        _check(self.start_timeout_s > 0, "server.start_timeout_s", "must be > 0")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``slimsplit-server`` needs. ``models`` empty = the shipped default bundle."""

    models: tuple[Path, ...] = ()
    default_top_k: int = 5
    log_level: str = "info"
    # Warnings and errors logged per second at most (``log_burst`` at once); the rest are counted, not written.
    log_lines_per_s: float = 10.0
    log_burst: int = 50
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    server: WorkersConfig = field(default_factory=WorkersConfig)

    def __post_init__(self) -> None:
        _check(1 <= self.default_top_k <= 1000, "default_top_k", "must be in [1, 1000]")
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        _check(
            math.isfinite(self.log_lines_per_s) and self.log_lines_per_s > 0, "log_lines_per_s", "must be a number > 0"
        )
        _check(self.log_burst >= 1, "log_burst", "must be >= 1")

    def model_paths(self) -> tuple[Path, ...]:
        """The folders to load; the shipped default bundle when none are configured."""
        if self.models:
            return self.models
        from slimsplit.bundle import default_bundle_path

        return (default_bundle_path(),)


# ---------------------------------------------------------------------------------------------- loading


def config_from_mapping(raw: Mapping[str, Any]) -> ServerConfig:
    """Build a :class:`ServerConfig` from nested mappings (a parsed TOML document)."""
    return settings.from_mapping(ServerConfig, raw)


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Defaults, then the TOML file at ``path`` (if any; relative model paths in it are relative to the file, not
    to the working directory), then ``overrides`` (nested like the file)."""
    return settings.load(ServerConfig, path, overrides)


def config_to_toml(config: ServerConfig) -> str:
    """The effective configuration as a TOML document (what ``--print-config`` shows)."""
    return settings.to_toml(config)
