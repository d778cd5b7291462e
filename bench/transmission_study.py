"""Design study: what the Raspberry Pi table's targets need from the *transmission*, not the controller.

    .venv/bin/python -m bench.transmission_study --out bench/results/transmission_study.json     # all traces (~1 min)
    .venv/bin/python -m bench.transmission_study --quick --out /tmp/transmission_study.json      # first 120 s

Why
---
On the ``rpi4-300ms`` / ``rpi4-600ms`` scenarios of ``bench/controller.py`` no controller reaches its
targets (>= 99% of feasible frames, within 2 points of the oracle): even the lightest mode on every frame misses
feasible frames, because a frame is sent as one message and its bytes stay in the link after the edge gives up on
it, ahead of the next frame. This study changes *how a frame is sent*, in simulation only, on the same traces, link
model (:class:`~slimsplit.link.shaping.LinkDirection`), feasible set and oracle as ``bench/controller.py``, to
measure which changes would reach the targets. Nothing here is in the product; it sizes a possible feature.

Senders (how bytes reach the link)
----------------------------------
* ``single``: today's edge. The payload is handed to the transport at once; it all enters the bottleneck and stays
  there after the deadline (``bench/controller.py``'s model: this sender reproduces its figures exactly, which
  ``tests/test_transmission_study.py`` checks).
* ``window-<W>``: the edge keeps at most ``W`` bytes unacknowledged (1500-byte packets; a packet's
  acknowledgement returns one propagation delay after it reaches the server) and keeps the rest at home; a byte
  that could no longer reach the server and answer by the deadline is never sent. What is already in the network
  stays there (at most ``W`` bytes). A window below the bandwidth-delay product caps the throughput at ``W`` per
  round trip: that is modelled, which is why a small fixed window is no answer either.
* ``window-bdp``: the window follows the link, as BBR sizes its congestion window: twice the bandwidth-delay
  product, the bandwidth being the largest of the last 10 delivery-rate samples (bytes acknowledged while a packet
  was in flight over that time), the delay the base round trip; 10 packets before the first sample.
* ``drop-at-deadline``: at a frame's deadline, every byte of it still queued in the bottleneck is dropped *by the
  link* (a discard timer in the bottleneck queue, set to the deadline). Not something the edge can do over TCP:
  it shows what the network would have to do.

Payloads (what a frame is)
--------------------------
* ``whole``: the chosen mode's payload; the frame counts only if all of it arrives in time. Policies:
  ``fixed-lightest`` and ``mpc`` (the project's controller, unchanged, told only what the live edge tells it).
* ``planes``: the frame is sent as bit planes, most significant first (6,912 B each, the Pi table's bytes per
  bit); the server decodes with the planes that arrived by the deadline (server time 0, as in the table). The
  accuracy of ``b`` planes of ``m`` members is *assumed* to be the table's accuracy of mode ``(m, b)``: that needs
  the ``b``-bit code's top ``k`` bits to serve as the ``k``-bit code, which the published encoders do not claim, so
  the accuracy side of this row is an assumption; the timing side is measured. (This project's own bundle does
  accept its codes' top bits: ``bench/nested_planes.py``.) Policies choose
  the member count (encoder time) only: ``m1`` (one member), ``forecast`` (the member count whose predicted
  planes give the best accuracy, from the harmonic mean of the last 5 per-frame goodputs x 0.8) and ``oracle-m``
  (the best member count knowing the trace: an upper bound for the member choice).

Metrics per scenario x trace x sender x payload x policy: ``feasible_hit_rate`` (the feasible frames of
``bench/controller.py``: some mode alone on the link is in time), ``hit_rate``, ``mean_accuracy`` (0 for a frame
with nothing in time), ``gap_pts`` (the oracle's mean accuracy minus this, in points), ``bytes_sent`` (bytes that
entered the network and were not dropped) and ``bytes_withheld`` (bytes the edge never sent, or the link dropped
at the deadline).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.controller import Scenario, Truth, ground_truth, load_traces, rpi4_scenarios
from bench.results_io import write_results
from slimsplit.control.base import Controller, FrameFeedback
from slimsplit.control.config import RunConfig
from slimsplit.control.registry import make_controller
from slimsplit.link.shaping import LinkDirection
from slimsplit.link.trace import Trace
from slimsplit.records import in_time

PACKET_BYTES = 1500
PLANE_BYTES = 6912  # the Pi table's payload per bit (1 member's 1-bit code)
FORECAST_SAMPLES = 5
FORECAST_MARGIN = 0.8
SENDERS = ("single", "window-32768", "window-8192", "window-3000", "window-bdp", "drop-at-deadline")
INITIAL_WINDOW_BYTES = 10 * PACKET_BYTES  # window-bdp before its first rate sample (TCP's initial window)
MIN_WINDOW_BYTES = 2 * PACKET_BYTES
BDP_GAIN = 2.0  # window-bdp: this many bandwidth-delay products in flight (BBR's cwnd gain)
TARGET_FEASIBLE_HIT = 0.99  # the targets of bench/controller.py
TARGET_GAP_PTS = 2.0
BDP_RATE_SAMPLES = 10  # window-bdp: the bandwidth estimate is the largest of this many delivery-rate samples
DESIGNS = (
    ("whole", "fixed-lightest"),
    ("whole", "mpc"),
    ("planes", "m1"),
    ("planes", "forecast"),
    ("planes", "oracle-m"),
)


# ---------------------------------------------------------------------------------------------- the sender


class Sender:
    """One frame at a time over one uplink direction: ``send`` puts a frame's pieces on the link from ``start``
    and returns each piece's arrival time at the server (``inf`` for a piece not sent by the deadline)."""

    def __init__(self, link: LinkDirection, kind: str) -> None:
        self.link = link
        self.kind = kind
        self.adaptive = kind == "window-bdp"
        self.window: float = math.inf
        if self.adaptive:
            self.window = float(INITIAL_WINDOW_BYTES)
        elif kind.startswith("window-") and kind[7:].isdigit() and int(kind[7:]) >= PACKET_BYTES:
            self.window = float(kind[7:])
        elif kind not in ("single", "drop-at-deadline"):
            raise ValueError(
                f"no sender {kind!r}: single, window-<bytes >= {PACKET_BYTES}>, window-bdp, drop-at-deadline"
            )
        # per packet sent and not yet acknowledged: (ack time, bytes, bytes delivered and time of the last
        # acknowledgement when it was sent: BBR's delivery-rate sample)
        self._unacked: deque[tuple[float, int, float, float]] = deque()
        self._unacked_bytes = 0
        self._delivered = 0.0
        self._delivered_at = -math.inf
        self._rates: deque[float] = deque(maxlen=BDP_RATE_SAMPLES)
        self.bytes_sent = 0.0
        self.bytes_withheld = 0.0

    def send(self, start: float, pieces: Sequence[int], deadline_at: float) -> list[float]:
        delay = self.link.delay_s
        last_send = deadline_at - 2 * delay  # a byte sent later cannot reach the server and answer in time
        arrivals: list[float] = []
        t = start
        stopped = False
        for size in pieces:
            arrival = -math.inf
            for pkt in _packets(size):
                if self.kind in ("single", "drop-at-deadline"):
                    arrival = self.link.enqueue(start, pkt)  # everything at once (one write)
                    self.bytes_sent += pkt
                    continue
                t = self._wait_for_room(t, pkt)
                if stopped or t > last_send:
                    stopped = True
                    self.bytes_withheld += pkt
                    arrival = math.inf
                    continue
                arrival = self.link.enqueue(t, pkt)
                self.bytes_sent += pkt
                self._unacked.append((arrival + delay, pkt, self._delivered, self._delivered_at))
                self._unacked_bytes += pkt
            arrivals.append(arrival)
        if self.kind == "drop-at-deadline":
            taken = self.link.withdraw(deadline_at)
            self.bytes_withheld += taken
            self.bytes_sent -= taken
        return arrivals

    def _wait_for_room(self, t: float, pkt: int) -> float:
        q = self._unacked
        while q and (q[0][0] <= t or self._unacked_bytes + pkt > self.window):
            ack, n, delivered_then, at_then = q.popleft()
            self._unacked_bytes -= n
            t = max(t, ack)
            self._delivered += n
            if self.adaptive and at_then > -math.inf and ack > at_then:
                # bytes delivered while this packet was in flight over that time (BBR's delivery rate)
                self._rates.append((self._delivered - delivered_then) / (ack - at_then))
                rtt = 2 * self.link.delay_s
                self.window = max(MIN_WINDOW_BYTES, BDP_GAIN * max(self._rates) * rtt)
            self._delivered_at = ack
        return t


