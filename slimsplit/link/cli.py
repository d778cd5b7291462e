"""``slimsplit-link``: run the shaping proxy, describe and generate traces, simulate a controller over a trace.

slimsplit-link proxy --upstream 127.0.0.1:50051 --listen 127.0.0.1:50052 --uplink trace.up --delay-ms 20
slimsplit-link stats /work/shared/traces/*.up
slimsplit-link synth --shipped slimsplit/assets/traces          # regenerate the project's traces
slimsplit-link synth --out my.trace --seed 3 --duration-s 300 --good-mbps 2 --bad-mbps 0.2 --p-outage 0.3
slimsplit-link simulate --link trace.up --controller mpc --deadline-ms 300 --fps 3.33 --modes rpi4
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
from slimsplit.link.proxy import ProxyConfig, serve_forever
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, LinkConfig
from slimsplit.link.synth import gilbert_elliott, write_shipped
from slimsplit.link.trace import format_rate, load_mahimahi, load_trace_spec, write_mahimahi


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimsplit-link", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    px = sub.add_parser("proxy", help="run the shaping TCP proxy until interrupted")
    px.add_argument("--upstream", type=_hostport, required=True, help="server HOST:PORT")
    px.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT (default a free port)")
    _link_args(px)

    st = sub.add_parser("stats", help="summarise Mahimahi trace files")
    st.add_argument("traces", nargs="+", type=Path)

    sy = sub.add_parser("synth", help="generate a Gilbert–Elliott trace, or the project's shipped traces")
    sy.add_argument("--shipped", type=Path, help="write every shipped synthetic trace into this folder")
    sy.add_argument("--out", type=Path, help="output file (Mahimahi format)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--duration-s", type=float, default=120.0)
    sy.add_argument("--good-mbps", type=float, default=1.5)
    sy.add_argument("--bad-mbps", type=float, default=0.3)
    sy.add_argument("--mean-good-s", type=float, default=8.0)
    sy.add_argument("--mean-bad-s", type=float, default=3.0)
    sy.add_argument("--p-outage", type=float, default=0.0, help="probability that a bad period ends in an outage")
    sy.add_argument("--outage-s", type=float, default=1.5)

    sm = sub.add_parser("simulate", help="discrete-event simulation of a controller over a link")
    _link_args(sm)
    sm.add_argument("--controller", default="mpc")
    sm.add_argument("--deadline-ms", type=float, default=100.0)
    sm.add_argument("--fps", type=float, default=30.0)
    sm.add_argument("--duration-s", type=float, default=0.0, help="0 = one period of the uplink trace")
    sm.add_argument("--max-in-flight", type=int, default=0, help="0 = 2 x frames per deadline (at least 1)")
    sm.add_argument("--modes", default="rpi4", help="'rpi4' (published table) or a bundle folder")
    return p


def _link_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uplink", "--link", dest="uplink", default="none", help="trace file, rate (2mbit) or none")
    p.add_argument("--downlink", default="none", help="trace file, rate or none")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay")
    p.add_argument("--queue-bytes", type=int, default=DEFAULT_QUEUE_BYTES)
    p.add_argument("--start-offset-s", type=float, default=0.0)


def _link(args: argparse.Namespace) -> LinkConfig:
    return LinkConfig(
        uplink=load_trace_spec(args.uplink),
        downlink=load_trace_spec(args.downlink),
        delay_ms=args.delay_ms,
        queue_bytes=args.queue_bytes,
        start_offset_s=args.start_offset_s,
    )


def _cmd_proxy(args: argparse.Namespace) -> int:
    cfg = ProxyConfig(upstream=args.upstream, link=_link(args), listen=args.listen)

    async def run() -> None:
        from slimsplit.link.proxy import ShapingProxy

        async with ShapingProxy(cfg) as proxy:
            host, port = proxy.address or ("?", 0)
            up = cfg.link.uplink
            print(
                f"shaping proxy {host}:{port} -> {cfg.upstream[0]}:{cfg.upstream[1]}  uplink "
                f"{up.name if up else 'unshaped'}  delay {cfg.link.delay_ms:g} ms each way",
                flush=True,
            )
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    print(f"{'trace':32s} {'duration':>9s} {'mean':>9s} {'p5':>6s} {'p50':>6s} {'p95':>6s} {'zero s':>7s}")
    for path in args.traces:
        tr = load_mahimahi(path)
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

    from slimsplit.edge.control.controllers import make_controller
    from slimsplit.edge.control.modes import modes_from_manifest, rpi4_ensemble_modes
    from slimsplit.link.sim import SimConfig, simulate, summarize

    link = _link(args)
    if args.modes == "rpi4":
        modes = rpi4_ensemble_modes()
    else:
        from slimsplit.bundle import read_manifest

        modes = modes_from_manifest(read_manifest(Path(args.modes)))
    duration = args.duration_s or (link.uplink.period_s if link.uplink is not None else 60.0)
    k = args.max_in_flight or max(1, math.ceil(2 * args.deadline_ms / 1000.0 * args.fps - 1e-9))
    cfg = SimConfig(fps=args.fps, deadline_ms=args.deadline_ms, duration_s=duration, max_in_flight=k)
    opts: dict[str, object] = {}
    if args.controller == "mpc":
        opts = {"rtt_ms": link.base_rtt_s * 1000.0, "fps": args.fps, "max_in_flight": k}
    elif args.controller == "ewma-greedy":
        opts = {"rtt_ms": link.base_rtt_s * 1000.0, "max_in_flight": k}
    elif args.controller == "fixed":
        opts = {"max_in_flight": k}
    elif args.controller == "oracle":
        opts = {"link": link, "fps": args.fps, "n_frames": cfg.n_frames, "max_in_flight": k}
    ctl = make_controller(args.controller, modes, args.deadline_ms, **opts)
    res = simulate(ctl, modes, link, cfg)
    print(json.dumps(summarize(res.records, modes), indent=2))
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
