"""One edge run, as the CLI and the demo do it: connect, check the server, stream the frames, summarize.

Extension points:

* **controller** - any :class:`~slimsplit.edge.control.base.Controller`, or a factory that builds one from the
  round-trip time measured at start (adaptive controllers need it); :func:`make_controller` turns a
  ``--controller`` name into one (``fixed``, ``ewma-greedy``, ``mpc``; ``oracle`` is refused: it plans from the
  link trace itself and belongs to the offline evaluation, ``bench/controller.py``).
* **route** - a link emulator sits *between* the edge and the server: ``route(server_target)`` is an async
  context manager that starts a shaping proxy in front of ``server_target`` and yields the address the client
  must dial instead (``None`` = dial the server directly); :class:`~slimsplit.edge.link.EmulatedLink` is one.

A run: connect (through the route), check the server serves the bundle and modes (``Describe``), measure the
round trip as the fastest of ``rtt_pings`` ``Describe`` calls, build the controller, stream the frames, summarize.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimsplit.bundle import Manifest, ModeSpec
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import PROTOCOL_VERSION, ClientConfig
from slimsplit.edge.control.base import Controller, ModeOption
from slimsplit.edge.control.controllers import make_controller as build_controller
from slimsplit.edge.control.modes import modes_from_manifest
from slimsplit.edge.display import Display
from slimsplit.edge.pipeline import Encoder, PipelineConfig, RunReport, run_frames
from slimsplit.edge.results import Summary, summarize
from slimsplit.edge.sources import SourceFrame
from slimsplit.errors import BundleError, ConfigError, UnknownMode, UnknownModel, UnsupportedVersion
from slimsplit.v1 import slimsplit_pb2 as pb

Route = Callable[[str], AbstractAsyncContextManager[str]]
#: Builds the controller once the round-trip time (milliseconds, 0 when not measured) is known.
ControllerFactory = Callable[[float], Controller]

#: ``--controller`` names the live edge accepts (``oracle`` plans from a link trace: evaluation only).
CONTROLLER_NAMES = ("fixed", "ewma-greedy", "mpc")
ORACLE_REFUSAL = (
    "the oracle controller knows the link trace in advance, so it cannot run live; it is the upper bound of the "
    "offline evaluation: run bench/controller.py (or slimsplit-link simulate --controller oracle). Live "
    "controllers: " + ", ".join(CONTROLLER_NAMES)
)


def check_controller_name(name: str, extra: tuple[str, ...] = ()) -> None:
    """Refuse ``oracle`` (offline only) and unknown names; ``extra`` = further names the caller accepts."""
    if name == "oracle":
        raise ConfigError(ORACLE_REFUSAL, key="controller")
    if name not in CONTROLLER_NAMES and name not in extra:
        available = ", ".join((*CONTROLLER_NAMES, *extra))
        raise ConfigError(f"unknown --controller {name!r}; available: {available}", key="controller")


def default_mode(manifest: Manifest) -> ModeSpec:
    """The mode used when none is given: the most accurate one, the smaller payload on ties (as the ``fixed``
    controller picks); modes without measured figures count as least accurate."""
    return max(
        manifest.modes,
        key=lambda m: (
            m.accuracy if m.accuracy is not None else -1.0,
            -(m.payload_bytes_mean if m.payload_bytes_mean is not None else float(m.width * m.bits)),
        ),
    )


def mode_options(manifest: Manifest, *, strict: bool = False, overhead_bytes: float = 0.0) -> tuple[ModeOption, ...]:
    """The controller's mode table from the manifest. Adaptive controllers need every figure measured
    (``strict``: ConfigError otherwise); a fixed mode does not, so unmeasured figures count as 0 there.
    ``overhead_bytes`` (see :func:`~slimsplit.edge.client.frame_overhead_bytes`) is added to every payload, so the
    table holds what a frame of each mode puts on the link, as the pipeline reports it."""
    try:
        table = modes_from_manifest(manifest)
    except ConfigError:
        if strict:
            raise
        table = _unmeasured_options(manifest)
    if overhead_bytes:
        table = tuple(replace(m, payload_bytes=m.payload_bytes + overhead_bytes) for m in table)
    return table


def _unmeasured_options(manifest: Manifest) -> tuple[ModeOption, ...]:
    return tuple(
        ModeOption(
            name=m.name,
            width=m.width,
            bits=m.bits,
            accuracy=m.accuracy or 0.0,
            payload_bytes=m.payload_bytes_mean or 0.0,
            encoder_ms=m.encoder_ms_p50 or 0.0,
            server_ms=m.tail_ms_p50 or 0.0,
        )
        for m in manifest.modes
    )


def make_controller(
    name: str,
    manifest: Manifest,
    *,
    mode: str | None = None,
    deadline_ms: float = 1000.0,
    max_in_flight: int = 4,
    fps: float = 0.0,
    rtt_ms: float = 0.0,
    overhead_bytes: float = 0.0,
) -> tuple[Controller, tuple[ModeOption, ...]]:
    """The controller called ``name`` for this bundle, and the mode table it plans with.

    ``mode``: the fixed mode (default :func:`default_mode`); adaptive controllers choose among all modes.
    ``rtt_ms``: the measured round trip (``ewma-greedy`` and ``mpc`` take it out of their throughput samples);
    ``fps``: the capture rate (``mpc`` plans the following frames with it; 0 = it learns the spacing);
    ``overhead_bytes``: the transport's bytes per frame beyond the payload (see :func:`mode_options`).
    """
    check_controller_name(name)
    if name == "fixed":
        modes = mode_options(manifest, overhead_bytes=overhead_bytes)
        chosen = manifest.mode(mode).name if mode else default_mode(manifest).name
        return build_controller(name, modes, deadline_ms, mode=chosen, max_in_flight=max_in_flight), modes
    modes = mode_options(manifest, strict=True, overhead_bytes=overhead_bytes)
    options: dict[str, object] = {"max_in_flight": max_in_flight, "rtt_ms": max(0.0, rtt_ms)}
    if name == "mpc" and fps > 0:
        options["fps"] = fps
    return build_controller(name, modes, deadline_ms, **options), modes


def default_give_up_ms(deadline_ms: float) -> float:
    """How long after its capture a frame waits for its reply by default: the deadline itself. A later answer is
    a miss anyway, and holding its in-flight slot would block the next frame (one frame at a time: every frame
    after a late one); its bytes stay in the link, which the mpc controller's queue model accounts for. This is
    the ``captured`` expiry rule of :mod:`slimsplit.link.sim`, the one ``bench/controller.py`` evaluates."""
    return float(deadline_ms)


def controller_factory(
    name: str,
    manifest: Manifest,
    *,
    mode: str,
    deadline_ms: float,
    max_in_flight: int,
    fps: float,
    overhead_bytes: float = 0.0,
) -> ControllerFactory:
    """Builds the named controller (see :func:`make_controller`) once the round trip is measured."""

    def build(rtt_ms: float) -> Controller:
        controller, _ = make_controller(
            name,
            manifest,
            mode=mode,
            deadline_ms=deadline_ms,
            max_in_flight=max_in_flight,
            fps=fps,
            rtt_ms=rtt_ms,
            overhead_bytes=overhead_bytes,
        )
        return controller

    return build


def modes_by_payload(manifest: Manifest) -> tuple[str, ...]:
    """The manifest's modes from the smallest payload to the largest (measured bytes, else width x bits)."""

    def size(m: ModeSpec) -> float:
        return m.payload_bytes_mean if m.payload_bytes_mean is not None else float(m.width * m.bits)

    return tuple(m.name for m in sorted(manifest.modes, key=lambda m: (size(m), m.width, m.bits)))


