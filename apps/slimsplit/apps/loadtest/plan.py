"""What a load test runs, checked and built before the server is touched: each client's link, the shared setup,
and one :class:`~slimsplit.edge.run.EdgeRun` per client."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from slimsplit.apps.loadtest.args import DEFAULT_STRIDE_S, TIME_LIMIT_SLACK_S, check_args, link_specs
from slimsplit.apps.loadtest.security import Identity, Security, identity_of
from slimsplit.bundle import Manifest
from slimsplit.edge import cli_common
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig, ExitRule, parse_address
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions
from slimsplit.edge.pipeline import Encoder
from slimsplit.edge.run import Connect, EdgeRun, Stop, default_give_up_ms
from slimsplit.edge.sources import FrameSource, open_source
from slimsplit.errors import ConfigError
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, LinkConfig


@dataclass(frozen=True)
class ClientPlan:
    """One client's link: the spec as given, where in the trace it starts, and its emulator (``None``: direct)."""

    index: int
    link_spec: str
    offset_s: float
    link: EmulatedLink | None

    def describe(self) -> str:
        return self.link.describe() if self.link is not None else "none (direct)"


def plan_links(
    specs: Sequence[str],
    clients: int,
    *,
    downlink: str = DEFAULT_DOWNLINK,
    delay_ms: float = DEFAULT_DELAY_MS,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    base_offset_s: float = 0.0,
    stride_s: float = DEFAULT_STRIDE_S,
) -> list[ClientPlan]:
    """Client ``i`` gets ``specs[i % len(specs)]`` from ``base_offset_s + i * stride_s`` into the trace. Each trace
    is read once (a bad file fails here, :class:`~slimsplit.errors.TraceError` naming it); every client gets its
    own :class:`~slimsplit.edge.link.EmulatedLink` (its own proxy)."""
    if not specs:
        raise ConfigError("--link needs at least one spec")
    configs: dict[str, LinkConfig | None] = {}
    with cli_common.naming_flags(cli_common.LINK_FLAGS):
        for spec in dict.fromkeys(specs):
            options = LinkOptions(uplink=spec, downlink=downlink, delay_ms=delay_ms, queue_bytes=queue_bytes)
            configs[spec] = options.config()
    plans = []
    for i in range(clients):
        spec = specs[i % len(specs)]
        config = configs[spec]
        if config is None:
            plans.append(ClientPlan(i, spec, 0.0, None))
            continue
        offset = base_offset_s + i * stride_s
        plans.append(ClientPlan(i, spec, offset, EmulatedLink(replace(config, start_offset_s=offset))))
    return plans


@dataclass(frozen=True)
class Setup:
    """Everything checked and built before the server is touched."""

    bundle_path: Path
    manifest: Manifest
    control: cli_common.ControlPlan  # its factory builds a fresh controller per call: each client gets its own
    frames: int
    client: ClientConfig  # the target is filled in once the server is known
    source: FrameSource
    plans: tuple[ClientPlan, ...]
    encoders: tuple[Encoder, ...]
    time_limit_s: float
    rule: ExitRule = field(default_factory=ExitRule)
    planes: bool = False  # frames as bit planes over PlaneStream


def prepare(args: argparse.Namespace, console: cli_common.Console) -> Setup:
    """Everything that can fail before the server is started or dialled (each failure is a usage error)."""
    controller = check_args(args)
    if args.server is not None:
        parse_address(args.server)
    give_up_ms = default_give_up_ms(args.deadline_ms)
    client = ClientConfig(
        max_in_flight=args.max_in_flight,
        deadline_ms=args.deadline_ms,
        give_up_ms=give_up_ms,
        connect_timeout_s=args.connect_timeout,
    )
    plans = plan_links(
        link_specs(args),
        args.clients,
        downlink=args.downlink,
        delay_ms=args.link_delay_ms,
        queue_bytes=args.link_queue_bytes,
        base_offset_s=args.link_offset_s,
        stride_s=args.offset_stride_s,
    )
    bundle = cli_common.bundle_from_args(args)
    manifest = bundle.manifest
    control = cli_common.plan_control(args, manifest, controller, top_k=client.top_k)
    source = open_source(args.source, manifest.input, manifest.classes)
    frames = max(1, round(args.fps * args.seconds))
    from slimsplit.edge.runtime import EncoderConfig, EncoderRuntime  # onnxruntime: import only when needed

    encoder_config = EncoderConfig(intra_op_threads=args.encoder_threads)
    # one session per client: set_mode is per-session state and clients switch modes independently
    planes = args.transmission == "planes"
    encoders = tuple(EncoderRuntime(bundle, encoder_config, planes=planes) for _ in plans)
    time_limit = args.time_limit_s
    if time_limit is None:
        time_limit = 2 * args.seconds + give_up_ms / 1e3 + args.connect_timeout + TIME_LIMIT_SLACK_S
    console.notes(source.notes)
    return Setup(
        bundle_path=bundle.root,
        manifest=manifest,
        control=control,
        frames=frames,
        client=client,
        source=source,
        plans=tuple(plans),
        encoders=encoders,
        time_limit_s=float(time_limit),
        rule=cli_common.exit_rule_from_args(args),
        planes=planes,
    )


def build_runs(
    setup: Setup,
    target: str,
    fps: float,
    connect: Connect = EdgeClient,
    stop: Stop | None = None,
    security: Security | None = None,
) -> list[EdgeRun]:
    """One :class:`EdgeRun` per client: its own encoder, controller (from the factory), frames, link and
    credentials (``security``'s identity of that client; none: plaintext), talking through ``connect`` (default:
    gRPC to ``target``); ``stop`` ends them all early (Ctrl-C)."""
    client = replace(setup.client, target=target)
    identities = [identity_of(security, p.index) if security is not None else Identity() for p in setup.plans]
    return [
        EdgeRun(
            manifest=setup.manifest,
            encoder=setup.encoders[plan.index],
            controller=setup.control.factory,
            mode_table=setup.control.table,
            frames=setup.source.take(setup.frames, cycle=True),
            target=target,
            client=identity.apply(client),
            fps=fps,
            planes=setup.planes,
            modes=setup.control.modes,
            route=plan.link.route if plan.link is not None else None,
            connect=connect,
            stop=stop,
        )
        for plan, identity in zip(setup.plans, identities, strict=True)
    ]


__all__ = ["ClientPlan", "Setup", "build_runs", "plan_links", "prepare"]