def _packets(size: int) -> list[int]:
    full, rest = divmod(size, PACKET_BYTES)
    return [PACKET_BYTES] * full + ([rest] if rest else [])


# ---------------------------------------------------------------------------------------------- one run


@dataclass
class Outcome:
    hits: int = 0
    feasible_hits: int = 0
    accuracy_sum: float = 0.0


def run_design(sc: Scenario, trace: Trace, truth: Truth, sender_kind: str, payload: str, policy: str) -> dict[str, Any]:
    """One sender x payload x policy over the whole trace: one frame per deadline period, one in flight."""
    link = truth.link
    up = LinkDirection(link.uplink, link.delay_ms / 1000.0, 10**12, link.start_offset_s)  # unbounded queue
    sender = Sender(up, sender_kind)
    deadline = sc.deadline_ms / 1000.0
    delay = up.delay_s
    by_name = {m.name: m for m in sc.modes}
    acc = {(m.width, m.bits): m.accuracy for m in sc.modes}
    enc_s = {m.width: m.encoder_ms / 1000.0 for m in sc.modes}
    server_s = {(m.width, m.bits): m.server_ms / 1000.0 for m in sc.modes}
    controller: Controller | None = None
    if payload == "whole":
        controller = _whole_controller(sc, policy, link.base_rtt_s * 1000.0)
    goodputs: deque[float] = deque(maxlen=FORECAST_SAMPLES)
    n = int(truth.feasible.size)
    period = 1.0 / sc.fps
    out = Outcome()
    for i in range(n):
        t = i * period  # as slimsplit.evaluation.sim computes capture times
        due = t + deadline
        if controller is not None:
            mode_name = controller.choose(t, 0, 0).mode
            if mode_name is None:
                continue
            mode = by_name[mode_name]
            start = t + mode.encoder_ms / 1000.0
            arrival = sender.send(start, [round(mode.payload_bytes)], due)[-1]
            done = arrival + delay + mode.server_ms / 1000.0
            hit = in_time((done - t) * 1e3, sc.deadline_ms)  # the rule the simulator's give-up timer applies
            controller.on_sent(i, mode_name, round(mode.payload_bytes), start)
            controller.observe(
                FrameFeedback(
                    i, mode_name, round(mode.payload_bytes), start, done if hit else due, mode.server_ms * hit, hit
                )
            )
            accuracy = mode.accuracy if hit else 0.0
        else:
            members = _members(policy, goodputs, up, t, enc_s, acc, delay, deadline)
            start = t + enc_s[members]
            arrivals = sender.send(start, [PLANE_BYTES] * 4, due)
            arrived = [
                a
                for b, a in enumerate(arrivals, 1)
                if in_time((a + delay + server_s[(members, b)] - t) * 1e3, sc.deadline_ms)
            ]
            planes = len(arrived)  # FIFO: the planes in time are a prefix
            hit = planes > 0
            accuracy = acc[(members, planes)] if hit else 0.0
            # what the edge measures: the planes in time over the time until the last one's acknowledgement
            goodputs.append(planes * PLANE_BYTES * 8 / (arrived[-1] + delay - start) if hit else 1e3)
        if hit:
            out.hits += 1
            out.accuracy_sum += accuracy
            out.feasible_hits += int(truth.feasible[i])
    oracle_acc = truth.plan.accuracy_sum / n if n else 0.0
    n_feasible = int(truth.feasible.sum())
    mean_acc = out.accuracy_sum / n if n else 0.0
    return {
        "scenario": sc.name,
        "trace": trace.name,
        "sender": sender_kind,
        "payload": payload,
        "policy": policy,
        "frames": n,
        "feasible_frames": n_feasible,
        "hit_rate": out.hits / n if n else 0.0,
        "feasible_hit_rate": out.feasible_hits / n_feasible if n_feasible else 1.0,
        "mean_accuracy": mean_acc,
        "oracle_mean_accuracy": oracle_acc,
        "gap_pts": (oracle_acc - mean_acc) * 100.0,
        "bytes_sent": round(sender.bytes_sent),
        "bytes_withheld": round(sender.bytes_withheld),
    }


