"""The oracle: the best mode schedule with full knowledge of the trace and the shaping model (evaluation only).

Model (the same as :mod:`slimsplit.evaluation.sim`): frame ``i`` is captured at ``s_i = t0 + i / fps``, encoded in
``enc_m`` (the encoder is free at every capture: ``enc_m <= 1 / fps`` is required), its ``p_m`` bytes enter the
uplink FIFO at ``s_i + enc_m``, the last byte arrives ``delay`` after it leaves the bottleneck, the server takes
``server_m``, and the reply crosses the downlink (assumed idle: replies are tiny) plus ``delay``. In time means
:func:`slimsplit.records.in_time` (the rule every run is judged by).

Because the uplink is a FIFO whose state is one number (the cumulative trace position ``B`` up to which capacity is
taken), a schedule's future depends on the past only through ``B``: a smaller ``B`` is never worse. Dynamic
programming keeps, per frame, the Pareto front of states ``(B, V)`` (``B`` low, value ``V`` high), where a frame
delivered in time with mode ``m`` is worth ``hit_value + acc_m`` (``hit_value`` = 1000 makes the number of in-time
frames lexicographically first, accuracy second) and a skipped frame 0. The oracle never sends a frame that would
miss (it knows), so its in-flight frames are those within one deadline of the present. States whose ``B`` is
already behind the capacity that passes before the next frame can send are equivalent and are merged. The result is
the exact optimum of that model (up to float rounding), so it is an upper bound for every causal controller on
the same model: no controller can deliver more frames in time, and none delivering as many can be more accurate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slimsplit.control.base import ModeOption
from slimsplit.control.modes import check_modes, pareto_modes
from slimsplit.errors import ConfigError
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.trace import Trace
from slimsplit.records import in_time_array


@dataclass(frozen=True)
class OraclePlan:
    modes: tuple[str | None, ...]  # per frame: mode name or None (skip)
    hits: int  # frames delivered in time
    accuracy_sum: float

    @property
    def feasible(self) -> npt.NDArray[np.bool_]:
        """Per frame: does the oracle deliver it in time (the *feasible* frames of the evaluation)."""
        return np.asarray([m is not None for m in self.modes], dtype=bool)


def _reply_s(down: Trace | None, offset: float, t: npt.NDArray[np.float64], nbytes: int) -> npt.NDArray[np.float64]:
    if down is None or nbytes <= 0:
        return np.zeros_like(t)
    pos = down.bytes_before_array(t + offset) + nbytes
    out: npt.NDArray[np.float64] = down.times_of_bytes(pos) - offset - t
    return out


def isolated_latencies(
    modes: Sequence[ModeOption],
    link: LinkConfig,
    fps: float,
    n_frames: int,
    reply_bytes: int = 64,
    t0: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Capture-to-result latency (seconds) of every frame in every mode, each frame *alone* on the link.

    Frame ``i`` is captured at ``t0 + i / fps``; in mode ``m`` its ``p_m`` bytes enter an otherwise empty uplink
    when the encoder is done (``enc_m`` later) and then follow the model of the module docstring (trace, delay,
    ``server_m``, reply). Returns an ``(n_frames, len(modes))`` array in the order of ``modes``. A frame is
    *feasible in isolation* when some mode's latency is within the deadline: the link state at its capture (the
    trace) allows it, whatever the frames around it did. Vectorised: one trace lookup per frame and mode."""
    return isolated_latencies_at(modes, link, _captures(fps, n_frames, t0), reply_bytes)


def _captures(fps: float, n_frames: int, t0: float) -> npt.NDArray[np.float64]:
    """Capture times of ``n_frames`` frames at ``fps`` from ``t0``."""
    if fps <= 0 or n_frames < 0:
        raise ConfigError(f"isolated latencies: need fps > 0 and n_frames >= 0 (got {fps}, {n_frames})")
    return t0 + np.arange(n_frames, dtype=np.float64) / fps


