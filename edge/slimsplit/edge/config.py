"""Typed configuration of the edge (frozen dataclasses with defaults; no module-level state).

:class:`ClientConfig` (with :class:`ReconnectPolicy`, :class:`ChannelConfig`) is what the gRPC client needs.
:class:`EdgeConfig` is everything ``slimsplit-edge`` runs with, as its TOML file (``--config``) holds it; flags
override the file, the file overrides the defaults (the same loader as the server's, :mod:`slimsplit.settings`)::

    [server]
    address = "slimsplit-server.lan:50051"   # or replicas: "10.0.0.5:50051,10.0.0.6:50051", "dns:///name:50051"

    [control]
    controller = "mpc"
    deadline_ms = 100.0
    fps = 10.0

    [control.mpc]
    margin = 0.9

    [tls]                       # TLS to the server (off unless ca or cert is given); paths relative to this file
    ca = "ca.crt"               # the CA that signed the server's certificate
    cert = "camera-01.crt"      # mTLS: this device's certificate and key
    key = "camera-01.key"

    [auth]                      # this device's bearer token (the server's devices file holds its hash)
    token_file = "camera-01.token"  # one line; relative to this file; never put the token itself here

Every key is checked: an unknown key, a value of the wrong type or out of range is a
:class:`~slimsplit.errors.ConfigError` naming the key (``control.deadline_ms: expected a number > 0, got 0``).
``slimsplit-edge --print-config`` prints the effective configuration in this form.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import EwmaGreedyOptions, FixedOptions, MpcConfig
from slimsplit.control.planes import PlanesOptions
from slimsplit.control.registry import CONTROLLERS
from slimsplit.edge.link import LinkOptions
from slimsplit.edge.sources import SAMPLE
from slimsplit.errors import ConfigError
from slimsplit.protocol import DEFAULT_PORT
from slimsplit.settings import check, field_error, load


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter between attempts to reopen a broken stream.

    The delay before attempt ``n`` (1-based) is ``min(max_s, initial_s * multiplier**(n-1))`` scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``. ``max_attempts`` = consecutive failed attempts before the
    stream gives up with :class:`~slimsplit.errors.Unavailable` (``None`` = keep trying while frames keep
    coming).
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ConfigError(f"reconnect backoff: need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.multiplier < 1.0:
            raise ConfigError(f"reconnect backoff: multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError(f"reconnect backoff: jitter must be in [0, 1), got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"reconnect backoff: max_attempts must be >= 1, got {self.max_attempts}")

    def delay(self, attempt: int, rand: float) -> float:
        """Delay before attempt ``attempt`` (1-based); ``rand`` is a uniform sample in [0, 1)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
        return base * (1.0 - self.jitter + 2.0 * self.jitter * rand)


