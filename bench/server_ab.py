"""Two slimsplit-server configurations side by side: what one setting costs or buys under the same load.

Both servers run the shipped bundle's tail of one mode on the same pinned cores (one worker each, as
``bench.peer`` starts slimsplit), each with its own extra flags (``--a-args``, ``--b-args``) and TOML settings
(``--a-toml``, ``--b-toml``: lines such as ``grpc.target_loop_lag_ms = 0``); every point (transport x frames in
flight) runs on A and B in turn, ``--reps`` times with the order swapped every rep (``bench.peer.interleave``), with
``bench.peer``'s load generator (several processes, precomputed requests, raw gRPC). Figures: throughput, p50/p99
round trip, server CPU per frame, frames per tail call; the medians over reps, and B / A.

    python -m bench.server_ab --b-toml grpc.target_loop_lag_ms=0 --out bench/results/server_ab_pacing.json
    python -m bench.server_ab --b-args "--max-wait-us 500" --quick --out /tmp/ab.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.peer import (
    Config,
    Server,
    add_point_flags,
    against,
    interleave,
    machine,
    make_workload,
    points_config,
    ratio,
    slimsplit_server,
)
from bench.results_io import write_results

DEFAULT_OUT = Path("bench/results/server_ab.json")


def toml_text(settings: Sequence[str]) -> str:
    """``section.key = value`` settings as a TOML document (values as TOML writes them: ``0``, ``true``, ``"x"``)."""
    sections: dict[str, list[str]] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name or not value.strip():
            raise ValueError(f"a TOML setting is SECTION.KEY=VALUE, got {item!r}")
        sections.setdefault(section, []).append(f"{name} = {value.strip()}")
    return "".join(f"[{s}]\n" + "".join(f"{line}\n" for line in lines) for s, lines in sections.items())


def ratios(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """B / A at each (transport, in flight) measured on both."""
    keys = ("throughput", "p50_ms", "p99_ms", "server_cpu_ms_per_frame")
    return [
        {
            "transport": b["transport"],
            "in_flight": b["in_flight"],
            **{f"{key}_ratio": ratio(b, a, key) for key in keys},
        }
        for b, a in against(points, "A")
    ]


def run(config: Config, sides: dict[str, tuple[tuple[str, ...], str]], folder: Path) -> dict[str, Any]:
    cpus = config.cpus or tuple(sorted(os.sched_getaffinity(0)))[:2]
    print(f"[server_ab] encoding the shipped samples ({config.mode or 'default mode'})", flush=True)
    workload = make_workload(folder, config.mode)
    servers: dict[str, Server] = {}
    for name, (args, toml) in sides.items():
        extra: tuple[str, ...] = ("--workers=1", *args)
        if toml:
            path = folder / f"{name}.toml"
            path.write_text(toml, encoding="utf-8")
            extra = (f"--config={path}", *extra)
        server = slimsplit_server(cpus, config.max_batch, extra, folder, config.device)
        servers[name] = replace(server, name=name, protocol="slimsplit", log=folder / f"{name}.log")
    started = time.monotonic()
    raw, summary = interleave(servers, None, workload, config, folder, "server_ab")
    return {
        "machine": machine(cpus),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "config": asdict(config) | {"cpus": list(cpus)},
        "sides": {name: {"args": list(args), "toml": toml} for name, (args, toml) in sides.items()},
        "workload": {"model": workload.model, "mode": workload.mode, "inputs": workload.count},
        "results": summary,
        "ratios": ratios(summary),
        "raw": raw,
        "wall_seconds": time.monotonic() - started,
    }


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    by = {(p["server"], p["transport"], p["in_flight"]): p for p in doc["results"]}
    sides = doc["sides"]
    said = {n: " ".join([*s["args"], *s["toml"].split()]) or "defaults" for n, s in sides.items()}
    title = "B / A: " + "; ".join(f"{n}: {what}" for n, what in said.items())
    table = Table(title=title)
    for col in ("transport", "in flight", "A f/s", "B f/s", "B/A", "p99 A / B ms", "cpu A / B ms", "batch A / B"):
        table.add_column(col, justify="right")
    for r in doc["ratios"]:
        a, b = by[("A", r["transport"], r["in_flight"])], by[("B", r["transport"], r["in_flight"])]
        table.add_row(
            r["transport"],
            str(r["in_flight"]),
            f"{a['throughput']:.0f}",
            f"{b['throughput']:.0f}",
            f"{r['throughput_ratio']:.2f}",
            f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f}",
            f"{a['server_cpu_ms_per_frame']:.3f} / {b['server_cpu_ms_per_frame']:.3f}",
            f"{a['mean_batch']:.1f} / {b['mean_batch']:.1f}",
        )
    Console(width=140).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    add_point_flags(p, (4, 16, 64))
    for side in ("a", "b"):
        p.add_argument(f"--{side}-args", default="", help=f"extra slimsplit-server flags of {side.upper()}")
        p.add_argument(
            f"--{side}-toml", nargs="*", default=[], metavar="S.K=V", help=f"TOML settings of {side.upper()}"
        )
    args = p.parse_args(argv)
    config = points_config(p, args, (4, 16, 64))
    try:
        sides = {
            "A": (tuple(shlex.split(args.a_args)), toml_text(args.a_toml)),
            "B": (tuple(shlex.split(args.b_args)), toml_text(args.b_toml)),
        }
    except ValueError as exc:
        p.error(str(exc))
    if sides["A"] == sides["B"]:
        p.error("A and B are the same configuration: give --b-args or --b-toml (or --a-...)")
    with tempfile.TemporaryDirectory(prefix="slimsplit-server-ab-") as tmp:
        doc = run(config, sides, Path(tmp))
    print_table(doc)
    write_results(args.out, "server_ab", argv, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