def _whole_controller(sc: Scenario, policy: str, rtt_ms: float) -> Controller:
    run = RunConfig(deadline_ms=sc.deadline_ms, fps=sc.fps, max_in_flight=1)
    if policy == "fixed-lightest":
        lightest = min(sc.modes, key=lambda m: (m.payload_bytes, m.encoder_ms))
        return make_controller("fixed", sc.modes, run, mode=lightest.name)
    if policy == "mpc":
        return make_controller("mpc", sc.modes, run, rtt_ms=rtt_ms)
    raise ValueError(f"no whole-payload policy {policy!r}")


def _members(
    policy: str,
    goodputs: deque[float],
    up: LinkDirection,
    t: float,
    enc_s: dict[int, float],
    acc: dict[tuple[int, int], float],
    delay: float,
    deadline: float,
) -> int:
    """The member count of a plane-coded frame captured at ``t``: the one whose planes in time give the best
    accuracy (the fewest members on a tie, one member when no count gets a plane in time)."""
    counts = sorted(enc_s)
    if policy not in ("m1", "oracle-m", "forecast"):
        raise ValueError(f"no planes policy {policy!r}")
    if policy == "m1" or (policy == "forecast" and not goodputs):
        return counts[0]
    bps = len(goodputs) / sum(1.0 / g for g in goodputs) * FORECAST_MARGIN if goodputs else 0.0

    def planes_of(m: int) -> int:
        if policy == "oracle-m":  # evaluation only: reads the link
            return _planes_alone(up, t + enc_s[m], t + deadline, delay)
        return max(0, min(4, int((deadline - enc_s[m] - 2 * delay) * bps / 8 / PLANE_BYTES)))

    return max(counts, key=lambda m: (acc[(m, p)] if (p := planes_of(m)) else 0.0, -m))