def check_server(response: pb.DescribeResponse, manifest: Manifest, modes: Iterable[str], target: str) -> str:
    """Check the server serves this bundle and these modes; return the model version to put in frames."""
    if response.protocol_version and response.protocol_version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"the server at {target} speaks protocol {response.protocol_version}, this client speaks {PROTOCOL_VERSION}"
        )
    served = [m for m in response.models if m.name == manifest.name]
    if not served:
        names = ", ".join(sorted({m.name for m in response.models})) or "nothing"
        raise UnknownModel(
            f"the server at {target} does not serve model {manifest.name!r} (it serves: {names})",
            model=manifest.name,
        )
    same = [m for m in served if m.version == manifest.version]
    if not same:
        versions = ", ".join(m.version for m in served)
        raise UnknownModel(
            f"the server at {target} serves model {manifest.name!r} in version(s) {versions}, but the edge "
            f"bundle is version {manifest.version!r}; use the same bundle on both sides",
            model=manifest.name,
        )
    info = same[0]
    expected = [manifest.feature.max_channels, manifest.feature.height, manifest.feature.width]
    if list(info.feature_shape) and list(info.feature_shape) != expected:
        raise BundleError(
            f"the server's {manifest.name!r} {manifest.version} has feature shape "
            f"{list(info.feature_shape)}, the edge bundle {expected}; the two bundles differ"
        )
    if info.manifest_json:
        theirs = _codec_tables_fingerprint(info.manifest_json)
        if theirs != manifest.codec_tables_fingerprint:
            raise BundleError(
                f"the server's {manifest.name!r} {manifest.version} decodes features with codec tables "
                f"{theirs or 'none'}, the edge bundle encodes with {manifest.codec_tables_fingerprint or 'none'}; "
                "the two bundles differ (use the same bundle on both sides)"
            )
    known = {m.name for m in info.modes}
    for mode in modes:
        if mode not in known:
            raise UnknownMode(
                f"the server at {target} does not serve mode {mode!r} of {manifest.name!r} "
                f"(it serves: {', '.join(sorted(known))})",
                mode=mode,
            )
    return info.version


