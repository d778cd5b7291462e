"""``slimsplit-edge``: encode frames on this device and have a slimsplit server finish the inference.

Exit status: 0 = every frame answered (missed deadlines and skipped frames allowed); 1 = some frames failed;
2 = a usage problem found before connecting (bad address, missing bundle, unknown mode or controller, unreadable
source or link trace); 3 = the server could not be reached or does not serve this bundle; 130 = interrupted;
141 = output pipe closed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge.client import frame_overhead_bytes
from slimsplit.edge.config import DEFAULT_PORT, ClientConfig, parse_address
from slimsplit.edge.display import make_display, silence_stdout
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions
from slimsplit.edge.run import (
    EdgeRun,
    check_controller_name,
    client_meta,
    controller_factory,
    default_give_up_ms,
    default_mode,
    exit_status,
    make_controller,
    modes_by_payload,
    run_edge,
    write_json,
)
from slimsplit.edge.sources import SAMPLE, open_source
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES

PROG = "slimsplit-edge"
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


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
        "--max-in-flight",
        type=int,
        default=4,
        metavar="N",
        help="frames sent and not yet answered (default: %(default)s)",
    )
    net.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="latency target of a frame, from its capture to its prediction: a later answer counts as a miss, "
        "and adaptive controllers pick modes to meet it (default: %(default)s)",
    )
    net.add_argument(
        "--give-up-ms",
        type=float,
        default=None,
        metavar="MS",
        help="a frame with no reply this long after it was sent is dropped (DEADLINE_EXCEEDED) and its "
        "in-flight slot freed (default: 10 x --deadline-ms, at least 2000; a late reply still measures the link)",
    )
    net.add_argument(
        "--rtt-pings",
        type=int,
        default=5,
        metavar="N",
        help="measure the round trip at start as the fastest of N Describe calls; the adaptive controllers "
        "use it (default: %(default)s; 0 = do not measure)",
    )
    net.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="how long to wait for the server at start (default: %(default)s)",
    )
    net.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per prediction (default: %(default)s)")

    model = p.add_argument_group("model")
    model.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="PATH",
        help="model bundle folder (default: the shipped bundle)",
    )
    model.add_argument(
        "--mode",
        default=None,
        metavar="NAME",
        help="operating mode from the bundle's manifest, e.g. w8b4 (default: the most accurate)",
    )
    model.add_argument(
        "--controller",
        default="fixed",
        metavar="NAME",
        help="how the mode is chosen per frame: fixed = always --mode (default); mpc (this project's "
        "model-predictive controller) and ewma-greedy (the published baseline) adapt it to the measured link "
        "and --deadline-ms (they need the manifest's measured figures). 'oracle' is offline only "
        "(bench/controller.py)",
    )
    model.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime threads for the encoder (default: 0 = ONNX Runtime decides)",
    )

    src = p.add_argument_group("frames")
    src.add_argument(
        "--source",
        default=SAMPLE,
        metavar="SOURCE",
        help="'sample' (the shipped images), a folder of images, or an .npz with 'images' [+ 'labels'] "
        "(default: %(default)s)",
    )
    src.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="N",
        help="frames to send (default: the whole source once; more repeats the source)",
    )
    src.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="capture rate in frames per second: a frame is captured on its tick and skipped (with the reason) "
        "when --max-in-flight frames are in flight or the controller finds no mode worth sending, as a camera "
        "must (default: 0 = as fast as slots free up; frames then wait)",
    )

    link = p.add_argument_group(
        "link emulation",
        "put a shaping proxy on 127.0.0.1 between this client and the server, so frames cross an emulated link",
    )
    link.add_argument(
        "--link",
        default="none",
        metavar="SPEC",
        help="uplink: a Mahimahi trace file (one line per 1500-byte delivery opportunity, ms timestamps), a rate "
        "such as 2mbit or 800kbit, or none = no emulation (default: %(default)s)",
    )
    link.add_argument(
        "--downlink",
        default=DEFAULT_DOWNLINK,
        metavar="SPEC",
        help="downlink: trace file, rate or none = unshaped (default: %(default)s)",
    )
    link.add_argument(
        "--link-delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        metavar="MS",
        help="one-way propagation delay, each direction (default: %(default)s)",
    )
    link.add_argument(
        "--link-queue-bytes",
        type=int,
        default=DEFAULT_QUEUE_BYTES,
        metavar="N",
        help="bottleneck queue of each direction, bytes (default: %(default)s)",
    )
    link.add_argument(
        "--link-offset-s",
        type=float,
        default=0.0,
        metavar="S",
        help="start this many seconds into the traces (default: %(default)s)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--json-out",
        type=Path,
        default=None,
        metavar="PATH",
        help="write every frame and the summary as JSON",
    )
    out.add_argument("--quiet", action="store_true", help="print only the summary")
    out.add_argument("--plain", action="store_true", help="plain lines even on a terminal (no live view)")
    out.add_argument(
        "--every",
        type=float,
        default=0.0,
        metavar="S",
        help="plain output: one line every S seconds (link, estimate, modes, deadline hits, skips) instead of "
        "one per frame (default: 0 = one line per frame)",
    )
    return p


@dataclass(frozen=True)
class _Prepared:
    run: EdgeRun
    source_description: str
    notes: tuple[str, ...]
    mode: str
    link: EmulatedLink | None


def _prepare(args: argparse.Namespace) -> _Prepared:
    """Everything that can be checked before touching the network (each failure is a usage error)."""
    target = parse_address(args.server)
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    if args.fps < 0:
        raise ConfigError(f"--fps must be >= 0, got {args.fps}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.rtt_pings < 0:
        raise ConfigError(f"--rtt-pings must be >= 0, got {args.rtt_pings}")
    if args.every < 0:
        raise ConfigError(f"--every must be >= 0, got {args.every}")
    check_controller_name(args.controller)
    if not args.deadline_ms > 0:
        raise ConfigError(f"--deadline-ms must be > 0, got {args.deadline_ms}")
    client = ClientConfig(
        target=target,
        max_in_flight=args.max_in_flight,
        deadline_ms=args.deadline_ms,
        give_up_ms=args.give_up_ms if args.give_up_ms is not None else default_give_up_ms(args.deadline_ms),
        top_k=args.top_k,
        connect_timeout_s=args.connect_timeout,
    )
    link_config = LinkOptions(
        uplink=args.link,
        downlink=args.downlink,
        delay_ms=args.link_delay_ms,
        queue_bytes=args.link_queue_bytes,
        offset_s=args.link_offset_s,
    ).config()
    link = EmulatedLink(link_config) if link_config is not None else None
    bundle = Bundle.open(args.bundle if args.bundle is not None else default_bundle_path())
    manifest = bundle.manifest
    fixed = args.controller == "fixed"
    if args.mode and not fixed:
        raise ConfigError(f"--mode fixes the mode; it cannot be combined with --controller {args.controller}")
    mode = manifest.mode(args.mode).name if args.mode else default_mode(manifest).name
    # built once here so that a bad name or an unmeasured bundle fails before connecting; the run rebuilds it
    # with the measured round trip
    overhead = frame_overhead_bytes(manifest.name, manifest.version, args.top_k)
    _, table = make_controller(
        args.controller,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        overhead_bytes=overhead,
    )
    factory = controller_factory(
        args.controller,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        fps=args.fps,
        overhead_bytes=overhead,
    )
    source = open_source(args.source, manifest.input, manifest.classes)
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime  # onnxruntime: import only when needed

    encoder = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=args.threads))
    run = EdgeRun(
        manifest=manifest,
        encoder=encoder,
        controller=factory,
        mode_table=table,
        frames=source.take(args.frames, cycle=True),
        target=target,
        client=client,
        fps=args.fps,
        unary=args.unary,
        modes=(mode,) if fixed else manifest.mode_names,
        route=link.route if link is not None else None,
        rtt_pings=args.rtt_pings,
    )
    return _Prepared(run, source.description, source.notes, mode if fixed else "adaptive", link)


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


def _error(out: TextIO, message: str) -> None:
    out.write(f"{PROG}: error: {message}\n")
    out.flush()


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        prepared = _prepare(args)
    except SlimsplitError as exc:
        _error(err, str(exc))
        return EXIT_USAGE
    for note in prepared.notes:
        err.write(f"{PROG}: note: {note}\n")
    run = prepared.run
    link = prepared.link
    display = make_display(
        out,
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
    try:
        report, summary = asyncio.run(run_edge(run, display, header))
    except KeyboardInterrupt:
        _error(err, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the output went into a pipe that closed (| head): stop quietly
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except SlimsplitError as exc:
        _error(err, str(exc))
        return EXIT_SERVER
    if args.json_out is not None:
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
        try:
            write_json(args.json_out, report, summary, meta)
        except OSError as exc:
            _error(err, f"cannot write --json-out {args.json_out}: {exc}")
            return EXIT_USAGE
    return exit_status(summary)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
