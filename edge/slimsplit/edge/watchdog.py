"""systemd's notification protocol (``sd_notify``) in a few lines, and a watchdog fed by the run's progress.

Under ``Type=notify`` systemd hands the service the address of a Unix datagram socket in ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for the abstract namespace); each datagram is newline-separated ``KEY=VALUE`` assignments:
``READY=1`` (start-up is over: here, once the server was checked and the frames start), ``STATUS=...`` (one line
``systemctl status`` shows), ``WATCHDOG=1`` (still alive, at least every ``WatchdogSec=``, which systemd passes
as ``$WATCHDOG_USEC``) and ``STOPPING=1``. Without ``$NOTIFY_SOCKET`` (a terminal, a test, another init) every
call is a no-op. No dependency: the protocol is one ``sendto`` (see ``sd_notify(3)``).

:class:`Watchdog` decides when to ping: only from the event loop's own task (a loop blocked by a stuck call never
gets to ping), and only while the run makes progress (a frame's record came within ``stall_s``; a pipeline
waiting forever on something stops the pings too). systemd then kills the process (``SIGABRT``) and
``Restart=on-failure`` starts a fresh one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
_MAX_STATUS_CHARS = 200  # systemctl status shows one line; keep the datagram small


def _clean(text: str) -> str:
    """One line of printable text (a ``STATUS=`` value must not carry a newline: it would start a new key)."""
    line = " ".join(text.split())
    return "".join(c if c.isprintable() else "?" for c in line)[:_MAX_STATUS_CHARS]


class Notifier:
    """Sends ``sd_notify`` datagrams to ``address`` (default: ``$NOTIFY_SOCKET``); a no-op without one. A send
    that fails (systemd gone, socket full) is counted in :attr:`errors` and otherwise ignored: notifying must
    never break a run."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or None
        self.errors = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        return cls((env if env is not None else os.environ).get(NOTIFY_SOCKET))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; whether it was sent."""
        if self.address is None or not assignments:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode("utf-8", "replace"), target)
        except OSError:
            self.errors += 1
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *((f"STATUS={_clean(status)}",) if status else ()))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_clean(text)}")

    def watchdog(self, status: str = "") -> bool:
        return self.notify("WATCHDOG=1", *((f"STATUS={_clean(status)}",) if status else ()))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *((f"STATUS={_clean(status)}",) if status else ()))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_timeout_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """``WatchdogSec=`` of this service in seconds (``$WATCHDOG_USEC``), or ``None`` when systemd wants no pings
    from this process (unset, not a positive number, or ``$WATCHDOG_PID`` names another process)."""
    env = env if env is not None else os.environ
    usec = env.get(WATCHDOG_USEC, "")
    owner = env.get(WATCHDOG_PID, "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """When to send ``WATCHDOG=1``: :meth:`beat` on every sign of progress (a frame's record), :meth:`due` asked
    by the periodic task on the event loop. ``timeout_s``: systemd's ``WatchdogSec`` (pings every third of it,
    at most every ``max_interval_s``); ``stall_s``: no progress for this long and the pings stop."""

    def __init__(
        self,
        notifier: Notifier,
        timeout_s: float | None,
        *,
        stall_s: float,
        max_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stall_s > 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.notifier = notifier
        self.timeout_s = timeout_s
        self.stall_s = stall_s
        self.interval_s = min(max_interval_s, timeout_s / 3) if timeout_s else max_interval_s
        self.clock = clock
        self.pings = 0
        self._last_progress = clock()
        self._last_ping = -float("inf")

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and self.timeout_s is not None

    def beat(self) -> None:
        """The run made progress now."""
        self._last_progress = self.clock()

    def stalled_s(self) -> float:
        """Seconds since the last progress."""
        return self.clock() - self._last_progress

    def healthy(self) -> bool:
        return self.stalled_s() <= self.stall_s

    def ping(self, status: str = "") -> bool:
        """``WATCHDOG=1`` (with ``STATUS=status``) if the run is healthy, else only the status; whether the ping
        went out."""
        if not self.notifier.enabled:
            return False
        if self.timeout_s is None:  # no WatchdogSec=: the status line only
            if status:
                self.notifier.status(status)
            return False
        if not self.healthy():
            stalled = f"stalled: no progress for {self.stalled_s():.0f} s"
            self.notifier.status(f"{stalled}; {status}" if status else stalled)
            return False
        sent = self.notifier.watchdog(status)
        if sent:
            self.pings += 1
            self._last_ping = self.clock()
        return sent


__all__ = ["NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "Notifier", "Watchdog", "watchdog_timeout_s"]
