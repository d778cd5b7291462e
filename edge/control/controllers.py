"""The controllers: ``fixed``, ``ewma-greedy`` (published baseline), ``mpc`` (this project's) and ``oracle``.

All of them implement :class:`~slimsplit.edge.control.base.Controller` and see only what the edge can measure;
``oracle`` replays a plan computed from the trace itself (:mod:`slimsplit.edge.control.oracle`) and is for
evaluation only. :func:`make_controller` builds any of them by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from slimsplit.edge.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.edge.control.estimators import (
    EwmaEstimator,
    RobustHarmonicEstimator,
    ThroughputEstimator,
    TransferSampler,
)
from slimsplit.edge.control.modes import check_modes, pareto_modes
from slimsplit.errors import ConfigError, UnknownMode

# ---------------------------------------------------------------------------------------------- fixed


class FixedController(Controller):
    """Always the same mode (default: the most accurate one). Skips only at the in-flight limit."""

    name = "fixed"

    def __init__(self, modes: Sequence[ModeOption], deadline_ms: float, mode: str | None = None,
                 max_in_flight: int = 4) -> None:
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

    def __init__(self, modes: Sequence[ModeOption], deadline_ms: float, alpha: float = 0.4,
                 budget_fraction: float = 0.8, rtt_ms: float = 0.0, max_in_flight: int = 4,
                 initial_bps: float | None = None) -> None:
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
    """Options of :class:`MpcController` (see its docstring for how each one enters the decision)."""

    horizon: int = 0  # frames planned (this one + horizon-1 followers); 0 = ceil(deadline * fps) + 1
    fps: float = 0.0  # frame rate; 0 = learn it from the spacing of choose() calls
    margin: float = 0.9  # plan every frame to finish within margin * deadline
    switch_penalty: float = 0.002  # accuracy charged for changing mode (hysteresis against estimate noise)
    window: int = 5  # harmonic-mean window (samples)
    max_error: float = 1.0  # clip of the relative prediction error (discount at most 1 / (1 + max_error))
    quantile: float = 0.0  # also bound the estimate by this quantile of the last quantile_window samples (0 = off)
    quantile_window: int = 20
    rtt_ms: float = 0.0  # round-trip propagation time, measured by the client (0 = unknown, conservative)
    max_in_flight: int = 4  # never more frames than this in flight
    probe_interval_ms: float = 0.0  # with nothing in flight and nothing fitting, send the lightest mode at most
    #                                 this often (0 = every such frame: skipping it is a sure miss anyway)
    initial_bps: float = 0.0  # bandwidth assumed before the first sample (0 = lightest mode until then)
    stall_detection: bool = True  # bound the estimate by the progress of the oldest frame in flight
    packet_bytes: float = 1500.0  # packetisation allowance of a transfer that starts on an idle link (0 = fluid)

    def __post_init__(self) -> None:
        if self.horizon < 0 or self.fps < 0 or not 0 < self.margin <= 1.5 or self.switch_penalty < 0:
            raise ConfigError(f"bad MPC options: {self}")
        if self.max_in_flight < 1 or self.window < 1 or self.rtt_ms < 0 or self.probe_interval_ms < 0:
            raise ConfigError(f"bad MPC options: {self}")


class MpcController(Controller):
    """Model-predictive mode selection over a fluid model of the uplink queue.

    **Bandwidth.** ``bw`` = robustMPC estimate (harmonic mean of the last ``window`` throughput samples divided
    by ``1 + max recent relative error``; samples per :class:`TransferSampler`, i.e. excluding server time,
    propagation delay and the time a frame waited behind earlier frames). *Stall bound:* if the oldest frame in
    flight started transmitting at ``s0`` (``max(sent, last known departure)``) and has not completed although
    ``e = now - s0 - rtt - server_ms > 0``, the link has carried fewer than its ``b0`` bytes in ``e`` seconds, so
    ``bw <= 8 b0 / e``. This reacts to an outage within a frame or two instead of waiting for completions that
    never come.

    **Queue.** The bytes still in flight are drained through a FIFO at ``bw``: starting from the last known
    departure ``d``, each frame in flight (in send order) departs at ``d = max(d, sent) + 8 b / bw``; bytes
    admitted but not yet sent are added at ``now``. The result ``q`` is when the uplink becomes free.

    **Prediction.** For mode ``m``: ``dep_m = max(q, now + enc_m) + 8 p_m / bw`` and the latency
    ``L_m = dep_m + rtt + server_m - now``. Mode ``m`` is admissible when ``L_m <= margin * deadline``.

    **Horizon.** The next ``H - 1`` frames (spacing ``T = 1 / fps``) are assumed to use one steady mode ``m'``.
    Frame ``j`` then departs ``max(dep_{j-1}, now + jT + enc') + x'`` (``x' = 8 p' / bw``); its latency is worst
    either for ``j = 1`` or, when ``x' > T`` (``m'`` not sustainable), for the last frame, giving
    ``L' = max(dep_m - now - T, enc') + x' + rtt + server' + max(0, (H - 2)(x' - T))``. ``R(m)`` is the accuracy
    of the best ``m'`` with ``L' <= margin * deadline`` (none: the followers would be skipped).

    **Objective.** ``V(m) = (1 + acc_m) + (H - 1) * [1 + R(m) if some m' fits else 0] - penalty * [m != previous]``:
    the constant 1 per in-time frame makes delivering frames lexicographically more important than accuracy, so
    the current frame never takes a mode that would starve its followers, and among modes that keep them
    feasible the sum of accuracies decides. The switching penalty adds hysteresis against estimate noise.

    **Skipping.** No admissible mode: the frame is skipped with the reason (prediction, estimate, bytes in
    flight), except that with nothing in flight and nothing sent for ``probe_interval`` the lightest mode is sent
    as a probe, so that the estimate recovers when capacity returns (there is no other traffic to learn from).
    At ``max_in_flight`` frames in flight it always skips.

    Cost: O(M * (M + K)) arithmetic for M Pareto modes and K frames in flight, no allocation of arrays.
    """

    name = "mpc"

    def __init__(self, modes: Sequence[ModeOption], deadline_ms: float, config: MpcConfig | None = None) -> None:
        check_modes(modes)
        if deadline_ms <= 0:
            raise ConfigError(f"deadline_ms must be positive, got {deadline_ms}")
        self.config = cfg = config or MpcConfig()
        self.modes = pareto_modes(modes)  # most accurate first
        self.lightest = min(self.modes, key=lambda m: (m.encoder_ms + m.server_ms, m.payload_bytes))
        self.deadline_s = deadline_ms / 1000.0
        self.budget_s = cfg.margin * self.deadline_s
        self.rtt_s = cfg.rtt_ms / 1000.0
        self.probe_interval_s = cfg.probe_interval_ms / 1000.0
        self.sampler = TransferSampler(rtt_s=self.rtt_s, packet_bytes=cfg.packet_bytes)
        self.estimator: ThroughputEstimator = RobustHarmonicEstimator(
            cfg.window, cfg.max_error, cfg.quantile, cfg.quantile_window
        )
        self._pkt_bits = 8.0 * cfg.packet_bytes
        self._server_s = {m.name: m.server_ms / 1000.0 for m in modes}
        # per Pareto mode: (name, accuracy, encoder s, server s, payload bits)
        self._table = [(m.name, m.accuracy, m.encoder_ms / 1000.0, m.server_ms / 1000.0, 8.0 * m.payload_bytes)
                       for m in self.modes]
        self._in_flight: dict[int, tuple[float, int, float]] = {}  # frame id -> (sent_at, bytes, server s)
        self._prev: str | None = None
        self._last_send = -math.inf
        self._last_now: float | None = None
        self._period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0

    # ------------------------------------------------------------------ feedback
    def on_sent(self, frame_id: int, mode: str, payload_bytes: int, sent_at: float) -> None:
        self._in_flight[frame_id] = (sent_at, payload_bytes, self._server_s.get(mode, 0.0))
        self._last_send = max(self._last_send, sent_at)

    def observe(self, feedback: FrameFeedback) -> None:
        self._in_flight.pop(feedback.frame_id, None)
        s = self.sampler.sample(feedback)
        if s is not None:
            self.estimator.update(s.bps)

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
        period = self._frame_period(now)
        if in_flight_frames >= cfg.max_in_flight:
            return Decision(None, f"in-flight limit ({cfg.max_in_flight} frames)")
        est = self.estimator.estimate()
        bw = est if est is not None else (cfg.initial_bps or None)
        if bw is None:
            return self._send(self.lightest.name, now, "no estimate yet: lightest mode", None, None)
        rtt = self.rtt_s
        # stall bound from the oldest frame in flight
        pkt = self._pkt_bits
        if self._in_flight and cfg.stall_detection:
            d0 = self.sampler.last_departure
            sent0, b0, srv0 = next(iter(self._in_flight.values()))
            elapsed = now - max(d0, sent0) - rtt - srv0
            if elapsed > 0:
                bw = min(bw, (8.0 * b0 + (pkt if sent0 >= d0 else 0.0)) / elapsed)
        d = self._queue_end(now, bw, in_flight_bytes)
        budget = self.budget_s
        # steady followers: threshold on (dep_m - now - T) for each m', most permissive first
        h = cfg.horizon or (math.ceil(self.deadline_s / period - 1e-9) + 1)
        followers: list[tuple[float, float]] = []  # (threshold, accuracy)
        if h > 1:
            grow = h - 2
            for _, acc, enc, srv, bits in self._table:
                x = bits / bw
                theta = budget - (x + rtt + srv + (grow * (x - period) if x > period else 0.0))
                if enc <= theta:
                    followers.append((theta, acc))
        best: tuple[float, str, float] | None = None  # (value, mode, latency)
        for name, acc, enc, srv, bits in self._table:
            send = now + enc
            dep = (send + (bits + pkt) / bw) if send >= d else (d + bits / bw)
            lat = dep + rtt + srv - now
            if lat > budget:
                continue
            value = 1.0 + acc
            if h > 1:
                z = dep - now - period
                rest = -1.0
                for theta, acc2 in followers:
                    if theta >= z and acc2 > rest:
                        rest = acc2
                if rest >= 0:
                    value += (h - 1) * (1.0 + rest)
            if self._prev is not None and name != self._prev:
                value -= cfg.switch_penalty
            if best is None or value > best[0] + 1e-12:
                best = (value, name, lat)
        if best is not None:
            return self._send(best[1], now, "mpc", bw, best[2])
        # Nothing is safe at the conservative estimate. Skip only if even the recent peak rate cannot deliver the
        # lightest mode in time; otherwise send it: a skipped frame is a certain miss, the lightest mode is cheap.
        light = self.lightest
        peak = self.estimator.peak() if isinstance(self.estimator, RobustHarmonicEstimator) else None
        bw_opt = max(peak or bw, bw)
        d_opt = self._queue_end(now, bw_opt, in_flight_bytes)
        send = now + light.encoder_ms / 1000.0
        bits = 8.0 * light.payload_bytes
        dep = (send + (bits + pkt) / bw_opt) if send >= d_opt else (d_opt + bits / bw_opt)
        lat_opt = dep + rtt + light.server_ms / 1000.0 - now
        if lat_opt > self.deadline_s:
            return Decision(
                None,
                f"cannot make the deadline: lightest needs {lat_opt * 1e3:.0f} ms even at the recent peak "
                f"{bw_opt / 1e3:.0f} kbit/s ({in_flight_bytes} B in flight)",
                bw,
                lat_opt * 1e3,
            )
        return self._send(light.name, now, "best effort: nothing is safe, lightest mode", bw, lat_opt)

    def _queue_end(self, now: float, bw: float, in_flight_bytes: int) -> float:
        """When the uplink finishes the bytes in flight, draining them FIFO at ``bw`` from the last known departure."""
        pkt = self._pkt_bits
        d = self.sampler.last_departure
        sent_bits = 0.0
        for sent, nbytes, _ in self._in_flight.values():
            bits = 8.0 * nbytes
            d = (sent + (bits + pkt) / bw) if sent >= d else (d + bits / bw)
            sent_bits += bits
        unsent_bits = 8.0 * in_flight_bytes - sent_bits
        if unsent_bits > 0:
            d = (now + (unsent_bits + pkt) / bw) if now >= d else (d + unsent_bits / bw)
        return d

    def _send(self, mode: str, now: float, reason: str, bw: float | None, lat: float | None) -> Decision:
        self._prev = mode
        self._last_send = max(self._last_send, now)
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
        allowed = ("alpha", "budget_fraction", "rtt_ms", "max_in_flight", "initial_bps")
        return EwmaGreedyController(modes, deadline_ms, **_take(opts, allowed, name))
    if name == "mpc":
        allowed = tuple(f.name for f in fields(MpcConfig))
        return MpcController(modes, deadline_ms, MpcConfig(**_take(opts, allowed, name)))
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
