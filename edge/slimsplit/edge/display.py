"""Terminal output with no extra dependency: one plain line per frame, or a refreshing ANSI view on a TTY.

* :class:`LineDisplay` - one line per frame (pipes, logs, ``CI=true``); never emits escape codes.
* :class:`TickerDisplay` - one plain line every ``every`` seconds: the link's capacity (when it is emulated),
  the controller's estimate, the modes chosen, deadline hits and skips of that interval.
* :class:`LiveDisplay` - on an interactive terminal: the last frames as a table, a strip of the modes chosen
  for the last frames and a running status line (link capacity, estimate, mode, latency against the
  deadline), redrawn in place at most ``refresh_hz`` times a second (cheap for the frame loop).
* :class:`JournalDisplay` - under systemd (stdout is the journal: ``$JOURNAL_STREAM``, :func:`under_journal`):
  one readable line a second, also when no frame finished (the server is down, the source waits), with the
  totals since start; never escape codes. :meth:`JournalDisplay.tick` is called by a timer on the event loop.
* :class:`QuietDisplay` - nothing per frame.

All of them end with :func:`format_summary` (accuracy, latency percentiles, bytes per frame, rate, errors by
status, the deadline accounting, skips and drops by reason, the modes chosen and how often they changed, and a
per-mode table when several modes ran).

Every string a frame's line shows that came from elsewhere (a server's error message and class names, a source's
file name) is shown through :func:`~slimsplit.edge.replies.printable`: control characters escaped, never raw.

``capacity`` (optional, every display): a callable giving the emulated uplink's capacity now, bits/s, shown
beside the controller's estimate.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from slimsplit.edge.pipeline import NOT_CONNECTED
from slimsplit.edge.replies import printable
from slimsplit.records import SKIPPED, FrameRecord, LatencyStats, RunSummary, reason_kind

#: The reason kind of a frame skipped while the transport waits to reconnect.
_NOT_CONNECTED = reason_kind(NOT_CONNECTED)

#: The emulated link's current uplink capacity in bits/s (``None`` when unknown).
Capacity = Callable[[], float | None]

_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_YELLOW = "\x1b[33m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"
_CLEAR_LINE = "\x1b[2K"
_OK_MARK = "ok"
_HIT = "hit "
_MISS = "MISS"


def _ms(v: float | None) -> str:
    return f"{v:6.2f}" if v is not None and math.isfinite(v) else "     -"


def _rate(bps: float | None) -> str:
    """A bit rate in a fixed width of 11 columns (``-`` when unknown)."""
    if bps is None or not math.isfinite(bps):
        return f"{'-':>11s}"
    if bps >= 1e6:
        return f"{bps / 1e6:6.2f} Mbit/s"
    return f"{bps / 1e3:6.0f} kbit/s"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f} %" if whole else "    - "


def _bytes(n: float) -> str:
    if n >= 10 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def format_frame(r: FrameRecord, class_names: Sequence[str] = (), color: bool = False) -> str:
    """One line for one frame: the mode and bytes sent, the latency against the deadline (and the controller's
    prediction of it) and the controller's bandwidth estimate first, so narrow terminals keep them; then the
    prediction and the time breakdown; last the frame's name in its source (an image file of a folder source)."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    head = f"#{r.index:<5d} {r.mode or '-':<8s}"
    if r.planes:
        head += f" {r.planes}pl"  # bit planes the server used (plane-coded frames)
    est = f"  est {_rate(r.estimate_bps).strip()}" if r.estimate_bps is not None else ""
    name_text = f"  {printable(r.source, 200)}" if r.source else ""
    if not r.ok:
        status = printable(r.status, 40)
        why = f"{status}: {printable(r.error)}" if r.error else status
        size = f"{r.payload_bytes:>6d} B  " if r.payload_bytes else ""
        code = _YELLOW if r.status in ("DEADLINE_EXCEEDED", SKIPPED) else _RED
        return f"{head} {size}{paint(why, code)}{est}{name_text}"
    name = r.top1_name or (class_names[r.top1] if r.top1 is not None and r.top1 < len(class_names) else str(r.top1))
    name = printable(name, 40)
    score = r.scores[0] if r.scores else math.nan
    srv = r.server.total_ms if r.server is not None else math.nan
    verdict = ""
    if r.correct is not None:
        truth = class_names[r.label] if r.label is not None and r.label < len(class_names) else str(r.label)
        verdict = _OK_MARK if r.correct else f"WRONG (is {truth:.12s})"
    verdict_text = f"{verdict:<22s}"
    if color and verdict:
        verdict_text = verdict_text.replace(verdict, paint(verdict, _GREEN if r.correct else _RED))
    deadline = ""
    if r.deadline_ms is not None:
        deadline = f" {paint(_HIT, _GREEN) if r.hit else paint(_MISS, _YELLOW)}"
    pred = f" (pred {r.predicted_ms:5.1f})" if r.predicted_ms is not None and math.isfinite(r.predicted_ms) else ""
    return (
        f"{head} {r.payload_bytes:>6d} B  e2e {_ms(r.latency_ms)} ms{deadline}{pred}{est}  -> {name:<12.12s} "
        f"{score:4.2f}  {verdict_text}  enc {_ms(r.encoder_ms + r.codec_ms)}  xfer {_ms(r.transfer_ms)}  "
        f"srv {_ms(srv)} ms{name_text}"
    )


