"""Backbones defined in the project (torchvision does not install beside the CPU torch here).

Each backbone is an ordered list of *named blocks*; a :class:`SplitPoint` names which blocks run on the edge
(the head) and which on the server (the tail). Users split their own backbone the same way: build a
:class:`Backbone` from named blocks and pick the block after which to cut.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, identity or 1x1 projection shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear project."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(in_ch, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return x + out if self.residual else out


def _conv_bn_act(in_ch: int, out_ch: int, k: int, stride: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, stride, k // 2, bias=False), nn.BatchNorm2d(out_ch), act())


@dataclass(frozen=True)
class SplitPoint:
    """Where to cut: the head is every block up to and including ``after``."""

    after: str


class Backbone(nn.Module):
    """A classifier made of named blocks run in order."""

    def __init__(self, name: str, blocks: Sequence[tuple[str, nn.Module]], default_split: SplitPoint) -> None:
        super().__init__()
        self.name = name
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        if default_split.after not in self.blocks:
            raise ValueError(f"split point {default_split.after!r} is not a block of {name}")
        self.default_split = default_split

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def split_names(self, split: SplitPoint | None = None) -> tuple[list[str], list[str]]:
        split = split or self.default_split
        names = self.block_names
        if split.after not in names:
            raise ValueError(f"split point {split.after!r} is not a block of {self.name}; blocks: {names}")
        cut = names.index(split.after) + 1
        return names[:cut], names[cut:]

    def run(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        for n in names:
            x = self.blocks[n](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.block_names)

    def head_module(self, split: SplitPoint | None = None) -> nn.Sequential:
        head, _ = self.split_names(split)
        return nn.Sequential(OrderedDict((n, self.blocks[n]) for n in head))

    def tail_module(self, split: SplitPoint | None = None) -> nn.Sequential:
        _, tail = self.split_names(split)
        return nn.Sequential(OrderedDict((n, self.blocks[n]) for n in tail))


def resnet_small(num_classes: int = 10, in_channels: int = 3) -> Backbone:
    """A small ResNet for 64x64 inputs (~14M multiply-adds). Default split after ``stage1`` (32 x 16 x 16)."""
    blocks: list[tuple[str, nn.Module]] = [
        ("stem", _conv_bn_act(in_channels, 24, 3, 2)),  # 32x32
        ("stage1", BasicBlock(24, 32, 2)),  # 16x16
        ("stage2", nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64, 1))),  # 8x8
        ("stage3", BasicBlock(64, 128, 2)),  # 4x4
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("classifier", nn.Linear(128, num_classes)),
    ]
    return Backbone("resnet_small", blocks, SplitPoint("stage1"))


def mobilenetv2_small(num_classes: int = 10, in_channels: int = 3) -> Backbone:
    """A small MobileNetV2 for 64x64 inputs. Default split after ``stage1`` (24 x 16 x 16)."""
    blocks: list[tuple[str, nn.Module]] = [
        ("stem", _conv_bn_act(in_channels, 16, 3, 2, nn.ReLU6)),  # 32x32
        (
            "stage1",
            nn.Sequential(
                InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6)
            ),
        ),  # 16x16
        ("stage2", nn.Sequential(InvertedResidual(24, 48, 2, 6), InvertedResidual(48, 48, 1, 6))),  # 8x8
        (
            "stage3",
            nn.Sequential(InvertedResidual(48, 96, 2, 6), _conv_bn_act(96, 256, 1, 1, nn.ReLU6)),
        ),  # 4x4
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("classifier", nn.Linear(256, num_classes)),
    ]
    return Backbone("mobilenetv2_small", blocks, SplitPoint("stage1"))


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet_small": resnet_small,
    "mobilenetv2_small": mobilenetv2_small,
}


def build_backbone(name: str, num_classes: int = 10) -> Backbone:
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
    return factory(num_classes=num_classes)
