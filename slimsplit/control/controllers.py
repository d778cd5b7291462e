"""The live controllers: ``fixed``, ``ewma-greedy`` (the published baseline) and ``mpc`` (this project's).

All of them implement :class:`~slimsplit.control.base.Controller`, see only what the edge can measure and are
built for one :class:`~slimsplit.control.config.RunConfig`; each takes its options as a frozen dataclass
(:class:`FixedOptions`, :class:`EwmaGreedyOptions`, :class:`MpcConfig`) whose errors name the field.
:mod:`slimsplit.control.registry` builds them by name.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.estimators import EwmaEstimator, TransferSampler
from slimsplit.control.modes import check_modes, pareto_modes
from slimsplit.errors import UnknownMode
from slimsplit.settings import check

# ---------------------------------------------------------------------------------------------- fixed


@dataclass(frozen=True)
class FixedOptions:
    """Options of :class:`FixedController`: ``mode`` = the mode it always sends (``None``: the most accurate, the
    smaller payload on ties)."""

    mode: str | None = None

    def __post_init__(self) -> None:
        check(self.mode is None or (isinstance(self.mode, str) and bool(self.mode)), "mode", "expected a mode name")


class FixedController(Controller):
    """Always the same mode (:class:`FixedOptions`). Skips only at the in-flight limit."""

    name = "fixed"
    run: RunConfig

    def __init__(self, modes: Sequence[ModeOption], run: RunConfig, options: FixedOptions | None = None) -> None:
        check_modes(modes)
        mode = (options or FixedOptions()).mode
        if mode is None:
            self.mode = max(modes, key=lambda m: (m.accuracy, -m.payload_bytes)).name
        elif mode in {m.name for m in modes}:
            self.mode = mode
        else:
            known = ", ".join(m.name for m in modes)
            raise UnknownMode(f"mode: the fixed controller has no mode {mode!r}; known: {known}", key="mode", mode=mode)
        self.run = run
        self.max_in_flight = run.max_in_flight
        self.name = f"fixed({self.mode})"

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        if in_flight_frames >= self.max_in_flight:
            return Decision(None, f"in-flight limit ({self.max_in_flight} frames)")
        return Decision(self.mode, "fixed")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


# ---------------------------------------------------------------------------------------------- ewma-greedy


@dataclass(frozen=True)
class EwmaGreedyOptions:
    """Options of :class:`EwmaGreedyController`: ``alpha`` = the EWMA's weight of the newest throughput sample;
    ``budget_fraction`` = the share of the deadline a mode's encoder and transfer must fit in; ``initial_bps`` =
    the estimate before the first sample (``None``: the lightest mode until then)."""

    alpha: float = 0.4
    budget_fraction: float = 0.8
    initial_bps: float | None = None

    def __post_init__(self) -> None:
        check(0 < self.alpha <= 1, "alpha", f"expected a number in (0, 1], got {self.alpha!r}")
        check(
            math.isfinite(self.budget_fraction) and self.budget_fraction > 0,
            "budget_fraction",
            f"expected a number > 0, got {self.budget_fraction!r}",
        )
        check(
            self.initial_bps is None or (math.isfinite(self.initial_bps) and self.initial_bps > 0),
            "initial_bps",
            f"expected a rate > 0 (bit/s), got {self.initial_bps!r}",
        )


class EwmaGreedyController(Controller):
    """The slimmable-ensemble paper's baseline: an EWMA (alpha 0.4) of the measured throughput, and per frame the
    most accurate mode with ``encoder_ms + 8 * payload / bandwidth < 0.8 * deadline``; if none qualifies, the
    lightest mode. It does not look at bytes in flight (the estimate itself does, see
    :class:`~slimsplit.control.estimators.TransferSampler`) and never skips except at the in-flight limit.
    ``rtt_ms``: the round trip measured by the client, taken out of the throughput samples (0 = unknown)."""

    name = "ewma-greedy"
    run: RunConfig

    def __init__(
        self,
        modes: Sequence[ModeOption],
        run: RunConfig,
        options: EwmaGreedyOptions | None = None,
        rtt_ms: float = 0.0,
    ) -> None:
        check_modes(modes)
        check(math.isfinite(rtt_ms) and rtt_ms >= 0, "rtt_ms", f"expected a number >= 0, got {rtt_ms!r}")
        opts = options or EwmaGreedyOptions()
        self.run = run
        self.options = opts
        self.modes = tuple(sorted(modes, key=lambda m: (-m.accuracy, m.payload_bytes)))
        self.lightest = min(modes, key=lambda m: (m.encoder_ms + m.payload_bytes * 1e-3, -m.accuracy))
        self.budget_ms = opts.budget_fraction * run.deadline_ms
        self.max_in_flight = run.max_in_flight
        self.initial_bps = opts.initial_bps
        self.sampler = TransferSampler(rtt_s=rtt_ms / 1000.0)
        self.estimator = EwmaEstimator(opts.alpha)

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        if in_flight_frames >= self.max_in_flight:
            return Decision(None, f"in-flight limit ({self.max_in_flight} frames)")
        bw = self.estimator.estimate() or self.initial_bps
        if bw is None:
            return Decision(self.lightest.name, "no estimate yet: lightest mode")
        for m in self.modes:
            if m.encoder_ms + 8000.0 * m.payload_bytes / bw < self.budget_ms:
                return Decision(m.name, "most accurate within 0.8 x deadline", bw)
        return Decision(self.lightest.name, "nothing fits: lightest mode", bw)

    def observe(self, feedback: FrameFeedback) -> None:
        s = self.sampler.sample(feedback)
        if s is not None:
            self.estimator.update(s.bps)


# ---------------------------------------------------------------------------------------------- MPC


@dataclass(frozen=True)
class MpcConfig:
    """Options of :class:`MpcController` (its docstring says how each one enters the decision; the deadline, the
    frame rate and the in-flight limit come from the run's :class:`~slimsplit.control.config.RunConfig`)."""

    samples: int = 16  # throughput samples that form the forecast distribution
    sample_span: int = 4  # a sample measures up to this many frames queued back to back (TransferSampler.span)
    quantiles: int = 8  # evaluate this many evenly spaced quantiles of them (0 = every sample)
    margin: float = 0.95  # a frame counts as in time in a scenario if it finishes within margin * deadline (the
    #                       risk knob: lower = fewer late frames, less accurate modes)
    late_penalty: float | None = None  # frames' worth of accuracy charged per late frame; None = 1 when one
    #                                    frame at a time (a late frame blocks the next one), else 0 (the
    #                                    follower term already charges the delay a frame causes)
    follower_penalty: float = 1.0  # frames' worth lost when the next frame could not make it behind this one
    waste_penalty: float = 1.0  # frames' worth charged per frame period of link time a late frame occupies
    switch_penalty: float = 0.001  # accuracy charged for changing mode (hysteresis against forecast noise)
    packet_bytes: float = 1500.0  # packetisation allowance of a transfer that starts on an idle link (0 = fluid)
    stall_detection: bool = True  # bound the scenarios by the progress of the oldest unconfirmed bytes
    stall_fraction: float = 0.5  # share of the scenarios (slowest first) the stall bound applies to: the rest
    #                              keep "the link may come back now" alive, so a stall does not starve cheap frames
    outage_after: float | None = 0.5  # outage: unconfirmed bytes are overdue (against the median scenario) by
    #                                   more than this many deadlines; then only the lightest mode or a skip is
    #                                   considered (None = never)
    horizon: int = 0  # frames planned: this one + horizon-1 followers; 0 = ceil(deadline * fps) + 1
    time_tolerance: float = 0.01  # plan only with modes not dominated once encoder/server times within this
    #                               fraction of the deadline count as equal (differences below it are noise)
    precompute_bps: tuple[float, float] | None = (8e3, 1e9)  # with fps known, the per-rate tables of this range
    #                                                         are built at construction, not during decisions

    def __post_init__(self) -> None:
        check(self.samples >= 1, "samples", f"expected an integer >= 1, got {self.samples!r}")
        check(self.sample_span >= 1, "sample_span", f"expected an integer >= 1, got {self.sample_span!r}")
        check(self.quantiles >= 0, "quantiles", f"expected an integer >= 0, got {self.quantiles!r}")
        check(0 < self.margin <= 2, "margin", f"expected a number in (0, 2], got {self.margin!r}")
        for name in ("follower_penalty", "waste_penalty", "switch_penalty", "packet_bytes"):
            value = getattr(self, name)
            check(value >= 0, name, f"expected a number >= 0, got {value!r}")
        for name in ("late_penalty", "outage_after"):
            value = getattr(self, name)
            check(value is None or value >= 0, name, f"expected a number >= 0, got {value!r}")
        check(
            0 <= self.stall_fraction <= 1, "stall_fraction", f"expected a number in [0, 1], got {self.stall_fraction!r}"
        )
        check(self.horizon >= 0, "horizon", f"expected an integer >= 0, got {self.horizon!r}")
        check(
            0 <= self.time_tolerance < 1, "time_tolerance", f"expected a number in [0, 1), got {self.time_tolerance!r}"
        )
        bps = self.precompute_bps
        check(
            bps is None or 0 < bps[0] <= bps[1] < math.inf,
            "precompute_bps",
            f"expected [low, high] rates (bit/s) with 0 < low <= high, got {bps!r}",
        )


def _planning_modes(modes: Sequence[ModeOption], tolerance_ms: float) -> tuple[ModeOption, ...]:
    """The Pareto modes (:func:`pareto_modes`) without those another mode dominates once encoder and server
    times within ``tolerance_ms`` count as equal: at least as accurate, no more bytes, strictly better in one."""
    front = pareto_modes(modes)
    return tuple(
        a
        for a in front
        if not any(
            b is not a
            and b.accuracy >= a.accuracy
            and b.payload_bytes <= a.payload_bytes
            and (b.accuracy > a.accuracy or b.payload_bytes < a.payload_bytes)
            and b.encoder_ms <= a.encoder_ms + tolerance_ms
            and b.server_ms <= a.server_ms + tolerance_ms
            for b in front
        )
    )


# _Table.idle_code counts the scenarios without a follower above this bit, the late ones below it
_NO_FOLLOWER_SHIFT = 20
_NO_FOLLOWER = 1 << _NO_FOLLOWER_SHIFT
_LATE_COUNT = _NO_FOLLOWER - 1


class _Table:
    """Per-scenario constants (see :meth:`MpcController._scenario_table`); ``subsets`` caches the rows of the
    modes evaluated in a decision (keyed by their indices)."""

    __slots__ = (
        "fit",
        "follow",
        "idle_base",
        "idle_code",
        "idle_ok",
        "idle_pos",
        "inv",
        "min_start",
        "neg_thetas",
        "rows",
        "subsets",
    )

    def __init__(
        self,
        inv: float,
        rows: list[tuple[float, float, float]],
        neg_thetas: list[float],
        follow: list[float],
        idle_ok: list[bool],
        idle_pos: list[int],
        fit: tuple[int, ...],
        acc: Sequence[float],
    ) -> None:
        self.inv = inv
        self.rows = rows  # per mode: idle start, latency on an idle link, offset when queued
        self.neg_thetas = neg_thetas  # the followers' value as a step function (see _scenario_table)
        self.follow = follow
        self.idle_ok = idle_ok  # per mode: in time on an idle link
        self.idle_pos = idle_pos  # per mode: the followers' step index on an idle link
        self.min_start = min(r[0] for r in rows)  # below this busy time every mode starts on an idle link
        self.fit = fit  # the modes in time on an idle link, and the lightest: those evaluated when this is the top
        self.subsets: dict[tuple[int, ...], list[tuple[float, float, float]]] = {}
        # every mode's value on an idle link, split so that decisions can sum it over scenarios in C: ``idle_base``
        # (its accuracy if in time, plus the followers' value if some follower fits) and ``idle_code`` (1 if it is
        # late, plus _NO_FOLLOWER if no follower fits: the terms that depend on the running mean accuracy, counted)
        self.idle_base = tuple(
            (a if ok else 0.0) + (follow[pos] if pos else 0.0)
            for a, ok, pos in zip(acc, idle_ok, idle_pos, strict=True)
        )
        self.idle_code = tuple(
            (0 if ok else 1) + (0 if pos else _NO_FOLLOWER) for ok, pos in zip(idle_ok, idle_pos, strict=True)
        )

    def subset(self, idx: tuple[int, ...]) -> list[tuple[float, float, float]]:
        """``rows`` of the modes ``idx`` (cached)."""
        sub = self.subsets.get(idx)
        if sub is None:
            sub = self.subsets[idx] = [self.rows[j] for j in idx]
        return sub


def _scenario_pairs(scenarios: Sequence[float], cap: float, n_capped: int) -> list[tuple[float, float, float]]:
    """The distinct scenarios as (rate until the latest evidence, rate after it, weight): the first ``n_capped``
    (the slowest; ``scenarios`` ascend) run at ``min(s, cap)`` throughout, the others at ``min(s, cap)`` and then
    ``s``. The last pair has the fastest rate after the evidence (every rate after it is at most its ``s``)."""
    pairs: list[tuple[float, float, float]] = []
    for i, s2 in enumerate(scenarios):
        s1 = s2 if s2 < cap else cap
        if i < n_capped:
            s2 = s1
        if pairs and pairs[-1][1] == s2 and pairs[-1][0] == s1:
            pairs[-1] = (s1, s2, pairs[-1][2] + 1.0)
        else:
            pairs.append((s1, s2, 1.0))
    return pairs


#: What the frames not confirmed yet say at a decision (see :class:`MpcController`: stall bound, outage):
#: (sent, bits) of each unconfirmed frame in send order, the last known departure from the uplink, the latest
#: evidence time, the bits admitted but not handed to the transport yet, the stall bound on the rate grid (inf:
#: none), outage. A plain tuple: a decision makes one, and a class would cost more than the arithmetic around it.
_Backlog = tuple[list[tuple[float, float]], float, float, float, float, bool]
#: The terms of the objective in the running mean accuracy ``A``: A, the charge per late frame, the charge per bit
#: a late frame puts on the link, the followers' value when none of them fits.
_Prices = tuple[float, float, float, float]


_SENT, _BITS, _POST, _SEEN = 0, 1, 2, 3  # fields of a queue entry (a small list, for speed)
_GRID = 0.02  # scenario rates are rounded to a logarithmic grid of 2% steps, so per-rate tables are reused
_CACHE_MAX = 4096  # per-rate tables kept (the precomputed range alone is about 590)


def _on_grid(bps: float, down: bool = False) -> float:
    """``bps`` on the rate grid (nearest point, or the point below with ``down``)."""
    x = math.log(bps) / _GRID
    return math.exp((math.floor(x) if down else round(x)) * _GRID)


class MpcController(Controller):
    """Risk-aware model-predictive mode selection over a queue model of the uplink.

    **Forecast.** Each completed frame yields a throughput sample (:class:`TransferSampler`: server time,
    propagation delay and the wait behind earlier frames excluded; a frame that found the link idle is credited
    ``packet_bytes`` for the wait for the next delivery opportunity; frames queued back to back are measured
    together over up to ``sample_span`` departures, because on a packet-opportunity link small frames leave several
    in one opportunity and per-frame intervals swing by 100x). The last ``samples`` of them, reduced to
    ``quantiles`` evenly spaced quantiles ``s_1..s_Q`` and rounded to a 2% logarithmic grid (so per-rate tables
    are reused), are the scenarios for the next transfer: the forecast is a distribution, not a point (the
    cellular traces move by 10x within a second, so one number cannot be both safe and accurate; this replaces
    robustMPC's single discounted harmonic mean).

    **Queue (awareness of bytes in flight, including expired frames).** The controller keeps every frame it sent
    whose departure from the uplink is not confirmed, in send order: frames waiting for their reply, and frames
    the edge stopped waiting for (a failed or expired frame: the live client frees its slot at the deadline, but
    its bytes were handed to the transport and stay queued ahead of every later frame; consecutive expired frames
    are merged into one entry). A completed frame confirms every frame sent before it (FIFO); the bytes of expired
    ones among them are credited to its throughput sample. Each unconfirmed frame carries *evidence*: it had not
    left the uplink by ``e = now - rtt - server`` (waiting for its reply) or by ``expired - rtt - server``.

    **Stall bound.** With the oldest unconfirmed bytes entering the link at ``t0`` (``max(sent, last known
    departure)``) and ``B_j`` the unconfirmed bits up to and including frame ``j`` (plus the packet allowance if
    the first found the link idle), the link carried fewer than ``B_j`` bits in ``e_j - t0``, so its rate is
    below ``cap = min_j B_j / (e_j - t0)``: a stall is seen from the age of the oldest unanswered bytes, without
    waiting for completions that never come.

    **Outage.** The unconfirmed bytes are overdue against the median scenario ``s_med`` (``max_j e_j - t0 - B_j /
    s_med``) by more than ``outage_after`` deadlines, or the oldest unconfirmed frame expired unanswered (once the
    backlog exceeds the deadline no reply comes back in time: the forecast is stale and the edge is blind). Then
    only the lightest mode or a skip is considered: an outage is probed with the fewest bytes (every byte sent into
    it delays the frames after it, and a cheap frame sent just before the link returns is a hit), and the full
    choice returns with the first confirmed departure.

    **Drain.** In scenario ``s`` the link runs at ``min(s, cap)`` until the latest evidence time; after it, the
    slowest ``stall_fraction`` of the scenarios stay at that rate (the stall goes on) and the others run at ``s``
    (the link comes back now). The unconfirmed frames drain FIFO from the last known departure ``d``:
    ``d = max(d, sent + 8 packet / s) + 8 b / s``; bytes admitted but not yet sent join at ``now``.
    ``r = d - now`` is how long the uplink stays busy.

    **Prediction.** Mode ``m``: latency ``L = max(r, enc_m + 8 packet / s) + 8 p_m / s + rtt + server_m`` (the
    frame waits for the queue, or for the next opportunity of an idle link). In time iff ``L <= margin * deadline``.

    **Horizon.** The next ``H - 1`` frames (``H = ceil(deadline * fps) + 1`` unless ``horizon`` is set; spacing
    ``T = 1 / fps``) are assumed to use one steady mode ``k``. Their worst latency is
    ``max(dep - now - T, enc_k + 8 packet / s) + x_k + rtt + server_k + max(0, (H - 2)(x_k - T))`` with
    ``x_k = 8 p_k / s`` and ``dep`` this frame's departure (its completion, one frame at a time): the first
    follower waits for it, and if ``x_k > T`` the queue grows frame after frame. ``R_s(m)`` is the accuracy of the
    best ``k`` that keeps them in time, ``-follower_penalty * A`` if none does. Precomputed per scenario as a step
    function of ``dep`` (one bisection per mode).

    **Objective.** ``U(m) = mean_s( [L <= budget] acc_m - [L > budget] (late_penalty A + waste_penalty A x_m / T)
    + (H - 1) R_s(m) ) - switch_penalty [m != previous]``, with ``A`` the running mean accuracy of the chosen modes
    and ``x_m = 8 p_m / s_med`` the link time the frame's bytes take when the link works: a late frame is charged
    for the frame periods of link time it wastes (the terminal cost of the bytes it leaves behind, beyond the
    horizon), so the controller never pays link time for a frame it expects to be late. *Skipping is an option of
    the same objective*: ``U(skip) = mean_s((H - 1) R_s(skip))``, the followers facing only the bytes already in
    flight; a frame is skipped exactly when its bytes would cost more than it can deliver (and the reason names
    the prediction). The follower term is the uncertainty-aware replacement for a fixed safety margin;
    ``late_penalty`` charges a late frame for the frames it delays (with one frame in flight it blocks the next
    one). This adapts to the mode table: where one more bit buys a lot of accuracy it accepts more risk, where the
    gain is small it stays safe. The switching penalty adds hysteresis against forecast noise.

    Modes whose only advantage is an encoder or server time shorter by less than ``time_tolerance`` deadlines are
    not planned with (measurement noise; fewer modes, faster decisions). With no sample yet it sends the lightest
    mode; with no frame waiting for a reply and a forecast that nothing fits it still sends the lightest mode (the
    forecast only learns from frames, and a skipped frame is a certain miss). At ``max_in_flight`` frames in
    flight it always skips.

    **Cost.** O(Q * (K + M)) arithmetic per decision (Q scenarios, K unconfirmed frames, M modes). The per-rate
    tables (latencies on an idle link, the followers' step functions) are built once per rate of the 2% grid; with
    the frame rate known they are built at construction for every grid rate in ``precompute_bps`` (about 590
    tables, 10-15 ms), so no decision builds one. Where the link is idle for every mode in a scenario (the common
    case) the scenario's values come from its table and are summed over the scenarios in C; only the terms in the
    running mean accuracy are added per mode. Measured: BENCHMARKS.md section 4 (decision time).
    """

    name = "mpc"
    run: RunConfig

    def __init__(
        self,
        modes: Sequence[ModeOption],
        run: RunConfig,
        config: MpcConfig | None = None,
        rtt_ms: float = 0.0,
    ) -> None:
        check_modes(modes)
        check(math.isfinite(rtt_ms) and rtt_ms >= 0, "rtt_ms", f"expected a number >= 0, got {rtt_ms!r}")
        self.run = run
        deadline_ms = run.deadline_ms
        self.config = cfg = config or MpcConfig()
        self.modes = _planning_modes(modes, cfg.time_tolerance * deadline_ms)  # most accurate first
        self.lightest = min(self.modes, key=lambda m: (m.payload_bytes, m.encoder_ms + m.server_ms))
        self.deadline_s = deadline_ms / 1000.0
        self.budget_s = cfg.margin * self.deadline_s
        self.rtt_s = rtt_ms / 1000.0
        self.sampler = TransferSampler(rtt_s=self.rtt_s, packet_bytes=cfg.packet_bytes, span=cfg.sample_span)
        self._samples: deque[float] = deque(maxlen=cfg.samples)
        self._estimate: float | None = None  # harmonic mean of the samples (for display), updated with them
        self._scenarios: list[float] = []
        self._pairs: list[tuple[float, float, float]] = []  # _scenario_pairs of the scenarios without a stall bound
        self._evaluated: dict[tuple[int, ...], list[tuple[float, float, float]]] = {}
        self._post_of = {m.name: self.rtt_s + m.server_ms / 1000.0 for m in modes}
        self._pkt_bits = 8.0 * cfg.packet_bytes
        # per Pareto mode (most accurate first), as flat lists for the inner loop
        self._names = [m.name for m in self.modes]
        self._acc = [m.accuracy for m in self.modes]
        self._enc = [m.encoder_ms / 1000.0 for m in self.modes]
        self._bits = [8.0 * m.payload_bytes for m in self.modes]
        self._post = [self.rtt_s + m.server_ms / 1000.0 for m in self.modes]  # after departure: rtt + server
        self._slack = [self.budget_s - p for p in self._post]  # budget left for the transfer of a follower
        self._light_j = self._names.index(self.lightest.name)
        self._cache: dict[float, _Table] = {}
        self._cache_key: tuple[float, int] | None = None
        # frames sent whose departure is not confirmed, in send order: id -> [sent, bits, rtt + server, seen]
        # with seen = time by which it had provably not left (-inf while waiting for its reply: then now - post)
        self._queue: dict[int, list[float]] = {}
        self._last_orphan: int | None = None  # id of the (merged) entry of the expired frames at the queue head
        self._prev: str | None = None
        self._ref_acc = sorted(m.accuracy for m in self.modes)[len(self.modes) // 2]  # A: starts at the median
        self._mode_rows: list[tuple[float, float, float]] = []
        self._last_now: float | None = None
        self._period = 1.0 / run.fps if run.fps > 0 else 0.0
        self._fixed_period = round(self._period, 3)  # 0 = learned from the spacing of choose()
        self.last_cap_bps = math.inf  # the stall bound of the last decision (for display and tests)
        if self._fixed_period > 0:  # the frame spacing is known: plan for it now, and build the usual rates' tables
            period = self._fixed_period
            self._set_timing(period, cfg.horizon or (math.ceil(self.deadline_s / period - 1e-9) + 1))
            if cfg.precompute_bps is not None:
                self._precompute(*cfg.precompute_bps)

    # ------------------------------------------------------------------ feedback
    def on_sent(self, frame_id: int, mode: str, payload_bytes: int, sent_at: float) -> None:
        self._queue[frame_id] = [sent_at, 8.0 * payload_bytes, self._post_of.get(mode, self.rtt_s), -math.inf]

    def observe(self, feedback: FrameFeedback) -> None:
        queue = self._queue
        entry = queue.get(feedback.frame_id)
        if not feedback.ok:
            # expired or failed: the edge stopped waiting, but its bytes may still be queued in the link; all we
            # know is that they had not left by (no reply at) completed - rtt - server
            if entry is not None and entry[_SEEN] == -math.inf:
                entry[_SEEN] = feedback.completed_at - entry[_POST]
                # expired frames form a prefix of the queue (they expire in send order): merge this one into the
                # one before it, so a long outage leaves one entry, not one per frame (bounded decision time)
                before = self._last_orphan
                if before is not None and before in queue and before != feedback.frame_id:
                    prev = queue[before]
                    prev[_BITS] += entry[_BITS]
                    prev[_SEEN] = entry[_SEEN]
                    del queue[feedback.frame_id]
                else:
                    self._last_orphan = feedback.frame_id
            return
        # FIFO: every frame sent before this one has left the uplink as well
        ahead_bits = 0.0
        ahead_sent = math.inf
        if entry is not None:
            for fid in list(queue):
                e = queue.pop(fid)
                if fid == feedback.frame_id:
                    break
                if e[_SEEN] != -math.inf:  # expired ahead of this frame: its bytes crossed in the same interval
                    ahead_bits += e[_BITS]
                    ahead_sent = min(ahead_sent, e[_SENT])
        s = self.sampler.sample(feedback, ahead_bits / 8.0, ahead_sent)
        if s is not None and s.bps > 0 and math.isfinite(s.bps):
            self._samples.append(s.bps)
            self._estimate = len(self._samples) / sum(1.0 / x for x in self._samples)
            ordered = sorted(self._samples)
            q = self.config.quantiles
            n = len(ordered)
            if len(self._cache) > _CACHE_MAX:  # bounded: the grid makes rates repeat, so this is rare
                self._cache = {}
            picked = ordered if q <= 0 or n <= q else [ordered[int((i + 0.5) * n / q)] for i in range(q)]
            self._scenarios = [_on_grid(x) for x in picked]
            self._pairs = _scenario_pairs(self._scenarios, math.inf, 0)

    def estimate_bps(self) -> float | None:
        """Harmonic mean of the recent samples (for display)."""
        return self._estimate

    @property
    def unconfirmed_frames(self) -> int:
        """Frames sent whose departure from the uplink is not confirmed (waiting for a reply, or expired)."""
        return len(self._queue)

    # ------------------------------------------------------------------ decision
    def _frame_period(self, now: float) -> float:
        if self.run.fps > 0:
            return self._period
        if self._last_now is not None and now > self._last_now:
            gap = now - self._last_now
            self._period = gap if self._period <= 0 else 0.8 * self._period + 0.2 * gap
        self._last_now = now
        return self._period if self._period > 0 else self.deadline_s

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        """One decision, in phases (see the class docstring): what the unconfirmed frames say (stall bound,
        outage), the horizon and the prices of the objective, the drain scenarios, the modes worth evaluating,
        their values over the scenarios, the best of them against a skip, and the answer (send, probe or skip)."""
        # ms resolution keeps the per-scenario tables cacheable
        period = self._fixed_period if self._fixed_period > 0 else round(self._frame_period(now), 3)
        limit = self.run.max_in_flight
        if in_flight_frames >= limit:
            return Decision(None, f"in-flight limit ({limit} frames)")
        if not self._scenarios:
            return self._send(self.lightest.name, "no estimate yet: lightest mode", None, None)
        backlog = self._backlog(now, in_flight_bytes)
        cap, outage = backlog[4], backlog[5]
        h = self._horizon(period)
        prices = self._prices(period, h)
        pairs = self._drain_pairs(cap)
        idx = (self._light_j,) if outage else self._fitting(pairs, period, h, prices[0])
        skip_gain, gains, busy = self._values(now, backlog, pairs, idx, period, h, prices)
        best_k = self._best(idx, gains, skip_gain)
        return self._answer(best_k, idx, busy, cap, outage, in_flight_bytes, in_flight_frames, prices[0])

    def _backlog(self, now: float, in_flight_bytes: int) -> _Backlog:
        """The stall bound and the outage test from the unconfirmed frames (see the class docstring)."""
        cfg = self.config
        scenarios = self._scenarios
        pkt = self._pkt_bits
        d0 = self.sampler.last_departure
        entries = list(self._queue.values())
        # evidence of a stall: the unconfirmed bits up to frame j had not all left by its evidence time
        cap = math.inf
        overdue = 0.0  # how far the slowest evidence is behind the median scenario, seconds
        inv_med = 1.0 / scenarios[len(scenarios) // 2]
        live_bits = 0.0
        seen_last = -math.inf  # the latest evidence time
        if entries:
            first = entries[0][_SENT]
            t0 = first if first > d0 else d0
            cum = pkt if first >= d0 else 0.0
            for e in entries:
                cum += e[_BITS]
                seen = e[_SEEN]
                if seen == -math.inf:
                    live_bits += e[_BITS]
                    seen = now - e[_POST]
                if seen > t0:
                    c = cum / (seen - t0)
                    if c < cap:
                        cap = c
                    late_by = seen - t0 - cum * inv_med
                    if late_by > overdue:
                        overdue = late_by
                if seen > seen_last:
                    seen_last = seen
            if not cfg.stall_detection:
                cap = math.inf
        unsent_bits = 8.0 * in_flight_bytes - live_bits
        # outage: bytes overdue against the forecast, or a frame that expired unanswered is still unconfirmed
        # (then the forecast is stale: replies stop once the backlog exceeds the deadline, the edge is blind)
        outage = cfg.outage_after is not None and (
            overdue > cfg.outage_after * self.deadline_s or (bool(entries) and entries[0][_SEEN] != -math.inf)
        )
        self.last_cap_bps = cap
        if cap < math.inf:
            cap = _on_grid(cap, down=True)  # an upper bound: rounded down
        queue = [(e[_SENT], e[_BITS]) for e in entries]
        return queue, d0, seen_last, unsent_bits, cap, outage

    def _horizon(self, period: float) -> int:
        """Frames planned (this one and its followers) at frame spacing ``period``; the per-rate tables follow the
        spacing and the horizon (a change of either drops them)."""
        h = self.config.horizon or (math.ceil(self.deadline_s / period - 1e-9) + 1)
        if self._cache_key != (period, h):
            self._set_timing(period, h)
        return h

    def _prices(self, period: float, h: int) -> _Prices:
        """What a late frame and a missing follower cost, in the running mean accuracy ``A``."""
        cfg = self.config
        ref = self._ref_acc
        one_at_a_time = self.run.max_in_flight == 1
        late_penalty = cfg.late_penalty if cfg.late_penalty is not None else (1.0 if one_at_a_time else 0.0)
        late_cost = late_penalty * ref
        # a late frame's bytes still take the link when it works (at about the median rate): that time, in frame
        # periods, is charged as lost frames, so the controller never pays link time for a frame it expects late
        inv_med = 1.0 / self._scenarios[len(self._scenarios) // 2]
        waste = cfg.waste_penalty * ref * inv_med / period
        none_v = -(h - 1) * cfg.follower_penalty * ref
        return ref, late_cost, waste, none_v

    def _drain_pairs(self, cap: float) -> list[tuple[float, float, float]]:
        """Distinct scenarios as (rate until the evidence time, rate after it, weight): the link carried at most
        the stall bound until then; the slowest ones stay stalled, the others come back now at their rate."""
        if cap == math.inf:
            return self._pairs  # no stall bound: they depend on the samples only (made when they change)
        scenarios = self._scenarios
        return _scenario_pairs(scenarios, cap, math.ceil(self.config.stall_fraction * len(scenarios) - 1e-9))

    def _fitting(self, pairs: list[tuple[float, float, float]], period: float, h: int, ref: float) -> tuple[int, ...]:
        """The modes evaluated outside an outage: those in time on an idle link at the fastest scenario (one late
        in every scenario is never better than a skip: it only delays the followers), and the lightest (the
        probe). The fastest scenario is the last pair's (scenarios ascend; see _scenario_pairs)."""
        s_top = pairs[-1][1]
        top = self._cache.get(s_top)
        if top is None:  # tables are made on first use and cached (precomputed when the frame rate is known)
            top = self._cache[s_top] = self._scenario_table(s_top, period, h, ref)
        return top.fit

    def _values(
        self,
        now: float,
        backlog: _Backlog,
        pairs: list[tuple[float, float, float]],
        idx: tuple[int, ...],
        period: float,
        h: int,
        prices: _Prices,
    ) -> tuple[float, list[float], list[tuple[float, float, _Table]]]:
        """Per scenario, the value of skipping and of each mode ``idx`` (summed over the scenarios), and the busy
        time of the uplink with its weight and table (for the latency shown)."""
        ref, late_cost, waste, none_v = prices
        queue, d0, seen_last, unsent_bits, _, _ = backlog
        pkt = self._pkt_bits
        budget = self.budget_s
        cache = self._cache
        every = len(idx) == len(self._mode_rows)
        ev = self._evaluated.get(idx)  # per mode evaluated: accuracy, follower offset, bits
        if ev is None:
            ev = self._evaluated[idx] = self._mode_rows if every else [self._mode_rows[j] for j in idx]
        late_vals = [-late_cost - waste * row[2] for row in ev]  # the value of a mode's frame when it is late
        gains = [0.0] * len(ev)
        skip_gain = 0.0
        idle_base: list[tuple[float, ...]] = []  # the idle terms of the scenarios where every mode finds it idle
        idle_code: list[tuple[int, ...]] = []
        busy: list[tuple[float, float, _Table]] = []  # (r, weight, table) per scenario: the choice's latency
        for s1, s2, w in pairs:
            table = cache.get(s2)
            if table is None:
                table = cache[s2] = self._scenario_table(s2, period, h, ref)
            inv, neg_thetas, follow = table.inv, table.neg_thetas, table.follow
            follow[0] = none_v  # the followers' value when none fits depends on A (it moves; the rest does not)
            d = d0
            if queue:
                inv1 = 1.0 / s1
                wait = pkt * inv1  # an idle link: the wait for the next delivery opportunity
                for sent, nbits in queue:
                    t = sent + wait
                    d = (t if t > d else d) + nbits * inv1
                if s1 != s2 and d > seen_last:  # what is left at the evidence time drains at the scenario's rate
                    d = seen_last + (d - seen_last) * s1 * inv
            if unsent_bits > 0:
                t = now + pkt * inv
                d = (t if t > d else d) + unsent_bits * inv
            r = d - now  # the uplink is busy for r more seconds in this scenario
            busy.append((r, w, table))
            # skipping is an option too: the followers then face only the bytes already in flight
            skip_gain += w * follow[bisect_right(neg_thetas, period - (r if r > 0 else 0.0))]
            # per mode: latency = max(busy, idle start) + offset; value = accuracy if in time, else the late
            # value; plus the followers' value (they fit iff their start - next capture <= theta)
            if r <= table.min_start:  # every mode starts on an idle link: latencies and steps are precomputed
                if w == 1.0:
                    idle_base.append(table.idle_base)
                    idle_code.append(table.idle_code)
                else:  # w equal scenarios (an integer count)
                    idle_base.extend([table.idle_base] * round(w))
                    idle_code.extend([table.idle_code] * round(w))
            else:
                rows = table.rows if every else table.subset(idx)
                gains = [
                    acc_sum
                    + w
                    * (
                        (acc if (lat := (idle_lat if start >= r else r + off)) <= budget else late)
                        + follow[bisect_right(neg_thetas, f_off - lat)]
                    )
                    for acc_sum, (start, idle_lat, off), (acc, f_off, _), late in zip(
                        gains, rows, ev, late_vals, strict=True
                    )
                ]
        if idle_base:  # the idle scenarios' values summed per mode (in C), then the terms in A added once
            base_sum = list(map(sum, zip(*idle_base, strict=True)))
            code_sum = list(map(sum, zip(*idle_code, strict=True)))
            if not every:
                base_sum = [base_sum[j] for j in idx]
                code_sum = [code_sum[j] for j in idx]
            gains = [
                g + b + late * (c & _LATE_COUNT) + none_v * (c >> _NO_FOLLOWER_SHIFT)
                for g, b, c, late in zip(
                    gains,
                    base_sum,
                    code_sum,
                    late_vals,
                    strict=True,
                )
            ]
        return skip_gain, gains, busy

    def _best(self, idx: tuple[int, ...], gains: list[float], skip_gain: float) -> int:
        """The position in ``idx`` of the mode of the highest mean value (the switching penalty charged), or -1
        when skipping is worth more."""
        n = float(len(self._scenarios))
        best_k = -1
        best_u = skip_gain / n
        prev = self._prev
        names = self._names
        switch_penalty = self.config.switch_penalty
        for k, (j, g) in enumerate(zip(idx, gains, strict=True)):
            u = g / n
            if prev is not None and names[j] != prev:
                u -= switch_penalty
            if u > best_u + 1e-12:
                best_u, best_k = u, k
        return best_k

    def _mean_latency(self, busy: list[tuple[float, float, _Table]], j: int) -> float:
        """The mean over the scenarios of mode ``j``'s latency, seconds."""
        total = 0.0
        for r, w, table in busy:
            start, idle_lat, off = table.rows[j]
            total += w * (idle_lat if start >= r else r + off)
        return total / float(len(self._scenarios))

    def _answer(
        self,
        best_k: int,
        idx: tuple[int, ...],
        busy: list[tuple[float, float, _Table]],
        cap: float,
        outage: bool,
        in_flight_bytes: int,
        in_flight_frames: int,
        ref: float,
    ) -> Decision:
        """The decision for the best choice: send it, probe with the lightest mode, or skip (with the reason)."""
        est = self._estimate
        if est is not None and cap < est:
            est = cap
        light = self._light_j
        if best_k < 0 and in_flight_frames == 0:
            # nothing waiting for a reply and a forecast that says nothing makes it: the forecast may be stale (it
            # only learns from frames), and a skipped frame is a certain miss, so send the lightest mode
            lat = self._mean_latency(busy, light)
            return self._send(self.lightest.name, "probe: forecast says nothing fits, link idle", est, lat)
        if best_k < 0:
            light_lat = self._mean_latency(busy, light) * 1e3
            return Decision(
                None,
                f"no mode is worth sending (lightest ~{light_lat:.0f} ms for a {self.deadline_s * 1e3:.0f} ms "
                f"deadline; estimate {(est or 0) / 1e3:.0f} kbit/s, {in_flight_bytes} B in flight"
                f"{', outage' if outage else ''})",
                est,
            )
        best_j = idx[best_k]
        self._ref_acc = 0.95 * ref + 0.05 * self._acc[best_j]
        lat = self._mean_latency(busy, best_j)
        return self._send(self._names[best_j], "mpc: outage, lightest mode" if outage else "mpc", est, lat)

    def _set_timing(self, period: float, h: int) -> None:
        """Start planning with frame spacing ``period`` and horizon ``h``: drops the tables made for others."""
        self._cache = {}
        self._evaluated = {}
        self._cache_key = (period, h)
        # per mode: accuracy and follower offset (the followers start when this frame has left the uplink,
        # dep = lat - post, or, one frame at a time, when it has completed)
        one_at_a_time = self.run.max_in_flight == 1
        self._mode_rows = [
            (acc, period + (0.0 if one_at_a_time else post), bits)
            for acc, post, bits in zip(self._acc, self._post, self._bits, strict=True)
        ]

    def _precompute(self, lo_bps: float, hi_bps: float) -> None:
        """Build the scenario tables of every grid rate in ``[lo_bps, hi_bps]`` now (the frame rate is known), so
        that no decision pays for one (a table costs more than a whole decision)."""
        assert self._cache_key is not None
        period, h = self._cache_key
        k = math.ceil(math.log(lo_bps) / _GRID - 1e-9)
        while (rate := math.exp(k * _GRID)) <= hi_bps * (1 + 1e-12):
            s = _on_grid(rate)
            if s not in self._cache:
                self._cache[s] = self._scenario_table(s, period, h, self._ref_acc)
            k += 1

    def _scenario_table(self, s: float, period: float, h: int, ref: float) -> _Table:
        """Per-scenario constants (cached until the samples change): ``1 / s``; per mode the busy time below which
        the link counts as idle (``enc + packet / s``), the latency on an idle link (``enc + (bits + packet) / s +
        rtt + server``) and the offset added to the busy time when queued (``bits / s + rtt + server``): the
        latency is ``max(busy, enc + packet / s) + bits / s + rtt + server``. And the followers' value as a step
        function of this frame's departure: mode k keeps the ``h - 1`` next frames in time iff ``dep -
        next_capture <= theta_k`` (and its idle-link latency fits as well), so the best follower accuracy is the
        prefix maximum over thresholds sorted in descending order: returned as -thresholds ascending and
        ``(h - 1) *`` the value for 0, 1, 2, ... thresholds met (``-follower_penalty * A`` for none)."""
        inv = 1.0 / s if s > 0 else 1e12
        wait = self._pkt_bits * inv
        rows = [
            (e + wait, e + wait + b * inv + p, b * inv + p)
            for e, b, p in zip(self._enc, self._bits, self._post, strict=True)
        ]
        followers = h - 1
        grow = max(0, h - 2)
        pairs = []
        if followers > 0:
            for k in range(len(self._acc)):
                x = self._bits[k] * inv
                theta = self._slack[k] - x - (grow * (x - period) if x > period else 0.0)
                if rows[k][0] <= theta:
                    pairs.append((-theta, self._acc[k]))
            pairs.sort()
        neg_thetas: list[float] = []
        follow = [-followers * self.config.follower_penalty * ref]  # replaced by the caller with the current A
        top = -math.inf
        for neg, acc_k in pairs:
            top = acc_k if acc_k > top else top
            neg_thetas.append(neg)
            follow.append(followers * top)
        # on an idle link (busy time <= every start) the latency of mode j is its idle latency: precompute whether
        # it is in time and where its followers land on the step function
        budget = self.budget_s
        idle_ok = [row[1] <= budget for row in rows]
        idle_pos = [
            bisect_right(neg_thetas, mode_row[1] - row[1]) for row, mode_row in zip(rows, self._mode_rows, strict=True)
        ]
        fit = tuple(j for j, ok in enumerate(idle_ok) if ok or j == self._light_j)
        return _Table(inv, rows, neg_thetas, follow, idle_ok, idle_pos, fit, self._acc)

    def _send(self, mode: str, reason: str, bw: float | None, lat: float | None) -> Decision:
        self._prev = mode
        return Decision(mode, reason, bw, None if lat is None else lat * 1e3)


__all__ = [
    "EwmaGreedyController",
    "EwmaGreedyOptions",
    "FixedController",
    "FixedOptions",
    "MpcConfig",
    "MpcController",
]
