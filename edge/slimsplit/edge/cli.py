"""``slimsplit-edge``: encode frames on this device and have a slimsplit server finish the inference.

The flags override the TOML file given with ``--config`` (:class:`~slimsplit.edge.config.EdgeConfig`), which
overrides the defaults; ``--print-config`` prints the effective configuration in the file's form.

Exit status (:data:`~slimsplit.edge.cli_common.EXIT_STATUS_HELP`): 0 = the run went to its end and passed the
exit rule (:class:`~slimsplit.edge.config.ExitRule`: ``--min-hit-rate``, ``--max-drop-rate``); 1 = it did not (no
frame answered, or a threshold missed); 2 = a usage problem (bad address, missing bundle, unknown mode or
controller, unreadable source or link trace, unwritable ``--json-out``: all found before connecting; or an
emulated link too slow to carry the start-up exchange); 3 = the server could not be reached, refused this device
(``UNAUTHENTICATED``/``PERMISSION_DENIED``: its token or certificate, or it was revoked, also during the run) or
does not serve this bundle; 130 = interrupted (Ctrl-C during the frames: the partial summary is printed and
``--json-out`` written with ``"interrupted": true``); 141 = output pipe closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from slimsplit.edge import cli_common
from slimsplit.edge.auth import TOKEN_KEY, read_token
from slimsplit.edge.capture import LiveOptions, LiveSource
from slimsplit.edge.channel import credentials
from slimsplit.edge.cli_common import EXIT_BROKEN_PIPE as EXIT_BROKEN_PIPE
from slimsplit.edge.cli_common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from slimsplit.edge.cli_common import EXIT_SERVER as EXIT_SERVER
from slimsplit.edge.cli_common import EXIT_USAGE as EXIT_USAGE
from slimsplit.edge.config import (
    TRANSMISSIONS,
    AuthSettings,
    EdgeConfig,
    FramesSettings,
    load_edge_config,
    replica_count,
)
from slimsplit.edge.display import make_display
from slimsplit.edge.link import EmulatedLink
from slimsplit.edge.run import (
    EdgeRun,
    Stop,
    client_meta,
    modes_by_payload,
    run_edge,
)
from slimsplit.edge.sources import open_frames
from slimsplit.edge.status_file import status_main
from slimsplit.edge.unattended import Unattended, for_run
from slimsplit.errors import ConfigError
from slimsplit.protocol import DEFAULT_PORT
from slimsplit.settings import renamed, to_toml

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
            f"{prog} --controller mpc --deadline-ms 100 --fps 30 --frames 600 --link 2mbit;   "
            f"{prog} --config edge.toml --print-config;   "
            f"{prog} status [--file PATH] [--json] (what a running edge wrote to its status file)   "
            "(start the server with slimsplit-server, or try everything at once with slimsplit-demo)\n\n"
            + cli_common.exit_status_help()
        ),
        formatter_class=cli_common.HelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (the flags override it; --print-config shows its form)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (defaults, --config file, flags) as TOML and exit",
    )
    net = p.add_argument_group("server")
    net.add_argument(
        "--server",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        action=cli_common.AddressesAction,
        help="address of the slimsplit server (default: %(default)s; IPv6 as [::1]:PORT); replicas of one "
        "service: repeat the flag or separate IP addresses with commas, or dns:///NAME:PORT (every address of the "
        "name): frames are balanced over them (round_robin) and a frame in flight on one that dies is re-sent once "
        "on another",
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
    cli_common.add_credential_arguments(net)
    net.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per prediction (default: %(default)s)")

    model = cli_common.add_control_arguments(
        p,
        controller="fixed",
        deadline_ms=1000.0,
        fps=0.0,
        fps_note="; 0 = as fast as slots free up, frames then wait",
    )
    model.add_argument(
        "--transmission",
        choices=TRANSMISSIONS,
        default="frames",
        help="frames: each frame one message of the feature codec; planes: each frame as bit planes, most "
        "significant first, sent only while they can still arrive by the deadline (progressive transmission over "
        "PlaneStream; the server decodes the planes it has; pair with --controller planes, which picks the width) "
        "(default: %(default)s)",
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
        help="frames to send (default: the whole source once; more repeats a stored source)",
    )
    src.add_argument(
        "--stall-s",
        type=float,
        default=FramesSettings().stall_s,
        metavar="S",
        help="a live source (camera, video, stream) with no new frame for S seconds ends the run (default %(default)s)",
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
    p.add_argument_group("unattended").add_argument(
        "--status-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the last minute's status (frames, in-time rate, modes, link estimate, server reachable) there "
        "as JSON every few seconds ([output] status_every_s), for 'slimsplit-edge status' (default: "
        "$STATE_DIRECTORY/status.json under systemd, else none)",
    )
    cli_common.add_exit_arguments(p)
    return p


#: Where each flag's value goes in the configuration file: argparse ``dest`` -> (table, key).
CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "server": ("server", "address"),
    "unary": ("server", "unary"),
    "give_up_ms": ("server", "give_up_ms"),
    "rtt_pings": ("server", "rtt_pings"),
    "connect_timeout": ("server", "connect_timeout_s"),
    "top_k": ("server", "top_k"),
    "tls_ca": ("tls", "ca"),
    "tls_cert": ("tls", "cert"),
    "tls_key": ("tls", "key"),
    "token_file": ("auth", "token_file"),
    "bundle": ("model", "bundle"),
    "threads": ("model", "threads"),
    "controller": ("control", "controller"),
    "mode": ("control", "mode"),
    "transmission": ("control", "transmission"),
    "deadline_ms": ("control", "deadline_ms"),
    "fps": ("control", "fps"),
    "max_in_flight": ("control", "max_in_flight"),
    "source": ("frames", "source"),
    "frames": ("frames", "count"),
    "stall_s": ("frames", "stall_s"),
    "link": ("link", "uplink"),
    "downlink": ("link", "downlink"),
    "link_delay_ms": ("link", "delay_ms"),
    "link_queue_bytes": ("link", "queue_bytes"),
    "link_offset_s": ("link", "offset_s"),
    "json_out": ("output", "json_out"),
    "quiet": ("output", "quiet"),
    "plain": ("output", "plain"),
    "every": ("output", "every"),
    "status_file": ("output", "status_file"),
    "min_hit_rate": ("output", "min_hit_rate"),
    "max_drop_rate": ("output", "max_drop_rate"),
}


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The flags present on the command line ``argv`` (argparse ``dest`` -> value), defaults left out. ``argv`` is
    parsed as usual first, so ``--help`` and a bad flag end the program as they always do."""
    parser.parse_args(argv)
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return vars(namespace)


