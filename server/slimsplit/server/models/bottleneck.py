"""The slimmable bottleneck at the split point.

Two encoder (edge) designs, chosen by :attr:`BottleneckConfig.kind`:

* ``"slices"`` (default, :class:`SlimmableEncoder`): ``Conv3x3(C,C)-BN-ReLU`` then a width-sliced
  ``Conv3x3(C, max_width, stride 2)``: a mode of width ``w`` computes only the first ``w`` output channels. One set
  of weights serves every width, so a mode switch is a different slice of the same tensors (and one ONNX graph with
  a ``width`` input serves every mode).
* ``"ensemble"`` (:class:`EnsembleEncoder`, the slimmable ensemble encoder of Assine et al. 2023): independent
  members, member ``m`` being ``Conv3x3(C, C_m)-BN-ReLU`` then ``Conv3x3(C_m, k_m, stride 2)`` where ``k_m`` are the
  width increments (2, 2, 4, 8 for widths 2/4/8/16). Width ``w`` is the concatenation of the first members whose
  channels sum to ``w``, and only those members run, so the encoder's compute shrinks with the width.

Decoder (server), shared by both: a width-sliced input ``Conv3x3(w, D)`` with switchable batch norm (one per
width), ReLU, ``ConvTranspose(D, C, 4, stride 2)`` back to the head's resolution, switchable BN, ReLU - its output
imitates the teacher's features at the split (head distillation).

Slices are the default, chosen by measurement (BENCHMARKS.md section 1b: both kinds trained from the same
teacher with the same seed and recipe, 2 student epochs, 10k test images). With members of ``C/4`` hidden channels
(about the slices' compute at full width) the ensemble is less accurate in all 16 modes (mean -3.0 points, up to
-9.4 at 2 channels x 1 bit), and even with members as wide as the shared block (3.7x the encoder's compute at full
width) it wins no mode (mean -2.2 points). Its compute saving at narrow widths is real for the bottleneck encoder
(4x fewer multiply-adds at width 2) but small for the edge as a whole (the head dominates: -24% multiply-adds,
about -5% ONNX Runtime latency), and its branches are slower than one sliced conv at wide widths unless fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import nn

from slimsplit.errors import ConfigError
from slimsplit.server.models.layers import (
    InputSlicedConv2d,
    OutputSlicedConv2d,
    SwitchableBatchNorm2d,
)

ENCODER_KINDS = ("slices", "ensemble")


@dataclass(frozen=True)
class BottleneckConfig:
    widths: tuple[int, ...] = (2, 4, 8, 16)
    bits: tuple[int, ...] = (1, 2, 4, 8)
    decoder_channels: int = 64
    kind: str = "slices"  # "slices" (channel slices of one conv) | "ensemble" (independent members)
    member_channels: int = 0  # ensemble only: hidden channels C_m per member; 0 = head channels // len(widths)

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ConfigError(
                f"bottleneck kind {self.kind!r} is not one of {', '.join(ENCODER_KINDS)}", field="kind", value=self.kind
            )
        if not self.widths or min(self.widths) < 1 or list(self.widths) != sorted(set(self.widths)):
            raise ConfigError(
                f"bottleneck widths {self.widths!r} must be positive and strictly increasing", field="widths"
            )
        if self.member_channels < 0:
            raise ConfigError(
                f"bottleneck member_channels must be >= 0 (0 = automatic), got {self.member_channels}",
                field="member_channels",
            )

    @property
    def max_width(self) -> int:
        return max(self.widths)


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class SlimmableEncoder(nn.Module):
    """Channel slices: one shared ``pre`` block, then the first ``width`` output channels of one conv."""

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

    def parameters_at(self, width: int) -> int:
        """Trainable parameters a mode of ``width`` uses (the shared block plus ``width`` output filters)."""
        per_filter = self.out.weight[0].numel() + (0 if self.out.bias is None else 1)
        return _trainable(self.pre) + width * per_filter


class EnsembleMember(nn.Module):
    """One ensemble member: ``Conv3x3(C, hidden)-BN-ReLU`` then ``Conv3x3(hidden, out, stride 2)``."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.out = nn.Conv2d(hidden, out_channels, 3, 2, 1, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.pre(h))
        return out


class EnsembleEncoder(nn.Module):
    """Independent members whose outputs are the width increments; width ``w`` runs only the members it needs."""

    def __init__(self, in_channels: int, widths: Sequence[int], member_channels: int) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.member_channels = member_channels
        increments = [w - prev for prev, w in zip((0, *self.widths[:-1]), self.widths, strict=True)]
        self.members = nn.ModuleList(EnsembleMember(in_channels, member_channels, k) for k in increments)

    def active_members(self, width: int) -> int:
        """How many leading members make up ``width`` channels."""
        try:
            return self.widths.index(width) + 1
        except ValueError:
            raise ValueError(f"width {width} is not one of {self.widths}") from None

    def forward(self, h: torch.Tensor, width: int | None = None) -> torch.Tensor:
        n = len(self.members) if width is None else self.active_members(width)
        outs = [member(h) for member in self.members[:n]]
        return outs[0] if n == 1 else torch.cat(outs, dim=1)

    def parameters_at(self, width: int) -> int:
        """Trainable parameters a mode of ``width`` uses (its active members)."""
        return sum(_trainable(m) for m in self.members[: self.active_members(width)])


BottleneckEncoder: TypeAlias = SlimmableEncoder | EnsembleEncoder


def build_encoder(in_channels: int, config: BottleneckConfig) -> BottleneckEncoder:
    """The edge encoder that ``config.kind`` names, reading head features with ``in_channels`` channels."""
    if config.kind == "ensemble":
        hidden = config.member_channels or max(1, in_channels // len(config.widths))
        return EnsembleEncoder(in_channels, config.widths, hidden)
    return SlimmableEncoder(in_channels, config.max_width)


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
