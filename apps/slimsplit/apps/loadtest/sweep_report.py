"""A sweep's report, as perf_analyzer and ghz give one: the table on the terminal and, in ``--report-dir``,
``report.json`` (everything; ``created`` is the only field that differs between two simulated runs of one seed),
``points.csv`` (one row per load point), ``timeline.csv`` (one row per point and second), ``sweep.png`` and
``timeline.png`` (matplotlib, Agg) and ``report.html`` (one self-contained file: the plots inline as base64 PNG,
no external URL)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimsplit.apps.loadtest.aggregate import clean
from slimsplit.apps.loadtest.sweep import PointResult, Slo, Sweep, best_point

FILES = ("report.json", "points.csv", "timeline.csv", "sweep.png", "timeline.png", "report.html")


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _statuses(d: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in d.items()) or "-"


_HEAD = ("load", "thru/s", "p50", "p90", "p95", "p99", "in time", "errors", "modes", "bytes", "SLO")


def table_rows(sweep: Sweep, points: Sequence[PointResult]) -> list[list[str]]:
    rows = [list(_HEAD)]
    for p in points:
        s = p.summary
        rows.append(
            [
                sweep.label(p.load),
                _num(s.fps, ".1f"),
                _num(s.latency_ms.p50),
                _num(p.p90_ms),
                _num(s.latency_ms.p95),
                _num(s.latency_ms.p99),
                "-" if s.hit_rate is None else f"{100 * s.hit_rate:.2f}%",
                _statuses(s.errors),
                _statuses(s.modes) if len(s.modes) <= 3 else f"{len(s.modes)} modes",
                str(s.bytes_sent),
                "ok" if p.meets_slo else f"miss ({p.slo_failure})",
            ]
        )
    return rows


def format_sweep(sweep: Sweep, points: Sequence[PointResult], slo: Slo) -> str:
    """The terminal table and the verdict line."""
    rows = table_rows(sweep, points)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    lines = ["  ".join(v.rjust(widths[j]) if j < 7 else v.ljust(widths[j]) for j, v in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(verdict(sweep, points, slo))
    return "\n".join(lines)


def verdict(sweep: Sweep, points: Sequence[PointResult], slo: Slo) -> str:
    best = best_point(points)
    rule = f"p99 <= {slo.p99_ms:g} ms and >= {100 * slo.in_time:g}% in time"
    if best is None:
        return f"no load point met the SLO ({rule})"
    return (
        f"largest load meeting the SLO ({rule}): {sweep.label(best.load)}, "
        f"{best.summary.fps:.1f} frames/s, p99 {best.summary.latency_ms.p99:.2f} ms"
    )


def document(
    sweep: Sweep, points: Sequence[PointResult], slo: Slo, meta: dict[str, Any], *, created: float | None = None
) -> dict[str, Any]:
    """The JSON document (``created``: seconds since the epoch, default now)."""
    best = best_point(points)
    doc = {
        "created": time.time() if created is None else created,
        "meta": meta,
        "sweep": {"kind": sweep.kind, "values": list(sweep.values)},
        "slo": {"p99_ms": slo.p99_ms, "in_time": slo.in_time},
        "best": None if best is None else {"load": best.load, "label": sweep.label(best.load)},
        "verdict": verdict(sweep, points, slo),
        "points": [p.to_dict() for p in points],
    }
    out: dict[str, Any] = clean(doc)
    return out


def _write_csv(path: Path, sweep: Sweep, points: Sequence[PointResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "kind", "load", "offered_fps", "throughput_fps", "frames", "ok", "p50_ms", "p90_ms", "p95_ms",
                "p99_ms", "in_time_rate", "errors", "modes", "bytes_sent", "meets_slo",
            ]
        )  # fmt: skip
        for p in points:
            s = p.summary
            w.writerow(
                [
                    sweep.kind, f"{p.load:g}", _num(p.offered_fps, ".3f"), _num(s.fps, ".3f"), s.frames, s.ok,
                    _num(s.latency_ms.p50, ".3f"), _num(p.p90_ms, ".3f"), _num(s.latency_ms.p95, ".3f"),
                    _num(s.latency_ms.p99, ".3f"), "" if s.hit_rate is None else f"{s.hit_rate:.5f}",
                    _statuses(s.errors), _statuses(s.modes), s.bytes_sent, int(p.meets_slo),
                ]
            )  # fmt: skip


def _write_timeline_csv(path: Path, sweep: Sweep, points: Sequence[PointResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "load", "second", "sent", "ok", "in_time", "errors", "p50_ms", "p99_ms", "bytes"])
        for p in points:
            for x in p.timeline:
                w.writerow(
                    [sweep.kind, f"{p.load:g}", x.t_s, x.sent, x.ok, x.in_time, x.errors,
                     _num(x.p50_ms, ".3f"), _num(x.p99_ms, ".3f"), x.bytes]
                )  # fmt: skip


def _plots(sweep: Sweep, points: Sequence[PointResult], slo: Slo) -> tuple[bytes, bytes]:
    """``sweep.png`` (throughput, latency percentiles and in-time rate against the load) and ``timeline.png``
    (per-second throughput and p99 of every point)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    def png(fig: Figure) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)
        return buf.getvalue()

    xs = [p.load for p in points]
    xlabel = "clients (closed loop)" if sweep.kind == "clients" else "offered frames/s"
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    a, b, c = axes
    a.plot(xs, [p.summary.fps for p in points], "o-", color="tab:blue", label="answered")
    a.plot(xs, [p.summary.hits / p.summary.wall_s for p in points], "s--", color="tab:green", label="in time")
    a.set(title="throughput", xlabel=xlabel, ylabel="frames/s")
    a.legend()
    for q, color in (("p50", "tab:blue"), ("p90", "tab:orange"), ("p95", "tab:purple"), ("p99", "tab:red")):
        ys = [p.p90_ms if q == "p90" else getattr(p.summary.latency_ms, q) for p in points]
        b.plot(xs, ys, "o-", color=color, label=q)
    b.axhline(slo.p99_ms, color="black", linestyle=":", label=f"SLO p99 {slo.p99_ms:g} ms")
    b.set(title="latency", xlabel=xlabel, ylabel="ms")
    b.legend()
    c.plot(xs, [100 * (p.summary.hit_rate or 0.0) for p in points], "o-", color="tab:green")
    c.axhline(100 * slo.in_time, color="black", linestyle=":", label=f"SLO {100 * slo.in_time:g}%")
    c.set(title="in time", xlabel=xlabel, ylabel="% of frames")
    c.legend()
    best = best_point(points)
    for ax in axes:
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best.load, color="tab:green", alpha=0.25, linewidth=6)
        if sweep.kind == "clients" and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
    first = png(fig)

    fig, (t, lat) = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, p in enumerate(points):
        shade = cmap(i / max(1, len(points) - 1))
        seconds = [x.t_s for x in p.timeline]
        t.plot(seconds, [x.ok for x in p.timeline], "o-", color=shade, label=sweep.label(p.load))
        lat.plot(seconds, [x.p99_ms for x in p.timeline], "o-", color=shade, label=sweep.label(p.load))
    t.set(title="answered per second", xlabel="second of the point", ylabel="frames")
    lat.set(title="p99 per second", xlabel="second of the point", ylabel="ms")
    for ax in (t, lat):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return first, png(fig)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:12px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td.l{text-align:left}
