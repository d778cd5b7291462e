"""Mode-selection controllers over emulated links driven by real and synthetic traces (discrete-event simulation).

    .venv/bin/python -m bench.controller --out bench/results/controller.json          # full traces (a few minutes)
    .venv/bin/python -m bench.controller --quick --out /tmp/controller.json           # first 120 s of each trace
    .venv/bin/python -m bench.controller --traces my.up other.up --out ...            # evaluate more trace files

Scenarios
---------
* ``bundle-30fps-100ms``: the default bundle's measured mode table (``slimsplit.bundle.default_bundle_path()``),
  30 frames/s, 100 ms deadline, at most 8 frames in flight. Without a usable bundle manifest the bench refuses to
  run unless ``--allow-placeholder-modes`` is given; it then uses :data:`PLACEHOLDER_MODES` (clearly labelled in
  the JSON and the table).
* ``rpi4-300ms`` / ``rpi4-600ms``: the published slimmable-ensemble Raspberry Pi 4 operating points
  (:func:`slimsplit.control.modes.rpi4_ensemble_modes`, 4 x 4 grid, mAP interpolated), one frame at a time:
  one frame per deadline period (3.33 / 1.67 frames/s) and at most one frame in flight.

Traces: every file in the shared traces folder (``../shared/traces`` beside the repository, or
``$SLIMSPLIT_SHARED_TRACES``: real cellular uplinks, read in place; none if absent), the project's synthetic traces
(``slimsplit/assets/traces``), a constant 1 Mbit/s link, and ``--traces`` files. Link: the trace as uplink, an
unshaped downlink, ``--delay-ms`` (default 10) each way; the controllers are told the round-trip time, as the edge
client measures it with pings.

When the edge gives up on a frame (``--expiry``)
------------------------------------------------
``captured`` (default) is what the live edge client does: a per-frame timer reports ``DEADLINE_EXCEEDED`` one
deadline after the frame's capture and frees its in-flight slot; the frame's bytes stay in the link (they were
written to the transport: neither a gRPC cancel nor the timer takes them back), its late reply is ignored and the
controller is told the frame failed. A frame whose deadline falls on the next capture (one frame at a time with
period = deadline) frees its slot before that capture's decision. ``sent`` starts the timer when the payload is
handed to gRPC (the same as ``captured`` up to the encoder time), ``reply`` keeps a frame in flight until its reply
arrives, however late (the model of :mod:`slimsplit.evaluation.loadgen`).
The JSON's ``sensitivity`` list repeats every run under the rules named by ``--sensitivity`` (default ``sent``
and ``reply``), so numbers under every model are on record.

Controllers
-----------
``fixed`` (the most accurate mode), ``fixed-lightest`` (the lightest mode every frame: the least exposure to the
link; its feasible-frame hit rate is the reference for what a causal controller can reach), ``ewma-greedy`` (the
published baseline), ``mpc`` (this project's) and ``oracle`` (knows the trace: the optimal schedule for the most
frames in time, then the highest accuracy; an upper bound). Beside them, ``lagged_oracle`` in the JSON: the
oracle's schedule one frame late (frame ``i`` in the mode the oracle chose for frame ``i - 1``), which shows how
much the right choice changes from one frame to the next at the scenario's frame spacing.

Feasible frames (the definition)
--------------------------------
A frame is feasible if the oracle can deliver it in time with some mode. This bench reads that
**per frame, in isolation**: frame ``i`` is feasible iff *some* mode, encoded from its capture and sent on a link
that carries none of the edge's earlier frames, is delivered (reply included) within the deadline, under the same
model and constraints as every controller (trace, start offset, propagation delay, per-mode encoder and server
time; :func:`slimsplit.evaluation.oracle.feasible_in_isolation`). The link state at capture time is the trace
itself, so the feasible set is the same for every controller, and it is not shrunk by a controller's own earlier
choices: a frame lost because the controller queued bytes into an outage counts against it. That is the fair
reading; the two alternatives are reported beside it:

* ``feasible_hit_rate_plan``: the frames the oracle's *joint* optimal schedule delivers. A frame feasible alone can
  in principle be left out of the joint optimum because the link cannot carry it and its neighbours; on the traces
  here the two sets are identical (``feasible_frames_plan`` vs ``feasible_frames``), because the payloads are small
  against the capacity between outages.
* ``feasible_frames_given_own_queue`` (diagnostic, never a target): missed feasible frames that were still feasible
  given the bytes the controller under test had already queued at capture. Judging feasibility against the
  controller's own queue would excuse self-inflicted queueing, so it only splits the misses.

Metrics per scenario x trace x controller (``results`` in the JSON)
-------------------------------------------------------------------
``hit_rate`` (in time / all frames), ``feasible_hit_rate`` (in time among the feasible frames),
``feasible_hit_rate_plan``, ``mean_accuracy`` (accuracy per frame, 0 for a late or skipped frame: a fraction),
``accuracy_of_hits``, ``bytes_sent``, ``switches_per_min``, ``dropped`` (never sent) with ``drop_reasons``, ``late``
(sent but not in time), latency statistics, the controller's decision time (p50/p99 microseconds, measured around
every ``choose`` call), and the *miss analysis* of the feasible frames it missed: ``feasible_misses`` by cause
(``skipped: <reason>``, ``late: own queue`` = the chosen mode was in time alone but not behind the controller's own
bytes, ``late: mode too heavy`` = the chosen mode was late even alone) and ``feasible_miss_timing`` by position
relative to the trace's outages (no delivery opportunity for ``OUTAGE_GAP_S``): ``onset`` (an outage starts before
the frame's deadline), ``inside``, ``recovery`` (within 1 s after one), ``normal``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.results_io import recorded_args, recorded_path
from slimsplit.bundle import default_bundle_path, read_manifest
from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.modes import modes_from_manifest, rpi4_ensemble_modes
from slimsplit.errors import SlimsplitError
from slimsplit.evaluation.oracle import OraclePlan, isolated_latencies, plan_oracle
from slimsplit.evaluation.oracle_controller import OracleController, make_evaluation_controller
from slimsplit.evaluation.sim import EXPIRY_RULES, SimConfig, SimResult, figures, simulate
from slimsplit.link.shaping import LinkConfig, LinkDirection
from slimsplit.link.synth import shared_traces_dir, shipped_traces_dir
from slimsplit.link.trace import Trace, load_mahimahi
from slimsplit.records import FrameRecord, in_time, in_time_array, reason_kind

QUICK_SECONDS = 120.0
OUTAGE_GAP_S = 0.2  # no delivery opportunity for this long = an outage (for the miss timing only)
RECOVERY_S = 1.0

# PLACEHOLDER figures (not measured!): the shape of the default bundle (8 x 8 bottleneck, widths 2-16, 1-8 bits,
# payload = width * 64 * bits / 8 + a 30-byte header) with made-up accuracies. Used only with
# --allow-placeholder-modes, and labelled "PLACEHOLDER" wherever results are shown.
PLACEHOLDER_MODES: tuple[ModeOption, ...] = tuple(
    ModeOption(
        name=f"w{w}b{b}",
        width=w,
        bits=b,
        accuracy=round({2: 0.78, 4: 0.85, 8: 0.89, 16: 0.91}[w] + {1: -0.06, 2: -0.02, 4: -0.003, 8: 0.0}[b], 3),
        payload_bytes=float(w * 64 * b // 8 + 30),
        encoder_ms=0.4,
        server_ms=0.3,
    )
    for w in (2, 4, 8, 16)
    for b in (1, 2, 4, 8)
)


@dataclass(frozen=True)
class Scenario:
    name: str
    modes: tuple[ModeOption, ...]
    fps: float
    deadline_ms: float
    max_in_flight: int
    source: str


CONTROLLERS = ("fixed", "fixed-lightest", "ewma-greedy", "mpc", "oracle")
FRONTIER_MARGINS = (0.8, 0.65, 0.5)  # mpc's risk knob (MpcConfig.margin; the default is 0.95), for the frontier


def bundle_scenario(allow_placeholder: bool) -> Scenario:
    path = default_bundle_path()
    try:
        manifest = read_manifest(path)
        modes = modes_from_manifest(manifest)
        source = f"bundle {manifest.name} v{manifest.version} ({recorded_path(path)})"
    except SlimsplitError as exc:
        if not allow_placeholder:
            raise SystemExit(
                f"bench/controller.py: no usable bundle manifest at {path} ({exc}); refusing to use placeholder "
                "mode figures. Pass --allow-placeholder-modes to run with them (results are labelled PLACEHOLDER)."
            ) from exc
        modes, source = PLACEHOLDER_MODES, "PLACEHOLDER mode table (not measured)"
    return Scenario("bundle-30fps-100ms", tuple(modes), 30.0, 100.0, 8, source)


def rpi4_scenarios() -> list[Scenario]:
    modes = rpi4_ensemble_modes()
    src = "published slimmable-ensemble Raspberry Pi 4 points (4x4 grid, mAP interpolated)"
    return [Scenario(f"rpi4-{d}ms", modes, 1000.0 / d, float(d), 1, src) for d in (300, 600)]


def load_traces(extra: Sequence[Path], seconds: float | None, only: Sequence[str] = ()) -> list[Trace]:
    """The shared real traces, the shipped synthetic ones, a constant 1 Mbit/s link and ``extra`` files; only those
    whose name contains one of ``only`` (if given); cut to the first ``seconds`` (if given)."""
    shared = shared_traces_dir()
    files = sorted(shared.glob("*.up")) if shared.is_dir() else []
    files += sorted(shipped_traces_dir().glob("*.trace"))
    files += list(extra)
    if only:
        files = [f for f in files if any(o in f.name for o in only)]
    traces = [load_mahimahi(f) for f in files]
    if not only or any(o in "const-1mbit" for o in only):
        traces.append(Trace.constant(1e6, name="const-1mbit", period_ms=120_000))
    if seconds is not None:
        traces = [t.segment(0.0, min(seconds, t.period_s), name=t.name) for t in traces]
    return traces


def controller_options(name: str, sc: Scenario, link: LinkConfig, n_frames: int) -> tuple[str, dict[str, Any]]:
    """The registry name and the keyword arguments of :func:`make_evaluation_controller` (options and the round
    trip) of the bench's controller ``name``; the run configuration (fps, deadline, in-flight limit) is the
    scenario's, :func:`sim_config`'s ``run``."""
    rtt_ms = link.base_rtt_s * 1000.0
    if name == "fixed":
        return "fixed", {}
    if name == "fixed-lightest":
        lightest = min(sc.modes, key=lambda m: (m.payload_bytes, m.encoder_ms))
        return "fixed", {"mode": lightest.name}
    if name == "ewma-greedy":
        return "ewma-greedy", {"rtt_ms": rtt_ms}
    if name == "mpc":
        return "mpc", {"rtt_ms": rtt_ms}
    if name.startswith("mpc@"):  # the risk frontier: mpc with another margin
        return "mpc", {"rtt_ms": rtt_ms, "margin": float(name[4:])}
    return "oracle", {"link": link, "n_frames": n_frames}


# ---------------------------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Truth:
    """What every controller on one scenario x trace is judged against."""

    link: LinkConfig
    plan: OraclePlan
    isolated_s: npt.NDArray[np.float64]  # frames x modes: latency of each mode alone on the link
    feasible: npt.NDArray[np.bool_]  # feasible in isolation (the definition used for feasible_hit_rate)
    outage_starts: npt.NDArray[np.float64]  # link time of the last opportunity before each outage
    outage_ends: npt.NDArray[np.float64]  # link time of the first opportunity after it


def ground_truth(sc: Scenario, trace: Trace, delay_ms: float, n_frames: int) -> Truth:
    link = LinkConfig(uplink=trace, delay_ms=delay_ms)
    plan = plan_oracle(sc.modes, sc.deadline_ms, link, sc.fps, n_frames, sc.max_in_flight)
    iso = isolated_latencies(sc.modes, link, sc.fps, n_frames)
    feasible = np.any(in_time_array(iso * 1e3, sc.deadline_ms), axis=1)
    t = trace.times_ms / 1000.0
    gaps = np.flatnonzero(np.diff(t) >= OUTAGE_GAP_S)
    return Truth(link, plan, iso, feasible, t[gaps], t[gaps + 1])


def miss_timing(t: float, deadline_s: float, truth: Truth) -> str:
    """Where a frame captured at ``t`` lies relative to the trace's outages (single period; the bench never wraps)."""
    k = int(np.searchsorted(truth.outage_starts, t + deadline_s))  # outages that start before its deadline
    if k > 0:
        start, end = truth.outage_starts[k - 1], truth.outage_ends[k - 1]
        if t <= start:
            return "onset"
        if t < end:
            return "inside"
        if t < end + RECOVERY_S:
            return "recovery"
    return "normal"


