"""The command line that ``slimsplit-edge``, ``slimsplit-loadtest`` and ``slimsplit-demo`` share.

* :func:`add_control_arguments`, :func:`check_control_args`, :func:`bundle_from_args` and :func:`plan_control`:
  the model and controller flags (``--bundle``, ``--controller``, ``--mode``, ``--deadline-ms``, ``--fps``,
  ``--max-in-flight``) and the controller they choose for a bundle, checked before anything connects;
* :func:`add_link_arguments` and :func:`link_from_args`: the emulated link's flags (``--link``, ``--downlink``,
  ``--link-delay-ms``, ``--link-queue-bytes``, ``--link-offset-s``) and the link they describe;
* :class:`AddressesAction`: ``--server`` given several times (replicas), joined with commas;
* :func:`add_source_argument`, :func:`add_connect_timeout_argument`, :func:`add_output_arguments`: ``--source``,
  ``--connect-timeout``, and ``--json-out``, ``--quiet``, ``--plain``, ``--every``;
* :func:`add_credential_arguments`, :func:`tls_from_args` and :func:`auth_from_args`: ``--tls-ca``, ``--tls-cert``,
  ``--tls-key`` and ``--token-file`` (a file: a token is never given on a command line, where ``ps`` shows it),
  and the :class:`~slimsplit.edge.config.TlsSettings` / :class:`~slimsplit.edge.config.AuthSettings` they give;
* :func:`add_exit_arguments` and :func:`exit_rule_from_args`: ``--min-hit-rate`` and ``--max-drop-rate``, the
  :class:`~slimsplit.edge.config.ExitRule` that decides between 0 and 1 (:data:`EXIT_STATUS_HELP`);
* :func:`run_main`, :class:`Console`, :func:`check_json_out`, :func:`interruptible`, :func:`write_json_out` and
  :func:`finish_run`: the exit statuses and one-line errors they all keep. A problem found before the network
  (an unwritable ``--json-out`` included) is ``PROG: error: ...`` and 2, an emulated link too slow for the
  start-up exchange 2 as well, a server that cannot be reached, refuses this device (its token or certificate:
  ``UNAUTHENTICATED``, ``PERMISSION_DENIED``) or does not serve the bundle 3; the first Ctrl-C
  during the frames stops the run, which then prints its summary, writes ``--json-out`` (``"interrupted":
  true``) and exits 130 (a second one, or one before the frames, quits at once, also 130); an output pipe closed
  under the run (``| head``) 141, quietly; never a traceback for a user error.

Only the defaults differ between the three (``slimsplit-edge`` sends one fixed mode unpaced against a lenient
deadline by default; the load tester and the demo run ``mpc`` at 10 and 30 frames/s against 100 ms): they are
arguments here, so every flag means the same and is checked the same way everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from slimsplit.bundle import Bundle, Manifest, default_bundle_path
from slimsplit.control.base import ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedOptions
from slimsplit.control.registry import CONTROLLERS
from slimsplit.edge.client import frame_overhead_bytes
from slimsplit.edge.config import TRANSMISSIONS, AuthSettings, ExitRule, TlsSettings, check_live_controller
from slimsplit.edge.display import silence_stdout
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK, EmulatedLink, LinkOptions, LinkTooSlow
from slimsplit.edge.pipeline import RunReport
from slimsplit.edge.run import (
    ControllerFactory,
    Stop,
    bundle_controller,
    controller_factory,
    default_mode,
    run_failure,
    write_json,
)
from slimsplit.edge.sources import SAMPLE
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.evaluation.link_check import check_link, format_link_check
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES
from slimsplit.records import RunSummary
from slimsplit.settings import renamed

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

#: The exit statuses, for each CLI's ``--help`` (after its own paragraphs; see :class:`HelpFormatter`).
EXIT_STATUS_HELP = (
    "exit status: 0 = the run went to its end and passed the exit rule; 1 = it did not: no frame was answered, "
    "fewer than --min-hit-rate of the frames were answered in time, or more than --max-drop-rate of the frames "
    "sent were never answered{failed}; 2 = a usage problem: a bad flag or file, an unwritable --json-out (found "
    "before the run), or an emulated link too slow to carry the start-up exchange; 3 = the server cannot be "
    "reached, refused this device (UNAUTHENTICATED, PERMISSION_DENIED: its token or certificate, or it is revoked) "
    "or does not serve the bundle{server}; 130 = interrupted (Ctrl-C during the frames: the summary so "
    'far is printed and --json-out written with "interrupted": true); 141 = the output pipe closed'
)

_Prepared = TypeVar("_Prepared")
_T = TypeVar("_T")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping the blank lines between paragraphs of a description or epilog."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(part, width, indent) for part in text.split("\n\n"))


def exit_status_help(*, failed: str = "", server: str = "") -> str:
    """:data:`EXIT_STATUS_HELP` with what else exits 1 (``failed``) and 3 (``server``) in this CLI."""
    return EXIT_STATUS_HELP.format(failed=failed, server=server)


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
    default = controller if controller is not None else "fixed with --mode, else mpc"
    g.add_argument("--controller", default=controller, metavar="NAME", help=controller_help(extra_controllers, default))
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


def controller_help(extra_controllers: Sequence[tuple[str, str]] = (), default: str = "%(default)s") -> str:
    """The ``--controller`` help: the live controllers of the registry, ``extra_controllers`` (name, meaning),
    where the oracle runs, and the default."""
    live = "; ".join(
        f"{spec.name} = {spec.summary}" + ("" if spec.measured else " (--mode)") for spec in CONTROLLERS if spec.live
    )
    extra = "".join(f"; {name} = {meaning}" for name, meaning in extra_controllers)
    return (
        f"how the mode is chosen per frame: {live}{extra}. The adaptive ones pick modes to meet --deadline-ms on "
        "the measured link (they need the manifest's measured figures). The oracle knows the link in advance and "
        f"runs offline only: slimsplit-link simulate --controller oracle (default: {default})"
    )


#: The flag of each field of :class:`~slimsplit.edge.link.LinkOptions`.
LINK_FLAGS = {
    "uplink": "--link",
    "downlink": "--downlink",
    "delay_ms": "--link-delay-ms",
    "queue_bytes": "--link-queue-bytes",
    "offset_s": "--link-offset-s",
}
#: The flag of each key of the run configuration and the controller choice.
CONTROL_FLAGS = {
    "controller": "--controller",
    "mode": "--mode",
    "deadline_ms": "--deadline-ms",
    "fps": "--fps",
    "max_in_flight": "--max-in-flight",
}


@contextlib.contextmanager
def naming_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """A :class:`~slimsplit.errors.ConfigError` naming a key of ``flags`` names its flag instead."""
    try:
        yield
    except ConfigError as exc:
        key = exc.context.get("key")
        if isinstance(key, str) and key in flags:
            raise renamed(exc, flags[key]) from exc
        raise


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration of ``--deadline-ms``, ``--fps`` and ``--max-in-flight`` (errors name the flag)."""
    with naming_flags(CONTROL_FLAGS):
        return RunConfig(deadline_ms=args.deadline_ms, fps=args.fps, max_in_flight=args.max_in_flight)