def overrides_from_flags(given: dict[str, Any]) -> dict[str, Any]:
    """The given flags (:func:`given_flags`), nested like the configuration file."""
    out: dict[str, Any] = {}
    for dest, value in given.items():
        if dest in CONFIG_KEYS:
            table, key = CONFIG_KEYS[dest]
            out.setdefault(table, {})[key] = value
    return out


def config_from_args(
    args: argparse.Namespace, given: dict[str, Any], parser: argparse.ArgumentParser | None = None
) -> EdgeConfig:
    """Defaults < ``--config`` file < the given flags. A bad value names its flag when a flag gave it, else its
    key in the file."""
    with naming_keys(args, given, parser):
        return load_edge_config(args.config, overrides_from_flags(given))


@contextlib.contextmanager
def naming_keys(
    args: argparse.Namespace, given: dict[str, Any], parser: argparse.ArgumentParser | None = None, table: str = ""
) -> Iterator[None]:
    """A :class:`ConfigError` naming a key of the configuration (``table.key``; ``table``: prefixed to a key
    without one) names its flag when a flag gave the value, else the key in the ``--config`` file."""
    try:
        yield
    except ConfigError as exc:
        key = exc.context.get("key")
        if not isinstance(key, str):
            raise
        key = f"{table}.{key}" if table else key
        flags = {
            ".".join(CONFIG_KEYS[a.dest]): a.option_strings[0]
            for a in (parser or build_parser())._actions
            if a.dest in given and a.dest in CONFIG_KEYS
        }
        if key in flags:
            raise renamed(exc, flags[key]) from exc
        if args.config is not None:
            detail = exc.context.get("detail")
            message = f"{key}: {detail}" if isinstance(detail, str) else str(exc)
            raise ConfigError(f"{args.config}: {message}", **exc.context) from exc
        raise


@dataclass(frozen=True)
class _Prepared:
    config: EdgeConfig
    run: EdgeRun | None = None  # None: --print-config
    source_description: str = ""
    mode: str = ""
    link: EmulatedLink | None = None


def _prepare(args: argparse.Namespace, console: cli_common.Console, given: dict[str, Any] | None = None) -> _Prepared:
    """Everything that can be checked before touching the network (each failure is a usage error)."""
    given = given if given is not None else {}
    config = config_from_args(args, given)
    if args.print_config:
        return _Prepared(config)
    cli_common.check_json_out(config.output.json_out)
    control = config.control
    client = config.client()
    with naming_keys(args, given):  # the files are read and checked before anything connects
        credentials(client.tls, _token(client.auth, console), target=client.target)
    with naming_keys(args, given, table="link"):
        link = cli_common.link_from_options(config.link)
    if link is not None and replica_count(client.target) != 1:
        raise ConfigError("--link: an emulated link goes in front of one server; give one --server address")
    bundle = cli_common.bundle_from_path(config.model.bundle)
    manifest = bundle.manifest
    with cli_common.naming_flags(cli_common.CONTROL_FLAGS):
        plan = cli_common.control_plan(control.controller, manifest, control.run, control.options(), top_k=client.top_k)
    source = open_frames(
        config.frames.source, manifest.input, manifest.classes, LiveOptions(stall_s=config.frames.stall_s)
    )
    if isinstance(source, LiveSource):
        # a live source paces itself: --fps N takes the newest frame N times a second; unset (0 and not given), a
        # camera gives each new frame and a file plays at its own rate; --fps 0 given: a file as fast as it decodes
        rate = control.fps if control.fps > 0 or "fps" in given else None
        frames: Any = source.take(config.frames.count, fps=rate)
    else:
        frames = source.take(config.frames.count, cycle=True)
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime  # onnxruntime: import only when needed

    planes = control.transmission == "planes"
    if planes and config.server.unary:
        raise ConfigError("--unary: frames sent as bit planes travel on a stream (--transmission planes)")
    encoder = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=config.model.threads), planes=planes)
    run = EdgeRun(
        manifest=manifest,
        encoder=encoder,
        controller=plan.factory,
        mode_table=plan.table,
        frames=frames,
        target=client.target,
        client=client,
        fps=control.fps,
        unary=config.server.unary,
        planes=planes,
        modes=plan.modes,
        route=link.route if link is not None else None,
        rtt_pings=config.server.rtt_pings,
        stop=Stop(),
        # every frame's record only for what needs them (the JSON, the link check): a camera runs for days
        keep_records=config.output.json_out is not None or link is not None,
    )
    console.notes(source.notes)
    return _Prepared(config, run, source.description, plan.mode_label, link)


