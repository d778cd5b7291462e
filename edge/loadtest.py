"""``slimsplit-loadtest``: many emulated edge clients against one slimsplit server, each over its own emulated link.

Every client is a complete edge, the same :class:`~slimsplit.edge.run.EdgeRun` that ``slimsplit-edge`` runs: its
own ONNX Runtime encoder session (the encoder's current mode is per-session state), its own controller, and its own
shaping proxy on 127.0.0.1 driven by a bandwidth trace or a rate. Client ``i`` uses the ``--link`` spec
``i mod len(specs)`` and starts ``--link-offset-s + i * --offset-stride-s`` seconds into its trace, so clients that
share a trace do not see the same link state at the same instant. All clients run concurrently in one asyncio event
loop. The server is an address (``--server``) or an in-process server on a free loopback port (``--start-server``:
it needs the server extra, imported only then).

Output: a plain progress line every ``--every`` seconds (stderr), then one row per client and the overall figures
(stdout); ``--json-out`` writes the per-client summaries and the overall figures.

Exit status: 0 = every client ran and each of its frames was answered (in time or late) or skipped; 1 = some frames
failed, or some clients could not run or did not finish within ``--time-limit-s``; 2 = a usage problem found before
the run (bad flag, missing trace, bundle or source, a server that would not start); 3 = no client could run (server
unreachable or not serving the bundle); 130 = interrupted; 141 = output pipe closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

from slimsplit.bundle import Manifest
from slimsplit.edge import cli_common
from slimsplit.edge.config import ClientConfig, parse_address
from slimsplit.edge.control.base import ModeOption
from slimsplit.edge.display import QuietDisplay
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions
from slimsplit.edge.link_check import LinkCheck, check_link
from slimsplit.edge.pipeline import Encoder, RunReport
from slimsplit.edge.results import SKIPPED, FrameResult, LatencyStats, Summary
from slimsplit.edge.run import EdgeRun, default_give_up_ms, exit_status, run_edge
from slimsplit.edge.sources import FrameSource, open_source
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, LinkConfig
from slimsplit.link.synth import shipped_traces_dir

if TYPE_CHECKING:
    from slimsplit.server.app import ServerThread

PROG = "slimsplit-loadtest"

MAX_CLIENTS = 512
#: Seconds between the trace positions of consecutive clients (not a divisor of the shipped traces' periods).
DEFAULT_STRIDE_S = 7.0
#: Slack of the default ``--time-limit-s`` beyond the run itself, the give-up wait and the connection.
TIME_LIMIT_SLACK_S = 30.0


def default_links() -> list[str]:
    """The shipped synthetic traces, the default ``--link`` specs."""
    return [str(p) for p in sorted(shipped_traces_dir().glob("*.trace"))]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load-test a slimsplit server with many emulated edge clients, each streaming over its own emulated "
            "link (a shaping proxy on 127.0.0.1 driven by a bandwidth trace or a rate), all in one event loop."
        ),
        epilog=(
            f"example: {prog} --start-server --clients 8 --link 2mbit 500kbit --seconds 10 --fps 10 "
            "--controller mpc --json-out load.json"
        ),
    )
    srv = p.add_argument_group("server (one of --server and --start-server)")
    srv.add_argument("--server", default=None, metavar="HOST:PORT", help="address of a running slimsplit server")
    srv.add_argument(
        "--start-server",
        action="store_true",
        help="start an in-process server with --bundle on a free 127.0.0.1 port and stop it at the end "
        "(needs the server extra)",
    )
    srv.add_argument(
        "--server-backend",
        default="onnxruntime",
        metavar="NAME",
        help="--start-server: the tail backend (onnxruntime, torch, fpga-emu, null; default: %(default)s)",
    )
    srv.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="--start-server: frames of one mode per tail call (default: %(default)s)",
    )

    load = p.add_argument_group("load")
    load.add_argument("--clients", type=int, default=4, metavar="N", help="edge clients (default: %(default)s)")
    load.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long each client captures: it sends fps x seconds frames (default: %(default)s)",
    )
    cli_common.add_source_argument(load)
    cli_common.add_connect_timeout_argument(load)
    load.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        metavar="S",
        help="a client still running this long after the start is stopped and reported failed "
        f"(default: 2 x --seconds + the give-up wait + --connect-timeout + {TIME_LIMIT_SLACK_S:g})",
    )

    model = cli_common.add_control_arguments(p, controller=None, deadline_ms=100.0, fps=10.0, fps_note=" per client")
    model.add_argument(
        "--encoder-threads",
        type=int,
        default=1,
        metavar="N",
        help="ONNX Runtime threads of each client's encoder (default: %(default)s; 0 = ONNX Runtime decides)",
    )

    link = cli_common.add_link_arguments(
        p,
        title="links (one shaping proxy per client)",
        description=None,
        uplink=None,
        uplink_text="the shipped traces",
        several=True,
        offset_text="%(default)s; client i starts i x --offset-stride-s later",
    )
    link.add_argument(
        "--offset-stride-s",
        type=float,
        default=DEFAULT_STRIDE_S,
        metavar="S",
        help="client i starts --link-offset-s + i x S seconds into its trace (default: %(default)s)",
    )

    cli_common.add_output_arguments(
        p,
        summary="the table",
        json_contents="the per-client summaries and the overall figures",
        every=1.0,
        every_help="a progress line on stderr every S seconds (default: %(default)s; 0 = none)",
    )
    return p


# ---------------------------------------------------------------------------------------------- plan


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
    for spec in dict.fromkeys(specs):
        configs[spec] = LinkOptions(uplink=spec, downlink=downlink, delay_ms=delay_ms, queue_bytes=queue_bytes).config()
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
class _Setup:
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


def _check_args(args: argparse.Namespace) -> str:
    """The flags on their own; the controller's name."""
    if args.server is None and not args.start_server:
        raise ConfigError("give --server HOST:PORT or --start-server")
    if args.server is not None and args.start_server:
        raise ConfigError("--server and --start-server exclude each other")
    if not 1 <= args.clients <= MAX_CLIENTS:
        raise ConfigError(f"--clients must be in 1..{MAX_CLIENTS}, got {args.clients}")
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    if args.encoder_threads < 0:
        raise ConfigError(f"--encoder-threads must be >= 0, got {args.encoder_threads}")
    if args.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if not (args.offset_stride_s >= 0 and math.isfinite(args.offset_stride_s)):
        raise ConfigError(f"--offset-stride-s must be >= 0, got {args.offset_stride_s}")
    if not (args.link_offset_s >= 0 and math.isfinite(args.link_offset_s)):
        raise ConfigError(f"--link-offset-s must be >= 0, got {args.link_offset_s}")
    if args.every < 0:
        raise ConfigError(f"--every must be >= 0, got {args.every}")
    if args.time_limit_s is not None and not args.time_limit_s > 0:
        raise ConfigError(f"--time-limit-s must be > 0, got {args.time_limit_s}")
    return cli_common.check_control_args(args)