def isolated_latencies_at(
    modes: Sequence[ModeOption],
    link: LinkConfig,
    captures: npt.ArrayLike,
    reply_bytes: int = 64,
) -> npt.NDArray[np.float64]:
    """:func:`isolated_latencies` for frames captured at the given link times (seconds since the link's time 0;
    the trace is at ``link.start_offset_s`` plus this), e.g. the capture times of a live run's frames."""
    check_modes(modes)
    s = np.asarray(captures, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise ConfigError("isolated latencies: capture times must be finite")
    enc = np.asarray([m.encoder_ms / 1000.0 for m in modes])
    size = np.asarray([float(round(m.payload_bytes)) for m in modes])
    srv = np.asarray([m.server_ms / 1000.0 for m in modes])
    delay = link.delay_ms / 1000.0
    off = link.start_offset_s
    ready = s[:, None] + enc[None, :]  # bytes enter the uplink
    if link.uplink is None:
        dep = ready
    else:
        start = link.uplink.bytes_before_array((ready + off).ravel()).reshape(ready.shape)
        dep = link.uplink.times_of_bytes((start + size[None, :]).ravel()).reshape(ready.shape) - off
    arrive = dep + delay + srv[None, :]
    done = arrive + delay + _reply_s(link.downlink, off, arrive.ravel(), reply_bytes).reshape(arrive.shape)
    out: npt.NDArray[np.float64] = done - s[:, None]
    return out


def feasible_in_isolation(
    modes: Sequence[ModeOption],
    deadline_ms: float,
    link: LinkConfig,
    fps: float,
    n_frames: int,
    reply_bytes: int = 64,
    t0: float = 0.0,
) -> npt.NDArray[np.bool_]:
    """Per frame: could some mode, sent alone from the frame's capture, be delivered within the deadline (see
    :func:`isolated_latencies`)? This is the evaluation's definition of a *feasible* frame."""
    return feasible_at(modes, deadline_ms, link, _captures(fps, n_frames, t0), reply_bytes)


def feasible_at(
    modes: Sequence[ModeOption],
    deadline_ms: npt.ArrayLike,
    link: LinkConfig,
    captures: npt.ArrayLike,
    reply_bytes: int = 64,
) -> npt.NDArray[np.bool_]:
    """:func:`feasible_in_isolation` for frames captured at the given link times (see
    :func:`isolated_latencies_at`), each with its deadline (one value for all, or one per frame)."""
    lat = isolated_latencies_at(modes, link, captures, reply_bytes)
    deadline = np.broadcast_to(np.asarray(deadline_ms, dtype=np.float64), lat.shape[:1])
    out: npt.NDArray[np.bool_] = np.any(in_time_array(lat * 1e3, deadline[:, None]), axis=1)
    return out


def plan_oracle(
    modes: Sequence[ModeOption],
    deadline_ms: float,
    link: LinkConfig,
    fps: float,
    n_frames: int,
    max_in_flight: int | None = None,
    reply_bytes: int = 64,
    t0: float = 0.0,
    hit_value: float = 1000.0,
) -> OraclePlan:
    """The optimal plan for ``n_frames`` frames (see the module docstring)."""
    check_modes(modes)
    if fps <= 0 or n_frames < 0 or deadline_ms <= 0:
        raise ConfigError(f"oracle: need fps > 0, n_frames >= 0, deadline > 0 (got {fps}, {n_frames}, {deadline_ms})")
    period = 1.0 / fps
    deadline = deadline_ms / 1000.0
    front_modes = pareto_modes(modes)
    if max(m.encoder_ms for m in front_modes) / 1000.0 > period + 1e-9:
        raise ConfigError("oracle: an encoder time exceeds the frame period (the encoder would queue frames)")
    if max_in_flight is not None and math.ceil(deadline * fps - 1e-9) > max_in_flight:
        raise ConfigError(
            f"oracle: {max_in_flight} frames in flight cannot cover one deadline at {fps} frames/s "
            f"(needs {math.ceil(deadline * fps - 1e-9)})"
        )
    names = [m.name for m in front_modes]
    enc = np.asarray([m.encoder_ms / 1000.0 for m in front_modes])
    size = np.asarray([m.payload_bytes for m in front_modes])
    srv = np.asarray([m.server_ms / 1000.0 for m in front_modes])
    value = hit_value + np.asarray([m.accuracy for m in front_modes])
    delay = link.delay_ms / 1000.0
    off = link.start_offset_s
    up = link.uplink
    down = link.downlink
    n_modes = len(front_modes)

    if up is None:  # unshaped uplink: frames are independent
        plan: list[str | None] = []
        acc_sum = 0.0
        for i in range(n_frames):
            s = t0 + i * period
            done = s + enc + delay + srv + delay + _reply_s(down, off, s + enc + delay + srv, reply_bytes)
            fit = np.flatnonzero(in_time_array((done - s) * 1e3, deadline_ms))
            if fit.size:
                j = int(fit[np.argmax(value[fit])])
                plan.append(names[j])
                acc_sum += front_modes[j].accuracy
            else:
                plan.append(None)
        return OraclePlan(tuple(plan), sum(p is not None for p in plan), acc_sum)

    enc_min = float(enc.min())
    b_front = np.zeros(1)
    v_front = np.zeros(1)
    parents: list[npt.NDArray[np.int64]] = []
    choices: list[npt.NDArray[np.int64]] = []
    for i in range(n_frames):
        s = t0 + i * period
        c_before = up.bytes_before_array(s + enc + off)  # per mode: capacity lost before its bytes can enter
        start = np.maximum(b_front[:, None], c_before[None, :])  # F x M
        end = start + size[None, :]
        dep = up.times_of_bytes(end.ravel()).reshape(end.shape) - off
        arrive = dep + delay + srv[None, :]
        done = arrive + delay
        if down is not None:
            done = done + _reply_s(down, off, arrive.ravel(), reply_bytes).reshape(arrive.shape)
        ok = in_time_array((done - s) * 1e3, deadline_ms)
        fi, mi = np.nonzero(ok)
        cand_b = np.concatenate((b_front, end[fi, mi]))
        cand_v = np.concatenate((v_front, v_front[fi] + value[mi]))
        cand_parent = np.concatenate((np.arange(b_front.size), fi))
        cand_mode = np.concatenate((np.full(b_front.size, -1), mi))
        # merge states that are equivalent for the next frame (their B is already in the past by then)
        floor = up.bytes_before(s + period + enc_min + off)
        cand_b = np.maximum(cand_b, floor)
        order = np.lexsort((-cand_v, cand_b))
        vs = cand_v[order]
        prev_max = np.concatenate(([-np.inf], np.maximum.accumulate(vs)[:-1]))
        keep = order[vs > prev_max + 1e-9]
        b_front, v_front = cand_b[keep], cand_v[keep]
        parents.append(cand_parent[keep].astype(np.int64))
        choices.append(cand_mode[keep].astype(np.int64))
    plan_idx = [-1] * n_frames
    if n_frames:
        k = int(np.argmax(v_front))
        for i in range(n_frames - 1, -1, -1):
            plan_idx[i] = int(choices[i][k])
            k = int(parents[i][k])
    plan = [names[j] if j >= 0 else None for j in plan_idx]
    acc_sum = float(sum(front_modes[j].accuracy for j in plan_idx if j >= 0))
    assert n_modes == len(names)
    return OraclePlan(tuple(plan), sum(j >= 0 for j in plan_idx), acc_sum)


__all__ = [
    "OraclePlan",
    "feasible_at",
    "feasible_in_isolation",
    "isolated_latencies",
    "isolated_latencies_at",
    "plan_oracle",
]