def miss_analysis(records: Sequence[FrameRecord], sc: Scenario, truth: Truth, expiry: str) -> dict[str, Any]:
    """Classify the feasible frames a controller missed (see the module docstring), and count those still feasible
    given the bytes the controller itself had queued at their capture (a replay of its sends on the same link)."""
    deadline = sc.deadline_ms / 1000.0
    index = {m.name: j for j, m in enumerate(sc.modes)}
    causes: Counter[str] = Counter()
    timing: Counter[str] = Counter()
    given_queue = 0
    own = LinkDirection(truth.link.uplink, truth.link.delay_ms / 1000.0, offset_s=truth.link.start_offset_s)
    sends = sorted((r.sent_s, r.payload_bytes) for r in records if r.sent_s is not None)
    k = 0
    post = [2 * own.delay_s + m.server_ms / 1000.0 for m in sc.modes]
    for i, r in enumerate(records):
        if not truth.feasible[i] or r.hit:
            continue
        while k < len(sends) and sends[k][0] < r.t_s:  # bytes already handed to the link at capture
            own.enqueue(sends[k][0], sends[k][1])
            k += 1
        behind_own = [
            own.departure_time(r.t_s + m.encoder_ms / 1000.0, round(m.payload_bytes)) + post[j]
            for j, m in enumerate(sc.modes)
        ]
        if in_time((min(behind_own) - r.t_s) * 1e3, sc.deadline_ms):
            given_queue += 1
        if r.skipped:
            cause = f"skipped: {reason_kind(r.reason)}"
        elif in_time(truth.isolated_s[i, index[r.mode]] * 1e3, sc.deadline_ms):
            cause = "late: own queue"
        else:
            cause = "late: mode too heavy"
        causes[cause] += 1
        timing[miss_timing(r.t_s, deadline, truth)] += 1
    return {
        "feasible_misses": dict(causes.most_common()),
        "feasible_miss_timing": dict(timing.most_common()),
        "feasible_misses_feasible_given_own_queue": given_queue,
        "expiry": expiry,
    }


