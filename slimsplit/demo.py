"""``slimsplit-demo``: the whole split on this machine with one command.

It starts a slimsplit server in-process (its own thread and event loop) on a free loopback port with the
shipped bundle and the ONNX Runtime backend, then runs the edge client over the shipped sample images: by
default through a few operating modes in turn (smallest payload, a middle one, the largest), or one
``--mode``. Frames are shown as they flow (a live view on a terminal, plain lines under ``CI=true`` or
without a TTY) and the run ends with the summary: accuracy, latency percentiles, bytes per frame, frames per
second, and a per-mode table.

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

from slimsplit.bundle import Bundle, Manifest, ModeSpec, default_bundle_path
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.control.base import Controller, Decision, FrameFeedback
from slimsplit.edge.display import make_display, silence_stdout, wants_live
from slimsplit.edge.run import EdgeRun, exit_status, mode_options, run_edge
from slimsplit.edge.sources import SAMPLE, open_source
from slimsplit.errors import SlimsplitError

PROG = "slimsplit-demo"


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

    def size(m: ModeSpec) -> float:
        return m.payload_bytes_mean if m.payload_bytes_mean is not None else float(m.width * m.bits)

    ordered = sorted(manifest.modes, key=lambda m: (size(m), m.width, m.bits))
    if len(ordered) <= count:
        return tuple(m.name for m in ordered)
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [-1]
    return tuple(ordered[i].name for i in picks)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Start a slimsplit server on loopback with the shipped bundle, stream the shipped sample images "
            "through the edge encoder to it, and show the predictions and a summary. No data, no training."
        ),
    )
    p.add_argument("--mode", default=None, metavar="NAME", help="one fixed mode (default: sweep a few modes)")
    p.add_argument("--modes", type=int, default=3, metavar="N", help="how many modes the sweep visits (default 3)")
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="N",
        help="frames per mode (default: 40 on a terminal, 20 otherwise)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="capture rate (default: 30 on a terminal so frames can be watched, else unpaced)",
    )
    p.add_argument("--unary", action="store_true", help="one Infer call per frame instead of InferStream")
    p.add_argument("--bundle", type=Path, default=None, metavar="PATH", help="bundle (default: the shipped one)")
    p.add_argument("--backend", default="onnxruntime", help="server backend (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    return p


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    live = False if args.plain else wants_live(out)
    per_mode = args.frames if args.frames is not None else (40 if live else 20)
    fps = args.fps if args.fps is not None else (30.0 if live else 0.0)
    try:
        if per_mode < 1 or fps < 0 or args.modes < 1:
            raise SlimsplitError("--frames and --modes must be >= 1 and --fps >= 0")
        bundle_path = args.bundle if args.bundle is not None else default_bundle_path()
        bundle = Bundle.open(bundle_path)
        manifest = bundle.manifest
        modes = (manifest.mode(args.mode).name,) if args.mode else demo_modes(manifest, args.modes)
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
        total = per_mode * len(modes)
        run = EdgeRun(
            manifest=manifest,
            encoder=encoder,
            controller=SweepController(modes, per_mode),
            mode_table=mode_options(manifest),
            frames=source.take(total, cycle=True),
            target=server.address,
            client=replace(ClientConfig(), target=server.address, max_in_flight=4, deadline_ms=2000.0),
            fps=fps,
            unary=args.unary,
            modes=modes,
        )
        display = make_display(out, quiet=args.quiet, live=live, class_names=manifest.classes)
        header = (
            f"{PROG}: server {server.address} ({args.backend}), edge encoder in ONNX Runtime, "
            f"{'Infer' if args.unary else 'InferStream'}; model {manifest.name} {manifest.version}; "
            f"modes {', '.join(modes)} x {per_mode} frames; {source.description}"
        )
        _report, summary = asyncio.run(run_edge(run, display, header))
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
    return exit_status(summary)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
