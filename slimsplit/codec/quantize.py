"""Per-tensor asymmetric min/max quantization: the numpy reference that training code must reproduce exactly.

The formula (every step in IEEE float32, in exactly this order)::

    lo    = float16_floor(min(x))     # largest float16 value  <= min(x)
    hi    = float16_ceil(max(x))      # smallest float16 value >= max(x)
    levels = 2**bits - 1
    lo32, hi32 = float32(lo), float32(hi)          # exact: every float16 is a float32
    d     = hi32 - lo32                             # float32 subtraction
    q     = clip(round_half_even((x - lo32) / d * float32(levels)), 0, levels)    if d > 0
    q     = 0                                                                      if d == 0
    x_hat = lo32 + (float32(q) * d) / float32(levels)                              (float32)

``lo`` and ``hi`` travel in the frame header as float16, which is why they are rounded *outwards* to float16
before quantizing: the encoder quantizes with exactly the values the decoder reads, and ``lo <= x <= hi``
still holds. The dequantization error is at most ``d / levels / 2`` (plus float32 rounding). The outward
rounding widens the range by less than one float16 step of ``|lo|`` and of ``|hi|`` (2**-10 relative):
harmless for features whose range is comparable to their magnitude (ReLU outputs have ``lo == 0`` exactly),
wasteful for a narrow range far from zero (e.g. values in [1000, 1001]).

The same in torch (``x`` a float32 tensor; ``lo``/``hi`` python floats from :func:`float16_range`)::

    lo_t = torch.tensor(lo, dtype=torch.float32)
    d = torch.tensor(hi, dtype=torch.float32) - lo_t
    q = torch.clamp(torch.round((x - lo_t) / d * levels), 0, levels)    # torch.round is half-to-even
    # (when hi == lo: q = torch.zeros_like(x))
    x_hat = lo_t + q * d / levels

Keep the scalars as float32 tensors (not python floats, which torch may combine in double precision), and run
it eagerly: a compiler that fuses or reassociates (``torch.compile``) may round differently.
``tests/test_codec_torch.py`` checks that this snippet matches :func:`quantize` bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.errors import CodecError

MIN_BITS = 1
MAX_BITS = 16
FLOAT16_MAX = 65504.0  # largest finite float16


def levels_for(bits: int) -> int:
    """Number of quantization steps for ``bits`` (``2**bits - 1``); validates ``bits``."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not MIN_BITS <= bits <= MAX_BITS:
        raise CodecError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}", field="bits")
    return (1 << int(bits)) - 1


def q_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """The integer dtype that holds quantized values of ``bits`` bits."""
    return np.uint8 if bits <= 8 else np.uint16


def float16_floor(value: float) -> float:
    """The largest float16-representable value <= ``value`` (as a python float)."""
    _check_f16_range(value, "lo")
    f = np.float16(value)
    if float(f) > value:
        f = np.nextafter(f, np.float16(-np.inf))
    return float(f)


def float16_ceil(value: float) -> float:
    """The smallest float16-representable value >= ``value`` (as a python float)."""
    _check_f16_range(value, "hi")
    f = np.float16(value)
    if float(f) < value:
        f = np.nextafter(f, np.float16(np.inf))
    return float(f)


def _check_f16_range(value: float, name: str) -> None:
    if not np.isfinite(value) or abs(value) > FLOAT16_MAX:
        raise CodecError(
            f"{name}={value!r} is outside the float16 range +-{FLOAT16_MAX} of the frame header",
            field=name,
            value=value,
        )


def float16_range(x: npt.NDArray[np.floating[Any]]) -> tuple[float, float]:
    """``(lo, hi)`` of ``x`` rounded outwards to float16, as the encoder stores them. ``x`` must be finite."""
    if x.size == 0:
        raise CodecError("cannot quantize an empty tensor", field="shape", shape=tuple(x.shape))
    lo_raw, hi_raw = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo_raw) and np.isfinite(hi_raw)):  # min/max propagate NaN; inf shows up directly
        n_bad = int(np.count_nonzero(~np.isfinite(x)))
        raise CodecError(f"tensor has {n_bad} non-finite value(s) (NaN or inf)", field="values", count=n_bad)
    return float16_floor(lo_raw), float16_ceil(hi_raw)


def quantize(x: npt.ArrayLike, bits: int) -> tuple[npt.NDArray[np.unsignedinteger[Any]], float, float]:
    """Quantize ``x`` to ``bits`` bits: returns ``(q, lo, hi)`` with ``q`` uint8 (bits <= 8) or uint16.

    ``q`` has the shape of ``x``; ``lo``/``hi`` are float16-representable python floats. See the module
    docstring for the exact formula. Raises :class:`CodecError` for non-finite input or a range beyond
    float16.
    """
    levels = levels_for(bits)
    xf = as_float32(x)
    lo, hi = float16_range(xf)
    dtype = q_dtype(bits)
    if hi == lo:
        return np.zeros(xf.shape, dtype=dtype), lo, hi
    lo32, hi32 = np.float32(lo), np.float32(hi)
    d = hi32 - lo32
    t = (xf - lo32) / d * np.float32(levels)
    q = np.clip(np.rint(t), 0, levels).astype(dtype)
    return q, lo, hi


def dequantize(q: npt.NDArray[np.integer[Any]], lo: float, hi: float, bits: int) -> npt.NDArray[np.float32]:
    """Inverse of :func:`quantize`: ``lo + q * (hi - lo) / levels`` in float32 (shape of ``q``)."""
    levels = levels_for(bits)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    d = hi32 - lo32
    out: npt.NDArray[np.float32] = lo32 + q.astype(np.float32) * d / np.float32(levels)
    return out


def as_float32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise CodecError(f"features must be a floating-point array, got dtype {arr.dtype}", field="dtype")
    if arr.dtype != np.float32:
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf and is rejected as non-finite
            arr = arr.astype(np.float32)
    return arr