def _prepare(args: argparse.Namespace, console: cli_common.Console) -> _Setup:
    """Everything that can fail before the server is started or dialled (each failure is a usage error)."""
    controller = _check_args(args)
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
        args.link if args.link is not None else default_links(),
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
    encoders = tuple(EncoderRuntime(bundle, encoder_config) for _ in plans)
    time_limit = args.time_limit_s
    if time_limit is None:
        time_limit = 2 * args.seconds + give_up_ms / 1e3 + args.connect_timeout + TIME_LIMIT_SLACK_S
    console.notes(source.notes)
    return _Setup(
        bundle_path=bundle.root,
        manifest=manifest,
        control=control,
        frames=frames,
        client=client,
        source=source,
        plans=tuple(plans),
        encoders=encoders,
        time_limit_s=float(time_limit),
    )


def build_runs(setup: _Setup, target: str, fps: float) -> list[EdgeRun]:
    """One :class:`EdgeRun` per client: its own encoder, controller (from the factory), frames and link."""
    client = replace(setup.client, target=target)
    return [
        EdgeRun(
            manifest=setup.manifest,
            encoder=setup.encoders[plan.index],
            controller=setup.control.factory,
            mode_table=setup.control.table,
            frames=setup.source.take(setup.frames, cycle=True),
            target=target,
            client=client,
            fps=fps,
            modes=setup.control.modes,
            route=plan.link.route if plan.link is not None else None,
        )
        for plan in setup.plans
    ]


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Tally:
    """Frames of all clients so far (updated on the event loop as results arrive)."""

    total: int
    done: int = 0
    ok: int = 0
    hits: int = 0
    skipped: int = 0
    dropped: int = 0

    def add(self, r: FrameResult) -> None:
        self.done += 1
        self.ok += r.ok
        self.hits += bool(r.hit)
        self.skipped += r.status == SKIPPED
        self.dropped += r.sent and not r.ok

    def line(self, elapsed_s: float) -> str:
        share = f"{100.0 * self.hits / self.done:.1f}%" if self.done else "-"
        return (
            f"{PROG}: {elapsed_s:6.1f} s  frames {self.done}/{self.total}  answered {self.ok}  "
            f"in time {self.hits} ({share})  skipped {self.skipped}  dropped {self.dropped}"
        )