tr.best td{background:#e6f4e6}tr.miss td{color:#a33}
img{max-width:100%;display:block;margin:8px 0}
.meta td{text-align:left}
"""


def _html(doc: dict[str, Any], sweep: Sweep, points: Sequence[PointResult], plots: tuple[bytes, bytes]) -> str:
    esc = html.escape
    rows = table_rows(sweep, points)
    best = best_point(points)
    body = []
    for p, r in zip(points, rows[1:], strict=True):
        cls = "best" if best is not None and p.load == best.load else ("" if p.meets_slo else "miss")
        cells = "".join(f'<td class="l">{esc(v)}</td>' if j >= 7 else f"<td>{esc(v)}</td>" for j, v in enumerate(r))
        body.append(f'<tr class="{cls}">{cells}</tr>')
    head = "".join(f"<th>{esc(h)}</th>" for h in rows[0])
    meta = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in doc["meta"].items()
    )
    images = "".join(
        f'<h2>{esc(title)}</h2><img id="{name}" alt="{esc(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for name, title, data in (
            ("sweep", "Throughput, latency and in-time rate by load", plots[0]),
            ("timeline", "Per-second timeline", plots[1]),
        )
    )
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc["created"]))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>slimsplit-loadtest sweep</title><style>{_STYLE}</style></head><body>"
        f"<h1>slimsplit-loadtest sweep</h1><p>{esc(created)}</p>"
        f"<p><b>{esc(doc['verdict'])}</b></p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'{images}<h2>Run</h2><table class="meta">{meta}</table></body></html>\n'
    )


def write_sweep(
    folder: Path,
    sweep: Sweep,
    points: Sequence[PointResult],
    slo: Slo,
    meta: dict[str, Any],
    *,
    created: float | None = None,
) -> list[Path]:
    """Every file of :data:`FILES` in ``folder`` (made when missing); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = document(sweep, points, slo, meta, created=created)
    (folder / "report.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    _write_csv(folder / "points.csv", sweep, points)
    _write_timeline_csv(folder / "timeline.csv", sweep, points)
    plots = _plots(sweep, points, slo)
    (folder / "sweep.png").write_bytes(plots[0])
    (folder / "timeline.png").write_bytes(plots[1])
    (folder / "report.html").write_text(_html(doc, sweep, points, plots), encoding="utf-8")
    return [folder / name for name in FILES]


__all__ = ["FILES", "document", "format_sweep", "verdict", "write_sweep"]