# ---------------------------------------------------------------------------------------------- runs


def sim_config(sc: Scenario, trace: Trace, expiry: str) -> SimConfig:
    """The simulation of one scenario over the whole of one trace."""
    return SimConfig(
        fps=sc.fps,
        deadline_ms=sc.deadline_ms,
        duration_s=trace.period_s,
        max_in_flight=sc.max_in_flight,
        expiry=expiry,
    )


def timed_passes(
    builders: Mapping[str, Callable[[], Controller]],
    modes: Sequence[ModeOption],
    link: LinkConfig,
    cfg: SimConfig,
    passes: int,
    timed: bool = True,
) -> dict[str, tuple[SimResult, npt.NDArray[np.float64], float]]:
    """Each builder's controller (a fresh one per pass) over the same simulation ``passes`` times, interleaved
    (a, b, a, b, ...) so that all see the same machine. Per builder: the first pass's result, per decision the
    fastest of its timings in ns (its *own cost*: what the computation takes when nothing else on the machine
    interferes, the convention of ``timeit``; empty unless ``timed``), and the first pass's wall time (s).
    :class:`RuntimeError` when two passes, or two builders, choose different modes: the runs must decide alike."""
    first: dict[str, tuple[SimResult, float]] = {}
    own: dict[str, npt.NDArray[np.float64]] = {}
    for _ in range(passes):
        for label, build in builders.items():
            ctl = build()
            t0 = time.perf_counter()
            res = simulate(ctl, modes, link, cfg, time_decisions=timed)
            wall = time.perf_counter() - t0
            ns = np.asarray(res.decision_ns, dtype=np.float64)
            if label not in first:
                first[label], own[label] = (res, wall), ns
                continue
            if [r.mode for r in res.records] != [r.mode for r in first[label][0].records]:
                raise RuntimeError(f"{label}: two passes over the same simulation chose different modes")
            own[label] = np.minimum(own[label], ns)
    chosen = {label: [r.mode for r in res.records] for label, (res, _) in first.items()}
    for label, modes_chosen in chosen.items():
        if modes_chosen != next(iter(chosen.values())):
            raise RuntimeError(f"{label} and {next(iter(chosen))} chose different modes on the same simulation")
    return {label: (res, own[label], wall) for label, (res, wall) in first.items()}


