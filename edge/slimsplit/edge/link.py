"""An emulated link between the edge and the server (``slimsplit-edge --link ...`` and the demo).

``--link SPEC`` shapes the uplink with a Mahimahi trace file, a constant rate (``2mbit``) or nothing (``none``); the
downlink gets its own spec (default: a fast constant rate), both a one-way propagation delay and a bounded
bottleneck queue. For the length of a run a :class:`~slimsplit.link.proxy.ShapingProxy` listens on 127.0.0.1 in
front of the server, on the run's event loop, and the edge dials it instead of the server: gRPC crosses a real
TCP path whose timing follows the trace, and everything the edge measures (the round trip at start, every frame's
transfer) is measured through it.

Use :meth:`EmulatedLink.route` as :class:`~slimsplit.edge.run.EdgeRun`'s ``route`` and
:meth:`EmulatedLink.uplink_bps` as a display's ``capacity``.

A link must carry the run's start-up exchange (the HTTP/2 preface, ``Describe`` and the round-trip pings, each
within :data:`STARTUP_TIMEOUT_S`): a constant rate below :data:`MIN_RATE_BPS` is refused when the link is read
(``--link 2`` is 2 bit/s, most likely a rate without its unit), and a run whose start-up exchange does not cross
the link in time ends with :class:`LinkTooSlow`, which says how many bytes crossed each direction.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from slimsplit.errors import ConfigError
from slimsplit.link.proxy import ProxyConfig, ShapingProxy
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, LinkConfig
from slimsplit.link.trace import Trace, load_trace_spec
from slimsplit.settings import check, field_error

DEFAULT_DOWNLINK = "100mbit"
DEFAULT_DELAY_MS = 10.0
#: Seconds each call of a run's start-up exchange may take (``Describe``, each round-trip ping).
STARTUP_TIMEOUT_S = 5.0
#: Bytes the start-up exchange puts on the uplink before the first ping answers: the HTTP/2 preface and
#: settings, the ``Describe`` call (about 460 with the shipped bundle).
STARTUP_UPLINK_BYTES = 500
#: The slowest constant rate a link direction may have, bits/s: at it the start-up exchange's first call takes
#: :data:`STARTUP_UPLINK_BYTES` x 8 / 1000 = 4 s of the :data:`STARTUP_TIMEOUT_S` it may take up the link (a
#: downlink must also carry the ``Describe`` answer, the bundle's manifest: a few kB, checked when the run starts).
MIN_RATE_BPS = 1000.0
#: Bytes on the way that do not make a direction the one that stalled: the HTTP/2 control frames sent as a call is
#: given up (RST_STREAM, WINDOW_UPDATE: 13 bytes each).
_CONTROL_BYTES = 32


class LinkTooSlow(ConfigError):
    """The emulated link did not carry the run's start-up exchange within :data:`STARTUP_TIMEOUT_S`, while the
    server answers when dialled directly: the link given (``--link``, ``--downlink``, ``--link-offset-s``) is the
    problem, a usage error."""


def _check_rate(trace: Trace | None, key: str, spec: str) -> None:
    """Refuse a constant rate below :data:`MIN_RATE_BPS` (the error names ``key``)."""
    if trace is None or trace.packet_bytes is not None or trace.mean_bps >= MIN_RATE_BPS:
        return
    raise field_error(
        key,
        f"{spec.strip()!r} is {format_bps(trace.mean_bps)}, too slow for an emulated link: the edge's start-up "
        f"exchange (about {STARTUP_UPLINK_BYTES} bytes up, the bundle's description down) must cross it within "
        f"{STARTUP_TIMEOUT_S:g} s, so each direction needs at least {format_bps(MIN_RATE_BPS)} (a rate without a "
        "unit is bits/s; e.g. 2mbit, 800kbit)",
    )


@dataclass(frozen=True)
class LinkOptions:
    """The link as given on a command line. ``uplink``/``downlink``: a Mahimahi trace file, a rate such as
    ``2mbit``, or ``none`` (``uplink`` ``none`` = no emulation at all: the edge dials the server directly).
    ``delay_ms``: one-way propagation delay, each direction. ``offset_s``: where in the traces the run starts."""

    uplink: str = "none"
    downlink: str = DEFAULT_DOWNLINK
    delay_ms: float = DEFAULT_DELAY_MS
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        check(
            math.isfinite(self.delay_ms) and self.delay_ms >= 0,
            "delay_ms",
            f"expected a number >= 0, got {self.delay_ms!r}",
        )
        check(self.queue_bytes >= 1, "queue_bytes", f"expected an integer >= 1, got {self.queue_bytes!r}")
        check(
            math.isfinite(self.offset_s) and self.offset_s >= 0,
            "offset_s",
            f"expected a number >= 0, got {self.offset_s!r}",
        )

    def config(self) -> LinkConfig | None:
        """The link to emulate, or ``None`` for ``uplink`` ``none``. Traces are read here, so a bad file fails
        before anything starts (:class:`~slimsplit.errors.TraceError` naming the file and line)."""
        uplink = load_trace_spec(self.uplink)
        if uplink is None:
            return None
        downlink = load_trace_spec(self.downlink)
        _check_rate(uplink, "uplink", self.uplink)
        _check_rate(downlink, "downlink", self.downlink)
        return LinkConfig(
            uplink=uplink,
            downlink=downlink,
            delay_ms=self.delay_ms,
            queue_bytes=self.queue_bytes,
            start_offset_s=self.offset_s,
        )


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (as :func:`~slimsplit.edge.config.parse_address` writes them) -> (host,
    port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"cannot put a link emulator in front of {target!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def format_bps(bps: float) -> str:
    """``1.19 Mbit/s``, ``250 kbit/s``, ``2 bit/s``."""
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mbit/s"
    return f"{bps / 1e3:.0f} kbit/s" if bps >= 1e3 else f"{bps:.3g} bit/s"


def _trace_text(trace: Trace | None) -> str:
    if trace is None:
        return "unshaped"
    if trace.packet_bytes is None:  # a constant rate
        return f"constant {format_bps(trace.mean_bps)}"
    return f"{trace.name} (mean {format_bps(trace.mean_bps)}, repeats every {trace.period_s:g} s)"


class EmulatedLink:
    """A shaping proxy in front of the server for the duration of a run (see the module docstring)."""

    def __init__(self, config: LinkConfig) -> None:
        if config.uplink is None:
            raise ConfigError("an emulated link needs an uplink trace or rate")
        self.config = config
        self.proxy: ShapingProxy | None = None

    @contextlib.asynccontextmanager
    async def route(self, target: str) -> AsyncIterator[str]:
        """Start the proxy in front of ``target`` and yield the address to dial instead (on the running loop)."""
        proxy = ShapingProxy(ProxyConfig(upstream=split_target(target), link=self.config))
        host, port = await proxy.start()
        self.proxy = proxy
        try:
            yield f"{host}:{port}"
        except LinkTooSlow as exc:  # raised by the run: say what the link carried
            raise LinkTooSlow(self.stalled(exc), **exc.context) from None
        finally:
            await proxy.stop()

    def stalled(self, exc: LinkTooSlow) -> str:
        """The message of a start-up exchange that did not cross the link: the link, the bytes each direction
        carried of those given to it, and what to change."""
        proxy = self.proxy
        timeout_s = exc.context.get("timeout_s", STARTUP_TIMEOUT_S)
        target = exc.context.get("target")
        parts = []
        if proxy is not None:
            st = proxy.stats
            for name, crossed, offered in (
                ("uplink", st.bytes_up, st.offered_up),
                ("downlink", st.bytes_down, st.offered_down),
            ):
                if offered - crossed > _CONTROL_BYTES:
                    parts.append(f"the {name} carried {crossed} of its {offered} bytes")
        carried = "; ".join(parts) or "every byte crossed, too late"
        direct = f"; the server at {target} answers when dialled directly" if target else ""
        return (
            f"the emulated link ({self.describe()}) cannot carry the start-up exchange within {timeout_s:g} s: "
            f"{carried}{direct}. Give --link (or --downlink) a faster rate (a rate without a unit is bits/s: "
            "2mbit, 800kbit), or start the trace where it carries data (--link-offset-s)"
        )

    def link_time(self) -> float | None:
        """Seconds since the proxy started (link time; the trace is at ``start_offset_s`` plus this)."""
        proxy = self.proxy
        if proxy is None:
            return None
        # the proxy's clock is its event loop's, which is time.monotonic() for asyncio's loops
        return time.monotonic() - proxy.epoch

    def uplink_bps(self, window_s: float = 1.0) -> float | None:
        """What the uplink trace offers over the last ``window_s`` seconds of link time (used or not), bits/s;
        ``None`` before the proxy runs."""
        now = self.link_time()
        trace = self.config.uplink
        if now is None or trace is None:
            return None
        t = self.config.start_offset_s + now
        lo = max(self.config.start_offset_s, t - window_s)
        if t - lo < 1e-3:
            return None
        return (trace.bytes_before(t) - trace.bytes_before(lo)) * 8.0 / (t - lo)

    def describe(self) -> str:
        c = self.config
        offset = f" from {c.start_offset_s:g} s" if c.start_offset_s else ""
        return (
            f"uplink {_trace_text(c.uplink)}{offset}, downlink {_trace_text(c.downlink)}, "
            f"{c.delay_ms:g} ms each way, queue {c.queue_bytes // 1024} KiB"
        )


__all__ = [
    "DEFAULT_DELAY_MS",
    "DEFAULT_DOWNLINK",
    "MIN_RATE_BPS",
    "STARTUP_TIMEOUT_S",
    "STARTUP_UPLINK_BYTES",
    "EmulatedLink",
    "LinkOptions",
    "LinkTooSlow",
    "format_bps",
    "split_target",
]
