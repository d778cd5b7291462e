"""Typed configuration of the edge client (frozen dataclasses with defaults; no module-level state)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from slimsplit.errors import ConfigError

#: Wire protocol revision this client speaks (``FeatureFrame.protocol_version``).
PROTOCOL_VERSION = 1
DEFAULT_PORT = 50051


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
    """Options of the gRPC channel (both sides set matching message limits and keepalive)."""

    max_message_bytes: int = 16 * 1024 * 1024
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 5_000
    keepalive_permit_without_calls: bool = False
    # how fast the channel itself re-dials a server that went away (gRPC's default starts at 1 s, caps at 120
    # s)
    initial_reconnect_backoff_ms: int = 100
    max_reconnect_backoff_ms: int = 5_000
    retry: UnaryRetryPolicy = field(default_factory=UnaryRetryPolicy)


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
    """

    target: str = f"127.0.0.1:{DEFAULT_PORT}"
    model: str = ""  # empty = the bundle's manifest name
    model_version: str = ""  # empty = the newest the server has
    max_in_flight: int = 4
    deadline_ms: float = 1000.0
    top_k: int = 5
    connect_timeout_s: float = 5.0
    give_up_ms: float | None = None
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not self.deadline_ms > 0:
            raise ConfigError(f"deadline_ms must be > 0, got {self.deadline_ms}")
        if self.give_up_ms is not None and not self.give_up_ms > 0:
            raise ConfigError(f"give_up_ms must be > 0, got {self.give_up_ms}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")

    @property
    def give_up_s(self) -> float:
        """Seconds after its capture at which a frame without a reply is abandoned."""
        return (self.give_up_ms if self.give_up_ms is not None else self.deadline_ms) / 1e3


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


__all__ = [
    "DEFAULT_PORT",
    "PROTOCOL_VERSION",
    "ChannelConfig",
    "ClientConfig",
    "ReconnectPolicy",
    "UnaryRetryPolicy",
    "parse_address",
]