def _stats_line(stats: LatencyStats) -> str:
    return f"p50 {_ms(stats.p50)}  p95 {_ms(stats.p95)}  p99 {_ms(stats.p99)} ms"


def format_summary(summary: RunSummary, by_mode: Mapping[str, RunSummary] | None = None, title: str = "Summary") -> str:
    """The end-of-run report as plain text; ``by_mode``: the summaries per mode (:meth:`RunTally.by_mode
    <slimsplit.records.RunTally.by_mode>`), a table when there are several."""
    s = summary
    failed = s.frames - s.ok
    lines = [
        f"{title}",
        f"  frames       {s.frames} total, {s.ok} answered, {failed} not answered",
    ]
    if s.accuracy is not None:
        lines.append(f"  accuracy     {100 * s.accuracy:.1f} % top-1 over {s.labelled} labelled frames")
    elif s.labelled_frames:
        lines.append(f"  accuracy     undefined: none of the {s.labelled_frames} labelled frames was answered")
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
    lines += _deadline_lines(s)
    if s.planes:
        answered = sum(s.planes.values())
        mean = sum(k * n for k, n in s.planes.items()) / answered
        spread = ", ".join(f"{k}: {n}" for k, n in s.planes.items())
        lines.append(f"  planes used  mean {mean:.2f} per answered frame ({spread})")
    if by_mode is not None and len(by_mode) > 1:
        lines.append("  per mode     mode       frames  accuracy   bytes/frame   e2e p50 ms")
        for mode, sub in by_mode.items():
            acc = f"{100 * sub.accuracy:6.1f} %" if sub.accuracy is not None else "     - "
            lines.append(
                f"               {mode:<10s} {sub.frames:6d}  {acc}  {_bytes(sub.bytes_per_frame):>11s}   "
                f"{_ms(sub.latency_ms.p50)}"
            )
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) if counts else "none"


def _deadline_lines(s: RunSummary) -> list[str]:
    """The deadline accounting, skips and drops by reason, and the modes the controller chose."""
    if s.deadline_ms is None:
        return []
    skipped = sum(s.skipped.values())
    dropped = sum(s.dropped.values())
    lines = [
        f"  deadline     {s.deadline_ms:g} ms: {s.hits} of {s.frames} frames answered in time "
        f"({_pct(s.hits, s.frames).strip()}); {s.late} late, {skipped} skipped, {dropped} dropped",
    ]
    if s.timely_accuracy is not None:
        lines.append(
            f"  useful       {100 * s.timely_accuracy:.1f} % of labelled frames answered right and in time "
            "(late, skipped, dropped = wrong)"
        )
    lines.append(f"  skipped      {_counts(s.skipped)}")
    lines.append(f"  dropped      {_counts(s.dropped)}   (sent, never answered)")
    if s.chosen:
        per_min = f" ({s.switches_per_min:.1f} per minute)" if s.switches_per_min is not None else ""
        chosen = ", ".join(f"{k} {v}" for k, v in s.chosen.items())
        lines.append(f"  modes sent   {chosen}; {s.switches} switches{per_min}")
    return lines


def _fit(line: str, width: int, result: FrameRecord) -> str:
    """Cut a plain line to ``width`` columns, then colour its verdict (escape codes take no columns)."""
    line = line[:width]
    if not result.ok:
        head, sep, why = line.partition(result.status)
        code = _YELLOW if result.status in ("DEADLINE_EXCEEDED", SKIPPED) else _RED
        return f"{head}{code}{sep}{why}{_RESET}" if sep else line
    for mark, code in ((f" {_MISS}", _YELLOW), (f" {_HIT}", _GREEN)):
        head, sep, tail = line.partition(f" ms{mark}")
        if sep:
            line = f"{head} ms{code}{mark}{_RESET}{tail}"
            break
    for mark, code in (("WRONG", _RED), (_OK_MARK, _GREEN)):
        head, sep, tail = line.partition(f"  {mark}")
        if sep:
            return f"{head}  {code}{mark}{_RESET}{tail}"
    return line