@dataclass(frozen=True)
class UnaryRetryPolicy:
    """gRPC's own retry policy for ``Infer`` (service config); only statuses that are safe to retry."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.02
    max_backoff_s: float = 0.5
    multiplier: float = 2.0
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ConfigError(f"unary retry: max_attempts must be in 1..5 (1 = no retries), got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s or self.multiplier <= 0:
            raise ConfigError("unary retry: need 0 < initial_backoff_s <= max_backoff_s and multiplier > 0")
        if not self.retryable_status_codes:
            raise ConfigError("unary retry: retryable_status_codes must not be empty")


@dataclass(frozen=True)
class ChannelConfig:
    """Options of the gRPC channel (both sides set matching message limits and keepalive).

    ``max_reply_bytes``: the largest reply to a frame the edge accepts (a larger one fails the call before it is
    parsed; :class:`~slimsplit.edge.client.EdgeClient` raises it to what ``top_k`` classes with the longest labels
    need, :func:`~slimsplit.edge.replies.reply_bytes_bound`); ``max_message_bytes`` bounds every other message
    and what the edge sends: 4 MiB, the server's send limit (a ``Describe`` answer carries whole manifests, at most
    3 MiB for every model a server serves; a frame is at most 64 KiB).
    ``max_reconnect_backoff_ms``: the longest the channel waits between two dials of a server that went away, so
    the most an outage is stretched once the server is back (1 s: one dial a second while it is down).
    """

    max_message_bytes: int = 4 * 1024 * 1024
    max_reply_bytes: int = 64 * 1024
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 5_000
    keepalive_permit_without_calls: bool = False
    # how fast the channel itself re-dials a server that went away (gRPC's default starts at 1 s, caps at 120
    # s)
    initial_reconnect_backoff_ms: int = 100
    max_reconnect_backoff_ms: int = 1_000
    retry: UnaryRetryPolicy = field(default_factory=UnaryRetryPolicy)

    def __post_init__(self) -> None:
        if self.max_reply_bytes < 1024:
            raise ConfigError(f"max_reply_bytes must be >= 1024, got {self.max_reply_bytes}")


@dataclass(frozen=True)
class TlsSettings:
    """``[tls]``: TLS to the server, on when ``ca`` or ``cert`` is given. ``ca``: the CA bundle that signed the
    server's certificate (unset: the system's roots); ``cert`` and ``key``: this device's certificate and key
    (mTLS); ``server_name``: the name to check the server's certificate against (unset: the host of the
    address)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        check((self.cert is None) == (self.key is None), "cert", "the certificate and the key go together")
        check(self.server_name is None or bool(self.server_name), "server_name", "must not be empty")

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: ``token_file`` = the file holding this device's bearer token (one line, as ``slimsplit-certs``
    writes it), sent as ``authorization: Bearer ...`` with every call; unset: no token. The token is read when
    the channel opens (:func:`slimsplit.edge.auth.read_token`), never given on a command line."""

    token_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.token_file is not None


@dataclass(frozen=True)
class ClientConfig:
    """Everything the edge client needs besides the bundle and the frames.

    ``deadline_ms``: the latency target of a frame, from its capture to its prediction; an answer that comes
    later counts as a miss. ``give_up_ms``: a frame whose reply has not arrived this long after its capture is
    abandoned, reported ``DEADLINE_EXCEEDED`` (dropped), and its in-flight slot is freed; the stream goes on
    (``None`` = ``deadline_ms``: give up at the deadline, when the answer has lost its value; bytes already handed
    to the transport stay in the link, which the mpc controller accounts for; a longer wait lets a late reply
    still measure the link, at the price of slots held by frames that are misses already).
    ``max_in_flight``: frames sent and not yet answered (or abandoned); at that limit a paced source skips
    frames, an unpaced one waits for a free slot.
    ``streams``: how many frame streams a run keeps open over a target that names several replicas (gRPC's
    ``round_robin`` places each new stream on the next ready replica; 0 = one per address, 2 for a ``dns:///``
    name); a frame whose stream breaks is re-sent once on another while its deadline allows.
    """

    target: str = f"127.0.0.1:{DEFAULT_PORT}"
    model: str = ""  # empty = the bundle's manifest name
    model_version: str = ""  # empty = the newest the server has
    max_in_flight: int = 4
    deadline_ms: float = 1000.0
    top_k: int = 5
    connect_timeout_s: float = 5.0
    give_up_ms: float | None = None
    streams: int = 0
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not self.deadline_ms > 0:
            raise ConfigError(f"deadline_ms must be > 0, got {self.deadline_ms}")
        if self.give_up_ms is not None and not self.give_up_ms > 0:
            raise ConfigError(f"give_up_ms must be > 0, got {self.give_up_ms}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.streams <= MAX_ADDRESSES:
            raise ConfigError(f"streams must be in 0..{MAX_ADDRESSES}, got {self.streams}")
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")

    @property
    def give_up_s(self) -> float:
        """Seconds after its capture at which a frame without a reply is abandoned."""
        return (self.give_up_ms if self.give_up_ms is not None else self.deadline_ms) / 1e3

    @property
    def stream_count(self) -> int:
        """The frame streams a run keeps open (see ``streams``): 1 for a target of one address."""
        if self.streams:
            return self.streams
        count = replica_count(self.target)
        return 2 if count == 0 else count


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Validate ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port optional) and return a gRPC target string.

    Raises :class:`ConfigError` naming what is wrong.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("server address is empty; expected HOST:PORT, e.g. 127.0.0.1:50051")
    if "://" in raw:
        raise ConfigError(f"server address {text!r}: give HOST:PORT without a scheme (e.g. 127.0.0.1:50051)")
    host: str
    port_text: str | None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ConfigError(f"server address {text!r}: unterminated '[' in IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"server address {text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"server address {text!r}: {host!r} is not an IPv6 address") from exc
    elif raw.count(":") > 1:
        raise ConfigError(f"server address {text!r}: write IPv6 addresses in brackets, e.g. [::1]:50051")
    else:
        host, _, port_text = raw.partition(":")
        port_text = port_text if ":" in raw else None
    if not host:
        raise ConfigError(f"server address {text!r}: the host is missing (expected HOST:PORT)")
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"server address {text!r}: {host!r} is not a valid host name")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit():
            raise ConfigError(f"server address {text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"server address {text!r}: port {port} is outside 1-65535")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DNS_SCHEME = "dns:///"
"""The prefix of a target that gRPC resolves itself, every address of the name a replica (``dns:///name:port``)."""
_MULTI_SCHEMES = ("ipv4:", "ipv6:")
MAX_ADDRESSES = 64
"""The most server addresses one ``--server`` may list."""


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == version
    except ValueError:
        return False


def parse_targets(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Validate one server address, several (comma-separated: replicas of one service) or ``dns:///NAME:PORT``,
    and return the gRPC target: one address as :func:`parse_address` writes it; several as gRPC's multi-address
    target (``ipv4:127.0.0.1:5001,127.0.0.1:5002``, ``ipv6:[::1]:5001,[::1]:5002``: IP literals of one family,
    a name cannot be listed); ``dns:///name:port`` as it is (gRPC resolves the name, every address a replica).

    Raises :class:`ConfigError` naming what is wrong."""
    raw = text.strip()
    if raw.startswith(DNS_SCHEME):
        rest = raw[len(DNS_SCHEME) :]
        if "," in rest:
            raise ConfigError(f"server address {text!r}: a dns:/// target names one host (its addresses: the replicas)")
        return DNS_SCHEME + parse_address(rest, default_port)
    if raw.startswith(_MULTI_SCHEMES):
        raw = raw.partition(":")[2]
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) == 1:
        return parse_address(parts[0], default_port)
    if any(not p for p in parts):
        raise ConfigError(f"server addresses {text!r}: an empty address in the list")
    if len(parts) > MAX_ADDRESSES:
        raise ConfigError(f"server addresses {text!r}: {len(parts)} addresses, at most {MAX_ADDRESSES}")
    addresses = [parse_address(p, default_port) for p in parts]
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"server addresses {text!r}: an address is listed twice")
    hosts = [split_host(a) for a in addresses]
    for version in (4, 6):
        if all(_is_ip(h, version) for h in hosts):
            return f"ipv{version}:" + ",".join(addresses)
    raise ConfigError(
        f"server addresses {text!r}: several addresses must be IP addresses of one family (IPv4, or IPv6 in "
        "brackets); for a host name with several addresses give dns:///NAME:PORT"
    )


def split_host(address: str) -> str:
    """The host of ``HOST:PORT`` or ``[V6]:PORT`` (brackets removed)."""
    return address.rpartition(":")[0].strip("[]")


def target_addresses(target: str) -> tuple[str, ...]:
    """The addresses of a gRPC target :func:`parse_targets` wrote: one ``HOST:PORT`` each (a ``dns:///`` target:
    its one ``NAME:PORT``)."""
    if target.startswith(DNS_SCHEME):
        return (target[len(DNS_SCHEME) :],)
    if target.startswith(_MULTI_SCHEMES):
        return tuple(target.partition(":")[2].split(","))
    return (target,)


def first_address(target: str) -> str:
    """The first ``HOST:PORT`` of a target (what a TLS diagnosis or a name check looks at)."""
    return target_addresses(target)[0]


def replica_count(target: str) -> int:
    """How many replicas the target names: its addresses, 0 for a ``dns:///`` name (unknown until resolved)."""
    if target.startswith(DNS_SCHEME):
        return 0
    return len(target_addresses(target))


def balanced(target: str) -> bool:
    """Whether the target may name several replicas (several addresses, or a ``dns:///`` name): the channel then
    balances calls over them (``round_robin``)."""
    return replica_count(target) != 1


# ---------------------------------------------------------------------------------------------- slimsplit-edge

#: Where the ``oracle`` runs (it knows the link trace in advance: an offline evaluation, not a live controller).
ORACLE_REFUSAL = (
    "the oracle knows the link trace in advance, so it cannot run live; it is the upper bound of an offline "
    "evaluation: slimsplit-link simulate --controller oracle. Live controllers: " + ", ".join(CONTROLLERS.names())
)


def check_live_controller(name: str, mode: str | None, extra: tuple[str, ...] = ()) -> None:
    """Refuse a controller name that cannot run live (``oracle``: :data:`ORACLE_REFUSAL`) or is unknown (``extra``:
    further names the caller accepts), and a fixed ``mode`` given to another controller. The errors name the
    keys ``controller`` and ``mode``."""
    if name == "oracle":
        raise field_error("controller", ORACLE_REFUSAL)
    if name not in CONTROLLERS and name not in extra:
        available = ", ".join((*CONTROLLERS.names(), *extra))
        raise field_error("controller", f"unknown controller {name!r}; available: {available}")
    if mode is not None and name != "fixed":
        raise field_error("mode", f"fixes the mode; it cannot be combined with controller {name!r}")


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: the slimsplit server and how frames reach it. ``give_up_ms``: a frame with no reply this long
    after its capture is dropped and its in-flight slot freed (unset: the deadline); ``rtt_pings``: the round trip
    measured at start as the fastest of this many ``Describe`` calls (0 = not measured). ``address``: one
    ``HOST:PORT``, several replicas of one service comma-separated (IP addresses), or ``dns:///NAME:PORT`` (every
    address of the name a replica); the edge balances over replicas and routes around a dead one
    (:func:`parse_targets`)."""

    address: str = f"127.0.0.1:{DEFAULT_PORT}"
    unary: bool = False
    give_up_ms: float | None = None
    rtt_pings: int = 5
    connect_timeout_s: float = 5.0
    top_k: int = 5

    def __post_init__(self) -> None:
        try:
            parse_targets(self.address)
        except ConfigError as exc:
            raise field_error("address", str(exc)) from exc
        check(
            self.give_up_ms is None or (math.isfinite(self.give_up_ms) and self.give_up_ms > 0),
            "give_up_ms",
            f"expected a number > 0, got {self.give_up_ms!r}",
        )
        check(self.rtt_pings >= 0, "rtt_pings", f"expected an integer >= 0, got {self.rtt_pings!r}")
        check(
            math.isfinite(self.connect_timeout_s) and self.connect_timeout_s > 0,
            "connect_timeout_s",
            f"expected a number > 0, got {self.connect_timeout_s!r}",
        )
        check(self.top_k >= 0, "top_k", f"expected an integer >= 0, got {self.top_k!r}")


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: the bundle (unset: the shipped one) and the encoder's ONNX Runtime threads (0 = its choice)."""

    bundle: Path | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        check(self.threads >= 0, "threads", f"expected an integer >= 0, got {self.threads!r}")


#: How frames travel: whole (the feature codec, ``InferStream``/``Infer``) or as bit planes (``PlaneStream``).
TRANSMISSIONS = ("frames", "planes")


@dataclass(frozen=True)
class ControlSettings:
    """``[control]``: the controller and the run configuration it shares with the control loop (:attr:`run`).
    ``mode``: the mode of the ``fixed`` controller (unset: the most accurate); ``[control.ewma_greedy]`` and
    ``[control.mpc]``, ``[control.planes]``: the options of those controllers. ``transmission``: ``"frames"`` (each
    frame one message of the feature codec) or ``"planes"`` (each frame as bit planes over a plane stream, sent
    while they can arrive in time: progressive transmission; the ``planes`` controller picks the width)."""

    controller: str = "fixed"
    mode: str | None = None
    transmission: str = "frames"
    deadline_ms: float = 1000.0
    fps: float = 0.0
    max_in_flight: int = 4
    ewma_greedy: EwmaGreedyOptions = field(default_factory=EwmaGreedyOptions)
    mpc: MpcConfig = field(default_factory=MpcConfig)
    planes: PlanesOptions = field(default_factory=PlanesOptions)

    def __post_init__(self) -> None:
        _ = self.run  # checks deadline_ms, fps and max_in_flight (the errors name them)
        check_live_controller(self.controller, self.mode)
        if self.transmission not in TRANSMISSIONS:
            raise ConfigError(
                f"transmission must be one of {', '.join(TRANSMISSIONS)}, got {self.transmission!r}",
                key="transmission",
            )
        if self.controller == "planes" and self.transmission != "planes":
            raise ConfigError(
                "the planes controller chooses the width of frames sent as bit planes: use it with "
                "--transmission planes",
                key="controller",
            )

    @property
    def run(self) -> RunConfig:
        return RunConfig(deadline_ms=self.deadline_ms, fps=self.fps, max_in_flight=self.max_in_flight)

    def options(self) -> Any:
        """The options of the chosen controller (``fixed``: its ``mode``, which may still be unset)."""
        if self.controller == "ewma-greedy":
            return self.ewma_greedy
        if self.controller == "mpc":
            return self.mpc
        if self.controller == "planes":
            return self.planes
        return FixedOptions(self.mode)


@dataclass(frozen=True)
class FramesSettings:
    """``[frames]``: ``source`` = ``sample`` (the shipped images), a folder of images, an ``.npz``, a camera
    (``camera:N``), a video file or a stream (``rtsp://``, ``http://``); ``count`` = frames to send (unset: the source
    once; more repeats a stored one); ``stall_s``: a live source with no new frame for this long ends the run."""

    source: str = SAMPLE
    count: int | None = None
    stall_s: float = 5.0

    def __post_init__(self) -> None:
        check(bool(self.source), "source", "expected 'sample', a folder, an .npz file, camera:N, a video or a URL")
        check(self.count is None or self.count >= 1, "count", f"expected an integer >= 1, got {self.count!r}")
        check(
            isinstance(self.stall_s, int | float) and math.isfinite(self.stall_s) and self.stall_s > 0,
            "stall_s",
            f"expected a number > 0, got {self.stall_s!r}",
        )


@dataclass(frozen=True)
class ExitRule:
    """When a run that went to its end exits 1 instead of 0, the same for ``slimsplit-edge``, ``slimsplit-demo``
    and ``slimsplit-loadtest`` (all frames of all clients): no frame was answered; the share of frames answered
    by their deadline (skipped and dropped ones count as misses) is below ``min_hit_rate``; or the share of the
    frames sent that were never answered is above ``max_drop_rate``. The defaults fail only a run that answered
    nothing: late, skipped and dropped frames are what a bad link does, and what the run measures."""

    min_hit_rate: float = 0.0
    max_drop_rate: float = 1.0

    def __post_init__(self) -> None:
        for key in ("min_hit_rate", "max_drop_rate"):
            value = getattr(self, key)
            check(0.0 <= value <= 1.0, key, f"expected a number from 0 to 1, got {value!r}")

    def failure(self, *, frames: int, answered: int, hits: int, sent: int) -> str | None:
        """Why a run of ``frames`` frames (``sent`` of them sent, ``answered`` answered, ``hits`` of those by the
        deadline) failed, or ``None`` when it passed."""
        if answered == 0:
            return f"{frames} frames, none answered"
        hit_rate = hits / frames
        if hit_rate < self.min_hit_rate:
            return (
                f"{hits} of {frames} frames answered in time ({hit_rate:.1%}), below the minimum hit rate "
                f"{self.min_hit_rate:g}"
            )
        drop_rate = (sent - answered) / sent if sent else 0.0
        if drop_rate > self.max_drop_rate:
            return (
                f"{sent - answered} of {sent} frames sent were never answered ({drop_rate:.1%}), above the maximum "
                f"drop rate {self.max_drop_rate:g}"
            )
        return None

    def status(self, *, frames: int, answered: int, hits: int, sent: int) -> int:
        """1 when the run failed (:meth:`failure`), else 0."""
        return 0 if self.failure(frames=frames, answered=answered, hits=hits, sent=sent) is None else 1


@dataclass(frozen=True)
class OutputSettings:
    """``[output]``: ``json_out`` = write every frame and the summary there as JSON (the run then keeps every
    frame's record, about 1.5 KB each, until it ends: without it the edge's memory does not grow with the run's
    length); ``quiet`` = only the summary;
    ``plain`` = plain lines even on a terminal; ``every`` = plain output, one line every this many seconds (0 =
    one per frame); ``min_hit_rate``/``max_drop_rate``: when the run exits 1 (:class:`ExitRule`);
    ``status_file`` = write the last minute's status there as JSON every ``status_every_s`` seconds
    (:mod:`slimsplit.edge.status_file`; unset: ``$STATE_DIRECTORY/status.json`` under systemd, else none)."""

    json_out: Path | None = None
    quiet: bool = False
    plain: bool = False
    every: float = 0.0
    min_hit_rate: float = 0.0
    max_drop_rate: float = 1.0
    status_file: Path | None = None
    status_every_s: float = 5.0

    def __post_init__(self) -> None:
        check(math.isfinite(self.every) and self.every >= 0, "every", f"expected a number >= 0, got {self.every!r}")
        check(
            math.isfinite(self.status_every_s) and 0.5 <= self.status_every_s <= 3600,
            "status_every_s",
            f"expected a number of seconds from 0.5 to 3600, got {self.status_every_s!r}",
        )
        self.exit_rule()

    def exit_rule(self) -> ExitRule:
        return ExitRule(self.min_hit_rate, self.max_drop_rate)


@dataclass(frozen=True)
class EdgeConfig:
    """Everything ``slimsplit-edge`` runs with (see the module docstring); ``[link]`` is the emulated link
    (:class:`~slimsplit.edge.link.LinkOptions`; ``uplink = "none"``: none)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    frames: FramesSettings = field(default_factory=FramesSettings)
    link: LinkOptions = field(default_factory=LinkOptions)
    output: OutputSettings = field(default_factory=OutputSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)

    def client(self) -> ClientConfig:
        """The gRPC client's configuration (give up at the deadline unless ``server.give_up_ms`` says otherwise)."""
        s, c = self.server, self.control
        return ClientConfig(
            target=parse_targets(s.address),
            max_in_flight=c.max_in_flight,
            deadline_ms=c.deadline_ms,
            give_up_ms=s.give_up_ms if s.give_up_ms is not None else c.deadline_ms,
            top_k=s.top_k,
            connect_timeout_s=s.connect_timeout_s,
            tls=self.tls,
            auth=self.auth,
        )


def load_edge_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Defaults, then the TOML file at ``path`` (if any; relative paths in it are relative to the file), then
    ``overrides`` (nested like the file)."""
    return load(EdgeConfig, path, overrides)


__all__ = [
    "DNS_SCHEME",
    "MAX_ADDRESSES",
    "ORACLE_REFUSAL",
    "AuthSettings",
    "ChannelConfig",
    "ClientConfig",
    "ControlSettings",
    "EdgeConfig",
    "ExitRule",
    "FramesSettings",
    "ModelSettings",
    "OutputSettings",
    "ReconnectPolicy",
    "ServerSettings",
    "TlsSettings",
    "UnaryRetryPolicy",
    "balanced",
    "check_live_controller",
    "first_address",
    "load_edge_config",
    "parse_address",
    "parse_targets",
    "replica_count",
    "split_host",
    "target_addresses",
]