def run_controller(
    label: str, sc: Scenario, trace: Trace, truth: Truth, expiry: str, timed: bool, repeats: int = 1
) -> tuple[dict[str, Any], list[FrameRecord]]:
    """One controller over one trace. With ``repeats`` > 1 (and ``timed``) the run is repeated with a fresh
    controller (:func:`timed_passes`): ``decision_us_own_p50/p99`` are its own cost, beside the timings of the
    first run as measured."""
    cfg = sim_config(sc, trace, expiry)
    kind, opts = controller_options(label, sc, truth.link, cfg.n_frames)
    build = partial(make_evaluation_controller, kind, sc.modes, cfg.run, **opts)
    res, own, wall = timed_passes({label: build}, sc.modes, truth.link, cfg, repeats if timed else 1, timed)[label]
    s = figures(res.records, sc.modes, truth.feasible, truth.plan.hits)
    plan_feasible = truth.plan.feasible
    n_plan = int(plan_feasible.sum())
    hits_plan = sum(1 for r, f in zip(res.records, plan_feasible, strict=True) if f and r.hit)
    ns = np.asarray(res.decision_ns, dtype=np.float64)
    row: dict[str, Any] = {
        "scenario": sc.name,
        "trace": trace.name,
        "controller": label,
        **s,
        "feasible_hit_rate_plan": hits_plan / n_plan if n_plan else 1.0,
        "feasible_frames_plan": n_plan,
        "late_replies": res.late_replies,
        "decision_us_p50": float(np.percentile(ns, 50)) / 1e3 if ns.size else None,
        "decision_us_p99": float(np.percentile(ns, 99)) / 1e3 if ns.size else None,
        "decision_us_own_p50": float(np.percentile(own, 50)) / 1e3 if timed and repeats > 1 and own.size else None,
        "decision_us_own_p99": float(np.percentile(own, 99)) / 1e3 if timed and repeats > 1 and own.size else None,
        "sim_seconds": wall,
        "trace_seconds": trace.period_s,
    }
    row.update(miss_analysis(res.records, sc, truth, expiry))
    return row, res.records


def run_trace(
    sc: Scenario, trace: Trace, delay_ms: float, expiry: str, sensitivity: Sequence[str], repeats: int = 1
) -> tuple[list[dict[str, Any]], dict[str, list[FrameRecord]], list[dict[str, Any]], Truth]:
    n_frames = math.floor(trace.period_s * sc.fps + 1e-9)
    t0 = time.perf_counter()
    truth = ground_truth(sc, trace, delay_ms, n_frames)
    truth_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    records: dict[str, list[FrameRecord]] = {}
    for label in CONTROLLERS:
        reps = 1 if label == "oracle" else repeats  # the oracle replays a plan: nothing to time twice
        row, recs = run_controller(label, sc, trace, truth, expiry, timed=True, repeats=reps)
        if label == "oracle":
            row["sim_seconds"] += truth_s
        rows.append(row)
        records[label] = recs
    sens: list[dict[str, Any]] = []
    for rule in sensitivity:
        for label in CONTROLLERS:
            if label == "oracle":
                continue  # it never sends a frame that misses: no expiry rule changes it
            row, _ = run_controller(label, sc, trace, truth, rule, timed=False)
            keep = ("scenario", "trace", "controller", "expiry", "hit_rate", "feasible_hit_rate", "mean_accuracy")
            sens.append({k: row[k] for k in keep} | {"feasible_misses": row["feasible_misses"]})
    return rows, records, sens, truth


def run_lagged_oracle(sc: Scenario, trace: Trace, truth: Truth, expiry: str) -> dict[str, Any]:
    """The oracle's schedule one frame late: frame ``i`` is sent in the mode the oracle chose for frame ``i - 1``
    (the lightest mode where the oracle skipped it, and for the first frame). A sender with perfect knowledge of
    the link up to the previous frame's deadline could do no worse than what this measures if the link changed
    slowly; how far it falls short of the oracle shows how much the right choice changes from one frame to the
    next (evaluation only: it reads the trace)."""
    lightest = min(sc.modes, key=lambda m: (m.payload_bytes, m.encoder_ms)).name
    plan = truth.plan.modes
    lagged = [lightest, *(m if m is not None else lightest for m in plan[:-1])]
    cfg = sim_config(sc, trace, expiry)
    res = simulate(OracleController(lagged, cfg.run), sc.modes, truth.link, cfg)
    row = figures(res.records, sc.modes, truth.feasible)
    keep = ("hit_rate", "feasible_hit_rate", "mean_accuracy", "late", "dropped")
    return {"scenario": sc.name, "trace": trace.name, "controller": "oracle-lag1", "expiry": expiry} | {
        k: row[k] for k in keep
    }


