"""The edge's status file: what the last minute looked like, written atomically every few seconds, for an operator
on the device (``slimsplit-edge status``) or a local agent.

The document (``schema`` 1; times are Unix seconds, rates bits/s, ``null`` when unknown)::

    {"schema": 1, "state": "streaming", "written_at": ..., "started_at": ..., "pid": ..., "every_s": 5.0,
     "target": "server:50051", "model": "...", "controller": "mpc", "source": "...",
     "last_minute": {"window_s": 60.0, "frames": 600, "answered": 598, "in_time": 590, "in_time_rate": 0.983,
                     "skipped": {"limit": 2}, "dropped": 0, "errors": {}, "modes": {"w8b4": 598},
                     "e2e_p50_ms": 41.2, "link_estimate_bps": 2.1e6, "link_capacity_bps": null},
     "total": {"frames": 36000, "answered": ..., "in_time": ...},
     "server": {"reachable": true, "last_answer_age_s": 0.1}}

``state``: ``streaming`` while the frames run, ``finished`` in the last write of a run. A reader calls the file
*stale* when it is older than :func:`stale_after_s` (three writes missed): the edge is not running, or stuck.
Written as a temporary file in the same folder, then renamed over the old one (a reader never sees half a file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from slimsplit.edge.pipeline import NOT_CONNECTED
from slimsplit.records import SKIPPED, FrameRecord, reason_kind

SCHEMA = 1
WINDOW_S = 60.0
DEFAULT_EVERY_S = 5.0
#: The service's state directory (``StateDirectory=slimsplit-edge``); systemd also passes it as ``$STATE_DIRECTORY``.
STATE_DIR = Path("/var/lib/slimsplit-edge")
FILE_NAME = "status.json"
#: Statuses that say the server could not be reached (the edge skips frames ``not connected`` meanwhile).
UNREACHABLE = frozenset({"UNAVAILABLE"})
#: An answer older than this no longer shows the server reachable.
REACHABLE_WITHIN_S = 10.0
_MAX_ENTRIES = 200_000  # bounds the window whatever the frame rate (60 s at > 3000 frames/s)
_MAX_TEXT = 200


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY/status.json`` under systemd (the first folder it names), else under :data:`STATE_DIR`."""
    state = (env if env is not None else os.environ).get("STATE_DIRECTORY", "").split(":")[0]
    return (Path(state) if state else STATE_DIR) / FILE_NAME


def stale_after_s(every_s: float) -> float:
    """A status file older than this is stale: three writes were missed."""
    return max(3.0 * every_s, 10.0)


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    status: str
    mode: str
    sent: bool
    hit: bool
    skip_kind: str
    latency_ms: float
    estimate_bps: float | None


