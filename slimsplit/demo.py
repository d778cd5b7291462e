"""``slimsplit-demo``: the whole split on this machine with one command, over an emulated link.

It starts a slimsplit server in-process (its own thread and event loop) on a free loopback port with the
shipped bundle and the ONNX Runtime backend, puts a shaping proxy in front of it driven by one of the project's
synthetic bandwidth traces (:data:`DEMO_TRACE`, from :data:`DEMO_OFFSET_S` seconds in: 0.7 Mbit/s falling to
0.25-0.4, a 3-second outage, a slow return, then 2 Mbit/s), and streams the shipped sample images (repeated) through the
edge encoder at 30 frames/s with a 100 ms deadline. The ``mpc`` controller picks each frame's mode from what it
measures, so the viewer sees the mode follow the link: on a terminal a live view (the last frames, a strip of
the modes chosen, link capacity against the controller's estimate, latency against the deadline) for about
24 s; under ``CI=true`` or without a TTY one plain line per second for about 10 s. It ends with the summary
(deadline-hit rate, accuracy, modes chosen and switches, skipped and dropped frames by reason, latency, bytes).

Everything is a flag: ``--controller`` (``mpc``, ``ewma-greedy``, ``fixed`` with ``--mode``, or ``sweep``: a
scripted tour of a few modes), ``--link`` (a trace file, a rate such as ``2mbit``, or ``none``),
``--deadline-ms``, ``--fps``, ``--seconds`` / ``--frames``. ``--link none --controller sweep`` is the earlier
demo (a few modes in turn, no emulation).

Needs the server extra (it imports the server); the edge part is exactly what ``slimsplit-edge`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from slimsplit.bundle import Bundle, Manifest, default_bundle_path
from slimsplit.edge.client import frame_overhead_bytes
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.control.base import Controller, Decision, FrameFeedback
from slimsplit.edge.display import make_display, silence_stdout, wants_live
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions
from slimsplit.edge.run import (
    ControllerFactory,
    EdgeRun,
    check_controller_name,
    controller_factory,
    default_give_up_ms,
    default_mode,
    exit_status,
    mode_options,
    modes_by_payload,
    run_edge,
    write_json,
)
from slimsplit.edge.sources import SAMPLE, open_source
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.link.synth import shipped_traces_dir

PROG = "slimsplit-demo"
#: The shipped trace the demo drives the uplink with, and where in it the demo starts: from 6 s on it falls from
#: 0.7 to 0.25-0.4 Mbit/s, goes out for 3 s (12-15 s), limps back at 0.25 and recovers to 2 Mbit/s at 19 s.
DEMO_TRACE = "ge-outages.trace"
DEMO_OFFSET_S = 6.0
DEMO_SECONDS_LIVE = 24.0
DEMO_SECONDS_PLAIN = 10.0
SWEEP = "sweep"


class SweepController(Controller):
    """Visits ``modes`` in turn, ``frames_per_mode`` frames each (a scripted stand-in for an adaptive one)."""

    name = "sweep"

    def __init__(self, modes: Sequence[str], frames_per_mode: int) -> None:
        if not modes or frames_per_mode < 1:
            raise ValueError("SweepController needs at least one mode and frames_per_mode >= 1")
        self._decisions = tuple(
            Decision(mode=m, reason=f"demo sweep {i + 1}/{len(modes)}") for i, m in enumerate(modes)
        )
        self._per = frames_per_mode
        self._count = 0

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        decision = self._decisions[(self._count // self._per) % len(self._decisions)]
        self._count += 1
        return decision

    def observe(self, feedback: FrameFeedback) -> None:
        return None


def demo_modes(manifest: Manifest, count: int = 3) -> tuple[str, ...]:
    """``count`` modes from the smallest payload to the largest (measured bytes, else width x bits)."""
    ordered = modes_by_payload(manifest)
    if len(ordered) <= count:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [-1]
    return tuple(ordered[i] for i in picks)


def demo_trace() -> Path:
    """The shipped trace the demo uses by default."""
    return shipped_traces_dir() / DEMO_TRACE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Start a slimsplit server on loopback with the shipped bundle, put an emulated link (a shaping proxy "
            "driven by a shipped bandwidth trace) in front of it, and stream the shipped sample images through "
            "the edge encoder: the controller picks each frame's mode to meet the deadline over the changing "
            "link. Shows the link, the estimate, the modes and the latency live, then a summary. No data, no "
            "training."
        ),
        epilog=f"the earlier demo, a few modes in turn without emulation: {PROG} --link none --controller sweep",
    )
    p.add_argument(
        "--controller",
        default=None,
        metavar="NAME",
        help=f"mpc (default), ewma-greedy, fixed (with --mode: the default when --mode is given) or {SWEEP} "
        "(visit --modes modes in turn)",
    )
    p.add_argument("--mode", default=None, metavar="NAME", help="the mode of the fixed controller")
    p.add_argument("--modes", type=int, default=3, metavar="N", help=f"modes the {SWEEP} visits (default 3)")
    p.add_argument(
        "--link",
        default=None,
        metavar="SPEC",
        help=f"uplink: a Mahimahi trace file, a rate such as 2mbit, or none (default: the shipped {DEMO_TRACE})",
    )
    p.add_argument(
        "--link-offset-s",
        type=float,
        default=None,
        metavar="S",
        help=f"start this far into the trace (default: {DEMO_OFFSET_S:g} for the default trace, else 0)",
    )
    p.add_argument(
        "--link-delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        metavar="MS",
        help="one-way delay (default %(default)s)",
    )
    p.add_argument("--downlink", default=DEFAULT_DOWNLINK, metavar="SPEC", help="downlink (default %(default)s)")
    p.add_argument(
        "--deadline-ms", type=float, default=100.0, metavar="MS", help="latency target (default %(default)s)"
    )
    p.add_argument("--fps", type=float, default=30.0, help="capture rate, frames per second (default %(default)s)")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"how long to stream (default: {DEMO_SECONDS_LIVE:g} on a terminal, {DEMO_SECONDS_PLAIN:g} under CI "
        "or without a TTY)",
    )
    p.add_argument("--frames", type=int, default=None, metavar="N", help="how many frames (instead of --seconds)")
    p.add_argument("--max-in-flight", type=int, default=4, metavar="K", help="frames in flight (default %(default)s)")
    p.add_argument("--unary", action="store_true", help="one Infer call per frame instead of InferStream")
    p.add_argument("--bundle", type=Path, default=None, metavar="PATH", help="bundle (default: the shipped one)")
    p.add_argument("--backend", default="onnxruntime", help="server backend (default: %(default)s)")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH", help="write every frame and the summary")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--plain", action="store_true", help="one plain line per frame, even on a terminal")
    p.add_argument(
        "--every",
        type=float,
        default=1.0,
        metavar="S",
        help="without a terminal: one line every S seconds (default %(default)s; 0 = one line per frame)",
    )
    return p


def _frames(args: argparse.Namespace, live: bool) -> int:
    if args.frames is not None:
        if args.frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {args.frames}")
        return int(args.frames)
    seconds = args.seconds if args.seconds is not None else (DEMO_SECONDS_LIVE if live else DEMO_SECONDS_PLAIN)
    if not seconds > 0:
        raise ConfigError(f"--seconds must be > 0, got {seconds}")
    if not args.fps > 0:
        raise ConfigError("an unpaced run (--fps 0) needs --frames")
    return max(1, round(float(seconds) * float(args.fps)))


Choice = tuple[str, Controller | ControllerFactory, tuple[str, ...]]


def _controller(args: argparse.Namespace, manifest: Manifest, frames: int) -> Choice:
    """The controller's label, the controller (or its factory) and the modes it may use."""
    name = args.controller or ("fixed" if args.mode else "mpc")
    check_controller_name(name, extra=(SWEEP,))
    if args.mode and name != "fixed":
        raise ConfigError(f"--mode fixes the mode; it cannot be combined with --controller {name}")
    if name == SWEEP:
        if args.modes < 1:
            raise ConfigError(f"--modes must be >= 1, got {args.modes}")
        modes = demo_modes(manifest, args.modes)
        per_mode = max(1, -(-frames // len(modes)))
        return f"{SWEEP} ({', '.join(modes)}; {per_mode} frames each)", SweepController(modes, per_mode), modes
    mode = manifest.mode(args.mode).name if args.mode else default_mode(manifest).name
    factory = controller_factory(
        name,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        fps=args.fps,
        overhead_bytes=frame_overhead_bytes(manifest.name, manifest.version),
    )
    factory(0.0)  # fails now (unknown mode, unmeasured bundle), before the server starts
    return (
        (f"fixed ({mode})" if name == "fixed" else name),
        factory,
        ((mode,) if name == "fixed" else manifest.mode_names),
    )


def _link(args: argparse.Namespace) -> EmulatedLink | None:
    spec = args.link if args.link is not None else str(demo_trace())
    offset = args.link_offset_s if args.link_offset_s is not None else (DEMO_OFFSET_S if args.link is None else 0.0)
    config = LinkOptions(uplink=spec, downlink=args.downlink, delay_ms=args.link_delay_ms, offset_s=offset).config()
    return EmulatedLink(config) if config is not None else None


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    live = False if args.plain or args.quiet else wants_live(out)
    try:
        if not args.deadline_ms > 0 or args.fps < 0 or args.every < 0:
            raise ConfigError("--deadline-ms must be > 0, --fps and --every >= 0")
        frames = _frames(args, live)
        link = _link(args)
        bundle_path = args.bundle if args.bundle is not None else default_bundle_path()
        bundle = Bundle.open(bundle_path)
        manifest = bundle.manifest
        label, controller, modes = _controller(args, manifest, frames)
        client = ClientConfig(
            max_in_flight=args.max_in_flight,
            deadline_ms=args.deadline_ms,
            give_up_ms=default_give_up_ms(args.deadline_ms),
        )
        source = open_source(SAMPLE, manifest.input, manifest.classes)
        from slimsplit.edge.runtime import EncoderRuntime
        from slimsplit.server.app import ServerThread
        from slimsplit.server.config import BackendConfig, GrpcConfig, ServerConfig

        encoder = EncoderRuntime(bundle)
        config = ServerConfig(
            models=(bundle_path,),
            log_level="warning",
            grpc=GrpcConfig(host="127.0.0.1", port=0, grace_s=1.0),
            backend=BackendConfig(name=args.backend),
        )
        out.write(f"{PROG}: starting a server on 127.0.0.1 with {args.backend} ...\n")
        out.flush()
        server = ServerThread(config).start()
    except SlimsplitError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 2
    try:
        target = server.address
        run = EdgeRun(
            manifest=manifest,
            encoder=encoder,
            controller=controller,
            mode_table=mode_options(manifest, overhead_bytes=frame_overhead_bytes(manifest.name, manifest.version)),
            frames=source.take(frames, cycle=True),
            target=target,
            client=replace(client, target=target),
            fps=args.fps,
            unary=args.unary,
            modes=modes,
            route=link.route if link is not None else None,
        )
        display = make_display(
            out,
            quiet=args.quiet,
            live=live,
            class_names=manifest.classes,
            every=0.0 if args.plain else args.every,
            capacity=link.uplink_bps if link is not None else None,
            mode_order=modes_by_payload(manifest),
        )
        seconds = f" ({frames / args.fps:g} s)" if args.fps > 0 else ""
        header = (
            f"{PROG}: server {target} ({args.backend}), edge encoder in ONNX Runtime, "
            f"{'Infer' if args.unary else 'InferStream'}; model {manifest.name} {manifest.version}; "
            f"controller {label}; deadline {args.deadline_ms:g} ms; {frames} frames at {args.fps:g} fps{seconds} "
            f"from {source.description}\n"
            f"  link: {link.describe() if link is not None else 'none (direct loopback)'}"
        )
        report, summary = asyncio.run(run_edge(run, display, header))
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # | head
        silence_stdout()
        return 141
    except SlimsplitError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 3
    finally:
        server.stop(grace=1.0)
    if args.json_out is not None:
        meta = {
            "demo": True,
            "target": target,
            "model": manifest.name,
            "version": manifest.version,
            "controller": label,
            "deadline_ms": args.deadline_ms,
            "fps": args.fps,
            "rtt_ms": report.rtt_ms,
            "link": link.describe() if link is not None else None,
        }
        try:
            write_json(args.json_out, report, summary, meta)
        except OSError as exc:
            err.write(f"{PROG}: error: cannot write --json-out {args.json_out}: {exc}\n")
            return 2
    return exit_status(summary)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