def run_frontier(sc: Scenario, trace: Trace, truth: Truth, expiry: str) -> list[dict[str, Any]]:
    """mpc at the other margins of :data:`FRONTIER_MARGINS` (its risk knob): how much hit rate it buys back and
    how much accuracy that costs, between the default and always sending the lightest mode."""
    out: list[dict[str, Any]] = []
    keep = ("scenario", "trace", "controller", "expiry", "hit_rate", "feasible_hit_rate", "mean_accuracy")
    for margin in FRONTIER_MARGINS:
        row, _ = run_controller(f"mpc@{margin}", sc, trace, truth, expiry, timed=False)
        out.append({k: row[k] for k in keep} | {"margin": margin, "feasible_misses": row["feasible_misses"]})
    return out


def evaluate_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets per scenario x trace: mpc feasible hit rate >= 99%; mpc mean accuracy within 2 points
    of the oracle's; mpc beats ewma-greedy on feasible hit rate at equal or better mean accuracy. With the
    references that bound them: fixed-lightest's feasible hit rate and the best mean accuracy of any causal
    controller run."""
    out = []
    keyed = {(r["scenario"], r["trace"], r["controller"]): r for r in results}
    for sc, tr in sorted({(r["scenario"], r["trace"]) for r in results}):
        mpc, ewma, oracle = (keyed[(sc, tr, c)] for c in ("mpc", "ewma-greedy", "oracle"))
        light = keyed[(sc, tr, "fixed-lightest")]
        causal_best = max(keyed[(sc, tr, c)]["mean_accuracy"] for c in CONTROLLERS if c != "oracle")
        out.append(
            {
                "scenario": sc,
                "trace": tr,
                "mpc_feasible_hit_rate": mpc["feasible_hit_rate"],
                "mpc_feasible_hit_rate_plan": mpc["feasible_hit_rate_plan"],
                "ewma_feasible_hit_rate": ewma["feasible_hit_rate"],
                "lightest_feasible_hit_rate": light["feasible_hit_rate"],
                "feasible_ge_99": mpc["feasible_hit_rate"] >= 0.99,
                "mpc_mean_accuracy": mpc["mean_accuracy"],
                "ewma_mean_accuracy": ewma["mean_accuracy"],
                "oracle_mean_accuracy": oracle["mean_accuracy"],
                "accuracy_gap_to_oracle_points": 100.0 * (oracle["mean_accuracy"] - mpc["mean_accuracy"]),
                "best_causal_gap_to_oracle_points": 100.0 * (oracle["mean_accuracy"] - causal_best),
                "accuracy_within_2_points": oracle["mean_accuracy"] - mpc["mean_accuracy"] <= 0.02,
                "beats_ewma_greedy": mpc["feasible_hit_rate"] > ewma["feasible_hit_rate"]
                and mpc["mean_accuracy"] >= ewma["mean_accuracy"],
            }
        )
    return out


def decision_time_summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per controller: the median and the worst of the per-run p50 and p99 decision times (microseconds)."""
    out: dict[str, dict[str, float]] = {}
    for c in CONTROLLERS:
        rows = [r for r in results if r["controller"] == c and r["decision_us_p50"] is not None]
        if not rows:
            continue
        out[c] = {}
        for prefix, key in (("", "decision_us"), ("own_", "decision_us_own")):
            p50 = [r[f"{key}_p50"] for r in rows if r.get(f"{key}_p50") is not None]
            p99 = [r[f"{key}_p99"] for r in rows if r.get(f"{key}_p99") is not None]
            if p50:
                out[c] |= {
                    f"{prefix}p50_median_us": float(np.median(p50)),
                    f"{prefix}p50_max_us": float(np.max(p50)),
                    f"{prefix}p99_median_us": float(np.median(p99)),
                    f"{prefix}p99_max_us": float(np.max(p99)),
                }
    return out


def _fixed_work(iterations: int) -> float:
    total = 0.0
    for i in range(iterations):
        total += i * 0.5
    return total


def timing_reference(target_us: float, n: int = 3600, repeats: int = 1) -> dict[str, float]:
    """How much this machine alone spreads a timing: a fixed pure-Python workload, calibrated to take about
    ``target_us`` (mpc's median decision p50), timed ``n`` times exactly as the control loop times ``choose``
    (``perf_counter_ns`` around the call). Its p99 / p50 is the spread of a computation that never varies, i.e.
    the share of a decision p99 that comes from the machine (scheduling, timer interrupts, a shared VM's steal).
    With ``repeats`` > 1 the ``n`` calls are timed that many times and the per-call minimum gives ``own_p50_us`` /
    ``own_p99_us``, as for the controllers."""
    iterations = 64
    while True:  # calibrate: double until one call takes at least the target (median of a few)
        probe = []
        for _ in range(25):
            t = time.perf_counter_ns()
            _fixed_work(iterations)
            probe.append(time.perf_counter_ns() - t)
        med = float(np.median(probe)) / 1e3
        if med >= target_us or iterations > 1 << 22:
            break
        iterations *= 2
    iterations = max(1, round(iterations * target_us / med))
    runs = []
    for _ in range(max(1, repeats)):
        ns = []
        for _ in range(n):
            t = time.perf_counter_ns()
            _fixed_work(iterations)
            ns.append(time.perf_counter_ns() - t)
        runs.append(np.asarray(ns, dtype=np.float64) / 1e3)
    us, own = runs[0], np.min(np.vstack(runs), axis=0)
    p50, p99 = float(np.percentile(us, 50)), float(np.percentile(us, 99))
    out = {"target_us": target_us, "iterations": iterations, "p50_us": p50, "p99_us": p99, "p99_over_p50": p99 / p50}
    if repeats > 1:
        out |= {"own_p50_us": float(np.percentile(own, 50)), "own_p99_us": float(np.percentile(own, 99))}
    return out