def _planes_alone(up: LinkDirection, start: float, due: float, delay: float) -> int:
    """Planes of a frame whose bytes enter the link at ``start`` that arrive in time, behind what is queued."""
    planes = 0
    for p in range(1, 5):
        if up.departure_time(start, p * PLANE_BYTES) + 2 * delay <= due:
            planes = p
    return planes


# ---------------------------------------------------------------------------------------------- report


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, 24 + 16 * 9))
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        table = Table(title=f"{scenario}: feasible-frame hit rate % / points below the oracle")
        traces = list(dict.fromkeys(r["trace"] for r in rows if r["scenario"] == scenario))
        table.add_column("sender · payload · policy")
        for tr in traces:
            table.add_column(tr[:18], justify="right")
        designs = dict.fromkeys((r["sender"], r["payload"], r["policy"]) for r in rows if r["scenario"] == scenario)
        for key in designs:
            cells = []
            for tr in traces:
                r = next(
                    x
                    for x in rows
                    if x["scenario"] == scenario
                    and x["trace"] == tr
                    and (x["sender"], x["payload"], x["policy"]) == key
                )
                ok = _meets(r)
                cell = f"{r['feasible_hit_rate'] * 100:.1f} / {r['gap_pts']:.1f}"
                cells.append(f"[green]{cell}[/green]" if ok else cell)
            table.add_row(" · ".join(key), *cells)
        console.print(table)


