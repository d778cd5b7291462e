"""Running every client at once on one event loop, each bounded in time, with a progress line over them all."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeAlias

from slimsplit.apps.loadtest.args import PROG
from slimsplit.edge.display import QuietDisplay
from slimsplit.edge.pipeline import RunReport
from slimsplit.edge.run import EdgeRun, run_edge
from slimsplit.records import SKIPPED, FrameRecord, RunSummary

#: What one client's run came to: its report and summary, or the exception that stopped it.
ClientOutcome: TypeAlias = tuple[RunReport, RunSummary] | BaseException


@dataclass
class Tally:
    """Frames of all clients so far (updated on the event loop as results arrive)."""

    total: int
    done: int = 0
    ok: int = 0
    hits: int = 0
    skipped: int = 0
    dropped: int = 0

    def add(self, r: FrameRecord) -> None:
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

    def frame(self, result: FrameRecord) -> None:
        self.tally.add(result)

    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None:
        return None


async def _ticker(tally: Tally, out: TextIO, every_s: float, start: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        out.write(tally.line(time.perf_counter() - start) + "\n")
        out.flush()


async def _bounded(run: EdgeRun, display: TallyDisplay, limit_s: float) -> tuple[RunReport, RunSummary]:
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
) -> tuple[list[ClientOutcome], float]:
    """Run every client concurrently on this event loop, each bounded by ``time_limit_s``; return each client's
    outcome (its report and summary, or the exception that stopped it) and the wall time of the whole run.
    ``progress``: where a :meth:`Tally.line` goes every ``every_s`` seconds (``total_frames`` = its denominator)."""
    tally = Tally(total=total_frames)
    displays = [TallyDisplay(tally, progress or sys.stderr) for _ in runs]
    start = time.perf_counter()
    ticker = asyncio.create_task(_ticker(tally, progress, every_s, start)) if progress and every_s > 0 else None
    try:
        outcomes: list[ClientOutcome] = await asyncio.gather(
            *(_bounded(run, display, time_limit_s) for run, display in zip(runs, displays, strict=True)),
            return_exceptions=True,
        )
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return outcomes, time.perf_counter() - start


__all__ = ["ClientOutcome", "Tally", "TallyDisplay", "run_clients"]
