"""Running unattended: a display wrapper that tells systemd how the run goes and writes the status file.

:class:`Unattended` wraps the run's :class:`~slimsplit.edge.display.Display` (so the run itself needs no hook):

* ``start`` (the server was checked, the frames begin): ``READY=1``, and a timer task on the event loop starts;
* every frame's record: progress for the :class:`~slimsplit.edge.watchdog.Watchdog`, an entry of the
  :class:`~slimsplit.edge.status_file.StatusWindow`;
* the timer, about every second: the journal display's line (:class:`~slimsplit.edge.display.JournalDisplay`),
  ``WATCHDOG=1`` with a ``STATUS=`` line while the run makes progress (a blocked event loop or a pipeline with no
  record for ``stall_s`` sends none: systemd's ``WatchdogSec=`` then restarts the service), and every ``every_s``
  the status file, written atomically;
* ``finish``: the last status file (``state: finished``) and ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slimsplit.edge.config import ClientConfig, OutputSettings
from slimsplit.edge.display import Capacity, Display, JournalDisplay
from slimsplit.edge.status_file import DEFAULT_EVERY_S, StatusWindow, default_path, write_atomic
from slimsplit.edge.watchdog import Notifier, Watchdog, watchdog_timeout_s
from slimsplit.records import FrameRecord, RunSummary

TICK_S = 1.0
#: The watchdog's pings stop after at least this long without a frame's record (see :func:`stall_limit_s`).
MIN_STALL_S = 10.0


def status_line(window: StatusWindow) -> str:
    """The ``STATUS=`` line ``systemctl status`` shows: the last minute in a few words."""
    lm = window.last_minute()
    reachable = window.reachable()
    server = {True: "server up", False: "server DOWN", None: "no frame yet"}[reachable]
    rate = lm["in_time_rate"]
    modes = ", ".join(f"{m} {n}" for m, n in list(lm["modes"].items())[:3]) or "-"
    in_time = f"{100 * rate:.0f} % in time" if rate is not None else "- in time"
    return f"last minute: {lm['frames']} frames, {in_time}, modes {modes}; {server}"


class Unattended:
    """A :class:`~slimsplit.edge.display.Display` that passes everything to ``inner`` and does the module
    docstring's work. ``status_path``: the status file (``None``: none); ``meta``: copied into it (target, model,
    controller, source); ``warn``: where a failed status write is reported (once)."""

    def __init__(
        self,
        inner: Display,
        *,
        notifier: Notifier,
        watchdog_timeout_s: float | None,
        stall_s: float,
        status_path: Path | None = None,
        every_s: float = DEFAULT_EVERY_S,
        meta: Mapping[str, Any] | None = None,
        capacity: Capacity | None = None,
        warn: Callable[[str], None] | None = None,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.notifier = notifier
        self.watchdog = Watchdog(notifier, watchdog_timeout_s, stall_s=stall_s, max_interval_s=tick_s, clock=clock)
        self.window = StatusWindow(clock=clock)
        self.status_path = status_path
        self.every_s = every_s
        self.capacity = capacity
        self.warn = warn
        self.clock = clock
        self.tick_s = min(tick_s, self.watchdog.interval_s)
        self.meta: dict[str, Any] = {**(meta or {}), "started_at": time.time(), "every_s": every_s}
        self.write_errors = 0
        self._next_write = clock()
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    # ------------------------------------------------------------------------------------------- Display
    def start(self, header: str) -> None:
        self.inner.start(header)
        self.watchdog.beat()
        self.notifier.ready(f"streaming to {self.meta.get('target', '?')}")
        self._write("streaming")
        with contextlib.suppress(RuntimeError):  # no running loop: no timer (a test driving it by hand)
            self._task = asyncio.get_running_loop().create_task(self._timer())

    def frame(self, result: FrameRecord) -> None:
        self.watchdog.beat()
        self.window.add(result)
        self.inner.frame(result)

    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None:
        self.close("finished")
        self.inner.finish(summary, by_mode)

    # --------------------------------------------------------------------------------------------- timer
    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()

    def tick(self) -> None:
        """One timer step: the journal's line, the watchdog's ping, the status file when due."""
        if isinstance(self.inner, JournalDisplay):
            self.inner.tick()
        self.watchdog.ping(status_line(self.window))
        if self.clock() >= self._next_write:
            self._write("streaming")

    def close(self, state: str = "finished") -> None:
        """Stop the timer, write the last status (``state``) and tell systemd the service is stopping; once."""
        if self._finished:
            return
        self._finished = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._write(state)
        self.notifier.stopping(f"{state}: {status_line(self.window)}")
        self.notifier.close()

    def _write(self, state: str) -> None:
        self._next_write = self.clock() + self.every_s
        if self.status_path is None:
            return
        capacity = self.capacity() if self.capacity is not None else None
        try:
            write_atomic(self.status_path, self.window.document(self.meta, state=state, capacity_bps=capacity))
        except (OSError, ValueError) as exc:
            self.write_errors += 1
            if self.write_errors == 1 and self.warn is not None:
                self.warn(f"cannot write the status file {self.status_path}: {exc} (the run goes on)")


def stall_limit_s(client: ClientConfig, fps: float, source_stall_s: float) -> float:
    """How long a run may go without a frame's record before the watchdog's pings stop: twice the longest a
    healthy run waits for one (a frame's give-up time, plus a capture period, plus a live source's stall limit,
    after which the run ends by itself), at least :data:`MIN_STALL_S`. A paced run records a frame every period
    even while the server is down (``not connected``); an unpaced one waits for the server, so an outage longer
    than this restarts it under the watchdog."""
    period = 1.0 / fps if fps > 0 else 0.0
    return max(MIN_STALL_S, 2.0 * (client.give_up_s + period + source_stall_s))


def for_run(
    display: Display,
    *,
    output: OutputSettings,
    client: ClientConfig,
    fps: float,
    source_stall_s: float,
    meta: Mapping[str, Any],
    capacity: Capacity | None = None,
    warn: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Display:
    """``display`` wrapped in an :class:`Unattended` when there is something to do (systemd's ``$NOTIFY_SOCKET``,
    or a status file: ``output.status_file``, by default ``$STATE_DIRECTORY/status.json`` under systemd); else
    ``display`` itself. Tells systemd (``STATUS=``) that the edge is connecting."""
    env = env if env is not None else os.environ
    notifier = Notifier.from_env(env)
    path = output.status_file
    if path is None and env.get("STATE_DIRECTORY"):
        path = default_path(env)
    if not notifier.enabled and path is None:
        return display
    notifier.status(f"connecting to {client.target}")
    return Unattended(
        display,
        notifier=notifier,
        watchdog_timeout_s=watchdog_timeout_s(env),
        stall_s=stall_limit_s(client, fps, source_stall_s),
        status_path=path,
        every_s=output.status_every_s,
        meta=meta,
        capacity=capacity,
        warn=warn,
    )


__all__ = ["MIN_STALL_S", "TICK_S", "Unattended", "for_run", "stall_limit_s", "status_line"]