class Display(Protocol):
    def start(self, header: str) -> None: ...
    def frame(self, result: FrameRecord) -> None: ...
    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None: ...


class QuietDisplay:
    """Only the summary."""

    def __init__(self, out: TextIO, class_names: Sequence[str] = (), capacity: Capacity | None = None) -> None:
        self.out = out
        self.class_names = tuple(class_names)
        self.capacity = capacity

    def start(self, header: str) -> None:
        return None

    def frame(self, result: FrameRecord) -> None:
        return None

    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None:
        self.out.write(format_summary(summary, by_mode) + "\n")
        self.out.flush()

    def _link(self) -> float | None:
        return self.capacity() if self.capacity is not None else None


class LineDisplay(QuietDisplay):
    """One plain line per frame, in completion order."""

    def start(self, header: str) -> None:
        self.out.write(header + "\n")
        self.out.flush()

    def frame(self, result: FrameRecord) -> None:
        self.out.write(format_frame(result, self.class_names) + "\n")
        self.out.flush()


@dataclass(frozen=True)
class _Interval:
    """What a ticker or journal line says about the frames that finished in one interval."""

    frames: int
    hits: int
    modes: str
    estimate_bps: float | None
    e2e_p50_ms: float | None
    skips: Counter[str]
    dropped: int
    answered: bool


