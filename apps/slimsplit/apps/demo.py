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
``--deadline-ms``, ``--fps``, ``--seconds`` / ``--frames``. ``--link none --controller sweep`` shows a few modes in
turn without emulation.

Security is on as in a deployment: the demo makes a temporary development PKI
(:func:`slimsplit.apps.certs.make_dev_pki`: a CA, a server certificate for 127.0.0.1, a device ``demo-edge`` with its
certificate and bearer token, a devices file), serves over TLS with client certificates required (mTLS) and that
devices file, and the edge connects with its certificate and token; the folder is removed at the end.
``--no-tls``: plaintext on loopback, no token. One line of the output says which.

Needs the server extra (it imports the server); the edge part is exactly what ``slimsplit-edge`` runs, with the
same exit statuses (:data:`~slimsplit.edge.cli_common.EXIT_STATUS_HELP`): the shipped trace's outage drops frames,
which is what the demo shows, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from slimsplit.bundle import Manifest
from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.edge import cli_common
from slimsplit.edge.client import frame_overhead_bytes
from slimsplit.edge.config import AuthSettings, ClientConfig, ExitRule, TlsSettings
from slimsplit.edge.display import make_display, wants_live
from slimsplit.edge.link import EmulatedLink
from slimsplit.edge.run import (
    ControllerFactory,
    EdgeRun,
    Stop,
    default_give_up_ms,
    mode_options,
    modes_by_payload,
    run_edge,
)
from slimsplit.edge.sources import SAMPLE, FrameSource, open_source
from slimsplit.errors import ConfigError
from slimsplit.link.synth import shipped_traces_dir

if TYPE_CHECKING:
    from slimsplit.edge.runtime import EncoderRuntime
    from slimsplit.server.app import ServerThread
    from slimsplit.server.config import AuthConfig, TlsConfig

PROG = "slimsplit-demo"
#: The shipped trace the demo drives the uplink with, and where in it the demo starts: from 6 s on it falls from
#: 0.7 to 0.25-0.4 Mbit/s, goes out for 3 s (12-15 s), limps back at 0.25 and recovers to 2 Mbit/s at 19 s.
DEMO_TRACE = "ge-outages.trace"
DEMO_OFFSET_S = 6.0
DEMO_SECONDS_LIVE = 24.0
DEMO_SECONDS_PLAIN = 10.0
SWEEP = "sweep"
#: The device the demo's edge authenticates as (its certificate's SAN and its token's entry in the devices file).
DEMO_DEVICE = "demo-edge"


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
        epilog=f"a few modes in turn without emulation: {PROG} --link none --controller sweep\n\n"
        + cli_common.exit_status_help(server=" (the server this demo starts)"),
        formatter_class=cli_common.HelpFormatter,
    )
    model = cli_common.add_control_arguments(
        p,
        controller=None,
        deadline_ms=100.0,
        fps=30.0,
        fps_note="; 0 needs --frames",
        extra_controllers=((SWEEP, "visit --modes modes in turn"),),
    )
    model.add_argument("--modes", type=int, default=3, metavar="N", help=f"modes the {SWEEP} visits (default 3)")
    cli_common.add_link_arguments(
        p,
        uplink=None,
        uplink_text=f"the shipped {DEMO_TRACE}",
        offset_s=None,
        offset_text=f"{DEMO_OFFSET_S:g} for the default trace, else 0",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"how long to stream (default: {DEMO_SECONDS_LIVE:g} on a terminal, {DEMO_SECONDS_PLAIN:g} under CI "
        "or without a TTY)",
    )
    run.add_argument("--frames", type=int, default=None, metavar="N", help="how many frames (instead of --seconds)")
    run.add_argument("--unary", action="store_true", help="one Infer call per frame instead of InferStream")
    cli_common.add_transmission_argument(run)
    run.add_argument("--backend", default="onnxruntime", help="server backend (default: %(default)s)")
    run.add_argument(
        "--no-tls",
        action="store_true",
        help=f"plaintext, no token (default: TLS + mTLS + a bearer token: device {DEMO_DEVICE} of a temporary "
        "development PKI)",
    )
    cli_common.add_output_arguments(
        p,
        summary="the summary",
        json_contents="every frame and the summary",
        plain_help="one plain line per frame, even on a terminal",
        every=1.0,
        every_help="without a terminal: one line every S seconds (default %(default)s; 0 = one line per frame)",
    )
    cli_common.add_exit_arguments(p)
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


