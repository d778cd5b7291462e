"""Decision time of the mpc controller against its version at another git revision, side by side in one process.

    .venv/bin/python -m bench.decision_ab --base 8a71c27 --out bench/results/decision_ab.json

The controller module of git revision ``--base`` (read with ``git show`` from the path it has in that revision:
``slimsplit/control/controllers.py``, in older revisions ``edge/control/controllers.py``) is loaded beside the
working tree's, its imports of modules that moved since pointed at where they are now. For each scenario x trace
of ``bench/controller.py`` (the first ``--seconds`` of the traces named by ``--only``), both versions run the same
simulation ``--passes`` times, interleaved (base, current, base, current, ...), so that both see the same machine.
Both must choose the same mode for every frame (the comparison is of cost, not behaviour; the bench stops
otherwise). Per decision the fastest of its passes is its *own cost*; the table gives own-cost p50 / p99 per version
and the ratio of the p50s (current / base).
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

from bench import controller as bench  # its scenarios and traces
from bench.results_io import recorded_args
from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.registry import make_controller
from slimsplit.evaluation.sim import SimConfig
from slimsplit.link.shaping import LinkConfig

#: Where the controller module is, newest layout first: a revision is read from the first of them it has.
MODULE_PATHS = ("slimsplit/control/controllers.py", "edge/control/controllers.py")
#: Modules that moved, as an older revision imports them -> where they are now (the more specific first).
MOVED_MODULES = (
    ("slimsplit.edge.control.oracle", "slimsplit.evaluation.oracle"),
    ("slimsplit.edge.control.", "slimsplit.control."),
)
REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], check=False, capture_output=True, text=True)
    except OSError as exc:
        raise SystemExit(f"bench/decision_ab.py: cannot run git: {exc}") from exc


def module_path(rev: str) -> str:
    """The path of the controller module in revision ``rev``: the first of :data:`MODULE_PATHS` it has."""
    for path in MODULE_PATHS:
        if _git("cat-file", "-e", f"{rev}:{path}").returncode == 0:
            return path
    detail = _git("rev-parse", "--verify", f"{rev}^{{commit}}").stderr.strip()
    raise SystemExit(
        f"bench/decision_ab.py: cannot read the controller module at {rev!r}: none of {', '.join(MODULE_PATHS)}"
        + (f" ({detail})" if detail else "")
    )


def current_imports(source: str) -> str:
    """``source`` with its imports of moved modules (:data:`MOVED_MODULES`) pointed at where they are now."""
    for old, new in MOVED_MODULES:
        source = source.replace(f"from {old}", f"from {new}").replace(f"import {old}", f"import {new}")
    return source


def load_base(rev: str) -> ModuleType:
    """The controller module as it was at ``rev`` (a module of its own, beside the current one)."""
    path = module_path(rev)
    done = _git("show", f"{rev}:{path}")
    if done.returncode != 0:
        raise SystemExit(f"bench/decision_ab.py: cannot read {path} at {rev!r}: {done.stderr.strip()}")
    name = "slimsplit_controllers_base"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class body runs
    exec(compile(current_imports(done.stdout), f"{rev}:{path}", "exec"), module.__dict__)
    return module


def base_builder(
    module: ModuleType, modes: Sequence[ModeOption], run: RunConfig, rtt_ms: float, options: dict[str, Any]
) -> Callable[[], Controller]:
    """Builds the base revision's mpc controller for ``run``. A module with ``make_controller`` takes the
    deadline, the frame rate and the in-flight limit as mpc options; a later one takes a :class:`RunConfig`."""
    if hasattr(module, "make_controller"):
        legacy = {"max_in_flight": run.max_in_flight, "fps": run.fps, "rtt_ms": rtt_ms, **options}
        return partial(module.make_controller, "mpc", modes, run.deadline_ms, **legacy)
    return partial(module.MpcController, modes, run, module.MpcConfig(**options), rtt_ms)


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
        rtt_ms = float(opts.pop("rtt_ms", 0.0))
        builders: dict[str, Callable[[], Controller]] = {
            "base": base_builder(base, sc.modes, cfg.run, rtt_ms, opts),
            "current": partial(make_controller, kind, sc.modes, cfg.run, rtt_ms=rtt_ms, **opts),
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
        "command": " ".join(["python -m bench.decision_ab", *recorded_args(sys.argv[1:] if argv is None else argv)]),
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
