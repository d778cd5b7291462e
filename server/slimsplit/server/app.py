"""Assembling and running the gRPC server: service, health, reflection, metrics, security, graceful shutdown.

* :func:`start_server` - ``async``: load the bundles, bind, start; returns a :class:`RunningServer`.
* :func:`serve` - ``async``: start, then run until SIGTERM/SIGINT and shut down gracefully (the CLI's main
  loop); :func:`run_server` runs it and turns its outcome into the CLI's exit status.
* :class:`ServerThread` - a server on its own event loop in a background thread, for synchronous callers
  (tests, benchmarks, the edge demo): ``with ServerThread(config) as srv: ... srv.port ...``.

Security: TLS/mTLS from ``[tls]``; with ``[auth] devices_file`` (or mTLS) the
:class:`~slimsplit.server.security.AuthInterceptor` authenticates every call but the health service's, and the
devices file is read again on SIGHUP and when it changes on disk (checked every ``auth.reload_poll_s``). Plaintext is
refused on an address other than loopback unless ``grpc.insecure`` is set (then a warning says so at start).
``grpc.health_port`` adds a plaintext port that serves only the health service, for probes that cannot do TLS.

Graceful shutdown (:meth:`RunningServer.stop`): health turns NOT_SERVING, new calls get UNAVAILABLE, open
streams answer the frames they already read and end with UNAVAILABLE, in-flight unary calls finish within the
grace period, then the batchers and tails are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # not in grpc-stubs
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.protocol import SERVICE_NAME
from slimsplit.server.backends.base import Backend
from slimsplit.server.config import GrpcConfig, ServerConfig, TlsConfig
from slimsplit.server.core import InferenceCore
from slimsplit.server.grpc_service import SplitInferenceService, add_to_server, describe_response
from slimsplit.server.logs import LogRateLimit
from slimsplit.server.metrics import ServerMetrics
from slimsplit.server.parsing import UndecodableRequests
from slimsplit.server.security.guard import Guard
from slimsplit.server.security.interceptor import AuthInterceptor

log = logging.getLogger("slimsplit.server")

T = TypeVar("T")


def core_receive_limit(cfg: GrpcConfig) -> int:
    """The message size beyond which gRPC itself refuses a message (and ends its stream at once)."""
    return max(2 * cfg.max_receive_message_bytes, 256 << 10)


def grpc_server_options(cfg: GrpcConfig, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel arguments of the server: message limits, keepalive, stream limits. ``reuse_port``: share the port
    with the other workers of a pool (``SO_REUSEPORT``)."""
    options = [
        # The service checks the configured limit itself (a clear RESOURCE_EXHAUSTED, and a stream's earlier frames
        # answered first); gRPC refuses, and ends a stream at once, only beyond twice that or 256 KiB: what one call
        # can make the server buffer (with grpc.max_concurrent_rpcs calls: 256 MiB at most by default).
        ("grpc.max_receive_message_length", core_receive_limit(cfg)),
        ("grpc.max_send_message_length", cfg.max_send_message_bytes),
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Client pings closer together than this (with no data) are "strikes"; too many end the connection.
        ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
        # Never share a port with another process (a second server on the same port must fail to bind), unless this
        # is one worker of a pool (slimsplit.server.workers), whose supervisor checked that the port was free.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # A fixed stream window: with bandwidth-delay probing, gRPC grows it to megabytes per stream, which a client
        # that writes and never reads makes the server hold (measured: +250 MB for 50 such streams).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", cfg.stream_window_bytes),
        ("grpc.max_allowed_incoming_connections", cfg.max_connections),
        ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_s * 1000)),
    ]
    for key, seconds in (
        ("grpc.max_connection_idle_ms", cfg.max_connection_idle_s),
        ("grpc.max_connection_age_ms", cfg.max_connection_age_s),
    ):
        if seconds > 0:
            options.append((key, int(seconds * 1000)))
    if cfg.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000)))
    return options


