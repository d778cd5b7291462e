"""``slimsplit-loadtest``'s main: prepare, start or dial the server, run the clients, print and write the report."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from slimsplit.apps.loadtest.aggregate import aggregate, collect, load_exit_status, load_failure
from slimsplit.apps.loadtest.args import PROG, build_parser, link_specs
from slimsplit.apps.loadtest.plan import Setup, build_runs, prepare
from slimsplit.apps.loadtest.report import format_report, write_report
from slimsplit.apps.loadtest.run import ClientOutcome, run_clients
from slimsplit.apps.loadtest.security import Security, identity_of, security_for
from slimsplit.apps.loadtest.server_process import ServerProcess, check_server_extra, start_failed, start_for_args
from slimsplit.apps.loadtest.sweep_run import SweepSetup, prepare_sweep, run_sweep
from slimsplit.edge import cli_common
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import parse_address
from slimsplit.edge.run import Connect, Stop
from slimsplit.errors import ConfigError, SlimsplitError


def _meta(args: argparse.Namespace, setup: Setup, target: str, security: Security) -> dict[str, Any]:
    server = None
    if args.start_server:
        server = f"slimsplit-server process ({args.server_backend}, max batch {args.max_batch_size})"
    elif args.in_process:
        server = f"in-process core ({args.server_backend}, max batch {args.max_batch_size})"
    return {
        "target": target,
        "server": server,
        "model": setup.manifest.name,
        "version": setup.manifest.version,
        "controller": setup.control.name,
        "mode": setup.control.mode_label,
        "clients": len(setup.plans),
        "fps": args.fps,
        "seconds": args.seconds,
        "frames_per_client": setup.frames,
        "deadline_ms": setup.client.deadline_ms,
        "give_up_ms": setup.client.give_up_ms,
        "max_in_flight": setup.client.max_in_flight,
        "links": link_specs(args),
        "offset_stride_s": args.offset_stride_s,
        "link_offset_s": args.link_offset_s,
        "link_delay_ms": args.link_delay_ms,
        "downlink": args.downlink,
        "source": setup.source.description,
        "encoder_threads": args.encoder_threads,
        "security": security.label,
        "security_description": security.description,
        "device_ids": [identity_of(security, p.index).device_id for p in setup.plans],
    }


def _say(args: argparse.Namespace, console: cli_common.Console, line: str) -> None:
    if not args.quiet:
        console.err.write(f"{PROG}: {line}\n")
        console.err.flush()


def _in_process(args: argparse.Namespace, setup: Setup) -> tuple[Connect, Callable[[], Awaitable[None]]]:
    """``--in-process``: a core for the clients to talk to, and what closes it (on the run's event loop)."""
    check_server_extra()
    from slimsplit.apps import inprocess  # the server package: only for --in-process

    core = inprocess.start_core(setup.bundle_path, backend=args.server_backend, max_batch_size=args.max_batch_size)
    return inprocess.connector(core), core.aclose


def _run_secured(setup: Setup, args: argparse.Namespace, console: cli_common.Console, security: Security) -> int:
    """Start the server (``--start-server``, ``--in-process``), run every client, print the table, write the JSON;
    the exit status (Ctrl-C during the frames stops every client: the table and the JSON then cover the frames
    before it, and the status is 130)."""
    out = console.out
    stop = Stop()
    server: ServerProcess | None = None
    connect: Connect = EdgeClient
    close_core: Callable[[], Awaitable[None]] | None = None
    if args.start_server or args.in_process:
        where = "in this process" if args.in_process else "on 127.0.0.1"
        _say(args, console, f"starting a server {where} with {args.server_backend} ...")
        try:
            if args.in_process:
                connect, close_core = _in_process(args, setup)
                target = "in-process"
            else:
                server = start_for_args(args, setup.bundle_path, security.server)
                target = server.address
        except (SlimsplitError, OSError) as exc:
            return start_failed(console, exc)
    else:
        target = parse_address(args.server)
    try:
        runs = build_runs(setup, target, args.fps, connect, stop, security)
        if not args.quiet:
            out.write(
                f"{PROG}: {len(runs)} clients -> {target}; model {setup.manifest.name} {setup.manifest.version}; "
                f"controller {setup.control.name} ({setup.control.mode_label}); {setup.frames} frames each at "
                f"{args.fps:g} fps; deadline {args.deadline_ms:g} ms; source {setup.source.description}\n"
                f"  security: {security.description}\n"
            )
            for plan in setup.plans:
                device = identity_of(security, plan.index).device_id
                out.write(f"  client {plan.index}{f' ({device})' if device else ''}: {plan.describe()}\n")
            out.flush()

        async def clients_run() -> tuple[list[ClientOutcome], float]:
            try:
                return await run_clients(
                    runs,
                    time_limit_s=setup.time_limit_s,
                    total_frames=setup.frames * len(runs),
                    progress=None if args.quiet else console.err,
                    every_s=args.every,
                )
            finally:
                if close_core is not None:
                    await close_core()

        outcomes, wall_s = asyncio.run(cli_common.interruptible(console, stop, clients_run()))
        ids = [identity_of(security, p.index).device_id for p in setup.plans]
        clients = collect(setup.plans, outcomes, setup.control.table, setup.control.modes, ids)
        overall = aggregate(clients, wall_s)
        out.write(format_report(clients, overall) + "\n")
        out.flush()
    finally:
        if server is not None:
            died = server.exited()
            if died is not None:
                console.error(server.with_stderr(f"the server exited with status {died} during the run"))
            server.close()
    for c in clients:
        if c.error:
            console.error(f"client {c.index}: {c.error}")
    meta = _meta(args, setup, target, security)
    status = load_exit_status(clients, setup.rule)
    if stop.requested or status in (0, cli_common.EXIT_FAILED):
        status = cli_common.end_status(console, load_failure(clients, setup.rule) if status else None, stop)
    return cli_common.write_json_out(
        console,
        args.json_out,
        lambda path: write_report(path, clients, overall, meta, interrupted=stop.requested),
        status,
    )


def _prepare_any(args: argparse.Namespace, console: cli_common.Console) -> Setup | SweepSetup:
    """A sweep's set-up with ``--sweep``, else the clients' set-up."""
    return prepare_sweep(args, console) if args.sweep is not None else prepare(args, console)


def _run_any(setup: Setup | SweepSetup, args: argparse.Namespace, console: cli_common.Console) -> int:
    """The run's credentials (:mod:`~slimsplit.apps.loadtest.security`: one identity per client, or per generator
    process in a sweep; none for a simulated sweep), then the sweep or the clients; a temporary PKI is removed at
    the end."""
    if isinstance(setup, SweepSetup):
        if args.simulate:
            return run_sweep(setup, args, console, None)
        identities = args.procs
    else:
        identities = len(setup.plans)
    try:
        security = security_for(args, identities)
    except (ConfigError, OSError) as exc:
        console.error(f"credentials: {exc}")
        return cli_common.EXIT_USAGE
    with security:
        if isinstance(setup, SweepSetup):
            return run_sweep(setup, args, console, security)
        return _run_secured(setup, args, console, security)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    return cli_common.run_main(build_parser(), argv, _prepare_any, _run_any, stdout=stdout, stderr=stderr)


__all__ = ["main"]
