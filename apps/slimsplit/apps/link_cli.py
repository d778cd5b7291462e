"""``slimsplit-link``: run the shaping proxy, describe and generate traces, simulate a controller over a trace.

slimsplit-link proxy --upstream 127.0.0.1:50051 --listen 127.0.0.1:50052 --uplink trace.up --delay-ms 20
slimsplit-link stats                                            # the shipped traces
slimsplit-link stats shipped:ge-outages my.trace
slimsplit-link synth --shipped slimsplit/assets/traces          # regenerate the project's traces
slimsplit-link synth --out my.trace --seed 3 --duration-s 300 --good-mbps 2 --bad-mbps 0.2 --p-outage 0.3
slimsplit-link simulate --link shipped:ge-outages --controller mpc   # the shipped bundle's modes
slimsplit-link simulate --link trace.up --deadline-ms 300 --fps 3.33 --modes rpi4   # the Raspberry Pi 4 table
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.evaluation.oracle_controller import (
    EVALUATION_CONTROLLER_NAMES,
    EVALUATION_CONTROLLERS,
    make_evaluation_controller,
)
from slimsplit.link.proxy import ProxyConfig, serve_forever
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, LinkConfig
from slimsplit.link.synth import gilbert_elliott, shipped_traces_dir, write_shipped
from slimsplit.link.trace import (
    SHIPPED_PREFIX,
    format_rate,
    load_mahimahi,
    load_trace_spec,
    shipped_trace_path,
    write_mahimahi,
)


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already states its default, or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text.lower() or none or action.required:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimsplit-link", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    px = command("proxy", "run the shaping TCP proxy until interrupted")
    px.add_argument("--upstream", type=_hostport, required=True, metavar="HOST:PORT", help="the server to forward to")
    px.add_argument(
        "--listen",
        type=_hostport,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where the proxy listens (default: 127.0.0.1 on a free port, printed at start)",
    )
    _link_args(px)

    st = command("stats", "summarise Mahimahi trace files: duration, mean and percentile rates, seconds at zero")
    st.add_argument(
        "traces",
        nargs="*",
        metavar="TRACE",
        help="a trace file or shipped:NAME (default: every trace shipped with slimsplit)",
    )

    sy = command("synth", "generate a Gilbert–Elliott trace, or the project's shipped traces")
    sy.add_argument("--shipped", type=Path, metavar="DIR", help="write every shipped synthetic trace into this folder")
    sy.add_argument("--out", type=Path, metavar="FILE", help="the trace file to write (Mahimahi format)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same trace)")
    sy.add_argument("--duration-s", type=float, default=120.0, help="length of the trace, seconds")
    sy.add_argument("--good-mbps", type=float, default=1.5, help="rate in the good state, Mbit/s")
    sy.add_argument("--bad-mbps", type=float, default=0.3, help="rate in the bad state, Mbit/s")
    sy.add_argument("--mean-good-s", type=float, default=8.0, help="mean length of a good period, seconds")
    sy.add_argument("--mean-bad-s", type=float, default=3.0, help="mean length of a bad period, seconds")
    sy.add_argument("--p-outage", type=float, default=0.0, help="probability that a bad period ends in an outage")
    sy.add_argument("--outage-s", type=float, default=1.5, help="length of an outage (rate 0), seconds")

    sm = command("simulate", "discrete-event simulation of a controller over a link; prints its figures as JSON")
    _link_args(sm)
    sm.add_argument(
        "--controller",
        default="mpc",
        choices=EVALUATION_CONTROLLER_NAMES,
        help="; ".join(f"{spec.name} = {spec.summary}" for spec in EVALUATION_CONTROLLERS) + " (default: %(default)s)",
    )
    sm.add_argument("--deadline-ms", type=float, default=100.0, help="capture-to-prediction target per frame")
    sm.add_argument("--fps", type=float, default=30.0, help="frames captured per second")
    sm.add_argument(
        "--duration-s", type=float, default=0.0, help="simulated seconds; 0 = one period of the uplink trace"
    )
    sm.add_argument(
        "--max-in-flight", type=int, default=0, help="frames sent and not answered at once; 0 = 2 x frames per deadline"
    )
    sm.add_argument(
        "--modes",
        default=MODES_BUNDLE,
        metavar="TABLE",
        help=f"the modes to choose from: {MODES_BUNDLE} = the bundle shipped with slimsplit, {MODES_RPI4} = the "
        "published slimmable-ensemble table on a Raspberry Pi 4 (66-263 ms encoders, 7-28 KB frames), or a "
        "bundle folder (default: %(default)s)",
    )
    return p


MODES_BUNDLE = "bundle"
MODES_RPI4 = "rpi4"


def _link_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--uplink",
        "--link",
        dest="uplink",
        default="none",
        metavar="SPEC",
        help="a Mahimahi trace file, a shipped trace (shipped:ge-outages, see 'stats'), a rate such as 2mbit, or "
        "none = unshaped",
    )
    p.add_argument("--downlink", default="none", metavar="SPEC", help="like --uplink, for the replies")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay, each direction")
    p.add_argument(
        "--queue-bytes",
        type=int,
        default=DEFAULT_QUEUE_BYTES,
        help="bottleneck queue bound per direction, bytes; the sender holds what does not fit (back-pressure)",
    )
    p.add_argument("--start-offset-s", type=float, default=0.0, help="where in the traces the link's time 0 falls")


def _link(args: argparse.Namespace) -> LinkConfig:
    return LinkConfig(
        uplink=load_trace_spec(args.uplink),
        downlink=load_trace_spec(args.downlink),
        delay_ms=args.delay_ms,
        queue_bytes=args.queue_bytes,
        start_offset_s=args.start_offset_s,
    )


def _cmd_proxy(args: argparse.Namespace) -> int:
    from slimsplit.link.proxy import ShapingProxy

    cfg = ProxyConfig(upstream=args.upstream, link=_link(args), listen=args.listen)
    proxy = ShapingProxy(cfg)

    async def run() -> None:
        async with proxy:
            host, port = proxy.address or ("?", 0)
            up = cfg.link.uplink
            print(
                f"shaping proxy {host}:{port} -> {cfg.upstream[0]}:{cfg.upstream[1]}  uplink "
                f"{up.name if up else 'unshaped'}  delay {cfg.link.delay_ms:g} ms each way",
                flush=True,
            )
            await asyncio.Event().wait()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    finally:
        print(f"shaping proxy: {proxy.stats.summary()}", flush=True)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    specs = args.traces or [f"{SHIPPED_PREFIX}{p.stem}" for p in sorted(shipped_traces_dir().glob("*.trace"))]
    traces = [
        load_mahimahi(shipped_trace_path(s.removeprefix(SHIPPED_PREFIX)) if s.startswith(SHIPPED_PREFIX) else s)
        for s in specs
    ]
    print(f"{'trace':32s} {'duration':>9s} {'mean':>9s} {'p5':>6s} {'p50':>6s} {'p95':>6s} {'zero s':>7s}")
    for tr in traces:
        d = tr.describe()
        print(
            f"{tr.name:32s} {d['duration_s']:8.0f}s {d['mean_mbps']:6.2f}Mb/s {d['p5_mbps']:6.2f} "
            f"{d['p50_mbps']:6.2f} {d['p95_mbps']:6.2f} {d['zero_s']:7.0f}"
        )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.shipped:
        for p in write_shipped(args.shipped):
            print(p)
        return 0
    if not args.out:
        raise ConfigError("synth needs --out FILE or --shipped DIR")
    model = gilbert_elliott(
        args.good_mbps * 1e6,
        args.bad_mbps * 1e6,
        args.mean_good_s,
        args.mean_bad_s,
        args.outage_s,
        args.p_outage,
        args.duration_s,
        args.seed,
    )
    write_mahimahi(model.timestamps(), args.out)
    tr = load_mahimahi(args.out)
    print(f"{args.out}: {tr.period_s:g} s, mean {format_rate(tr.mean_bps)}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import math

    from slimsplit.control.modes import modes_from_manifest, rpi4_ensemble_modes
    from slimsplit.evaluation.sim import SimConfig, figures, simulate

    link = _link(args)
    if args.modes == MODES_RPI4:
        modes = rpi4_ensemble_modes()
        table = "rpi4: the published slimmable-ensemble table on a Raspberry Pi 4"
    else:
        from slimsplit.bundle import default_bundle_path, read_manifest

        folder = default_bundle_path() if args.modes == MODES_BUNDLE else Path(args.modes)
        manifest = read_manifest(folder)
        modes = modes_from_manifest(manifest)
        table = f"bundle {manifest.name} {manifest.version}"
    duration = args.duration_s or (link.uplink.period_s if link.uplink is not None else 60.0)
    k = args.max_in_flight or max(1, math.ceil(2 * args.deadline_ms / 1000.0 * args.fps - 1e-9))
    cfg = SimConfig(fps=args.fps, deadline_ms=args.deadline_ms, duration_s=duration, max_in_flight=k)
    # the oracle plans over the link it will run on; the adaptive controllers take the base round trip out of
    # their throughput samples
    opts: dict[str, object] = {"link": link, "n_frames": cfg.n_frames} if args.controller == "oracle" else {}
    ctl = make_evaluation_controller(args.controller, modes, cfg.run, rtt_ms=link.base_rtt_s * 1000.0, **opts)
    res = simulate(ctl, modes, link, cfg)
    print(json.dumps({"mode_table": table, **figures(res.records, modes)}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"proxy": _cmd_proxy, "stats": _cmd_stats, "synth": _cmd_synth, "simulate": _cmd_simulate}
    try:
        return handlers[args.command](args)
    except SlimsplitError as exc:
        print(f"slimsplit-link: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main", "serve_forever"]


if __name__ == "__main__":
    raise SystemExit(main())
