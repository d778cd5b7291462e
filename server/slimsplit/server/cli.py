"""``slimsplit-server``: serve model bundles over gRPC.

The flags override the TOML file given with ``--config``, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimsplit.errors import SlimsplitError
from slimsplit.protocol import DEFAULT_PORT
from slimsplit.server.config import (
    BACKEND_DEVICES,
    LOG_LEVELS,
    ServerConfig,
    config_to_toml,
    load_config,
)

_DESCRIPTION = """\
Serve the tails of slimsplit model bundles over gRPC: edge devices send the quantized bottleneck features of
each image (slimsplit-edge), this server decodes them, runs the rest of the model and answers with the top
classes and a timing breakdown.

With no --models, the bundle shipped with slimsplit is served.
"""

_EPILOG = """\
model folders (--models):
  a bundle folder            ./my_bundle/manifest.json
  a folder of bundles        ./bundles/<bundle>/manifest.json
  a model repository         ./models/<model>/<version>/manifest.json

examples:
  slimsplit-server                                   # the shipped bundle on 127.0.0.1:50051
  slimsplit-server --models ./models --host 0.0.0.0 --tls-cert server.crt --tls-key server.key \
      --tls-client-ca ca.crt --devices devices.toml  # every interface, mTLS and device tokens (SECURITY.md)
  slimsplit-server --backend torch --device cuda     # PyTorch tails on the GPU
  slimsplit-server --config server.toml --print-config
  slimsplit-server --workers 4 --metrics-port 9464   # 4 serving processes on one port, one metrics endpoint

  grpcurl -plaintext 127.0.0.1:50051 list            # reflection is on
  grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check

Plaintext is served on loopback only, unless --insecure is given. SIGHUP reloads the --devices file (so does
a change of the file): revoked devices' streams end at once, the others go on.

SIGTERM or Ctrl-C shuts down gracefully: in-flight frames are answered (within --grace seconds), then the
server exits.

--workers N (default: one per core, or one per GPU when the tails run on GPUs) serves the port from N processes
(SO_REUSEPORT: the kernel spreads new connections over them), each with its own backend, under a supervisor that
serves --metrics-port (summed over the workers) and --health-port, restarts a worker that dies (at most
[server] restart_limit times a minute, else it stops them all and exits 1) and drains them all on SIGTERM.
Per-device limits (--frames-per-s, --bytes-per-s, --max-streams, the devices file) and the in-flight limits hold
per worker: a device's channel is one connection, served by one worker. --workers 1 is a single process.