def _read_pem(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}", key=key, path=str(path)) from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{key}: {path} is not a PEM file", key=key, path=str(path))
    return data


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """gRPC's TLS credentials for ``tls`` (mTLS with ``client_ca``). The files are read and checked first (a
    certificate that does not match its key, a CA file that holds no certificate): a :class:`ConfigError` naming
    the file, not a failure at the first handshake."""
    assert tls.cert is not None and tls.key is not None
    cert = _read_pem(tls.cert, "tls.cert")
    key = _read_pem(tls.key, "tls.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        why = "does not match the key" if "MISMATCH" in str(exc) else f"cannot be used with the key ({exc})"
        raise ConfigError(
            f"tls.cert: the certificate in {tls.cert} {why} in {tls.key}", key="tls.cert", path=str(tls.cert)
        ) from exc
    client_ca = None
    if tls.client_ca is not None:
        client_ca = _read_pem(tls.client_ca, "tls.client_ca")
        try:
            context.load_verify_locations(cafile=str(tls.client_ca))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"tls.client_ca: {tls.client_ca} holds no usable CA certificate ({exc})",
                key="tls.client_ca",
                path=str(tls.client_ca),
            ) from exc
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None and tls.require_client_cert,
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): the only place plaintext is allowed by default."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_transport_policy(config: ServerConfig) -> None:
    """Refuse plaintext on an address other than loopback unless ``grpc.insecure`` is set (ConfigError naming the
    address and the ways out)."""
    host = config.grpc.host
    if config.tls.enabled or config.grpc.insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve plaintext on {host}: frames and tokens would cross the network unencrypted. Give "
        "--tls-cert and --tls-key ([tls] in the configuration file), or --insecure ([grpc] insecure = true) to "
        "accept that",
        key="grpc.insecure",
    )