# ---------------------------------------------------------------------------------------------- output


def plot_timeline(
    path: Path, trace: Trace, sc: Scenario, records: dict[str, list[FrameRecord]], truth: Truth, window_s: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {m.name: m.accuracy for m in sc.modes}
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    span = min(window_s, trace.period_s)
    cap = trace.capacity_series(0.25, span) / 1e6
    axes[0].step(np.arange(cap.size) * 0.25, cap, where="post", color="0.6", label="capacity (0.25 s)")
    styles = {"mpc": "tab:blue", "ewma-greedy": "tab:orange", "oracle": "tab:green"}
    for name in ("ewma-greedy", "mpc"):
        pts = [(r.t_s, r.estimate_bps / 1e6) for r in records[name] if r.estimate_bps and r.t_s < span]
        if pts:
            t, e = zip(*pts, strict=True)
            axes[0].plot(t, e, lw=0.8, color=styles[name], label=f"{name} estimate")
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(loc="upper right", fontsize=8)
    for name in ("oracle", "ewma-greedy", "mpc"):
        pts = [(r.t_s, acc[r.mode]) for r in records[name] if r.sent and r.t_s < span]
        if pts:
            t, a = zip(*pts, strict=True)
            axes[1].plot(t, a, ".", ms=2, color=styles[name], label=name, alpha=0.7)
    axes[1].set_ylabel("accuracy of chosen mode")
    axes[1].legend(loc="lower right", fontsize=8)
    for name in ("ewma-greedy", "mpc"):
        recs = [r for r in records[name] if r.t_s < span]
        when = [r.t_s for r in recs if math.isfinite(r.latency_ms)]
        lat = [min(r.latency_ms, 3 * sc.deadline_ms) for r in recs if math.isfinite(r.latency_ms)]
        axes[2].plot(when, lat, ".", ms=2, color=styles[name], label=f"{name} latency", alpha=0.6)
        skipped = [r.t_s for r in recs if r.skipped]
        axes[2].plot(skipped, [0] * len(skipped), "|", ms=6, color=styles[name], alpha=0.5)
    feas_miss = [r.t_s for i, r in enumerate(records["mpc"]) if r.t_s < span and truth.feasible[i] and not r.hit]
    axes[2].plot(feas_miss, [sc.deadline_ms * 1.05] * len(feas_miss), "x", ms=5, color="red", label="mpc feasible miss")
    axes[2].axhline(sc.deadline_ms, color="red", lw=1, label="deadline")
    axes[2].set_ylabel("latency ms (| = skipped)")
    axes[2].set_xlabel("time s")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{trace.name} - {sc.name} ({sc.source})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(
    results: list[dict[str, Any]], targets: list[dict[str, Any]], sens: list[dict[str, Any]], placeholder: bool
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(170, Console().width))
    expiry = results[0]["expiry"] if results else "?"
    table = Table(
        title=f"controllers over emulated links (expiry rule: {expiry})"
        + (" (PLACEHOLDER bundle modes)" if placeholder else "")
    )
    cols = ["scenario", "trace", "controller", "hit %", "feasible %", "(plan) %", "mean acc", "kB sent", "sw/min"]
    cols += ["dropped", "late", "dec p50/p99 us", "feasible misses"]
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("scenario", "trace", "controller", "feasible misses") else "right"
        )
    for r in results:
        misses = ", ".join(f"{k} {v}" for k, v in r["feasible_misses"].items())
        table.add_row(
            r["scenario"],
            r["trace"],
            r["controller"],
            f"{100 * r['hit_rate']:.1f}",
            f"{100 * r['feasible_hit_rate']:.2f}",
            f"{100 * r['feasible_hit_rate_plan']:.2f}",
            f"{r['mean_accuracy']:.4f}",
            f"{r['bytes_sent'] / 1e3:.0f}",
            f"{r['switches_per_min']:.1f}",
            str(r["dropped"]),
            str(r["late"]),
            f"{r['decision_us_p50']:.1f}/{r['decision_us_p99']:.1f}" if r["decision_us_p50"] is not None else "-",
            misses,
        )
    console.print(table)
    tt = Table(title="targets (mpc)")
    for col in (
        "scenario",
        "trace",
        "mpc feas %",
        "ewma feas %",
        "lightest feas %",
        ">=99%",
        "mpc acc",
        "ewma acc",
        "oracle acc",
        "gap (pts)",
        "best causal gap",
        "<=2 pts",
        "beats ewma",
    ):
        tt.add_column(col)
    for t in targets:
        tt.add_row(
            t["scenario"],
            t["trace"],
            f"{100 * t['mpc_feasible_hit_rate']:.2f}",
            f"{100 * t['ewma_feasible_hit_rate']:.2f}",
            f"{100 * t['lightest_feasible_hit_rate']:.2f}",
            "yes" if t["feasible_ge_99"] else "no",
            f"{t['mpc_mean_accuracy']:.4f}",
            f"{t['ewma_mean_accuracy']:.4f}",
            f"{t['oracle_mean_accuracy']:.4f}",
            f"{t['accuracy_gap_to_oracle_points']:.2f}",
            f"{t['best_causal_gap_to_oracle_points']:.2f}",
            "yes" if t["accuracy_within_2_points"] else "no",
            "yes" if t["beats_ewma_greedy"] else "no",
        )
    console.print(tt)
    if sens:
        st = Table(title="sensitivity: the same runs under other expiry rules (feasible hit % / mean accuracy)")
        rules = sorted({s["expiry"] for s in sens})
        ctls = [c for c in CONTROLLERS if c != "oracle"]
        st.add_column("scenario")
        st.add_column("trace")
        st.add_column("rule")
        for c in ctls:
            st.add_column(c, justify="right")
        keyed = {(s["scenario"], s["trace"], s["expiry"], s["controller"]): s for s in sens}
        for sc, tr in sorted({(s["scenario"], s["trace"]) for s in sens}):
            for rule in rules:
                cells = []
                for c in ctls:
                    s = keyed[(sc, tr, rule, c)]
                    cells.append(f"{100 * s['feasible_hit_rate']:.2f} / {s['mean_accuracy']:.4f}")
                st.add_row(sc, tr, rule, *cells)
        console.print(st)


