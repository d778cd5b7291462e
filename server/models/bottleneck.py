"""The slimmable bottleneck at the split point.

Encoder (edge): ``Conv3x3(C,C)-BN-ReLU`` then a width-sliced ``Conv3x3(C, max_width, stride 2)``: a mode of width
``w`` computes only the first ``w`` output channels. Decoder (server): a width-sliced input ``Conv3x3(w, D)``
with switchable batch norm (one per width), ReLU, ``ConvTranspose(D, C, 4, stride 2)`` back to the head's
resolution, switchable BN, ReLU - its output imitates the teacher's features at the split (head distillation).

Widths are channel slices rather than ensemble members: slices share one encoder conv (the encoder's cost and
weights do not grow with the number of widths) and one set of weights serves every width, so a mode switch is a
different slice of the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimsplit.server.models.layers import (
    InputSlicedConv2d,
    OutputSlicedConv2d,
    SwitchableBatchNorm2d,
)


@dataclass(frozen=True)
class BottleneckConfig:
    widths: tuple[int, ...] = (2, 4, 8, 16)
    bits: tuple[int, ...] = (1, 2, 4, 8)
    decoder_channels: int = 64

    @property
    def max_width(self) -> int:
        return max(self.widths)


class SlimmableEncoder(nn.Module):
    def __init__(self, in_channels: int, max_width: int) -> None:
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(in_channels), nn.ReLU()
        )
        self.out = OutputSlicedConv2d(in_channels, max_width, 3, 2, 1, bias=True)

    def forward(self, h: torch.Tensor, width: int | None = None) -> torch.Tensor:
        z = self.pre(h)
        if width is None:
            return self.out(z)  # type: ignore[no-any-return]
        return self.out.forward_sliced(z, width)


class SlimmableDecoder(nn.Module):
    def __init__(self, out_channels: int, widths: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.widths = tuple(widths)
        n = len(self.widths)
        self.inp = InputSlicedConv2d(max(self.widths), hidden, 3, 1, 1, bias=False)
        self.bn1 = SwitchableBatchNorm2d(hidden, n)
        self.up = nn.ConvTranspose2d(hidden, out_channels, 4, 2, 1, bias=False)
        self.bn2 = SwitchableBatchNorm2d(out_channels, n)

    def width_index(self, width: int) -> int:
        try:
            return self.widths.index(width)
        except ValueError:
            raise ValueError(f"width {width} is not one of {self.widths}") from None

    def forward(self, z: torch.Tensor, width: int) -> torch.Tensor:
        i = self.width_index(width)
        y = torch.relu(self.bn1(self.inp.forward_sliced(z, width), i))
        return torch.relu(self.bn2(self.up(y), i))


class FixedWidthDecoder(nn.Module):
    """The decoder frozen at one width (for ONNX export: no Python-level switches in the graph)."""

    def __init__(self, decoder: SlimmableDecoder, width: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z, self.width)
        return out
