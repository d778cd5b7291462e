"""``slimsplit-edge``: encode frames on this device and have a slimsplit server finish the inference.

Exit status: 0 = every frame answered (missed deadlines and skipped frames allowed); 1 = some frames failed;
2 = a usage problem found before connecting (bad address, missing bundle, unknown mode, unreadable source);
3 = the server could not be reached or does not serve this bundle; 130 = interrupted; 141 = output pipe closed.
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
from slimsplit.edge.config import DEFAULT_PORT, ClientConfig, parse_address
from slimsplit.edge.display import make_display, silence_stdout
from slimsplit.edge.run import (
    CONTROLLER_NAMES,
    EdgeRun,
    client_meta,
    default_mode,
    exit_status,
    make_controller,
    run_edge,
    write_json,
)
from slimsplit.edge.sources import SAMPLE, open_source
from slimsplit.errors import ConfigError, SlimsplitError

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
            f"example: {prog} --server 127.0.0.1:{DEFAULT_PORT} --source sample --mode w8b4   "
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
        help="a frame not answered this long after sending is reported missed (default: %(default)s)",
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
        choices=CONTROLLER_NAMES,
        help="how the mode is chosen per frame: fixed = always --mode (default); ewma-greedy and mpc adapt it "
        "to the measured link (they need the manifest's measured figures)",
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
        help="capture rate in frames per second; a paced frame that finds --max-in-flight frames in flight is "
        "skipped, as a camera must (default: 0 = as fast as slots free up; frames then wait)",
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
    return p


@dataclass(frozen=True)
class _Prepared:
    run: EdgeRun
    source_description: str
    notes: tuple[str, ...]
    mode: str


def _prepare(args: argparse.Namespace) -> _Prepared:
    """Everything that can be checked before touching the network (each failure is a usage error)."""
    target = parse_address(args.server)
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    if args.fps < 0:
        raise ConfigError(f"--fps must be >= 0, got {args.fps}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    client = ClientConfig(
        target=target,
        max_in_flight=args.max_in_flight,
        deadline_ms=args.deadline_ms,
        top_k=args.top_k,
        connect_timeout_s=args.connect_timeout,
    )
    bundle = Bundle.open(args.bundle if args.bundle is not None else default_bundle_path())
    manifest = bundle.manifest
    fixed = args.controller == "fixed"
    if args.mode and not fixed:
        raise ConfigError(f"--mode fixes the mode; it cannot be combined with --controller {args.controller}")
    mode = manifest.mode(args.mode).name if args.mode else default_mode(manifest).name
    controller, table = make_controller(
        args.controller,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        fps=args.fps,
    )
    source = open_source(args.source, manifest.input, manifest.classes)
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime  # onnxruntime: import only when needed

    encoder = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=args.threads))
    run = EdgeRun(
        manifest=manifest,
        encoder=encoder,
        controller=controller,
        mode_table=table,
        frames=source.take(args.frames, cycle=True),
        target=target,
        client=client,
        fps=args.fps,
        unary=args.unary,
        modes=(mode,) if fixed else manifest.mode_names,
    )
    return _Prepared(run, source.description, source.notes, mode if fixed else "adaptive")


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
    display = make_display(out, quiet=args.quiet, live=False if args.plain else None, class_names=run.manifest.classes)
    transport = "Infer (unary)" if run.unary else "InferStream"
    header = (
        f"slimsplit edge -> {run.target} over {transport}  model {run.manifest.name} {run.manifest.version}  "
        f"controller {args.controller} ({prepared.mode})  source {prepared.source_description}"
    )
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
            "source": prepared.source_description,
            "unary": run.unary,
            "fps": run.fps,
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
