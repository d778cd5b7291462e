"""``python -m bench.faults``: run the fault scenarios, print the figures, write the JSON (and RELIABILITY.md).

    python -m bench.faults                       # the long form: 2 min per attack, 30-minute soak
    python -m bench.faults --short               # CI's short form: 20 s per attack, 5-minute soak
    python -m bench.faults --short --only fuzz_raw soak --soak-s 20 --out /tmp/f.json
    python -m bench.faults --write-md            # RELIABILITY.md from bench/results/faults.json (no run)

Exit status: 0 when every figure holds, 1 when one fails (the JSON and the table say which).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.faults.figures import ScenarioResult, passed
from bench.faults.report import print_report, write_markdown
from bench.faults.scenarios import REPOSITORY, SCENARIOS, Context, Plan
from bench.results_io import write_results

DEFAULT_OUT = REPOSITORY / "bench" / "results" / "faults.json"
DEFAULT_MD = REPOSITORY / "RELIABILITY.md"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="CI's short form (20 s attacks, 5-minute soak)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON to write (default %(default)s)")
    p.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME", help="run these scenarios only")
    p.add_argument("--seconds", type=float, help="seconds per attack (overrides the form's)")
    p.add_argument("--soak-s", type=float, help="length of the soak, seconds (overrides the form's)")
    p.add_argument("--soak-interval-s", type=float, help="sampling interval of the soak's series (default 10)")
    p.add_argument("--examples", type=int, help="hypothesis frames in fuzz_frames")
    p.add_argument("--atheris-runs", type=int, help="atheris inputs in fuzz_atheris")
    p.add_argument("--idle-n", type=int, help="idle TCP connections and idle channels (1000 each)")
    p.add_argument("--write-md", action="store_true", help="regenerate RELIABILITY.md from --out and exit")
    p.add_argument("--md", type=Path, default=DEFAULT_MD, help="the markdown file --write-md writes")
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    plan = Plan() if args.short else Plan.long()
    overrides = {
        "attack_s": args.seconds, "soak_s": args.soak_s, "soak_interval_s": args.soak_interval_s,
        "frame_examples": args.examples, "atheris_runs": args.atheris_runs, "idle_n": args.idle_n,
    }  # fmt: skip
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.soak_s is not None and args.soak_interval_s is None:
        plan = replace(plan, soak_interval_s=min(10.0, max(1.0, args.soak_s / 10)))
    return plan


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPOSITORY)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPOSITORY)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def run(names: Sequence[str], plan: Plan, console: Console) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[what]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task(f"fault suite ({len(names)} scenarios)", total=len(names), what="")
        current = progress.add_task("", total=1.0, what="")

        def tick(what: str, frac: float) -> None:
            progress.update(current, completed=frac, what=what)

        ctx = Context(plan, tick=tick)
        for name in names:
            progress.reset(current, total=1.0, description=name, what="")
            result = SCENARIOS[name](ctx)
            results.append(result)
            verdict = "[green]pass[/]" if passed(result) else "[bold red]FAIL[/]"
            progress.console.print(f"{name}: {verdict} ({result.wall_s:.0f} s)")
            progress.update(overall, advance=1)
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_md:
        write_markdown(args.out, args.md)
        return 0
    plan = plan_from(args)
    names = list(args.only) if args.only else list(SCENARIOS)
    console = Console()
    t0 = time.monotonic()
    results = run(names, plan, console)
    print_report(results, console)
    write_results(
        args.out, "faults", argv if argv is not None else sys.argv[1:],
        {
            "form": "short" if args.short else "long",
            "plan": {k: v for k, v in vars(plan).items()},
            "commit": _commit(),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "wall_seconds": round(time.monotonic() - t0, 1),
            "passed": all(passed(r) for r in results),
            "results": [r.to_json() for r in results],
        },
    )  # fmt: skip
    return 0 if all(passed(r) for r in results) else 1
