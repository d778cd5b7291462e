"""Fixed-point arithmetic of the emulated accelerator: formats, rounding, saturation, requantization.

Number formats
    Activations are int16 with one real scale per tensor: ``real = q * s``. Weights are int8 or int16 (int4 also
    works) with one scale per output channel, symmetric: ``s_w[c] = max|w[c]| / (2**(bits-1) - 1)``. Biases are
    int32/int48 at the accumulator's scale ``s_in * s_w[c]``.

Rounding
    * Offline (weights, biases, constants): to nearest, ties away from zero (``np.round`` would be ties-to-even; we
      use ``sign(x) * floor(|x| + 0.5)``).
    * Online (everything the hardware does at run time): to nearest, ties towards +infinity, implemented as
      "add half, then arithmetic shift right" — ``round_shift(a, s) = (a + 2**(s-1)) >> s``. Input quantization on
      the host uses the same rule: ``floor(x / s + 0.5)``.

Saturation
    Every int16 result is clamped to [-32768, 32767] and the number of clamped values is counted (reported as
    ``saturated_fraction``). Accumulators are modelled as the 48-bit DSP48E2 cascade: a sum outside
    [-2**47, 2**47) saturates too (and is counted).

Requantization
    A real rescale factor ``r`` (e.g. ``s_in * s_w / s_out``) is applied as an integer multiply and a rounding
    shift: ``r ~= m * 2**-shift`` with a 15-bit multiplier ``m`` in [2**14, 2**15), so
    ``y = saturate16(round_shift(acc * m, shift))``. Relative error of ``r`` is below 2**-15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slimsplit.errors import BackendError

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
ACC_BITS = 48
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
MULT_BITS = 15  # multiplier m in [2**(MULT_BITS-1), 2**MULT_BITS)


@dataclass
class SatCounter:
    """Counts saturated values (mutable, one per emulator run)."""

    saturated: int = 0
    total: int = 0

    def add(self, saturated: int, total: int) -> None:
        self.saturated += saturated
        self.total += total

    @property
    def fraction(self) -> float:
        return self.saturated / self.total if self.total else 0.0


def round_half_away(x: npt.ArrayLike) -> F64:
    """Offline rounding: nearest, ties away from zero."""
    a = np.asarray(x, dtype=np.float64)
    return np.asarray(np.sign(a) * np.floor(np.abs(a) + 0.5), dtype=np.float64)


def saturate(x: I64, lo: int = INT16_MIN, hi: int = INT16_MAX, counter: SatCounter | None = None) -> I64:
    """Clamp to [lo, hi] (int16 by default), counting clamped values."""
    if counter is not None:
        counter.add(int(np.count_nonzero((x < lo) | (x > hi))), int(x.size))
    return np.clip(x, lo, hi).astype(np.int64)


def saturate_acc(acc: I64, counter: SatCounter | None = None) -> I64:
    """The 48-bit accumulator: values outside its range saturate (and count)."""
    over = (acc < ACC_MIN) | (acc > ACC_MAX)
    if np.any(over):
        if counter is not None:
            counter.add(int(np.count_nonzero(over)), 0)
        return np.clip(acc, ACC_MIN, ACC_MAX).astype(np.int64)
    return acc


def round_shift(a: npt.ArrayLike, shift: npt.ArrayLike) -> I64:
    """``(a + 2**(shift-1)) >> shift``: nearest, ties to +inf (arithmetic shift); a negative shift shifts left."""
    s = np.asarray(shift, dtype=np.int64)
    left = np.maximum(-s, 0)
    right = np.maximum(s, 0)
    v = np.left_shift(np.asarray(a, dtype=np.int64), left)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    return np.asarray(np.right_shift(v + half, right), dtype=np.int64)


def quantize_multiplier(r: npt.ArrayLike) -> tuple[I64, I64]:
    """Represent positive real factors as ``m * 2**-shift`` with ``m`` in [2**14, 2**15) (element-wise)."""
    arr = np.asarray(r, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise BackendError(f"requantization factor must be positive and finite, got {arr.ravel()[:4]}")
    mant, exp = np.frexp(arr)  # arr = mant * 2**exp, mant in [0.5, 1)
    m = np.floor(mant * (1 << MULT_BITS) + 0.5).astype(np.int64)  # in [2**14, 2**15]
    shift = MULT_BITS - exp.astype(np.int64)
    carry = m == (1 << MULT_BITS)  # mantissa rounded up to 1.0
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    return m, shift


def requantize(acc: I64, m: I64, shift: I64, counter: SatCounter | None = None) -> I64:
    """``saturate16(round_shift(acc * m, shift))`` with broadcasting of per-channel ``m``/``shift``."""
    return saturate(round_shift(np.asarray(acc, dtype=np.int64) * m, shift), counter=counter)


def activation_scale(max_abs: float, headroom: float = 1.25) -> float:
    """Scale of an int16 tensor whose calibrated magnitude is ``max_abs``: ``headroom * max_abs / 32767``."""
    if not math.isfinite(max_abs) or max_abs <= 0:
        return 1.0 / INT16_MAX
    return headroom * max_abs / INT16_MAX


def quantize(x: npt.ArrayLike, scale: float, counter: SatCounter | None = None) -> I64:
    """Host-side input quantization: ``saturate16(floor(x / s + 0.5))``."""
    q = np.floor(np.asarray(x, dtype=np.float64) / scale + 0.5)
    q = np.nan_to_num(q, nan=0.0, posinf=INT16_MAX + 1, neginf=INT16_MIN - 1)
    return saturate(q.astype(np.int64), counter=counter)


def quantize_weights(w: F64, bits: int, channel_axis: int = 0) -> tuple[I64, F64]:
    """Per-channel symmetric weights: returns (int weights, scale per channel)."""
    if bits not in (4, 8, 16):
        raise BackendError(f"weight bits must be 4, 8 or 16, got {bits}")
    qmax = (1 << (bits - 1)) - 1
    axes = tuple(i for i in range(w.ndim) if i != channel_axis)
    max_abs = np.abs(w).max(axis=axes) if axes else np.abs(w)
    scale = np.where(max_abs > 0, max_abs / qmax, 1.0)
    shape = [1] * w.ndim
    shape[channel_axis] = -1
    q = np.clip(round_half_away(w / scale.reshape(shape)), -qmax, qmax).astype(np.int64)
    return q, np.asarray(scale, dtype=np.float64)
