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

    [metrics]
    port = 9464

Every key is checked: an unknown key or a value of the wrong type is a :class:`~slimsplit.errors.ConfigError`
that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from slimsplit.codec.header import MAX_HEADER_SIZE, MAX_PAYLOAD
from slimsplit.errors import ConfigError

DEFAULT_PORT = 50051
# Room for a FeatureFrame's other fields (model and mode names, ids, timestamps) around the encoded features.
ENVELOPE_BYTES = 16 << 10
# The largest message the server accepts by default: the largest frame the codec can produce (header + a
# payload of at most 65535 bytes) plus the envelope. gRPC refuses anything larger with RESOURCE_EXHAUSTED
# before it reaches a handler, so a hostile client cannot make the server buffer megabytes.
DEFAULT_MAX_RECEIVE_BYTES = MAX_HEADER_SIZE + MAX_PAYLOAD + ENVELOPE_BYTES
BACKEND_DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}", key=key)


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
    max_concurrent_streams: int = 256
    # Frames of one InferStream being served at once; reading from the stream pauses beyond it (flow control).
    stream_max_in_flight: int = 32
    # On SIGTERM/SIGINT: seconds to finish in-flight frames before open calls are cancelled.
    grace_s: float = 5.0
    reflection: bool = True

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
        _check(self.stream_max_in_flight >= 1, "grpc.stream_max_in_flight", "must be >= 1")


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
class ServerConfig:
    """Everything ``slimsplit-server`` needs. ``models`` empty = the shipped default bundle."""

    models: tuple[Path, ...] = ()
    default_top_k: int = 5
    log_level: str = "info"
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _check(1 <= self.default_top_k <= 1000, "default_top_k", "must be in [1, 1000]")
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")

    def model_paths(self) -> tuple[Path, ...]:
        """The folders to load; the shipped default bundle when none are configured."""
        if self.models:
            return self.models
        from slimsplit.bundle import default_bundle_path

        return (default_bundle_path(),)


# ---------------------------------------------------------------------------------------------- loading

T = TypeVar("T")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one TOML (or override) value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}", key=key)
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key=key)
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key}: expected a path string, got {value!r}", key=key)
        return Path(value)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str | Path):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key=key)
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}", key=key)
        return dict(value)
    raise ConfigError(f"{key}: unsupported configuration type {tp!r}", key=key)  # pragma: no cover


def _build(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown configuration key {dotted!r} (known here: {known})", key=dotted)
        kwargs[key] = _convert(value, hints[key], dotted)
    return cls(**kwargs)


def config_from_mapping(raw: Mapping[str, Any]) -> ServerConfig:
    """Build a :class:`ServerConfig` from nested mappings (a parsed TOML document)."""
    return _build(ServerConfig, raw)


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (nested like the file)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist", path=str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from exc
        base = path.parent
        if "models" in raw:
            models = raw["models"]
            models = [models] if isinstance(models, str) else models
            if isinstance(models, list):
                # Relative model paths in a config file are relative to the file, not to the working
                # directory.
                raw["models"] = [
                    str(base / m) if isinstance(m, str) and not Path(m).is_absolute() else m for m in models
                ]
    if overrides:
        raw = _merge(raw, overrides)
    return config_from_mapping(raw)


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_toml(config: ServerConfig) -> str:
    """The effective configuration as a TOML document (what ``--print-config`` shows)."""

    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, Path | str):
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, tuple | list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        raise TypeError(type(value))  # pragma: no cover

    top: list[str] = []
    tables: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines = [f"[{f.name}]"]
            sub_tables: list[str] = []
            for sf in dataclasses.fields(value):
                sv = getattr(value, sf.name)
                if sv is None:
                    lines.append(f"# {sf.name} = (unset)")
                elif isinstance(sv, Mapping):
                    sub_tables.append(f"[{f.name}.{sf.name}]")
                    sub_tables.extend(f"{k} = {fmt(v)}" for k, v in sv.items())
                else:
                    lines.append(f"{sf.name} = {fmt(sv)}")
            tables.append("\n".join(lines + sub_tables))
        else:
            top.append(f"{f.name} = {fmt(value)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"
