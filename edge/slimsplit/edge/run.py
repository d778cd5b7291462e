"""One edge run, as the CLI and the demo do it: connect, check the server, stream the frames, summarize.

Extension points:

* **controller** - any :class:`~slimsplit.control.base.Controller`, or a factory that builds one from the
  round-trip time measured at start (adaptive controllers need it); :func:`bundle_controller` builds a live
  controller of the registry (:data:`~slimsplit.control.registry.CONTROLLERS`: ``fixed``, ``ewma-greedy``,
  ``mpc``) for a bundle's mode table and the run's :class:`~slimsplit.control.config.RunConfig`.
* **route** - a link emulator sits *between* the edge and the server: ``route(server_target)`` is an async
  context manager that starts a shaping proxy in front of ``server_target`` and yields the address the client
  must dial instead (``None`` = dial the server directly); :class:`~slimsplit.edge.link.EmulatedLink` is one.

A run: connect (through the route), check the server serves the bundle and modes (``Describe``), measure the
round trip as the fastest of ``rtt_pings`` ``Describe`` calls, build the controller, stream the frames, summarize.
Through a route the server is first dialled directly, so that an unreachable server is named at its own address;
a start-up exchange that then does not cross the route in time is :class:`~slimsplit.edge.link.LinkTooSlow`.

A :class:`Stop` ends a run early (Ctrl-C): no frame is captured after it, the frames in flight get until their
deadline (or give-up time, if sooner) and :data:`STOP_GRACE_S` more to be answered, and the run ends with what it
has; ``Stop.requested`` then says the run was cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimsplit.bundle import Manifest, ModeSpec
from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedOptions
from slimsplit.control.modes import modes_from_manifest
from slimsplit.control.registry import CONTROLLERS
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig, ExitRule
from slimsplit.edge.display import Display
from slimsplit.edge.link import STARTUP_TIMEOUT_S, LinkTooSlow
from slimsplit.edge.pipeline import Encoder, Pipeline, PipelineConfig, RunReport, run_frames
from slimsplit.edge.replies import printable
from slimsplit.edge.sources import SourceFrame, aiter_frames
from slimsplit.edge.transport import Connection
from slimsplit.errors import (
    BundleError,
    ConfigError,
    DeadlineExceeded,
    Unavailable,
    UnknownMode,
    UnknownModel,
    UnsupportedVersion,
)
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.records import FrameRecord, RunSummary
from slimsplit.v1 import slimsplit_pb2 as pb

Route = Callable[[str], AbstractAsyncContextManager[str]]
#: Builds the connection a run talks through, from the client configuration and the address to dial.
Connect = Callable[[ClientConfig, str], Connection]
#: Builds the controller once the round-trip time (milliseconds, 0 when not measured) is known.
ControllerFactory = Callable[[float], Controller]
#: Seconds a stopped run waits, beyond the deadline of its last frames, for them to be answered and the transport
#: to close; frames still in flight then are recorded ``CANCELLED``.
STOP_GRACE_S = 1.0
_CANCEL_WAIT_S = 0.25  # how long a stopped run's frame loop may take to close its transport once cancelled
CANCELLED = "CANCELLED"


class Stop:
    """A request to end runs early, shared by every run given it (see the module docstring). ``streaming``: some
    run has started its frames (before that there is nothing to summarize)."""

    def __init__(self) -> None:
        self.requested = False
        self.streaming = False
        self._event = asyncio.Event()

    def request(self) -> None:
        self.requested = True
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


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


def bundle_controller(
    name: str,
    manifest: Manifest,
    run: RunConfig,
    options: Any = None,
    *,
    rtt_ms: float = 0.0,
    overhead_bytes: float = 0.0,
) -> tuple[Controller, tuple[ModeOption, ...]]:
    """The live controller called ``name`` (:data:`~slimsplit.control.registry.CONTROLLERS`) for this bundle and
    ``run``, and the mode table it plans with.

    ``options``: its options dataclass (``None``: the defaults; ``fixed``'s mode defaults to
    :func:`default_mode`, and an unknown mode is refused naming the bundle's); ``rtt_ms``: the measured round
    trip (``ewma-greedy`` and ``mpc`` take it out of their throughput samples); ``overhead_bytes``: the
    transport's bytes per frame beyond the payload (see :func:`mode_options`). A controller that plans with
    measured figures refuses a bundle without them.
    """
    spec = CONTROLLERS.spec(name)
    modes = mode_options(manifest, strict=spec.measured, overhead_bytes=overhead_bytes)
    if name == "fixed":
        mode = options.mode if isinstance(options, FixedOptions) else None
        options = FixedOptions(manifest.mode(mode).name if mode else default_mode(manifest).name)
    return CONTROLLERS.build(name, modes, run, options, rtt_ms=max(0.0, rtt_ms)), modes


def default_give_up_ms(deadline_ms: float) -> float:
    """How long after its capture a frame waits for its reply by default: the deadline itself. A later answer is
    a miss anyway, and holding its in-flight slot would block the next frame (one frame at a time: every frame
    after a late one); its bytes stay in the link, which the mpc controller's queue model accounts for. This is
    the ``captured`` expiry rule of :mod:`slimsplit.evaluation.sim`, the one the controllers are evaluated with."""
    return float(deadline_ms)


def controller_factory(
    name: str,
    manifest: Manifest,
    run: RunConfig,
    options: Any = None,
    *,
    overhead_bytes: float = 0.0,
) -> ControllerFactory:
    """Builds the named controller (see :func:`bundle_controller`) once the round trip is measured."""

    def build(rtt_ms: float) -> Controller:
        controller, _ = bundle_controller(name, manifest, run, options, rtt_ms=rtt_ms, overhead_bytes=overhead_bytes)
        return controller

    return build


def modes_by_payload(manifest: Manifest) -> tuple[str, ...]:
    """The manifest's modes from the smallest payload to the largest (measured bytes, else width x bits)."""

    def size(m: ModeSpec) -> float:
        return m.payload_bytes_mean if m.payload_bytes_mean is not None else float(m.width * m.bits)

    return tuple(m.name for m in sorted(manifest.modes, key=lambda m: (size(m), m.width, m.bits)))


def check_server(response: pb.DescribeResponse, manifest: Manifest, modes: Iterable[str], target: str) -> str:
    """Check the server serves this bundle and these modes; return the model version to put in frames. The answer
    is untrusted input: what it names in an error is shown escaped and bounded
    (:func:`~slimsplit.edge.replies.printable`)."""
    if response.protocol_version and response.protocol_version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"the server at {target} speaks protocol {response.protocol_version}, this client speaks {PROTOCOL_VERSION}"
        )
    served = [m for m in response.models if m.name == manifest.name]
    if not served:
        names = printable(", ".join(sorted({m.name for m in response.models})) or "nothing")
        raise UnknownModel(
            f"the server at {target} does not serve model {manifest.name!r} (it serves: {names})",
            model=manifest.name,
        )
    same = [m for m in served if m.version == manifest.version]
    if not same:
        versions = printable(", ".join(m.version for m in served))
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
            f"{printable(str(list(info.feature_shape)), 80)}, the edge bundle {expected}; the two bundles differ"
        )
    if info.manifest_json:
        theirs = _codec_tables_fingerprint(info.manifest_json)
        if theirs != manifest.codec_tables_fingerprint:
            raise BundleError(
                f"the server's {manifest.name!r} {manifest.version} decodes features with codec tables "
                f"{printable(theirs or 'none', 80)}, the edge bundle encodes with "
                f"{manifest.codec_tables_fingerprint or 'none'}; "
                "the two bundles differ (use the same bundle on both sides)"
            )
    known = {m.name for m in info.modes}
    for mode in modes:
        if mode not in known:
            raise UnknownMode(
                f"the server at {target} does not serve mode {mode!r} of {manifest.name!r} "
                f"(it serves: {printable(', '.join(sorted(known)))})",
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
    ``Describe`` calls whose fastest is the round trip (0 = do not measure; a factory then gets 0); ``connect`` =
    what the run talks through (default: an :class:`~slimsplit.edge.client.EdgeClient` dialling the address);
    ``keep_records`` = keep every frame's record in the report (``--json-out``, the link check) rather than only
    the run's tally (:class:`~slimsplit.records.RunTally`: bounded memory, for runs of any length)."""

    manifest: Manifest
    encoder: Encoder
    controller: Controller | ControllerFactory
    mode_table: tuple[ModeOption, ...]
    frames: Iterable[SourceFrame] | AsyncIterable[SourceFrame]
    target: str
    client: ClientConfig
    fps: float = 0.0
    unary: bool = False
    planes: bool = False  # frames as bit planes over a PlaneStream (the encoder must make plane units)
    modes: tuple[str, ...] = ()
    route: Route | None = None
    check: bool = True
    rtt_pings: int = 5
    connect: Connect = EdgeClient
    stop: Stop | None = None
    keep_records: bool = True


async def run_edge(run: EdgeRun, display: Display, header: str = "") -> tuple[RunReport, RunSummary]:
    """Connect (through ``run.route`` if any), check the server, measure the round trip, build the controller,
    run the frames, show the summary. Frames' ``t_s`` count from when the route came up (link time 0)."""
    if run.route is not None:
        await _reachable(run)
        async with run.route(run.target) as dial:
            return await _run(run, dial, display, header, time.perf_counter())
    return await _run(run, run.target, display, header, time.perf_counter())


async def _reachable(run: EdgeRun) -> None:
    """Dial the server directly, bypassing the route: :class:`Unavailable` naming ``run.target`` when it cannot
    be reached."""
    async with run.connect(run.client, run.target) as direct:
        await direct.wait_ready()


async def _start(run: EdgeRun, client: Connection, dial: str) -> tuple[str, float | None]:
    """The start-up exchange: wait for the server, check it serves the bundle, measure the round trip; the model
    version to put in frames and the round trip (ms; ``None`` when not measured). Through a route, a call that
    does not cross it in time is :class:`LinkTooSlow` (while the server still answers directly)."""
    manifest = run.manifest
    try:
        await client.wait_ready()
        version = manifest.version
        if run.check:
            response = await client.describe(manifest.name, STARTUP_TIMEOUT_S)
            version = check_server(response, manifest, run.modes, run.target)
        rtt_ms = None
        if run.rtt_pings > 0:
            rtt_ms = await client.measure_rtt(manifest.name, run.rtt_pings, STARTUP_TIMEOUT_S)
    except (Unavailable, DeadlineExceeded) as exc:
        if dial == run.target:
            raise
        await _reachable(run)  # the server itself went away: that is the error
        raise LinkTooSlow(
            f"the start-up exchange with the server at {run.target} did not cross the emulated link within "
            f"{STARTUP_TIMEOUT_S:g} s ({exc})",
            target=run.target,
            timeout_s=STARTUP_TIMEOUT_S,
        ) from None
    return version, rtt_ms


async def _run(run: EdgeRun, dial: str, display: Display, header: str, origin: float) -> tuple[RunReport, RunSummary]:
    manifest = run.manifest
    async with run.connect(run.client, dial) as client:
        version, rtt_ms = await _start(run, client, dial)
        controller = run.controller if isinstance(run.controller, Controller) else run.controller(rtt_ms or 0.0)
        pipeline = PipelineConfig(
            model=manifest.name,
            model_version=version,
            fps=run.fps,
            unary=run.unary,
            planes=run.planes,
            origin=origin,
            class_names=tuple(manifest.classes),
            keep_records=run.keep_records,
        )
        head = header or f"slimsplit edge -> {run.target}  model {manifest.name} {version}"
        display.start(head + (f"  (round trip {rtt_ms:.1f} ms)" if rtt_ms is not None else ""))
        if run.stop is None:
            report = await run_frames(
                client, run.encoder, controller, run.mode_table, run.frames, pipeline, display.frame
            )
        else:
            report = await _stoppable(run, run.stop, client, controller, pipeline, display)
    report.rtt_ms = rtt_ms
    summary = report.summary()
    display.finish(summary, report.run_tally().by_mode(report.wall_s))
    return report, summary


async def _stoppable(
    run: EdgeRun, stop: Stop, client: Connection, controller: Controller, pipeline: PipelineConfig, display: Display
) -> RunReport:
    """The frames of ``run`` until they end or ``stop`` is requested (see the module docstring)."""
    taken: dict[int, SourceFrame] = {}  # by index, until answered (then let go: a long run holds no old images)

    async def frames() -> AsyncIterator[SourceFrame]:
        async for frame in aiter_frames(run.frames):  # a live source's waits run off the event loop
            if stop.requested:
                return
            taken[frame.index] = frame
            yield frame

    def on_result(record: FrameRecord) -> None:
        taken.pop(record.index, None)
        display.frame(record)

    stop.streaming = True
    start = time.perf_counter()
    pipe = Pipeline(client, run.encoder, controller, run.mode_table, pipeline, on_result)
    task = asyncio.ensure_future(pipe.run(frames()))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            grace_s = min(run.client.give_up_s, run.client.deadline_ms / 1e3) + STOP_GRACE_S
            await asyncio.wait({task}, timeout=grace_s)
    except BaseException:
        await _cancel(task)
        raise
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    await _cancel(task)  # frames still in flight past the grace: what they came to is not known
    cut = [
        FrameRecord(
            0,
            f.index,
            "",
            CANCELLED,
            "in flight when the run was stopped",
            f.label,
            deadline_ms=run.client.deadline_ms,
            source=f.name,
        )
        for f in taken.values()
    ]
    return pipe.cut_report(cut, time.perf_counter() - start)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it (its clean-up gets :data:`_CANCEL_WAIT_S`, then is cancelled too)."""
    task.cancel()
    await asyncio.wait({task}, timeout=_CANCEL_WAIT_S)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def write_json(
    path: Path, report: RunReport, summary: RunSummary, meta: dict[str, Any], *, interrupted: bool = False
) -> None:
    """The run as JSON: metadata, whether it was stopped early (``interrupted``), the summary and every frame."""
    doc = {
        "meta": meta,
        "interrupted": interrupted,
        "summary": summary.to_dict(),
        "reconnects": report.reconnects,
        "late_replies": report.late_replies,
        "stray_replies": report.stray_replies,
        "resent": report.resent,
        "rtt_ms": report.rtt_ms,
        "frames": [r.to_dict() for r in report.results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def client_meta(config: ClientConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def run_failure(summary: RunSummary, rule: ExitRule | None = None) -> str | None:
    """Why the run of ``summary`` failed ``rule`` (:meth:`~slimsplit.edge.config.ExitRule.failure`; default: the
    default rule), or ``None``."""
    sent = summary.ok + sum(summary.dropped.values())
    return (rule or ExitRule()).failure(frames=summary.frames, answered=summary.ok, hits=summary.hits, sent=sent)


def exit_status(summary: RunSummary, rule: ExitRule | None = None) -> int:
    """1 when the run failed ``rule`` (:func:`run_failure`), else 0."""
    return 0 if run_failure(summary, rule) is None else 1


__all__ = [
    "CANCELLED",
    "STOP_GRACE_S",
    "Connect",
    "ControllerFactory",
    "EdgeRun",
    "Route",
    "Stop",
    "bundle_controller",
    "check_server",
    "client_meta",
    "controller_factory",
    "default_give_up_ms",
    "default_mode",
    "exit_status",
    "mode_options",
    "modes_by_payload",
    "run_edge",
    "run_failure",
    "write_json",
]
