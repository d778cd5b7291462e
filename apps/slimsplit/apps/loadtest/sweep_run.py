"""``--sweep``: encode the payloads once, run every load point (simulated, or live from ``--procs`` processes
against ``--server``/``--start-server``), print the table, write ``--report-dir``; exit 0 when some point met the
SLO, 1 when none did."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimsplit.apps.loadtest.args import PROG
from slimsplit.apps.loadtest.generate import run_live_point
from slimsplit.apps.loadtest.payloads import Payloads, precompute
from slimsplit.apps.loadtest.security import Security
from slimsplit.apps.loadtest.server_process import start_failed, start_for_args
from slimsplit.apps.loadtest.simulate import ServerModel, simulate_point
from slimsplit.apps.loadtest.sweep import PointResult, Slo, Sweep, best_point, parse_sweep, point_result
from slimsplit.apps.loadtest.sweep_report import document, format_sweep, write_sweep
from slimsplit.edge import cli_common
from slimsplit.edge.auth import read_token
from slimsplit.edge.config import parse_address
from slimsplit.edge.run import default_give_up_ms
from slimsplit.edge.sources import open_source
from slimsplit.errors import SlimsplitError


@dataclass(frozen=True)
class SweepSetup:
    sweep: Sweep
    slo: Slo
    payloads: Payloads
    give_up_ms: float
    meta: dict[str, Any]
    bundle_root: Path


def prepare_sweep(args: argparse.Namespace, console: cli_common.Console) -> SweepSetup:
    """Checks and payloads (each failure a usage error)."""
    from slimsplit.apps.loadtest.args import check_args

    controller = check_args(args)
    sweep = parse_sweep(args.sweep)
    slo = Slo(args.slo_p99_ms if args.slo_p99_ms is not None else args.deadline_ms, args.slo_in_time)
    if args.server is not None:
        parse_address(args.server)
    bundle = cli_common.bundle_from_args(args)
    manifest = bundle.manifest
    control = cli_common.plan_control(args, manifest, controller, top_k=5)
    modes = (control.mode,) if control.fixed else tuple(control.modes)
    source = open_source(args.source, manifest.input, manifest.classes)
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime

    encoder = EncoderRuntime(bundle, EncoderConfig(intra_op_threads=args.encoder_threads))
    payloads = precompute(encoder, source, modes, model=manifest.name, model_version=manifest.version)
    meta = {
        "server": "simulated" if args.simulate else ("started" if args.start_server else args.server),
        "model": manifest.name,
        "version": manifest.version,
        "modes": list(modes),
        "seconds_per_point": args.seconds,
        "deadline_ms": args.deadline_ms,
        "procs": 1 if args.simulate else args.procs,
        "payloads": len(payloads),
        "seed": args.seed if args.simulate else None,
        "sim_workers": args.sim_workers if args.simulate else None,
        "sim_server_ms": args.sim_server_ms if args.simulate else None,
        "source": source.description,
    }
    return SweepSetup(sweep, slo, payloads, default_give_up_ms(args.deadline_ms), meta, bundle.root)


def _credentials(security: Security) -> list[dict[str, Any]]:
    out = []
    for ident in security.identities:
        tls = ident.tls
        out.append(
            {
                "ca": tls.ca.read_bytes() if tls.ca else None,
                "cert": tls.cert.read_bytes() if tls.cert else None,
                "key": tls.key.read_bytes() if tls.key else None,
                "server_name": tls.server_name,
                "token": read_token(ident.token_file) if ident.token_file else None,
            }
        )
    return out


def run_sweep(
    setup: SweepSetup, args: argparse.Namespace, console: cli_common.Console, security: Security | None
) -> int:
    """Every load point, simulated (``security`` None) or live with ``security``'s credentials; the table and the
    reports; the exit status."""
    points: list[PointResult] = []
    sweep = setup.sweep
    if args.simulate:
        model = ServerModel(workers=args.sim_workers, default_service_ms=args.sim_server_ms)
        for i, load in enumerate(sweep.values):
            records = simulate_point(
                sweep.kind, load, setup.payloads, seconds=args.seconds, deadline_ms=args.deadline_ms,
                give_up_ms=setup.give_up_ms, model=model, seed=args.seed * 1000 + i,
            )  # fmt: skip
            points.append(point_result(sweep.kind, load, records, args.seconds, setup.slo, 1))
    else:
        assert security is not None, "a live sweep needs its credentials"
        server = None
        try:
            if args.start_server:
                try:
                    server = start_for_args(args, setup.bundle_root, security.server)
                except (SlimsplitError, OSError) as exc:
                    return start_failed(console, exc)
                target = server.address
            else:
                target = parse_address(args.server)
            creds = _credentials(security)
            for load in sweep.values:
                if not args.quiet:
                    console.err.write(f"{PROG}: point {sweep.label(load)} for {args.seconds:g} s ...\n")
                    console.err.flush()
                records = run_live_point(
                    sweep.kind, load, setup.payloads, target=target, seconds=args.seconds,
                    deadline_ms=args.deadline_ms, give_up_ms=setup.give_up_ms, procs=args.procs,
                    credentials=creds,
                )  # fmt: skip
                points.append(point_result(sweep.kind, load, records, args.seconds, setup.slo, args.procs))
        finally:
            if server is not None:
                server.close()
    console.out.write(format_sweep(sweep, points, setup.slo) + "\n")
    console.out.flush()
    if args.report_dir is not None:
        write_sweep(args.report_dir, sweep, points, setup.slo, setup.meta)
    if args.json_out is not None:
        doc = document(sweep, points, setup.slo, setup.meta)
        args.json_out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return 0 if best_point(points) is not None else cli_common.EXIT_FAILED


__all__ = ["SweepSetup", "prepare_sweep", "run_sweep"]