def _token(auth: AuthSettings, console: cli_common.Console) -> str | None:
    """The token of ``auth`` (read and checked now; a file the group or others may read is a note)."""
    if auth.token_file is None:
        return None
    return read_token(auth.token_file, TOKEN_KEY, warn=lambda problem: console.notes([problem]))


def link_meta(link: EmulatedLink, config: EdgeConfig) -> dict[str, object]:
    """The emulated link as given and as understood, for the JSON output."""
    c = link.config
    return {
        "uplink": config.link.uplink,
        "downlink": config.link.downlink,
        "delay_ms": c.delay_ms,
        "queue_bytes": c.queue_bytes,
        "offset_s": c.start_offset_s,
        "uplink_mean_bps": c.uplink.mean_bps if c.uplink is not None else None,
        "description": link.describe(),
        "t_s": "frames' t_s is link time: seconds since the proxy started (trace time minus offset_s)",
    }


def _run(prepared: _Prepared, args: argparse.Namespace, console: cli_common.Console) -> int:
    """Stream the frames, show them, write the JSON; the exit status (or print the configuration)."""
    config, run, link = prepared.config, prepared.run, prepared.link
    if run is None:
        console.out.write(to_toml(config))
        console.out.flush()
        return 0
    out = config.output
    display = make_display(
        console.out,
        quiet=out.quiet,
        live=False if out.plain or out.every > 0 else None,
        class_names=run.manifest.classes,
        every=out.every,
        capacity=link.uplink_bps if link is not None else None,
        mode_order=modes_by_payload(run.manifest),
    )
    display = for_run(
        display,
        output=out,
        client=run.client,
        fps=run.fps,
        source_stall_s=config.frames.stall_s,
        meta={
            "target": run.target,
            "model": f"{run.manifest.name} {run.manifest.version}",
            "controller": f"{config.control.controller} ({prepared.mode})",
            "source": prepared.source_description,
        },
        capacity=link.uplink_bps if link is not None else None,
        warn=lambda message: console.notes([message]),
    )
    transport = "Infer (unary)" if run.unary else "PlaneStream (bit planes)" if run.planes else "InferStream"
    header = (
        f"slimsplit edge -> {run.target} over {transport}  model {run.manifest.name} {run.manifest.version}  "
        f"controller {config.control.controller} ({prepared.mode})  deadline {config.control.deadline_ms:g} ms  "
        f"source {prepared.source_description}"
    )
    if link is not None:
        header += f"\n  link: {link.describe()}"
    stop = run.stop or Stop()
    try:
        report, summary = asyncio.run(cli_common.interruptible(console, stop, run_edge(run, display, header)))
    finally:
        if isinstance(display, Unattended):
            display.close("failed")  # the run ended without its summary (finish closes it otherwise)
    meta = {
        "target": run.target,
        "model": run.manifest.name,
        "version": run.manifest.version,
        "controller": config.control.controller,
        "mode": prepared.mode,
        "deadline_ms": run.client.deadline_ms,
        "give_up_ms": run.client.give_up_ms,
        "max_in_flight": run.client.max_in_flight,
        "rtt_ms": report.rtt_ms,
        "source": prepared.source_description,
        "unary": run.unary,
        "fps": run.fps,
        "link": None if link is None else link_meta(link, config),
        "client": client_meta(run.client),
    }
    cli_common.report_link_check(console, link, report, run.mode_table, run.modes, meta)
    return cli_common.finish_run(console, out.json_out, report, summary, meta, rule=out.exit_rule(), stop=stop)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:], stdout=stdout, stderr=stderr)
    prepare = functools.partial(_prepare, given=given_flags(parser, argv))
    return cli_common.run_main(parser, argv, prepare, _run, stdout=stdout, stderr=stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