exit codes: 0 shut down by SIGTERM or Ctrl-C; 1 a bundle or backend failed to load; 2 a usage or configuration
error (a bad flag or file, a busy --port or --metrics-port); 130 a second Ctrl-C during shutdown.
"""


def build_parser() -> argparse.ArgumentParser:
    from slimsplit.server.backends.registry import backend_names

    p = argparse.ArgumentParser(
        prog="slimsplit-server",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file (flags override it)")
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="bundle folder(s) or model repository folder(s) to serve (default: the shipped bundle)",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    net.add_argument("--port", type=int, help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free port)")
    net.add_argument("--max-message-bytes", type=int, metavar="N", help="largest frame accepted (default ~80 KiB)")
    net.add_argument("--stream-in-flight", type=int, metavar="N", help="frames served at once per stream (default 32)")
    net.add_argument("--grace", type=float, metavar="SECONDS", help="shutdown grace period (default 5)")
    net.add_argument("--no-reflection", action="store_true", help="turn off gRPC server reflection")
    net.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="also serve the health service alone, in plaintext, on this port (for probes that cannot do TLS)",
    )
    tls = p.add_argument_group("tls")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate (chain): serve over TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="the server certificate's private key")
    tls.add_argument(
        "--tls-client-ca", type=Path, metavar="PEM", help="mTLS: require client certificates signed by this CA bundle"
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on an address other than loopback (refused otherwise: frames and tokens would cross "
        "the network unencrypted)",
    )
    auth = p.add_argument_group("devices")
    auth.add_argument(
        "--devices",
        type=Path,
        metavar="FILE",
        help="devices file (slimsplit-certs writes it): every call needs a device token; reloaded on SIGHUP and "
        "when it changes",
    )
    auth.add_argument("--frames-per-s", type=float, metavar="X", help="default limit per device (default 0 = none)")
    auth.add_argument("--bytes-per-s", type=float, metavar="X", help="default limit per device (default 0 = none)")
    auth.add_argument("--max-streams", type=int, metavar="N", help="open streams per device (default 0 = no limit)")
    be = p.add_argument_group("backend")
    be.add_argument("--backend", choices=backend_names(), help="engine that runs the tails (default onnxruntime)")
    be.add_argument("--device", choices=BACKEND_DEVICES, help="auto = CUDA when available, else CPU (default auto)")
    be.add_argument("--threads", type=int, metavar="N", help="threads per tail call (default 1; 0 = library default)")
    ba = p.add_argument_group("batching")
    ba.add_argument("--max-batch-size", type=int, metavar="N", help="frames per tail call (default 8)")
    ba.add_argument("--max-wait-us", type=int, metavar="US", help="wait for a fuller batch, microseconds (default 0)")
    ba.add_argument(
        "--queue-capacity",
        type=int,
        metavar="N",
        help="waiting frames per mode before refusing (default 256)",
    )
    ba.add_argument("--tail-threads", type=int, metavar="N", help="threads running tail batches (default 2)")
    ba.add_argument(
        "--inline-tail-max-us",
        type=int,
        metavar="US",
        help="run tails this cheap on the event loop when their mode is idle; 0 = never (default 500)",
    )
    ba.add_argument(
        "--inline-max-load",
        type=float,
        metavar="X",
        help="...but only while tails take less than this share of the last 50 ms (default 0.25)",
    )
    pr = p.add_argument_group("processes")
    pr.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="serving processes on the port (default 0 = one per core, or per GPU; 1 = a single process)",
    )
    ob = p.add_argument_group("observability")
    ob.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics ([metrics] host in the TOML file changes the "
        "address; default off)",
    )
    ob.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument("--top-k", type=int, metavar="K", help="classes returned when a frame does not ask (default 5)")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration as TOML and exit")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, nested like the TOML file."""
    out: dict[str, Any] = {}

    def put(section: str | None, key: str, value: Any) -> None:
        if value is None:
            return
        if section is None:
            out[key] = value
        else:
            out.setdefault(section, {})[key] = value

    put(None, "models", [str(m) for m in args.models] if args.models else None)
    put(None, "default_top_k", args.top_k)
    put(None, "log_level", args.log_level)
    put("grpc", "host", args.host)
    put("grpc", "port", args.port)
    put("grpc", "max_receive_message_bytes", args.max_message_bytes)
    put("grpc", "stream_max_in_flight", args.stream_in_flight)
    put("grpc", "grace_s", args.grace)
    put("grpc", "reflection", False if args.no_reflection else None)
    put("backend", "name", args.backend)
    put("backend", "device", args.device)
    put("backend", "intra_op_threads", args.threads)
    put("batching", "max_batch_size", args.max_batch_size)
    put("batching", "max_wait_us", args.max_wait_us)
    put("batching", "queue_capacity", args.queue_capacity)
    put("batching", "executor_threads", args.tail_threads)
    put("batching", "inline_tail_max_us", args.inline_tail_max_us)
    put("batching", "inline_max_load", args.inline_max_load)
    put("metrics", "port", args.metrics_port)
    put("tls", "cert", str(args.tls_cert) if args.tls_cert else None)
    put("tls", "key", str(args.tls_key) if args.tls_key else None)
    put("tls", "client_ca", str(args.tls_client_ca) if args.tls_client_ca else None)
    put("grpc", "insecure", True if args.insecure else None)
    put("grpc", "health_port", args.health_port)
    put("auth", "devices_file", str(args.devices) if args.devices else None)
    put("auth", "frames_per_s", args.frames_per_s)
    put("auth", "bytes_per_s", args.bytes_per_s)
    put("auth", "max_streams", args.max_streams)
    put("server", "workers", args.workers)
    return out


def config_from_args(argv: Sequence[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    return load_config(args.config, overrides_from_args(args)), args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, args = config_from_args(argv)
    except SlimsplitError as exc:
        print(f"slimsplit-server: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(config_to_toml(config))
        return 0
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from slimsplit.server.workers import resolve_workers, run_pool

    workers = resolve_workers(config)
    if workers == 1:
        from slimsplit.server.app import run_server

        return run_server(config)
    return run_pool(config, workers)


if __name__ == "__main__":
    sys.exit(main())
