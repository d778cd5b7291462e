"""One edge run, as the CLI and the demo do it: connect, check the server, stream the frames, summarize.

Extension points (both used by later issues):

* **controller** - any :class:`~slimsplit.edge.control.base.Controller`; :func:`make_controller` turns a
  ``--controller`` name into one (only ``fixed`` today; adaptive ones are added to its table).
* **route** - a link emulator sits *between* the edge and the server: ``route(server_target)`` is an async
  context
  manager that starts a shaping proxy in front of ``server_target`` and yields the address the client must
  dial instead (``None`` = dial the server directly).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
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

#: ``--controller`` names the live edge accepts (``oracle`` plans from a link trace: evaluation only).
CONTROLLER_NAMES = ("fixed", "ewma-greedy", "mpc")


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


def mode_options(manifest: Manifest, *, strict: bool = False) -> tuple[ModeOption, ...]:
    """The controller's mode table from the manifest. Adaptive controllers need every figure measured
    (``strict``: ConfigError otherwise); a fixed mode does not, so unmeasured figures count as 0 there."""
    try:
        return modes_from_manifest(manifest)
    except ConfigError:
        if strict:
            raise
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
) -> tuple[Controller, tuple[ModeOption, ...]]:
    """The controller called ``name`` for this bundle, and the mode table it plans with.

    ``mode``: the fixed mode (default :func:`default_mode`); adaptive controllers choose among all modes.
    """
    if name not in CONTROLLER_NAMES:
        raise ConfigError(f"unknown controller {name!r}; available: {', '.join(CONTROLLER_NAMES)}", key="controller")
    if name == "fixed":
        modes = mode_options(manifest)
        chosen = manifest.mode(mode).name if mode else default_mode(manifest).name
        return build_controller(name, modes, deadline_ms, mode=chosen, max_in_flight=max_in_flight), modes
    modes = mode_options(manifest, strict=True)
    options: dict[str, object] = {"max_in_flight": max_in_flight}
    if name == "mpc" and fps > 0:
        options["fps"] = fps
    return build_controller(name, modes, deadline_ms, **options), modes


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
    known = {m.name for m in info.modes}
    for mode in modes:
        if mode not in known:
            raise UnknownMode(
                f"the server at {target} does not serve mode {mode!r} of {manifest.name!r} "
                f"(it serves: {', '.join(sorted(known))})",
                mode=mode,
            )
    return info.version


@dataclass(frozen=True)
class EdgeRun:
    """Everything one run needs. ``modes`` = the modes the controller may pick (checked against the
    server)."""

    manifest: Manifest
    encoder: Encoder
    controller: Controller
    mode_table: tuple[ModeOption, ...]
    frames: Iterable[SourceFrame]
    target: str
    client: ClientConfig
    fps: float = 0.0
    unary: bool = False
    modes: tuple[str, ...] = ()
    route: Route | None = None
    check: bool = True


async def run_edge(run: EdgeRun, display: Display, header: str = "") -> tuple[RunReport, Summary]:
    """Connect (through ``run.route`` if any), check the server, run the frames, show the summary."""
    if run.route is not None:
        async with run.route(run.target) as dial:
            return await _run(run, dial, display, header)
    return await _run(run, run.target, display, header)


async def _run(run: EdgeRun, dial: str, display: Display, header: str) -> tuple[RunReport, Summary]:
    manifest = run.manifest
    async with EdgeClient(run.client, target=dial) as client:
        await client.wait_ready()
        version = manifest.version
        if run.check:
            response = await client.describe(manifest.name)
            version = check_server(response, manifest, run.modes, run.target)
        pipeline = PipelineConfig(model=manifest.name, model_version=version, fps=run.fps, unary=run.unary)
        display.start(header or f"slimsplit edge -> {run.target}  model {manifest.name} {version}")
        report = await run_frames(
            client, run.encoder, run.controller, run.mode_table, run.frames, pipeline, display.frame
        )
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
    "EdgeRun",
    "Route",
    "check_server",
    "client_meta",
    "default_mode",
    "exit_status",
    "make_controller",
    "mode_options",
    "run_edge",
    "write_json",
]
