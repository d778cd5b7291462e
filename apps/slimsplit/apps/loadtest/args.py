"""The load tester's flags and the checks they need on their own (before anything is built)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from slimsplit.apps.loadtest.security import add_security_arguments, check_security_args
from slimsplit.edge import cli_common
from slimsplit.errors import ConfigError
from slimsplit.link.synth import shipped_traces_dir

PROG = "slimsplit-loadtest"

MAX_CLIENTS = 512
#: Seconds between the trace positions of consecutive clients (not a divisor of the shipped traces' periods).
DEFAULT_STRIDE_S = 7.0
#: Slack of the default ``--time-limit-s`` beyond the run itself, the give-up wait and the connection.
TIME_LIMIT_SLACK_S = 30.0
#: The ``--link`` spec of a client without an emulated link (the only one ``--in-process`` takes).
NO_LINK = "none"


def default_links() -> list[str]:
    """The shipped synthetic traces, the default ``--link`` specs."""
    return [str(p) for p in sorted(shipped_traces_dir().glob("*.trace"))]


def link_specs(args: argparse.Namespace) -> list[str]:
    """The ``--link`` specs of this run: as given, else none for ``--in-process``, else the shipped traces."""
    if args.link is not None:
        return list(args.link)
    return [NO_LINK] if args.in_process else default_links()


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load-test a slimsplit server with many emulated edge clients, each streaming over its own emulated "
            "link (a shaping proxy on 127.0.0.1 driven by a bandwidth trace or a rate), all in one event loop."
        ),
        epilog=(
            f"example: {prog} --start-server --clients 8 --link 2mbit 500kbit --seconds 10 --fps 10 "
            "--controller mpc --json-out load.json\n\n"
            + cli_common.exit_status_help(
                failed=", over all clients' frames together; or some client could not run or did not finish "
                "within --time-limit-s",
                server=" (no client could run)",
            )
        ),
        formatter_class=cli_common.HelpFormatter,
    )
    srv = p.add_argument_group("server (one of --server, --start-server and --in-process)")
    srv.add_argument("--server", default=None, metavar="HOST:PORT", help="address of a running slimsplit server")
    srv.add_argument(
        "--start-server",
        action="store_true",
        help="start slimsplit-server with --bundle on a free 127.0.0.1 port (TLS + mTLS + a devices file unless "
        "--no-tls), wait until its health check says SERVING, and stop it at the end (needs the server extra)",
    )
    srv.add_argument(
        "--in-process",
        action="store_true",
        help="serve the clients from an inference core in this process, without gRPC or links: what the core "
        "alone sustains (needs the server extra; --link none only; no gRPC, so no TLS and no tokens)",
    )
    srv.add_argument(
        "--server-backend",
        default="onnxruntime",
        metavar="NAME",
        help="--start-server/--in-process: the tail backend (onnxruntime, torch, fpga-emu, null; default: %(default)s)",
    )
    srv.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="--start-server/--in-process: frames of one mode per tail call (default: %(default)s)",
    )

    add_security_arguments(p)

    load = p.add_argument_group("load")
    load.add_argument("--clients", type=int, default=4, metavar="N", help="edge clients (default: %(default)s)")
    load.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long each client captures: it sends fps x seconds frames (default: %(default)s)",
    )
    cli_common.add_source_argument(load)
    cli_common.add_connect_timeout_argument(load)
    load.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        metavar="S",
        help="a client still running this long after the start is stopped and reported failed "
        f"(default: 2 x --seconds + the give-up wait + --connect-timeout + {TIME_LIMIT_SLACK_S:g})",
    )

    model = cli_common.add_control_arguments(p, controller=None, deadline_ms=100.0, fps=10.0, fps_note=" per client")
    cli_common.add_transmission_argument(model)
    model.add_argument(
        "--encoder-threads",
        type=int,
        default=1,
        metavar="N",
        help="ONNX Runtime threads of each client's encoder (default: %(default)s; 0 = ONNX Runtime decides)",
    )

    link = cli_common.add_link_arguments(
        p,
        title="links (one shaping proxy per client)",
        description=None,
        uplink=None,
        uplink_text="the shipped traces; none with --in-process",
        several=True,
        offset_text="%(default)s; client i starts i x --offset-stride-s later",
    )
    link.add_argument(
        "--offset-stride-s",
        type=float,
        default=DEFAULT_STRIDE_S,
        metavar="S",
        help="client i starts --link-offset-s + i x S seconds into its trace (default: %(default)s)",
    )

    cli_common.add_output_arguments(
        p,
        summary="the table",
        json_contents="the per-client summaries and the overall figures",
        every=1.0,
        every_help="a progress line on stderr every S seconds (default: %(default)s; 0 = none)",
    )
    sw = p.add_argument_group("sweep (precomputed payloads, unary Infer, several processes)")
    sw.add_argument(
        "--sweep",
        default=None,
        metavar="KIND=V,V,...",
        help="run each load point for --seconds: clients=1,2,4,8 (closed loop) or rate=50,100 (offered "
        "frames/s); report the largest load meeting the SLO",
    )
    sw.add_argument("--slo-p99-ms", type=float, default=None, metavar="MS", help="SLO p99 (default: --deadline-ms)")
    sw.add_argument(
        "--slo-in-time",
        type=float,
        default=0.99,
        metavar="F",
        help="SLO share of frames in time (default: %(default)s)",
    )
    sw.add_argument("--procs", type=int, default=2, metavar="N", help="generator processes (default: %(default)s)")
    sw.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.json, points.csv, timeline.csv, PNG plots and report.html",
    )
    sw.add_argument(
        "--simulate",
        action="store_true",
        help="a simulated server in virtual time (with --sweep; same --seed, same report)",
    )
    sw.add_argument("--seed", type=int, default=0, metavar="N", help="--simulate: the seed (default: %(default)s)")
    sw.add_argument(
        "--sim-workers",
        type=int,
        default=2,
        metavar="N",
        help="--simulate: frames served at once (default: %(default)s)",
    )
    sw.add_argument(
        "--sim-server-ms",
        type=float,
        default=1.0,
        metavar="MS",
        help="--simulate: median service time of a frame (default: %(default)s)",
    )
    cli_common.add_exit_arguments(p, frames="all clients' frames")
    return p


def check_args(args: argparse.Namespace) -> str:
    """The flags on their own; the controller's name."""
    given = {
        "--server": args.server is not None,
        "--start-server": args.start_server,
        "--in-process": args.in_process,
        "--simulate": args.simulate,
    }
    servers = [name for name, on in given.items() if on]
    if not servers:
        raise ConfigError("give --server HOST:PORT, --start-server or --in-process (or --simulate with --sweep)")
    if len(servers) > 1:
        raise ConfigError(f"{' and '.join(servers)} exclude each other")
    if args.in_process and any(spec != NO_LINK for spec in args.link or ()):
        raise ConfigError("--in-process has no network to emulate: give --link none (the default) or a server")
    if not 1 <= args.clients <= MAX_CLIENTS:
        raise ConfigError(f"--clients must be in 1..{MAX_CLIENTS}, got {args.clients}")
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    if args.encoder_threads < 0:
        raise ConfigError(f"--encoder-threads must be >= 0, got {args.encoder_threads}")
    if args.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if not (args.offset_stride_s >= 0 and math.isfinite(args.offset_stride_s)):
        raise ConfigError(f"--offset-stride-s must be >= 0, got {args.offset_stride_s}")
    if not (args.link_offset_s >= 0 and math.isfinite(args.link_offset_s)):
        raise ConfigError(f"--link-offset-s must be >= 0, got {args.link_offset_s}")
    if args.every < 0:
        raise ConfigError(f"--every must be >= 0, got {args.every}")
    if args.time_limit_s is not None and not args.time_limit_s > 0:
        raise ConfigError(f"--time-limit-s must be > 0, got {args.time_limit_s}")
    if args.sweep is None and (args.simulate or args.report_dir is not None):
        raise ConfigError("--simulate and --report-dir go with --sweep")
    if args.sweep is not None and args.in_process:
        raise ConfigError("--sweep runs against --server, --start-server or --simulate, not --in-process")
    if not 1 <= args.procs <= 64:
        raise ConfigError(f"--procs must be in 1..64, got {args.procs}")
    if cli_common.check_transmission_args(args) and (args.sweep is not None or args.in_process):
        raise ConfigError(
            "--transmission planes: the link clients carry frames as planes over gRPC; --sweep (unary Infer) and "
            "--in-process carry whole frames"
        )
    check_security_args(args)
    cli_common.exit_rule_from_args(args)
    cli_common.check_json_out(args.json_out)
    return cli_common.check_control_args(args)


__all__ = [
    "DEFAULT_STRIDE_S",
    "MAX_CLIENTS",
    "NO_LINK",
    "PROG",
    "TIME_LIMIT_SLACK_S",
    "build_parser",
    "check_args",
    "default_links",
    "link_specs",
]