def check_control_args(args: argparse.Namespace, *, extra: Iterable[str] = ()) -> str:
    """Check the controller flags on their own (before any file is read) and return the controller's name:
    ``--controller``, else ``fixed`` when ``--mode`` is given, else ``mpc``. ``extra``: further names accepted.
    Raises :class:`~slimsplit.errors.ConfigError` naming the flag."""
    run_config_from_args(args)
    name: str = args.controller if args.controller is not None else ("fixed" if args.mode else "mpc")
    with naming_flags(CONTROL_FLAGS):
        check_live_controller(name, args.mode or None, extra=tuple(extra))
    return name


def add_transmission_argument(group: argparse._ArgumentGroup) -> None:
    """``--transmission frames|planes`` (see :func:`check_transmission_args`)."""
    group.add_argument(
        "--transmission",
        choices=TRANSMISSIONS,
        default="frames",
        help="frames: one message per frame; planes: each frame as bit planes sent while they can arrive in time "
        "(PlaneStream; the controller defaults to planes, and each frame shows the planes the server used) "
        "(default: %(default)s)",
    )


def check_transmission_args(args: argparse.Namespace, *, unary: bool = False) -> bool:
    """Whether frames go as bit planes (``--transmission planes``); then ``--controller`` defaults to ``planes``
    unless ``--mode`` is given. ``unary``: one call per frame was asked for (planes need a stream). Raises
    :class:`~slimsplit.errors.ConfigError` naming the flag."""
    planes: bool = args.transmission == "planes"
    if planes and args.controller is None and not args.mode:
        args.controller = "planes"
    if planes and unary:
        raise ConfigError("--unary: frames sent as bit planes travel on a stream (--transmission planes)")
    if args.controller == "planes" and not planes:
        raise ConfigError(
            "--controller planes chooses the width of frames sent as bit planes: add --transmission planes"
        )
    return planes


