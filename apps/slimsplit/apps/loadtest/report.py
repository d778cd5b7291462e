"""The load test's table (one row per client, the overall row, throughput, server timing, statuses) and its JSON
document."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimsplit.apps.loadtest.aggregate import ClientResult, Overall, clean


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100.0 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _link_label(spec: str) -> str:
    name = Path(spec).name
    return name if len(name) <= 22 else name[:21] + "~"


_COLUMNS = (
    "client",
    "device",
    "link",
    "offset s",
    "frames",
    "in time",
    "late",
    "skip",
    "drop",
    "bytes/fr",
    "acc",
    "e2e p50",
    "e2e p95",
    "sw/min",
    "allowed",
    "in/allowed",
)
_LEFT = (1, 2)  # the device and link columns


def _row(c: ClientResult) -> list[str]:
    s = c.summary
    head = [str(c.index), c.device_id or "-", _link_label(c.link), _num(c.offset_s, "g")]
    if s is None:
        return [*head, f"failed: {c.error}"]
    b = c.accounting()
    return [
        *head,
        str(s.frames),
        _pct(s.hit_rate),
        str(b["late"]),
        str(b["skipped"]),
        str(b["dropped"]),
        _num(s.bytes_per_frame, ".0f"),
        _pct(s.accuracy),
        _num(s.latency_ms.p50),
        _num(s.latency_ms.p95),
        _num(s.switches_per_min),
        "-" if c.link_check is None else str(c.link_check.allowed),
        "-" if c.link_check is None else _pct(c.link_check.hit_rate_allowed),
    ]


def format_report(clients: Sequence[ClientResult], overall: Overall) -> str:
    """The table: one row per client, an overall row, then the throughput, server timing and status lines."""
    o = overall
    total = [
        "all",
        f"{o.clients} clients",
        "",
        "",
        str(o.frames),
        _pct(o.hit_rate),
        str(o.late),
        str(o.skipped),
        str(o.dropped),
        _num(o.bytes_per_frame, ".0f"),
        _pct(o.accuracy),
        _num(o.latency_ms.p50),
        _num(o.latency_ms.p95),
        "",
        "-" if o.allowed is None else str(o.allowed),
        "-" if o.allowed is None or not o.allowed else _pct((o.hits_allowed or 0) / o.allowed),
    ]
    rows = [list(_COLUMNS), *(_row(c) for c in clients), total]
    full = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [max(len(r[i]) for r in full) for i in range(len(_COLUMNS))]
    lines = []
    for i, r in enumerate(rows):
        if len(r) < len(_COLUMNS):  # a failed client: its message runs across the remaining columns
            cells = [r[j].ljust(widths[j]) if j in _LEFT else r[j].rjust(widths[j]) for j in range(len(r) - 1)]
            lines.append("  ".join([*cells, r[-1]]))
        else:
            lines.append("  ".join(v.ljust(widths[j]) if j in _LEFT else v.rjust(widths[j]) for j, v in enumerate(r)))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"delivered {_num(o.delivered_fps)} frames/s ({_num(o.in_time_fps)}/s in time) over {o.wall_s:.2f} s; "
        f"{o.answered} of {o.frames} frames answered; {o.uplink_payload_bytes} payload bytes sent"
    )
    if math.isfinite(o.server_ms.p50):  # some frame carried the server's timing
        lines.append(
            f"server timing (from the predictions): total p50 {_num(o.server_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.server_ms.p99, '.2f')} ms; queue p50 {_num(o.queue_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.queue_ms.p99, '.2f')} ms; tail p50 {_num(o.tail_ms.p50, '.2f')} ms, "
            f"p99 {_num(o.tail_ms.p99, '.2f')} ms; mean batch {_num(o.mean_batch_size, '.2f')}"
        )
    if o.allowed is not None:
        lines.append(
            f"link check: the emulated links allowed {o.allowed} of {o.frames} frames in time in some mode (each "
            f"frame alone on its link); {o.hits_allowed} of those were answered in time"
        )
    statuses = ", ".join(f"{k} {v}" for k, v in o.by_status.items())
    if statuses:
        lines.append(f"not answered, by status: {statuses}")
    else:
        lines.append("every frame answered" if o.frames else "no frames ran")
    if o.failed_clients:
        lines.append(f"{o.failed_clients} of {o.clients} clients failed")
    return "\n".join(lines)


def write_report(
    path: Path, clients: Sequence[ClientResult], overall: Overall, meta: dict[str, Any], *, interrupted: bool = False
) -> None:
    """``{"meta": ..., "interrupted": ..., "clients": [per-client summary ...], "overall": ...}`` (``interrupted``:
    the run was stopped early, Ctrl-C)."""
    doc = {
        "meta": clean(meta),
        "interrupted": interrupted,
        "clients": [c.to_dict() for c in clients],
        "overall": overall.to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


__all__ = ["format_report", "write_report"]
