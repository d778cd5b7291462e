"""Model definitions (torch): backbones split as data, the slimmable bottleneck, the split model."""

from slimsplit.server.models.backbones import (
    BACKBONES,
    Backbone,
    SplitPoint,
    build_backbone,
    mobilenetv2_small,
    resnet_small,
)
from slimsplit.server.models.bottleneck import (
    ENCODER_KINDS,
    BottleneckConfig,
    EnsembleEncoder,
    SlimmableDecoder,
    SlimmableEncoder,
    build_encoder,
)
from slimsplit.server.models.layers import fake_quantize
from slimsplit.server.models.split_model import SplitModel, SplitModelConfig, load_split_model

__all__ = [
    "BACKBONES",
    "ENCODER_KINDS",
    "Backbone",
    "BottleneckConfig",
    "EnsembleEncoder",
    "SlimmableDecoder",
    "SlimmableEncoder",
    "SplitModel",
    "SplitModelConfig",
    "SplitPoint",
    "build_backbone",
    "build_encoder",
    "fake_quantize",
    "load_split_model",
    "mobilenetv2_small",
    "resnet_small",
]