def _codec_tables_fingerprint(manifest_json: str) -> str | None:
    try:
        value = json.loads(manifest_json).get("codec_tables_fingerprint")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class EdgeRun:
    """Everything one run needs. ``modes`` = the modes the controller may pick (checked against the server);
    ``controller`` = a controller, or a factory called with the measured round trip (ms); ``rtt_pings`` =
    ``Describe`` calls whose fastest is the round trip (0 = do not measure; a factory then gets 0)."""

    manifest: Manifest
    encoder: Encoder
    controller: Controller | ControllerFactory
    mode_table: tuple[ModeOption, ...]
    frames: Iterable[SourceFrame]
    target: str
    client: ClientConfig
    fps: float = 0.0
    unary: bool = False
    modes: tuple[str, ...] = ()
    route: Route | None = None
    check: bool = True
    rtt_pings: int = 5


async def run_edge(run: EdgeRun, display: Display, header: str = "") -> tuple[RunReport, Summary]:
    """Connect (through ``run.route`` if any), check the server, measure the round trip, build the controller,
    run the frames, show the summary. Frames' ``t_s`` count from when the route came up (link time 0)."""
    if run.route is not None:
        async with run.route(run.target) as dial:
            return await _run(run, dial, display, header, time.perf_counter())
    return await _run(run, run.target, display, header, time.perf_counter())


async def _run(run: EdgeRun, dial: str, display: Display, header: str, origin: float) -> tuple[RunReport, Summary]:
    manifest = run.manifest
    async with EdgeClient(run.client, target=dial) as client:
        await client.wait_ready()
        version = manifest.version
        if run.check:
            response = await client.describe(manifest.name)
            version = check_server(response, manifest, run.modes, run.target)
        rtt_ms = await client.measure_rtt(manifest.name, run.rtt_pings) if run.rtt_pings > 0 else None
        controller = run.controller if isinstance(run.controller, Controller) else run.controller(rtt_ms or 0.0)
        pipeline = PipelineConfig(
            model=manifest.name, model_version=version, fps=run.fps, unary=run.unary, origin=origin
        )
        head = header or f"slimsplit edge -> {run.target}  model {manifest.name} {version}"
        display.start(head + (f"  (round trip {rtt_ms:.1f} ms)" if rtt_ms is not None else ""))
        report = await run_frames(client, run.encoder, controller, run.mode_table, run.frames, pipeline, display.frame)
    report.rtt_ms = rtt_ms
    summary = summarize(report.results, report.wall_s)
    display.finish(summary, report.results)
    return report, summary


def write_json(path: Path, report: RunReport, summary: Summary, meta: dict[str, Any]) -> None:
    """The run as JSON: metadata, the summary and every frame."""
    doc = {
        "meta": meta,
        "summary": summary.to_dict(),
        "reconnects": report.reconnects,
        "late_replies": report.late_replies,
        "rtt_ms": report.rtt_ms,
        "frames": [r.to_dict() for r in report.results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def client_meta(config: ClientConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def exit_status(summary: Summary) -> int:
    """0 when every frame was answered or only missed its deadline / was skipped; 1 otherwise."""
    benign = {"DEADLINE_EXCEEDED", "SKIPPED"}
    if summary.frames and summary.ok == 0:
        return 1
    return 0 if all(status in benign for status in summary.errors) else 1


__all__ = [
    "CONTROLLER_NAMES",
    "ORACLE_REFUSAL",
    "ControllerFactory",
    "EdgeRun",
    "Route",
    "check_controller_name",
    "check_server",
    "client_meta",
    "controller_factory",
    "default_give_up_ms",
    "default_mode",
    "exit_status",
    "make_controller",
    "mode_options",
    "modes_by_payload",
    "run_edge",
    "write_json",
]
