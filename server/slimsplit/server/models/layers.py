"""Building blocks of slimmable bottlenecks: switchable batch norm, width-sliced convolutions, fake quantization.

Following Yu et al. (Slimmable Neural Networks): a slimmable layer keeps the weights of its widest configuration
and runs a narrower one by slicing the first ``width`` channels; batch norm is *switchable* (one set of statistics
and affine parameters per width) because the feature statistics differ between widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SwitchableBatchNorm2d(nn.Module):
    """One BatchNorm2d per width configuration; ``index`` selects which one runs."""

    def __init__(self, num_features: int, num_configs: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(num_features) for _ in range(num_configs))

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        out: torch.Tensor = self.bns[index](x)
        return out


class InputSlicedConv2d(nn.Conv2d):
    """A convolution whose *input* channel count is chosen per call: it uses the first ``in_width`` input channels."""

    def forward_sliced(self, x: torch.Tensor, in_width: int) -> torch.Tensor:
        weight = self.weight[:, :in_width]
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class OutputSlicedConv2d(nn.Conv2d):
    """A convolution whose *output* channel count is chosen per call: it computes the first ``out_width`` channels."""

    def forward_sliced(self, x: torch.Tensor, out_width: int) -> torch.Tensor:
        weight = self.weight[:out_width]
        bias = None if self.bias is None else self.bias[:out_width]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize each sample with per-tensor min/max, straight-through gradient.

    Mirrors ``slimsplit.codec.quantize``/``dequantize`` (per frame: lo = min, hi = max over C,H,W;
    q = round((x - lo) / (hi - lo) * (2**bits - 1)); x_hat = lo + q * (hi - lo) / (2**bits - 1)). The codec
    additionally rounds lo down and hi up to float16, a difference far below one quantization step.
    """
    if bits >= 16:
        return x
    levels = float(2**bits - 1)
    flat = x.detach().flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    span = (hi - lo).clamp_min(1e-12)
    q = torch.round((x - lo) / span * levels).clamp(0, levels)
    x_hat = lo + q * span / levels
    x_hat = torch.where(hi > lo, x_hat, lo.expand_as(x))
    return x + (x_hat - x).detach()
