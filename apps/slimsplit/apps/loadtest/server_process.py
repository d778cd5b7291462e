"""A slimsplit server for a load test, started through the server's own entry point.

``python -m slimsplit.server.cli`` (what the ``slimsplit-server`` script runs) in a child process, serving the test's
bundle with its backend and batch size on a free 127.0.0.1 port; with :class:`ServerCredentials`, over TLS + mTLS
with a devices file. It is ready once its gRPC health check (asked over TLS when it serves TLS) answers ``SERVING``
for the service, and stopped at the end with SIGTERM (the server's graceful shutdown), killed if it does not exit in
time; it runs in a session of its own, so a Ctrl-C at the terminal reaches the load tester only (which stops its
clients, then the server). Nothing of ``slimsplit.server`` is imported into the load tester but the devices file's
module (the development PKI writes the devices file with it). A server that exits before it is ready, or is not
ready in time, is an error that ends with the last lines of its stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import grpc

from slimsplit.apps.loadtest.security import ServerCredentials
from slimsplit.edge import cli_common
from slimsplit.edge.config import TlsSettings
from slimsplit.errors import ConfigError, SlimsplitError, Unavailable
from slimsplit.protocol import SERVICE_NAME

#: How long a server may take to load its bundle and answer its health check.
READY_TIMEOUT_S = 120.0
#: How long a server may take to shut down after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0
#: Attempts at a free port (another process may take the one picked before the server binds it).
PORT_ATTEMPTS = 3
_STDERR_LINES = 20
_POLL_S = 0.05


def check_server_extra() -> None:
    """ConfigError unless the server and its health-checking package are installed (nothing is imported)."""
    missing = [name for name in ("slimsplit.server", "grpc_health") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"starting a server needs the server extra (pip install 'slimsplit[server]'); missing: {', '.join(missing)}"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def server_command(
    bundle: Path,
    port: int,
    *,
    backend: str,
    max_batch_size: int,
    host: str = "127.0.0.1",
    credentials: ServerCredentials | None = None,
) -> list[str]:
    """The server's command line (this interpreter, so the same installation); with ``credentials``, TLS, mTLS
    and the devices file."""
    security = credentials.flags() if credentials is not None else []
    return [
        sys.executable,
        "-m",
        "slimsplit.server.cli",
        "--models",
        str(bundle),
        "--host",
        host,
        "--port",
        str(port),
        "--backend",
        backend,
        "--max-batch-size",
        str(max_batch_size),
        "--grace",
        "1",
        "--log-level",
        "warning",
        *security,
    ]


def probe_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """The channel credentials of a health check over TLS with ``tls`` (its CA; its certificate for mTLS)."""

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(tls.ca), read(tls.key), read(tls.cert))


class ServerProcess:
    """A running server process (``with ServerProcess.start(...) as server: ... server.address ...``)."""

    def __init__(self, argv: Sequence[str], address: str, probe: TlsSettings | None = None) -> None:
        self.argv = list(argv)
        self.address = address
        self.probe = probe  # the health check's TLS settings (None: plaintext)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - held open while the server runs
        # a session of its own: Ctrl-C at the terminal stops the load test (which then stops the server), not the
        # server under the clients' frames in flight
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,
        )

    @classmethod
    def start(
        cls,
        bundle: Path,
        *,
        backend: str = "onnxruntime",
        max_batch_size: int = 8,
        host: str = "127.0.0.1",
        ready_timeout_s: float = READY_TIMEOUT_S,
        credentials: ServerCredentials | None = None,
    ) -> ServerProcess:
        """Start a server (with ``credentials``: over TLS + mTLS with a devices file) and wait until it is ready.
        ConfigError when it refused its configuration or bundle (exit status 1 or 2), Unavailable when it crashed
        or was not ready within ``ready_timeout_s``."""
        check_server_extra()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port(host)
            argv = server_command(
                bundle, port, backend=backend, max_batch_size=max_batch_size, host=host, credentials=credentials
            )
            server = cls(argv, f"{host}:{port}", credentials.probe if credentials is not None else None)
            try:
                server.wait_ready(ready_timeout_s)
            except ConfigError:
                taken = "cannot listen on" in server.stderr_tail()  # the port was taken in between
                server.close()
                if taken and attempt < PORT_ATTEMPTS:
                    continue
                raise
            except BaseException:
                server.close()
                raise
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    def stderr_tail(self, lines: int = _STDERR_LINES) -> str:
        """The last ``lines`` lines the server wrote to stderr."""
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def with_stderr(self, message: str) -> str:
        tail = self.stderr_tail()
        return f"{message}; its stderr ends:\n{tail}" if tail else f"{message} (nothing on its stderr)"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the health check until it answers SERVING (see :meth:`start` for the errors)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # the server extra, checked by the caller

        deadline = time.monotonic() + timeout_s
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        if self.probe is not None:
            channel = grpc.secure_channel(self.address, probe_credentials(self.probe))
        else:
            channel = grpc.insecure_channel(self.address)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                code = self.process.poll()
                if code is not None:
                    message = self.with_stderr(f"slimsplit-server exited with status {code} before it was ready")
                    if code in (1, 2):
                        raise ConfigError(message)
                    raise Unavailable(message)
                try:
                    reply = stub.Check(request, timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet, or still loading its bundle
                if time.monotonic() > deadline:
                    raise Unavailable(
                        self.with_stderr(f"slimsplit-server at {self.address} was not ready within {timeout_s:g} s")
                    )
                time.sleep(_POLL_S)

    def exited(self) -> int | None:
        """The exit status when the server has exited (by itself: before :meth:`stop`), else ``None``."""
        return self.process.poll()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait (at most ``timeout_s``, then kill); the exit status. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """Stop the server and release its stderr file."""
        self.stop()
        self._stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_for_args(args: argparse.Namespace, bundle: Path, credentials: ServerCredentials | None) -> ServerProcess:
    """``--start-server``: a server for ``bundle`` with the run's ``--server-backend`` and ``--max-batch-size``."""
    return ServerProcess.start(
        bundle, backend=args.server_backend, max_batch_size=args.max_batch_size, credentials=credentials
    )


def start_failed(console: cli_common.Console, exc: SlimsplitError | OSError) -> int:
    """Say why the server did not start; the exit status: a usage problem when it refused its configuration or
    bundle (ConfigError), else the server's."""
    console.error(f"the server did not start: {exc}")
    return cli_common.EXIT_USAGE if isinstance(exc, ConfigError) else cli_common.EXIT_SERVER


__all__ = [
    "READY_TIMEOUT_S",
    "ServerProcess",
    "check_server_extra",
    "free_port",
    "probe_credentials",
    "server_command",
    "start_failed",
    "start_for_args",
]