def worst_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario x design: the worst trace's feasible-frame hit rate and gap, and on how many traces both
    targets are met."""
    out: list[dict[str, Any]] = []
    keys = dict.fromkeys((r["scenario"], r["sender"], r["payload"], r["policy"]) for r in rows)
    for sc, sender, payload, policy in keys:
        rs = [
            r for r in rows if (r["scenario"], r["sender"], r["payload"], r["policy"]) == (sc, sender, payload, policy)
        ]
        out.append(
            {
                "scenario": sc,
                "sender": sender,
                "payload": payload,
                "policy": policy,
                "worst_feasible_hit_rate": min(r["feasible_hit_rate"] for r in rs),
                "worst_gap_pts": max(r["gap_pts"] for r in rs),
                "traces_meeting_both": sum(1 for r in rs if _meets(r)),
                "traces": len(rs),
            }
        )
    return out


def _meets(row: dict[str, Any]) -> bool:
    return bool(row["feasible_hit_rate"] >= TARGET_FEASIBLE_HIT and row["gap_pts"] <= TARGET_GAP_PTS)


PLOT_SENDERS = ("single", "window-8192", "window-bdp", "drop-at-deadline")  # the fixed windows' extremes: table only
PLOT_MARKERS = {"fixed-lightest": "o", "mpc": "s", "m1": "^", "forecast": "v"}  # oracle-m, an upper bound: table only


def plot(path: Path, worst: list[dict[str, Any]]) -> None:
    """Per scenario, one point per design: its worst trace (colour: sender; marker: payload and policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    scenarios = list(dict.fromkeys(w["scenario"] for w in worst))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 5.5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    colors = {s: cmap(x) for s, x in zip(PLOT_SENDERS, np.linspace(0.0, 0.85, len(PLOT_SENDERS)), strict=True)}
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for w in worst:
            if w["scenario"] != scenario or w["sender"] not in colors or w["policy"] not in PLOT_MARKERS:
                continue
            ax.scatter(
                [100.0 * w["worst_feasible_hit_rate"]],
                [w["worst_gap_pts"]],
                s=55,
                marker=PLOT_MARKERS[w["policy"]],
                color=colors[w["sender"]],
                edgecolors="black",
                linewidths=0.4,
            )
        ax.axvline(100.0 * TARGET_FEASIBLE_HIT, color="red", lw=0.8, ls="--")
        ax.axhline(TARGET_GAP_PTS, color="red", lw=0.8, ls="--")
        ax.set_xlabel("worst trace: feasible frames in time, % (target: right of the red line)")
        ax.set_ylabel("worst trace: points below the oracle (target: below the red line)")
        ax.set_title(f"{scenario}: each design's worst trace")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="", marker="s", color=c, label=f"sender: {s}") for s, c in colors.items()]
    names = {"fixed-lightest": "whole · fixed-lightest", "mpc": "whole · mpc", "m1": "planes · m1"}
    handles += [
        Line2D([], [], ls="", marker=m, color="grey", label=names.get(p, f"planes · {p}"))
        for p, m in PLOT_MARKERS.items()
    ]
    axes[0][0].legend(handles=handles, fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("bench/results/transmission_study.json"))
    p.add_argument("--quick", action="store_true", help="first 120 s of each trace")
    p.add_argument("--seconds", type=float, default=None, help="only the first SECONDS of every trace")
    p.add_argument("--only", nargs="*", default=[], help="only traces whose name contains one of these")
    p.add_argument("--traces", type=Path, nargs="*", default=[], help="more Mahimahi trace files")
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way propagation delay (default 10)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (120.0 if args.quick else None)
    traces = load_traces(args.traces, seconds, args.only)
    if not traces:
        raise SystemExit(f"bench/transmission_study.py: no trace matches {args.only}")
    scenarios = rpi4_scenarios()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    jobs = [(sc, tr) for sc in scenarios for tr in traces]
    for sc, tr in tqdm(jobs, desc="scenario x trace", unit="run"):
        n = math.floor(tr.period_s * sc.fps + 1e-9)
        truth = ground_truth(sc, tr, args.delay_ms, n)
        for sender in SENDERS:
            for payload, policy in DESIGNS:
                rows.append(run_design(sc, tr, truth, sender, payload, policy))
    wall = time.perf_counter() - t0
    print_table(rows)
    worst = worst_cases(rows)
    fields: dict[str, Any] = {
        "quick": args.quick,
        "seconds": seconds,
        "delay_ms": args.delay_ms,
        "wall_seconds": wall,
        "assumption": "planes: the accuracy of b planes of m members is the table's accuracy of mode (m, b)",
        "results": rows,
        "worst_cases": worst,
    }
    plot_fn = None if args.no_plot else partial(plot, worst=worst)
    write_results(args.out, "transmission_study", argv, fields, plot_fn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
