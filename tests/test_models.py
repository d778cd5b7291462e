"""Backbones split as data, slimmable bottleneck, and training-time quantization that matches the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimsplit.codec import dequantize, float16_range, quantize
from slimsplit.server.models import (
    BACKBONES,
    SplitModel,
    SplitModelConfig,
    SplitPoint,
    build_backbone,
    fake_quantize,
)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_head_then_tail_equals_the_whole_backbone(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.randn(2, 3, 64, 64)
    for after in net.block_names[:-1]:
        head, tail = net.head_module(SplitPoint(after)), net.tail_module(SplitPoint(after))
        torch.testing.assert_close(tail(head(x)), net(x))


def test_unknown_split_point_is_named() -> None:
    with pytest.raises(ValueError, match="'nope' is not a block"):
        build_backbone("resnet_small").split_names(SplitPoint("nope"))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_width_runs_and_narrow_features_are_slices(backbone: str) -> None:
    torch.manual_seed(0)
    model = SplitModel(SplitModelConfig(backbone=backbone)).eval()
    x = torch.randn(3, 3, 64, 64)
    wide = model.encode(x)
    for w in model.config.bottleneck.widths:
        torch.testing.assert_close(model.encode(x, w), wide[:, :w])
        for b in model.config.bottleneck.bits:
            assert model(x, w, b).shape == (3, 10)


def test_switchable_batch_norm_keeps_statistics_per_width() -> None:
    model = SplitModel(SplitModelConfig())
    model.train()
    x = torch.randn(8, 3, 64, 64)
    model(x, 2, 8)
    bns = model.decoder.bn1.bns
    first, last = bns[0].running_mean, bns[3].running_mean
    assert isinstance(first, torch.Tensor) and isinstance(last, torch.Tensor)
    assert not torch.equal(first, torch.zeros_like(first))
    assert torch.equal(last, torch.zeros_like(last))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_fake_quantize_matches_the_codec(bits: int) -> None:
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(4, 8, 8, 8)).astype(np.float32)
    fq = fake_quantize(torch.from_numpy(x), bits).numpy()
    step = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))) / (2**bits - 1)
    for i in range(4):
        q, lo, hi = quantize(x[i], bits)
        ref = dequantize(q, lo, hi, bits)
        # the codec rounds lo/hi outward to float16, which shifts the grid by a fraction of a step: a value near
        # a rounding boundary may land one level away, none further, and on average they agree closely
        diff = np.abs(fq[i] - ref)
        assert diff.max() <= 1.05 * step[i]
        assert diff.mean() <= 0.2 * step[i]
        assert float16_range(x[i])[0] <= x[i].min() and float16_range(x[i])[1] >= x[i].max()


def test_fake_quantize_passes_gradients_straight_through() -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    fake_quantize(x, 2).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.ones_like(x))
