"""The whole split model: backbone head -> slimmable bottleneck -> backbone tail, and its checkpoint format."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimsplit.errors import BundleError
from slimsplit.server.models.backbones import Backbone, SplitPoint, build_backbone
from slimsplit.server.models.bottleneck import BottleneckConfig, SlimmableDecoder, build_encoder
from slimsplit.server.models.layers import fake_quantize

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class SplitModelConfig:
    backbone: str = "resnet_small"
    num_classes: int = 10
    split_after: str = "stage1"
    input_shape: tuple[int, int, int] = (3, 64, 64)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitModelConfig:
        b = d.get("bottleneck", {})
        return cls(
            backbone=d["backbone"],
            num_classes=int(d["num_classes"]),
            split_after=d["split_after"],
            input_shape=(int(d["input_shape"][0]), int(d["input_shape"][1]), int(d["input_shape"][2])),
            bottleneck=BottleneckConfig(
                widths=tuple(b["widths"]),
                bits=tuple(b["bits"]),
                decoder_channels=int(b["decoder_channels"]),
                kind=str(b.get("kind", "slices")),  # checkpoints written before the ensemble variant: slices
                member_channels=int(b.get("member_channels", 0)),
            ),
        )


class SplitModel(nn.Module):
    """Head (edge) + slimmable encoder (edge) | slimmable decoder (server) + tail (server)."""

    def __init__(self, config: SplitModelConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.config = config
        backbone = backbone or build_backbone(config.backbone, config.num_classes)
        split = SplitPoint(config.split_after)
        self.head_names, self.tail_names = backbone.split_names(split)
        self.head = backbone.head_module(split)
        self.tail = backbone.tail_module(split)
        with torch.no_grad():
            probe = self.head(torch.zeros(1, *config.input_shape))
        self.head_shape: tuple[int, int, int] = (
            int(probe.shape[1]),
            int(probe.shape[2]),
            int(probe.shape[3]),
        )
        c = self.head_shape[0]
        self.encoder = build_encoder(c, config.bottleneck)
        self.decoder = SlimmableDecoder(c, config.bottleneck.widths, config.bottleneck.decoder_channels)
        with torch.no_grad():
            z = self.encoder(probe)
        self.feature_shape: tuple[int, int, int] = (int(z.shape[1]), int(z.shape[2]), int(z.shape[3]))

    # -- the two halves ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Edge side: image -> bottleneck features [N, width, H', W'] (float, before quantization)."""
        out: torch.Tensor = self.encoder(self.head(x), width)
        return out

    def tail_forward(self, features: torch.Tensor, width: int) -> torch.Tensor:
        """Server side: (dequantized) features [N, width, H', W'] -> logits."""
        out: torch.Tensor = self.tail(self.decoder(features, width))
        return out

    def forward(self, x: torch.Tensor, width: int, bits: int) -> torch.Tensor:
        z = fake_quantize(self.encode(x, width), bits)
        return self.tail_forward(z, width)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "slimsplit.SplitModel",
                "config": self.config.to_dict(),
                "state_dict": self.state_dict(),
                "extra": extra or {},
            },
            path,
        )


def load_split_model(path: Path | str, map_location: str | torch.device = "cpu") -> SplitModel:
    """Load a :class:`SplitModel` checkpoint (weights only, no pickled code) in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"torch checkpoint {path} does not exist", path=str(path))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise BundleError(f"torch checkpoint {path} cannot be read: {exc}", path=str(path)) from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "slimsplit.SplitModel":
        raise BundleError(f"{path} is not a slimsplit SplitModel checkpoint", path=str(path))
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BundleError(f"{path}: unsupported checkpoint format {ckpt.get('format')!r}", path=str(path))
    model = SplitModel(SplitModelConfig.from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not match the model config: {exc}", path=str(path)) from exc
    model.eval()
    return model
