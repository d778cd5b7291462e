"""``slimsplit-edge``: encode frames on this device and have a slimsplit server finish the inference.

Exit status: 0 = every frame answered (missed deadlines and skipped frames allowed); 1 = some frames failed;
2 = a usage problem found before connecting (bad address, missing bundle, unknown mode or controller, unreadable
source or link trace); 3 = the server could not be reached or does not serve this bundle; 130 = interrupted;
141 = output pipe closed.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from slimsplit.edge import cli_common
from slimsplit.edge.cli_common import EXIT_BROKEN_PIPE as EXIT_BROKEN_PIPE
from slimsplit.edge.cli_common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from slimsplit.edge.cli_common import EXIT_SERVER as EXIT_SERVER
from slimsplit.edge.cli_common import EXIT_USAGE as EXIT_USAGE
from slimsplit.edge.config import DEFAULT_PORT, ClientConfig, parse_address
from slimsplit.edge.display import make_display
from slimsplit.edge.link import EmulatedLink
from slimsplit.edge.run import (
    EdgeRun,
    client_meta,
    default_give_up_ms,
    modes_by_payload,
    run_edge,
)
from slimsplit.edge.sources import open_source
from slimsplit.errors import ConfigError

PROG = "slimsplit-edge"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run the edge half of a split model: encode each frame with the bundle's slimmable encoder (ONNX "
            "Runtime), send the quantized features to a slimsplit server over gRPC and show its predictions."
        ),
        epilog=(
            f"examples: {prog} --server 127.0.0.1:{DEFAULT_PORT} --source sample --mode w8b4;   "
            f"{prog} --controller mpc --deadline-ms 100 --fps 30 --frames 600 --link 2mbit   "
            "(start the server with slimsplit-server, or try everything at once with slimsplit-demo)"
        ),
    )
    net = p.add_argument_group("server")
    net.add_argument(
        "--server",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="address of the slimsplit server (default: %(default)s; IPv6 as [::1]:PORT)",
    )
    net.add_argument("--unary", action="store_true", help="one Infer call per frame instead of one InferStream")
    net.add_argument(
        "--give-up-ms",
        type=float,
        default=None,
        metavar="MS",
        help="a frame with no reply this long after its capture is dropped (DEADLINE_EXCEEDED) and its "
        "in-flight slot freed (default: --deadline-ms; a longer wait lets late replies measure the link, but "
        "holds slots with frames that are misses already)",
    )
    net.add_argument(
        "--rtt-pings",
        type=int,
        default=5,
        metavar="N",
        help="measure the round trip at start as the fastest of N Describe calls; the adaptive controllers "
        "use it (default: %(default)s; 0 = do not measure)",
    )
    cli_common.add_connect_timeout_argument(net)
    net.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per prediction (default: %(default)s)")

    model = cli_common.add_control_arguments(
        p,
        controller="fixed",
        deadline_ms=1000.0,
        fps=0.0,
        fps_note="; 0 = as fast as slots free up, frames then wait",
    )
    model.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime threads for the encoder (default: 0 = ONNX Runtime decides)",
    )

    src = p.add_argument_group("frames")
    cli_common.add_source_argument(src)
    src.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="N",
        help="frames to send (default: the whole source once; more repeats the source)",
    )

    cli_common.add_link_arguments(p)

    cli_common.add_output_arguments(
        p,
        summary="the summary",
        json_contents="every frame and the summary",
        plain_help="plain lines even on a terminal (no live view)",
        every=0.0,
        every_help="plain output: one line every S seconds (link, estimate, modes, deadline hits, skips) instead "
        "of one per frame (default: 0 = one line per frame)",
    )
    return p


@dataclass(frozen=True)
class _Prepared:
    run: EdgeRun
    source_description: str
    mode: str
    link: EmulatedLink | None


def _prepare(args: argparse.Namespace, console: cli_common.Console) -> _Prepared:
    """Everything that can be checked before touching the network (each failure is a usage error)."""
    target = parse_address(args.server)
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.rtt_pings < 0:
        raise ConfigError(f"--rtt-pings must be >= 0, got {args.rtt_pings}")
    if args.every < 0:
        raise ConfigError(f"--every must be >= 0, got {args.every}")
    controller = cli_common.check_control_args(args)
    client = ClientConfig(
        target=target,
        max_in_flight=args.max_in_flight,
        deadline_ms=args.deadline_ms,
        give_up_ms=args.give_up_ms if args.give_up_ms is not None else default_give_up_ms(args.deadline_ms),
        top_k=args.top_k,
        connect_timeout_s=args.connect_timeout,
    )
    link = cli_common.link_from_args(args)
    bundle = cli_common.bundle_from_args(args)
    manifest = bundle.manifest
    plan = cli_common.plan_control(args, manifest, controller, top_k=args.top_k)
    source = open_source(args.source, manifest.input, manifest.classes)
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime  # onnxruntime: import only when needed

    encoder = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=args.threads))
    run = EdgeRun(
        manifest=manifest,
        encoder=encoder,
        controller=plan.factory,
        mode_table=plan.table,
        frames=source.take(args.frames, cycle=True),
        target=target,
        client=client,
        fps=args.fps,
        unary=args.unary,
        modes=plan.modes,
        route=link.route if link is not None else None,
        rtt_pings=args.rtt_pings,
    )
    console.notes(source.notes)
    return _Prepared(run, source.description, plan.mode_label, link)


def link_meta(link: EmulatedLink, args: argparse.Namespace) -> dict[str, object]:
    """The emulated link as given and as understood, for the JSON output."""
    c = link.config
    return {
        "uplink": args.link,
        "downlink": args.downlink,
        "delay_ms": c.delay_ms,
        "queue_bytes": c.queue_bytes,
        "offset_s": c.start_offset_s,
        "uplink_mean_bps": c.uplink.mean_bps if c.uplink is not None else None,
        "description": link.describe(),
        "t_s": "frames' t_s is link time: seconds since the proxy started (trace time minus offset_s)",
    }


def _run(prepared: _Prepared, args: argparse.Namespace, console: cli_common.Console) -> int:
    """Stream the frames, show them, write the JSON; the exit status."""
    run = prepared.run
    link = prepared.link
    display = make_display(
        console.out,
        quiet=args.quiet,
        live=False if args.plain or args.every > 0 else None,
        class_names=run.manifest.classes,
        every=args.every,
        capacity=link.uplink_bps if link is not None else None,
        mode_order=modes_by_payload(run.manifest),
    )
    transport = "Infer (unary)" if run.unary else "InferStream"
    header = (
        f"slimsplit edge -> {run.target} over {transport}  model {run.manifest.name} {run.manifest.version}  "
        f"controller {args.controller} ({prepared.mode})  deadline {args.deadline_ms:g} ms  "
        f"source {prepared.source_description}"
    )
    if link is not None:
        header += f"\n  link: {link.describe()}"
    report, summary = asyncio.run(run_edge(run, display, header))
    meta = {
        "target": run.target,
        "model": run.manifest.name,
        "version": run.manifest.version,
        "controller": args.controller,
        "mode": prepared.mode,
        "deadline_ms": run.client.deadline_ms,
        "give_up_ms": run.client.give_up_ms,
        "max_in_flight": run.client.max_in_flight,
        "rtt_ms": report.rtt_ms,
        "source": prepared.source_description,
        "unary": run.unary,
        "fps": run.fps,
        "link": None if link is None else link_meta(link, args),
        "client": client_meta(run.client),
    }
    cli_common.report_link_check(console, link, report, run.mode_table, run.modes, meta)
    return cli_common.finish_run(console, args.json_out, report, summary, meta)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    return cli_common.run_main(build_parser(), argv, _prepare, _run, stdout=stdout, stderr=stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