def _frontier_points(
    results: list[dict[str, Any]], frontier: list[dict[str, Any]], sc: str, tr: str
) -> list[tuple[str, float, float]]:
    """(label, feasible hit rate, mean accuracy) of the causal controllers and the oracle on one scenario x trace."""
    pts = [
        (r["controller"], r["feasible_hit_rate"], r["mean_accuracy"])
        for r in results
        if r["scenario"] == sc and r["trace"] == tr and r["controller"] != "fixed"
    ]
    pts += [
        (f["controller"], f["feasible_hit_rate"], f["mean_accuracy"])
        for f in frontier
        if (f["scenario"], f["trace"]) == (sc, tr)
    ]
    return pts


def print_frontier(
    results: list[dict[str, Any]], frontier: list[dict[str, Any]], lagged: Sequence[dict[str, Any]] = ()
) -> None:
    from rich.console import Console
    from rich.table import Table

    if not frontier:
        return
    labels = ["fixed-lightest", "ewma-greedy", "mpc", *(f"mpc@{m}" for m in FRONTIER_MARGINS), "oracle-lag1", "oracle"]
    table = Table(
        title="risk frontier: feasible hit % / mean accuracy (mpc = margin 0.95; mpc@m = margin m; oracle-lag1 = "
        "the oracle's choice for the frame before)"
    )
    table.add_column("scenario")
    table.add_column("trace")
    for label in labels:
        table.add_column(label, justify="right")
    for sc, tr in sorted({(f["scenario"], f["trace"]) for f in frontier}):
        got = {label: (h, a) for label, h, a in _frontier_points(results, frontier, sc, tr)}
        got |= {
            g["controller"]: (g["feasible_hit_rate"], g["mean_accuracy"])
            for g in lagged
            if (g["scenario"], g["trace"]) == (sc, tr)
        }
        table.add_row(sc, tr, *(f"{100 * got[c][0]:.2f} / {got[c][1]:.4f}" if c in got else "-" for c in labels))
    Console(width=max(170, Console().width)).print(table)