class TallyDisplay(QuietDisplay):
    """A client's display: counts its frames into the shared :class:`Tally`; prints nothing (not even a summary:
    the load tester prints one table for all clients)."""

    def __init__(self, tally: Tally, out: TextIO) -> None:
        super().__init__(out)
        self.tally = tally

    def frame(self, result: FrameResult) -> None:
        self.tally.add(result)

    def finish(self, summary: Summary, results: Sequence[FrameResult]) -> None:
        return None


Outcome: TypeAlias = tuple[RunReport, Summary] | BaseException


async def _ticker(tally: Tally, out: TextIO, every_s: float, start: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        out.write(tally.line(time.perf_counter() - start) + "\n")
        out.flush()


async def _bounded(run: EdgeRun, display: TallyDisplay, limit_s: float) -> tuple[RunReport, Summary]:
    try:
        return await asyncio.wait_for(run_edge(run, display), limit_s)
    except TimeoutError:
        raise TimeoutError(f"did not finish within {limit_s:g} s (--time-limit-s)") from None


async def run_clients(
    runs: Sequence[EdgeRun],
    *,
    time_limit_s: float,
    total_frames: int = 0,
    progress: TextIO | None = None,
    every_s: float = 0.0,
) -> tuple[list[Outcome], float]:
    """Run every client concurrently on this event loop, each bounded by ``time_limit_s``; return each client's
    outcome (its report and summary, or the exception that stopped it) and the wall time of the whole run.
    ``progress``: where a :meth:`Tally.line` goes every ``every_s`` seconds (``total_frames`` = its denominator)."""
    tally = Tally(total=total_frames)
    displays = [TallyDisplay(tally, progress or sys.stderr) for _ in runs]
    start = time.perf_counter()
    ticker = asyncio.create_task(_ticker(tally, progress, every_s, start)) if progress and every_s > 0 else None
    try:
        outcomes: list[Outcome] = await asyncio.gather(
            *(_bounded(run, display, time_limit_s) for run, display in zip(runs, displays, strict=True)),
            return_exceptions=True,
        )
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return outcomes, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- results


def _clean(obj: Any) -> Any:
    """JSON-ready: non-finite floats become ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


@dataclass(frozen=True)
class ClientResult:
    """What one client did: its link, its summary (``None`` when it could not run, with ``error``), its frames and,
    over an emulated link, what the link allowed (:mod:`slimsplit.edge.link_check`)."""

    index: int
    link: str
    link_description: str
    offset_s: float
    summary: Summary | None = None
    results: tuple[FrameResult, ...] = ()
    rtt_ms: float | None = None
    error: str = ""
    link_check: LinkCheck | None = None

    def accounting(self) -> dict[str, int]:
        """Where every frame went: ``hits + late + skipped + dropped + errors == frames`` (errors = frames that
        failed before they were sent)."""
        s = self.summary
        if s is None:
            return {"frames": 0, "hits": 0, "late": 0, "skipped": 0, "dropped": 0, "errors": 0}
        unsent = sum(1 for r in self.results if not r.ok and not r.sent and r.status != SKIPPED)
        return {
            "frames": s.frames,
            "hits": s.hits,
            "late": s.late,
            "skipped": sum(s.skipped.values()),
            "dropped": sum(s.dropped.values()),
            "errors": unsent,
        }

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "link": self.link,
            "link_description": self.link_description,
            "offset_s": self.offset_s,
            "rtt_ms": self.rtt_ms,
            "error": self.error or None,
            **self.accounting(),
            "summary": self.summary.to_dict() if self.summary is not None else None,
            "link_check": self.link_check.to_dict() if self.link_check is not None else None,
        }
        out: dict[str, Any] = _clean(d)
        return out


@dataclass(frozen=True)
class Overall:
    """All clients together. ``delivered_fps`` = answered frames per second of the whole run; ``hit_rate`` =
    frames answered in time / all frames; ``server_ms``/``queue_ms``/``tail_ms`` = the server's own timing of
    every answered frame (from the predictions); ``by_status`` = frames not answered, by status; ``allowed`` =
    frames the emulated links allowed in some mode and ``hits_allowed`` = those answered in time (both ``None``
    when no client ran over an emulated link)."""

    clients: int
    failed_clients: int
    wall_s: float
    frames: int
    answered: int
    hits: int
    late: int
    skipped: int
    dropped: int
    errors: int
    delivered_fps: float
    in_time_fps: float
    hit_rate: float | None
    accuracy: float | None
    bytes_per_frame: float
    uplink_payload_bytes: int
    latency_ms: LatencyStats
    server_ms: LatencyStats
    queue_ms: LatencyStats
    tail_ms: LatencyStats
    mean_batch_size: float | None
    by_status: dict[str, int]
    allowed: int | None = None
    hits_allowed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _clean(asdict(self))
        return out


def aggregate(clients: Sequence[ClientResult], wall_s: float) -> Overall:
    """The overall figures of a run that took ``wall_s`` seconds."""
    books = [c.accounting() for c in clients]
    frames = [r for c in clients for r in c.results]
    done = [r for r in frames if r.ok]
    timed = [r.server for r in done if r.server is not None]
    judged = [r.correct for r in done if r.correct is not None]
    sent = [r for r in frames if r.payload_bytes > 0]
    batches = [t.batch_size for t in timed if t.batch_size > 0]
    hits = sum(b["hits"] for b in books)
    statuses = Counter(r.status for r in frames if not r.ok)
    checks = [c.link_check for c in clients if c.link_check is not None]
    return Overall(
        clients=len(clients),
        failed_clients=sum(1 for c in clients if c.summary is None),
        wall_s=wall_s,
        frames=len(frames),
        answered=len(done),
        hits=hits,
        late=sum(b["late"] for b in books),
        skipped=sum(b["skipped"] for b in books),
        dropped=sum(b["dropped"] for b in books),
        errors=sum(b["errors"] for b in books),
        delivered_fps=len(done) / wall_s if wall_s > 0 else math.nan,
        in_time_fps=hits / wall_s if wall_s > 0 else math.nan,
        hit_rate=hits / len(frames) if frames else None,
        accuracy=sum(judged) / len(judged) if judged else None,
        bytes_per_frame=sum(r.payload_bytes for r in sent) / len(sent) if sent else 0.0,
        uplink_payload_bytes=sum(r.payload_bytes for r in sent),
        latency_ms=LatencyStats.of([r.latency_ms for r in done]),
        server_ms=LatencyStats.of([t.total_ms for t in timed]),
        queue_ms=LatencyStats.of([t.queue_ms for t in timed]),
        tail_ms=LatencyStats.of([t.tail_ms for t in timed]),
        mean_batch_size=sum(batches) / len(batches) if batches else None,
        by_status=dict(statuses.most_common()),
        allowed=sum(c.allowed for c in checks) if checks else None,
        hits_allowed=sum(c.hits_allowed for c in checks) if checks else None,
    )


def collect(
    plans: Sequence[ClientPlan],
    outcomes: Sequence[Outcome],
    table: Sequence[ModeOption] = (),
    usable: Sequence[str] = (),
) -> list[ClientResult]:
    """Pair each client's plan with its outcome. A client stopped by a slimsplit error, a socket error or the time
    limit becomes a failed row; anything else is a bug and is raised. With the controller's mode ``table`` (and the
    ``usable`` mode names), a client over an emulated link also gets its :class:`LinkCheck`."""
    clients = []
    for plan, outcome in zip(plans, outcomes, strict=True):
        base = ClientResult(plan.index, plan.link_spec, plan.describe(), plan.offset_s)
        if isinstance(outcome, SlimsplitError | OSError | TimeoutError):
            clients.append(replace(base, error=str(outcome) or type(outcome).__name__))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            report, summary = outcome
            check = None
            if plan.link is not None and table:
                check = check_link(report.results, table, plan.link.config, set(usable))
            results = tuple(report.results)
            clients.append(replace(base, summary=summary, results=results, rtt_ms=report.rtt_ms, link_check=check))
    return clients


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100.0 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _link_label(spec: str) -> str:
    name = Path(spec).name
    return name if len(name) <= 22 else name[:21] + "~"


_COLUMNS = (
    "client",
    "link",
    "offset s",
    "frames",
    "in time",
    "late",
    "skip",
    "drop",
    "bytes/fr",
    "acc",
    "e2e p50",
    "e2e p95",
    "sw/min",
    "allowed",
    "in/allowed",
)


def _row(c: ClientResult) -> list[str]:
    s = c.summary
    head = [str(c.index), _link_label(c.link), _num(c.offset_s, "g")]
    if s is None:
        return [*head, f"failed: {c.error}"]
    b = c.accounting()
    return [
        *head,
        str(s.frames),
        _pct(s.hit_rate),
        str(b["late"]),
        str(b["skipped"]),
        str(b["dropped"]),
        _num(s.bytes_per_frame, ".0f"),
        _pct(s.accuracy),
        _num(s.latency_ms.p50),
        _num(s.latency_ms.p95),
        _num(s.switches_per_min),
        "-" if c.link_check is None else str(c.link_check.allowed),
        "-" if c.link_check is None else _pct(c.link_check.hit_rate_allowed),
    ]


def format_report(clients: Sequence[ClientResult], overall: Overall) -> str:
    """The table: one row per client, an overall row, then the throughput, server timing and status lines."""
    o = overall
    total = [
        "all",
        f"{o.clients} clients",
        "",
        str(o.frames),
        _pct(o.hit_rate),
        str(o.late),
        str(o.skipped),
        str(o.dropped),
        _num(o.bytes_per_frame, ".0f"),
        _pct(o.accuracy),
        _num(o.latency_ms.p50),
        _num(o.latency_ms.p95),
        "",
        "-" if o.allowed is None else str(o.allowed),
        "-" if o.allowed is None or not o.allowed else _pct((o.hits_allowed or 0) / o.allowed),
    ]
    rows = [list(_COLUMNS), *(_row(c) for c in clients), total]
    full = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [max(len(r[i]) for r in full) for i in range(len(_COLUMNS))]
    lines = []
    for i, r in enumerate(rows):
        if len(r) < len(_COLUMNS):  # a failed client: its message runs across the remaining columns
            cells = [r[j].rjust(widths[j]) if j != 1 else r[j].ljust(widths[j]) for j in range(len(r) - 1)]
            lines.append("  ".join([*cells, r[-1]]))
        else:
            lines.append("  ".join(v.ljust(widths[j]) if j == 1 else v.rjust(widths[j]) for j, v in enumerate(r)))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"delivered {_num(o.delivered_fps)} frames/s ({_num(o.in_time_fps)}/s in time) over {o.wall_s:.2f} s; "
        f"{o.answered} of {o.frames} frames answered; {o.uplink_payload_bytes} payload bytes sent"
    )
    if math.isfinite(o.server_ms.p50):  # some frame carried the server's timing
        lines.append(
            f"server timing (from the predictions): total p50 {_num(o.server_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.server_ms.p99, '.2f')} ms; queue p50 {_num(o.queue_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.queue_ms.p99, '.2f')} ms; tail p50 {_num(o.tail_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.tail_ms.p99, '.2f')} ms; mean batch {_num(o.mean_batch_size, '.2f')}"
        )
    if o.allowed is not None:
        lines.append(
            f"link check: the emulated links allowed {o.allowed} of {o.frames} frames in time in some mode (each "
            f"frame alone on its link); {o.hits_allowed} of those were answered in time"
        )
    statuses = ", ".join(f"{k} {v}" for k, v in o.by_status.items())
    if statuses:
        lines.append(f"not answered, by status: {statuses}")
    else:
        lines.append("every frame answered" if o.frames else "no frames ran")
    if o.failed_clients:
        lines.append(f"{o.failed_clients} of {o.clients} clients failed")
    return "\n".join(lines)


def write_report(path: Path, clients: Sequence[ClientResult], overall: Overall, meta: dict[str, Any]) -> None:
    """``{"meta": ..., "clients": [per-client summary ...], "overall": ...}``."""
    doc = {"meta": _clean(meta), "clients": [c.to_dict() for c in clients], "overall": overall.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def load_exit_status(clients: Sequence[ClientResult]) -> int:
    """0 = every client ran and none had failed frames; 1 = some did; 3 = no client ran."""
    ran = [c.summary for c in clients if c.summary is not None]
    if not ran:
        return cli_common.EXIT_SERVER
    worst = max(exit_status(s) for s in ran)
    return cli_common.EXIT_FAILED if len(ran) < len(clients) else worst


# ---------------------------------------------------------------------------------------------- main


def _start_server(args: argparse.Namespace, bundle_path: Path) -> ServerThread:
    """An in-process server on a free 127.0.0.1 port (the server package is imported only here)."""
    try:
        from slimsplit.server.app import serve_in_thread
        from slimsplit.server.config import BackendConfig, BatchingConfig, GrpcConfig, ServerConfig
    except ImportError as exc:
        raise ConfigError(f"--start-server needs the server extra (pip install 'slimsplit[server]'): {exc}") from None
    config = ServerConfig(
        models=(bundle_path,),
        log_level="warning",
        grpc=GrpcConfig(host="127.0.0.1", port=0, grace_s=1.0),
        batching=BatchingConfig(max_batch_size=args.max_batch_size),
        backend=BackendConfig(name=args.server_backend),
    )
    return serve_in_thread(config, port=0)


def _meta(args: argparse.Namespace, setup: _Setup, target: str) -> dict[str, Any]:
    return {
        "target": target,
        "server": f"in-process ({args.server_backend}, max batch {args.max_batch_size})" if args.start_server else None,
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
        "links": list(args.link) if args.link else default_links(),
        "offset_stride_s": args.offset_stride_s,
        "link_offset_s": args.link_offset_s,
        "link_delay_ms": args.link_delay_ms,
        "downlink": args.downlink,
        "source": setup.source.description,
        "encoder_threads": args.encoder_threads,
    }


def _run(setup: _Setup, args: argparse.Namespace, console: cli_common.Console) -> int:
    """Start the server (``--start-server``), run every client, print the table, write the JSON; the exit status."""
    out, err = console.out, console.err
    server: ServerThread | None = None
    if args.start_server:
        if not args.quiet:
            err.write(f"{PROG}: starting a server on 127.0.0.1 with {args.server_backend} ...\n")
            err.flush()
        try:
            server = _start_server(args, setup.bundle_path)
        except SlimsplitError as exc:
            console.error(f"the server did not start: {exc}")
            return cli_common.EXIT_USAGE
        except (OSError, TimeoutError) as exc:
            console.error(f"the server did not start: {exc}")
            return cli_common.EXIT_SERVER
        target = server.address
    else:
        target = parse_address(args.server)
    try:
        runs = build_runs(setup, target, args.fps)
        if not args.quiet:
            out.write(
                f"{PROG}: {len(runs)} clients -> {target}; model {setup.manifest.name} {setup.manifest.version}; "
                f"controller {setup.control.name} ({setup.control.mode_label}); {setup.frames} frames each at "
                f"{args.fps:g} fps; deadline {args.deadline_ms:g} ms; source {setup.source.description}\n"
            )
            for plan in setup.plans:
                out.write(f"  client {plan.index}: {plan.describe()}\n")
            out.flush()
        outcomes, wall_s = asyncio.run(
            run_clients(
                runs,
                time_limit_s=setup.time_limit_s,
                total_frames=setup.frames * len(runs),
                progress=None if args.quiet else err,
                every_s=args.every,
            )
        )
        clients = collect(setup.plans, outcomes, setup.control.table, setup.control.modes)
        overall = aggregate(clients, wall_s)
        out.write(format_report(clients, overall) + "\n")
        out.flush()
    finally:
        if server is not None:
            server.stop(grace=1.0)
    for c in clients:
        if c.error:
            console.error(f"client {c.index}: {c.error}")
    meta = _meta(args, setup, target)
    return cli_common.write_json_out(
        console,
        args.json_out,
        lambda path: write_report(path, clients, overall, meta),
        load_exit_status(clients),
    )


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    return cli_common.run_main(build_parser(), argv, _prepare, _run, stdout=stdout, stderr=stderr)


__all__ = [
    "PROG",
    "ClientPlan",
    "ClientResult",
    "Overall",
    "Tally",
    "TallyDisplay",
    "aggregate",
    "build_parser",
    "build_runs",
    "collect",
    "default_links",
    "format_report",
    "load_exit_status",
    "main",
    "plan_links",
    "run_clients",
    "write_report",
]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