class StatusWindow:
    """The records of the last :data:`WINDOW_S` seconds (compact: a few fields each), and totals since start."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._entries: deque[_Entry] = deque(maxlen=_MAX_ENTRIES)
        self.frames = 0
        self.answered = 0
        self.in_time = 0
        self.last_ok_at: float | None = None
        self._down: bool | None = None  # the latest word on the server: an answer (False) or unreachable (True)

    def add(self, record: FrameRecord) -> None:
        now = self.clock()
        skip_kind = reason_kind(record.reason) if record.status == SKIPPED else ""
        hit = bool(record.hit)
        self._entries.append(
            _Entry(now, record.status, record.mode, record.sent, hit, skip_kind, record.latency_ms, record.estimate_bps)
        )
        self.frames += 1
        self.in_time += hit
        if record.ok:
            self.answered += 1
            self.last_ok_at = now
            self._down = False
        elif record.status in UNREACHABLE or record.reason == NOT_CONNECTED:
            self._down = True
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._entries and self._entries[0].at < now - self.window_s:
            self._entries.popleft()

    def reachable(self) -> bool | None:
        """The server answered lately and nothing said it went away since; ``None`` before any frame."""
        if self._down is None:
            return None
        if self._down or self.last_ok_at is None:
            return False
        return self.clock() - self.last_ok_at <= REACHABLE_WITHIN_S

    def last_minute(self, capacity_bps: float | None = None) -> dict[str, Any]:
        now = self.clock()
        self._trim(now)
        entries = list(self._entries)
        ok = [e for e in entries if e.status == "OK"]
        e2e = sorted(e.latency_ms for e in ok if math.isfinite(e.latency_ms))
        estimates = [e.estimate_bps for e in entries if e.estimate_bps is not None]
        in_time = sum(e.hit for e in entries)
        errors = Counter(e.status for e in entries if e.status not in ("OK", SKIPPED))
        return {
            "window_s": self.window_s,
            "frames": len(entries),
            "answered": len(ok),
            "in_time": in_time,
            "in_time_rate": round(in_time / len(entries), 4) if entries else None,
            "skipped": dict(Counter(e.skip_kind for e in entries if e.status == SKIPPED)),
            "dropped": sum(1 for e in entries if e.sent and e.status != "OK"),
            "errors": dict(errors),
            "modes": dict(Counter(e.mode for e in entries if e.sent).most_common()),
            "e2e_p50_ms": round(e2e[len(e2e) // 2], 3) if e2e else None,
            "link_estimate_bps": estimates[-1] if estimates else None,
            "link_capacity_bps": capacity_bps,
        }

    def document(self, meta: Mapping[str, Any], *, state: str, capacity_bps: float | None = None) -> dict[str, Any]:
        """The status document (module docstring); ``meta``: ``target``, ``model``, ``controller``, ``source``,
        ``started_at``, ``every_s`` (copied as given)."""
        age = self.clock() - self.last_ok_at if self.last_ok_at is not None else None
        doc: dict[str, Any] = {"schema": SCHEMA, "state": state, "written_at": time.time(), "pid": os.getpid()}
        doc.update(meta)
        doc["last_minute"] = self.last_minute(capacity_bps)
        doc["total"] = {"frames": self.frames, "answered": self.answered, "in_time": self.in_time}
        doc["server"] = {
            "reachable": self.reachable(),
            "last_answer_age_s": round(age, 3) if age is not None else None,
        }
        return doc


def write_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path``: a temporary file in its folder, renamed over ``path`` (mode 0640)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o640)
            json.dump(doc, fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------- slimsplit-edge status

EXIT_FRESH = 0  # fresh, and the edge is streaming
EXIT_STALE = 1  # stale, finished, missing or unreadable


def read_status(path: Path) -> dict[str, Any]:
    """The document at ``path`` (:class:`OSError`, :class:`ValueError` when it is missing or not a status)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"not a slimsplit-edge status file (schema {SCHEMA})")
    return doc


def _text(value: Any) -> str:
    text = str(value)
    return "".join(c if c.isprintable() else "?" for c in text)[:_MAX_TEXT]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _rate(bps: Any) -> str:
    v = _num(bps)
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mbit/s" if v >= 1e6 else f"{v / 1e3:.0f} kbit/s"


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{_text(k)} {_text(v)}" for k, v in counts.items())


def freshness(doc: Mapping[str, Any], now: float | None = None) -> tuple[float, bool]:
    """The document's age (seconds) and whether it is stale (:func:`stale_after_s`)."""
    now = time.time() if now is None else now
    written = _num(doc.get("written_at")) or 0.0
    every = _num(doc.get("every_s")) or DEFAULT_EVERY_S
    age = max(0.0, now - written)
    return age, age > stale_after_s(every)


