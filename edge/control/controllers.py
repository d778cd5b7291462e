"""The controllers: ``fixed``, ``ewma-greedy`` (published baseline), ``mpc`` (this project's) and ``oracle``.

All of them implement :class:`~slimsplit.edge.control.base.Controller` and see only what the edge can measure;
``oracle`` replays a plan computed from the trace itself (:mod:`slimsplit.edge.control.oracle`) and is for
evaluation only. :func:`make_controller` builds any of them by name.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from slimsplit.edge.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.edge.control.estimators import EwmaEstimator, TransferSampler
from slimsplit.edge.control.modes import check_modes, pareto_modes
from slimsplit.errors import ConfigError, UnknownMode

# ---------------------------------------------------------------------------------------------- fixed


class FixedController(Controller):
    """Always the same mode (default: the most accurate one). Skips only at the in-flight limit."""

    name = "fixed"

    def __init__(
        self, modes: Sequence[ModeOption], deadline_ms: float, mode: str | None = None, max_in_flight: int = 4
    ) -> None:
        check_modes(modes)
        if mode is None:
            self.mode = max(modes, key=lambda m: (m.accuracy, -m.payload_bytes)).name
        elif mode in {m.name for m in modes}:
            self.mode = mode
        else:
            raise UnknownMode(f"fixed controller: no mode {mode!r}; known: {', '.join(m.name for m in modes)}")
        self.max_in_flight = max_in_flight
        self.name = f"fixed({self.mode})"

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        if in_flight_frames >= self.max_in_flight:
            return Decision(None, f"in-flight limit ({self.max_in_flight} frames)")
        return Decision(self.mode, "fixed")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


# ---------------------------------------------------------------------------------------------- ewma-greedy


class EwmaGreedyController(Controller):
    """The slimmable-ensemble paper's baseline: an EWMA (alpha 0.4) of the measured throughput, and per frame the
    most accurate mode with ``encoder_ms + 8 * payload / bandwidth < 0.8 * deadline``; if none qualifies, the
    lightest mode. It does not look at bytes in flight (the estimate itself does, see
    :class:`~slimsplit.edge.control.estimators.TransferSampler`) and never skips except at the in-flight limit."""

    name = "ewma-greedy"

    def __init__(
        self,
        modes: Sequence[ModeOption],
        deadline_ms: float,
        alpha: float = 0.4,
        budget_fraction: float = 0.8,
        rtt_ms: float = 0.0,
        max_in_flight: int = 4,
        initial_bps: float | None = None,
    ) -> None:
        check_modes(modes)
        self.modes = tuple(sorted(modes, key=lambda m: (-m.accuracy, m.payload_bytes)))
        self.lightest = min(modes, key=lambda m: (m.encoder_ms + m.payload_bytes * 1e-3, -m.accuracy))
        self.budget_ms = budget_fraction * deadline_ms
        self.max_in_flight = max_in_flight
        self.initial_bps = initial_bps
        self.sampler = TransferSampler(rtt_s=rtt_ms / 1000.0)
        self.estimator = EwmaEstimator(alpha)

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
    """Options of :class:`MpcController` (its docstring says how each one enters the decision)."""

    samples: int = 8  # throughput samples that form the forecast distribution
    quantiles: int = 8  # evaluate this many evenly spaced quantiles of them (0 = every sample)
    margin: float = 1.0  # a frame counts as in time in a scenario if it finishes within margin * deadline
    late_penalty: float | None = None  # frames' worth of accuracy charged per late frame; None = 1 when one
    #                                    frame at a time (a late frame blocks the next one), else 0 (the
    #                                    follower term already charges the delay a frame causes)
    follower_penalty: float = 1.0  # frames' worth lost when the next frame could not make it behind this one
    switch_penalty: float = 0.001  # accuracy charged for changing mode (hysteresis against forecast noise)
    rtt_ms: float = 0.0  # round-trip propagation time, measured by the client (0 = unknown, conservative)
    max_in_flight: int = 4  # never more frames than this in flight
    fps: float = 0.0  # frame rate (spacing of the follower frame); 0 = learn it from the spacing of choose()
    packet_bytes: float = 1500.0  # packetisation allowance of a transfer that starts on an idle link (0 = fluid)
    stall_detection: bool = True  # bound the scenarios by the progress of the oldest frame in flight
    stall_fraction: float = 0.5  # share of the scenarios (slowest first) the stall bound applies to: the rest
    #                              keep "the link may come back now" alive, so a stall does not starve cheap frames
    horizon: int = 0  # frames planned: this one + horizon-1 followers; 0 = ceil(deadline * fps) + 1

    def __post_init__(self) -> None:
        if self.samples < 1 or self.quantiles < 0 or not 0 < self.margin <= 2 or self.switch_penalty < 0:
            raise ConfigError(f"bad MPC options: {self}")
        if (self.late_penalty or 0.0) < 0 or self.follower_penalty < 0 or self.max_in_flight < 1 or self.rtt_ms < 0:
            raise ConfigError(f"bad MPC options: {self}")
        if self.fps < 0 or self.packet_bytes < 0 or self.horizon < 0 or not 0 <= self.stall_fraction <= 1:
            raise ConfigError(f"bad MPC options: {self}")


class MpcController(Controller):
    """Risk-aware model-predictive mode selection over a queue model of the uplink.

    **Forecast.** Each completed frame yields a throughput sample (:class:`TransferSampler`: server time,
    propagation delay and the wait behind earlier frames excluded; a frame that found the link idle is credited
    ``packet_bytes`` for the wait for the next delivery opportunity). The last ``samples`` of them, reduced to
    ``quantiles`` evenly spaced quantiles ``s_1..s_Q``, are the scenarios for the next transfer: the forecast is a
    distribution, not a point (the cellular traces move by 10x within a second, so one number cannot be both safe
    and accurate; this replaces robustMPC's single discounted harmonic mean). *Stall bound:* if the oldest frame in
    flight started transmitting at ``t0`` (``max(sent, last known departure)``) and has not completed although
    ``e = now - t0 - rtt - server > 0``, the link carried fewer than its ``b0`` bytes in ``e`` seconds, so the
    slowest ``stall_fraction`` of the scenarios are capped at ``8 b0 / e``: an outage is seen within a frame or
    two, without waiting for completions that never come, while the other scenarios keep "the link comes back
    now" possible (outages end without warning, and a cheap frame sent just before that is a hit).

    **Queue (awareness of bytes in flight).** In scenario ``s`` the frames in flight drain FIFO at ``s`` from the
    last known departure ``d``: ``d = sent + 8 (b + packet) / s`` for a frame that found the link idle, else
    ``d + 8 b / s`` (send order; bytes admitted but not yet sent join at ``now``). ``r = d - now`` is how long the
    uplink stays busy.

    **Prediction.** Mode ``m``: latency ``L = enc_m + 8 (p_m + packet) / s + rtt + server_m`` if the encoder
    finishes after the queue drained (``enc_m >= r``), else ``r + 8 p_m / s + rtt + server_m``. In time iff
    ``L <= margin * deadline``.

    **Horizon.** The next ``H - 1`` frames (``H = ceil(deadline * fps) + 1`` unless ``horizon`` is set; spacing
    ``T = 1 / fps``) are assumed to use one steady mode ``k``. Their worst latency is
    ``max(dep - now - T, enc_k) + x_k + rtt + server_k + max(0, (H - 2)(x_k - T))`` with ``x_k = 8 p_k / s`` and
    ``dep`` this frame's departure (the first follower waits for it; if ``x_k > T`` the queue grows frame after
    frame). ``R_s(m)`` is the accuracy of the best ``k`` that keeps them in time, ``-follower_penalty * A`` if none
    does. Precomputed per scenario as a step function of ``dep`` (one bisection per mode).

    **Objective.** ``U(m) = mean_s( [L <= budget] * acc_m - [L > budget] * late_penalty * A + (H - 1) * R_s(m) )
    - switch_penalty * [m != previous]``, with ``A`` the running mean accuracy of the chosen modes. *Skipping is
    an option of the same objective*: ``U(skip) = mean_s((H - 1) * R_s(skip))``, the followers facing only the
    bytes already in flight. The controller takes the best of the modes and skip, so a frame is skipped exactly
    when its bytes would cost its followers more than it can deliver itself (and the reason names the prediction).
    The follower term is the uncertainty-aware replacement for a fixed safety margin; ``late_penalty`` charges a
    late frame for the frames it delays (with one frame in flight it costs the next frame outright). This adapts
    to the mode table: where one more bit buys a lot of accuracy it accepts more risk, where the gain is small it
    stays safe. The switching penalty adds hysteresis against forecast noise.

    With no sample yet it sends the lightest mode; with nothing in flight and a forecast that nothing fits it still
    sends the lightest mode (the forecast only learns from frames, and a skipped frame is a certain miss). At
    ``max_in_flight`` frames in flight it always skips. Cost: O(Q * (K + M log M)) arithmetic per decision with
    per-scenario tables cached between samples (Q scenarios, K frames in flight, M modes).
    """

    name = "mpc"

    def __init__(self, modes: Sequence[ModeOption], deadline_ms: float, config: MpcConfig | None = None) -> None:
        check_modes(modes)
        if deadline_ms <= 0:
            raise ConfigError(f"deadline_ms must be positive, got {deadline_ms}")
        self.config = cfg = config or MpcConfig()
        self.modes = pareto_modes(modes)  # most accurate first
        self.lightest = min(self.modes, key=lambda m: (m.payload_bytes, m.encoder_ms + m.server_ms))
        self.deadline_s = deadline_ms / 1000.0
        self.budget_s = cfg.margin * self.deadline_s
        self.rtt_s = cfg.rtt_ms / 1000.0
        self.sampler = TransferSampler(rtt_s=self.rtt_s, packet_bytes=cfg.packet_bytes)
        self._samples: deque[float] = deque(maxlen=cfg.samples)
        self._scenarios: list[float] = []
        self._server_s = {m.name: m.server_ms / 1000.0 for m in modes}
        self._pkt_bits = 8.0 * cfg.packet_bytes
        # per Pareto mode (most accurate first), as flat lists for the inner loop
        self._names = [m.name for m in self.modes]
        self._acc = [m.accuracy for m in self.modes]
        self._enc = [m.encoder_ms / 1000.0 for m in self.modes]
        self._bits = [8.0 * m.payload_bytes for m in self.modes]
        self._post = [self.rtt_s + m.server_ms / 1000.0 for m in self.modes]  # after departure: rtt + server
        self._slack = [self.budget_s - p for p in self._post]  # budget left for the transfer of a follower
        self._light_j = self._names.index(self.lightest.name)
        self._cache: dict[float, tuple[float, list[float], list[float], list[float], list[float]]] = {}
        self._cache_key: tuple[float, int] | None = None
        self._in_flight: dict[int, tuple[float, int, float]] = {}  # frame id -> (sent_at, bytes, server s)
        self._prev: str | None = None
        self._ref_acc = sorted(m.accuracy for m in self.modes)[len(self.modes) // 2]
        self._last_now: float | None = None
        self._period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0

    # ------------------------------------------------------------------ feedback
    def on_sent(self, frame_id: int, mode: str, payload_bytes: int, sent_at: float) -> None:
        self._in_flight[frame_id] = (sent_at, payload_bytes, self._server_s.get(mode, 0.0))

    def observe(self, feedback: FrameFeedback) -> None:
        self._in_flight.pop(feedback.frame_id, None)
        s = self.sampler.sample(feedback)
        if s is not None and s.bps > 0 and math.isfinite(s.bps):
            self._samples.append(s.bps)
            ordered = sorted(self._samples)
            q = self.config.quantiles
            n = len(ordered)
            if len(self._cache) > 4 * n + 8:  # keep the tables of rates still in use; bounded
                keep = set(ordered)
                self._cache = {k: v for k, v in self._cache.items() if k in keep}
            if q <= 0 or n <= q:
                self._scenarios = ordered
            else:
                self._scenarios = [ordered[int((i + 0.5) * n / q)] for i in range(q)]

    def estimate_bps(self) -> float | None:
        """Harmonic mean of the recent samples (for display)."""
        if not self._samples:
            return None
        return len(self._samples) / sum(1.0 / x for x in self._samples)

    # ------------------------------------------------------------------ decision
    def _frame_period(self, now: float) -> float:
        if self.config.fps > 0:
            return self._period
        if self._last_now is not None and now > self._last_now:
            gap = now - self._last_now
            self._period = gap if self._period <= 0 else 0.8 * self._period + 0.2 * gap
        self._last_now = now
        return self._period if self._period > 0 else self.deadline_s

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        cfg = self.config
        period = round(self._frame_period(now), 3)  # ms resolution keeps the per-scenario tables cacheable
        if in_flight_frames >= cfg.max_in_flight:
            return Decision(None, f"in-flight limit ({cfg.max_in_flight} frames)")
        if not self._scenarios:
            return self._send(self.lightest.name, "no estimate yet: lightest mode", None, None)
        rtt = self.rtt_s
        pkt = self._pkt_bits
        d0 = self.sampler.last_departure
        in_flight = list(self._in_flight.values())
        cap = math.inf
        if in_flight and cfg.stall_detection:
            sent0, b0, srv0 = in_flight[0]
            elapsed = now - max(d0, sent0) - rtt - srv0
            if elapsed > 0:
                cap = (8.0 * b0 + (pkt if sent0 >= d0 else 0.0)) / elapsed
        unsent_bits = 8.0 * in_flight_bytes
        for _, nbytes, _ in in_flight:
            unsent_bits -= 8.0 * nbytes
        budget = self.budget_s
        ref = self._ref_acc
        late_penalty = cfg.late_penalty if cfg.late_penalty is not None else (1.0 if cfg.max_in_flight == 1 else 0.0)
        late_cost = late_penalty * ref
        h = cfg.horizon or (math.ceil(self.deadline_s / period - 1e-9) + 1)
        followers = h - 1
        grow = max(0, h - 2)
        rest_none = -cfg.follower_penalty * ref
        accs, encs, posts = self._acc, self._enc, self._post
        n_modes = len(accs)
        modes_range = range(n_modes)
        gain = [0.0] * n_modes
        lat_sum = [0.0] * n_modes
        skip_gain = 0.0
        one_at_a_time = cfg.max_in_flight == 1
        key = (period, h)
        if self._cache_key != key:
            self._cache = {}
            self._cache_key = key
        cache = self._cache
        # distinct scenarios with their multiplicity (all those above a stall cap collapse into one)
        distinct: list[list[float]] = []
        n_capped = math.ceil(cfg.stall_fraction * len(self._scenarios) - 1e-9)
        for i, s0 in enumerate(self._scenarios):
            s = s0 if (s0 < cap or i >= n_capped) else cap
            if distinct and distinct[-1][0] == s:
                distinct[-1][1] += 1.0
            else:
                distinct.append([s, 1.0])
        for s, w in distinct:
            entry = cache.get(s)
            if entry is None:
                entry = self._scenario_table(s, period, grow, followers > 0)
                if s < cap:
                    cache[s] = entry
            inv, idle_lat, queued_off, neg_thetas, best_acc = entry
            d = d0
            for sent, nbytes, _ in in_flight:
                d = (sent + (8.0 * nbytes + pkt) * inv) if sent >= d else (d + 8.0 * nbytes * inv)
            if unsent_bits > 0:
                d = (now + (unsent_bits + pkt) * inv) if now >= d else (d + unsent_bits * inv)
            r = d - now  # the uplink is busy for r more seconds in this scenario
            if followers:  # skipping is an option too: the followers then face only the bytes already in flight
                c = bisect_right(neg_thetas, period - (r if r > 0 else 0.0))
                skip_gain += w * followers * (best_acc[c - 1] if c else rest_none)
            for j in modes_range:
                lat = idle_lat[j] if encs[j] >= r else r + queued_off[j]
                lat_sum[j] += w * lat
                g = accs[j] if lat <= budget else -late_cost
                if followers:  # followers fit iff (their start) - next capture <= theta; they start when this
                    # frame has left the uplink (dep = lat - post), or, one frame at a time, when it has completed
                    c = bisect_right(neg_thetas, period + (0.0 if one_at_a_time else posts[j]) - lat)
                    g += followers * (best_acc[c - 1] if c else rest_none)
                gain[j] += w * g
        n = float(len(self._scenarios))
        best_j = -1
        best_u = skip_gain / n
        prev = self._prev
        for j in modes_range:
            u = gain[j] / n
            if prev is not None and self._names[j] != prev:
                u -= cfg.switch_penalty
            if u > best_u + 1e-12:
                best_u, best_j = u, j
        est = self.estimate_bps()
        if est is not None and cap < est:
            est = cap
        light_lat = lat_sum[self._light_j] / n * 1e3
        if best_j < 0 and in_flight_frames == 0:
            # an idle link and a forecast that says nothing makes it: the forecast may be stale (it only learns
            # from frames), and a skipped frame is a certain miss, so send the lightest mode
            return self._send(
                self.lightest.name, "probe: forecast says nothing fits, link idle", est, lat_sum[self._light_j] / n
            )
        if best_j < 0:
            return Decision(
                None,
                f"no mode is worth sending (lightest ~{light_lat:.0f} ms for a {self.deadline_s * 1e3:.0f} ms "
                f"deadline; estimate {(est or 0) / 1e3:.0f} kbit/s, {in_flight_bytes} B in flight)",
                est,
            )
        self._ref_acc = 0.95 * self._ref_acc + 0.05 * accs[best_j]
        return self._send(self._names[best_j], "mpc", est, lat_sum[best_j] / n)

    def _scenario_table(
        self, s: float, period: float, grow: int, followers: bool
    ) -> tuple[float, list[float], list[float], list[float], list[float]]:
        """Per-scenario constants (cached until the samples change): ``1 / s``; per mode the latency on an idle
        link (``enc + (bits + packet) / s + rtt + server``) and the offset added to the busy time when queued
        (``bits / s + rtt + server``); and the followers' step function: mode k keeps the next frames in time iff
        ``dep - next_capture <= theta_k``, so the best follower accuracy for a given departure is the prefix maximum
        over thresholds sorted in descending order (returned as -thresholds ascending, prefix max accuracy)."""
        inv = 1.0 / s
        pkt = self._pkt_bits
        idle_lat = [e + (b + pkt) * inv + p for e, b, p in zip(self._enc, self._bits, self._post, strict=True)]
        queued_off = [b * inv + p for b, p in zip(self._bits, self._post, strict=True)]
        pairs = []
        if followers:
            for k in range(len(self._acc)):
                x = self._bits[k] * inv
                theta = self._slack[k] - x - (grow * (x - period) if x > period else 0.0)
                if self._enc[k] <= theta:
                    pairs.append((-theta, self._acc[k]))
            pairs.sort()
        neg_thetas: list[float] = []
        best_acc: list[float] = []
        top = -math.inf
        for neg, acc_k in pairs:
            top = acc_k if acc_k > top else top
            neg_thetas.append(neg)
            best_acc.append(top)
        return inv, idle_lat, queued_off, neg_thetas, best_acc

    def _send(self, mode: str, reason: str, bw: float | None, lat: float | None) -> Decision:
        self._prev = mode
        return Decision(mode, reason, bw, None if lat is None else lat * 1e3)


# ---------------------------------------------------------------------------------------------- oracle


class OracleController(Controller):
    """Replays a plan made with full knowledge of the trace (evaluation only; see
    :func:`slimsplit.edge.control.oracle.plan_oracle`). Frame ``i`` is the one captured at ``t0 + i / fps``."""

    name = "oracle"

    def __init__(self, plan: Sequence[str | None], fps: float, t0: float = 0.0) -> None:
        self.plan = list(plan)
        self.fps = fps
        self.t0 = t0

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        i = round((now - self.t0) * self.fps)
        if not 0 <= i < len(self.plan):
            return Decision(None, "oracle: outside the planned run")
        mode = self.plan[i]
        return Decision(mode, "oracle" if mode is not None else "oracle: cannot make the deadline")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


# ---------------------------------------------------------------------------------------------- registry

CONTROLLER_NAMES = ("fixed", "ewma-greedy", "mpc", "oracle")


def _take(options: dict[str, Any], allowed: Sequence[str], who: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"controller {who!r} has no option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return options


def make_controller(name: str, modes: Sequence[ModeOption], deadline_ms: float, **options: Any) -> Controller:
    """Build a controller by name.

    * ``fixed``: ``mode`` (default: most accurate), ``max_in_flight``;
    * ``ewma-greedy``: ``alpha``, ``budget_fraction``, ``rtt_ms``, ``max_in_flight``, ``initial_bps``;
    * ``mpc``: any :class:`MpcConfig` field;
    * ``oracle``: ``link`` (:class:`slimsplit.link.LinkConfig`), ``fps``, ``n_frames``, and optionally
      ``max_in_flight``, ``reply_bytes``, ``t0`` (evaluation only: it reads the trace).
    """
    opts = dict(options)
    if name == "fixed":
        return FixedController(modes, deadline_ms, **_take(opts, ("mode", "max_in_flight"), name))
    if name == "ewma-greedy":
        greedy_opts = ("alpha", "budget_fraction", "rtt_ms", "max_in_flight", "initial_bps")
        return EwmaGreedyController(modes, deadline_ms, **_take(opts, greedy_opts, name))
    if name == "mpc":
        mpc_opts = tuple(f.name for f in fields(MpcConfig))
        return MpcController(modes, deadline_ms, MpcConfig(**_take(opts, mpc_opts, name)))
    if name == "oracle":
        from slimsplit.edge.control.oracle import plan_oracle

        _take(opts, ("link", "fps", "n_frames", "max_in_flight", "reply_bytes", "t0"), name)
        for req in ("link", "fps", "n_frames"):
            if req not in opts:
                raise ConfigError(f"the oracle needs option {req!r} (it plans from the trace)")
        t0 = float(opts.pop("t0", 0.0))
        plan = plan_oracle(modes, deadline_ms, t0=t0, **opts)
        return OracleController(plan.modes, float(opts["fps"]), t0)
    raise ConfigError(f"unknown controller {name!r}; available: {', '.join(CONTROLLER_NAMES)}")


__all__ = [
    "CONTROLLER_NAMES",
    "EwmaGreedyController",
    "FixedController",
    "MpcConfig",
    "MpcController",
    "OracleController",
    "make_controller",
]
