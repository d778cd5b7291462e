"""Terminal output with no extra dependency: one plain line per frame, or a refreshing ANSI view on a TTY.

* :class:`LineDisplay` - one line per frame (pipes, logs, ``CI=true``); never emits escape codes.
* :class:`LiveDisplay` - on an interactive terminal: the last frames as a table plus a running status line,
  redrawn in place at most ``refresh_hz`` times a second (cheap for the frame loop).
* :class:`QuietDisplay` - nothing per frame.

All three end with :func:`format_summary` (accuracy, latency percentiles, bytes per frame, rate, errors by
status, and a per-mode table when several modes ran).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol, TextIO

from slimsplit.edge.results import FrameResult, LatencyStats, Summary, summarize

_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_YELLOW = "\x1b[33m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"
_CLEAR_LINE = "\x1b[2K"
_OK_MARK = "ok"


def _ms(v: float) -> str:
    return f"{v:6.2f}" if math.isfinite(v) else "     -"


def _bytes(n: float) -> str:
    if n >= 10 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def format_frame(r: FrameResult, class_names: Sequence[str] = (), color: bool = False) -> str:
    """One line for one frame: what was sent, what came back (first, so narrow terminals keep it), then times."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    head = f"#{r.index:<5d} {r.mode or '-':<8s}"
    if not r.ok:
        why = f"{r.status}: {r.error}" if r.error else r.status
        return f"{head} {paint(why, _YELLOW if r.status in ('DEADLINE_EXCEEDED', 'SKIPPED') else _RED)}"
    name = r.top1_name or (class_names[r.top1] if r.top1 is not None and r.top1 < len(class_names) else str(r.top1))
    score = r.scores[0] if r.scores else math.nan
    srv = r.server.total_ms if r.server is not None else math.nan
    verdict = ""
    if r.correct is not None:
        truth = class_names[r.label] if r.label is not None and r.label < len(class_names) else str(r.label)
        verdict = _OK_MARK if r.correct else f"WRONG (is {truth:.12s})"
    verdict_text = f"{verdict:<22s}"
    if color and verdict:
        verdict_text = verdict_text.replace(verdict, paint(verdict, _GREEN if r.correct else _RED))
    return (
        f"{head} {r.payload_bytes:>6d} B  -> {name:<12.12s} {score:4.2f}  {verdict_text}  "
        f"e2e {_ms(r.latency_ms)}  enc {_ms(r.encoder_ms + r.codec_ms)}  xfer {_ms(r.transfer_ms)}  "
        f"srv {_ms(srv)} ms"
    )


def _stats_line(stats: LatencyStats) -> str:
    return f"p50 {_ms(stats.p50)}  p95 {_ms(stats.p95)}  p99 {_ms(stats.p99)} ms"


def format_summary(summary: Summary, results: Sequence[FrameResult] = (), title: str = "Summary") -> str:
    """The end-of-run report as plain text."""
    s = summary
    failed = s.frames - s.ok
    lines = [
        f"{title}",
        f"  frames       {s.frames} total, {s.ok} answered, {failed} not answered",
    ]
    if s.accuracy is not None:
        lines.append(f"  accuracy     {100 * s.accuracy:.1f} % top-1 over {s.labelled} labelled frames")
    else:
        lines.append("  accuracy     - (the source has no labels)")
    lines += [
        f"  latency      {_stats_line(s.latency_ms)}   (capture -> prediction)",
        f"  round trip   {_stats_line(s.rtt_ms)}   (sent -> reply)",
        f"  transfer     {_stats_line(s.transfer_ms)}   (round trip - server time)",
        f"  server       {_stats_line(s.server_ms)}",
        f"  edge encode  {_stats_line(s.encoder_ms)}   codec p50 {_ms(s.codec_ms.p50)} ms",
        f"  bytes/frame  {_bytes(s.bytes_per_frame)}",
        f"  throughput   {s.fps:.1f} frames/s over {s.wall_s:.2f} s",
    ]
    if s.errors:
        lines.append("  errors       " + ", ".join(f"{k}: {v}" for k, v in s.errors.items()))
    else:
        lines.append("  errors       none")
    modes = list(dict.fromkeys(r.mode for r in results if r.mode))  # in order of first use
    if len(modes) > 1:
        lines.append("  per mode     mode       frames  accuracy   bytes/frame   e2e p50 ms")
        for mode in modes:
            sub = summarize([r for r in results if r.mode == mode], s.wall_s)
            acc = f"{100 * sub.accuracy:6.1f} %" if sub.accuracy is not None else "     - "
            lines.append(
                f"               {mode:<10s} {sub.frames:6d}  {acc}  {_bytes(sub.bytes_per_frame):>11s}   "
                f"{_ms(sub.latency_ms.p50)}"
            )
    return "\n".join(lines)


