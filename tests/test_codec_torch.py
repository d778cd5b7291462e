"""The quantization formula documented in slimsplit.codec.quantize, written in torch, matches numpy bit for
bit (the training code quantizes in torch and must produce exactly what the edge encoder sends)."""

from __future__ import annotations

import numpy as np
import pytest

from slimsplit.codec import dequantize, float16_range, quantize

torch = pytest.importorskip("torch")


def torch_quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The torch snippet of the quantize module docstring, verbatim."""
    lo, hi = float16_range(x)
    levels = 2**bits - 1
    xt = torch.from_numpy(x)
    lo_t = torch.tensor(lo, dtype=torch.float32)
    d = torch.tensor(hi, dtype=torch.float32) - lo_t
    q = torch.zeros_like(xt) if hi == lo else torch.clamp(torch.round((xt - lo_t) / d * levels), 0, levels)
    x_hat = lo_t + q * d / levels
    return q.numpy(), x_hat.numpy()


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cases = [
        np.maximum(rng.standard_normal((16, 8, 8)), 0).astype(np.float32),
        (rng.standard_normal((4, 8, 8)) * 30 + 5).astype(np.float32),
        rng.uniform(-1e-3, 1e-3, (2, 8, 8)).astype(np.float32),
        np.full((2, 8, 8), 0.3, np.float32),
    ]
    # values exactly on rounding midpoints of the 4-bit grid over [0, 1]: half-to-even decides them
    grid = (np.arange(15, dtype=np.float32) + np.float32(0.5)) / np.float32(15)
    cases.append(np.concatenate([[0.0], grid, [1.0]]).astype(np.float32).reshape(1, 1, 17))
    return cases


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 12, 16])
def test_torch_quantization_is_bit_exact(bits: int) -> None:
    for x in _cases():
        q, lo, hi = quantize(x, bits)
        tq, tx_hat = torch_quantize(x, bits)
        np.testing.assert_array_equal(tq.astype(np.int64), q.astype(np.int64))
        np.testing.assert_array_equal(tx_hat, dequantize(q, lo, hi, bits))