def security_summary(config: ServerConfig, guard: Guard | None) -> str:
    """One phrase for the start-up line: the transport and how devices are identified."""
    transport = "plaintext"
    if config.tls.enabled:
        transport = "mTLS" if config.tls.client_ca is not None and config.tls.require_client_cert else "TLS"
    elif config.grpc.insecure and not is_loopback(config.grpc.host):
        transport = "PLAINTEXT (--insecure)"
    if guard is None:
        return f"{transport}, no device authentication"
    if guard.devices_file is not None:
        return f"{transport}, device tokens ({len(guard.table)} device(s) in {guard.devices_file})"
    return f"{transport}, devices identified by their client certificates"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server. ``port`` is the bound port (useful when the config asked for port 0)."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int
    core: InferenceCore
    service: SplitInferenceService
    health: Any  # grpc_health.v1.health.aio.HealthServicer
    metrics: ServerMetrics
    metrics_port: int | None = None
    log_limit: LogRateLimit | None = None
    guard: Guard | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    _metrics_http: Any = None
    _watcher: asyncio.Task[None] | None = None
    _stopped: bool = False

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        return format_address(self.config.grpc.host, self.port)

    async def reload_devices(self) -> bool:
        """Read the devices file again (SIGHUP does this); False when there is none or it is bad (then the devices
        known before stay in force, and the error is logged)."""
        if self.guard is None:
            return False
        return await self.guard.reload()

    def watch_devices(self) -> None:
        """Reload the devices file whenever it changes on disk (checked every ``auth.reload_poll_s``)."""
        guard = self.guard
        if guard is None or guard.devices_file is None or self._watcher is not None:
            return

        async def watch() -> None:
            while True:
                await asyncio.sleep(self.config.auth.reload_poll_s)
                if guard.changed():
                    await guard.reload()

        self._watcher = asyncio.get_running_loop().create_task(watch(), name="slimsplit-devices-watch")

    async def stop(self, grace: float | None = None) -> None:
        """Shut down gracefully (see the module docstring). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grpc.grace_s if grace is None else grace
        log.info("shutting down (grace %.1f s)", grace)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.health.enter_graceful_shutdown()
        self.service.begin_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.core.aclose()
        if self.log_limit is not None:
            self.log_limit.detach()
        if self._metrics_http is not None:
            await _stop_metrics_http(self._metrics_http)
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def start_server(
    config: ServerConfig,
    *,
    backend: Backend | None = None,
    core: InferenceCore | None = None,
    registry: CollectorRegistry | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Bind ``config.grpc.host:port`` (and the metrics port), load the bundles (unless ``core`` is given) and start
    serving.

    The ports are bound first, so a busy one fails before the bundles load: a :class:`ConfigError` naming the
    address and the flag. On any failure everything already bound or started is released again.
    ``backend`` replaces the configured one (tests inject slow or failing backends); ``registry`` receives the
    Prometheus metrics (a fresh one by default). ``reuse_port``: bind with ``SO_REUSEPORT``, as one worker of a pool
    (:mod:`slimsplit.server.workers`).
    """
    metrics = ServerMetrics(registry)
    cfg = config.grpc
    check_transport_policy(config)
    credentials = server_credentials(config.tls) if config.tls.enabled else None
    mtls = config.tls.enabled and config.tls.client_ca is not None and config.tls.require_client_cert
    guard: Guard | None = None
    if config.auth.enabled or mtls:
        guard = Guard(config.auth, mtls=mtls, metrics=metrics)
        guard.load()
    interceptors: list[Any] = [UndecodableRequests()]
    if guard is not None:
        interceptors.append(AuthInterceptor(guard))
    server = grpc.aio.server(
        options=grpc_server_options(cfg, reuse_port=reuse_port),
        interceptors=interceptors,
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
    )
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    httpd: Any = None
    try:
        address = format_address(cfg.host, cfg.port)

        def bind() -> int:
            # a plain socket tries first: gRPC's own error says only that it failed, and logs it to stderr as well
            why = bind_problem(cfg.host, cfg.port, reuse_port=reuse_port) if cfg.port else None
            if why is not None:
                raise cannot_listen(address, why)
            try:
                if credentials is not None:
                    return server.add_secure_port(address, credentials)
                return server.add_insecure_port(address)
            except RuntimeError as exc:
                why = bind_problem(cfg.host, cfg.port, reuse_port=reuse_port)
                raise cannot_listen(address, why or f"gRPC: {exc}") from exc

        # Alone, the port is bound first (a busy one fails before the bundles load); as a worker of a pool (whose
        # supervisor checked the port), only once the bundles are loaded: the kernel gives a bound worker new
        # connections at once, which would wait for the loading otherwise.
        port = 0 if reuse_port else bind()
        if config.metrics.port is not None:
            httpd = start_metrics_http(config.metrics.host, config.metrics.port, metrics.registry)
        if core is None:
            core = await asyncio.to_thread(InferenceCore.from_config, config, backend=backend, metrics=metrics)
        elif core.metrics is None:
            core.metrics = metrics
        _check_describe_fits(core, cfg)
        service = SplitInferenceService(
            core,
            stream_max_in_flight=cfg.stream_max_in_flight,
            max_message_bytes=cfg.max_receive_message_bytes,
            stream_idle_timeout_s=cfg.stream_idle_timeout_s,
            client_max_in_flight=cfg.client_max_in_flight,
            max_frames_in_flight=cfg.max_frames_in_flight,
            target_loop_lag_ms=cfg.target_loop_lag_ms,
        )
        add_to_server(service, server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if cfg.reflection:
            names = (SERVICE_NAME, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        if cfg.health_port is not None:
            health_server, health_port = _health_only_server(health, cfg.host, cfg.health_port)
            await health_server.start()
        if reuse_port:
            port = bind()
        await server.start()
        service.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        # grpc.aio keeps a bound but never started server's listening socket until the object is collected (after
        # the loop closed, with errors): started with no service yet and stopped at once, it lets go of it now
        with contextlib.suppress(Exception):
            await server.start()
        await server.stop(None)
        if health_server is not None:
            with contextlib.suppress(Exception):
                await health_server.start()
            await health_server.stop(None)
        if httpd is not None:
            await _stop_metrics_http(httpd)
        if core is not None:
            await core.aclose()
        raise
    log_limit = LogRateLimit(config.log_lines_per_s, config.log_burst, metrics.log_dropped.inc)
    running = RunningServer(
        config=config,
        server=server,
        port=port,
        core=core,
        service=service,
        health=health,
        metrics=metrics,
        guard=guard,
        health_server=health_server,
        health_port=health_port,
        log_limit=log_limit,
    )
    log_limit.attach()
    if httpd is not None:
        running.metrics_port = int(httpd.server_port)
        running._metrics_http = httpd
        log.info("metrics on http://%s/metrics", format_address(config.metrics.host, running.metrics_port))
    if health_port is not None:
        log.info("health service (only) in plaintext on %s", format_address(cfg.host, health_port))
    models = ", ".join(f"{m.manifest.name}:{m.manifest.version}" for m in core.models())
    security = security_summary(config, guard)
    if cfg.insecure and not config.tls.enabled and not is_loopback(cfg.host):
        log.warning(
            "serving PLAINTEXT on %s (--insecure): anyone on the network path can read and alter frames and tokens",
            running.address,
        )
    log.info("serving %s on %s (%s) with backend %s", models, running.address, security, core.backend_name)
    running.watch_devices()
    return running


def _check_describe_fits(core: InferenceCore, cfg: GrpcConfig) -> None:
    """Refuse to start when the Describe answer (every manifest) would not fit the send limit: a server that says
    SERVING and then fails every Describe helps nobody."""
    size = describe_response(core).ByteSize()
    if size > cfg.max_send_message_bytes:
        raise ConfigError(
            f"the Describe answer of the models served is {size} bytes, more than grpc.max_send_message_bytes "
            f"({cfg.max_send_message_bytes}): raise it or serve fewer models",
            key="grpc.max_send_message_bytes",
        )


def _health_only_server(health: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with nothing but ``health`` (the main server's health servicer, so both report the same
    status) on ``host:port``."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server, bind_health_port(server, host, port)


def bind_health_port(server: Any, host: str, port: int) -> int:
    """Add ``--health-port``'s plaintext port to ``server`` (a ``grpc`` or ``grpc.aio`` server); the port bound, or
    a ConfigError naming the flag and why."""
    address = format_address(host, port)
    why = bind_problem(host, port) if port else None
    if why is not None:
        raise cannot_listen(address, why, flag="--health-port")
    try:
        return int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise cannot_listen(address, f"gRPC: {exc}", flag="--health-port") from exc


def bind_problem(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why ``host:port`` cannot be bound, in the system's words, or None when a plain socket binds it on one of the
    addresses the host resolves to (gRPC listens on every one it can bind, with SO_REUSEADDR, and fails when it
    binds none). ``reuse_port``: with ``SO_REUSEPORT`` too (beside the other workers of a pool)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host!r} ({exc.strerror or exc})"
    problems: list[str] = []
    for family, kind, proto, _name, sockaddr in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # no such address family here
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                problems.append((exc.strerror or str(exc)).lower())
            else:
                return None
    return problems[0] if problems else None


def cannot_listen(address: str, why: str, flag: str = "--host/--port") -> ConfigError:
    return ConfigError(f"cannot listen on {address} ({flag}, [grpc] in the configuration file): {why}", address=address)


def start_metrics_http(host: str, port: int, registry: CollectorRegistry) -> Any:
    """Prometheus' HTTP exporter on ``host:port`` (its own thread); ConfigError naming the port if it cannot bind."""
    from prometheus_client import start_http_server

    address = format_address(host, port)
    try:
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise ConfigError(
            f"cannot serve metrics on {address} (--metrics-port, [metrics] in the configuration file): {why}",
            address=address,
        ) from None
    return httpd


async def _stop_metrics_http(httpd: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, httpd.shutdown)
    httpd.server_close()


async def serve(
    config: ServerConfig,
    *,
    backend: Backend | None = None,
    ready: Callable[[RunningServer], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(config, backend=backend, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        log.info("SIGHUP: reloading the devices file")
        task = loop.create_task(running.reload_devices())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, reload)
        installed.append(signal.SIGHUP)
    if ready is not None:
        ready(running)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await running.stop()


def run_server(
    config: ServerConfig, *, ready: Callable[[RunningServer], None] | None = None, reuse_port: bool = False
) -> int:
    """:func:`serve` until SIGTERM/SIGINT; the exit status of ``slimsplit-server`` (see :func:`exit_status`)."""
    return exit_status(lambda: asyncio.run(serve(config, ready=ready, reuse_port=reuse_port)) or 0)


def exit_status(run: Callable[[], int]) -> int:
    """``run()``'s exit status, or that of the error it raised, as ``slimsplit-server``'s epilog lists them (the
    error written to stderr): 2 a ConfigError (e.g. a busy --port or --metrics-port, found at start: a usage error
    all the same), 1 another SlimsplitError (a bundle or backend that failed to load), 130 a second Ctrl-C during
    shutdown."""
    import sys

    try:
        return run()
    except ConfigError as exc:
        print(f"slimsplit-server: {exc}", file=sys.stderr)
        return 2
    except SlimsplitError as exc:
        print(f"slimsplit-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class ServerThread:
    """A server on its own event loop in a background thread, for synchronous code.

    >>> with ServerThread(replace(config, grpc=replace(config.grpc, port=0))) as srv:
    ...     channel = grpc.insecure_channel(srv.address)
    """

    def __init__(self, config: ServerConfig, *, backend: Backend | None = None) -> None:
        self.config = config
        self._backend = backend
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace: float | None = None
        self._running: RunningServer | None = None
        self._thread = threading.Thread(target=self._main, name="slimsplit-server", daemon=True)

    # -------------------------------------------------------------------------------- thread side
    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as exc:  # reported to start() / stop()
            if self._error is None:
                self._error = exc
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._running = await start_server(self.config, backend=self._backend)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self._running.stop(self._grace)

    # -------------------------------------------------------------------------------- caller side
    def start(self, timeout: float = 120.0) -> ServerThread:
        """Start and wait until the server listens; re-raises a start-up error (bad bundle, busy port...)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    @property
    def running(self) -> RunningServer:
        if self._running is None:
            raise RuntimeError("the server is not running; call start() first")
        return self._running

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def core(self) -> InferenceCore:
        return self.running.core

    def reload_devices(self, timeout: float = 30.0) -> bool:
        """Read the devices file again, as SIGHUP does (see :meth:`RunningServer.reload_devices`)."""
        return self.call(self.running.reload_devices, timeout)

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = 60.0) -> T:
        """Run ``fn()`` (a coroutine function) on the server's event loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the server is not running")

        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        """Shut down gracefully and join the thread. Idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            self._grace = grace
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the server thread did not stop within {timeout} s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(config: ServerConfig, *, backend: Backend | None = None, port: int | None = 0) -> ServerThread:
    """Start a :class:`ServerThread` (on a free port unless ``port`` is given); return it once it listens."""
    if port is not None:
        config = replace(config, grpc=replace(config.grpc, port=port))
    return ServerThread(config, backend=backend).start()