@dataclass(frozen=True)
class _Choice:
    """The controller's label, the controller (or its factory), its mode table and the modes it may use."""

    label: str
    controller: Controller | ControllerFactory
    table: tuple[ModeOption, ...]
    modes: tuple[str, ...]


def _controller(args: argparse.Namespace, name: str, manifest: Manifest, frames: int, top_k: int) -> _Choice:
    if name == SWEEP:
        if args.modes < 1:
            raise ConfigError(f"--modes must be >= 1, got {args.modes}")
        modes = demo_modes(manifest, args.modes)
        per_mode = max(1, -(-frames // len(modes)))
        table = mode_options(manifest, overhead_bytes=frame_overhead_bytes(manifest.name, manifest.version, top_k))
        label = f"{SWEEP} ({', '.join(modes)}; {per_mode} frames each)"
        return _Choice(label, SweepController(modes, per_mode), table, modes)
    plan = cli_common.plan_control(args, manifest, name, top_k=top_k)  # fails now (unknown mode, unmeasured bundle)
    return _Choice(f"fixed ({plan.mode})" if plan.fixed else name, plan.factory, plan.table, plan.modes)


def _link(args: argparse.Namespace) -> EmulatedLink | None:
    """``--link``, else the shipped :data:`DEMO_TRACE` from :data:`DEMO_OFFSET_S` seconds in."""
    shipped = args.link is None
    offset = args.link_offset_s if args.link_offset_s is not None else (DEMO_OFFSET_S if shipped else 0.0)
    return cli_common.link_from_args(args, uplink=str(demo_trace()) if shipped else None, offset_s=offset)


@dataclass(frozen=True)
class _Demo:
    """Everything built before the stream starts, the server included."""

    live: bool
    frames: int
    rule: ExitRule
    link: EmulatedLink | None
    manifest: Manifest
    choice: _Choice
    client: ClientConfig
    source: FrameSource
    encoder: EncoderRuntime
    server: ServerThread
    security: str  # the security line of the output
    pki: Path | None = None  # the temporary PKI folder (removed at the end), None with --no-tls


@dataclass(frozen=True)
class _Secured:
    """What the server and the edge are given for TLS + mTLS + a token (or nothing: plaintext)."""

    line: str
    tls: TlsConfig
    auth: AuthConfig
    client: ClientConfig
    pki: Path | None


def _secure(args: argparse.Namespace, client: ClientConfig) -> _Secured:
    """A temporary development PKI for the server and the :data:`DEMO_DEVICE` edge, unless ``--no-tls``."""
    from slimsplit.server.config import AuthConfig, TlsConfig

    if args.no_tls:
        return _Secured("plaintext on loopback, no token (--no-tls)", TlsConfig(), AuthConfig(), client, None)
    from slimsplit.apps import certs

    folder = Path(tempfile.mkdtemp(prefix="slimsplit-demo-pki-"))
    try:
        pki = certs.make_dev_pki(folder, [DEMO_DEVICE], devices=folder / "devices.toml")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    device = pki.devices[DEMO_DEVICE]
    tls = TlsSettings(ca=pki.ca.cert, cert=device.cert, key=device.key)
    return _Secured(
        f"TLS + mTLS + bearer token, device {DEMO_DEVICE} (a temporary development PKI, removed at the end)",
        TlsConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert),
        AuthConfig(devices_file=pki.devices_file),
        replace(client, tls=tls, auth=AuthSettings(token_file=device.token)),
        folder,
    )


def _prepare(args: argparse.Namespace, console: cli_common.Console) -> _Demo:
    """Check the flags, open the bundle, the source and the link, start the server (each failure a usage error)."""
    live = False if args.plain or args.quiet else wants_live(console.out)
    planes = cli_common.check_transmission_args(args, unary=args.unary)
    name = cli_common.check_control_args(args, extra=(SWEEP,))
    if args.every < 0:
        raise ConfigError(f"--every must be >= 0, got {args.every}")
    rule = cli_common.exit_rule_from_args(args)
    cli_common.check_json_out(args.json_out)
    frames = _frames(args, live)
    link = _link(args)
    bundle = cli_common.bundle_from_args(args)
    manifest = bundle.manifest
    client = ClientConfig(
        max_in_flight=args.max_in_flight,
        deadline_ms=args.deadline_ms,
        give_up_ms=default_give_up_ms(args.deadline_ms),
    )
    choice = _controller(args, name, manifest, frames, client.top_k)
    source = open_source(SAMPLE, manifest.input, manifest.classes)
    from slimsplit.edge.runtime import EncoderRuntime
    from slimsplit.server.app import ServerThread
    from slimsplit.server.config import BackendConfig, GrpcConfig, ServerConfig

    encoder = EncoderRuntime(bundle, planes=planes)
    secured = _secure(args, client)
    try:
        config = ServerConfig(
            models=(bundle.root,),
            log_level="warning",
            grpc=GrpcConfig(host="127.0.0.1", port=0, grace_s=1.0),
            backend=BackendConfig(name=args.backend),
            tls=secured.tls,
            auth=secured.auth,
        )
        console.out.write(f"{PROG}: starting a server on 127.0.0.1 with {args.backend} ...\n")
        console.out.write(f"{PROG}: security: {secured.line}\n")
        console.out.flush()
        server = ServerThread(config).start()
    except BaseException:
        _remove(secured.pki)
        raise
    return _Demo(
        live, frames, rule, link, manifest, choice, secured.client, source, encoder, server, secured.line, secured.pki
    )


def _rpc(args: argparse.Namespace) -> str:
    if args.unary:
        return "Infer"
    return "PlaneStream (bit planes)" if args.transmission == "planes" else "InferStream"


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _run(demo: _Demo, args: argparse.Namespace, console: cli_common.Console) -> int:
    """Stream the frames through the link to the server, show them, stop the server, write the JSON."""
    manifest, link, frames = demo.manifest, demo.link, demo.frames
    stop = Stop()
    try:
        target = demo.server.address
        run = EdgeRun(
            manifest=manifest,
            encoder=demo.encoder,
            controller=demo.choice.controller,
            mode_table=demo.choice.table,
            frames=demo.source.take(frames, cycle=True),
            target=target,
            client=replace(demo.client, target=target),
            fps=args.fps,
            unary=args.unary,
            planes=args.transmission == "planes",
            modes=demo.choice.modes,
            route=link.route if link is not None else None,
            stop=stop,
        )
        display = make_display(
            console.out,
            quiet=args.quiet,
            live=demo.live,
            class_names=manifest.classes,
            every=0.0 if args.plain else args.every,
            capacity=link.uplink_bps if link is not None else None,
            mode_order=modes_by_payload(manifest),
        )
        seconds = f" ({frames / args.fps:g} s)" if args.fps > 0 else ""
        header = (
            f"{PROG}: server {target} ({args.backend}), edge encoder in ONNX Runtime, "
            f"{_rpc(args)}; model {manifest.name} {manifest.version}; "
            f"controller {demo.choice.label}; deadline {args.deadline_ms:g} ms; {frames} frames at {args.fps:g} fps"
            f"{seconds} from {demo.source.description}\n"
            f"  link: {link.describe() if link is not None else 'none (direct loopback)'}"
        )
        report, summary = asyncio.run(cli_common.interruptible(console, stop, run_edge(run, display, header)))
    finally:
        demo.server.stop(grace=1.0)
        _remove(demo.pki)
    meta = {
        "demo": True,
        "target": target,
        "model": manifest.name,
        "version": manifest.version,
        "controller": demo.choice.label,
        "deadline_ms": args.deadline_ms,
        "fps": args.fps,
        "rtt_ms": report.rtt_ms,
        "link": link.describe() if link is not None else None,
        "security": "plaintext" if demo.pki is None else "mtls+token",
        "device_id": None if demo.pki is None else DEMO_DEVICE,
    }
    cli_common.report_link_check(console, link, report, demo.choice.table, demo.choice.modes, meta)
    return cli_common.finish_run(console, args.json_out, report, summary, meta, rule=demo.rule, stop=stop)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    return cli_common.run_main(build_parser(), argv, _prepare, _run, stdout=stdout, stderr=stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
