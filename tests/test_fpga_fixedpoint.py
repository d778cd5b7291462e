"""Fixed-point arithmetic of the emulator: rounding, saturation and requantization against float."""

from __future__ import annotations

import numpy as np
import pytest

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga import FixedPointProgram
from slimsplit.server.backends.fpga.fixedpoint import (
    ACC_MAX,
    INT16_MAX,
    INT16_MIN,
    SatCounter,
    quantize,
    quantize_multiplier,
    quantize_weights,
    requantize,
    round_half_away,
    round_shift,
    saturate,
    saturate_acc,
)
from slimsplit.server.backends.fpga.graph_ir import Attrs, CompiledTail, Node, Op, run_float


def test_round_shift_is_nearest_with_ties_to_plus_infinity() -> None:
    a = np.array([5, -5, 6, -6, 7, -7, 0], dtype=np.int64)
    # 2.5 -> 3, -2.5 -> -2, 3, -3, 3.5 -> 4, -3.5 -> -3, 0
    assert round_shift(a, 1).tolist() == [3, -2, 3, -3, 4, -3, 0]
    assert round_shift(np.array([3], dtype=np.int64), -2).tolist() == [12]  # negative shift = left shift
    assert round_shift(np.array([7, 7], dtype=np.int64), np.array([0, 2])).tolist() == [7, 2]


def test_offline_rounding_is_ties_away_from_zero() -> None:
    assert round_half_away([0.5, -0.5, 1.5, -1.5, 0.49]).tolist() == [1.0, -1.0, 2.0, -2.0, 0.0]


def test_saturation_clamps_and_counts() -> None:
    counter = SatCounter()
    out = saturate(np.array([40000, -40000, 5, INT16_MAX, INT16_MIN], dtype=np.int64), counter=counter)
    assert out.tolist() == [INT16_MAX, INT16_MIN, 5, INT16_MAX, INT16_MIN]
    assert (counter.saturated, counter.total) == (2, 5)
    assert counter.fraction == pytest.approx(0.4)
    acc = saturate_acc(np.array([ACC_MAX + 10, 1], dtype=np.int64), counter)
    assert acc.tolist() == [ACC_MAX, 1] and counter.saturated == 3


def test_quantize_multiplier_represents_the_factor() -> None:
    r = np.array([1e-6, 0.0123, 0.5, 0.99999, 1.0, 3.7, 1234.5])
    m, shift = quantize_multiplier(r)
    assert np.all((m >= 1 << 14) & (m < 1 << 15))
    assert np.allclose(m * 2.0 ** (-shift.astype(np.float64)), r, rtol=2.0**-14)
    with pytest.raises(BackendError, match="positive"):
        quantize_multiplier([0.0])


def test_requantize_matches_float_rounding_within_one_lsb() -> None:
    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 30), 1 << 30, size=5000, dtype=np.int64)
    r = 3.1e-5
    m, shift = quantize_multiplier(r)
    got = requantize(acc, m, shift)
    want = np.clip(np.floor(acc * r + 0.5), INT16_MIN, INT16_MAX)
    assert np.max(np.abs(got - want)) <= 1
    assert got.min() >= INT16_MIN and got.max() <= INT16_MAX


def test_host_quantization_rounds_half_up_and_saturates() -> None:
    counter = SatCounter()
    q = quantize([0.25, -0.25, 0.75, 1e9, -np.inf, np.nan], 0.5, counter)
    assert q.tolist() == [1, 0, 2, INT16_MAX, INT16_MIN, 0]  # 0.5 -> 1, -0.5 -> 0 (ties to +inf)
    assert counter.saturated == 2


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_weights_are_per_channel_symmetric(bits: int) -> None:
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(6, 3, 3, 3)) * np.arange(1, 7).reshape(6, 1, 1, 1)
    q, scale = quantize_weights(w, bits)
    qmax = (1 << (bits - 1)) - 1
    assert np.abs(q).max() == qmax
    assert np.all(np.abs(q).reshape(6, -1).max(axis=1) == qmax)  # every channel uses its full range
    assert np.max(np.abs(q * scale.reshape(6, 1, 1, 1) - w)) <= scale.max() / 2 + 1e-12
    with pytest.raises(BackendError):
        quantize_weights(w, 3)


def _conv_tail() -> CompiledTail:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 2, 3, 3))
    b = rng.normal(size=3)
    node = Node("c", Op.CONV, ("x",), "y", Attrs(kernel=(3, 3), pads=(1, 1, 1, 1)), weight=w, bias=b)
    return CompiledTail("conv", "x", "y", (node,), {"x": (2, 5, 5), "y": (3, 5, 5)})


def test_emulated_convolution_is_within_a_few_lsb_of_float() -> None:
    tail = _conv_tail()
    x = np.random.default_rng(2).normal(size=(16, 2, 5, 5))
    ref = run_float(tail, x)["y"]
    prog16 = FixedPointProgram.calibrate(tail, x, weight_bits=16)
    out16 = prog16.run(x)
    lsb = prog16.output_scale
    # int16 weights: input rounding (<= 1/2 LSB_in per term) dominates; a couple of output LSBs
    assert np.max(np.abs(out16.logits - ref)) <= 3 * lsb
    assert out16.saturated == 0
    prog8 = FixedPointProgram.calibrate(tail, x, weight_bits=8)
    assert np.max(np.abs(prog8.run(x).logits - ref)) <= 0.02 * np.abs(ref).max()


def test_inputs_beyond_calibration_saturate_and_are_counted() -> None:
    tail = _conv_tail()
    x = np.random.default_rng(3).normal(size=(4, 2, 5, 5))
    prog = FixedPointProgram.calibrate(tail, x, weight_bits=8)
    res = prog.run(x * 20)
    assert res.saturated > 0 and 0 < res.saturated_fraction < 1
    assert res.q_output.min() >= INT16_MIN and res.q_output.max() <= INT16_MAX
    with pytest.raises(BackendError, match="does not match"):
        prog.run(x[:, :1])