def _fit(line: str, width: int, result: FrameResult) -> str:
    """Cut a plain line to ``width`` columns, then colour its verdict (escape codes take no columns)."""
    line = line[:width]
    if not result.ok:
        head, sep, why = line.partition(result.status)
        code = _YELLOW if result.status in ("DEADLINE_EXCEEDED", "SKIPPED") else _RED
        return f"{head}{code}{sep}{why}{_RESET}" if sep else line
    for mark, code in (("WRONG", _RED), (_OK_MARK, _GREEN)):
        head, sep, tail = line.partition(f"  {mark}")
        if sep:
            return f"{head}  {code}{mark}{_RESET}{tail}"
    return line


class Display(Protocol):
    def start(self, header: str) -> None: ...
    def frame(self, result: FrameResult) -> None: ...
    def finish(self, summary: Summary, results: Sequence[FrameResult]) -> None: ...


class QuietDisplay:
    """Only the summary."""

    def __init__(self, out: TextIO, class_names: Sequence[str] = ()) -> None:
        self.out = out
        self.class_names = tuple(class_names)

    def start(self, header: str) -> None:
        return None

    def frame(self, result: FrameResult) -> None:
        return None

    def finish(self, summary: Summary, results: Sequence[FrameResult]) -> None:
        self.out.write(format_summary(summary, results) + "\n")
        self.out.flush()


class LineDisplay(QuietDisplay):
    """One plain line per frame, in completion order."""

    def start(self, header: str) -> None:
        self.out.write(header + "\n")
        self.out.flush()

    def frame(self, result: FrameResult) -> None:
        self.out.write(format_frame(result, self.class_names) + "\n")
        self.out.flush()


class LiveDisplay(QuietDisplay):
    """A block of the last ``rows`` frames and a running status line, redrawn in place."""

    def __init__(self, out: TextIO, class_names: Sequence[str] = (), rows: int = 12, refresh_hz: float = 12.0) -> None:
        super().__init__(out, class_names)
        # lines must not wrap, or moving the cursor back over the drawing would land on the wrong row
        self._width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
        self._recent: deque[str] = deque(maxlen=rows)
        self._period = 1.0 / refresh_hz
        self._last_draw = 0.0
        self._drawn = 0
        self._start = time.perf_counter()
        self._done = 0
        self._ok = 0
        self._right = 0
        self._judged = 0
        self._bytes = 0
        self._e2e: deque[float] = deque(maxlen=200)
        self._errors = 0
        self._mode = ""

    def start(self, header: str) -> None:
        self.out.write(f"{_BOLD}{header}{_RESET}\n")
        self.out.flush()
        self._start = time.perf_counter()

    def frame(self, result: FrameResult) -> None:
        self._recent.append(_fit(format_frame(result, self.class_names), self._width, result))
        self._done += 1
        self._mode = result.mode or self._mode
        if result.ok:
            self._ok += 1
            self._bytes += result.payload_bytes
            self._e2e.append(result.latency_ms)
            if result.correct is not None:
                self._judged += 1
                self._right += int(result.correct)
        else:
            self._errors += 1
        now = time.perf_counter()
        if now - self._last_draw >= self._period:
            self._draw(now)

    def _status(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        window = sorted(self._e2e)
        p50 = window[len(window) // 2] if window else math.nan
        acc = f"{100 * self._right / self._judged:5.1f} %" if self._judged else "  -  "
        per = self._bytes / self._ok if self._ok else 0.0
        return (
            f"frames {self._done}  ok {self._ok}  errors {self._errors}  mode {self._mode}  "
            f"acc {acc}  e2e p50 {_ms(p50)} ms  {_bytes(per)}/frame  {self._ok / elapsed:6.1f} fps"
        )

    def _draw(self, now: float) -> None:
        lines = [*self._recent, f"{_DIM}{self._status(now)[: self._width]}{_RESET}"]
        parts = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F")  # back to the first line of the previous drawing
        parts.extend(f"{_CLEAR_LINE}{line}\n" for line in lines)
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)
        self._last_draw = now

    def finish(self, summary: Summary, results: Sequence[FrameResult]) -> None:
        self._draw(time.perf_counter())
        super().finish(summary, results)


def silence_stdout() -> None:
    """After a BrokenPipeError (output piped into ``head``): point stdout at /dev/null so Python's exit-time
    flush does not raise again."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def wants_live(out: TextIO) -> bool:
    """Live redrawing only on an interactive terminal, outside CI, with a capable TERM."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("TERM", "") == "dumb" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def make_display(
    out: TextIO, *, quiet: bool = False, live: bool | None = None, class_names: Sequence[str] = ()
) -> Display:
    """The right display for ``out``: quiet, live (TTY) or plain lines."""
    if quiet:
        return QuietDisplay(out, class_names)
    if live is None:
        live = wants_live(out)
    return LiveDisplay(out, class_names) if live else LineDisplay(out, class_names)


__all__ = [
    "Display",
    "LineDisplay",
    "LiveDisplay",
    "QuietDisplay",
    "format_frame",
    "format_summary",
    "make_display",
    "silence_stdout",
    "wants_live",
]