def bundle_from_args(args: argparse.Namespace) -> Bundle:
    """``--bundle``, else the shipped bundle, opened and checked (:class:`~slimsplit.errors.BundleError`)."""
    return bundle_from_path(args.bundle)


def bundle_from_path(path: Path | None) -> Bundle:
    """The bundle at ``path``, else the shipped bundle, opened and checked."""
    return Bundle.open(path if path is not None else default_bundle_path())


@dataclass(frozen=True)
class ControlPlan:
    """The controller the flags (or the configuration file) chose for one bundle.

    ``mode``: the mode of ``fixed`` (``--mode``, else the manifest's most accurate); ``factory``: builds a fresh
    controller once a run has measured its round trip (each client calls it); ``table``: the modes it plans with,
    each with what a frame of it puts on the link; ``modes``: the modes a run may send (checked with the server);
    ``run``: the run configuration the controller is built for (the run's control loop uses the same)."""

    name: str
    mode: str
    factory: ControllerFactory
    table: tuple[ModeOption, ...]
    modes: tuple[str, ...]
    run: RunConfig

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
    options = FixedOptions(args.mode or None) if name == "fixed" else None
    return control_plan(name, manifest, run_config_from_args(args), options, top_k=top_k)


def control_plan(name: str, manifest: Manifest, run: RunConfig, options: Any = None, *, top_k: int) -> ControlPlan:
    """The live controller ``name`` with ``options`` (its options dataclass; ``None``: the defaults) for
    ``manifest`` and ``run`` (see :func:`plan_control`)."""
    mode = default_mode(manifest).name
    if name == "fixed":
        given = options.mode if isinstance(options, FixedOptions) else None
        mode = manifest.mode(given).name if given else mode
        options = FixedOptions(mode)
    overhead = frame_overhead_bytes(manifest.name, manifest.version, top_k)
    # built once here so that it fails now; every run rebuilds it from the factory with its measured round trip
    _, table = bundle_controller(name, manifest, run, options, overhead_bytes=overhead)
    factory = controller_factory(name, manifest, run, options, overhead_bytes=overhead)
    return ControlPlan(name, mode, factory, table, (mode,) if name == "fixed" else manifest.mode_names, run)


# ---------------------------------------------------------------------------------------------- frames and server


class AddressesAction(argparse.Action):
    """A flag that may be repeated, each value one address or several comma-separated; the values are joined with
    commas (``--server A --server B,C`` -> ``"A,B,C"``), which :func:`~slimsplit.edge.config.parse_targets` reads.
    The first value replaces the default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        value = str(values).strip()
        current = getattr(namespace, self.dest, None)
        if isinstance(current, str) and current is not self.default and current:
            value = f"{current},{value}"
        setattr(namespace, self.dest, value)


def add_source_argument(group: argparse._ArgumentGroup) -> None:
    """``--source``: where the frames come from (:func:`~slimsplit.edge.sources.open_source`)."""
    group.add_argument(
        "--source",
        default=SAMPLE,
        metavar="SOURCE",
        help="'sample' (the shipped images), a folder of images, an .npz with 'images' [+ 'labels'] (repeated as "
        "needed), or live: camera:N (V4L2/USB, the Pi Camera Module through Picamera2), a video file, rtsp:// or "
        "http:// (MJPEG) streams: needs the camera extra, the newest frame is always taken (default: %(default)s)",
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


#: The flag of each key of the ``[tls]`` and ``[auth]`` tables.
CREDENTIAL_FLAGS = {
    "tls.ca": "--tls-ca",
    "tls.cert": "--tls-cert",
    "tls.key": "--tls-key",
    "tls.server_name": "--tls-server-name",
    "auth.token_file": "--token-file",
}


def add_credential_arguments(group: argparse._ArgumentGroup, *, tls: bool = True) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (unless ``tls`` is false) and ``--token-file``: how a client
    proves who it is. There is no flag for the token itself: a command line is visible to every user (``ps``)."""
    if tls:
        group.add_argument(
            "--tls-ca", type=Path, metavar="PEM", help="connect over TLS: the CA that signed the server's certificate"
        )
        group.add_argument(
            "--tls-cert", type=Path, metavar="PEM", help="mTLS: this device's certificate (with --tls-key)"
        )
        group.add_argument("--tls-key", type=Path, metavar="PEM", help="mTLS: this device's private key")
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="a file holding this device's bearer token, one line (slimsplit-certs writes it; keep it mode 0600), "
        "sent with every call; in plaintext only to a server on loopback, else use TLS",
    )


