"""The command line that ``slimsplit-edge``, ``slimsplit-loadtest`` and ``slimsplit-demo`` share.

* :func:`add_control_arguments`, :func:`check_control_args`, :func:`bundle_from_args` and :func:`plan_control`:
  the model and controller flags (``--bundle``, ``--controller``, ``--mode``, ``--deadline-ms``, ``--fps``,
  ``--max-in-flight``) and the controller they choose for a bundle, checked before anything connects;
* :func:`add_link_arguments` and :func:`link_from_args`: the emulated link's flags (``--link``, ``--downlink``,
  ``--link-delay-ms``, ``--link-queue-bytes``, ``--link-offset-s``) and the link they describe;
* :func:`add_source_argument`, :func:`add_connect_timeout_argument`, :func:`add_output_arguments`: ``--source``,
  ``--connect-timeout``, and ``--json-out``, ``--quiet``, ``--plain``, ``--every``;
* :func:`run_main`, :class:`Console`, :func:`write_json_out` and :func:`finish_run`: the exit statuses and
  one-line errors they all keep. A problem found before the network is ``PROG: error: ...`` and 2, one met while
  talking to the server 3, Ctrl-C 130, an output pipe closed under the run (``| head``) 141, quietly; never a
  traceback for a user error.

Only the defaults differ between the three (``slimsplit-edge`` sends one fixed mode unpaced against a lenient
deadline by default; the load tester and the demo run ``mpc`` at 10 and 30 frames/s against 100 ms): they are
arguments here, so every flag means the same and is checked the same way everywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from slimsplit.bundle import Bundle, Manifest, default_bundle_path
from slimsplit.edge.client import frame_overhead_bytes
from slimsplit.edge.control.base import ModeOption
from slimsplit.edge.display import silence_stdout
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions
from slimsplit.edge.link_check import check_link, format_link_check
from slimsplit.edge.pipeline import RunReport
from slimsplit.edge.results import Summary
from slimsplit.edge.run import (
    ControllerFactory,
    check_controller_name,
    controller_factory,
    default_mode,
    exit_status,
    make_controller,
    write_json,
)
from slimsplit.edge.sources import SAMPLE
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: ``--max-in-flight`` default of every CLI.
DEFAULT_MAX_IN_FLIGHT = 4
#: ``--connect-timeout`` default, seconds.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: The ``--link`` group's description where the CLI has one proxy.
LINK_DESCRIPTION = "put a shaping proxy on 127.0.0.1 between the edge and the server, so frames cross an emulated link"

_Prepared = TypeVar("_Prepared")


# ---------------------------------------------------------------------------------------------- model and controller


def add_control_arguments(
    parser: argparse.ArgumentParser,
    *,
    controller: str | None,
    deadline_ms: float,
    fps: float,
    fps_note: str = "",
    extra_controllers: Sequence[tuple[str, str]] = (),
) -> argparse._ArgumentGroup:
    """Add the ``model and controller`` group and return it (for the CLI's own flags of that kind).

    ``controller``: the ``--controller`` default (``None``: ``fixed`` when ``--mode`` is given, else ``mpc``);
    ``deadline_ms``/``fps``: those flags' defaults; ``fps_note``: what ``--fps 0`` means in this CLI (appended to
    the default); ``extra_controllers``: (name, meaning) of further ``--controller`` names this CLI accepts."""
    g = parser.add_argument_group("model and controller")
    g.add_argument("--bundle", type=Path, metavar="PATH", help="model bundle folder (default: the shipped one)")
    extra = "".join(f"; {name} = {meaning}" for name, meaning in extra_controllers)
    default = controller if controller is not None else "fixed with --mode, else mpc"
    g.add_argument(
        "--controller",
        default=controller,
        metavar="NAME",
        help="how the mode is chosen per frame: fixed = always --mode; mpc (this project's model-predictive "
        "controller) and ewma-greedy (the published baseline) adapt it to the measured link and --deadline-ms "
        f"(they need the manifest's measured figures){extra}. 'oracle' is offline only: bench/controller.py "
        f"(default: {default})",
    )
    g.add_argument(
        "--mode",
        default=None,
        metavar="NAME",
        help="the mode of --controller fixed, from the bundle's manifest, e.g. w8b4 (default: the most accurate)",
    )
    g.add_argument(
        "--deadline-ms",
        type=float,
        default=deadline_ms,
        metavar="MS",
        help="latency target of a frame, from its capture to its prediction: a later answer counts as a miss, "
        "and adaptive controllers pick modes to meet it (default: %(default)s)",
    )
    g.add_argument(
        "--fps",
        type=float,
        default=fps,
        help="capture rate, frames per second: a frame is captured on its tick and skipped (with the reason) "
        "when --max-in-flight frames are in flight or the controller finds no mode worth sending, as a camera "
        f"must (default: %(default)s{fps_note})",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help="frames a client has sent and not yet had answered (default: %(default)s)",
    )
    return g


def check_control_args(args: argparse.Namespace, *, extra: Iterable[str] = ()) -> str:
    """Check the controller flags on their own (before any file is read) and return the controller's name:
    ``--controller``, else ``fixed`` when ``--mode`` is given, else ``mpc``. ``extra``: further names accepted.
    Raises :class:`~slimsplit.errors.ConfigError` naming the flag."""
    if not args.deadline_ms > 0:
        raise ConfigError(f"--deadline-ms must be > 0, got {args.deadline_ms}")
    if not args.fps >= 0:
        raise ConfigError(f"--fps must be >= 0, got {args.fps}")
    name: str = args.controller if args.controller is not None else ("fixed" if args.mode else "mpc")
    check_controller_name(name, extra=tuple(extra))
    if args.mode and name != "fixed":
        raise ConfigError(f"--mode fixes the mode; it cannot be combined with --controller {name}")
    return name


def bundle_from_args(args: argparse.Namespace) -> Bundle:
    """``--bundle``, else the shipped bundle, opened and checked (:class:`~slimsplit.errors.BundleError`)."""
    return Bundle.open(args.bundle if args.bundle is not None else default_bundle_path())


@dataclass(frozen=True)
class ControlPlan:
    """The controller the flags chose for one bundle.

    ``mode``: the mode of ``fixed`` (``--mode``, else the manifest's most accurate); ``factory``: builds a fresh
    controller once a run has measured its round trip (each client calls it); ``table``: the modes it plans with,
    each with what a frame of it puts on the link; ``modes``: the modes a run may send (checked with the server)."""

    name: str
    mode: str
    factory: ControllerFactory
    table: tuple[ModeOption, ...]
    modes: tuple[str, ...]

    @property
    def fixed(self) -> bool:
        return self.name == "fixed"

    @property
    def mode_label(self) -> str:
        """The fixed mode, or ``adaptive``."""
        return self.mode if self.fixed else "adaptive"


def plan_control(args: argparse.Namespace, manifest: Manifest, name: str, *, top_k: int) -> ControlPlan:
    """The controller ``name`` (from :func:`check_control_args`) for ``manifest`` with the flags' deadline, fps and
    in-flight limit; ``top_k``: classes per prediction (they count in each frame's bytes). An unknown ``--mode`` or
    an adaptive controller over an unmeasured bundle fails here, before anything connects."""
    mode = manifest.mode(args.mode).name if args.mode else default_mode(manifest).name
    overhead = frame_overhead_bytes(manifest.name, manifest.version, top_k)
    # built once here so that it fails now; every run rebuilds it from the factory with its measured round trip
    _, table = make_controller(
        name,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        overhead_bytes=overhead,
    )
    factory = controller_factory(
        name,
        manifest,
        mode=mode,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        fps=args.fps,
        overhead_bytes=overhead,
    )
    return ControlPlan(name, mode, factory, table, (mode,) if name == "fixed" else manifest.mode_names)


# ---------------------------------------------------------------------------------------------- frames and server


def add_source_argument(group: argparse._ArgumentGroup) -> None:
    """``--source``: where the frames come from (:func:`~slimsplit.edge.sources.open_source`)."""
    group.add_argument(
        "--source",
        default=SAMPLE,
        metavar="SOURCE",
        help="'sample' (the shipped images), a folder of images, or an .npz with 'images' [+ 'labels']; repeated "
        "as needed (default: %(default)s)",
    )


def add_connect_timeout_argument(group: argparse._ArgumentGroup) -> None:
    """``--connect-timeout``: seconds a client waits for the server at start."""
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="how long a client waits for the server at start (default: %(default)s)",
    )


# ---------------------------------------------------------------------------------------------- link


def add_link_arguments(
    parser: argparse.ArgumentParser,
    *,
    title: str = "link emulation",
    description: str | None = LINK_DESCRIPTION,
    uplink: str | None = "none",
    uplink_text: str = "%(default)s",
    several: bool = False,
    offset_s: float | None = 0.0,
    offset_text: str = "%(default)s",
) -> argparse._ArgumentGroup:
    """Add the link group and return it.

    ``uplink``: the ``--link`` default (``None``: the CLI picks, as ``uplink_text`` says); ``several``: ``--link``
    takes one spec or more (client ``i`` uses ``SPEC[i mod count]``); ``offset_s``: the ``--link-offset-s`` default
    (``None``: the CLI picks, as ``offset_text`` says)."""
    g = parser.add_argument_group(title, description)
    each = "; one or more: client i uses SPEC[i mod count]" if several else ""
    g.add_argument(
        "--link",
        nargs="+" if several else None,
        default=uplink,
        metavar="SPEC",
        help="uplink: a Mahimahi trace file (one line per 1500-byte delivery opportunity, ms timestamps), a rate "
        f"such as 2mbit or 800kbit, or none = no emulation{each} (default: {uplink_text})",
    )
    g.add_argument(
        "--downlink",
        default=DEFAULT_DOWNLINK,
        metavar="SPEC",
        help="downlink: trace file, rate or none = unshaped (default: %(default)s)",
    )
    g.add_argument(
        "--link-delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        metavar="MS",
        help="one-way propagation delay, each direction (default: %(default)s)",
    )
    g.add_argument(
        "--link-queue-bytes",
        type=int,
        default=DEFAULT_QUEUE_BYTES,
        metavar="N",
        help="bottleneck queue of each direction, bytes (default: %(default)s)",
    )
    g.add_argument(
        "--link-offset-s",
        type=float,
        default=offset_s,
        metavar="S",
        help=f"start this many seconds into the traces (default: {offset_text})",
    )
    return g


def link_from_args(
    args: argparse.Namespace, *, uplink: str | None = None, offset_s: float | None = None
) -> EmulatedLink | None:
    """The link the flags describe, ``None`` for ``--link none`` (the edge dials the server directly);
    ``uplink``/``offset_s`` replace ``--link``/``--link-offset-s`` where the CLI resolved its own default. Traces
    are read here, so a bad file fails now (:class:`~slimsplit.errors.TraceError` naming the file and line)."""
    config = LinkOptions(
        uplink=args.link if uplink is None else uplink,
        downlink=args.downlink,
        delay_ms=args.link_delay_ms,
        queue_bytes=args.link_queue_bytes,
        offset_s=args.link_offset_s if offset_s is None else offset_s,
    ).config()
    return EmulatedLink(config) if config is not None else None


# ---------------------------------------------------------------------------------------------- output


def add_output_arguments(
    parser: argparse.ArgumentParser,
    *,
    summary: str,
    json_contents: str,
    every: float,
    every_help: str,
    plain_help: str | None = None,
) -> argparse._ArgumentGroup:
    """Add the ``output`` group (``--json-out``, ``--quiet``, ``--plain`` where ``plain_help`` is given,
    ``--every`` with default ``every``) and return it. ``summary``: what ``--quiet`` still prints;
    ``json_contents``: what ``--json-out`` writes."""
    g = parser.add_argument_group("output")
    g.add_argument("--json-out", type=Path, default=None, metavar="PATH", help=f"write {json_contents} as JSON")
    g.add_argument("--quiet", action="store_true", help=f"print only {summary}")
    if plain_help is not None:
        g.add_argument("--plain", action="store_true", help=plain_help)
    g.add_argument("--every", type=float, default=every, metavar="S", help=every_help)
    return g


# ---------------------------------------------------------------------------------------------- errors and exit


@dataclass(frozen=True)
class Console:
    """Where a CLI writes: ``out`` for what it reports, ``err`` for its notes and errors (``PROG: error: ...``)."""

    prog: str
    out: TextIO
    err: TextIO

    def error(self, message: str) -> None:
        """``PROG: error: message``, one line."""
        self.err.write(f"{self.prog}: error: {message}\n")
        self.err.flush()

    def notes(self, notes: Iterable[str]) -> None:
        """``PROG: note: ...``, one line each."""
        for note in notes:
            self.err.write(f"{self.prog}: note: {note}\n")
        self.err.flush()


def run_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    prepare: Callable[[argparse.Namespace, Console], _Prepared],
    run: Callable[[_Prepared, argparse.Namespace, Console], int],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """A CLI's ``main``: parse ``argv`` (argparse itself exits 2 on a bad flag), then two steps.

    ``prepare(args, console)`` checks and builds all it can before the network: a
    :class:`~slimsplit.errors.SlimsplitError` there is a usage problem (one error line, :data:`EXIT_USAGE`).
    ``run(prepared, args, console)`` does the rest and returns the exit status: a ``SlimsplitError`` escaping it
    (the server unreachable, or not serving the bundle) is one error line and :data:`EXIT_SERVER`. Ctrl-C
    anywhere is :data:`EXIT_INTERRUPTED`; an output pipe that closed (``| head``) is :data:`EXIT_BROKEN_PIPE`,
    quietly. ``stdout``/``stderr``: default the process's."""
    console = Console(parser.prog, stdout or sys.stdout, stderr or sys.stderr)
    args = parser.parse_args(argv)
    try:
        try:
            prepared = prepare(args, console)
        except SlimsplitError as exc:
            console.error(str(exc))
            return EXIT_USAGE
        try:
            return run(prepared, args, console)
        except SlimsplitError as exc:
            console.error(str(exc))
            return EXIT_SERVER
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE


def write_json_out(console: Console, path: Path | None, write: Callable[[Path], None], status: int) -> int:
    """``write(path)`` unless ``path`` (``--json-out``) is ``None``, then ``status``; a file that cannot be written
    is one error line and :data:`EXIT_USAGE`."""
    if path is None:
        return status
    try:
        write(path)
    except OSError as exc:
        console.error(f"cannot write --json-out {path}: {exc}")
        return EXIT_USAGE
    return status


def report_link_check(
    console: Console,
    link: EmulatedLink | None,
    report: RunReport,
    table: Sequence[ModeOption],
    modes: Sequence[str],
    meta: dict[str, Any],
) -> None:
    """After a run over an emulated link: print what the link allowed to the modes the run could send (``modes``,
    empty = all; ``table`` says what each puts on the link; see :mod:`slimsplit.edge.link_check`) under the summary
    and record it in ``meta["link_check"]``."""
    if link is None:
        return
    check = check_link(report.results, table, link.config, set(modes))
    if check is None:
        return
    console.out.write(format_link_check(check) + "\n")
    console.out.flush()
    meta["link_check"] = check.to_dict()


def finish_run(console: Console, path: Path | None, report: RunReport, summary: Summary, meta: dict[str, Any]) -> int:
    """The end of one edge run: its frames, summary and ``meta`` written to ``path`` (``--json-out``, when given),
    then its exit status (:func:`~slimsplit.edge.run.exit_status`, or :data:`EXIT_USAGE` if the file cannot be
    written)."""
    return write_json_out(console, path, lambda p: write_json(p, report, summary, meta), exit_status(summary))


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "LINK_DESCRIPTION",
    "Console",
    "ControlPlan",
    "add_connect_timeout_argument",
    "add_control_arguments",
    "add_link_arguments",
    "add_output_arguments",
    "add_source_argument",
    "bundle_from_args",
    "check_control_args",
    "finish_run",
    "link_from_args",
    "plan_control",
    "report_link_check",
    "run_main",
    "write_json_out",
]