def _interval(window: Sequence[FrameRecord]) -> _Interval:
    sent = [r for r in window if r.sent]
    modes = Counter(r.mode for r in sent).most_common(3)
    more = len({r.mode for r in sent}) - len(modes)
    mode_text = ", ".join(f"{m} {n}" for m, n in modes) + (f" +{more}" if more > 0 else "") if modes else "-"
    estimates = [r.estimate_bps for r in window if r.estimate_bps is not None]
    e2e = sorted(r.latency_ms for r in window if r.ok)
    return _Interval(
        frames=len(window),
        hits=sum(1 for r in window if r.hit),
        modes=mode_text,
        estimate_bps=estimates[-1] if estimates else None,
        e2e_p50_ms=e2e[len(e2e) // 2] if e2e else None,
        skips=Counter(reason_kind(r.reason) for r in window if r.status == SKIPPED),
        dropped=sum(1 for r in sent if not r.ok),
        answered=bool(e2e),
    )


def _skips_and_drops(iv: _Interval) -> list[str]:
    parts = []
    if iv.skips:
        parts.append("skipped " + ", ".join(f"{n} ({k})" for k, n in iv.skips.items()))
    if iv.dropped:
        parts.append(f"dropped {iv.dropped}")
    return parts


def format_interval(t_s: float, window: Sequence[FrameRecord], link_bps: float | None = None) -> str:
    """One ticker line: the frames that finished in an interval ending ``t_s`` seconds into the run."""
    iv = _interval(window)
    parts = [f"t {t_s:6.1f} s"]
    if link_bps is not None:
        parts.append(f"link {_rate(link_bps)}")
    parts += [
        f"est {_rate(iv.estimate_bps)}",
        f"modes {iv.modes:<28s}",
        f"in time {iv.hits:3d}/{iv.frames:<3d}",
        f"e2e p50 {_ms(iv.e2e_p50_ms)} ms",
        *_skips_and_drops(iv),
    ]
    return "  ".join(parts)


def server_down(window: Sequence[FrameRecord]) -> bool:
    """Whether the frames of an interval say the server could not be reached: none answered, and some failed
    ``UNAVAILABLE`` or were skipped ``not connected`` (the transport waiting to reconnect)."""
    return all(not r.ok for r in window) and any(
        r.status == "UNAVAILABLE" or (r.status == SKIPPED and reason_kind(r.reason) == _NOT_CONNECTED) for r in window
    )


class TickerDisplay(QuietDisplay):
    """One plain line every ``every`` seconds about the frames that finished in that interval (see
    :func:`format_interval`); readable in logs and CI at any frame rate."""

    def __init__(
        self,
        out: TextIO,
        class_names: Sequence[str] = (),
        capacity: Capacity | None = None,
        every: float = 1.0,
    ) -> None:
        super().__init__(out, class_names, capacity)
        if not every > 0:
            raise ValueError(f"the ticker interval must be > 0 s, got {every}")
        self.every = every
        self._start = time.perf_counter()
        self._next = every
        self._window: list[FrameRecord] = []

    def start(self, header: str) -> None:
        self.out.write(header + "\n")
        self.out.flush()
        self._start = time.perf_counter()
        self._next = self.every

    def frame(self, result: FrameRecord) -> None:
        now = time.perf_counter() - self._start
        if now >= self._next:
            self._flush(now)
            self._next += self.every * (math.floor((now - self._next) / self.every) + 1)
        self._window.append(result)

    def _flush(self, now: float) -> None:
        if self._window:
            line = format_interval(now, self._window, self._link())
            if server_down(self._window):
                line += "  server DOWN"
            self.out.write(line + "\n")
            self.out.flush()
        self._window = []

    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None:
        self._flush(time.perf_counter() - self._start)
        super().finish(summary, by_mode)


def format_journal(t_s: float, window: Sequence[FrameRecord], totals: tuple[int, int, int]) -> str:
    """One journal line about the frames finished in the last interval (or that none did): how many, in time,
    the modes sent, the controller's estimate, the median latency, skips and drops, whether the server answers;
    then the totals since start (frames, answered, in time). No column padding: a log is read, not aligned."""
    frames, answered, in_time = totals
    tail = f"total {frames} frames, {answered} answered, {in_time} in time ({_pct(in_time, frames).strip()})"
    if not window:
        return f"t {t_s:.1f} s  no frame finished  {tail}"
    iv = _interval(window)
    parts = [
        f"t {t_s:.1f} s",
        f"est {_rate(iv.estimate_bps).strip()}",
        f"modes {iv.modes}",
        f"in time {iv.hits}/{iv.frames}",
        f"e2e p50 {_ms(iv.e2e_p50_ms).strip()} ms",
        *_skips_and_drops(iv),
    ]
    parts.append("server DOWN" if server_down(window) else ("server up" if iv.answered else "no answer"))
    parts.append(tail)
    return "  ".join(parts)


class JournalDisplay(TickerDisplay):
    """One line every ``every`` seconds (default 1) for the journal (:func:`format_journal`), driven by
    :meth:`tick` (a timer) as well as by the frames, so a quiet second still gets its line."""

    def __init__(
        self,
        out: TextIO,
        class_names: Sequence[str] = (),
        capacity: Capacity | None = None,
        every: float = 1.0,
    ) -> None:
        super().__init__(out, class_names, capacity, every)
        self._frames = 0
        self._answered = 0
        self._in_time = 0

    def frame(self, result: FrameRecord) -> None:
        self._frames += 1
        self._answered += result.ok
        self._in_time += bool(result.hit)
        super().frame(result)

    def tick(self) -> None:
        """Write the line of the interval now due, if one is (called about every second)."""
        now = time.perf_counter() - self._start
        if now >= self._next:
            self._flush(now, empty=True)
            self._next += self.every * (math.floor((now - self._next) / self.every) + 1)

    def _flush(self, now: float, empty: bool = False) -> None:
        if self._window or empty:
            line = format_journal(now, self._window, (self._frames, self._answered, self._in_time))
            link = self._link()
            if link is not None:
                line += f"  link {_rate(link).strip()}"
            self.out.write(line + "\n")
            self.out.flush()
        self._window = []


def under_journal(out: TextIO, env: dict[str, str] | None = None) -> bool:
    """``out`` is systemd's journal stream: ``$JOURNAL_STREAM`` (``DEVICE:INODE``, which systemd sets for a
    service whose output goes to the journal) names the file ``out`` writes to."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(out.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


_STRIP_GLYPHS = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"  # lower one eighth block .. full block
_STRIP_ASCII = "12345678"


class LiveDisplay(QuietDisplay):
    """A block of the last ``rows`` frames, a strip of the modes of the last frames (bar height = the mode's rank
    in ``mode_order``, lightest first; ``.`` skipped, ``x`` failed) and a running status line, redrawn in
    place."""

    def __init__(
        self,
        out: TextIO,
        class_names: Sequence[str] = (),
        rows: int = 12,
        refresh_hz: float = 12.0,
        capacity: Capacity | None = None,
        mode_order: Sequence[str] = (),
    ) -> None:
        super().__init__(out, class_names, capacity)
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
        self._skipped = 0
        self._hits = 0
        self._deadline: float | None = None
        self._estimate: float | None = None
        self._mode = ""
        glyphs = _STRIP_GLYPHS
        try:
            glyphs.encode(getattr(out, "encoding", None) or "utf-8")
        except (UnicodeEncodeError, LookupError):
            glyphs = _STRIP_ASCII
        n = len(mode_order)
        self._glyph = {m: glyphs[(i * len(glyphs)) // n] for i, m in enumerate(mode_order)} if n else {}
        self._strip: deque[str] = deque(maxlen=max(10, self._width - 8))

    def start(self, header: str) -> None:
        self.out.write(f"{_BOLD}{header}{_RESET}\n")
        self.out.flush()
        self._start = time.perf_counter()

    def frame(self, result: FrameRecord) -> None:
        self._recent.append(_fit(format_frame(result, self.class_names), self._width, result))
        self._done += 1
        self._mode = result.mode or self._mode
        self._deadline = result.deadline_ms if result.deadline_ms is not None else self._deadline
        self._estimate = result.estimate_bps if result.estimate_bps is not None else self._estimate
        self._hits += bool(result.hit)
        if result.ok:
            self._ok += 1
            self._bytes += result.payload_bytes
            self._e2e.append(result.latency_ms)
            if result.correct is not None:
                self._judged += 1
                self._right += int(result.correct)
        elif result.status == SKIPPED:
            self._skipped += 1
        else:
            self._errors += 1
        if self._glyph:
            if result.status == SKIPPED:
                mark = "."
            elif not result.ok:
                mark = "x"
            else:
                mark = self._glyph.get(result.mode, "?")
            self._strip.append(mark)
        now = time.perf_counter()
        if now - self._last_draw >= self._period:
            self._draw(now)

    def _status(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        window = sorted(self._e2e)
        p50 = window[len(window) // 2] if window else math.nan
        acc = f"{100 * self._right / self._judged:5.1f} %" if self._judged else "  -  "
        per = self._bytes / self._ok if self._ok else 0.0
        deadline = f"in time {_pct(self._hits, self._done)} of {self._deadline:g} ms  " if self._deadline else ""
        link = self._link()
        link_text = f"link {_rate(link).strip()}  " if link is not None else ""
        return (
            f"frames {self._done}  mode {self._mode}  {link_text}est {_rate(self._estimate).strip()}  "
            f"{deadline}e2e p50 {_ms(p50).strip()} ms  skipped {self._skipped}  errors {self._errors}  "
            f"acc {acc.strip()}  {_bytes(per)}/frame  {self._ok / elapsed:.1f} fps"
        )

    def _draw(self, now: float) -> None:
        lines = list(self._recent)
        if self._glyph:
            lines.append(f"modes  {''.join(self._strip)}"[: self._width])
        lines.append(f"{_DIM}{self._status(now)[: self._width]}{_RESET}")
        parts = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F")  # back to the first line of the previous drawing
        parts.extend(f"{_CLEAR_LINE}{line}\n" for line in lines)
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)
        self._last_draw = now

    def finish(self, summary: RunSummary, by_mode: Mapping[str, RunSummary]) -> None:
        self._draw(time.perf_counter())
        super().finish(summary, by_mode)


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
    out: TextIO,
    *,
    quiet: bool = False,
    live: bool | None = None,
    class_names: Sequence[str] = (),
    every: float = 0.0,
    capacity: Capacity | None = None,
    mode_order: Sequence[str] = (),
    journal: bool | None = None,
) -> Display:
    """The right display for ``out``: quiet, the journal's (``journal``; ``None``: when ``out`` is the journal,
    :func:`under_journal`: one line every ``every`` seconds, default 1), live (TTY), one plain line every
    ``every`` seconds (``every > 0``) or one plain line per frame. ``capacity`` and ``mode_order``: see
    :class:`LiveDisplay`."""
    if quiet:
        return QuietDisplay(out, class_names, capacity)
    if journal is None:
        journal = under_journal(out)
    if journal:
        return JournalDisplay(out, class_names, capacity, every if every > 0 else 1.0)
    if live is None:
        live = wants_live(out)
    if live:
        return LiveDisplay(out, class_names, capacity=capacity, mode_order=mode_order)
    if every > 0:
        return TickerDisplay(out, class_names, capacity, every)
    return LineDisplay(out, class_names, capacity)


__all__ = [
    "Capacity",
    "Display",
    "JournalDisplay",
    "LineDisplay",
    "LiveDisplay",
    "QuietDisplay",
    "TickerDisplay",
    "format_frame",
    "format_interval",
    "format_journal",
    "format_summary",
    "make_display",
    "server_down",
    "silence_stdout",
    "under_journal",
    "wants_live",
]
