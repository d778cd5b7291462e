"""Percentiles of a list, and of a stream in bounded memory.

* :func:`percentile` - the linear-interpolated percentile of a list of values (the one definition every summary
  uses).
* :class:`QuantileSketch` - the same figures for a stream of any length in bounded memory: exact (:func:`percentile`
  of every value) while it holds at most ``exact_limit`` values; past that, every value falls into a logarithmic
  bucket (the mapping of DDSketch, Masson et al., VLDB 2019) and a percentile is its bucket's midpoint, within
  ``relative_error`` of the value :func:`percentile` would give at that rank. Magnitudes are clamped to
  [:data:`MIN_MAGNITUDE`, :data:`MAX_MAGNITUDE`] for bucketing, so a sketch never holds more than a few thousand
  buckets per sign whatever it is fed. The count, the mean and the extremes stay exact.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Final

MIN_MAGNITUDE: Final = 1e-6
"""Smallest magnitude bucketed apart from zero (a smaller one counts as zero)."""
MAX_MAGNITUDE: Final = 1e12
"""Largest magnitude bucketed as itself (a larger one falls into the top bucket)."""
EXACT_LIMIT: Final = 16_384
"""Values a sketch keeps exactly (8 bytes each) before it switches to buckets."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of the finite ``values`` (NaN when there are none)."""
    data = sorted(v for v in values if math.isfinite(v))
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class QuantileSketch:
    """Percentiles, mean and count of the finite values :meth:`add`-ed, in memory bounded by ``exact_limit`` values
    and the bucket range (see the module docstring); non-finite values are ignored."""

    __slots__ = ("_exact", "_gamma_log", "_limit", "_max", "_min", "_neg", "_pos", "_sum", "_zero", "count")

    def __init__(self, relative_error: float = 0.005, exact_limit: int = EXACT_LIMIT) -> None:
        if not 0.0 < relative_error < 1.0:
            raise ValueError(f"relative_error must be in (0, 1), got {relative_error}")
        if exact_limit < 0:
            raise ValueError(f"exact_limit must be >= 0, got {exact_limit}")
        self._gamma_log = math.log((1.0 + relative_error) / (1.0 - relative_error))
        self._limit = exact_limit
        self._exact: array[float] | None = array("d")
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self._zero = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self.count = 0

    @property
    def exact(self) -> bool:
        """Every figure is exact (the sketch still holds every value)."""
        return self._exact is not None

    @property
    def held(self) -> int:
        """How many numbers the sketch holds: its exact values, or its buckets."""
        if self._exact is not None:
            return len(self._exact)
        return len(self._pos) + len(self._neg) + 1

    @property
    def mean(self) -> float:
        return self._sum / self.count if self.count else math.nan

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.count += 1
        self._sum += value
        self._min = min(self._min, value)
        self._max = max(self._max, value)
        if self._exact is not None:
            self._exact.append(value)
            if len(self._exact) > self._limit:
                held, self._exact = self._exact, None
                for v in held:
                    self._bucket(v)
            return
        self._bucket(value)

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def _bucket(self, value: float) -> None:
        magnitude = abs(value)
        if magnitude < MIN_MAGNITUDE:
            self._zero += 1
            return
        key = math.ceil(math.log(min(magnitude, MAX_MAGNITUDE)) / self._gamma_log)
        side = self._pos if value > 0 else self._neg
        side[key] = side.get(key, 0) + 1

    def _value(self, key: int) -> float:
        """The midpoint (in relative terms) of bucket ``key``: within the relative error of every value in it."""
        gamma = math.exp(self._gamma_log)
        return 2.0 * gamma**key / (gamma + 1.0)

    def percentile(self, q: float) -> float:
        """Percentile ``q`` in [0, 100] (NaN when no value was added); see the module docstring for its accuracy."""
        if self._exact is not None:
            return percentile(self._exact, q)
        if not self.count:
            return math.nan
        if q <= 0:
            return self._min
        if q >= 100:
            return self._max
        rank = round((self.count - 1) * q / 100.0)  # the nearest of the values linear interpolation runs between
        seen = 0
        for key in sorted(self._neg, reverse=True):
            seen += self._neg[key]
            if seen > rank:
                return max(-self._value(key), self._min)
        seen += self._zero
        if seen > rank:
            return 0.0
        for key in sorted(self._pos):
            seen += self._pos[key]
            if seen > rank:
                return min(self._value(key), self._max)
        return self._max


__all__ = ["EXACT_LIMIT", "MAX_MAGNITUDE", "MIN_MAGNITUDE", "QuantileSketch", "percentile"]