def tls_from_args(args: argparse.Namespace) -> TlsSettings:
    """The TLS settings of ``--tls-ca``, ``--tls-cert`` and ``--tls-key`` (errors name the flag)."""
    with naming_flags({k.removeprefix("tls."): v for k, v in CREDENTIAL_FLAGS.items() if k.startswith("tls.")}):
        return TlsSettings(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def auth_from_args(args: argparse.Namespace) -> AuthSettings:
    """The token settings of ``--token-file``."""
    return AuthSettings(token_file=args.token_file)


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
        help="uplink: a Mahimahi trace file (one line per 1500-byte delivery opportunity, ms timestamps), a "
        "trace shipped with slimsplit (shipped:NAME, e.g. shipped:ge-outages), a rate such as 2mbit or "
        f"800kbit, or none = no emulation{each} (default: {uplink_text})",
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
    with naming_flags(LINK_FLAGS):
        options = LinkOptions(
            uplink=args.link if uplink is None else uplink,
            downlink=args.downlink,
            delay_ms=args.link_delay_ms,
            queue_bytes=args.link_queue_bytes,
            offset_s=args.link_offset_s if offset_s is None else offset_s,
        )
        return link_from_options(options)


def link_from_options(options: LinkOptions) -> EmulatedLink | None:
    """The link ``options`` describe, ``None`` for uplink ``none`` (traces are read here: a bad file fails now)."""
    config = options.config()
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


def check_json_out(path: Path | None) -> None:
    """Refuse a ``--json-out`` that cannot be written, before anything runs (:class:`ConfigError` naming it): a
    folder, a file that may not be written, or a place where its folder cannot be made (the folders missing are
    made when it is written)."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"cannot write --json-out {path}: it is a folder")
    if path.exists():
        writable = os.access(path, os.W_OK)
    else:
        folder = path.absolute().parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"cannot write --json-out {path}: {folder} is not a folder")
        writable = os.access(folder, os.W_OK | os.X_OK)
    if not writable:
        raise ConfigError(f"cannot write --json-out {path}: permission denied")


# ---------------------------------------------------------------------------------------------- exit rule

#: The flag of each field of :class:`~slimsplit.edge.config.ExitRule`.
EXIT_FLAGS = {"min_hit_rate": "--min-hit-rate", "max_drop_rate": "--max-drop-rate"}


def add_exit_arguments(parser: argparse.ArgumentParser, *, frames: str = "the frames") -> argparse._ArgumentGroup:
    """Add the ``exit status`` group (``--min-hit-rate``, ``--max-drop-rate``; see
    :class:`~slimsplit.edge.config.ExitRule`) and return it; ``frames``: whose frames the shares count."""
    rule = ExitRule()
    g = parser.add_argument_group(
        "exit status", "a run that went to its end exits 1 when it answered no frame or misses one of these, else 0"
    )
    g.add_argument(
        "--min-hit-rate",
        type=float,
        default=rule.min_hit_rate,
        metavar="R",
        help=f"exit 1 when fewer than this share of {frames} were answered by the deadline (skipped and dropped "
        "frames count as misses; default: %(default)s)",
    )
    g.add_argument(
        "--max-drop-rate",
        type=float,
        default=rule.max_drop_rate,
        metavar="R",
        help=f"exit 1 when more than this share of {frames} sent were never answered (default: %(default)s)",
    )
    return g


def exit_rule_from_args(args: argparse.Namespace) -> ExitRule:
    """The exit rule of ``--min-hit-rate`` and ``--max-drop-rate`` (errors name the flag)."""
    with naming_flags(EXIT_FLAGS):
        return ExitRule(min_hit_rate=args.min_hit_rate, max_drop_rate=args.max_drop_rate)


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
    (the server unreachable, or not serving the bundle) is one error line and :data:`EXIT_SERVER`, except
    :class:`~slimsplit.edge.link.LinkTooSlow` (the link given cannot work), :data:`EXIT_USAGE`. Ctrl-C that
    ``run`` does not handle itself (:func:`interruptible`) is :data:`EXIT_INTERRUPTED`; an output pipe that closed
    (``| head``) is :data:`EXIT_BROKEN_PIPE`, quietly. ``stdout``/``stderr``: default the process's."""
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
        except LinkTooSlow as exc:
            console.error(str(exc))
            return EXIT_USAGE
        except SlimsplitError as exc:
            console.error(str(exc))
            return EXIT_SERVER
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE


async def interruptible(console: Console, stop: Stop, main: Coroutine[Any, Any, _T]) -> _T:
    """Await ``main`` (runs sharing ``stop``) with the first Ctrl-C (SIGINT) during their frames asking ``stop``
    to end them: they stop capturing, wait briefly for the frames in flight and return what they have. A Ctrl-C
    before any frame, or a second one, cancels ``main`` (its clean-up runs: links, connections) and then raises
    ``KeyboardInterrupt``. Where the event loop cannot catch signals (not the main thread), Ctrl-C is Python's."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    quit_now = False

    def on_sigint() -> None:
        nonlocal quit_now
        if stop.requested or not stop.streaming:
            quit_now = True
            if task is not None:
                task.cancel()
            return
        stop.request()
        console.notes(["stopping: no more frames; waiting briefly for those in flight (Ctrl-C again quits at once)"])

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):
        return await main
    try:
        return await main
    except asyncio.CancelledError:
        if quit_now:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def end_status(console: Console, failure: str | None, stop: Stop | None) -> int:
    """The exit status of a run that returned: :data:`EXIT_INTERRUPTED` when ``stop`` was requested, else 1 when it
    failed the exit rule (``failure``: why, printed as a note), else 0."""
    if stop is not None and stop.requested:
        console.notes(["interrupted: the summary covers the frames before Ctrl-C"])
        return EXIT_INTERRUPTED
    if failure is not None:
        console.notes([f"exit status {EXIT_FAILED}: {failure}"])
        return EXIT_FAILED
    return 0


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
    empty = all; ``table`` says what each puts on the link; see :mod:`slimsplit.evaluation.link_check`) under the
    summary and record it in ``meta["link_check"]``."""
    if link is None:
        return
    check = check_link(report.results, table, link.config, set(modes))
    if check is None:
        return
    console.out.write(format_link_check(check) + "\n")
    console.out.flush()
    meta["link_check"] = check.to_dict()


def finish_run(
    console: Console,
    path: Path | None,
    report: RunReport,
    summary: RunSummary,
    meta: dict[str, Any],
    *,
    rule: ExitRule | None = None,
    stop: Stop | None = None,
) -> int:
    """The end of one edge run: its frames, summary and ``meta`` written to ``path`` (``--json-out``, when given),
    then its exit status (:func:`end_status` under ``rule``; :data:`EXIT_USAGE` if the file cannot be written)."""
    interrupted = stop is not None and stop.requested
    status = end_status(console, run_failure(summary, rule), stop)
    return write_json_out(
        console, path, lambda p: write_json(p, report, summary, meta, interrupted=interrupted), status
    )


__all__ = [
    "CONTROL_FLAGS",
    "CREDENTIAL_FLAGS",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_FLAGS",
    "EXIT_INTERRUPTED",
    "EXIT_SERVER",
    "EXIT_STATUS_HELP",
    "EXIT_USAGE",
    "LINK_DESCRIPTION",
    "LINK_FLAGS",
    "AddressesAction",
    "Console",
    "ControlPlan",
    "HelpFormatter",
    "add_connect_timeout_argument",
    "add_control_arguments",
    "add_credential_arguments",
    "add_exit_arguments",
    "add_link_arguments",
    "add_output_arguments",
    "add_source_argument",
    "auth_from_args",
    "bundle_from_args",
    "bundle_from_path",
    "check_control_args",
    "check_json_out",
    "control_plan",
    "controller_help",
    "end_status",
    "exit_rule_from_args",
    "exit_status_help",
    "finish_run",
    "interruptible",
    "link_from_args",
    "link_from_options",
    "naming_flags",
    "plan_control",
    "report_link_check",
    "run_config_from_args",
    "run_main",
    "tls_from_args",
    "write_json_out",
]
