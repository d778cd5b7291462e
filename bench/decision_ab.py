"""Decision time of the mpc controller against an earlier version of it, side by side in one process.

    .venv/bin/python bench/decision_ab.py --base 8a71c27 --out bench/results/decision_ab.json

The controller module of git revision ``--base`` (``edge/control/controllers.py``, read with ``git show``) is
loaded beside the working tree's. For each scenario x trace of ``bench/controller.py`` (the first ``--seconds`` of
the traces named by ``--only``), both versions run the same simulation ``--passes`` times, interleaved (base,
current, base, current, ...), so that both see the same machine. Both must choose the same mode for every frame
(the comparison is of cost, not behaviour; the bench stops otherwise). Per decision the fastest of its passes is its
*own cost*; the table gives own-cost p50 / p99 per version and the ratio of the p50s (current / base).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import controller as bench  # bench/controller.py: its scenarios and traces

from slimsplit.edge.control.controllers import make_controller
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.sim import SimConfig

MODULE_PATH = "edge/control/controllers.py"
REPO = Path(__file__).resolve().parent.parent


def load_base(rev: str) -> ModuleType:
    """The controller module as it was at ``rev`` (a module of its own, beside the current one)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{MODULE_PATH}"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SystemExit(f"bench/decision_ab.py: cannot read {MODULE_PATH} at {rev!r}: {detail.strip()}") from exc
    name = "slimsplit_controllers_base"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class body runs
    exec(compile(source, f"{rev}:{MODULE_PATH}", "exec"), module.__dict__)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision of the version to compare with")
    p.add_argument("--out", type=Path, default=Path("bench/results/decision_ab.json"), help="JSON results")
    p.add_argument("--only", nargs="*", default=["ATT-LTE-driving", "ge-outages"], help="traces (name parts)")
    p.add_argument("--seconds", type=float, default=300.0, help="first SECONDS of every trace")
    p.add_argument("--passes", type=int, default=9, help="timed passes per version (interleaved)")
    args = p.parse_args(argv)
    if args.passes < 1 or args.seconds <= 0:
        p.error("--passes must be at least 1 and --seconds positive")
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    base = load_base(args.base)
    scenarios = [bench.bundle_scenario(False), *bench.rpi4_scenarios()]
    traces = bench.load_traces([], args.seconds, args.only)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for sc, tr in track([(s, t) for s in scenarios for t in traces], description="timing"):
        link = LinkConfig(uplink=tr, delay_ms=10.0)
        cfg = SimConfig(
            fps=sc.fps,
            deadline_ms=sc.deadline_ms,
            duration_s=tr.period_s,
            max_in_flight=sc.max_in_flight,
            expiry="captured",
        )
        kind, opts = bench.controller_options("mpc", sc, link, cfg.n_frames)
        builders: dict[str, Callable[[], Any]] = {
            "base": partial(base.make_controller, kind, sc.modes, sc.deadline_ms, **opts),
            "current": partial(make_controller, kind, sc.modes, sc.deadline_ms, **opts),
        }
        try:
            passes = bench.timed_passes(builders, sc.modes, link, cfg, args.passes)
        except RuntimeError as exc:
            raise SystemExit(f"bench/decision_ab.py: {sc.name} / {tr.name}: {exc}") from None
        best = {label: own / 1e3 for label, (_, own, _) in passes.items()}  # microseconds
        row: dict[str, Any] = {"scenario": sc.name, "trace": tr.name, "decisions": int(best["base"].size)}
        for label, us in best.items():
            row[f"{label}_own_p50_us"] = float(np.percentile(us, 50))
            row[f"{label}_own_p99_us"] = float(np.percentile(us, 99))
        row["p50_ratio"] = row["current_own_p50_us"] / row["base_own_p50_us"]
        rows.append(row)
    doc = {
        "benchmark": "decision_ab",
        "command": " ".join(["bench/decision_ab.py", *(argv if argv is not None else sys.argv[1:])]),
        "base": args.base,
        "passes": args.passes,
        "seconds": args.seconds,
        "wall_seconds": time.perf_counter() - started,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    table = Table(title=f"mpc decision, own cost (fastest of {args.passes} interleaved passes), µs: {args.base} vs now")
    for col in ("scenario", "trace", "base p50 / p99", "current p50 / p99", "p50 current/base"):
        table.add_column(col, justify="left" if col in ("scenario", "trace") else "right")
    for r in rows:
        table.add_row(
            r["scenario"],
            r["trace"],
            f"{r['base_own_p50_us']:.1f} / {r['base_own_p99_us']:.1f}",
            f"{r['current_own_p50_us']:.1f} / {r['current_own_p99_us']:.1f}",
            f"{r['p50_ratio']:.2f}",
        )
    Console().print(table)
    print(f"wrote {args.out} in {doc['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