def plot_frontier(path: Path, results: list[dict[str, Any]], frontier: list[dict[str, Any]]) -> None:
    """Feasible hit rate against mean accuracy, one panel per scenario, one line per trace through mpc's margins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({f["scenario"] for f in frontier})
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 5), squeeze=False)
    markers = {"fixed-lightest": "s", "ewma-greedy": "x", "oracle": "*"}
    for ax, sc in zip(axes[0], scenarios, strict=True):
        for tr in sorted({f["trace"] for f in frontier if f["scenario"] == sc}):
            pts = dict((label, (h, a)) for label, h, a in _frontier_points(results, frontier, sc, tr))
            curve = [pts[c] for c in ("mpc", *(f"mpc@{m}" for m in FRONTIER_MARGINS)) if c in pts]
            (line,) = ax.plot([100 * a for _, a in curve], [100 * h for h, _ in curve], "-o", ms=3, label=tr)
            for label, marker in markers.items():
                if label in pts:
                    h, a = pts[label]
                    ax.plot(100 * a, 100 * h, marker, color=line.get_color(), ms=7)
        ax.axhline(99, color="grey", lw=0.8, ls="--")
        ax.set_title(
            f"{sc}: mpc margins 0.95 → {FRONTIER_MARGINS[-1]} (line); ■ lightest, × ewma, ★ oracle", fontsize=8
        )
        ax.set_xlabel("mean accuracy (%, late/skipped = 0)")
        ax.set_ylabel("feasible frames in time (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("bench/results/controller.json"), help="JSON results")
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK_SECONDS:g} s of every trace")
    p.add_argument("--seconds", type=float, default=None, help="only the first SECONDS of every trace")
    p.add_argument("--traces", type=Path, nargs="*", default=[], help="more Mahimahi trace files to evaluate")
    p.add_argument("--only", nargs="*", default=[], help="evaluate only traces whose name contains one of these")
    p.add_argument("--scenarios", nargs="*", default=[], help="evaluate only these scenarios (default: all)")
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way propagation delay")
    p.add_argument("--expiry", choices=EXPIRY_RULES, default="captured", help="when the edge gives up on a frame")
    p.add_argument(
        "--sensitivity", nargs="*", choices=EXPIRY_RULES, default=["sent", "reply"], help="also run under these rules"
    )
    p.add_argument("--allow-placeholder-modes", action="store_true", help="run without a bundle (labelled)")
    p.add_argument("--plot-seconds", type=float, default=120.0, help="time span shown in the timeline plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--timing-repeats",
        type=int,
        default=3,
        help="time every controller run this many times; per decision the fastest is its own cost (default 3)",
    )
    args = p.parse_args(argv)
    if args.timing_repeats < 1:
        p.error(f"--timing-repeats must be at least 1, got {args.timing_repeats}")

    from rich.progress import Progress

    scenarios = [bundle_scenario(args.allow_placeholder_modes), *rpi4_scenarios()]
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name in args.scenarios]
    placeholder = any(s.source.startswith("PLACEHOLDER") for s in scenarios)
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else None)
    traces = load_traces(args.traces, seconds, args.only)
    sensitivity = [r for r in args.sensitivity if r != args.expiry]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = args.out.parent
    results: list[dict[str, Any]] = []
    sens: list[dict[str, Any]] = []
    frontier: list[dict[str, Any]] = []
    lagged: list[dict[str, Any]] = []
    plots: list[str] = []
    started = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("simulating", total=len(scenarios) * len(traces))
        for sc in scenarios:
            for tr in traces:
                progress.update(task, description=f"{sc.name} / {tr.name}")
                rows, records, sens_rows, truth = run_trace(
                    sc, tr, args.delay_ms, args.expiry, sensitivity, args.timing_repeats
                )
                results.extend(rows)
                sens.extend(sens_rows)
                frontier.extend(run_frontier(sc, tr, truth, args.expiry))
                lagged.append(run_lagged_oracle(sc, tr, truth, args.expiry))
                if sc.name in ("bundle-30fps-100ms", "rpi4-300ms") and not args.no_plots:
                    png = plot_dir / f"{args.out.stem}_{sc.name}_{tr.name}.png"
                    plot_timeline(png, tr, sc, records, truth, args.plot_seconds)
                    plots.append(str(png))
                progress.advance(task)
    targets = evaluate_targets(results)
    decision_times: dict[str, Any] = dict(decision_time_summary(results))
    if "mpc" in decision_times:
        decision_times["reference"] = timing_reference(
            decision_times["mpc"]["p50_median_us"], repeats=args.timing_repeats
        )
    doc = {
        "benchmark": "controller",
        "command": " ".join(["python -m bench.controller", *recorded_args(argv if argv is not None else sys.argv[1:])]),
        "quick": seconds is not None,
        "seconds": seconds,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "wall_seconds": time.perf_counter() - started,
        "link": {"delay_ms_each_way": args.delay_ms, "downlink": "unshaped", "queue": "FIFO (back-pressure)"},
        "expiry": args.expiry,
        "feasible_definition": "per frame in isolation: some mode sent alone from the frame's capture is delivered "
        "within the deadline (see the bench docstring); feasible_hit_rate_plan uses the oracle's joint schedule",
        "scenarios": [
            {
                "name": s.name,
                "modes_source": s.source,
                "fps": s.fps,
                "deadline_ms": s.deadline_ms,
                "max_in_flight": s.max_in_flight,
                "modes": [m.__dict__ for m in s.modes],
            }
            for s in scenarios
        ],
        "placeholder_modes": placeholder,
        "results": results,
        "targets": targets,
        "decision_time_us": decision_times,
        "sensitivity": sens,
        "frontier": frontier,
        "lagged_oracle": lagged,
        "plots": plots,
    }
    if not args.no_plots:
        png = plot_dir / f"{args.out.stem}_frontier.png"
        plot_frontier(png, results, frontier)
        plots.append(str(png))
    args.out.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    print_table(results, targets, sens, placeholder)
    print_frontier(results, frontier, lagged)
    ref = decision_times.get("reference")
    if ref is not None:
        mpc_t = decision_times["mpc"]
        print(
            f"decision time, mpc: p50 {mpc_t['p50_median_us']:.1f} us, p99 {mpc_t['p99_median_us']:.1f} us (medians "
            f"over runs); a fixed workload of the same p50 on this machine: p50 {ref['p50_us']:.1f} us, p99 "
            f"{ref['p99_us']:.1f} us ({ref['p99_over_p50']:.2f}x)"
        )
        if "own_p99_max_us" in mpc_t:
            print(
                f"own cost (fastest of {args.timing_repeats} timings per decision), mpc: p50 "
                f"{mpc_t['own_p50_median_us']:.1f} us (max {mpc_t['own_p50_max_us']:.1f}), p99 "
                f"{mpc_t['own_p99_median_us']:.1f} us (max over runs {mpc_t['own_p99_max_us']:.1f}); the fixed "
                f"workload: p50 {ref['own_p50_us']:.1f} us, p99 {ref['own_p99_us']:.1f} us"
            )
    print(f"wrote {args.out} and {len(plots)} plots in {doc['wall_seconds']:.0f} s")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _json_default(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