def format_status(doc: Mapping[str, Any], path: Path, now: float | None = None) -> str:
    """The status document as a few readable lines (every value from the file is shown escaped)."""
    age, stale = freshness(doc, now)
    state = _text(doc.get("state", "?"))
    lm = doc.get("last_minute") if isinstance(doc.get("last_minute"), dict) else {}
    total = doc.get("total") if isinstance(doc.get("total"), dict) else {}
    server = doc.get("server") if isinstance(doc.get("server"), dict) else {}
    assert isinstance(lm, dict) and isinstance(total, dict) and isinstance(server, dict)
    if stale:
        head = f"STALE: {path} was last written {_age(age)} ago (state then: {state}); is slimsplit-edge running?"
    else:
        head = f"slimsplit-edge {state} (pid {_text(doc.get('pid', '?'))}), status written {_age(age)} ago"
    started = _num(doc.get("started_at"))
    uptime = f", up {_age(max(0.0, (now or time.time()) - started))}" if started and not stale else ""
    reachable = server.get("reachable")
    reach = {True: "reachable", False: "NOT reachable", None: "unknown (no frame yet)"}.get(reachable, "?")
    answer_age = _num(server.get("last_answer_age_s"))
    last = f", last answer {answer_age:.1f} s before the write" if answer_age is not None else ""
    rate = _num(lm.get("in_time_rate"))
    p50 = _num(lm.get("e2e_p50_ms"))
    lines = [
        head,
        f"  server       {_text(doc.get('target', '?'))}: {reach}{last}",
        f"  model        {_text(doc.get('model', '?'))}  controller {_text(doc.get('controller', '?'))}  "
        f"source {_text(doc.get('source', '?'))}{uptime}",
        f"  last {(_num(lm.get('window_s')) or WINDOW_S):.0f} s  {_text(lm.get('frames', 0))} frames, "
        f"{_text(lm.get('answered', 0))} answered, {_text(lm.get('in_time', 0))} in time"
        + (f" ({100 * rate:.1f} %)" if rate is not None else ""),
        f"  modes        {_counts(lm.get('modes'))}",
        f"  link         estimate {_rate(lm.get('link_estimate_bps'))}"
        + (f", emulated capacity {_rate(lm.get('link_capacity_bps'))}" if lm.get("link_capacity_bps") else "")
        + (f"; e2e p50 {p50:.1f} ms" if p50 is not None else ""),
        f"  skipped      {_counts(lm.get('skipped'))};  dropped {_text(lm.get('dropped', 0))};  "
        f"errors {_counts(lm.get('errors'))}",
        f"  since start  {_text(total.get('frames', 0))} frames, {_text(total.get('answered', 0))} answered, "
        f"{_text(total.get('in_time', 0))} in time",
    ]
    return "\n".join(lines)


def build_parser(prog: str = "slimsplit-edge status") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Print the status file a running slimsplit-edge writes every few seconds ([output] "
        "status_file): the last minute's frames, in-time rate, modes, link estimate and whether the server is "
        "reachable. Exit status 0 when the file is fresh and the edge streaming, 1 when its run finished or the file "
        "is missing, unreadable or stale (not written for three of its intervals: the edge is stopped or stuck).",
    )
    p.add_argument(
        "--file",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"the status file (default: $STATE_DIRECTORY/{FILE_NAME}, else {STATE_DIR / FILE_NAME})",
    )
    p.add_argument("--json", action="store_true", help="print the file's JSON as it is")
    return p


def status_main(argv: Sequence[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``slimsplit-edge status [--file PATH] [--json]``."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(list(argv))
    path: Path = args.file if args.file is not None else default_path()
    try:
        doc = read_status(path)
    except FileNotFoundError:
        err.write(
            f"slimsplit-edge status: no status file at {path}: the edge has not run with a status file there "
            "([output] status_file in edge.toml), or the folder is another one (--file PATH)\n"
        )
        return EXIT_STALE
    except PermissionError:
        err.write(f"slimsplit-edge status: cannot read {path}: permission denied (try sudo)\n")
        return EXIT_STALE
    except (OSError, ValueError) as exc:
        err.write(f"slimsplit-edge status: cannot read {path}: {_text(exc)}\n")
        return EXIT_STALE
    age_s, stale = freshness(doc)
    if args.json:
        out.write(json.dumps(doc, indent=1) + "\n")
        if stale:
            err.write(f"slimsplit-edge status: {path} is stale: last written {_age(age_s)} ago\n")
    else:
        out.write(format_status(doc, path) + "\n")
    out.flush()
    return EXIT_FRESH if doc.get("state") == "streaming" and not stale else EXIT_STALE


__all__ = [
    "DEFAULT_EVERY_S",
    "EXIT_FRESH",
    "EXIT_STALE",
    "SCHEMA",
    "STATE_DIR",
    "WINDOW_S",
    "StatusWindow",
    "build_parser",
    "default_path",
    "format_status",
    "freshness",
    "read_status",
    "stale_after_s",
    "status_main",
    "write_atomic",
]
