"""Readable schedules: a table per schedule (rich) and a per-task timeline picture (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from slimsplit.server.backends.fpga.cost import Pattern
from slimsplit.server.backends.fpga.scheduler import Schedule

PATTERN_COLORS: dict[Pattern, str] = {
    Pattern.SEQUENTIAL: "#4C72B0",
    Pattern.DATAFLOW: "#55A868",
    Pattern.TASK_PARALLEL: "#DD8452",
}


def schedule_table(schedule: Schedule) -> Table:
    """One row per task: segment, pattern, start/finish cycle, compute cycles and its MAC/SFU allocation."""
    d = schedule.design
    title = (
        f"{schedule.graph.name} — {schedule.name}: {schedule.total_cycles:,} cycles = {schedule.latency_ms:.4f} ms "
        f"@ {d.platform.clock_mhz:g} MHz on {d.platform.name}"
    )
    table = Table(title=title, title_justify="left")
    for col in ("seg", "task", "op", "pattern", "start", "finish", "compute", "MACs", "SFUs"):
        table.add_column(col, justify="right" if col not in ("task", "op", "pattern") else "left")
    for t in schedule.timeline:
        op = schedule.graph.tasks[t.index]
        label = t.op + ("+" + "+".join(op.fused) if op.fused else "")
        table.add_row(
            str(t.segment),
            t.name,
            label,
            t.pattern.value,
            f"{t.start:,}",
            f"{t.finish:,}",
            f"{t.compute_cycles:,}",
            str(t.macs),
            str(t.sfu_units),
        )
    table.caption = (
        f"off-chip {schedule.offchip_bytes:,} B · DSP {schedule.dsp} · BRAM36 {schedule.bram36} · "
        f"URAM {schedule.uram} · {schedule.reconfigurations} reconfigurations"
    )
    return table


def plot_timelines(schedules: Sequence[Schedule], path: Path | str, title: str | None = None) -> Path:
    """Gantt chart of every task (one panel per schedule), coloured by execution pattern; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    n_tasks = max(len(s.graph) for s in schedules)
    fig, axes = plt.subplots(
        len(schedules), 1, figsize=(10, 0.9 + 0.32 * n_tasks * len(schedules)), squeeze=False, sharex=False
    )
    for ax, sched in zip(axes[:, 0], schedules, strict=True):
        timeline = sched.timeline
        for row, t in enumerate(timeline):
            ax.barh(row, max(1, t.finish - t.start), left=t.start, color=PATTERN_COLORS[t.pattern], height=0.7)
        ax.set_yticks(range(len(timeline)))
        ax.set_yticklabels([t.name for t in timeline], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{sched.name}: {sched.total_cycles:,} cycles ({sched.latency_ms:.3f} ms)", fontsize=9)
        ax.set_xlabel("cycle", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    handles = [Patch(color=c, label=p.value) for p, c in PATTERN_COLORS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=7)
    fig.suptitle(title or schedules[0].graph.name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
