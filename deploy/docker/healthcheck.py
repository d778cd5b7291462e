"""Container health check for slimsplit-server: ask the standard gRPC health service, exit 0 when SERVING.

Docker's HEALTHCHECK runs it inside the container (``python /opt/slimsplit/healthcheck.py``); it needs only
``grpcio`` and ``grpcio-health-checking`` (both in the ``server`` extra) and imports nothing of slimsplit, so a
check costs one short-lived interpreter, not a server import. Exit status: 0 = SERVING, 1 = anything else
(not serving, unknown service, no answer within the timeout), 2 = bad arguments.

Settings come from flags or the environment (flags win)::

    SLIMSPLIT_HEALTH_ADDRESS   host:port to dial          (default 127.0.0.1:50051)
    SLIMSPLIT_HEALTH_SERVICE   health service to ask for  (default slimsplit.v1.SplitInference; "" = the server)
    SLIMSPLIT_HEALTH_TIMEOUT   seconds                    (default 3)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The name the server registers with its health service (slimsplit.protocol.SERVICE_NAME;
# tests/test_deploy.py checks the two agree). Not imported: a health check must stay cheap.
SERVICE_NAME = "slimsplit.v1.SplitInference"
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 3.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="healthcheck", description="Exit 0 when the slimsplit server's gRPC health service says SERVING."
    )
    p.add_argument(
        "--address",
        default=os.environ.get("SLIMSPLIT_HEALTH_ADDRESS", DEFAULT_ADDRESS),
        help="host:port of the server (default: %(default)s)",
    )
    p.add_argument(
        "--service",
        default=os.environ.get("SLIMSPLIT_HEALTH_SERVICE", SERVICE_NAME),
        help="health service name; '' asks about the whole server (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        # a string default goes through type=float too: a bad value is a usage error, not a traceback
        default=os.environ.get("SLIMSPLIT_HEALTH_TIMEOUT", str(DEFAULT_TIMEOUT_S)),
        help="seconds to wait for the answer (default: %(default)s)",
    )
    return p


def check(address: str, service: str, timeout_s: float) -> tuple[bool, str]:
    """Ask ``address`` about ``service``; return (serving, a one-line description)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "ERROR"
            return False, f"{address} {service or '(server)'}: {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address} {service or '(server)'}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        print(f"healthcheck: --timeout must be > 0, got {args.timeout}", file=sys.stderr)
        return 2
    serving, line = check(args.address, args.service, args.timeout)
    print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
